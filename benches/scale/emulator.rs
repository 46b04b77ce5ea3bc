//! The AWS emulator (moto) itself: its processes, emptying it, keeping its
//! tag index small, and timing how long it makes a trivial call wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, Tag};
use tender::names::tags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BENCH_TAG;

/// Every emulator process of the environment: the main one, and those of
/// services that run apart (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_SQS).
pub fn endpoints() -> Vec<String> {
    let mut out = vec![std::env::var("AWS_ENDPOINT_URL").unwrap()];
    for service in ["S3", "SQS"] {
        if let Ok(url) = std::env::var(format!("AWS_ENDPOINT_URL_{service}"))
            && !out.contains(&url)
        {
            out.push(url);
        }
    }
    out
}

/// Empties every emulator process (moto's reset API).
pub async fn reset() {
    for endpoint in endpoints() {
        reset_one(&endpoint).await;
    }
}

async fn reset_one(endpoint: &str) {
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(host.as_str())
        .await
        .expect("connect to the emulator");
    stream
        .write_all(
            format!("POST /moto-api/reset HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "moto reset: {answer}");
}

/// Times a trivial emulator call twice a second until stopped: how long any
/// call waits in the (single-process) emulator's queue.
pub fn probe(ec2: aws_sdk_ec2::Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            if ec2.describe_regions().send().await.is_ok() {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples
    })
}

/// Deletes the tags of every resource (instances, volumes) tagged with
/// `key` = one of `values`. The emulator keeps terminated instances and
/// their tags forever, and evaluates a tag filter, and renders each instance
/// it returns, by scanning all the tags it holds: without this, each run
/// slows the emulator down for every later run and every other user.
pub async fn forget_tagged(ec2: &aws_sdk_ec2::Client, key: &str, values: &[String]) -> usize {
    let resources = tagged_resources(ec2, key, values).await;
    let Some(first) = resources.first() else {
        return 0;
    };
    let mut keys: Vec<String> = [
        tags::MANAGED_BY,
        tags::CLUSTER_ID,
        tags::NAMESPACE,
        tags::JOB_KIND,
        tags::JOB_NAME,
        tags::JOB_UID,
        tags::RESOURCE,
        tags::ATTEMPT,
        tags::LAUNCH_TOKEN,
        tags::OPERATION,
        tags::CONFIGURATION,
        tags::NAME,
        BENCH_TAG,
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    if let Ok(out) = ec2
        .describe_tags()
        .filters(Filter::builder().name("resource-id").values(first).build())
        .send()
        .await
    {
        keys.extend(out.tags().iter().filter_map(|t| t.key().map(String::from)));
    }
    keys.sort();
    keys.dedup();
    let tag_list: Vec<Tag> = keys.iter().map(|k| Tag::builder().key(k).build()).collect();
    for chunk in resources.chunks(200) {
        let _ = ec2
            .delete_tags()
            .set_resources(Some(chunk.to_vec()))
            .set_tags(Some(tag_list.clone()))
            .send()
            .await;
    }
    resources.len()
}

/// Resources tagged with `key` = one of `values`, sorted, once each.
async fn tagged_resources(ec2: &aws_sdk_ec2::Client, key: &str, values: &[String]) -> Vec<String> {
    let mut resources: Vec<String> = Vec::new();
    for chunk in values.chunks(50) {
        let mut token: Option<String> = None;
        loop {
            let Ok(out) = ec2
                .describe_tags()
                .filters(Filter::builder().name("key").values(key).build())
                .filters(
                    Filter::builder()
                        .name("value")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .set_next_token(token.clone())
                .send()
                .await
            else {
                break;
            };
            resources.extend(
                out.tags()
                    .iter()
                    .filter_map(|t| t.resource_id().map(String::from)),
            );
            token = out.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
    }
    resources.sort();
    resources.dedup();
    resources
}

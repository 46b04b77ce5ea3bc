//! [`Queues`]: the SQS queues that carry worker reports to the controller.
//!
//! One queue per worker configuration, created and deleted by the
//! controller; workers send to it, the controller receives from it.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};

use super::{AwsClients, AwsError, AwsOperation};

/// One message taken from a queue; it comes back after the visibility
/// timeout unless it is deleted with its receipt handle.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub body: String,
    pub receipt_handle: String,
}

/// How long a received message stays invisible before it is delivered again.
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// A queue that does not exist (any more).
fn is_gone(e: &AwsError) -> bool {
    e.code().is_some_and(|c| c.contains("NonExistentQueue"))
}

/// The queues that carry worker reports ([`AwsClients::queues`]).
#[derive(Clone, Copy)]
pub struct Queues<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Queues<'_> {
    /// Creates the queue, or returns the URL of the one that already exists.
    pub async fn ensure_queue(
        &self,
        region: &str,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, AwsError> {
        let op = AwsOperation::CreateQueue;
        let create = self
            .aws
            .sqs(region)
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT.as_secs().to_string(),
            )
            .attributes(QueueAttributeName::MessageRetentionPeriod, "86400")
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send();
        let out = self.aws.call(op, create).await?;
        out.queue_url().map(String::from).ok_or(AwsError::Service {
            operation: op.name(),
            code: "NoQueueUrl".into(),
            message: "CreateQueue returned no queue URL".into(),
        })
    }

    /// Deletes the queue; a queue that is already gone counts as deleted.
    pub async fn delete_queue(&self, region: &str, queue_url: &str) -> Result<(), AwsError> {
        let delete = self
            .aws
            .sqs(region)
            .delete_queue()
            .queue_url(queue_url)
            .send();
        match self.aws.call(AwsOperation::DeleteQueue, delete).await {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Long-polls the queue for up to `wait` and returns up to ten messages.
    pub async fn receive_messages(
        &self,
        region: &str,
        queue_url: &str,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, AwsError> {
        let receive = self
            .aws
            .sqs(region)
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20).min(20))
            .send();
        let out = self.aws.call(AwsOperation::ReceiveMessage, receive).await?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(ReceivedMessage {
                    body: m.body()?.to_string(),
                    receipt_handle: m.receipt_handle()?.to_string(),
                })
            })
            .collect())
    }

    /// Deletes received messages, ten per call. Deletions asked for at the
    /// same time on one queue (messages of several jobs applied together)
    /// share a call.
    pub async fn delete_messages(
        &self,
        region: &str,
        queue_url: &str,
        receipt_handles: &[String],
    ) -> Result<(), AwsError> {
        let target = format!("{region} {queue_url}");
        let calls = receipt_handles.iter().map(|handle| {
            let (clients, region, queue_url) =
                (self.aws.clone(), region.to_string(), queue_url.to_string());
            self.aws
                .batches
                .deletions
                .call(&target, handle.clone(), move |handles| {
                    let (clients, region, queue_url) =
                        (clients.clone(), region.clone(), queue_url.clone());
                    async move {
                        clients
                            .queues()
                            .delete_messages_now(&region, &queue_url, &handles)
                            .await?;
                        Ok(handles.into_iter().map(|h| (h, ())).collect())
                    }
                })
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    async fn delete_messages_now(
        &self,
        region: &str,
        queue_url: &str,
        receipt_handles: &[String],
    ) -> Result<(), AwsError> {
        let sqs = self.aws.sqs(region);
        let op = AwsOperation::DeleteMessageBatch;
        for chunk in receipt_handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| AwsError::Unreachable {
                            operation: op.name(),
                            detail: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = sqs
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send();
            self.aws.call(op, delete).await?;
        }
        Ok(())
    }

    /// Queues whose name starts with `prefix`, with their tags.
    pub async fn list_queues(
        &self,
        region: &str,
        prefix: &str,
    ) -> Result<Vec<(String, BTreeMap<String, String>)>, AwsError> {
        let sqs = self.aws.sqs(region);
        let mut pages = sqs
            .list_queues()
            .queue_name_prefix(prefix)
            .max_results(1000)
            .into_paginator()
            .send();
        let mut urls = Vec::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::ListQueues, pages.next())
            .await?
        {
            urls.extend(page.queue_urls().iter().cloned());
        }
        let mut out = Vec::with_capacity(urls.len());
        for url in urls {
            let list = sqs.list_queue_tags().queue_url(&url).send();
            let tags = match self.aws.call(AwsOperation::ListQueueTags, list).await {
                Ok(out) => out
                    .tags()
                    .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                // Deleted since it was listed: nothing to judge.
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(e),
            };
            out.push((url, tags));
        }
        Ok(out)
    }

    /// Sends one message (used by the worker agent).
    pub async fn send_message(
        &self,
        region: &str,
        queue_url: &str,
        body: &str,
    ) -> Result<(), AwsError> {
        let send = self
            .aws
            .sqs(region)
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send();
        self.aws.call(AwsOperation::SendMessage, send).await?;
        Ok(())
    }
}

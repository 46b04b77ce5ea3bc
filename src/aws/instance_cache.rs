//! The shared view of worker instances: one DescribeInstances per region.
//!
//! One paginated DescribeInstances, filtered by this cluster's ownership
//! tag, refreshes the state of every worker in a region for all jobs at
//! once. No reconcile describes the instances of a single job.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use k8s_openapi::jiff::Timestamp;

use super::instance_state::InstanceState;
use super::{AwsClients, AwsError, AwsOperation};
use crate::names::tags;

/// One worker instance as the last refresh saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedInstance {
    pub instance_id: String,
    pub state: InstanceState,
    pub tags: BTreeMap<String, String>,
    pub launch_time: Option<Timestamp>,
}

impl ObservedInstance {
    /// True while the instance costs money or could still run a worker.
    pub fn is_live(&self) -> bool {
        self.state.is_live()
    }
}

/// Every worker instance of one region, as of one refresh.
pub type RegionInstances = Arc<HashMap<String, ObservedInstance>>;

#[derive(Default)]
struct Slot {
    /// When the refresh that produced `instances` started.
    refreshed_at: Option<Instant>,
    /// How long that refresh took.
    took: Duration,
    instances: RegionInstances,
}

/// How old a view [`InstanceCache::recent`] may serve: this, or
/// [`BUSY_SHARE`] times as long as the last refresh took, whichever is
/// longer.
pub const RECENT: Duration = Duration::from_secs(5);

/// Refreshes for [`InstanceCache::recent`] take at most one part in this
/// many of the time, however slow DescribeInstances gets (thousands of
/// workers, a throttled or overloaded endpoint): the view's age adapts
/// instead of the controller calling back to back.
pub const BUSY_SHARE: u32 = 5;

/// How old a view [`InstanceCache::recent`] serves, when the last refresh
/// took `took`.
fn recent_max_age(took: Duration) -> Duration {
    RECENT.max(took * BUSY_SHARE)
}

/// The shared, batched cache of worker instance states, per account and
/// region.
pub struct InstanceCache {
    cluster_id: String,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    describe_calls: AtomicU64,
}

impl InstanceCache {
    pub fn new(cluster_id: String) -> Self {
        Self {
            cluster_id,
            slots: Mutex::default(),
            describe_calls: AtomicU64::new(0),
        }
    }

    /// DescribeInstances pages fetched so far (for tests and benchmarks).
    pub fn describe_calls(&self) -> u64 {
        self.describe_calls.load(Ordering::Relaxed)
    }

    /// The worker instances of one account (the one `aws` acts in, named by
    /// `account_key`) and region, as seen by a refresh that started at or
    /// after `fresh_since`. Concurrent callers share one refresh: whoever
    /// finds the view too old refreshes it while the others wait for it.
    pub async fn snapshot(
        &self,
        aws: &AwsClients,
        account_key: &str,
        region: &str,
        fresh_since: Instant,
    ) -> Result<RegionInstances, AwsError> {
        self.view(aws, account_key, region, |_| fresh_since).await
    }

    /// A recent view, for judging workers by their instance state: no older
    /// than [`RECENT`], or than [`BUSY_SHARE`] times the last refresh's
    /// duration when refreshes are slow. Heartbeats, not this view, are
    /// what notices a silent worker first; this view notices instances
    /// stopped or terminated by someone else.
    pub async fn recent(
        &self,
        aws: &AwsClients,
        account_key: &str,
        region: &str,
    ) -> Result<RegionInstances, AwsError> {
        self.view(aws, account_key, region, |slot| {
            Instant::now()
                .checked_sub(recent_max_age(slot.took))
                .unwrap_or_else(Instant::now)
        })
        .await
    }

    async fn view(
        &self,
        aws: &AwsClients,
        account_key: &str,
        region: &str,
        fresh_since: impl FnOnce(&Slot) -> Instant,
    ) -> Result<RegionInstances, AwsError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(format!("{account_key}|{region}"))
                .or_default()
                .clone()
        };
        let mut slot = slot.lock().await;
        let fresh_since = fresh_since(&slot);
        if slot.refreshed_at.is_some_and(|t| t >= fresh_since) {
            return Ok(slot.instances.clone());
        }
        let started = Instant::now();
        let instances = self.describe(aws, region).await?;
        slot.refreshed_at = Some(started);
        slot.took = started.elapsed();
        slot.instances = Arc::new(instances);
        Ok(slot.instances.clone())
    }

    async fn describe(
        &self,
        aws: &AwsClients,
        region: &str,
    ) -> Result<HashMap<String, ObservedInstance>, AwsError> {
        let mut pages = aws
            .ec2(region)
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", tags::CLUSTER_ID))
                    .values(&self.cluster_id)
                    .build(),
            )
            .max_results(1000)
            .into_paginator()
            .send();
        let mut out = HashMap::new();
        loop {
            let page = aws
                .page(AwsOperation::DescribeInstances, pages.next())
                .await;
            if !matches!(page, Ok(None)) {
                self.describe_calls.fetch_add(1, Ordering::Relaxed);
            }
            let Some(page) = page? else { break };
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                out.insert(
                    id.to_string(),
                    ObservedInstance {
                        instance_id: id.to_string(),
                        state: InstanceState::from(
                            i.state().and_then(|s| s.name()).map_or("", |n| n.as_str()),
                        ),
                        tags: i
                            .tags()
                            .iter()
                            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                            .collect(),
                        launch_time: i
                            .launch_time()
                            .and_then(|t| Timestamp::from_second(t.secs()).ok()),
                    },
                );
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_refresh_makes_the_recent_view_older_not_more_frequent() {
        // Fast refreshes: a view at most 5 s old.
        assert_eq!(recent_max_age(Duration::from_millis(30)), RECENT);
        // A refresh that took 4 s (thousands of instances, a throttled
        // endpoint) is not repeated for 20 s: at most a fifth of the time.
        assert_eq!(
            recent_max_age(Duration::from_secs(4)),
            Duration::from_secs(20)
        );
    }
}

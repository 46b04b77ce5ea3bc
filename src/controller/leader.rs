//! Leader election with a `coordination.k8s.io` Lease, so that several
//! replicas can run and only one acts. Expiry is judged the way client-go
//! does: by how long *this* process has seen the lease record unchanged, so
//! clock skew between nodes does not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_period: Duration,
}

/// What a candidate observed of the lease record.
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    since: Instant,
}

pub struct LeaderElection {
    api: Api<Lease>,
    config: ElectionConfig,
    observed: Option<Observed>,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElection {
    pub fn new(client: Client, config: ElectionConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Waits until this process holds the lease. Then renews it in the
    /// background; the returned receiver turns `false` when leadership is
    /// lost (the caller must stop acting at once).
    pub async fn acquire(mut self) -> (watch::Receiver<bool>, LeaseHandle) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {
                    if !logged {
                        info!(
                            lease = self.config.lease_name,
                            holder = self.observed.as_ref().and_then(|o| o.holder.clone()),
                            "waiting for leadership"
                        );
                        logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election: lease not readable"),
            }
            tokio::time::sleep(self.config.renew_period).await;
        }
        info!(
            lease = self.config.lease_name,
            identity = self.config.identity,
            "became leader"
        );
        let (tx, rx) = watch::channel(true);
        let api = self.api.clone();
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            let mut last_renewed = Instant::now();
            loop {
                tokio::time::sleep(self.config.renew_period).await;
                match self.try_acquire_or_renew().await {
                    Ok(true) => last_renewed = Instant::now(),
                    Ok(false) => {
                        warn!("leadership lost to another replica");
                        let _ = tx.send(false);
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "could not renew the lease");
                        if last_renewed.elapsed() >= self.config.lease_duration {
                            let _ = tx.send(false);
                            return;
                        }
                    }
                }
            }
        });
        (rx, LeaseHandle { api, config, task })
    }

    /// One round: create, renew or take over the lease. `Ok(true)` when this
    /// process holds it afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = self.config.identity.clone();
        let duration = i32::try_from(self.config.lease_duration.as_secs())
            .unwrap_or(15)
            .max(1);
        let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.as_ref().map(|t| t.0);
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time,
                since: Instant::now(),
            });
        }
        let held_by_me = holder.as_deref() == Some(me.as_str());
        let expired = holder.is_none()
            || self.observed.as_ref().is_some_and(|o| {
                o.since.elapsed()
                    >= Duration::from_secs(
                        spec.lease_duration_seconds.unwrap_or(duration).max(1) as u64
                    )
            });
        if !held_by_me && !expired {
            return Ok(false);
        }
        let mut new_spec = spec.clone();
        new_spec.renew_time = Some(now_micro());
        new_spec.lease_duration_seconds = Some(duration);
        if !held_by_me {
            new_spec.holder_identity = Some(me);
            new_spec.acquire_time = Some(now_micro());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The held lease; [`LeaseHandle::release`] hands it over at shutdown.
pub struct LeaseHandle {
    api: Api<Lease>,
    config: ElectionConfig,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseHandle {
    /// Stops renewing and clears the holder, so another replica takes over
    /// without waiting for the lease to expire.
    pub async fn release(self) {
        self.task.abort();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the lease"),
            Err(e) => warn!(error = %e, "could not release the lease"),
        }
    }
}

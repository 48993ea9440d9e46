//! Reporting back: the agent's status record, on a lease kept alive on a
//! timer, written at most once per debounce interval (plus jitter, so that
//! a thousand agents applying the same publish do not all write in the
//! same millisecond).
//!
//! etcd has no background lease renewal: `keep_alive` is sent every third
//! of the TTL; an answer with TTL ≤ 0 means the lease is gone (expired
//! while we could not reach the store, or revoked), and a new one is
//! granted and the status written again. A failed keep-alive (its stream
//! is bound to a connection that may be gone) does the same: a store
//! outage does not expire leases, but the leader that comes back resets
//! their TTLs, and nothing would renew them through the dead stream.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use log::{debug, warn};
use tokio::{sync::watch, time::Instant};

use super::{
    Store, StoreError,
    client::error_chain,
    records::HostStatus,
    watch::{jitter, sleep_until},
};

#[derive(Debug, Clone, Copy)]
pub struct ReporterConfig {
    /// Lease TTL in seconds (≥ 2: etcd's minimum with default timings).
    pub ttl_secs: i64,
    /// Least time between two status writes.
    pub debounce: Duration,
    /// Retry delay after a failed write.
    pub retry: Duration,
}

impl Default for ReporterConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 15,
            debounce: Duration::from_millis(100),
            retry: Duration::from_secs(1),
        }
    }
}

struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
}

/// Writes the newest value of `rx` under the host's status key until the
/// sender is dropped.
pub async fn report(
    store: Store,
    cfg: ReporterConfig,
    mut rx: watch::Receiver<Option<HostStatus>>,
) {
    let ttl = cfg.ttl_secs.max(2);
    let mut lease: Option<Lease> = None;
    let mut dirty = rx.borrow().is_some();
    let mut retry_at: Option<Instant> = None;
    let mut keepalive = tokio::time::interval(Duration::from_millis((ttl as u64 * 1000) / 3));
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
                tokio::time::sleep(cfg.debounce + jitter(cfg.debounce)).await;
            }
            _ = keepalive.tick() => {
                if let Some(l) = lease.as_mut() {
                    match keep_alive(&store, l).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("store: status lease {} is gone; granting a new one", l.id);
                            lease = None;
                            dirty = true;
                        }
                        Err(e) => {
                            // The keep-alive stream lives on one connection:
                            // once that broke (a store restart, a changed
                            // source address), it renews nothing, and the
                            // lease, reset by a restarted leader, expires
                            // with the status on it. Start over on a new
                            // lease; the old one lapses on its own.
                            debug!("store: lease keep-alive failed: {}", error_chain(&e));
                            lease = None;
                            dirty = true;
                        }
                    }
                }
            }
            _ = sleep_until(retry_at) => {}
        }
        if !dirty {
            continue;
        }
        let Some(status) = rx.borrow_and_update().clone() else {
            continue;
        };
        match write(&store, &mut lease, ttl, &status).await {
            Ok(()) => {
                dirty = false;
                retry_at = None;
            }
            Err(e) => {
                debug!("store: status write failed: {}", error_chain(&e));
                if matches!(e, StoreError::Request { .. }) {
                    // Most likely the lease expired: grant a new one.
                    lease = None;
                }
                retry_at = Some(Instant::now() + cfg.retry + jitter(cfg.retry));
            }
        }
    }
}

async fn write(
    store: &Store,
    lease: &mut Option<Lease>,
    ttl: i64,
    status: &HostStatus,
) -> Result<(), StoreError> {
    if lease.is_none() {
        let id = store.grant_lease(ttl).await?;
        let mut c = store.client();
        let (keeper, answers) = store
            .call("keep lease alive", c.lease_keep_alive(id))
            .await?;
        *lease = Some(Lease {
            id,
            keeper,
            answers,
        });
    }
    let id = lease.as_ref().map(|l| l.id).unwrap_or_default();
    store.put_status(status, id).await.map(|_| ())
}

/// Ok(false): the lease is gone.
async fn keep_alive(store: &Store, l: &mut Lease) -> Result<bool, StoreError> {
    let id = l.id;
    let fut = async {
        l.keeper.keep_alive().await?;
        l.answers.message().await
    };
    match store.call("keep lease alive", fut).await? {
        Some(answer) => Ok(answer.ttl() > 0),
        None => Err(StoreError::LeaseGone { id }),
    }
}

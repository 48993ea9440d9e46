//! The store as a source of policy for one agent: follows the store,
//! keeps the host enrolled, reports its status, and hands the daemon one
//! candidate at a time — the policy document validated with the fleet's
//! membership — whenever what the host must enforce changes (a publish, a
//! host joining, leaving, changing address, an enrollment expiring).
//!
//! The daemon applies the candidate with its atomic switch and says how it
//! went ([`FleetSource::applied`] / [`FleetSource::failed`]): the status
//! record follows, and an applied view is saved in the state directory.
//! Candidates are identified by [`Desired::input_hash`]: a view that
//! changes nothing that matters (a refresh, a re-read after compaction, a
//! status write) produces none. Membership and parsing can be memoized
//! across agents of one process ([`MembershipCache`], [`PolicyCache`], for
//! the convergence benchmark).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use log::{info, warn};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    FleetView, HostCounters, HostStatus, Store, StoreConfig,
    client::error_chain,
    enroll::{Enrollee, keep_enrolled},
    membership::{Desired, MembershipCache, MembershipMemo, next_expiry},
    snapshot::AppliedSnapshot,
    status::{ReporterConfig, report},
    watch::{Backoff, follow},
};
use crate::{
    datapath::state::unix_now,
    policy::{Policy, PolicyError},
};

/// Validated policies by input hash, shared by the agents of one process.
/// Emptied when it reaches [`POLICY_CACHE_ENTRIES`]: under churn every
/// join is a new input, and the agents only ever need the newest few.
pub type PolicyCache = Arc<Mutex<HashMap<String, Arc<Result<Policy, PolicyError>>>>>;

#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub reporter: ReporterConfig,
    /// How often interface addresses are checked for a change.
    pub address_poll: Duration,
    /// Where the applied snapshot is saved (None: not saved).
    pub state_dir: Option<PathBuf>,
    pub cache: Option<PolicyCache>,
    /// Memberships shared with other agents of this process that follow
    /// the same store (the convergence benchmark).
    pub membership_cache: Option<MembershipCache>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            reporter: ReporterConfig::default(),
            address_poll: Duration::from_secs(2),
            state_dir: None,
            cache: None,
            membership_cache: None,
        }
    }
}

/// Something for the daemon to enforce.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub desired: Desired,
    pub view: Arc<FleetView>,
    /// The document validated with the membership (shared when memoized).
    pub policy: Arc<Result<Policy, PolicyError>>,
}

impl Candidate {
    pub fn policy_revision(&self) -> i64 {
        self.desired.document.mod_revision
    }
}

/// What [`FleetSource::next`] hands out.
#[derive(Debug, Clone)]
pub enum Next {
    Apply(Candidate),
    /// The store holds a document this agent cannot use (altered, unknown
    /// format, not a document): report it, keep enforcing.
    Unusable {
        policy_revision: i64,
        error: String,
    },
}

pub struct FleetSource {
    who: Enrollee,
    views: watch::Receiver<Arc<FleetView>>,
    status: watch::Sender<Option<HostStatus>>,
    tasks: Vec<JoinHandle<()>>,
    /// Input hash (or error key) last handed out.
    handed: Option<String>,
    /// The status as of the last successful apply.
    in_force: HostStatus,
    opts: SourceOptions,
    memo: MembershipMemo,
}

impl Drop for FleetSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Evaluates a candidate's policy, through the cache when there is one.
pub fn evaluate(
    desired: &Desired,
    cache: Option<&PolicyCache>,
) -> Arc<Result<Policy, PolicyError>> {
    if let Some(c) = cache
        && let Some(hit) = c
            .lock()
            .ok()
            .and_then(|m| m.get(&desired.input_hash).cloned())
    {
        return hit;
    }
    let p = Arc::new(desired.evaluate());
    if let Some(c) = cache
        && let Ok(mut m) = c.lock()
    {
        if m.len() >= POLICY_CACHE_ENTRIES {
            m.clear();
        }
        m.insert(desired.input_hash.clone(), p.clone());
    }
    p
}

pub const POLICY_CACHE_ENTRIES: usize = 64;

impl FleetSource {
    /// Starts following the store (from `start`, a saved view, if given),
    /// enrolling and reporting. Needs a tokio runtime.
    pub fn start(
        cfg: StoreConfig,
        who: Enrollee,
        start: Option<FleetView>,
        opts: SourceOptions,
    ) -> Self {
        let (tx, views) = watch::channel(Arc::new(start.clone().unwrap_or_default()));
        // A start view has been handed out already (the daemon applied it).
        let (status, status_rx) = watch::channel(None);
        // One connection per agent, for its watch, enrollment and lease.
        let reporter = opts.reporter;
        let poll = opts.address_poll;
        let enrollee = who.clone();
        let tasks = vec![tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            let store = loop {
                match Store::connect(&cfg).await {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!("store: {}; retrying", error_chain(&e));
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            };
            tokio::join!(
                follow(cfg, Some(store.clone()), start, tx),
                keep_enrolled(store.clone(), enrollee, poll),
                report(store, reporter, status_rx),
            );
        })];
        let in_force = HostStatus {
            name: who.name.clone(),
            applied_revision: 0,
            view_revision: 0,
            generation: 0,
            policy_sha256: String::new(),
            membership_sha256: String::new(),
            last_error: None,
            error_revision: None,
            reported_at_ms: 0,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            counters: None,
        };
        let memo = match &opts.membership_cache {
            Some(c) => MembershipMemo::shared(c.clone()),
            None => MembershipMemo::default(),
        };
        Self {
            who,
            views,
            status,
            tasks,
            handed: None,
            in_force,
            opts,
            memo,
        }
    }

    pub fn host(&self) -> &str {
        &self.who.name
    }

    /// The newest complete view (possibly not applied yet).
    pub fn view(&self) -> Arc<FleetView> {
        self.views.borrow().clone()
    }

    /// Marks `c` as in force already (a saved view applied at start), so
    /// that it is not handed out again.
    pub fn mark_handed(&mut self, c: &Candidate) {
        self.handed = Some(c.desired.input_hash.clone());
    }

    /// Waits until there is something new to enforce.
    pub async fn next(&mut self) -> Next {
        loop {
            let now = unix_now();
            let view = self.views.borrow_and_update().clone();
            let unusable = format!("unusable@{}", view.revision);
            match Desired::from_view_memo(&view, now, &mut self.memo) {
                Some(Err(error)) if self.handed.as_deref() != Some(unusable.as_str()) => {
                    self.handed = Some(unusable);
                    return Next::Unusable {
                        policy_revision: view
                            .policy
                            .as_ref()
                            .map(|p| p.mod_revision)
                            .unwrap_or_default(),
                        error,
                    };
                }
                Some(Ok(desired))
                    if self.handed.as_deref() != Some(desired.input_hash.as_str()) =>
                {
                    self.handed = Some(desired.input_hash.clone());
                    let policy = evaluate(&desired, self.opts.cache.as_ref());
                    return Next::Apply(Candidate {
                        desired,
                        view,
                        policy,
                    });
                }
                _ => {}
            }
            // Nothing new: wait for the store, or for an enrollment to expire.
            let wake =
                next_expiry(&view, now).map(|t| Duration::from_secs(t.saturating_sub(now).max(1)));
            tokio::select! {
                changed = self.views.changed() => {
                    if changed.is_err() {
                        // The follower ended (it only does when we drop): wait forever.
                        std::future::pending::<()>().await;
                    }
                }
                _ = sleep_opt(wake) => {}
            }
        }
    }

    /// The candidate is in force as `generation`: report it and save it.
    pub fn applied(&mut self, c: &Candidate, generation: u64) {
        self.in_force = HostStatus {
            applied_revision: c.policy_revision(),
            view_revision: c.view.revision,
            generation,
            policy_sha256: c.desired.document.value.sha256.clone(),
            membership_sha256: c.desired.membership_sha256.clone(),
            last_error: None,
            error_revision: None,
            reported_at_ms: now_ms(),
            ..self.in_force.clone()
        };
        self.status.send_replace(Some(self.in_force.clone()));
        if let Some(dir) = &self.opts.state_dir
            && let Some(snap) = AppliedSnapshot::from_view(&c.view)
            && let Err(e) = snap.save(dir)
        {
            warn!("could not save the applied fleet view: {}", error_chain(&e));
        }
        info!(
            "fleet: policy revision {} with {} enrolled hosts in force as generation {generation}",
            c.policy_revision(),
            c.desired.inventory.devices.len()
        );
    }

    /// The datapath's totals, read now, to go with the next status report.
    /// Nothing is written before the first report (there is no status to
    /// add them to).
    pub fn counters(&mut self, totals: &crate::stats::Totals) {
        let counters = HostCounters {
            passed_packets: totals.passed_packets,
            dropped_packets: totals.dropped_packets,
            would_drop_packets: totals.would_drop_packets,
            read_at_ms: now_ms(),
        };
        self.in_force.counters = Some(counters);
        self.status.send_if_modified(|s| match s {
            Some(s) => {
                s.counters = Some(counters);
                true
            }
            None => false,
        });
    }

    /// Applying failed: what is in force stays; the error is reported.
    pub fn failed(&mut self, policy_revision: i64, error: &str) {
        let mut s = self.in_force.clone();
        s.last_error = Some(error.to_owned());
        s.error_revision = Some(policy_revision);
        s.reported_at_ms = now_ms();
        self.status.send_replace(Some(s));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

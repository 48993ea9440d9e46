//! The fleet's policy source: the policy document and the enrollment
//! records from the store (etcd), through [`crate::store::source`].
//!
//! The store's tasks (watch, enrollment, status reports) run on a runtime
//! of their own (one worker thread), so that they keep going while the
//! daemon applies a policy, and so that the first document can be waited
//! for before the daemon's runtime exists.
//!
//! At start the document comes from the view saved in the state directory
//! when there is one (an agent restarted while the store is down enforces
//! what it enforced), else from the store (waiting for it, and for a first
//! publish). `apply`/`confirm` are for the file mode: a store-driven
//! agent's policy is changed with `segment-agent publish`.

use std::{path::PathBuf, sync::Arc, time::Duration};

use log::{info, warn};

use super::source::{Applied, Document, PolicySource, Reader, SourceError};
use crate::{
    policy::{Diagnostic, Policy, PolicyError, Source},
    store::{
        StoreConfig, StoreError,
        enroll::Enrollee,
        membership::Desired,
        snapshot::AppliedSnapshot,
        source::{Candidate, FleetSource, Next, SourceOptions, evaluate},
    },
};

pub struct StoreSource {
    runtime: Arc<tokio::runtime::Runtime>,
    fleet: FleetSource,
    endpoints: String,
    /// Waiting to be read by the daemon.
    pending: Option<Next>,
    /// What the daemon last read (its answer goes with it).
    reading: Option<Candidate>,
    /// The last candidate applied.
    in_force: Option<Candidate>,
    counters_every: Option<Duration>,
}

impl StoreSource {
    /// Starts the store's tasks. `state_dir` holds the saved view.
    pub fn start(cfg: StoreConfig, who: Enrollee, state_dir: PathBuf) -> Result<Self, StoreError> {
        who.check()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("segment-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Usage {
                message: format!("cannot start the store runtime: {e}"),
            })?;
        let saved = match AppliedSnapshot::load(&state_dir) {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "the saved fleet view cannot be used ({}); waiting for the store",
                    crate::store::client::error_chain(&e)
                );
                None
            }
        };
        let start_view = saved.as_ref().map(AppliedSnapshot::view);
        let opts = SourceOptions {
            state_dir: Some(state_dir),
            ..SourceOptions::default()
        };
        let endpoints = cfg.endpoints_text();
        let fleet = {
            let _enter = runtime.enter();
            FleetSource::start(cfg, who, start_view.clone(), opts)
        };
        let mut me = Self {
            runtime: Arc::new(runtime),
            fleet,
            endpoints,
            pending: None,
            reading: None,
            in_force: None,
            counters_every: None,
        };
        if let Some(view) = start_view {
            let now = crate::datapath::state::unix_now();
            if let Some(Ok(desired)) = Desired::from_view(&view, now) {
                info!(
                    "starting from the saved fleet view (policy revision {}, {} hosts, store revision {})",
                    desired.document.mod_revision,
                    view.hosts.len(),
                    view.revision
                );
                let c = Candidate {
                    policy: evaluate(&desired, None),
                    desired,
                    view: Arc::new(view),
                };
                me.fleet.mark_handed(&c);
                me.pending = Some(Next::Apply(c));
            }
        }
        Ok(me)
    }

    /// Puts the datapath's totals into the status record every `every`.
    pub fn reporting_counters_every(mut self, every: Duration) -> Self {
        self.counters_every = Some(every);
        self
    }

    fn document(&mut self, next: Next) -> Result<Document, SourceError> {
        match next {
            Next::Apply(c) => {
                self.reading = Some(c.clone());
                let policy: Policy = match &*c.policy {
                    Ok(p) => p.clone(),
                    Err(e) => return Err(SourceError::Invalid(e.clone())),
                };
                Ok(Document {
                    policy,
                    revision: u64::try_from(c.policy_revision()).ok(),
                })
            }
            Next::Unusable {
                policy_revision,
                error,
            } => {
                self.reading = None;
                self.fleet.failed(policy_revision, &error);
                Err(SourceError::Invalid(PolicyError::new(
                    Source::new(format!("{} (store)", self.endpoints), ""),
                    vec![Diagnostic::error(None, error)],
                )))
            }
        }
    }
}

impl PolicySource for StoreSource {
    fn describe(&self) -> String {
        format!(
            "the fleet policy in {} (host {})",
            self.endpoints,
            self.fleet.host()
        )
    }

    async fn changed(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let next = self.fleet.next().await;
        self.pending = Some(next);
    }

    fn reader(&mut self) -> Reader {
        let next = match self.pending.take() {
            Some(n) => Some(n),
            // A reload (SIGHUP, `reload`, rollback): what is in force again.
            None => self.in_force.clone().map(Next::Apply),
        };
        let next = match next {
            Some(n) => n,
            None => {
                // Only at start, before the daemon's runtime exists: wait for
                // the store and a first publish.
                info!(
                    "waiting for the store at {} and a published policy",
                    self.endpoints
                );
                let rt = self.runtime.clone();
                rt.block_on(self.fleet.next())
            }
        };
        let doc = self.document(next);
        Box::new(move || doc)
    }

    fn commit(&mut self, policy: &Policy) -> Result<String, SourceError> {
        Err(SourceError::Write {
            path: PathBuf::from(&self.endpoints),
            source: anyhow::anyhow!(
                "this agent enforces the fleet's policy: publish {} with `segment-agent publish` instead (it stays in force only until the store's next change)",
                policy.source.name
            ),
        })
    }

    fn counters_every(&self) -> Option<Duration> {
        self.counters_every
    }

    fn counters(&mut self, totals: &crate::stats::Totals) {
        self.fleet.counters(totals);
    }

    fn applied(&mut self, outcome: Applied<'_>) {
        match outcome {
            Applied::InForce { generation, .. } => {
                if let Some(c) = self.reading.take() {
                    self.fleet.applied(&c, generation);
                    self.in_force = Some(c);
                }
            }
            Applied::Refused { revision, error } => {
                let rev = revision
                    .and_then(|r| i64::try_from(r).ok())
                    .or_else(|| self.reading.as_ref().map(Candidate::policy_revision))
                    .unwrap_or_default();
                self.reading = None;
                warn!("fleet: policy revision {rev} not applied: {error}");
                self.fleet.failed(rev, error);
            }
        }
    }
}

//! What the agent does once enforcement is in place: keep the policy current.
//!
//! * The policy source is watched (and SIGHUP and `segment-agent reload` ask
//!   for a reload). A policy that fails to parse, validate or compile leaves
//!   the running one in force, and the reason is logged with file:line:col.
//! * `segment-agent apply FILE --confirm-within D` applies a candidate and
//!   rolls back to the committed policy (the source's document) unless
//!   `segment-agent confirm` comes in time — a network's `commit confirmed`.
//!   Confirming commits the candidate to the source.
//! * SIGINT/SIGTERM stop the agent; enforcement stays.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use log::{error, info, warn};
use serde_json::json;
use tokio::{
    sync::{mpsc, oneshot},
    task::{JoinError, JoinHandle},
};

use super::{
    control::{self, Job},
    error::ApplyError,
    metrics,
    source::{Applied, Document, PolicySource},
};
use crate::{
    compile::{self, Compiled, IdentityAllocator},
    control::{Request, Response},
    datapath::{
        ApplyReport, Enforcer,
        flowlog::{FlowLog, log_counters, set_log_all_new},
        state::{PRIVATE, unix_now, write_atomic_mode},
    },
    metrics::AgentMetrics,
    observe::{Observation, Observer},
    policy::Policy,
};

/// Distinct (source, destination, protocol, port) an observation keeps.
const OBSERVE_LIMIT: usize = 100_000;

/// A candidate applied with `--confirm-within`, waiting for `confirm`.
pub(super) struct Pending {
    pub deadline: Instant,
    pub policy: Policy,
    pub generation: u64,
}

/// An `observe` in progress.
pub(super) struct Observing {
    pub deadline: Instant,
    pub started: Instant,
    pub observer: Observer,
    pub suppressed_before: u64,
    pub reply: oneshot::Sender<Response>,
}

pub struct Daemon<'a, S: PolicySource> {
    pub(super) source: S,
    pub(super) enforcer: &'a mut Enforcer,
    pub(super) pending: Option<Pending>,
    pub(super) flowlog: Option<FlowLog>,
    pub(super) observing: Option<Observing>,
    pub(super) reloading: Option<Reloading>,
    /// The committed policy (the source's, or a confirmed candidate) as last
    /// applied: what a rollback restores if the source's document is no
    /// longer valid by then.
    pub(super) committed: Option<Policy>,
    pub(super) metrics: Arc<Mutex<AgentMetrics>>,
    /// When the source next gets the datapath's totals.
    pub(super) counters_due: Option<Instant>,
}

impl<'a, S: PolicySource> Daemon<'a, S> {
    pub fn new(source: S, enforcer: &'a mut Enforcer, committed: Policy) -> Self {
        let flowlog = match FlowLog::open(&enforcer.paths) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!("the flow log is not available: {e:#}");
                None
            }
        };
        let metrics = AgentMetrics {
            last_reload_ok: true,
            last_reload_unix: unix_now() as f64,
            ..AgentMetrics::default()
        };
        Self {
            source,
            enforcer,
            pending: None,
            flowlog,
            observing: None,
            reloading: None,
            committed: Some(committed),
            metrics: Arc::new(Mutex::new(metrics)),
            counters_due: None,
        }
    }

    /// Serves until SIGINT or SIGTERM, logging `ready` once the control
    /// socket and the metrics listener are bound. `tick` runs every 100 ms
    /// (datapath log forwarding); so does the flow log polling.
    pub async fn serve(
        &mut self,
        metrics_addr: Option<SocketAddr>,
        access: control::Access,
        ready: &str,
        mut tick: impl FnMut(),
    ) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let sock_path = self.enforcer.paths.control_socket();
        let listener = control::bind(&sock_path, access).map_err(|e| {
            anyhow::anyhow!("creating the control socket {}: {e}", sock_path.display())
        })?;
        let (tx, mut rx) = mpsc::channel::<Job>(16);
        tokio::spawn(control::accept_loop(listener, tx));
        if let Some(addr) = metrics_addr {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                anyhow::anyhow!(
                    "serving metrics on {addr}: {e} (choose another --metrics-addr, or `none`)"
                )
            })?;
            info!("Prometheus metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(
                listener,
                self.enforcer.paths.clone(),
                self.metrics.clone(),
            ));
        }
        info!("{ready}");
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            let rollback_at = self.pending.as_ref().map(|p| p.deadline);
            let observe_until = self.observing.as_ref().map(|o| o.deadline);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", self.source.describe());
                    self.start_reload(Trigger::Signal, false, None);
                }
                Some((req, reply)) = rx.recv() => match req {
                    Request::Observe { seconds } => self.start_observing(seconds, reply),
                    Request::Reload { force } => {
                        self.start_reload(Trigger::Request, force, Some(reply));
                    }
                    req => {
                        let resp = self.handle(req);
                        let _ = reply.send(resp);
                    }
                },
                done = wait_for(self.reloading.as_mut().map(|r| &mut r.job)) => {
                    self.finish_reload(done);
                }
                _ = sleep_until(rollback_at) => self.rollback(),
                _ = sleep_until(observe_until) => self.finish_observing(),
                _ = poll.tick() => {
                    crate::datapath::local_addrs::refresh(&self.enforcer.paths);
                    tick();
                    self.poll_flows();
                    self.report_counters();
                }
                _ = self.source.changed() => {
                    info!("{} changed: reloading", self.source.describe());
                    self.start_reload(Trigger::Changed, false, None);
                }
            }
        }
        let _ = std::fs::remove_file(&sock_path);
        Ok(())
    }

    /// Hands the source the datapath's totals when they are due (the same
    /// sums as `stats` and `/metrics`, from the reason counters alone).
    fn report_counters(&mut self) {
        let Some(every) = self.source.counters_every() else {
            return;
        };
        let now = Instant::now();
        if self.counters_due.is_some_and(|due| now < due) {
            return;
        }
        self.counters_due = now.checked_add(every);
        match crate::stats::totals(&self.enforcer.paths) {
            Ok(totals) => self.source.counters(&totals),
            Err(e) => warn!("reading the datapath's counters for the status report: {e:#}"),
        }
    }

    pub(super) fn poll_flows(&mut self) {
        let Some(log) = self.flowlog.as_mut() else {
            return;
        };
        let new = log.poll(&self.enforcer.state);
        if let Some(o) = self.observing.as_mut() {
            for r in &new {
                o.observer.add(r);
            }
        }
        if let Ok(mut m) = self.metrics.lock() {
            m.flow_records_read = log.read;
            m.flow_records_kept = log.recent.len();
        }
    }

    fn start_observing(&mut self, seconds: f64, reply: oneshot::Sender<Response>) {
        use crate::control::ErrorKind;
        if self.observing.is_some() {
            let _ = reply.send(Response::failed(
                ErrorKind::Operational,
                false,
                "an observation is already running",
            ));
            return;
        }
        if self.flowlog.is_none() {
            let _ = reply.send(Response::failed(
                ErrorKind::Operational,
                false,
                "the flow log is not available: cannot observe",
            ));
            return;
        }
        // Checked before anything is turned on: a bad duration changes nothing.
        let (duration, deadline) = match crate::control::duration_from_secs(seconds)
            .and_then(|d| crate::control::deadline_after(d).map(|at| (d, at)))
        {
            Ok(d) => d,
            Err(e) => {
                let _ = reply.send(Response::error(format!("observe: {e}")));
                return;
            }
        };
        if let Err(e) = set_log_all_new(&self.enforcer.paths, true) {
            let _ = reply.send(Response::failed(
                ErrorKind::Operational,
                false,
                format!("cannot start observing: {e:#}"),
            ));
            return;
        }
        // Records already in the ring buffer predate the observation.
        self.poll_flows();
        let (_, suppressed) = log_counters(&self.enforcer.paths).unwrap_or((0, 0));
        info!("observing every new flow for {duration:?}");
        self.observing = Some(Observing {
            deadline,
            started: Instant::now(),
            observer: Observer::new(OBSERVE_LIMIT),
            suppressed_before: suppressed,
            reply,
        });
    }

    fn finish_observing(&mut self) {
        use crate::control::ErrorKind;
        self.poll_flows();
        let Some(o) = self.observing.take() else {
            return;
        };
        if let Err(e) = set_log_all_new(&self.enforcer.paths, false) {
            warn!("could not return the flow log to denied flows only: {e:#}");
        }
        let (_, suppressed) = log_counters(&self.enforcer.paths).unwrap_or((0, 0));
        let overflow = o.observer.overflow;
        let seen = o.observer.finish(
            o.started.elapsed().as_secs_f64(),
            suppressed
                .saturating_sub(o.suppressed_before)
                .saturating_add(overflow),
        );
        let path = self.enforcer.paths.state_dir.join("observed.json");
        let mut total: Observation = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        total.merge(seen.clone());
        let saved = serde_json::to_vec_pretty(&total)
            .map_err(anyhow::Error::from)
            .and_then(|b| write_atomic_mode(&path, &b, PRIVATE));
        info!(
            "observed {} distinct flows; {} in {}",
            seen.flows.len(),
            total.flows.len(),
            path.display()
        );
        let resp = match saved {
            Ok(()) => Response::ok(
                format!(
                    "observed {} distinct flows over {:.1} s ({} suppressed); {} in total in {}",
                    seen.flows.len(),
                    seen.seconds,
                    seen.suppressed,
                    total.flows.len(),
                    path.display()
                ),
                serde_json::to_value(&seen).unwrap_or_default(),
            ),
            Err(e) => Response::failed(
                ErrorKind::Operational,
                false,
                format!("observed, but could not save {}: {e:#}", path.display()),
            ),
        };
        let _ = o.reply.send(resp);
    }

    /// The candidate was not confirmed: back to the committed policy.
    fn rollback(&mut self) {
        let Some(p) = self.pending.take() else { return };
        warn!(
            "candidate {} (generation {}) was not confirmed in time: rolling back to {}",
            p.policy.source.name,
            p.generation,
            self.source.describe()
        );
        // Back to what was committed, failsafe entries or not.
        self.start_reload(Trigger::Rollback, true, None);
    }

    /// Reads, validates and compiles the source's current document on a
    /// blocking thread (a big policy takes seconds), so the control socket
    /// keeps answering meanwhile; [`Self::finish_reload`] applies it. Asked
    /// again while one runs, it runs once more afterwards (the document may
    /// have changed after the running read began).
    pub(super) fn start_reload(
        &mut self,
        trigger: Trigger,
        force: bool,
        waiter: Option<oneshot::Sender<Response>>,
    ) {
        if let Some(r) = self.reloading.as_mut() {
            let again = r.again.get_or_insert_with(|| Again {
                trigger,
                force: false,
                waiters: Vec::new(),
            });
            if matches!(trigger, Trigger::Rollback) {
                again.trigger = trigger;
            }
            again.force |= force;
            again.waiters.extend(waiter);
            return;
        }
        let reader = self.source.reader();
        let mut ids = self.enforcer.state.identities.clone();
        let job = tokio::task::spawn_blocking(move || {
            let doc = reader()?;
            let started = Instant::now();
            let compiled = compile::compile_with(&doc.policy, &mut ids).map_err(|source| {
                ApplyError::DoesNotCompile {
                    policy: doc.policy.source.name.clone(),
                    source,
                }
            })?;
            Ok(Prepared {
                doc,
                compiled,
                ids,
                compile_time: started.elapsed(),
            })
        });
        self.reloading = Some(Reloading {
            job,
            from_generation: self.enforcer.state.generation,
            trigger,
            force,
            waiters: waiter.into_iter().collect(),
            superseded: false,
            again: None,
            started: Instant::now(),
        });
    }

    /// Applies what a reload job prepared, and answers whoever asked.
    fn finish_reload(&mut self, done: Result<Result<Prepared, ApplyError>, JoinError>) {
        let Some(r) = self.reloading.take() else {
            return;
        };
        let running = self.enforcer.state.generation;
        let outcome = if r.superseded {
            Err(ApplyError::Superseded)
        } else {
            match done {
                Ok(Ok(prepared)) => {
                    let revision = prepared.doc.revision;
                    let policy = prepared.doc.policy.clone();
                    let applied = self.apply_prepared(prepared, r.force, r.from_generation);
                    self.report(revision, applied.as_ref());
                    if applied.is_ok() {
                        // The source's document is in force: it replaces an
                        // unconfirmed candidate (only now: an invalid edit
                        // must not make the candidate permanent).
                        if !matches!(r.trigger, Trigger::Rollback) && self.pending.take().is_some()
                        {
                            warn!(
                                "the unconfirmed candidate is dropped: {} is in force",
                                self.source.describe()
                            );
                        }
                        self.committed = Some(policy);
                    }
                    applied
                }
                Ok(Err(e)) => {
                    self.report(None, Err(&e));
                    Err(e)
                }
                Err(join) => Err(ApplyError::Datapath {
                    running,
                    source: anyhow::anyhow!("the reload task failed: {join}"),
                }),
            }
        };
        let answer = match &outcome {
            Ok(rep) => {
                info!(
                    "reloaded {} as generation {} in {:?} (switched after {:?}; {} entries written, {} removed; {} of {} tracked flows flushed)",
                    self.source.describe(),
                    rep.generation,
                    r.started.elapsed(),
                    rep.write_time,
                    rep.entries_written,
                    rep.entries_removed,
                    rep.flows_flushed,
                    rep.flows_scanned
                );
                if matches!(r.trigger, Trigger::Rollback) {
                    info!("rolled back: generation {} in force", rep.generation);
                }
                Response::applied(
                    format!(
                        "reloaded as generation {}{}",
                        rep.generation,
                        crate::datapath::flush::summary(&rep.flush_failures)
                    ),
                    report_json(rep),
                )
            }
            Err(e) => {
                if matches!(r.trigger, Trigger::Rollback) {
                    error!(
                        "cannot roll back to {}: {e}; restoring the last committed policy instead",
                        self.source.describe()
                    );
                }
                let summary = match e {
                    ApplyError::Invalid(s) => s.summary(),
                    other => other.to_string(),
                };
                error!("reload rejected, generation {running} stays in force: {summary}");
                if let ApplyError::Invalid(s) = e {
                    for line in s.to_string().lines() {
                        error!("  {line}");
                    }
                }
                e.response()
            }
        };
        for w in r.waiters {
            let _ = w.send(answer.clone());
        }
        if outcome.is_err() && matches!(r.trigger, Trigger::Rollback) {
            self.restore_committed();
        }
        if let Some(again) = r.again {
            self.start_reload(again.trigger, again.force, None);
            if let Some(next) = self.reloading.as_mut() {
                next.waiters = again.waiters;
            }
        }
    }

    /// The source's document cannot be read back at a rollback: apply the
    /// committed policy kept in memory (failsafe check aside: it is what
    /// was in force before the candidate).
    fn restore_committed(&mut self) {
        let Some(policy) = self.committed.clone() else {
            error!("no committed policy to restore: the candidate stays in force");
            return;
        };
        match self.apply_policy(&policy, true) {
            Ok(rep) => info!(
                "rolled back: the last committed policy ({}) is in force as generation {}",
                policy.source.name, rep.generation
            ),
            Err(e) => error!("rollback failed, the candidate stays in force: {e}"),
        }
    }

    /// An `apply` came in while a reload was being prepared: the later
    /// request wins, the reload's result is dropped.
    pub(super) fn supersede_reload(&mut self) {
        if let Some(r) = self.reloading.as_mut() {
            r.superseded = true;
            r.again = None;
        }
    }

    fn apply_prepared(
        &mut self,
        p: Prepared,
        force: bool,
        from_generation: u64,
    ) -> std::result::Result<ApplyReport, ApplyError> {
        let policy = &p.doc.policy;
        if !force {
            self.check_failsafe(policy)?;
        }
        // Compiled against the identities in force when the job started; if
        // another policy was applied meanwhile, compile again (rare).
        let (compiled, ids, compile_time) = if self.enforcer.state.generation == from_generation {
            (p.compiled, p.ids, p.compile_time)
        } else {
            let started = Instant::now();
            let (c, ids) =
                self.enforcer
                    .compile(policy)
                    .map_err(|source| ApplyError::DoesNotCompile {
                        policy: policy.source.name.clone(),
                        source,
                    })?;
            (c, ids, started.elapsed())
        };
        self.write(policy, compiled, ids, compile_time)
    }

    /// Refuses a policy that drops failsafe entries the running one has
    /// (unless forced): a half-written or mistaken file must not lock the
    /// operator out.
    pub(super) fn check_failsafe(&self, new: &Policy) -> std::result::Result<(), ApplyError> {
        let norm = |t: &str| t.split_whitespace().collect::<String>();
        let state = &self.enforcer.state;
        let Some(running) = state
            .slots
            .iter()
            .flatten()
            .find(|m| m.generation == state.generation)
        else {
            return Ok(());
        };
        let kept: std::collections::HashSet<String> = new
            .rules
            .iter()
            .filter(|r| r.is_failsafe())
            .map(|r| norm(&r.text))
            .collect();
        let dropped: Vec<String> = running
            .rules
            .iter()
            .filter(|r| r.failsafe && !kept.contains(&norm(&r.text)))
            .map(|r| r.text.clone())
            .collect();
        if dropped.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::DropsFailsafe {
                policy: new.source.name.clone(),
                dropped,
            })
        }
    }

    /// Tells the source and the metrics how an apply went.
    fn report(&mut self, revision: Option<u64>, r: std::result::Result<&ApplyReport, &ApplyError>) {
        match r {
            Ok(report) => self.source.applied(Applied::InForce {
                generation: report.generation,
                revision,
            }),
            Err(e) => self.source.applied(Applied::Refused {
                revision,
                error: &e.to_string(),
            }),
        }
        if let Ok(mut m) = self.metrics.lock() {
            if r.is_ok() {
                m.reloads_ok = m.reloads_ok.saturating_add(1);
            } else {
                m.reloads_failed = m.reloads_failed.saturating_add(1);
            }
            m.last_reload_ok = r.is_ok();
            m.last_reload_unix = unix_now() as f64;
        }
    }

    /// Applies a document given directly (`apply`): checked, compiled and
    /// written on the loop.
    pub(super) fn apply_document(
        &mut self,
        doc: &Document,
        force: bool,
    ) -> std::result::Result<ApplyReport, ApplyError> {
        let r = self.apply_policy(&doc.policy, force);
        self.report(doc.revision, r.as_ref());
        r
    }

    fn apply_policy(
        &mut self,
        policy: &Policy,
        force: bool,
    ) -> std::result::Result<ApplyReport, ApplyError> {
        if !force {
            self.check_failsafe(policy).inspect_err(|e| error!("{e}"))?;
        }
        let started = Instant::now();
        let (compiled, ids) = match self.enforcer.compile(policy) {
            Ok(c) => c,
            Err(e) => {
                let e = ApplyError::DoesNotCompile {
                    policy: policy.source.name.clone(),
                    source: e,
                };
                error!(
                    "rejected, generation {} stays in force: {e}",
                    self.enforcer.state.generation
                );
                return Err(e);
            }
        };
        self.write(policy, compiled, ids, started.elapsed())
    }

    /// Writes a compiled policy into the inactive slot and switches.
    fn write(
        &mut self,
        policy: &Policy,
        compiled: Compiled,
        ids: IdentityAllocator,
        compile_time: Duration,
    ) -> std::result::Result<ApplyReport, ApplyError> {
        for w in &policy.warnings {
            warn!("{}: {}", policy.source.name, w.message);
        }
        self.enforcer
            .apply(policy, compiled, ids, compile_time)
            .map_err(|source| {
                let e = ApplyError::Datapath {
                    running: self.enforcer.state.generation,
                    source,
                };
                error!("{e}");
                e
            })
    }
}

/// Why a reload runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trigger {
    /// The source changed.
    Changed,
    /// SIGHUP.
    Signal,
    /// `segment-agent reload`.
    Request,
    /// An unconfirmed candidate's deadline passed.
    Rollback,
}

/// A reload being prepared off the loop.
pub(super) struct Reloading {
    job: JoinHandle<std::result::Result<Prepared, ApplyError>>,
    from_generation: u64,
    trigger: Trigger,
    force: bool,
    waiters: Vec<oneshot::Sender<Response>>,
    superseded: bool,
    again: Option<Again>,
    started: Instant,
}

struct Again {
    trigger: Trigger,
    force: bool,
    waiters: Vec<oneshot::Sender<Response>>,
}

/// A document read, validated and compiled, ready to be written.
pub(super) struct Prepared {
    doc: Document,
    compiled: Compiled,
    ids: IdentityAllocator,
    compile_time: Duration,
}

async fn wait_for<T>(job: Option<&mut JoinHandle<T>>) -> Result<T, JoinError> {
    match job {
        Some(j) => j.await,
        None => std::future::pending().await,
    }
}

pub fn report_json(r: &ApplyReport) -> serde_json::Value {
    json!({
        "generation": r.generation,
        "slot": r.slot,
        "compile_ms": r.compile_time.as_secs_f64() * 1e3,
        "switch_ms": r.write_time.as_secs_f64() * 1e3,
        "entries_written": r.entries_written,
        "entries_removed": r.entries_removed,
        "flows_flushed": r.flows_flushed,
        "flows_scanned": r.flows_scanned,
        "flush_failures": r.flush_failures.iter().map(|f| format!("{:#}", anyhow::Error::new(f.clone()))).collect::<Vec<_>>(),
        "rule_entries": r.sizes.rule_entries,
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

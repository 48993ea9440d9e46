//! What `run` does once enforcement is in place: keep the policy current.
//!
//! * The policy file is watched (and SIGHUP and `segment-agent reload` ask
//!   for a reload). A policy that fails to parse, validate or compile leaves
//!   the running one in force, and the reason is logged with file:line:col.
//! * `segment-agent apply FILE --confirm-within D` applies a candidate and
//!   rolls back to the committed policy (the watched file) unless
//!   `segment-agent confirm` comes in time — a network's `commit confirmed`.
//!   Confirming writes the candidate over the watched file.
//! * SIGINT/SIGTERM stop the agent; enforcement stays.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use log::{error, info, warn};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use super::metrics;
use crate::{
    control::{Request, Response},
    datapath::{
        ApplyReport, Enforcer,
        flowlog::{FlowLog, log_counters, set_log_all_new},
        state::{unix_now, write_atomic},
    },
    metrics::AgentMetrics,
    observe::{Observation, Observer},
    policy::{self, Policy},
};

/// Distinct (source, destination, protocol, port) an observation keeps.
const OBSERVE_LIMIT: usize = 100_000;

/// A candidate applied with `--confirm-within`, waiting for `confirm`.
struct Pending {
    deadline: Instant,
    name: String,
    text: String,
    generation: u64,
}

/// An `observe` in progress.
struct Observing {
    deadline: Instant,
    started: Instant,
    observer: Observer,
    suppressed_before: u64,
    reply: oneshot::Sender<Response>,
}

pub struct Daemon<'a> {
    pub policy_path: PathBuf,
    pub enforcer: &'a mut Enforcer,
    pending: Option<Pending>,
    seen: Option<(u64, SystemTime, u64)>,
    flowlog: Option<FlowLog>,
    observing: Option<Observing>,
    pub metrics: Arc<Mutex<AgentMetrics>>,
}

type Job = (Request, oneshot::Sender<Response>);

impl<'a> Daemon<'a> {
    pub fn new(policy_path: &Path, enforcer: &'a mut Enforcer) -> Self {
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
            policy_path: policy_path.to_path_buf(),
            enforcer,
            pending: None,
            seen: file_stamp(policy_path),
            flowlog,
            observing: None,
            metrics: Arc::new(Mutex::new(metrics)),
        }
    }

    /// Serves until SIGINT or SIGTERM. `tick` runs every 100 ms (datapath
    /// log forwarding); so does the flow log polling.
    pub async fn serve(
        &mut self,
        metrics_addr: Option<SocketAddr>,
        mut tick: impl FnMut(),
    ) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let sock_path = self.enforcer.paths.control_socket();
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(16);
        tokio::spawn(accept_loop(listener, tx));
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
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            let rollback_at = self.pending.as_ref().map(|p| p.deadline);
            let observe_until = self.observing.as_ref().map(|o| o.deadline);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", self.policy_path.display());
                    let _ = self.reload();
                }
                Some((req, reply)) = rx.recv() => {
                    if let Request::Observe { seconds } = req {
                        self.start_observing(seconds, reply);
                    } else {
                        let resp = self.handle(req);
                        let _ = reply.send(resp);
                    }
                }
                _ = sleep_until(rollback_at) => self.rollback(),
                _ = sleep_until(observe_until) => self.finish_observing(),
                _ = poll.tick() => {
                    tick();
                    self.poll_flows();
                }
                _ = watch.tick() => {
                    let now = file_stamp(&self.policy_path);
                    if now != self.seen {
                        self.seen = now;
                        info!("{} changed: reloading", self.policy_path.display());
                        if self.pending.take().is_some() {
                            warn!("the policy file changed: the unconfirmed candidate is dropped");
                        }
                        let _ = self.reload();
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&sock_path);
        Ok(())
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::ok(
                format!("generation {} in force", self.enforcer.state.generation),
                json!({
                    "generation": self.enforcer.state.generation,
                    "policy": self.policy_path,
                    "pending": self.pending.as_ref().map(|p| json!({
                        "name": p.name,
                        "generation": p.generation,
                        "rollback_in_secs": p.deadline.saturating_duration_since(Instant::now()).as_secs_f64(),
                    })),
                    "interfaces": self.enforcer.state.interfaces,
                }),
            ),
            Request::Reload => {
                if self.pending.take().is_some() {
                    warn!("reload requested: the unconfirmed candidate is dropped");
                }
                self.seen = file_stamp(&self.policy_path);
                match self.reload() {
                    Ok(r) => Response::ok(
                        format!("reloaded as generation {}", r.generation),
                        report_json(&r),
                    ),
                    Err(e) => Response::error(e),
                }
            }
            Request::Apply {
                name,
                policy,
                confirm_within_secs,
            } => self.apply(&name, &policy, confirm_within_secs),
            Request::Confirm => match self.pending.take() {
                Some(p) => match write_atomic(&self.policy_path, p.text.as_bytes()) {
                    Ok(()) => {
                        self.seen = file_stamp(&self.policy_path);
                        info!(
                            "candidate {} (generation {}) confirmed and written to {}",
                            p.name,
                            p.generation,
                            self.policy_path.display()
                        );
                        Response::ok(
                            format!(
                                "generation {} confirmed; {} updated",
                                p.generation,
                                self.policy_path.display()
                            ),
                            json!({"generation": p.generation}),
                        )
                    }
                    Err(e) => {
                        self.pending = Some(p);
                        Response::error(format!(
                            "could not write {}: {e}",
                            self.policy_path.display()
                        ))
                    }
                },
                None => Response::error("nothing to confirm: no candidate is pending"),
            },
            Request::Flows { after, limit } => match self.flowlog.as_ref() {
                Some(log) => {
                    let (written, suppressed) =
                        log_counters(&self.enforcer.paths).unwrap_or((0, 0));
                    Response::ok(
                        "flows",
                        json!({
                            "records": log.recent.after(after, limit.unwrap_or(1000)),
                            "written": written,
                            "suppressed": suppressed,
                        }),
                    )
                }
                None => Response::error("this agent keeps no flow log"),
            },
            Request::Observe { .. } => Response::error("observe is answered when it ends"),
        }
    }

    fn apply(&mut self, name: &str, text: &str, confirm: Option<f64>) -> Response {
        let policy = match policy::parse(name, text) {
            Ok(p) => p,
            Err(e) => {
                error!("apply rejected: {}", e.summary());
                return Response::error(e.to_string());
            }
        };
        let report = match self.apply_policy(&policy) {
            Ok(r) => r,
            Err(e) => return Response::error(e),
        };
        match confirm {
            Some(secs) if secs > 0.0 => {
                let within = Duration::from_secs_f64(secs);
                self.pending = Some(Pending {
                    deadline: Instant::now() + within,
                    name: name.to_owned(),
                    text: text.to_owned(),
                    generation: report.generation,
                });
                info!(
                    "candidate {name} applied as generation {}; rolling back in {:?} unless confirmed",
                    report.generation, within
                );
                Response::ok(
                    format!(
                        "applied as generation {}; rolls back in {:.0}s unless `segment-agent confirm`",
                        report.generation,
                        within.as_secs_f64()
                    ),
                    report_json(&report),
                )
            }
            _ => {
                self.pending = None;
                if let Err(e) = write_atomic(&self.policy_path, text.as_bytes()) {
                    return Response::error(format!(
                        "applied as generation {}, but writing {} failed: {e}",
                        report.generation,
                        self.policy_path.display()
                    ));
                }
                self.seen = file_stamp(&self.policy_path);
                Response::ok(
                    format!(
                        "applied as generation {} and written to {}",
                        report.generation,
                        self.policy_path.display()
                    ),
                    report_json(&report),
                )
            }
        }
    }

    fn poll_flows(&mut self) {
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
        if self.observing.is_some() {
            let _ = reply.send(Response::error("an observation is already running"));
            return;
        }
        if self.flowlog.is_none() {
            let _ = reply.send(Response::error(
                "the flow log is not available: cannot observe",
            ));
            return;
        }
        if !(seconds.is_finite() && seconds > 0.0) {
            let _ = reply.send(Response::error("observe needs a positive duration"));
            return;
        }
        if let Err(e) = set_log_all_new(&self.enforcer.paths, true) {
            let _ = reply.send(Response::error(format!("cannot start observing: {e:#}")));
            return;
        }
        // Records already in the ring buffer predate the observation.
        self.poll_flows();
        let (_, suppressed) = log_counters(&self.enforcer.paths).unwrap_or((0, 0));
        info!("observing every new flow for {seconds} s");
        self.observing = Some(Observing {
            deadline: Instant::now() + Duration::from_secs_f64(seconds),
            started: Instant::now(),
            observer: Observer::new(OBSERVE_LIMIT),
            suppressed_before: suppressed,
            reply,
        });
    }

    fn finish_observing(&mut self) {
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
            suppressed.saturating_sub(o.suppressed_before) + overflow,
        );
        let path = self.enforcer.paths.state_dir.join("observed.json");
        let mut total: Observation = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        total.merge(seen.clone());
        let saved = serde_json::to_vec_pretty(&total)
            .map_err(anyhow::Error::from)
            .and_then(|b| write_atomic(&path, &b));
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
            Err(e) => Response::error(format!(
                "observed, but could not save {}: {e:#}",
                path.display()
            )),
        };
        let _ = o.reply.send(resp);
    }

    /// The candidate was not confirmed: back to the committed policy.
    fn rollback(&mut self) {
        let Some(p) = self.pending.take() else { return };
        warn!(
            "candidate {} (generation {}) was not confirmed in time: rolling back to {}",
            p.name,
            p.generation,
            self.policy_path.display()
        );
        match self.reload() {
            Ok(r) => info!("rolled back: generation {} in force", r.generation),
            Err(e) => error!("rollback failed, the candidate stays in force: {e}"),
        }
    }

    /// Validates, compiles and applies the watched file.
    pub fn reload(&mut self) -> std::result::Result<ApplyReport, String> {
        let started = Instant::now();
        let policy = match policy::load(&self.policy_path) {
            Ok(p) => p,
            Err(e) => {
                if let Ok(mut m) = self.metrics.lock() {
                    m.reloads_failed += 1;
                    m.last_reload_ok = false;
                    m.last_reload_unix = unix_now() as f64;
                }
                error!(
                    "reload rejected, generation {} stays in force: {}",
                    self.enforcer.state.generation,
                    e.summary()
                );
                for line in e.to_string().lines() {
                    error!("  {line}");
                }
                return Err(e.to_string());
            }
        };
        let r = self.apply_policy(&policy)?;
        info!(
            "reloaded {} as generation {} in {:?} (switched after {:?}; {} entries written, {} removed; {} of {} tracked flows flushed)",
            self.policy_path.display(),
            r.generation,
            started.elapsed(),
            r.write_time,
            r.entries_written,
            r.entries_removed,
            r.flows_flushed,
            r.flows_scanned
        );
        Ok(r)
    }

    fn apply_policy(&mut self, policy: &Policy) -> std::result::Result<ApplyReport, String> {
        let r = self.apply_policy_inner(policy);
        if let Ok(mut m) = self.metrics.lock() {
            if r.is_ok() {
                m.reloads_ok += 1;
            } else {
                m.reloads_failed += 1;
            }
            m.last_reload_ok = r.is_ok();
            m.last_reload_unix = unix_now() as f64;
        }
        r
    }

    fn apply_policy_inner(&mut self, policy: &Policy) -> std::result::Result<ApplyReport, String> {
        let started = Instant::now();
        let (compiled, ids) = match self.enforcer.compile(policy) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("{}: {e}", policy.source.name);
                error!(
                    "rejected, generation {} stays in force: {msg}",
                    self.enforcer.state.generation
                );
                return Err(msg);
            }
        };
        for w in &policy.warnings {
            warn!("{}: {}", policy.source.name, w.message);
        }
        self.enforcer
            .apply(policy, compiled, ids, started.elapsed())
            .map_err(|e| {
                let msg = format!("{e:#}");
                error!(
                    "applying failed, generation {} stays in force: {msg}",
                    self.enforcer.state.generation
                );
                msg
            })
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
        "rule_entries": r.sizes.rule_entries,
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Job>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let Ok(Some(line)) = lines.next_line().await else {
                return;
            };
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    if tx.send((req, reply_tx)).await.is_err() {
                        return;
                    }
                    reply_rx
                        .await
                        .unwrap_or_else(|_| Response::error("the agent is stopping"))
                }
                Err(e) => Response::error(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_default();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

/// Size, modification time and inode: changes when the file is saved, also
/// by editors that write a new file and rename it over the old one.
fn file_stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

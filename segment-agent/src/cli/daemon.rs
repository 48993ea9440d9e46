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
    path::{Path, PathBuf},
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

use crate::{
    control::{Request, Response},
    datapath::{ApplyReport, Enforcer, state::write_atomic},
    policy::{self, Policy},
};

/// A candidate applied with `--confirm-within`, waiting for `confirm`.
struct Pending {
    deadline: Instant,
    name: String,
    text: String,
    generation: u64,
}

pub struct Daemon<'a> {
    pub policy_path: PathBuf,
    pub enforcer: &'a mut Enforcer,
    pending: Option<Pending>,
    seen: Option<(u64, SystemTime, u64)>,
    /// Extra request handlers (the flow log) plug in here.
    pub flows: Option<Box<dyn FnMut(u64, Option<usize>) -> serde_json::Value + 'a>>,
}

type Job = (Request, oneshot::Sender<Response>);

impl<'a> Daemon<'a> {
    pub fn new(policy_path: &Path, enforcer: &'a mut Enforcer) -> Self {
        Self {
            policy_path: policy_path.to_path_buf(),
            enforcer,
            pending: None,
            seen: file_stamp(policy_path),
            flows: None,
        }
    }

    /// Serves until SIGINT or SIGTERM. `tick` runs every 100 ms (datapath
    /// log forwarding, flow log polling).
    pub async fn serve(&mut self, mut tick: impl FnMut()) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let sock_path = self.enforcer.paths.control_socket();
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(16);
        tokio::spawn(accept_loop(listener, tx));
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            let rollback_at = self.pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", self.policy_path.display());
                    let _ = self.reload();
                }
                Some((req, reply)) = rx.recv() => {
                    let resp = self.handle(req);
                    let _ = reply.send(resp);
                }
                _ = sleep_until(rollback_at) => self.rollback(),
                _ = poll.tick() => tick(),
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
            Request::Flows { after, limit } => match self.flows.as_mut() {
                Some(f) => Response::ok("flows", f(after, limit)),
                None => Response::error("this agent keeps no flow log"),
            },
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

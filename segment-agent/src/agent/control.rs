//! The control server: accepts connections on the control socket, reads one
//! JSON request from each, hands it to the daemon loop and writes back the
//! daemon's answer. The protocol is in [`crate::control`]; what a
//! connection may cost (how many, how long, how large) in [`super::limits`].

use std::{path::Path, time::Instant};

use log::{debug, error, info, warn};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedReadHalf},
    sync::{mpsc, oneshot},
};

use super::{
    daemon::{Daemon, Pending, report_json},
    error::ApplyError,
    limits::{
        self, Admitted, CONTROL_CONNECTIONS, MAX_READ_ONLY_REQUEST_BYTES, MAX_REQUEST_BYTES,
        REQUEST_DEADLINE, Refusals, Slot, Slots, WRITE_DEADLINE,
    },
    source::{Document, MAX_POLICY_BYTES, PolicySource, SourceError},
};
use crate::{
    control::{ErrorKind, Request, Response, deadline_after, duration_from_secs},
    datapath::flowlog::log_counters,
};

/// A request and where its answer goes.
pub(super) type Job = (Request, oneshot::Sender<Response>);

/// Who may connect: the socket's mode and group.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// `Some(gid)`: mode 0660, owned by this group (`--control-group`);
    /// `None`: mode 0600.
    pub group: Option<u32>,
}

/// Binds the control socket at `path` with exactly the mode [`Access`]
/// says, whatever the umask: it is bound inside a fresh 0700 directory,
/// given its mode and group there, and only then renamed into place, so
/// nobody can connect to it before it has its final mode.
pub(super) fn bind(path: &Path, access: Access) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join(format!(".control.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let tmp = private.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        let mode = if access.group.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = access.group {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::rename(&tmp, path)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Whether a peer (by its uid, from SO_PEERCRED) may change state: root,
/// or the user the agent runs as.
fn may_change_state(peer_uid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    matches!(peer_uid, Some(uid) if uid == 0 || uid == own)
}

pub(super) async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Job>) {
    let slots = Slots::new(CONTROL_CONNECTIONS);
    let mut refusals = Refusals::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                limits::accept_failed("control socket", &e, &mut refusals).await;
                continue;
            }
        };
        let Some((slot, how)) = slots.admit() else {
            refusals.note(
                "control socket",
                &format!("all {CONTROL_CONNECTIONS} connections are being answered"),
            );
            // Best effort, and never waiting: the answer is far smaller
            // than the socket buffer.
            let busy = Response::failed(
                ErrorKind::Operational,
                false,
                format!(
                    "the agent is answering {CONTROL_CONNECTIONS} control requests already; try again"
                ),
            );
            let mut out = serde_json::to_string(&busy).unwrap_or_default();
            out.push('\n');
            let _ = stream.try_write(out.as_bytes());
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(serve_connection(stream, slot, tx));
        if how == Admitted::Evicted {
            // Let the evicted connection's task close it before the next
            // accept, so that a flood does not pile up descriptors.
            tokio::task::yield_now().await;
        }
    }
}

/// What came in on a connection.
enum Incoming {
    Line(Vec<u8>),
    TooLarge(u64),
}

/// Reads one request line of at most `limit` bytes. `None`: the peer
/// closed without sending anything.
async fn read_request(read: OwnedReadHalf, limit: u64) -> std::io::Result<Option<Incoming>> {
    let mut line = Vec::new();
    // `take` stops the read at the limit: an endless line costs `limit`.
    let mut reader = BufReader::new(read.take(limit));
    reader.read_until(b'\n', &mut line).await?;
    if line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') && u64::try_from(line.len()).is_ok_and(|n| n >= limit) {
        return Ok(Some(Incoming::TooLarge(limit)));
    }
    Ok(Some(Incoming::Line(line)))
}

async fn serve_connection(stream: UnixStream, mut slot: Slot, tx: mpsc::Sender<Job>) {
    let peer = stream.peer_cred().ok();
    let privileged = may_change_state(peer.map(|p| p.uid()));
    let limit = if privileged {
        MAX_REQUEST_BYTES
    } else {
        MAX_READ_ONLY_REQUEST_BYTES
    };
    let (read, mut write) = stream.into_split();
    let incoming = tokio::select! {
        r = tokio::time::timeout(REQUEST_DEADLINE, read_request(read, limit)) => r,
        () = slot.evicted() => {
            debug!("control socket: closed a connection without a request to make room");
            return;
        }
    };
    slot.answering();
    let parsed = match incoming {
        Ok(Ok(Some(Incoming::Line(line)))) => {
            serde_json::from_slice::<Request>(&line).map_err(|e| format!("bad request: {e}"))
        }
        Ok(Ok(Some(Incoming::TooLarge(limit)))) => {
            warn!(
                "control socket: closed a connection whose request was longer than {limit} bytes"
            );
            Err(format!(
                "the request is longer than {limit} bytes (a policy may have {} MiB); nothing applied",
                MAX_POLICY_BYTES >> 20
            ))
        }
        Ok(Ok(None) | Err(_)) => return,
        Err(_) => {
            debug!(
                "control socket: closed a connection without a whole request in {REQUEST_DEADLINE:?}"
            );
            return;
        }
    };
    let resp = match parsed {
        Ok(req) if req.changes_state() && !privileged => {
            let uid = peer.map_or_else(|| "unknown".to_owned(), |p| p.uid().to_string());
            warn!(
                "control socket: refused a state-changing request from uid {uid} (pid {})",
                peer.and_then(|p| p.pid())
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
            );
            Response::failed(
                ErrorKind::NotPermitted,
                false,
                format!(
                    "permission denied: uid {uid} may not change the agent's policy (only root or the agent's own user may); nothing applied"
                ),
            )
        }
        Ok(req) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send((req, reply_tx)).await.is_err() {
                return;
            }
            reply_rx.await.unwrap_or_else(|_| {
                Response::failed(ErrorKind::Operational, false, "the agent is stopping")
            })
        }
        Err(e) => Response::error(e),
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_default();
    out.push('\n');
    // A peer that does not take its answer must not hold its slot.
    let _ = tokio::time::timeout(WRITE_DEADLINE, write.write_all(out.as_bytes())).await;
}

impl<S: PolicySource> Daemon<'_, S> {
    /// Answers a request (all but `observe`, which answers when it ends).
    pub(super) fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::ok(
                format!(
                    "generation {} in force{}",
                    self.enforcer.state.generation,
                    if self.reloading.is_some() {
                        "; reload in progress"
                    } else {
                        ""
                    }
                ),
                json!({
                    "generation": self.enforcer.state.generation,
                    "reloading": self.reloading.is_some(),
                    "policy": self.source.describe(),
                    "pending": self.pending.as_ref().map(|p| json!({
                        "name": p.policy.source.name,
                        "generation": p.generation,
                        "rollback_in_secs": p.deadline.saturating_duration_since(Instant::now()).as_secs_f64(),
                    })),
                    "interfaces": self.enforcer.state.interfaces,
                }),
            ),
            Request::Reload { .. } => Response::error("reload is answered when it is done"),
            Request::Apply {
                name,
                policy,
                confirm_within_secs,
                force,
            } => self.apply(&name, &policy, confirm_within_secs, force),
            Request::Confirm => match self.pending.take() {
                Some(p) => match self.source.commit(&p.policy) {
                    Ok(place) => {
                        info!(
                            "candidate {} (generation {}) confirmed and written to {place}",
                            p.policy.source.name, p.generation,
                        );
                        self.committed = Some(p.policy);
                        Response::ok(
                            format!("generation {} confirmed; {place} updated", p.generation),
                            json!({"generation": p.generation}),
                        )
                    }
                    Err(source) => {
                        let e = ApplyError::NotSaved {
                            generation: p.generation,
                            source,
                        };
                        error!("confirm: {e}");
                        self.pending = Some(p);
                        e.response()
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
                None => Response::failed(
                    ErrorKind::Operational,
                    false,
                    "this agent keeps no flow log",
                ),
            },
            Request::Observe { .. } => Response::error("observe is answered when it ends"),
        }
    }

    fn apply(&mut self, name: &str, text: &str, confirm: Option<f64>, force: bool) -> Response {
        // Everything that can refuse the request is checked before the
        // candidate is applied: once it is, its rollback is armed.
        let deadline = confirm
            .map(|secs| duration_from_secs(secs).and_then(|d| Ok((d, deadline_after(d)?))))
            .transpose();
        let deadline = match deadline {
            Ok(d) => d,
            Err(e) => {
                let e = ApplyError::from(e);
                error!("apply rejected: {e}");
                return e.response();
            }
        };
        let policy = match self.source.resolve(name, text) {
            Ok(p) => p,
            Err(e) => {
                error!("apply rejected: {}", e.summary());
                return ApplyError::from(SourceError::from(e)).response();
            }
        };
        let doc = Document::local(policy);
        // The later request wins over a reload still being read.
        self.supersede_reload();
        // A candidate replaces any earlier one; if it applies, it is rolled
        // back at `deadline` unless confirmed.
        let earlier = self.pending.take();
        let report = match self.apply_document(&doc, force) {
            Ok(r) => r,
            Err(e) => {
                self.pending = earlier;
                return e.response();
            }
        };
        let policy = doc.policy;
        match deadline {
            Some((within, at)) => {
                self.pending = Some(Pending {
                    deadline: at,
                    policy,
                    generation: report.generation,
                });
                info!(
                    "candidate {name} applied as generation {}; rolling back in {:?} unless confirmed",
                    report.generation, within
                );
                Response::applied(
                    format!(
                        "applied as generation {}; rolls back in {:.0}s unless `segment-agent confirm`",
                        report.generation,
                        within.as_secs_f64()
                    ),
                    report_json(&report),
                )
            }
            None => match self.source.commit(&policy) {
                Ok(place) => {
                    self.committed = Some(policy);
                    Response::applied(
                        format!(
                            "applied as generation {} and written to {place}",
                            report.generation
                        ),
                        report_json(&report),
                    )
                }
                Err(source) => {
                    let e = ApplyError::NotSaved {
                        generation: report.generation,
                        source,
                    };
                    error!("apply: {e}");
                    e.response()
                }
            },
        }
    }
}

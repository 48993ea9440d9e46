//! Limits on what the agent's sockets may cost, so that the operator can
//! always reach the control socket: however many connections are held open
//! to the metrics port or to the control socket, and whatever they send.
//!
//! * the soft open-files limit is raised to the hard one at startup;
//! * the control socket and the metrics port each serve at most
//!   [`CONTROL_CONNECTIONS`] / [`METRICS_CONNECTIONS`] connections at once;
//! * the metrics server never takes one of the last [`FD_RESERVE`] file
//!   descriptors: those are the control socket's (and the daemon's own);
//! * a request (control line, HTTP head) must arrive within
//!   [`REQUEST_DEADLINE`] and fit its size limit, an answer must be taken
//!   within [`WRITE_DEADLINE`]; otherwise the connection is closed.

use std::{
    collections::VecDeque,
    os::fd::RawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use log::warn;
use tokio::sync::oneshot;

use super::source::MAX_POLICY_BYTES;

/// Control connections served at once.
pub const CONTROL_CONNECTIONS: usize = 64;
/// Metrics connections served at once.
pub const METRICS_CONNECTIONS: usize = 64;
/// File descriptors the metrics server leaves free: the control socket's
/// connections and what the daemon opens while it works (policy files,
/// maps during an apply).
pub const FD_RESERVE: u64 = 128;
/// Time a client has to send its whole request (line or HTTP head).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// The largest HTTP request head the metrics server reads.
pub const HTTP_HEAD_BYTES: usize = 16 << 10;
/// The largest control request from a peer that may change state: an
/// `apply` of the largest policy a file may have ([`MAX_POLICY_BYTES`]),
/// JSON-escaped (at most twice as long for
/// a text without control characters), and the rest of the request.
pub const MAX_REQUEST_BYTES: u64 = MAX_POLICY_BYTES * 2 + (64 << 10);
/// The largest control request from any other peer: it may only ask
/// `status` and `flows`, which are a few dozen bytes.
pub const MAX_READ_ONLY_REQUEST_BYTES: u64 = 64 << 10;

/// Raises the soft RLIMIT_NOFILE to the hard limit (systemd gives services
/// 1024 soft, 524288 hard by default: the soft limit is for programs that
/// still use `select`, which the agent does not). Returns (before, after).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}

/// Whether a newly accepted descriptor leaves [`FD_RESERVE`] descriptors
/// free. The kernel hands out the lowest free number, so every number
/// below `fd` is in use: at most `soft limit - fd - 1` remain.
pub fn leaves_reserve(fd: RawFd) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return true;
    }
    let fd = u64::try_from(fd).unwrap_or(u64::MAX);
    fd.saturating_add(FD_RESERVE) < lim.rlim_cur
}

/// What to do when `accept` fails. Out of descriptors (EMFILE, ENFILE) or
/// memory, the pending connection stays in the backlog and the listener
/// stays readable: retrying at once would spin, so wait a little.
pub async fn accept_failed(what: &str, e: &std::io::Error, refusals: &mut Refusals) {
    refusals.note(what, &format!("accept failed: {e}"));
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Logs refused connections at most every 10 s (a flood must not flood
/// the log too), with how many there were.
#[derive(Debug, Default)]
pub struct Refusals {
    last: Option<Instant>,
    since: u64,
}

impl Refusals {
    pub fn note(&mut self, what: &str, why: &str) {
        self.since = self.since.saturating_add(1);
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        warn!(
            "{what}: {why}; {} connection(s) closed at once since the last such message",
            self.since
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// A count of open connections, capped; a [`Counted`] per connection.
#[derive(Debug, Clone)]
pub struct Capped {
    open: Arc<AtomicUsize>,
    cap: usize,
}

impl Capped {
    pub fn new(cap: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            cap,
        }
    }

    /// A place for one more connection, if there is one.
    pub fn admit(&self) -> Option<Counted> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.cap).then(|| n.saturating_add(1))
            })
            .ok()
            .map(|_| Counted(self.open.clone()))
    }
}

/// One connection counted by [`Capped`], until dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The control socket's connections. At the cap, a new connection takes
/// the place of the oldest one that has not sent its request yet (which
/// is closed): the operator's `status`, sent as soon as it connects, gets
/// in whoever holds idle connections — the socket's peers are root or the
/// control group, so a uid says nothing about who is the operator. Only
/// when every connection is being answered is the new one closed.
#[derive(Debug, Clone)]
pub struct Slots {
    inner: Arc<Mutex<SlotsInner>>,
    cap: usize,
}

#[derive(Debug, Default)]
struct SlotsInner {
    open: usize,
    next_id: u64,
    /// Connections still reading their request, oldest first, with the
    /// sender that closes them.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Whether [`Slots::admit`] made room by closing a waiting connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    Free,
    Evicted,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Arc::default(),
            cap,
        }
    }

    /// A slot for a new connection, or `None` when all are answering.
    pub fn admit(&self) -> Option<(Slot, Admitted)> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let how = if inner.open < self.cap {
            Admitted::Free
        } else {
            let (_, close) = inner.waiting.pop_front()?;
            // The evicted connection's task closes it and gives its count
            // back; until then it is counted, so the count stays true.
            let _ = close.send(());
            Admitted::Evicted
        };
        inner.open = inner.open.saturating_add(1);
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        let (close, evicted) = oneshot::channel();
        inner.waiting.push_back((id, close));
        Some((
            Slot {
                slots: self.clone(),
                id,
                evicted: Some(evicted),
            },
            how,
        ))
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner.lock().map(|i| i.open).unwrap_or_default()
    }
}

/// One control connection's place in [`Slots`].
#[derive(Debug)]
pub struct Slot {
    slots: Slots,
    id: u64,
    evicted: Option<oneshot::Receiver<()>>,
}

impl Slot {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&mut self) {
        // A dropped sender means the slot is being freed: not evicted.
        let evicted = match self.evicted.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        if !evicted {
            std::future::pending::<()>().await;
        }
    }

    /// The request is in: from now on the connection may not be evicted.
    pub fn answering(&mut self) {
        self.evicted = None;
        let mut inner = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.waiting.retain(|(id, _)| *id != self.id);
        inner.open = inner.open.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_counts_and_refuses_beyond_the_cap() {
        let c = Capped::new(2);
        let a = c.admit().expect("first");
        let _b = c.admit().expect("second");
        assert!(c.admit().is_none());
        drop(a);
        assert!(c.admit().is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn slots_evict_the_oldest_waiting_and_refuse_when_all_answer() {
        let slots = Slots::new(2);
        let (mut first, how) = slots.admit().expect("first");
        assert_eq!(how, Admitted::Free);
        let (mut second, _) = slots.admit().expect("second");
        let (mut third, how) = slots.admit().expect("third takes the first's place");
        assert_eq!(how, Admitted::Evicted);
        // The first is told to close, the second is not.
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest waiting connection is evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second.evicted())
                .await
                .is_err()
        );
        assert_eq!(slots.open(), 3, "counted until its task closes it");
        drop(first);
        assert_eq!(slots.open(), 2);
        second.answering();
        third.answering();
        assert!(
            slots.admit().is_none(),
            "all answering: the new one is refused"
        );
        drop(third);
        assert!(slots.admit().is_some());
    }

    #[test]
    fn the_reserve_is_below_the_soft_limit() {
        let (_, soft) = raise_nofile_limit().expect("rlimit");
        let soft = RawFd::try_from(soft).unwrap_or(RawFd::MAX);
        assert!(leaves_reserve(3));
        let reserve = RawFd::try_from(FD_RESERVE).expect("small");
        assert!(!leaves_reserve(soft.saturating_sub(reserve)));
    }

    #[test]
    fn the_largest_policy_fits_a_request() {
        let policy = "x\n".repeat(usize::try_from(MAX_POLICY_BYTES / 2).expect("fits"));
        let req = serde_json::to_string(&crate::control::Request::Apply {
            name: "p.yaml".into(),
            policy,
            confirm_within_secs: Some(60.0),
            force: false,
        })
        .expect("json");
        assert!(u64::try_from(req.len()).expect("fits") < MAX_REQUEST_BYTES);
    }
}

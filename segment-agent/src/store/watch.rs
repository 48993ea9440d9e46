//! Following the store: a complete view of the policy and the enrollments,
//! kept current by one watch over the agent range.
//!
//! The traps (see FLEET-FACTS): a watch is a raw stream, so its creation,
//! cancellation and compaction answers are checked here; it resumes from
//! the revision after the last one seen; a watch from a compacted revision
//! is cancelled with `compact_revision` and recreating it would fail again,
//! so the whole range is re-read at the current revision (keys that
//! vanished vanish from the view because the view is replaced) and watched
//! from there; progress notifications never advance the revision (etcd
//! 3.4 can send a requested one ahead of pending events). Views are handed
//! out whole, after every event of a revision was applied: a reader never
//! sees half a transaction.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{EventType, WatchOptions};
use log::{debug, info, warn};
use tokio::sync::watch;

use super::{
    Store, StoreConfig,
    client::error_chain,
    keys::{KeyKind, Keys},
    records::{Enrollment, PolicyDocument, Stored, decode},
};

/// Enrollments by host name. Names and records are shared: when a change
/// must copy a map that another view still holds, it copies pointers, not
/// a thousand records.
pub type Hosts = BTreeMap<Arc<str>, Arc<Stored<Enrollment>>>;

/// The policy document and the enrollments, complete up to `revision`.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// The store revision this view is complete up to.
    pub revision: i64,
    pub policy: Option<Stored<PolicyDocument>>,
    /// Set when the policy key holds something that is not a document.
    pub policy_error: Option<String>,
    /// Shared between views (copied on write): a publish hands out a new
    /// view without copying a thousand enrollments.
    pub hosts: Arc<Hosts>,
    /// The store revision whose enrollments `hosts` holds: that of the
    /// last change to them, or of the read that filled them. Views of one
    /// store with the same `hosts_revision` hold the same enrollments.
    pub hosts_revision: i64,
    /// Records that could not be decoded, by key (they are ignored).
    pub invalid: BTreeMap<String, String>,
    /// How many times the whole range was read (1 at the start; one more
    /// after each compaction or lost position).
    pub reads: u64,
}

impl FleetView {
    /// Applies a put of `key`.
    pub fn put(&mut self, keys: &Keys, key: &[u8], value: &[u8], mod_revision: i64) {
        let key_text = String::from_utf8_lossy(key).into_owned();
        self.invalid.remove(&key_text);
        match keys.classify(key) {
            KeyKind::Policy => match decode::<PolicyDocument>(key, value) {
                Ok(value) => {
                    self.policy = Some(Stored {
                        value,
                        mod_revision,
                    });
                    self.policy_error = None;
                }
                Err(e) => {
                    let msg = error_chain(&e);
                    self.policy = None;
                    self.policy_error = Some(msg.clone());
                    self.invalid.insert(key_text, msg);
                }
            },
            KeyKind::Host(name) => match decode::<Enrollment>(key, value) {
                Ok(value) if value.name == name => {
                    Arc::make_mut(&mut self.hosts).insert(
                        name.into(),
                        Arc::new(Stored {
                            value,
                            mod_revision,
                        }),
                    );
                    self.hosts_revision = self.hosts_revision.max(mod_revision);
                }
                Ok(value) => {
                    self.remove_host(&name, mod_revision);
                    self.invalid.insert(
                        key_text,
                        format!("the record names host `{}`, its key `{name}`", value.name),
                    );
                }
                Err(e) => {
                    self.remove_host(&name, mod_revision);
                    self.invalid.insert(key_text, error_chain(&e));
                }
            },
            KeyKind::Status(_) | KeyKind::Other => {}
        }
        self.revision = self.revision.max(mod_revision);
    }

    fn remove_host(&mut self, name: &str, revision: i64) {
        if self.hosts.contains_key(name) {
            Arc::make_mut(&mut self.hosts).remove(name);
            self.hosts_revision = self.hosts_revision.max(revision);
        }
    }

    /// Applies a delete of `key` at `revision`.
    pub fn delete(&mut self, keys: &Keys, key: &[u8], revision: i64) {
        self.invalid.remove(&*String::from_utf8_lossy(key));
        match keys.classify(key) {
            KeyKind::Policy => {
                self.policy = None;
                self.policy_error = None;
            }
            KeyKind::Host(name) => self.remove_host(&name, revision),
            KeyKind::Status(_) | KeyKind::Other => {}
        }
        self.revision = self.revision.max(revision);
    }
}

/// Retry delays: doubling from `min` to `max`, with up to 50 % jitter so
/// that a thousand agents do not come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d + jitter(d / 2)
    }
}

/// A random duration in `[0, max)`.
pub fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if max.is_zero() {
        return max;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let r = h.finish();
    Duration::from_nanos(r % (max.as_nanos().min(u128::from(u64::MAX)) as u64))
}

enum WatchEnd {
    /// The position is gone: re-read everything.
    Compacted(i64),
    Failed(String),
    /// Nobody listens any more.
    Closed,
}

/// Follows the store until every receiver of `tx` is gone. `start` is the
/// view to resume from (a persisted snapshot); without one, the range is
/// read first. Each complete new view is sent on `tx`. `store` is a
/// connection to use (else one is made from `cfg`).
pub async fn follow(
    cfg: StoreConfig,
    store: Option<Store>,
    start: Option<FleetView>,
    tx: watch::Sender<Arc<FleetView>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut store = store;
    let mut view = start;
    let mut reads = view.as_ref().map(|v| v.reads).unwrap_or(0);
    let mut need_read = view.is_none();
    loop {
        if tx.is_closed() {
            return;
        }
        let s = match &store {
            Some(s) => s.clone(),
            None => match Store::connect(&cfg).await {
                Ok(s) => {
                    store = Some(s.clone());
                    s
                }
                Err(e) => {
                    warn!("store: {}; retrying", error_chain(&e));
                    pause(&mut backoff, &tx).await;
                    continue;
                }
            },
        };
        if need_read {
            match s.read_view().await {
                Ok(mut v) => {
                    reads += 1;
                    v.reads = reads;
                    debug!("store: read the fleet at revision {}", v.revision);
                    tx.send_replace(Arc::new(v.clone()));
                    view = Some(v);
                    need_read = false;
                }
                Err(e) => {
                    warn!("store: {}; retrying", error_chain(&e));
                    pause(&mut backoff, &tx).await;
                    continue;
                }
            }
        }
        let Some(v) = view.as_mut() else {
            need_read = true;
            continue;
        };
        match watch_once(&s, v, &tx, &mut backoff).await {
            WatchEnd::Compacted(rev) => {
                info!(
                    "store: revision {} was compacted (compaction at {rev}): re-reading the policy and enrollments",
                    v.revision + 1
                );
                need_read = true;
            }
            WatchEnd::Failed(e) => {
                warn!(
                    "store: watch from revision {} lost: {e}; enforcement continues, retrying",
                    v.revision + 1
                );
                pause(&mut backoff, &tx).await;
            }
            WatchEnd::Closed => return,
        }
    }
}

async fn pause(backoff: &mut Backoff, tx: &watch::Sender<Arc<FleetView>>) {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay()) => {}
        _ = tx.closed() => {}
    }
}

async fn watch_once(
    s: &Store,
    view: &mut FleetView,
    tx: &watch::Sender<Arc<FleetView>>,
    backoff: &mut Backoff,
) -> WatchEnd {
    let keys = s.keys().clone();
    let (start, end) = keys.agent_range();
    let opts = WatchOptions::new()
        .with_range(end)
        .with_start_revision(view.revision + 1);
    let mut c = s.client();
    let mut stream = match s.call("watch", c.watch(start, Some(opts))).await {
        Ok(st) => st,
        Err(e) => return WatchEnd::Failed(error_chain(&e)),
    };
    let mut pace = Pace::new(VIEW_INTERVAL);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = sleep_until(pace.due()) => {
                pace.sent();
                tx.send_replace(Arc::new(view.clone()));
                continue;
            }
            _ = tx.closed() => return WatchEnd::Closed,
        };
        let mut changed = false;
        let mut end = absorb(msg, view, &keys, backoff, &mut changed);
        // Responses already waiting are applied before the view is handed
        // out: under a burst of writes a reader gets one view, not many.
        while end.is_none() {
            let msg = tokio::select! {
                biased;
                m = stream.message() => m,
                _ = std::future::ready(()) => break,
            };
            end = absorb(msg, view, &keys, backoff, &mut changed);
        }
        if changed {
            pace.changed();
        }
        if end.is_some() || pace.send_now() {
            if pace.owed() {
                pace.sent();
                tx.send_replace(Arc::new(view.clone()));
            }
            if let Some(end) = end {
                return end;
            }
        }
    }
}

/// Least time between two views handed out while writes keep coming (a
/// fleet enrolling hosts at 100 per second). Each new view costs the
/// agent a copy of the enrollments (the reader holds the last one) and a
/// membership computation over every host, so without a pace an agent's
/// work grows with the fleet's size times its write rate; with it, at most
/// one view per interval. The first change after a quiet interval goes out
/// at once: a publish is not delayed.
const VIEW_INTERVAL: Duration = Duration::from_millis(50);

/// When the follower hands out a view: at once after a quiet interval,
/// else when the interval since the last one is over (leading and
/// trailing edge).
#[derive(Debug)]
struct Pace {
    every: Duration,
    last: Option<tokio::time::Instant>,
    owed: bool,
}

impl Pace {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            owed: false,
        }
    }

    fn changed(&mut self) {
        self.owed = true;
    }

    fn owed(&self) -> bool {
        self.owed
    }

    /// Whether an owed view may go out now.
    fn send_now(&self) -> bool {
        self.owed && self.last.is_none_or(|t| t.elapsed() >= self.every)
    }

    /// When an owed view becomes due (None: nothing owed).
    fn due(&self) -> Option<tokio::time::Instant> {
        self.owed.then(|| match self.last {
            Some(t) => t + self.every,
            None => tokio::time::Instant::now(),
        })
    }

    fn sent(&mut self) {
        self.owed = false;
        self.last = Some(tokio::time::Instant::now());
    }
}

/// Sleeps until `at`; never wakes without one.
pub(super) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies one watch response to `view`; `Some` when the watch ended.
fn absorb(
    msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    view: &mut FleetView,
    keys: &Keys,
    backoff: &mut Backoff,
    changed: &mut bool,
) -> Option<WatchEnd> {
    let resp = match msg {
        Ok(Some(r)) => r,
        Ok(None) => return Some(WatchEnd::Failed("the store closed the watch stream".into())),
        Err(e) => return Some(WatchEnd::Failed(error_chain(&e))),
    };
    if resp.compact_revision() > 0 {
        return Some(WatchEnd::Compacted(resp.compact_revision()));
    }
    if resp.canceled() {
        let reason = resp.cancel_reason();
        return Some(WatchEnd::Failed(format!(
            "the store cancelled the watch ({})",
            if reason.is_empty() {
                "no reason given"
            } else {
                reason
            }
        )));
    }
    if resp.created() {
        backoff.reset();
        debug!("store: watching from revision {}", view.revision + 1);
    }
    // A creation or progress notification has no events: it never
    // advances the view.
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        *changed = true;
        match ev.event_type() {
            EventType::Put => view.put(keys, kv.key(), kv.value(), kv.mod_revision()),
            EventType::Delete => view.delete(keys, kv.key(), kv.mod_revision()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_change_goes_out_at_once_and_a_burst_once_per_interval() {
        let every = Duration::from_millis(50);
        let mut p = Pace::new(every);
        assert_eq!(p.due(), None, "nothing owed, nothing due");
        assert!(!p.send_now());

        p.changed();
        assert!(p.send_now(), "the first change is not delayed");
        p.sent();
        assert!(!p.owed());

        // A burst right after: owed, due one interval after the last view.
        let t0 = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        p.changed();
        p.changed();
        assert!(!p.send_now());
        assert_eq!(p.due(), Some(t0 + every));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(p.send_now(), "due once the interval is over");
        p.sent();

        // After a quiet interval, a change goes out at once again.
        tokio::time::advance(Duration::from_millis(200)).await;
        p.changed();
        assert!(p.send_now());
    }
}

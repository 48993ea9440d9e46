//! Rebuilding the conntrack filter (`SEG_CTF_V1`, layout in
//! `segment_common::ct_filter`).
//!
//! The datapath tests one bit per flow key before it looks a packet's flow
//! up in `SEG_CT_V2` and `SEG_CTPEND_V1`; a clear bit means neither table
//! holds an entry, so a flood of packets of unknown flows skips two lookups
//! that would each miss in a multi-MiB bucket array. Bits only accumulate
//! (the datapath sets them, entries expire or are evicted without clearing
//! them), so the agent rebuilds the filter from the tables once enough new
//! bits have accumulated.
//!
//! # Why a clear bit never hides an entry
//!
//! The datapath sets an entry's bit in *both* bitmaps right after it
//! inserts the entry, and tests the *active* one. (Between the insert and
//! the bit, a packet of the flow on another CPU misses it, exactly as if it
//! had come a moment before the insert: the creation takes effect with the
//! bit.) The invariant: every entry in the tables has its bit set in the
//! active bitmap. It holds for a fresh map, which has no active bitmap (the
//! datapath then looks everything up). A rebuild, with bitmap `X` active
//! and `Y` inactive:
//!
//! 1. waits for an RCU grace period ([`GracePeriod`]): afterwards no
//!    program run still tests `Y` (active before the previous switch), and
//!    none still hashes with a key older than the one in the map;
//! 2. clears `Y`, word by word;
//! 3. walks both tables and sets the bit of every key it meets in `Y`;
//! 4. makes `Y` active.
//!
//! Take an entry present when `Y` becomes active. Created before the clear
//! of its word ended: it was in its table before the walk started and
//! stayed there (a removed entry needs no bit), so the walk met it — a hash
//! table walk sees every entry present from its start to its end, whatever
//! is inserted or removed meanwhile (an iteration whose current key
//! vanished restarts from the first bucket, which only repeats keys). Its
//! bit set after the clear of its word (during the clear, the walk, or
//! later): the bit survives, since only step 2 clears and every update of
//! a word — the datapath's and the walk's — is an atomic OR. Either way its
//! bit is in `Y`. Moves from `SEG_CTPEND_V1` to `SEG_CT_V2` set the bit
//! again, so an entry that moved across the walk is covered by the second
//! case. `X` meanwhile stays active and keeps the invariant, since the
//! datapath sets bits in both.
//!
//! A rebuild that fails or is interrupted (the agent dies) before step 4
//! leaves `X` active and correct. An agent that is gone leaves a filter
//! that only fills up: correct, less useful. A restarted agent adopts the
//! pinned filter as it is (same key, same active bitmap) and rebuilds it
//! when due.
//!
//! The agent itself never creates entries in these tables (its flush only
//! removes them, and its tombstones go to `SEG_CTGONE_V1`, which is not
//! filtered); anything in user space that does must call [`Filter::note`].
//!
//! One rebuilder at a time: two interleaved rebuilds could clear the bitmap
//! the other just made active. The agent's pin-directory lock makes sure.
//!
//! # The key
//!
//! Written once, into a fresh map (no active bitmap yet), from the kernel's
//! random generator; never changed while the map lives (bpffs forgets it at
//! reboot, so it is a per-boot key). Bits set with an older key (zero, by
//! packets before the agent wrote it) are never tested: the first rebuild
//! waits a grace period and then walks the tables.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use log::{info, warn};
use segment_common::{
    CtKey, CtValue,
    ct_filter::{CTF_ACTIVE, CTF_BITS, CTF_ENTRIES, CTF_KEY, CTF_WORDS, bit_of, hash, word_index},
    map_names,
};

use super::{grace::GracePeriod, mmap::Mapping, paths::Paths};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
    #[error("{name} has {found} entries, this agent expects {expected}")]
    Layout {
        name: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the keys of {name}: {source}")]
    Walk {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "the walk of {name} did not end after {steps} steps (entries keep vanishing under it); the filter stays as it was"
    )]
    WalkTooLong { name: &'static str, steps: u64 },
    #[error("getting a random key: {0}")]
    Random(#[source] std::io::Error),
    #[error("waiting for an RCU grace period: {0}")]
    Grace(#[source] std::io::Error),
}

/// New bits, beyond what the last rebuild found, that make another rebuild
/// worth its walk: 1/32 of the bitmap (3 points of false positives).
pub const REBUILD_NEW_BITS: u32 = CTF_BITS / 32;
/// Fill below which a rebuild is not worth it whatever it would find: 1/16
/// (a 6% chance that a packet of an unknown flow does the lookups).
pub const REBUILD_MIN_FILL: u32 = CTF_BITS / 16;

/// Whether to rebuild now: there is no active bitmap yet, or the active one
/// is filled enough and has gained [`REBUILD_NEW_BITS`] since the last
/// rebuild (`built`: its fill then; unknown for an adopted filter). Churn,
/// not size, triggers it: tables that are simply full are not walked again
/// and again.
pub fn due(active: u32, fill: u32, built: Option<u32>) -> bool {
    if active != 1 && active != 2 {
        return true;
    }
    fill >= REBUILD_MIN_FILL && fill.saturating_sub(built.unwrap_or(0)) >= REBUILD_NEW_BITS
}

/// The bitmap a rebuild fills (0 or 1): the one not active.
pub fn target(active: u32) -> u32 {
    if active == 1 { 1 } else { 0 }
}

/// What one rebuild did.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    /// The bitmap now active (0 or 1).
    pub bitmap: u32,
    /// Keys met in the tables.
    pub entries: u64,
    /// Bits set in the new bitmap right after the switch.
    pub fill: u32,
    pub took: Duration,
}

/// The filter map, mapped into the agent's memory: the walk sets bits with
/// the same atomic OR the datapath uses.
pub struct Filter {
    mapping: Mapping,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for Filter {}

impl Filter {
    pub fn open(paths: &Paths) -> Result<Self, FilterError> {
        let name = map_names::CONNTRACK_FILTER;
        let path = paths.map(name);
        let map = MapData::from_pin(&path).map_err(|source| FilterError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let info = map.info().map_err(|source| FilterError::Open {
            path: path.display().to_string(),
            source,
        })?;
        if info.max_entries() != CTF_ENTRIES || info.value_size() != 8 {
            return Err(FilterError::Layout {
                name,
                found: info.max_entries(),
                expected: CTF_ENTRIES,
            });
        }
        let mapping = Mapping::new(map, (CTF_ENTRIES as usize).saturating_mul(8))
            .map_err(|source| FilterError::Mmap { name, source })?;
        Ok(Self { mapping })
    }

    fn word(&self, i: u32) -> &AtomicU64 {
        assert!(i < CTF_ENTRIES);
        // SAFETY: in bounds of the mapping (checked against the map's size
        // in `open`), 8-byte aligned (page-aligned base, u64 values).
        unsafe { &*self.mapping.base().cast::<AtomicU64>().add(i as usize) }
    }

    /// The active bitmap as the datapath reads it: 0 none, 1 or 2.
    pub fn active(&self) -> u32 {
        self.word(CTF_ACTIVE).load(Ordering::SeqCst) as u32
    }

    pub fn key(&self) -> [u64; 2] {
        [
            self.word(CTF_KEY).load(Ordering::SeqCst),
            self.word(CTF_KEY + 1).load(Ordering::SeqCst),
        ]
    }

    /// Gives a fresh filter its random key; an adopted one keeps its own.
    /// Returns whether it wrote one.
    pub fn ensure_key(&self) -> Result<bool, FilterError> {
        if self.key() != [0, 0] || self.active() != 0 {
            return Ok(false);
        }
        let mut key = [0u64; 2];
        // SAFETY: getrandom writes at most 16 bytes into `key`, which we own.
        let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), 16, 0) };
        if n != 16 {
            return Err(FilterError::Random(std::io::Error::last_os_error()));
        }
        self.word(CTF_KEY).store(key[0], Ordering::SeqCst);
        self.word(CTF_KEY + 1).store(key[1], Ordering::SeqCst);
        Ok(true)
    }

    /// What the datapath concludes for `k`: `false` only when the active
    /// bitmap proves that neither table holds an entry for it.
    pub fn may_hold(&self, k: &CtKey) -> bool {
        let which = match self.active() {
            a @ (1 | 2) => a.saturating_sub(1),
            _ => return true,
        };
        let (w, mask) = bit_of(hash(&self.key(), k));
        self.word(word_index(which, w)).load(Ordering::SeqCst) & mask != 0
    }

    /// Makes the datapath look every flow up again, as before the first
    /// build (always safe; the next rebuild turns the filter back on). For
    /// measuring what the filter saves.
    pub fn disable(&self) {
        self.word(CTF_ACTIVE).store(0, Ordering::SeqCst);
    }

    /// Records an entry for `k` written into a conntrack table from user
    /// space, as the datapath does for its own: whoever inserts an entry
    /// (a tool, a test restoring one) must call this right after, or the
    /// datapath may not find it once a rebuild dropped the key's old bit.
    pub fn note(&self, k: &CtKey) {
        let (w, mask) = bit_of(hash(&self.key(), k));
        for which in [0, 1] {
            self.word(word_index(which, w))
                .fetch_or(mask, Ordering::SeqCst);
        }
    }

    /// Bits set in bitmap `which` (0 or 1).
    pub fn fill(&self, which: u32) -> u32 {
        (0..CTF_WORDS)
            .map(|w| {
                self.word(word_index(which, w))
                    .load(Ordering::Relaxed)
                    .count_ones()
            })
            .sum()
    }

    /// Bits set in the active bitmap (0 without one).
    pub fn active_fill(&self) -> u32 {
        match self.active() {
            a @ (1 | 2) => self.fill(a.saturating_sub(1)),
            _ => 0,
        }
    }

    /// Rebuilds the inactive bitmap from the tables and makes it active
    /// (the steps and why they are safe: the module doc).
    pub fn rebuild(&self, paths: &Paths, grace: &GracePeriod) -> Result<Rebuilt, FilterError> {
        let started = Instant::now();
        let which = target(self.active());
        grace.wait().map_err(FilterError::Grace)?;
        for w in 0..CTF_WORDS {
            self.word(word_index(which, w)).store(0, Ordering::SeqCst);
        }
        let key = self.key();
        let mut entries = 0u64;
        for name in [map_names::CONNTRACK, map_names::CONNTRACK_PENDING] {
            walk(paths, name, |k| {
                let (w, mask) = bit_of(hash(&key, k));
                self.word(word_index(which, w))
                    .fetch_or(mask, Ordering::SeqCst);
                entries = entries.saturating_add(1);
            })?;
        }
        self.word(CTF_ACTIVE)
            .store(u64::from(which) + 1, Ordering::SeqCst);
        Ok(Rebuilt {
            bitmap: which,
            entries,
            fill: self.fill(which),
            took: started.elapsed(),
        })
    }
}

/// Calls `f` with every key of a conntrack table. Bounded: a walk whose
/// current key keeps vanishing restarts from the first bucket, and under
/// enough churn could go on; past four times the table's size it gives up.
fn walk(paths: &Paths, name: &'static str, mut f: impl FnMut(&CtKey)) -> Result<(), FilterError> {
    let path = paths.map(name);
    let open = |source| FilterError::Open {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open)?;
    let capacity = data.info().map_err(open)?.max_entries();
    let map: BpfHashMap<MapData, CtKey, CtValue> =
        BpfHashMap::try_from(Map::from_map_data(data).map_err(open)?).map_err(open)?;
    let limit = u64::from(capacity).saturating_mul(4).saturating_add(1024);
    let mut steps = 0u64;
    for key in map.keys() {
        let key = key.map_err(|source| FilterError::Walk { name, source })?;
        f(&key);
        steps = steps.saturating_add(1);
        if steps > limit {
            return Err(FilterError::WalkTooLong { name, steps });
        }
    }
    Ok(())
}

/// How often the filter's fill is checked (a popcount of 128 KiB).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Gives a fresh filter its key and, when it has no active bitmap yet,
/// builds one: called by the loader, so that every user of the datapath
/// (the agent, `explain --live`, the benchmarks and tests) runs with it.
/// A filter that cannot be prepared is only a lost optimisation: the
/// datapath looks everything up while no bitmap is active.
pub fn prepare(paths: &Paths) -> Result<Filter, FilterError> {
    let filter = Filter::open(paths)?;
    if filter.ensure_key()? {
        info!("conntrack filter: new map, random hash key written");
    } else {
        info!(
            "conntrack filter: adopted (bitmap {} active, {} bits set)",
            filter.active(),
            filter.active_fill()
        );
    }
    if !matches!(filter.active(), 1 | 2) {
        let grace = GracePeriod::new().map_err(FilterError::Grace)?;
        let r = filter.rebuild(paths, &grace)?;
        info!(
            "conntrack filter built: {} entries, {} bits, {:?}",
            r.entries, r.fill, r.took
        );
    }
    Ok(filter)
}

/// Keeps rebuilding the filter when due, on a thread of its own (walks of
/// large tables block for a while). The filter stays correct without it;
/// it only fills up.
pub fn maintain_in_background(paths: &Paths) {
    let filter = match Filter::open(paths) {
        Ok(f) => f,
        Err(e) => {
            warn!("conntrack filter not maintained: {e}");
            return;
        }
    };
    let paths = paths.clone();
    let spawned = std::thread::Builder::new()
        .name("ct-filter".into())
        .spawn(move || maintain(&filter, &paths));
    if let Err(e) = spawned {
        warn!("conntrack filter not maintained (no thread: {e}); it only fills up");
    }
}

fn maintain(filter: &Filter, paths: &Paths) {
    let grace = match GracePeriod::new() {
        Ok(g) => g,
        Err(e) => {
            warn!("conntrack filter not maintained (no grace period map: {e}); it only fills up");
            return;
        }
    };
    let mut built: Option<u32> = None;
    let mut last_error: Option<String> = None;
    loop {
        if due(filter.active(), filter.active_fill(), built) {
            match filter.rebuild(paths, &grace) {
                Ok(r) => {
                    log::debug!(
                        "conntrack filter rebuilt into bitmap {}: {} entries, {} bits, {:?}",
                        r.bitmap,
                        r.entries,
                        r.fill,
                        r.took
                    );
                    built = Some(r.fill);
                    last_error = None;
                }
                Err(e) => {
                    let e = e.to_string();
                    if last_error.as_ref() != Some(&e) {
                        warn!("conntrack filter rebuild failed (the old one stays): {e}");
                    }
                    last_error = Some(e);
                }
            }
        }
        std::thread::sleep(CHECK_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use segment_common::ct_filter::{CTF_BITMAP0, CTF_BITS_LOG2};

    use super::*;

    fn key(i: u32) -> CtKey {
        CtKey {
            addr_a: [0x0a00_0001, 0, 0, 0],
            addr_b: [0x0a00_0000 | (i >> 16), 0, 0, 0],
            port_a: 53,
            port_b: i as u16,
            proto: 17,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn bit_index_stays_in_one_bitmap() {
        for h in [0, 1, u64::MAX, 1 << 63, 0x1234_5678_9abc_def0] {
            let (w, mask) = bit_of(h);
            assert!(w < CTF_WORDS);
            assert_eq!(mask.count_ones(), 1);
        }
        assert_eq!(bit_of(u64::MAX), (CTF_WORDS - 1, 1 << 63));
        assert_eq!(word_index(0, 0), CTF_BITMAP0);
        assert_eq!(word_index(1, CTF_WORDS - 1), CTF_ENTRIES - 1);
        assert_eq!(CTF_BITS, 1 << CTF_BITS_LOG2);
    }

    #[test]
    fn hash_depends_on_every_field_and_the_key() {
        let k = [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210];
        let base = key(7);
        let h = hash(&k, &base);
        let mut variants = vec![base; 8];
        variants[0].addr_a[3] ^= 1;
        variants[1].addr_b[0] ^= 1 << 31;
        variants[2].port_a ^= 1;
        variants[3].port_b ^= 1 << 15;
        variants[4].proto = 6;
        variants[5].family = 6;
        variants[6].addr_a[0] ^= 1;
        variants[7].addr_b[2] ^= 1;
        for v in &variants {
            assert_ne!(hash(&k, v), h, "{v:?}");
        }
        assert_ne!(hash(&[k[0] ^ 1, k[1]], &base), h);
        assert_ne!(hash(&[k[0], k[1] ^ 1], &base), h);
    }

    /// Flows an attacker would choose (one source, consecutive ports) spread
    /// over the bitmap like random bits: n keys into m bits leave about
    /// m·(1 − e^(−n/m)) set.
    #[test]
    fn consecutive_ports_spread_like_random() {
        for k in [[0, 0], [0xdead_beef, 0x1234_5678_9abc_def0]] {
            let n = 1u32 << 17;
            let mut bits = vec![0u64; CTF_WORDS as usize];
            for i in 0..n {
                let (w, mask) = bit_of(hash(&k, &key(i)));
                bits[w as usize] |= mask;
            }
            let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
            let m = f64::from(CTF_BITS);
            let expected = m * (1.0 - (-f64::from(n) / m).exp());
            let off = (f64::from(set) - expected).abs() / expected;
            assert!(off < 0.01, "{set} bits set, {expected:.0} expected");
        }
    }

    #[test]
    fn rebuild_planning() {
        // No active bitmap: build at once.
        assert!(due(0, 0, None));
        assert!(due(7, 0, Some(0)));
        // A nearly empty filter is not worth a walk.
        assert!(!due(1, REBUILD_MIN_FILL - 1, None));
        // An adopted filter filled enough is rebuilt.
        assert!(due(2, REBUILD_MIN_FILL, None));
        // Full tables that did not change are not walked again.
        assert!(!due(1, CTF_BITS / 2, Some(CTF_BITS / 2)));
        assert!(!due(
            1,
            CTF_BITS / 2 + REBUILD_NEW_BITS - 1,
            Some(CTF_BITS / 2)
        ));
        assert!(due(1, CTF_BITS / 2 + REBUILD_NEW_BITS, Some(CTF_BITS / 2)));
        // The rebuild fills the bitmap not being tested.
        assert_eq!(target(0), 0);
        assert_eq!(target(1), 1);
        assert_eq!(target(2), 0);
    }
}

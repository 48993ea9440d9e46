//! The datapath's side of the conntrack filter (`segment_common::ct_filter`;
//! the agent's side, with the correctness argument, is
//! `segment-agent/src/datapath/ct_filter.rs`).
//!
//! Two rules, both needed for "a clear bit means no entry":
//! * every entry this program creates in a conntrack table (an opener into
//!   `SEG_CTPEND_V1`, a confirmation into `SEG_CT_V2`) sets its bit in *both* bitmaps, *after* the insert;
//! * a lookup tests the active bitmap only, and looks whenever the filter is
//!   not active yet (or the map cannot be read).

use core::intrinsics::{AtomicOrdering, atomic_or};

use segment_common::{
    CtKey,
    ct_filter::{CTF_ACTIVE, CTF_KEY, bit_of, hash, word_index},
};

use crate::maps::CT_FILTER;

#[inline(always)]
fn word(i: u32) -> Option<*mut u64> {
    CT_FILTER.get_ptr_mut(i)
}

#[inline(always)]
fn key() -> [u64; 2] {
    // SAFETY: pointers from successful array lookups, read at once. A word
    // is read whole (8-byte aligned loads are single instructions).
    unsafe {
        [
            word(CTF_KEY).map_or(0, |p| *p),
            word(CTF_KEY + 1).map_or(0, |p| *p),
        ]
    }
}

/// Whether the conntrack tables may hold an entry for `k`: `false` only
/// when the active bitmap proves they do not. Not inlined (nor is
/// [`note`]): the hash key lives in their own small frames, not in the
/// program's, which the BPF stack limit leaves no room to grow.
#[inline(never)]
pub fn may_hold(k: &CtKey) -> bool {
    // SAFETY: as in `key`.
    let active = match word(CTF_ACTIVE) {
        Some(p) => unsafe { *p },
        None => return true,
    };
    if active != 1 && active != 2 {
        return true;
    }
    let (w, mask) = bit_of(hash(&key(), k));
    match word(word_index(active as u32 - 1, w)) {
        // SAFETY: as in `key`.
        Some(p) => (unsafe { *p }) & mask != 0,
        None => true,
    }
}

/// Records that an entry for `k` was just inserted into a conntrack table.
#[inline(never)]
pub fn note(k: &CtKey) {
    let (w, mask) = bit_of(hash(&key(), k));
    for which in [0, 1] {
        if let Some(p) = word(word_index(which, w)) {
            // SAFETY: a map value pointer, 8-byte aligned, valid for this
            // program run; other CPUs and the agent (through its mapping)
            // update the same word only atomically too. (`AtomicU64` has
            // no `fetch_or` on the BPF target, which lacks compare-and-swap
            // in its baseline; the kernel's BPF_ATOMIC | BPF_OR is what
            // this compiles to.)
            unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(p, mask) };
        }
    }
}

//! The one exit: every packet leaves through [`finish`], which counts it by
//! reason and hook, and by (source identity, destination identity) when the
//! identities are known, then turns the reason into pass or drop. Deriving
//! the action from the counted reason is what keeps "counted as dropped" and
//! "actually dropped" from ever disagreeing.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use segment_common::{PAIR_OVERFLOW, PairCounters, PairKey, Reason};

use crate::maps::{PAIRS, REASONS};

const BPF_NOEXIST: u64 = 1;

/// Counter identities of a packet, when known.
#[derive(Clone, Copy)]
pub struct Pair {
    pub src_id: u32,
    pub dst_id: u32,
}

#[inline(always)]
fn count_reason(reason: Reason, hook: u32, len: u64) {
    let index = reason as u32 * 2 + hook;
    if let Some(c) = REASONS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU, from a successful lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

#[inline(always)]
fn pair_counters<C: EbpfContext>(ctx: &C, key: &PairKey) -> Option<*mut PairCounters> {
    if let Some(p) = PAIRS.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = PairCounters::default();
    if PAIRS.insert(key, &zero, BPF_NOEXIST).is_err() {
        // Either another CPU created it just now, or the map is full: then
        // the packet is counted under the overflow pair, never lost.
        if let Some(p) = PAIRS.get_ptr_mut(key) {
            return Some(p);
        }
        warn!(
            ctx,
            "pair counter map full: counting {} -> {} as overflow", key.src_id, key.dst_id
        );
        let overflow = PairKey {
            src_id: PAIR_OVERFLOW,
            dst_id: PAIR_OVERFLOW,
        };
        if let Some(p) = PAIRS.get_ptr_mut(&overflow) {
            return Some(p);
        }
        let _ = PAIRS.insert(&overflow, &zero, BPF_NOEXIST);
        return PAIRS.get_ptr_mut(&overflow);
    }
    PAIRS.get_ptr_mut(key)
}

#[inline(always)]
fn count_pair<C: EbpfContext>(ctx: &C, pair: Pair, reason: Reason, hook: u32, len: u64) {
    let key = PairKey {
        src_id: pair.src_id,
        dst_id: pair.dst_id,
    };
    let Some(c) = pair_counters(ctx, &key) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU, from a successful lookup or insert.
    let c = unsafe { &mut *c };
    let block = if hook == 0 {
        &mut c.hooks[0]
    } else {
        &mut c.hooks[1]
    };
    if reason.is_drop() {
        block.dropped_packets += 1;
        block.dropped_bytes += len;
    } else if matches!(reason, Reason::PassAudit) {
        block.would_drop_packets += 1;
        block.would_drop_bytes += len;
    } else {
        block.allowed_packets += 1;
        block.allowed_bytes += len;
    }
}

/// Counts the packet and says whether it passes.
#[inline(always)]
pub fn finish<C: EbpfContext>(
    ctx: &C,
    reason: Reason,
    pair: Option<Pair>,
    hook: u32,
    len: u64,
) -> bool {
    count_reason(reason, hook, len);
    if let Some(pair) = pair {
        count_pair(ctx, pair, reason, hook, len);
    }
    !reason.is_drop()
}

//! The flow log: records of denied (and would-be-denied) flows, written to a
//! ring buffer for the agent, behind a per-CPU token bucket. When the bucket
//! is empty the record is only counted as suppressed, so a flood of denied
//! packets costs the datapath a counter increment, not a ring buffer write.

use segment_common::{
    FLOW_LOG_BURST, FLOW_LOG_RATE, FlowEvent, LOGSTAT_SUPPRESSED, LOGSTAT_WRITTEN,
};

use crate::maps::{EVENTS, LOGSTAT, RATE};

const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn bump(slot: u32) {
    if let Some(c) = LOGSTAT.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, from a successful lookup.
        unsafe { *c += 1 };
    }
}

/// Takes a token; false when the rate limit says no.
#[inline(always)]
fn allowed(now: u64) -> bool {
    let Some(b) = RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's bucket, from a successful lookup.
    let b = unsafe { &mut *b };
    let mut elapsed = now.wrapping_sub(b.last_ns);
    if elapsed > NS_PER_SEC {
        elapsed = NS_PER_SEC;
    }
    let refill = elapsed * FLOW_LOG_RATE / NS_PER_SEC;
    if refill > 0 {
        b.tokens += refill;
        if b.tokens > FLOW_LOG_BURST {
            b.tokens = FLOW_LOG_BURST;
        }
        b.last_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

/// Writes a record if the rate limit allows, else counts it as suppressed.
/// `fill` writes every field straight into the ring buffer (no copy of the
/// record on the BPF stack, which is only 512 bytes).
#[inline(always)]
pub fn report(now: u64, fill: impl FnOnce(*mut FlowEvent)) {
    if !allowed(now) {
        bump(LOGSTAT_SUPPRESSED);
        return;
    }
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            fill(entry.as_mut_ptr());
            entry.submit(0);
            bump(LOGSTAT_WRITTEN);
        }
        // The agent is not reading (or not keeping up): same as suppressed.
        None => bump(LOGSTAT_SUPPRESSED),
    }
}

//! Reading the flow log ring buffer into the agent's bounded record of
//! recent flows.

#![warn(clippy::arithmetic_side_effects)]

use anyhow::Result;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use segment_common::{
    CFG_FLOW_LOG, FLOW_LOG_ALL_NEW, FLOW_LOG_DENIED, FlowEvent, LOGSTAT_SUPPRESSED,
    LOGSTAT_WRITTEN, map_names,
};

use super::{paths::Paths, state::State, tables::open_map};
use crate::flows::{FlowRecord, RecentFlows, record};

/// Records kept in memory (about 300 bytes each).
pub const RECENT_FLOWS: usize = 10_000;

pub struct FlowLog {
    ring: RingBuf<MapData>,
    pub recent: RecentFlows,
    boot_to_unix: f64,
    /// Records read from the ring buffer since the agent started.
    pub read: u64,
}

/// Offset from CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads) to Unix time.
fn boot_to_unix() -> f64 {
    let mut mono = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut real = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespecs we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono);
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut real);
    }
    let f = |t: libc::timespec| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9;
    f(real) - f(mono)
}

impl FlowLog {
    pub fn open(paths: &Paths) -> Result<Self> {
        Ok(Self {
            ring: open_map(paths, map_names::EVENTS)?,
            recent: RecentFlows::new(RECENT_FLOWS),
            boot_to_unix: boot_to_unix(),
            read: 0,
        })
    }

    /// Drains the ring buffer; returns the new records.
    pub fn poll(&mut self, state: &State) -> Vec<FlowRecord> {
        let mut new = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole FlowEvent (checked length);
            // read_unaligned copes with the ring buffer's 8-byte alignment.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let seq = self.recent.next_seq();
            let r = record(seq, &ev, self.boot_to_unix, |id| {
                state
                    .identity_segments(id)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default()
            });
            self.read = self.read.saturating_add(1);
            new.push(r);
        }
        for r in &new {
            self.recent.push(r.clone());
        }
        new
    }
}

/// Records written and suppressed by the kernel's rate limit, all CPUs.
pub fn log_counters(paths: &Paths) -> Result<(u64, u64)> {
    let stats: PerCpuArray<MapData, u64> = open_map(paths, map_names::LOGSTAT)?;
    let written = stats.get(&LOGSTAT_WRITTEN, 0)?.iter().sum();
    let suppressed = stats.get(&LOGSTAT_SUPPRESSED, 0)?.iter().sum();
    Ok((written, suppressed))
}

/// Makes the datapath report every new flow (for `observe`), or only
/// denied ones.
pub fn set_log_all_new(paths: &Paths, on: bool) -> Result<()> {
    // Only the flow-log entry: the slot switch and the override are
    // separate entries, never rewritten from here.
    let mut cfg = super::tables::open_config(paths)?;
    let mode = if on {
        FLOW_LOG_ALL_NEW
    } else {
        FLOW_LOG_DENIED
    };
    cfg.set(CFG_FLOW_LOG, mode, 0)?;
    Ok(())
}

//! Flow log records as people read them: wall-clock time, addresses and
//! ports, segments of both ends, verdict and reason. Pure code; the ring
//! buffer reading is in `datapath::flowlog`.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use segment_common::{CT_RULE_NONE, FlowEvent, HOOK_EGRESS, Reason};
use serde::{Deserialize, Serialize};

use crate::policy::protocol_name;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowRecord {
    /// Position in the agent's log (increasing).
    pub seq: u64,
    /// Unix time, seconds with fraction.
    pub time: f64,
    pub hook: String,
    /// `dropped`, `would_drop` or `allowed`.
    pub verdict: String,
    /// Why: `no rule matched`, `malformed`, `audit`, `failsafe`, ...
    pub reason: String,
    pub proto: String,
    pub proto_number: u8,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    pub src_segments: Vec<String>,
    pub dst_segments: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub bytes: u32,
    pub generation: u16,
    /// Whether the packet opens a flow (a SYN, a first datagram, an echo
    /// request): what `observe` takes inventory of.
    pub opener: bool,
}

pub fn addr(family: u8, w: &[u32; 4]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()))),
        6 => {
            let mut b = [0u8; 16];
            for (chunk, x) in b.chunks_exact_mut(4).zip(w) {
                chunk.copy_from_slice(&x.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Plain words for a reason code.
pub fn reason_text(r: Reason) -> &'static str {
    match r {
        Reason::DropNoRule => "no rule matched",
        Reason::DropMalformed => "malformed",
        Reason::DropFragment => "fragment without its first fragment",
        Reason::DropExtHeaders => "too many IPv6 extension headers",
        Reason::PassAudit => "audit",
        Reason::PassFailsafe => "failsafe",
        Reason::PassRule => "rule",
        Reason::PassNotEnforced => "hook not enforced",
        other => other.name(),
    }
}

fn is_opener(proto: u8, tcp_flags: u8, icmp_type: u8) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;
    const FIN: u8 = 0x01;
    match proto {
        6 => tcp_flags & (SYN | ACK | RST | FIN) == SYN,
        1 => icmp_type == 8,
        58 => icmp_type == 128,
        _ => true,
    }
}

/// Turns a kernel event into a record. `boot_to_unix` is the offset from
/// CLOCK_MONOTONIC to Unix time; `segments` names an identity's segments.
pub fn record(
    seq: u64,
    ev: &FlowEvent,
    boot_to_unix: f64,
    segments: impl Fn(u32) -> Vec<String>,
) -> FlowRecord {
    let reason = Reason::from_u32(u32::from(ev.reason)).unwrap_or(Reason::DropMalformed);
    let verdict = if reason.is_drop() {
        "dropped"
    } else if reason == Reason::PassAudit {
        "would_drop"
    } else {
        "allowed"
    };
    let ids = |id: u32| {
        if id == u32::MAX {
            Vec::new()
        } else {
            segments(id)
        }
    };
    FlowRecord {
        seq,
        time: ev.ts_ns as f64 / 1e9 + boot_to_unix,
        hook: if u32::from(ev.hook) == HOOK_EGRESS {
            "egress"
        } else {
            "ingress"
        }
        .to_owned(),
        verdict: verdict.to_owned(),
        reason: reason_text(reason).to_owned(),
        proto: if ev.family == 0 {
            "-".to_owned()
        } else {
            protocol_name(ev.proto)
        },
        proto_number: ev.proto,
        src: addr(ev.family, &ev.src),
        dst: addr(ev.family, &ev.dst),
        sport: ev.sport,
        dport: ev.dport,
        src_segments: ids(ev.src_id),
        dst_segments: ids(ev.dst_id),
        rule: (ev.rule != CT_RULE_NONE).then_some(ev.rule),
        bytes: ev.len,
        generation: ev.generation,
        opener: ev.family != 0 && is_opener(ev.proto, ev.tcp_flags, ev.icmp_type),
    }
}

/// The recent records, bounded: a flood replaces old records, it does not
/// grow memory.
#[derive(Debug)]
pub struct RecentFlows {
    records: VecDeque<FlowRecord>,
    capacity: usize,
    next_seq: u64,
}

impl RecentFlows {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            next_seq: 1,
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        s
    }

    pub fn push(&mut self, r: FlowRecord) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    /// Records after sequence number `after`, at most `limit` (the newest).
    pub fn after(&self, after: u64, limit: usize) -> Vec<FlowRecord> {
        let newer: Vec<&FlowRecord> = self.records.iter().filter(|r| r.seq > after).collect();
        let skip = newer.len().saturating_sub(limit);
        newer.into_iter().skip(skip).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// One line of `segments flows`.
pub fn format_line(r: &FlowRecord) -> String {
    let when = format_time(r.time);
    let ends = match (r.src, r.dst) {
        (Some(s), Some(d)) => {
            let port = |ip: IpAddr, p: u16| match ip {
                IpAddr::V6(_) => format!("[{ip}]:{p}"),
                IpAddr::V4(_) => format!("{ip}:{p}"),
            };
            format!("{} → {}", port(s, r.sport), port(d, r.dport))
        }
        _ => "(headers unreadable)".to_owned(),
    };
    let segs = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(",")
        }
    };
    format!(
        "{when} {:<7} {:<10} {:<6} {:<48} {} → {}  ({})",
        r.hook,
        r.verdict,
        r.proto,
        ends,
        segs(&r.src_segments),
        segs(&r.dst_segments),
        r.reason
    )
}

/// `HH:MM:SS.mmm` UTC.
pub fn format_time(unix: f64) -> String {
    let secs = unix.max(0.0);
    let day = secs % 86_400.0;
    let (h, m, s) = (
        (day / 3600.0) as u32,
        ((day % 3600.0) / 60.0) as u32,
        day % 60.0,
    );
    format!("{h:02}:{m:02}:{s:06.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_readable_records() {
        let ev = FlowEvent {
            ts_ns: 2_000_000_000,
            src: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            src_id: 1,
            dst_id: 2,
            rule: CT_RULE_NONE,
            len: 60,
            sport: 40000,
            dport: 22,
            proto: 6,
            family: 4,
            reason: Reason::DropNoRule as u8,
            tcp_flags: 0x02,
            ..FlowEvent::default()
        };
        let r = record(7, &ev, 1000.0, |id| vec![format!("seg{id}")]);
        assert_eq!(r.verdict, "dropped");
        assert_eq!(r.reason, "no rule matched");
        assert_eq!(r.src, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.src_segments, ["seg1"]);
        assert!(r.opener);
        assert!((r.time - 1002.0).abs() < 1e-9);
        let line = format_line(&r);
        assert!(line.contains("10.0.0.1:40000 → 10.0.0.2:22"), "{line}");
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = RecentFlows::new(3);
        for _ in 0..10 {
            let seq = log.next_seq();
            let ev = FlowEvent::default();
            log.push(record(seq, &ev, 0.0, |_| Vec::new()));
        }
        assert_eq!(log.len(), 3);
        let after = log.after(8, 100);
        assert_eq!(after.iter().map(|r| r.seq).collect::<Vec<_>>(), [9, 10]);
        assert_eq!(log.after(0, 1).len(), 1);
    }
}

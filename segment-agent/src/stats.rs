//! The counters of the loaded datapath, read from the pinned maps into one
//! typed view. `segment-agent stats` prints it, the metrics endpoint of the
//! running agent exposes it, and the fleet's status reports carry its totals:
//! one reader, so the three never disagree. Works with or without a running
//! agent (everything it reads lives in bpffs and the state file).

#![warn(clippy::arithmetic_side_effects)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use segment_common::{OVERRIDE_AUDIT_ALL, OVERRIDE_PASS_ALL, Reason, ReasonCounters};
use serde::Serialize;

use crate::{
    datapath::{Paths, counters, flowlog, state::Interface, state::State},
    report::{self, SegmentStats},
};

/// Everything `stats --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub pin_dir: PathBuf,
    /// Name of the policy in force (as given to `run` or `apply`).
    pub policy: Option<String>,
    pub generation: Option<u64>,
    pub active_slot: Option<usize>,
    /// `none`, `pass-all` or `audit-all` (the pinned emergency switch).
    #[serde(rename = "override")]
    pub override_mode: &'static str,
    pub enforce: Option<Enforce>,
    pub interfaces: Vec<Interface>,
    pub totals: Totals,
    /// Tracked flows, confirmed and unconfirmed.
    pub conntrack_entries: usize,
    /// Of those, flows not confirmed yet (their own smaller table).
    pub conntrack_unconfirmed: usize,
    pub maps: Vec<MapUse>,
    pub flow_log: FlowLogCounters,
    pub segments: Vec<SegmentStats>,
    pub rules: Vec<RuleHits>,
    pub reasons: Vec<ReasonCount>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Enforce {
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub passed_packets: u64,
    pub dropped_packets: u64,
    pub would_drop_packets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MapUse {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FlowLogCounters {
    pub written: u64,
    pub suppressed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleHits {
    pub index: usize,
    pub label: String,
    pub text: String,
    pub failsafe: bool,
    pub hits: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReasonCount {
    pub reason: &'static str,
    pub drop: bool,
    /// `ingress` or `egress`.
    pub hook: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

const HOOKS: [&str; 2] = ["ingress", "egress"];

/// Only the packet totals (what the fleet's status reports carry): one
/// small map read, where [`collect`] also walks the conntrack tables.
pub fn totals(paths: &Paths) -> Result<Totals> {
    Ok(totals_of(&counters::reasons(paths)?))
}

fn totals_of(reasons: &[(Reason, [ReasonCounters; 2])]) -> Totals {
    let mut totals = Totals::default();
    for (reason, hooks) in reasons {
        for c in hooks {
            if reason.is_drop() {
                totals.dropped_packets = totals.dropped_packets.saturating_add(c.packets);
            } else {
                totals.passed_packets = totals.passed_packets.saturating_add(c.packets);
            }
            if *reason == Reason::PassAudit {
                totals.would_drop_packets = totals.would_drop_packets.saturating_add(c.packets);
            }
        }
    }
    totals
}

/// Reads the pinned counters and the state file under `paths`.
pub fn collect(paths: &Paths) -> Result<StatsView> {
    let snap = counters::read(paths).with_context(|| {
        format!(
            "no segment datapath is pinned under {}",
            paths.pin_dir.display()
        )
    })?;
    let state = State::load(&paths.state_file())?;
    let slot = usize::from(snap.config.active_slot & 1 == 1);
    let meta = state.slots[slot].as_ref();
    let known: Vec<(String, String)> = meta
        .map(|m| {
            m.segments
                .iter()
                .map(|s| (s.reference.clone(), s.kind.clone()))
                .collect()
        })
        .unwrap_or_default();
    let segments = report::per_segment(
        &snap.pairs,
        |id| {
            state
                .identity_segments(id)
                .map(<[String]>::to_vec)
                .unwrap_or_default()
        },
        |r| report::kind_of_reference(r, &known),
    );
    let rules = meta
        .map(|m| {
            m.rules
                .iter()
                .enumerate()
                .map(|(i, r)| RuleHits {
                    index: i,
                    label: r.label.clone(),
                    text: r.text.clone(),
                    failsafe: r.failsafe,
                    hits: u32::try_from(i)
                        .ok()
                        .and_then(|i| snap.hits.get(&i).copied())
                        .unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut reasons = Vec::new();
    for (reason, hooks) in &snap.reasons {
        for (hook, c) in HOOKS.iter().zip(hooks) {
            reasons.push(ReasonCount {
                reason: reason.name(),
                drop: reason.is_drop(),
                hook,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
    }
    let totals = totals_of(&snap.reasons);
    let sizes = meta.and_then(|m| m.sizes.clone()).unwrap_or_default();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let maps = vec![
        MapUse {
            name: "conntrack",
            entries: count(
                snap.conntrack_entries
                    .saturating_sub(snap.conntrack_unconfirmed),
            ),
            capacity: u64::from(snap.conntrack_capacity),
        },
        MapUse {
            name: "conntrack_unconfirmed",
            entries: count(snap.conntrack_unconfirmed),
            capacity: u64::from(snap.conntrack_unconfirmed_capacity),
        },
        MapUse {
            name: "identity_pairs",
            entries: count(snap.pairs.len()),
            capacity: u64::from(segment_common::MAX_COUNTER_PAIRS),
        },
        MapUse {
            name: "rule_entries",
            entries: count(sizes.rule_entries),
            capacity: u64::from(segment_common::MAX_RULE_ENTRIES),
        },
        MapUse {
            name: "prefixes",
            entries: count(sizes.prefixes_v4).saturating_add(count(sizes.prefixes_v6)),
            capacity: u64::from(segment_common::MAX_PREFIXES),
        },
    ];
    let (written, suppressed) = flowlog::log_counters(paths).unwrap_or((0, 0));
    Ok(StatsView {
        pin_dir: paths.pin_dir.clone(),
        policy: meta.map(|m| m.policy_name.clone()),
        generation: snap.slot_config.map(|c| c.generation),
        active_slot: (snap.config.initialized != 0).then_some(slot),
        override_mode: match snap.config.override_mode {
            OVERRIDE_PASS_ALL => "pass-all",
            OVERRIDE_AUDIT_ALL => "audit-all",
            _ => "none",
        },
        enforce: snap.slot_config.map(|c| Enforce {
            ingress: c.enforce_ingress != 0,
            egress: c.enforce_egress != 0,
        }),
        interfaces: state.interfaces,
        totals,
        conntrack_entries: snap.conntrack_entries,
        conntrack_unconfirmed: snap.conntrack_unconfirmed,
        maps,
        flow_log: FlowLogCounters {
            written,
            suppressed,
        },
        segments,
        rules,
        reasons,
    })
}

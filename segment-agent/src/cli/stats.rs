//! `segment-agent stats`: counters per segment and direction, rule hits and
//! datapath reasons, read from the pinned maps (with or without a running
//! agent).

use std::time::Duration;

use anyhow::{Context, Result};
use segment_common::{OVERRIDE_AUDIT_ALL, OVERRIDE_PASS_ALL, Reason};
use serde_json::{Value, json};

use super::{Outcome, output::print_json, run::DirArgs};
use crate::{
    datapath::{Paths, counters, flowlog, state::State},
    report::{self, SegmentStats},
};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print a JSON object (with --watch: one object per line).
    #[arg(long)]
    pub json: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn run(args: StatsArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    loop {
        let v = collect(&paths)?;
        if args.json {
            if args.watch.is_some() {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print_json(&v);
            }
        } else {
            print_text(&v);
        }
        match args.watch {
            Some(secs) if secs > 0.0 => std::thread::sleep(Duration::from_secs_f64(secs)),
            _ => break,
        }
        if !args.json {
            println!();
        }
    }
    Ok(Outcome::Success)
}

/// The stats object (also served by the metrics endpoint).
pub fn collect(paths: &Paths) -> Result<Value> {
    let snap = counters::read(paths).with_context(|| {
        format!(
            "no segment datapath is pinned under {}",
            paths.pin_dir.display()
        )
    })?;
    let state = State::load(&paths.state_file())?;
    let slot = (snap.config.active_slot & 1) as usize;
    let meta = state.slots[slot].as_ref();
    let known: Vec<(String, String)> = meta
        .map(|m| {
            m.segments
                .iter()
                .map(|s| (s.reference.clone(), s.kind.clone()))
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<SegmentStats> = report::per_segment(
        &snap.pairs,
        |id| {
            state
                .identity_segments(id)
                .map(<[String]>::to_vec)
                .unwrap_or_default()
        },
        |r| report::kind_of_reference(r, &known),
    );
    let rules: Vec<Value> = meta
        .map(|m| {
            m.rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({
                        "index": i,
                        "label": r.label,
                        "text": r.text,
                        "failsafe": r.failsafe,
                        "hits": snap.hits.get(&(i as u32)).copied().unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let reasons: Vec<Value> = snap
        .reasons
        .iter()
        .flat_map(|(reason, hooks)| {
            ["ingress", "egress"]
                .iter()
                .enumerate()
                .map(move |(h, hook)| {
                    json!({
                        "reason": reason.name(),
                        "drop": reason.is_drop(),
                        "hook": hook,
                        "packets": hooks[h].packets,
                        "bytes": hooks[h].bytes,
                    })
                })
        })
        .collect();
    let dropped: u64 = snap
        .reasons
        .iter()
        .filter(|(r, _)| r.is_drop())
        .map(|(_, h)| h[0].packets + h[1].packets)
        .sum();
    let would_drop: u64 = snap
        .reasons
        .iter()
        .filter(|(r, _)| *r == Reason::PassAudit)
        .map(|(_, h)| h[0].packets + h[1].packets)
        .sum();
    let passed: u64 = snap
        .reasons
        .iter()
        .filter(|(r, _)| !r.is_drop())
        .map(|(_, h)| h[0].packets + h[1].packets)
        .sum();
    let sizes = meta.and_then(|m| m.sizes.clone()).unwrap_or_default();
    let maps = json!([
        {"name": "conntrack", "entries": snap.conntrack_entries, "capacity": snap.conntrack_capacity},
        {"name": "identity_pairs", "entries": snap.pairs.len(), "capacity": segment_common::MAX_COUNTER_PAIRS},
        {"name": "rule_entries", "entries": sizes.rule_entries, "capacity": segment_common::MAX_RULE_ENTRIES},
        {"name": "prefixes", "entries": sizes.prefixes_v4 + sizes.prefixes_v6, "capacity": segment_common::MAX_PREFIXES},
    ]);
    let (written, suppressed) = flowlog::log_counters(paths).unwrap_or((0, 0));
    Ok(json!({
        "pin_dir": paths.pin_dir,
        "policy": meta.map(|m| m.policy_name.clone()),
        "generation": snap.slot_config.map(|c| c.generation),
        "active_slot": (snap.config.initialized != 0).then_some(slot),
        "override": match snap.config.override_mode {
            OVERRIDE_PASS_ALL => "pass-all",
            OVERRIDE_AUDIT_ALL => "audit-all",
            _ => "none",
        },
        "enforce": snap.slot_config.map(|c| json!({"ingress": c.enforce_ingress != 0, "egress": c.enforce_egress != 0})),
        "interfaces": state.interfaces,
        "totals": {"passed_packets": passed, "dropped_packets": dropped, "would_drop_packets": would_drop},
        "conntrack_entries": snap.conntrack_entries,
        "maps": maps,
        "flow_log": {"written": written, "suppressed": suppressed},
        "segments": segments,
        "rules": rules,
        "reasons": reasons,
    }))
}

fn print_text(v: &Value) {
    let s = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "-".to_owned())
    };
    println!(
        "policy {} (generation {}), override {}, {} conntrack entries",
        s("policy"),
        v["generation"]
            .as_u64()
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into()),
        s("override"),
        v["conntrack_entries"]
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "SEGMENT", "ALLOWED", "DROPPED", "WOULD-DROP", "DROP-IN", "DROP-OUT"
    );
    for seg in v["segments"].as_array().into_iter().flatten() {
        let n = |path: &[&str]| {
            let mut x = seg;
            for p in path {
                x = &x[*p];
            }
            x.as_u64().unwrap_or(0)
        };
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>12} {:>12}",
            seg["name"].as_str().unwrap_or("?"),
            n(&["allowed_packets"]),
            n(&["dropped_packets"]),
            n(&["would_drop_packets"]),
            n(&["ingress", "dropped_packets"]),
            n(&["egress", "dropped_packets"]),
        );
    }
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    if !rules.is_empty() {
        println!("{:<48} {:>12}", "RULE", "HITS");
        for r in rules {
            println!(
                "{:<48} {:>12}",
                r["label"].as_str().unwrap_or("?"),
                r["hits"]
            );
        }
    }
    let drops: Vec<&Value> = v["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["drop"].as_bool() == Some(true) && r["packets"].as_u64() != Some(0))
        .collect();
    if !drops.is_empty() {
        println!("{:<48} {:>12}", "DROP REASON (HOOK)", "PACKETS");
        for r in drops {
            println!(
                "{:<48} {:>12}",
                format!(
                    "{} ({})",
                    r["reason"].as_str().unwrap_or("?"),
                    r["hook"].as_str().unwrap_or("?")
                ),
                r["packets"]
            );
        }
    }
}

//! `segment-agent check`: validate, compile, summarize.

use std::path::Path;

use serde_json::json;

use super::{
    Outcome,
    output::{load_and_compile, print_json, print_warnings},
};
use crate::policy::SegmentKind;

pub fn run(path: &Path, inventory: Option<&Path>, json_out: bool) -> anyhow::Result<Outcome> {
    let Some((policy, compiled)) = load_and_compile(path, inventory, json_out) else {
        return Ok(Outcome::Rejected);
    };
    let test_count = match &policy.test_bed {
        Some(bed) => bed.tests.len(),
        None => policy.tests.len(),
    };
    // Named segments that rules use but that hold no address.
    let used: std::collections::BTreeSet<u32> = policy
        .rules
        .iter()
        .flat_map(|r| r.src.iter().chain(r.dst.iter().map(|d| &d.selector)))
        .filter_map(|s| match s {
            crate::policy::Selector::Segment(id) => Some(*id),
            _ => None,
        })
        .collect();
    let empty: Vec<String> = used
        .iter()
        .map(|id| policy.segment(*id))
        .filter(|s| s.prefixes.is_empty())
        .map(|s| s.reference())
        .collect();
    let s = &compiled.sizes;
    let count = |k: SegmentKind| policy.segments.iter().filter(|s| s.kind == k).count();
    let failsafe = policy.rules.iter().filter(|r| r.is_failsafe()).count();
    let memory = estimate_map_bytes(&compiled);
    if json_out {
        print_json(&json!({
            "valid": true,
            "file": policy.source.name,
            "summary": {
                "segments": s.segments,
                "tags": count(SegmentKind::Tag),
                "groups": count(SegmentKind::Group),
                "users": count(SegmentKind::User),
                "hosts": count(SegmentKind::Host),
                "rules": s.rules,
                "failsafe_rules": failsafe,
                "tests": test_count,
                "identities": s.identities,
                "src_classes": s.src_classes,
                "dst_classes": s.dst_classes,
                "prefixes_v4": s.prefixes_v4,
                "prefixes_v6": s.prefixes_v6,
                "port_classes": {"tcp": s.port_classes[0], "udp": s.port_classes[1], "sctp": s.port_classes[2]},
                "rule_entries": s.rule_entries,
                "map_bytes": memory,
                "enforce": policy.enforce,
                "mode": policy.mode,
            },
            "warnings": policy.warnings,
            "not_enforced": policy.not_enforced,
            "no_address": empty,
            "membership": policy.membership,
        }));
        return Ok(Outcome::Success);
    }
    print_warnings(&policy);
    println!("{}: valid", policy.source.name);
    println!(
        "  segments      {} ({} tags, {} groups, {} users, {} hosts)",
        s.segments,
        count(SegmentKind::Tag),
        count(SegmentKind::Group),
        count(SegmentKind::User),
        count(SegmentKind::Host)
    );
    println!(
        "  rules         {} ({} failsafe, {} acls), {} tests",
        s.rules,
        failsafe,
        s.rules.saturating_sub(failsafe),
        test_count
    );
    println!(
        "  identities    {} (source classes {}, destination classes {})",
        s.identities, s.src_classes, s.dst_classes
    );
    println!(
        "  prefixes      {} IPv4, {} IPv6",
        s.prefixes_v4, s.prefixes_v6
    );
    println!(
        "  port classes  tcp {}, udp {}, sctp {}",
        s.port_classes[0], s.port_classes[1], s.port_classes[2]
    );
    println!("  rule entries  {}", s.rule_entries);
    println!(
        "  map memory    ~{} KiB per policy slot",
        memory.div_ceil(1024)
    );
    println!(
        "  enforce       ingress {}, egress {}; mode {}",
        on_off(policy.enforce.ingress),
        on_off(policy.enforce.egress),
        policy.mode.as_str()
    );
    if !empty.is_empty() {
        println!(
            "  no address    {} (used by rules; give an inventory whose devices they cover)",
            empty.join(", ")
        );
    }
    if !policy.membership.is_empty() {
        println!("  tag claims of inventory devices:");
        for m in &policy.membership {
            println!(
                "    {} {} {}{}: {}",
                if m.granted { "granted" } else { "REFUSED" },
                m.device,
                m.tag,
                if m.origin.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", m.origin)
                },
                m.reason
            );
        }
    }
    if !policy.not_enforced.is_empty() {
        println!("  not enforced by segment:");
        for n in &policy.not_enforced {
            println!("    {n}");
        }
    }
    Ok(Outcome::Success)
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Approximate kernel memory of one slot's policy tables: LPM nodes, hash
/// entries (key + value + element overhead) and the port class arrays.
fn estimate_map_bytes(c: &crate::compile::Compiled) -> u64 {
    const LPM_NODE_OVERHEAD: u64 = 48;
    const HASH_ELEM_OVERHEAD: u64 = 48;
    let bytes = |n: usize, each: u64| (n as u64).saturating_mul(each);
    let v4 = bytes(
        c.sizes.prefixes_v4,
        LPM_NODE_OVERHEAD.saturating_add(4 + 16),
    );
    let v6 = bytes(
        c.sizes.prefixes_v6,
        LPM_NODE_OVERHEAD.saturating_add(16 + 16),
    );
    let rules = bytes(
        c.sizes.rule_entries,
        HASH_ELEM_OVERHEAD.saturating_add(16 + 8),
    );
    let ports = u64::from(segment_common::PORT_CLASS_ENTRIES).saturating_mul(8);
    v4.saturating_add(v6)
        .saturating_add(rules)
        .saturating_add(ports)
}

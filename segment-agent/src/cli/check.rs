//! `segment-agent check`: validate, compile, summarize.

use std::path::Path;

use serde_json::json;

use super::{
    Outcome,
    output::{load_and_compile, print_json, print_warnings},
};
use crate::policy::SegmentKind;

pub fn run(path: &Path, json_out: bool) -> anyhow::Result<Outcome> {
    let Some((policy, compiled)) = load_and_compile(path, json_out) else {
        return Ok(Outcome::Rejected);
    };
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
                "tests": policy.tests.len(),
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
        s.rules - failsafe,
        policy.tests.len()
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
    let v4 = c.sizes.prefixes_v4 as u64 * (LPM_NODE_OVERHEAD + 4 + 16);
    let v6 = c.sizes.prefixes_v6 as u64 * (LPM_NODE_OVERHEAD + 16 + 16);
    let rules = c.sizes.rule_entries as u64 * (HASH_ELEM_OVERHEAD + 16 + 8);
    let ports = u64::from(segment_common::PORT_CLASS_ENTRIES) * 8;
    v4 + v6 + rules + ports
}

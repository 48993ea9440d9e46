//! `segment-agent explain`: the verdict for one packet, and why.

use std::{net::IpAddr, path::Path};

use anyhow::anyhow;
use segment_common::IDENTITY_F_AUDIT;
use serde::Serialize;

use super::{
    Outcome,
    output::{load_and_compile, print_json},
};
use crate::{
    compile::Compiled,
    policy::{Policy, has_ports, protocol_name, syntax::parse_proto},
};

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub identity: u32,
    pub segments: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleRef {
    pub index: usize,
    pub label: String,
    pub text: String,
    pub failsafe: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    /// `allow` or `drop`: what the policy says.
    pub verdict: &'static str,
    /// What the datapath does with it: `pass`, `drop`, or `pass (audit)`
    /// when the destination is in audit mode.
    pub action: &'static str,
    pub rule: Option<RuleRef>,
    pub reason: String,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

/// Explains a packet against a compiled policy (used by `explain` and by
/// the live checks of the datapath).
pub fn explain(
    policy: &Policy,
    compiled: &Compiled,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
) -> Explanation {
    let s = compiled.identity_of(src);
    let d = compiled.identity_of(dst);
    let endpoint = |addr, id: segment_common::Identity| Endpoint {
        address: addr,
        identity: id.id,
        segments: compiled
            .identities
            .get(&id.id)
            .map(|i| {
                i.segments
                    .iter()
                    .map(|s| policy.segment(*s).reference())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let rule = compiled.rule_for(s.src_class, d.dst_class, proto, dport);
    let audit = d.flags & IDENTITY_F_AUDIT != 0;
    let (verdict, action, reason) = match rule {
        Some(v) => ("allow", "pass", format!("allowed by {}", policy.rules[v.rule as usize].label())),
        None if audit => (
            "drop",
            "pass (audit)",
            "no rule allows it (default deny); the destination is in audit mode, so it passes and is counted as would-drop".to_owned(),
        ),
        None => ("drop", "drop", "no rule allows it (default deny)".to_owned()),
    };
    Explanation {
        verdict,
        action,
        rule: rule.map(|v| {
            let r = &policy.rules[v.rule as usize];
            RuleRef {
                index: v.rule as usize,
                label: r.label(),
                text: r.text.clone(),
                failsafe: r.is_failsafe(),
                line: r.pos.map(|p| p.line),
            }
        }),
        reason,
        src: endpoint(src, s),
        dst: endpoint(dst, d),
        proto: protocol_name(proto),
        dport: has_ports(proto).then_some(dport),
    }
}

pub fn run(
    path: &Path,
    src: IpAddr,
    dst: IpAddr,
    proto: &str,
    dport: u16,
    json_out: bool,
) -> anyhow::Result<Outcome> {
    let proto = parse_proto(proto).map_err(|e| {
        anyhow!(
            "--proto {proto}: {}{}",
            e.message,
            e.help.map(|h| format!(" ({h})")).unwrap_or_default()
        )
    })?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(anyhow!("--src and --dst must both be IPv4 or both IPv6"));
    }
    let Some((policy, compiled)) = load_and_compile(path, json_out) else {
        return Ok(Outcome::Rejected);
    };
    let e = explain(&policy, &compiled, src, dst, proto, dport);
    if json_out {
        print_json(&serde_json::to_value(&e)?);
    } else {
        print_text(&e);
    }
    Ok(Outcome::Success)
}

pub fn print_text(e: &Explanation) {
    println!("verdict: {}  ({})", e.verdict, e.action);
    match &e.rule {
        Some(r) => println!("rule:    {}: {}", r.label, r.text),
        None => println!("rule:    none ({})", e.reason),
    }
    let segs = |s: &[String]| {
        if s.is_empty() {
            "(none)".to_owned()
        } else {
            s.join(", ")
        }
    };
    println!(
        "src:     {}  segments: {}",
        e.src.address,
        segs(&e.src.segments)
    );
    println!(
        "dst:     {}  segments: {}",
        e.dst.address,
        segs(&e.dst.segments)
    );
    match e.dport {
        Some(p) => println!("packet:  {} to port {p}", e.proto),
        None => println!("packet:  {}", e.proto),
    }
}

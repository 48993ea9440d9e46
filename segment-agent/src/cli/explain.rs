//! `segment-agent explain`: the verdict for one packet, and why.

use std::{net::IpAddr, path::Path};

use anyhow::anyhow;
use segment_common::{IDENTITY_F_AUDIT, Reason};
use serde::Serialize;

use super::{
    Outcome,
    output::{load_and_compile, print_json},
};
use crate::{
    compile::Compiled,
    datapath::{Paths, live, state::State},
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
    /// Whether the compiled tables (what the datapath is loaded with) give
    /// the same first rule as the reference evaluator. Always true unless
    /// the compiler has a bug.
    pub tables_agree: bool,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

/// Explains a packet: the verdict and rule come from the reference
/// evaluator (`eval::first_match`, which reads the policy rule by rule),
/// the segments of both ends from the compiled identities. The compiled
/// tables' own answer is computed too and must agree (see `run`).
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
    let rule = crate::eval::first_match(policy, src, dst, proto, dport);
    let tables = compiled
        .rule_for(s.src_class, d.dst_class, proto, dport)
        .map(|v| v.rule as usize);
    let audit = d.flags & IDENTITY_F_AUDIT != 0;
    let (verdict, action, reason) = match rule {
        Some(i) => ("allow", "pass", format!("allowed by {}", policy.rules[i].label())),
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
        tables_agree: tables == rule,
        rule: rule.map(|i| {
            let r = &policy.rules[i];
            RuleRef {
                index: i,
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

#[allow(clippy::too_many_arguments)]
pub fn run(
    path: &Path,
    inventory: Option<&Path>,
    src: IpAddr,
    dst: IpAddr,
    proto: &str,
    dport: u16,
    json_out: bool,
    live: Option<Paths>,
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
    let Some((policy, compiled)) = load_and_compile(path, inventory, json_out) else {
        return Ok(Outcome::Rejected);
    };
    let e = explain(&policy, &compiled, src, dst, proto, dport);
    if !e.tables_agree {
        // The verdict shown is the reference evaluator's; the datapath is
        // loaded from the compiled tables. Never hide a disagreement.
        eprintln!(
            "internal error: the compiled tables disagree with the reference evaluator for this packet; please report it with the policy"
        );
    }
    let live = match live {
        Some(paths) => Some(live_view(&paths, &e, src, dst, proto, dport)?),
        None => None,
    };
    // Which inventory records made the two addresses members of what.
    let records = match inventory {
        Some(p) => {
            let inv = crate::policy::Inventory::load(p).unwrap_or_default();
            let of = |a: IpAddr| -> Vec<serde_json::Value> {
                inv.devices
                    .iter()
                    .filter(|d| d.addresses.contains(&a))
                    .map(|d| {
                        let tags: Vec<&str> = policy
                            .membership
                            .iter()
                            .filter(|m| m.device == d.name && m.granted)
                            .map(|m| m.tag.as_str())
                            .collect();
                        serde_json::json!({
                            "device": d.name,
                            "origin": d.origin,
                            "owner": d.owner,
                            "granted_tags": tags,
                        })
                    })
                    .collect()
            };
            Some((of(src), of(dst)))
        }
        None => None,
    };
    if json_out {
        let mut v = serde_json::to_value(&e)?;
        if let Some(l) = &live {
            v["live"] = l.clone();
        }
        if let Some((s, d)) = &records {
            v["inventory"] = serde_json::json!({"src": s, "dst": d});
        }
        print_json(&v);
    } else {
        print_text(&e);
        if let Some((s, d)) = &records {
            for (end, list) in [("src", s), ("dst", d)] {
                for r in list {
                    println!(
                        "{end}:     inventory device {} ({}){}{}",
                        r["device"].as_str().unwrap_or_default(),
                        r["origin"].as_str().unwrap_or_default(),
                        r["owner"]
                            .as_str()
                            .map(|o| format!(", owner {o}"))
                            .unwrap_or_default(),
                        match r["granted_tags"].as_array() {
                            Some(t) if !t.is_empty() => format!(
                                ", granted {}",
                                t.iter()
                                    .filter_map(|x| x.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        if let Some(l) = &live {
            println!(
                "live:    {}  ({}) — the loaded datapath, generation {}, {}",
                l["verdict"].as_str().unwrap_or("?"),
                l["reason"].as_str().unwrap_or("?"),
                l["generation"],
                l["rule"]
                    .as_str()
                    .map(|r| format!("by {r}"))
                    .unwrap_or_else(|| "no rule".to_owned()),
            );
            if l["agrees"] == false {
                println!(
                    "         the datapath disagrees with {}: it enforces another policy (see `segment-agent status`)",
                    path.display()
                );
            }
        }
    }
    if !e.tables_agree {
        return Err(anyhow!(
            "the compiled tables disagree with the reference evaluator"
        ));
    }
    Ok(Outcome::Success)
}

/// The running datapath's verdict for the same packet.
fn live_view(
    paths: &Paths,
    e: &Explanation,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
) -> anyhow::Result<serde_json::Value> {
    let frame = crate::packet::opener(src, dst, proto, dport);
    let v = live::judge(paths, &frame)?;
    let state = State::load(&paths.state_file())?;
    let meta = state.slots[(v.slot & 1) as usize].as_ref();
    let rule = v
        .rule
        .and_then(|r| meta.and_then(|m| m.rules.get(r as usize)))
        .map(|r| r.label.clone());
    let segments = |id: u32| {
        state
            .identity_segments(id)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    };
    // What the policy says (an audited drop passes, but is still a drop).
    let verdict = if v.reason.is_drop() || v.reason == Reason::PassAudit {
        "drop"
    } else {
        "allow"
    };
    Ok(serde_json::json!({
        "verdict": verdict,
        "action": if v.pass { "pass" } else { "drop" },
        "reason": v.reason.name(),
        "rule": rule,
        "generation": meta.map(|m| m.generation),
        "policy": meta.map(|m| m.policy_name.clone()),
        "src_segments": segments(v.src_id),
        "dst_segments": segments(v.dst_id),
        "agrees": verdict == e.verdict && rule.as_deref() == e.rule.as_ref().map(|r| r.label.as_str()),
    }))
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

//! Inventory and suggestion: the first two steps of microsegmentation
//! ("take inventory", "categorize") done from the traffic itself.
//!
//! `observe` aggregates the new flows the datapath reports into (source,
//! destination, protocol, port) with counts. `suggest` turns that into a
//! least-privilege policy: it allows exactly what was observed. It names
//! things with the segments already defined where a segment's addresses were
//! all seen doing the same thing (a tag whose every machine talked to the
//! database becomes `tag:x`), and falls back to a user's or host's name, then
//! to the address, where they were not.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    flows::FlowRecord,
    policy::{Policy, PortRange, PortSet, has_ports, protocol_name},
};

/// What was seen of one (source, destination, protocol, port).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub flows: u64,
    pub allowed: u64,
    pub dropped: u64,
    pub would_drop: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObservedFlow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
    #[serde(flatten)]
    pub seen: Seen,
}

/// An observation (also the format of `observed.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observation {
    pub flows: Vec<ObservedFlow>,
    /// Seconds observed, summed over observations.
    pub seconds: f64,
    /// Flow log records the rate limit suppressed while observing: if not
    /// zero, some flows may be missing.
    pub suppressed: u64,
}

type Key = (IpAddr, IpAddr, u8, u16);

/// The aggregated map as the list an observation stores, in key order.
fn flows_of(map: BTreeMap<Key, Seen>) -> Vec<ObservedFlow> {
    map.into_iter()
        .map(|((src, dst, proto, port), seen)| ObservedFlow {
            src,
            dst,
            proto,
            port,
            seen,
        })
        .collect()
}

/// Accumulates records while observing.
#[derive(Debug, Default)]
pub struct Observer {
    map: BTreeMap<Key, Seen>,
    /// Distinct keys kept at most (beyond, new keys are dropped and counted).
    limit: usize,
    pub overflow: u64,
}

impl Observer {
    pub fn new(limit: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            limit,
            overflow: 0,
        }
    }

    /// Takes a flow log record into account if it opens a flow.
    pub fn add(&mut self, r: &FlowRecord) {
        let (Some(src), Some(dst)) = (r.src, r.dst) else {
            return;
        };
        if !r.opener {
            return;
        }
        let port = if has_ports(r.proto_number) {
            r.dport
        } else {
            0
        };
        let key = (src, dst, r.proto_number, port);
        if !self.map.contains_key(&key) && self.map.len() >= self.limit {
            self.overflow = self.overflow.saturating_add(1);
            return;
        }
        let seen = self.map.entry(key).or_default();
        seen.flows = seen.flows.saturating_add(1);
        match r.verdict.as_str() {
            "dropped" => seen.dropped = seen.dropped.saturating_add(1),
            "would_drop" => seen.would_drop = seen.would_drop.saturating_add(1),
            _ => seen.allowed = seen.allowed.saturating_add(1),
        }
    }

    pub fn finish(self, seconds: f64, suppressed: u64) -> Observation {
        Observation {
            flows: flows_of(self.map),
            seconds,
            suppressed,
        }
    }
}

impl Observation {
    /// Adds another observation to this one.
    pub fn merge(&mut self, other: Observation) {
        let mut map: BTreeMap<Key, Seen> = self
            .flows
            .drain(..)
            .map(|f| ((f.src, f.dst, f.proto, f.port), f.seen))
            .collect();
        for f in other.flows {
            let s = map.entry((f.src, f.dst, f.proto, f.port)).or_default();
            s.flows = s.flows.saturating_add(f.seen.flows);
            s.allowed = s.allowed.saturating_add(f.seen.allowed);
            s.dropped = s.dropped.saturating_add(f.seen.dropped);
            s.would_drop = s.would_drop.saturating_add(f.seen.would_drop);
        }
        self.flows = flows_of(map);
        self.seconds += other.seconds;
        self.suppressed = self.suppressed.saturating_add(other.suppressed);
    }
}

/// Names for a set of addresses that cover exactly that set.
struct Namer {
    /// Segments made only of single addresses: (reference, addresses).
    exact: Vec<(String, BTreeSet<IpAddr>)>,
    /// Every segment, for comments.
    all: Vec<(String, Vec<IpNet>)>,
}

impl Namer {
    fn new(policy: Option<&Policy>) -> Self {
        let mut exact = Vec::new();
        let mut all = Vec::new();
        if let Some(p) = policy {
            for s in &p.segments {
                all.push((s.reference(), s.prefixes.clone()));
                if !s.prefixes.is_empty()
                    && s.prefixes
                        .iter()
                        .all(|n| n.prefix_len() == n.max_prefix_len())
                {
                    exact.push((
                        s.reference(),
                        s.prefixes.iter().map(|n| n.addr()).collect::<BTreeSet<_>>(),
                    ));
                }
            }
        }
        // Larger sets first (a tag before its hosts), then users and hosts
        // before literal addresses.
        exact.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        Self { exact, all }
    }

    /// Selectors covering exactly `addrs`.
    fn name(&self, addrs: &BTreeSet<IpAddr>) -> Vec<String> {
        let mut left = addrs.clone();
        let mut out = Vec::new();
        for (reference, members) in &self.exact {
            if !members.is_empty() && members.is_subset(&left) {
                for m in members {
                    left.remove(m);
                }
                out.push(reference.clone());
            }
        }
        out.extend(left.iter().map(|a| a.to_string()));
        out
    }

    /// The segments containing an address (for comments).
    fn segments_of(&self, a: IpAddr) -> Vec<&str> {
        self.all
            .iter()
            .filter(|(_, nets)| nets.iter().any(|n| n.contains(&a)))
            .map(|(r, _)| r.as_str())
            .collect()
    }
}

fn quote(s: &str) -> String {
    if s.contains(':') || s.starts_with('*') || s.contains('[') {
        format!("\"{s}\"")
    } else {
        s.to_owned()
    }
}

fn dest(selector: &str, ports: &str) -> String {
    let sel = if selector.contains(':')
        && !selector.starts_with("tag:")
        && !selector.starts_with("group:")
    {
        // An IPv6 address: brackets.
        format!("[{selector}]")
    } else {
        selector.to_owned()
    };
    format!("\"{sel}:{ports}\"")
}

/// A least-privilege policy allowing exactly the observed flows.
pub fn suggest(obs: &Observation, policy: Option<&Policy>) -> String {
    let namer = Namer::new(policy);
    // 1. Per (destination, protocol): each source's ports.
    let mut by_dst: BTreeMap<(IpAddr, u8), BTreeMap<IpAddr, BTreeSet<u16>>> = BTreeMap::new();
    let mut counts: BTreeMap<(IpAddr, IpAddr, u8), u64> = BTreeMap::new();
    for f in &obs.flows {
        by_dst
            .entry((f.dst, f.proto))
            .or_default()
            .entry(f.src)
            .or_default()
            .insert(f.port);
        let c = counts.entry((f.src, f.dst, f.proto)).or_default();
        *c = c.saturating_add(f.seen.flows);
    }
    // 2. Sources with the same ports to one destination share a rule; then
    // rules with the same sources, protocol and ports share destinations.
    type RuleKey = (BTreeSet<IpAddr>, u8, String);
    let mut rules: BTreeMap<RuleKey, (BTreeSet<IpAddr>, u64)> = BTreeMap::new();
    for ((dst, proto), sources) in &by_dst {
        let mut by_ports: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for (src, ports) in sources {
            let ports = if has_ports(*proto) {
                PortSet::normalized(ports.iter().map(|p| PortRange { lo: *p, hi: *p }).collect())
                    .to_string()
            } else {
                "*".to_owned()
            };
            by_ports.entry(ports).or_default().insert(*src);
        }
        for (ports, srcs) in by_ports {
            let n: u64 = srcs.iter().map(|s| counts[&(*s, *dst, *proto)]).sum();
            let e = rules.entry((srcs, *proto, ports)).or_default();
            e.0.insert(*dst);
            e.1 = e.1.saturating_add(n);
        }
    }

    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Suggested by `segment-agent suggest` from {} observed flow(s) over {:.0} s.",
        obs.flows.iter().map(|f| f.seen.flows).sum::<u64>(),
        obs.seconds
    );
    let _ = writeln!(
        y,
        "# It allows exactly what was observed and nothing else: review it, then"
    );
    let _ = writeln!(
        y,
        "# `segment-agent check` and `segment-agent test` it before enforcing it."
    );
    if obs.suppressed > 0 {
        let _ = writeln!(
            y,
            "# WARNING: {} flow record(s) were suppressed by the rate limit while observing;",
            obs.suppressed
        );
        let _ = writeln!(
            y,
            "# some flows may be missing. Observe again under less load."
        );
    }
    if let Some(p) = policy {
        y.push_str(&definitions(p));
    }
    y.push_str("acls:\n");
    if rules.is_empty() {
        y.push_str("  []\n");
    }
    let mut tests = String::new();
    for ((srcs, proto, ports), (dsts, n)) in &rules {
        let src_names = namer.name(srcs);
        let dst_names = namer.name(dsts);
        let first_src = srcs.iter().next().copied();
        let first_dst = dsts.iter().next().copied();
        let describe = |a: Option<IpAddr>| -> String {
            a.map(|a| {
                let segs = namer.segments_of(a);
                if segs.is_empty() {
                    a.to_string()
                } else {
                    format!("{a} ({})", segs.join(", "))
                }
            })
            .unwrap_or_default()
        };
        let _ = writeln!(
            y,
            "  # observed {n} flow(s), e.g. {} -> {}",
            describe(first_src),
            describe(first_dst)
        );
        let _ = writeln!(y, "  - action: accept");
        let _ = writeln!(
            y,
            "    src: [{}]",
            src_names
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            y,
            "    dst: [{}]",
            dst_names
                .iter()
                .map(|d| dest(d, ports))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(y, "    proto: {}", protocol_name(*proto));
        if has_ports(*proto) {
            for s in &src_names {
                let _ = writeln!(
                    tests,
                    "  - src: {}\n    proto: {}\n    accept: [{}]",
                    quote(s),
                    protocol_name(*proto),
                    dst_names
                        .iter()
                        .map(|d| dest(d, ports))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    if !tests.is_empty() {
        y.push_str("tests:\n");
        y.push_str(&tests);
    }
    y
}

/// The current policy's definitions (and failsafe entries), copied as they
/// were written so that the suggestion's names resolve to the same thing.
/// YAML accepts JSON, so each section is re-emitted as one JSON line.
fn definitions(p: &Policy) -> String {
    let mut y = String::new();
    let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(&p.source.text) else {
        return y;
    };
    for section in ["hosts", "users", "groups", "tags", "failsafe"] {
        if let Some(v) = doc.get(section).filter(|v| !v.is_null()) {
            if section == "failsafe" {
                y.push_str("# Kept from the current policy:\n");
            }
            let _ = writeln!(y, "{section}: {v}");
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, eval::first_match, policy, verify};

    fn flow(src: &str, dst: &str, proto: u8, port: u16) -> ObservedFlow {
        ObservedFlow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            port,
            seen: Seen {
                flows: 3,
                would_drop: 3,
                ..Seen::default()
            },
        }
    }

    const CURRENT: &str = r#"
mode: audit
hosts:
  db-primary: 10.10.1.10
  db-replica: 10.10.1.11
users:
  alice: [10.10.9.5]
  bob: [10.10.9.6, "fd00:9::6"]
groups:
  finance: [alice, bob]
tags:
  web-server: [10.10.0.0/28]
  db-server: [db-primary, db-replica]
acls: []
"#;

    #[test]
    fn the_suggestion_allows_exactly_what_was_observed() {
        let current = policy::parse("current.yaml", CURRENT).unwrap();
        let obs = Observation {
            flows: vec![
                flow("10.10.0.2", "10.10.1.10", 6, 5432),
                flow("10.10.0.2", "10.10.1.11", 6, 5432),
                flow("10.10.0.3", "10.10.1.10", 6, 5432),
                flow("10.10.0.3", "10.10.1.11", 6, 5432),
                flow("10.10.9.5", "10.10.0.2", 6, 443),
                flow("10.10.9.6", "10.10.0.2", 6, 443),
                flow("fd00:9::6", "fd00:10::2", 6, 443),
                flow("10.10.9.5", "10.10.0.2", 1, 0),
                flow("10.10.9.5", "10.10.0.2", 6, 80),
            ],
            seconds: 10.0,
            suppressed: 0,
        };
        let text = suggest(&obs, Some(&current));
        let p = policy::parse("suggested.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let c = compile(&p).unwrap();
        assert!(verify::run(&p, &c).iter().all(|r| r.holds), "{text}");
        // Everything observed is allowed...
        for f in &obs.flows {
            assert!(
                first_match(&p, f.src, f.dst, f.proto, f.port).is_some(),
                "{f:?}\n{text}"
            );
        }
        // ...and nothing near it.
        let denied = [
            ("10.10.1.10", "10.10.0.2", 6, 5432),
            ("10.10.0.4", "10.10.1.10", 6, 5432),
            ("10.10.0.2", "10.10.1.10", 6, 5433),
            ("10.10.0.2", "10.10.1.10", 17, 5432),
            ("10.10.9.6", "10.10.0.2", 6, 80),
            ("10.10.9.6", "10.10.0.2", 1, 0),
            ("10.10.9.7", "10.10.0.2", 6, 443),
            ("10.10.0.3", "10.10.1.12", 6, 5432),
        ];
        for (s, d, proto, port) in denied {
            assert!(
                first_match(&p, s.parse().unwrap(), d.parse().unwrap(), proto, port).is_none(),
                "{s} -> {d} {proto}/{port} should stay denied\n{text}"
            );
        }
        // Segments are used where every member was seen: the database tag,
        // alice (one address); bob's IPv4 address alone is not all of bob,
        // and two web servers are not the whole web-server /28.
        assert!(text.contains("\"tag:db-server:5432\""), "{text}");
        assert!(text.contains("src: [alice]"), "{text}");
        assert!(text.contains("src: [10.10.9.6]"), "{text}");
        assert!(text.contains("src: [10.10.0.2, 10.10.0.3]"), "{text}");
        assert!(text.contains("# observed 12 flow(s)"), "{text}");
        assert!(text.contains("# observed"), "{text}");
    }

    #[test]
    fn observations_merge_and_ignore_non_openers() {
        let mut o = Observer::new(10);
        let mut r = crate::flows::FlowRecord {
            seq: 1,
            time: 0.0,
            hook: "ingress".into(),
            verdict: "would_drop".into(),
            reason: "audit".into(),
            proto: "tcp".into(),
            proto_number: 6,
            src: Some("10.0.0.1".parse().unwrap()),
            dst: Some("10.0.0.2".parse().unwrap()),
            sport: 40000,
            dport: 22,
            src_segments: vec![],
            dst_segments: vec![],
            rule: None,
            bytes: 60,
            generation: 1,
            opener: true,
        };
        o.add(&r);
        o.add(&r);
        r.opener = false;
        o.add(&r);
        let mut a = o.finish(5.0, 0);
        assert_eq!(a.flows.len(), 1);
        assert_eq!(a.flows[0].seen.flows, 2);
        let b = a.clone();
        a.merge(b);
        assert_eq!(a.flows[0].seen.flows, 4);
        assert_eq!(a.seconds, 10.0);
    }
}

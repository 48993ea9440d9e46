//! Converting a validated policy to the other language: a Tailscale policy
//! (with its inventory resolved) to segment's YAML, and a YAML policy to a
//! Tailscale policy file. Both conversions preserve verdicts: every packet
//! the original admits, the conversion admits, and nothing else (`diff`
//! across the two reports no change; a property test checks it).
//!
//! The conversion works on resolved addresses, so it is a snapshot: a
//! Tailscale policy converted with an inventory holds that inventory's
//! addresses. `tests` are not converted (Tailscale's are decided for
//! principals, segment's for addresses); a comment says so.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::{
    model::{DEFAULT_PROTOCOLS, Policy, PortSet, RuleOrigin, SegmentKind, Selector, protocol_name},
    syntax::is_valid_name,
};

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A name valid in segment's YAML, unique among `taken`.
fn yaml_name(want: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base: String = want
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_alphabetic()) {
        base = format!("x{base}");
    }
    let mut name = base.clone();
    let mut n = 2;
    while !is_valid_name(&name) || !taken.insert(name.clone()) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

fn dest_text(target: &str, ports: &PortSet) -> String {
    format!("{target}:{ports}")
}

fn net_dest(n: &IpNet) -> String {
    match n {
        IpNet::V6(v) if v.prefix_len() == 128 => format!("[{}]", v.addr()),
        _ if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
        _ => n.to_string(),
    }
}

/// segment's YAML for `policy` (any source format).
pub fn to_yaml(policy: &Policy) -> String {
    let mut taken = BTreeSet::new();
    let mut users: Vec<(String, Vec<IpNet>)> = Vec::new();
    let mut tags: Vec<(String, Vec<IpNet>)> = Vec::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut tag_taken = BTreeSet::new();
    for (i, s) in policy.segments.iter().enumerate() {
        let reference = match s.kind {
            SegmentKind::User if !s.prefixes.is_empty() => {
                let n = yaml_name(&s.name, &mut taken);
                users.push((n.clone(), s.prefixes.clone()));
                n
            }
            _ => {
                let want = match s.kind {
                    SegmentKind::Tag => s.name.clone(),
                    _ => s.reference(),
                };
                let n = yaml_name(&want, &mut tag_taken);
                tags.push((n.clone(), s.prefixes.clone()));
                format!("tag:{n}")
            }
        };
        names.insert(i as u32, reference);
    }
    let sel = |s: &Selector| match s {
        Selector::Any => "*".to_owned(),
        Selector::Segment(id) => names[id].clone(),
        Selector::Net(n) => n.to_string(),
    };
    let dsel = |s: &Selector| match s {
        Selector::Any => "*".to_owned(),
        Selector::Segment(id) => names[id].clone(),
        Selector::Net(n) => net_dest(n),
    };
    let mut out = format!(
        "# Converted from {} by `segment-agent convert`.\n# Addresses are resolved: re-run the conversion when the inventory changes.\n",
        policy.source.name
    );
    if policy.test_bed.is_some() || !policy.tests.is_empty() {
        out.push_str("# The source's tests are not converted: run them on the source file.\n");
    }
    for n in &policy.not_enforced {
        out.push_str(&format!("# not enforced: {n}\n"));
    }
    let list = |nets: &[IpNet]| {
        format!(
            "[{}]",
            nets.iter()
                .map(|n| q(&n.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if !users.is_empty() {
        out.push_str("users:\n");
        for (n, p) in &users {
            out.push_str(&format!("  {}: {}\n", q(n), list(p)));
        }
    }
    if !tags.is_empty() {
        out.push_str("tags:\n");
        for (n, p) in &tags {
            out.push_str(&format!("  {}: {}\n", q(n), list(p)));
        }
    }
    let mut acls = String::new();
    let mut failsafe = String::new();
    for r in &policy.rules {
        let mut line = format!(
            "  - {{action: accept, src: [{}], dst: [{}]",
            r.src
                .iter()
                .map(|s| q(&sel(s)))
                .collect::<Vec<_>>()
                .join(", "),
            r.dst
                .iter()
                .map(|d| {
                    // Ports mean nothing to ICMP and the like, and YAML
                    // refuses them on rules of such protocols only.
                    let ports = if r.protos.iter().any(|p| super::model::has_ports(*p)) {
                        d.ports.clone()
                    } else {
                        PortSet::Any
                    };
                    q(&dest_text(&dsel(&d.selector), &ports))
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        if r.protos != DEFAULT_PROTOCOLS {
            line.push_str(&format!(
                ", proto: [{}]",
                r.protos
                    .iter()
                    .map(|p| protocol_name(*p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        line.push_str(&format!(", name: {}}}\n", q(&r.label())));
        if r.is_failsafe() {
            failsafe.push_str(&line.replace("action: accept, ", ""));
        } else {
            acls.push_str(&line);
        }
    }
    out.push_str("acls:\n");
    if acls.is_empty() {
        out.push_str("  []\n");
    } else {
        out.push_str(&acls);
    }
    if !failsafe.is_empty() {
        out.push_str("failsafe:\n");
        out.push_str(&failsafe);
    }
    out.push_str(&format!(
        "enforce: {{ingress: {}, egress: {}}}\nmode: {}\n",
        policy.enforce.ingress,
        policy.enforce.egress,
        policy.mode.as_str()
    ));
    out
}

/// A Tailscale policy file (HuJSON) for `policy`: every segment an
/// `ipset:`, every rule an acl (one per protocol when it names several).
pub fn to_tailscale(policy: &Policy) -> String {
    let mut taken = BTreeSet::new();
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut ipsets = Vec::new();
    for (i, s) in policy.segments.iter().enumerate() {
        let n = format!(
            "ipset:{}",
            yaml_name(&s.reference().replace(':', "-"), &mut taken)
        );
        ipsets.push((n.clone(), s.prefixes.clone()));
        names.insert(i as u32, n);
    }
    let sel = |s: &Selector| match s {
        Selector::Any => "*".to_owned(),
        Selector::Segment(id) => names[id].clone(),
        Selector::Net(n) => n.to_string(),
    };
    let dsel = |s: &Selector| match s {
        Selector::Any => "*".to_owned(),
        Selector::Segment(id) => names[id].clone(),
        Selector::Net(n) => net_dest(n),
    };
    let mut out = format!(
        "// Converted from {} by `segment-agent convert --to tailscale`.\n// Segments become IP sets; `failsafe` entries become ordinary acls.\n{{\n",
        policy.source.name
    );
    if !policy.tests.is_empty() {
        out.push_str("\t// The source's tests are not converted: run them on the source file.\n");
    }
    out.push_str("\t\"ipsets\": {\n");
    for (n, p) in &ipsets {
        // An empty IP set: add then remove one address.
        let items: Vec<String> = if p.is_empty() {
            vec![q("add 192.0.2.1"), q("remove 192.0.2.1")]
        } else {
            p.iter().map(|n| q(&n.to_string())).collect()
        };
        out.push_str(&format!("\t\t{}: [{}],\n", q(n), items.join(", ")));
    }
    out.push_str("\t},\n\t\"acls\": [\n");
    for r in &policy.rules {
        let src: Vec<String> = r.src.iter().map(|s| q(&sel(s))).collect();
        let dst: Vec<String> = r
            .dst
            .iter()
            .map(|d| q(&dest_text(&dsel(&d.selector), &d.ports)))
            .collect();
        let label = match r.origin {
            RuleOrigin::Failsafe(_) => format!("{} (failsafe)", r.label()),
            _ => r.label(),
        };
        let protos: Vec<Option<u8>> = if r.protos == DEFAULT_PROTOCOLS {
            vec![None]
        } else {
            r.protos.iter().map(|p| Some(*p)).collect()
        };
        for p in protos {
            out.push_str(&format!(
                "\t\t// {label}\n\t\t{{\"action\": \"accept\", \"src\": [{}], \"dst\": [{}]{}}},\n",
                src.join(", "),
                dst.join(", "),
                p.map(|p| format!(", \"proto\": \"{p}\""))
                    .unwrap_or_default()
            ));
        }
    }
    out.push_str("\t],\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use crate::policy::{Device, Inventory, InventoryUser, parse, tailscale};

    const USERS: &[&str] = &["a@x.io", "b@x.io", "c@y.io"];
    const TAGS: &[&str] = &["web", "db", "ops"];
    const ADDRS: &[&str] = &[
        "100.64.0.1",
        "100.64.0.2",
        "100.64.0.3",
        "100.64.0.4",
        "100.64.0.5",
        "fd7a:115c:a1e0::1",
        "fd7a:115c:a1e0::4",
        "10.1.0.1",
        "10.1.2.3",
        "8.8.8.8",
    ];

    fn inventory() -> Inventory {
        let dev = |n: &str, a: &[&str], o: &str, t: &[&str]| Device {
            name: n.into(),
            addresses: a.iter().map(|x| x.parse().unwrap()).collect(),
            owner: Some(o.into()),
            tags: t.iter().map(|t| format!("tag:{t}")).collect(),
            origin: String::new(),
        };
        Inventory {
            devices: vec![
                dev("d1", &["100.64.0.1", "fd7a:115c:a1e0::1"], "a@x.io", &[]),
                dev("d2", &["100.64.0.2"], "b@x.io", &[]),
                dev("d3", &["100.64.0.3"], "c@y.io", &["web"]),
                dev(
                    "d4",
                    &["100.64.0.4", "fd7a:115c:a1e0::4"],
                    "a@x.io",
                    &["db"],
                ),
                dev("d5", &["100.64.0.5"], "a@x.io", &["ops", "web"]),
            ],
            users: vec![InventoryUser {
                login: "a@x.io".into(),
                roles: vec!["admin".into()],
            }],
        }
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            proptest::sample::select(USERS).prop_map(str::to_owned),
            proptest::sample::select(TAGS).prop_map(|t| format!("tag:{t}")),
            Just("group:g1".to_owned()),
            Just("group:empty".to_owned()),
            Just("lan".to_owned()),
            Just("ipset:s".to_owned()),
            Just("10.1.2.3".to_owned()),
            Just("autogroup:member".to_owned()),
            Just("autogroup:tagged".to_owned()),
            Just("autogroup:admin".to_owned()),
            Just("user:*@x.io".to_owned()),
        ]
    }

    fn ports() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (1u16..30).prop_map(|p| p.to_string()),
            (1u16..20, 0u16..10).prop_map(|(a, b)| format!("{a}-{}", a + b)),
            Just("22,80".to_owned()),
        ]
    }

    fn rule() -> impl Strategy<Value = String> {
        let acl = (
            proptest::collection::vec(target(), 1..3),
            proptest::collection::vec(
                (target(), ports(), any::<bool>()).prop_map(|(t, p, self_)| {
                    if self_ {
                        format!("autogroup:self:{p}")
                    } else {
                        format!("{t}:{p}")
                    }
                }),
                1..3,
            ),
            proptest::option::of(proptest::sample::select(&["tcp", "udp", "icmp", "17"][..])),
        )
            .prop_map(|(src, dst, proto)| {
                // autogroup:self needs user sources.
                let src = if dst.iter().any(|d| d.starts_with("autogroup:self")) {
                    vec!["autogroup:member".to_owned()]
                } else {
                    src
                };
                format!(
                    "{{\"action\": \"accept\", \"src\": {}, \"dst\": {}{}}}",
                    serde_json::to_string(&src).unwrap(),
                    serde_json::to_string(&dst).unwrap(),
                    proto
                        .map(|p| format!(", \"proto\": \"{p}\""))
                        .unwrap_or_default()
                )
            });
        let grant = (
            proptest::collection::vec(target(), 1..3),
            proptest::collection::vec(target(), 1..3),
            proptest::collection::vec(
                prop_oneof![
                    Just("*".to_owned()),
                    ports().prop_filter("not *", |p| p != "*"),
                    ports().prop_map(|p| format!("tcp:{p}")),
                    ports().prop_map(|p| format!("udp:{p}")),
                    Just("icmp:*".to_owned()),
                ],
                1..3,
            ),
        )
            .prop_map(|(src, dst, ip)| {
                format!(
                    "{{\"grant\": true, \"src\": {}, \"dst\": {}, \"ip\": {}}}",
                    serde_json::to_string(&src).unwrap(),
                    serde_json::to_string(&dst).unwrap(),
                    serde_json::to_string(&ip).unwrap()
                )
            });
        prop_oneof![acl, grant]
    }

    fn policy_text(rules: &[String]) -> String {
        let (grants, acls): (Vec<&String>, Vec<&String>) =
            rules.iter().partition(|r| r.contains("\"grant\": true"));
        let grants: Vec<String> = grants
            .iter()
            .map(|g| g.replace("\"grant\": true, ", ""))
            .collect();
        format!(
            "{{\n  \"groups\": {{\"group:g1\": [\"b@x.io\", \"c@y.io\"], \"group:empty\": []}},\n  \"tagOwners\": {{\"tag:web\": [], \"tag:db\": [], \"tag:ops\": []}},\n  \"hosts\": {{\"lan\": \"10.1.0.0/16\"}},\n  \"ipsets\": {{\"ipset:s\": [\"10.0.0.0/8\", \"remove 10.1.2.0/24\", \"100.64.0.2\"]}},\n  \"acls\": [{}],\n  \"grants\": [{}],\n}}",
            acls.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",\n"),
            grants.join(",\n")
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A random Tailscale-shaped policy and its YAML conversion admit
        /// exactly the same packets.
        #[test]
        fn conversion_keeps_every_verdict(
            rules in proptest::collection::vec(rule(), 0..6),
            packets in proptest::collection::vec(
                (
                    proptest::sample::select(ADDRS),
                    proptest::sample::select(ADDRS),
                    proptest::sample::select(&[1u8, 6, 17, 58][..]),
                    0u16..35,
                ),
                64,
            ),
        ) {
            let text = policy_text(&rules);
            let inv = inventory();
            let ts = tailscale::parse("p.hujson", &text, &inv)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let yaml = super::to_yaml(&ts);
            let y = parse("p.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let back = super::to_tailscale(&y);
            let t2 = parse("back.hujson", &back).unwrap_or_else(|e| panic!("{e}\n{back}"));
            for (s, d, proto, port) in packets {
                let (s, d): (IpAddr, IpAddr) = (s.parse().unwrap(), d.parse().unwrap());
                if s.is_ipv4() != d.is_ipv4() {
                    continue;
                }
                let want = crate::eval::first_match(&ts, s, d, proto, port).is_some();
                prop_assert_eq!(
                    crate::eval::first_match(&y, s, d, proto, port).is_some(),
                    want,
                    "{} -> {} proto {} port {}\n{}\n{}", s, d, proto, port, text, yaml
                );
                prop_assert_eq!(crate::eval::first_match(&t2, s, d, proto, port).is_some(), want);
            }
        }
    }
}

//! The compiled tables against a direct reading of the policy.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use segment_common::{
    IDENTITY_F_AUDIT, IDENTITY_F_NO_RULE_FROM, IDENTITY_F_NO_RULE_TO, RULE_F_FAILSAFE,
};

use super::*;
use crate::{
    eval::first_match,
    policy::{
        self, Assertion, Dest, Enforce, Expect, Mode, Policy, PortRange, PortSet, Rule, RuleOrigin,
        Segment, SegmentKind, Selector, Source, TestCase,
    },
    verify,
};

// ---------------------------------------------------------------------------
// Hand-made cases.

fn compiled(yaml: &str) -> (Policy, Compiled) {
    let p = policy::parse("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let c = compile(&p).unwrap();
    (p, c)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule_of(c: &Compiled, src: &str, dst: &str, proto: u8, port: u16) -> Option<u32> {
    c.verdict(ip(src), ip(dst), proto, port).map(|v| v.rule)
}

const ISSUE_POLICY: &str = r#"
hosts:
  db-primary: 10.10.1.10
  db-replica: 10.10.1.11
  legacy-v6: "fd00:10::/64"
users:
  alice: [10.10.9.5]
  bob: [10.10.9.6, "fd00:9::6"]
  carol: [10.10.9.7]
groups:
  finance: [alice, bob]
  it-support: [carol]
  admins: [group:it-support]
tags:
  web-server: [10.10.0.0/28]
  db-server: [db-primary, db-replica]
  finance-resource: [10.10.5.0/24]
  general-staff: [10.10.9.0/24]
acls:
  - action: accept
    src: [tag:web-server]
    dst: [tag:db-server:5432]
    proto: tcp
  - action: accept
    src: [group:admins]
    dst: [tag:db-server:22, tag:web-server:22]
    proto: tcp
  - action: accept
    src: [group:finance]
    dst: [tag:finance-resource:445,139]
  - action: accept
    src: ["*"]
    dst: [tag:web-server:80,443]
    proto: tcp
tests:
  - src: tag:web-server
    accept: [tag:db-server:5432]
    deny: [tag:db-server:22]
  - src: alice
    accept: [tag:finance-resource:445]
    deny: [tag:db-server:5432]
"#;

#[test]
fn the_foundation_policy_means_what_it_says() {
    let (p, c) = compiled(ISSUE_POLICY);
    // web → db on 5432 only, and never the reverse.
    assert_eq!(rule_of(&c, "10.10.0.3", "10.10.1.10", 6, 5432), Some(0));
    assert_eq!(rule_of(&c, "10.10.0.3", "10.10.1.11", 6, 5432), Some(0));
    assert_eq!(rule_of(&c, "10.10.0.3", "10.10.1.10", 17, 5432), None);
    assert_eq!(rule_of(&c, "10.10.0.3", "10.10.1.10", 6, 22), None);
    assert_eq!(rule_of(&c, "10.10.1.10", "10.10.0.3", 6, 5432), None);
    // carol is an admin through nested groups.
    assert_eq!(rule_of(&c, "10.10.9.7", "10.10.1.10", 6, 22), Some(1));
    assert_eq!(rule_of(&c, "10.10.9.7", "10.10.0.1", 6, 22), Some(1));
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.1.10", 6, 22), None);
    // `[tag:finance-resource:445,139]` is two YAML items and both ports;
    // no proto means tcp, udp and icmp.
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.5.20", 6, 445), Some(2));
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.5.20", 17, 139), Some(2));
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.5.20", 1, 0), Some(2));
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.5.20", 6, 446), None);
    // bob's IPv6 device is finance too, but finance-resource is IPv4 only.
    assert_eq!(rule_of(&c, "fd00:9::6", "fd00:10::1", 6, 445), None);
    // Anyone reaches the web servers on 80 and 443 over tcp.
    assert_eq!(rule_of(&c, "192.0.2.1", "10.10.0.15", 6, 443), Some(3));
    assert_eq!(rule_of(&c, "192.0.2.1", "10.10.0.16", 6, 443), None);
    assert_eq!(rule_of(&c, "10.10.9.5", "10.10.0.1", 6, 80), Some(3));
    // Every test in the file holds.
    let results = verify::run(&p, &c);
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r.holds), "{results:#?}");
    // alice's device is also general-staff.
    let alice = c.identity_of(ip("10.10.9.5"));
    let mut segs: Vec<String> = c.identities[&alice.id]
        .segments
        .iter()
        .map(|s| p.segment(*s).reference())
        .collect();
    segs.sort();
    assert_eq!(segs, ["alice", "group:finance", "tag:general-staff"]);
}

#[test]
fn failing_assertions_come_with_a_counterexample() {
    let (p, c) = compiled(
        r#"
tags:
  web: [10.0.0.0/29]
  db: [10.0.1.0/30]
acls:
  - action: accept
    src: [tag:web]
    dst: [tag:db:*]
tests:
  - src: tag:web
    deny: [tag:db:22]
  - src: tag:db
    accept: [tag:web:80]
"#,
    );
    let r = verify::run(&p, &c);
    assert!(!r[0].holds);
    let x = r[0].counterexample.as_ref().unwrap();
    assert!(x.rule.as_deref().unwrap().starts_with("acl #1"), "{x:?}");
    assert!(!r[1].holds);
    assert!(r[1].counterexample.as_ref().unwrap().rule.is_none());
}

#[test]
fn a_test_is_checked_for_every_address_not_just_one() {
    // Only .3 of web may reach db: a test from all of web must fail.
    let (p, c) = compiled(
        r#"
hosts:
  web3: 10.0.0.3
tags:
  web: [10.0.0.0/29]
  db: [10.0.1.1]
acls:
  - action: accept
    src: [web3]
    dst: [tag:db:5432]
tests:
  - src: tag:web
    accept: [tag:db:5432]
  - src: web3
    accept: [tag:db:5432]
"#,
    );
    let r = verify::run(&p, &c);
    assert!(!r[0].holds, "{r:#?}");
    assert_ne!(r[0].counterexample.as_ref().unwrap().src, ip("10.0.0.3"));
    assert!(r[1].holds);
}

#[test]
fn port_ranges_and_classes() {
    let (_, c) = compiled(
        r#"
tags:
  a: [10.0.0.1]
  b: [10.0.0.2]
acls:
  - action: accept
    src: [tag:a]
    dst: [tag:b:1024-65535]
    proto: tcp
  - action: accept
    src: [tag:a]
    dst: [tag:b:8080]
    proto: [tcp, udp]
"#,
    );
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 6, 1023), None);
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 6, 1024), Some(0));
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 6, 8080), Some(0));
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 6, 65535), Some(0));
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 17, 8080), Some(1));
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.2", 17, 8081), None);
    // A range is a handful of classes, not 64,512 entries.
    assert!(c.sizes.rule_entries <= 4, "{:?}", c.sizes);
}

#[test]
fn first_rule_is_reported_across_port_kinds() {
    // Rule 0 allows every port; rule 1 names 22. Port 22 must report rule 0.
    let (_, c) = compiled(
        r#"
tags:
  a: [10.0.0.1]
acls:
  - action: accept
    src: [tag:a]
    dst: [tag:a:*]
  - action: accept
    src: [tag:a]
    dst: [tag:a:22]
"#,
    );
    assert_eq!(rule_of(&c, "10.0.0.1", "10.0.0.1", 6, 22), Some(0));
}

#[test]
fn big_groups_share_one_class() {
    let mut yaml = String::from("users:\n");
    for i in 0..1000 {
        yaml.push_str(&format!("  u{i}: [10.1.{}.{}]\n", i / 250, i % 250 + 1));
    }
    yaml.push_str("groups:\n  staff: [");
    yaml.push_str(
        &(0..1000)
            .map(|i| format!("u{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    yaml.push_str("]\ntags:\n  web: [10.0.0.0/24]\nacls:\n  - action: accept\n    src: [group:staff]\n    dst: [tag:web:443]\n    proto: tcp\n");
    let (_, c) = compiled(&yaml);
    assert_eq!(
        c.sizes.identities,
        1001 + 1,
        "each user is its own identity (plus web, world)"
    );
    assert_eq!(
        c.sizes.rule_entries, 1,
        "but they all share one source class"
    );
    assert_eq!(rule_of(&c, "10.1.3.250", "10.0.0.9", 6, 443), Some(0));
}

#[test]
fn audit_modes_follow_the_destination() {
    let (_, c) = compiled(
        r#"
mode: audit
tags:
  db: [10.0.1.0/24]
  web: [10.0.0.0/24]
  inner: [10.0.1.5]
modes:
  tag:db: enforce
  tag:inner: audit
acls: []
"#,
    );
    let audit = |f: u32| f & IDENTITY_F_AUDIT;
    assert_eq!(audit(c.world.flags), IDENTITY_F_AUDIT);
    assert_eq!(audit(c.identity_of(ip("10.0.0.1")).flags), IDENTITY_F_AUDIT);
    assert_eq!(audit(c.identity_of(ip("10.0.1.1")).flags), 0);
    // enforce wins over audit when an address is in both.
    assert_eq!(audit(c.identity_of(ip("10.0.1.5")).flags), 0);
}

#[test]
fn identities_no_rule_names_are_marked_so_the_datapath_skips_the_rule_lookups() {
    const FROM: u32 = IDENTITY_F_NO_RULE_FROM;
    const TO: u32 = IDENTITY_F_NO_RULE_TO;
    let (_, c) = compiled(
        "hosts:\n  a: 10.0.0.1\n  b: 10.0.0.2\n  c: 10.0.0.3\nacls:\n  - {action: accept, src: [a], dst: ['b:22']}\n",
    );
    let marks = |addr: &str| c.identity_of(ip(addr)).flags & (FROM | TO);
    assert_eq!(marks("10.0.0.1"), TO, "a is a source, never a destination");
    assert_eq!(
        marks("10.0.0.2"),
        FROM,
        "b is a destination, never a source"
    );
    assert_eq!(marks("10.0.0.3"), FROM | TO, "no rule names c");
    assert_eq!(c.world.flags & (FROM | TO), FROM | TO);
    assert_eq!(marks("192.0.2.1"), FROM | TO, "an address no prefix holds");

    // `*` names every class, the world's included.
    let (_, c) =
        compiled("hosts:\n  b: 10.0.0.2\nacls:\n  - {action: accept, src: ['*'], dst: ['b:22']}\n");
    assert_eq!(c.world.flags & FROM, 0);
    assert_eq!(c.identity_of(ip("10.0.0.2")).flags & (FROM | TO), 0);
    assert_eq!(c.world.flags & TO, TO);
}

#[test]
fn failsafe_rules_come_first_and_are_flagged() {
    let (p, c) = compiled(
        r#"
tags:
  a: [10.0.0.0/24]
failsafe:
  - src: [192.168.1.0/24]
    dst: ["*:22"]
    proto: tcp
acls:
  - action: accept
    src: ["*"]
    dst: [tag:a:*]
"#,
    );
    let v = c.verdict(ip("192.168.1.9"), ip("10.0.0.1"), 6, 22).unwrap();
    assert_eq!(v.rule, 0);
    assert_eq!(v.flags, RULE_F_FAILSAFE);
    assert!(p.rules[0].is_failsafe());
    let v = c.verdict(ip("192.168.1.9"), ip("10.0.0.1"), 6, 23).unwrap();
    assert_eq!((v.rule, v.flags), (1, 0));
}

#[test]
fn identities_are_stable_across_recompiles() {
    let (p1, _) = compiled("tags:\n  a: [10.0.0.1]\n  b: [10.0.0.2]\nacls: []\n");
    let (p2, _) = compiled("tags:\n  c: [10.0.0.3]\n  b: [10.0.0.2]\n  a: [10.0.0.1]\nacls: []\n");
    let mut ids = IdentityAllocator::default();
    let c1 = compile_with(&p1, &mut ids).unwrap();
    let c2 = compile_with(&p2, &mut ids).unwrap();
    for a in ["10.0.0.1", "10.0.0.2"] {
        assert_eq!(c1.identity_of(ip(a)).id, c2.identity_of(ip(a)).id);
    }
    assert_ne!(
        c2.identity_of(ip("10.0.0.3")).id,
        c2.identity_of(ip("10.0.0.1")).id
    );
}

#[test]
fn every_table_has_a_capacity_and_the_error_gives_the_sizes() {
    let (p, _) = compiled(
        "tags:\n  a: [10.0.0.0/24, 10.1.0.0/24]\n  b: [10.2.0.0/24]\nacls:\n  - action: accept\n    src: [tag:a, tag:b]\n    dst: [tag:a:22, tag:b:22,80]\n",
    );
    let small = |rules, rule_entries, prefixes| Limits {
        rules,
        rule_entries,
        prefixes,
    };
    let err = compile_with_limits(&p, &mut IdentityAllocator::default(), &small(100, 100, 2))
        .unwrap_err();
    assert_eq!(
        err,
        CompileError::TooLarge {
            table: "address prefixes",
            needed: 3,
            capacity: 2
        }
    );
    assert!(
        err.to_string()
            .contains("needs 3 address prefixes, more than the datapath holds (2)"),
        "{err}"
    );
    let err = compile_with_limits(&p, &mut IdentityAllocator::default(), &small(100, 3, 100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CompileError::TooLarge {
                table: "rule entries",
                capacity: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let err = compile_with_limits(&p, &mut IdentityAllocator::default(), &small(0, 100, 100))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CompileError::TooLarge {
                table: "rules",
                needed: 1,
                capacity: 0
            }
        ),
        "{err:?}"
    );
    assert!(compile_with_limits(&p, &mut IdentityAllocator::default(), &small(1, 100, 3)).is_ok());
}

#[test]
fn too_large_policies_are_refused_with_sizes() {
    // 600 × 600 single-address tags, each pair its own rule entry via `*` on
    // 20 port classes: far beyond nothing, but check the error path with a
    // policy whose rule count alone is over the limit.
    let mut rules = Vec::new();
    let base = policy::parse(
        "t.yaml",
        "tags:\n  a: [10.0.0.1]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:a:1]\n",
    )
    .unwrap();
    for _ in 0..(segment_common::MAX_RULES as usize + 1) {
        rules.push(base.rules[0].clone());
    }
    let big = Policy { rules, ..base };
    match compile(&big) {
        Err(CompileError::TooLarge {
            table,
            needed,
            capacity,
        }) => {
            assert_eq!(table, "rules");
            assert_eq!(needed, u64::from(segment_common::MAX_RULES) + 1);
            assert_eq!(capacity, u64::from(segment_common::MAX_RULES));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Random policies: the compiled tables agree with the rule-by-rule reading.

/// Addresses come from two tiny universes (10.0.0.0/27 and fd00::/123) so
/// that random prefixes overlap and nest often.
fn arb_prefix() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0u32..32, 27u8..=32).prop_map(|(host, len)| {
            IpNet::new(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | host)),
                len,
            )
            .unwrap()
            .trunc()
        }),
        (0u128..32, 123u8..=128).prop_map(|(host, len)| {
            IpNet::new(
                IpAddr::V6(std::net::Ipv6Addr::from((0xfd00u128 << 112) | host)),
                len,
            )
            .unwrap()
            .trunc()
        }),
    ]
}

fn arb_addr() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        4 => (0u32..40, 0u32..40).prop_map(|(a, b)| {
            (
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | a)),
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | b)),
            )
        }),
        1 => (0u128..40, 0u128..40).prop_map(|(a, b)| {
            (
                IpAddr::V6(std::net::Ipv6Addr::from((0xfd00u128 << 112) | a)),
                IpAddr::V6(std::net::Ipv6Addr::from((0xfd00u128 << 112) | b)),
            )
        }),
    ]
}

const PROTOS: [u8; 7] = [1, 6, 17, 47, 58, 132, 50];

fn arb_port() -> impl Strategy<Value = u16> {
    prop_oneof![0u16..12, Just(65535u16), Just(65534u16), 1000u16..1004]
}

fn arb_ports() -> impl Strategy<Value = PortSet> {
    prop_oneof![
        1 => Just(PortSet::Any),
        4 => proptest::collection::vec((arb_port(), 0u16..6), 1..4).prop_map(|v| {
            PortSet::normalized(v.into_iter().map(|(lo, w)| PortRange { lo, hi: lo.saturating_add(w) }).collect())
        }),
    ]
}

fn arb_selector(n_seg: u32) -> impl Strategy<Value = Selector> {
    prop_oneof![
        1 => Just(Selector::Any),
        5 => (0..n_seg).prop_map(Selector::Segment),
        2 => arb_prefix().prop_map(Selector::Net),
    ]
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    (1u32..7)
        .prop_flat_map(|n_seg| {
            let segments = proptest::collection::vec(
                (
                    proptest::collection::vec(arb_prefix(), 0..4),
                    proptest::option::of(prop_oneof![Just(Mode::Enforce), Just(Mode::Audit)]),
                ),
                n_seg as usize,
            );
            let rules = proptest::collection::vec(
                (
                    proptest::collection::vec(arb_selector(n_seg), 1..3),
                    proptest::collection::vec((arb_selector(n_seg), arb_ports()), 1..3),
                    proptest::sample::subsequence(PROTOS.to_vec(), 1..4),
                ),
                0..8,
            );
            (segments, rules, 0usize..3)
        })
        .prop_map(|(segments, rules, failsafe)| {
            let segments = segments
                .into_iter()
                .enumerate()
                .map(|(i, (prefixes, mode))| Segment {
                    kind: [
                        SegmentKind::Tag,
                        SegmentKind::Group,
                        SegmentKind::User,
                        SegmentKind::Host,
                    ][i % 4],
                    name: format!("s{i}"),
                    prefixes: policy::validate::normalize(prefixes),
                    mode,
                    pos: None,
                })
                .collect();
            let rules = rules
                .into_iter()
                .enumerate()
                .map(|(i, (src, dst, protos))| Rule {
                    origin: if i < failsafe {
                        RuleOrigin::Failsafe(i)
                    } else {
                        RuleOrigin::Acl(i)
                    },
                    name: None,
                    src,
                    dst: dst
                        .into_iter()
                        .map(|(selector, ports)| Dest { selector, ports })
                        .collect(),
                    protos,
                    text: String::new(),
                    pos: None,
                })
                .collect();
            Policy {
                source: Source::new("random", ""),
                segments,
                rules,
                tests: Vec::new(),
                enforce: Enforce::default(),
                mode: Mode::Enforce,
                warnings: Vec::new(),
                membership: Vec::new(),
                test_bed: None,
                not_enforced: Vec::new(),
            }
        })
}

fn arb_packet() -> impl Strategy<Value = (IpAddr, IpAddr, u8, u16)> {
    (
        arb_addr(),
        proptest::sample::select(PROTOS.to_vec()),
        arb_port(),
    )
        .prop_map(|((s, d), proto, port)| (s, d, proto, port))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_the_policy(
        policy in arb_policy(),
        packets in proptest::collection::vec(arb_packet(), 64),
    ) {
        let c = compile(&policy).unwrap();
        for (src, dst, proto, port) in packets {
            let naive = first_match(&policy, src, dst, proto, port);
            let tables = c.verdict(src, dst, proto, port);
            prop_assert_eq!(naive, tables.map(|v| v.rule as usize),
                "{} -> {} proto {} port {}", src, dst, proto, port);
            if let Some(v) = tables {
                prop_assert_eq!(v.flags & RULE_F_FAILSAFE != 0, policy.rules[v.rule as usize].is_failsafe());
            }
            // The datapath answers "no rule" from these marks without a
            // lookup: they must never be on an identity a rule admits.
            if naive.is_some() {
                prop_assert_eq!(c.identity_of(src).flags & IDENTITY_F_NO_RULE_FROM, 0,
                    "{} -> {}: the source is marked as in no rule", src, dst);
                prop_assert_eq!(c.identity_of(dst).flags & IDENTITY_F_NO_RULE_TO, 0,
                    "{} -> {}: the destination is marked as in no rule", src, dst);
            }
        }
    }

    #[test]
    fn identities_carry_exactly_the_segments_of_an_address(
        policy in arb_policy(),
        packets in proptest::collection::vec(arb_packet(), 16),
    ) {
        let c = compile(&policy).unwrap();
        for (addr, _, _, _) in packets {
            let id = c.identity_of(addr);
            let expected: Vec<u32> = policy.segments.iter().enumerate()
                .filter(|(_, s)| s.prefixes.iter().any(|p| p.contains(&addr)))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(&c.identities[&id.id].segments, &expected, "{}", addr);
        }
    }

    /// `tests:` results are exact: compare with checking every address of
    /// the (small) universe and every port of a small range.
    #[test]
    fn test_assertions_are_exact(
        policy in arb_policy(),
        src_seg in 0u32..6,
        dst in arb_prefix(),
        proto in proptest::sample::select(vec![6u8, 17, 1]),
        lo in 0u16..12,
        width in 0u16..4,
    ) {
        let src_seg = src_seg % policy.segments.len() as u32;
        let ports = PortSet::Ranges(vec![PortRange { lo, hi: lo + width }]);
        let mut policy = policy;
        policy.tests = vec![TestCase {
            src: Selector::Segment(src_seg),
            src_text: String::new(),
            proto,
            assertions: vec![
                Assertion { expect: Expect::Accept, dst: Selector::Net(dst), dst_text: String::new(), ports: ports.clone(), pos: None },
                Assertion { expect: Expect::Deny, dst: Selector::Net(dst), dst_text: String::new(), ports: ports.clone(), pos: None },
            ],
            pos: None,
        }];
        let c = compile(&policy).unwrap();
        let results = verify::run(&policy, &c);
        // Brute force over the universe.
        let universe: Vec<IpAddr> = (0u32..32).map(|h| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | h)))
            .chain((0u128..32).map(|h| IpAddr::V6(std::net::Ipv6Addr::from((0xfd00u128 << 112) | h))))
            .collect();
        let srcs: Vec<IpAddr> = universe.iter().copied()
            .filter(|a| policy.selector_contains(&Selector::Segment(src_seg), *a)).collect();
        let dsts: Vec<IpAddr> = universe.iter().copied().filter(|a| dst.contains(a)).collect();
        // The universe covers every address of the selectors only when the
        // segment's prefixes lie inside it, which they do by construction.
        let port_list: Vec<u16> = if crate::policy::has_ports(proto) { (lo..=lo + width).collect() } else { vec![0] };
        let mut any = false;
        let mut all = true;
        let mut pairs = 0;
        for s in &srcs {
            for d in &dsts {
                if s.is_ipv4() != d.is_ipv4() { continue; }
                for p in &port_list {
                    pairs += 1;
                    let allowed = first_match(&policy, *s, *d, proto, *p).is_some();
                    any |= allowed;
                    all &= allowed;
                }
            }
        }
        prop_assert_eq!(results[0].holds, pairs > 0 && all);
        prop_assert_eq!(results[1].holds, pairs > 0 && !any);
    }

    /// `diff` lists a change covering a packet exactly when the packet's
    /// verdict differs between the two policies.
    #[test]
    fn diff_says_exactly_which_verdicts_change(
        old in arb_policy(),
        new in arb_policy(),
        packets in proptest::collection::vec(arb_packet(), 64),
    ) {
        let (co, cn) = (compile(&old).unwrap(), compile(&new).unwrap());
        let changes = crate::diff::diff((&old, &co), (&new, &cn));
        for (src, dst, proto, port) in packets {
            let was = first_match(&old, src, dst, proto, port).is_some();
            let is = first_match(&new, src, dst, proto, port).is_some();
            let listed: Vec<_> = changes.iter().filter(|c| c.covers(&co, &cn, src, dst, proto, port)).collect();
            prop_assert!(listed.len() <= 1, "overlapping changes for {} -> {} {}/{}", src, dst, proto, port);
            prop_assert_eq!(listed.len() == 1, was != is, "{} -> {} proto {} port {}", src, dst, proto, port);
            if let Some(c) = listed.first() {
                prop_assert_eq!(c.now == "allowed", is);
            }
        }
    }
}

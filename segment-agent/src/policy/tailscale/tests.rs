//! The Tailscale reader on small policies: what each section means, and
//! what is refused with which message.

use std::net::IpAddr;

use super::*;
use crate::policy::{Device, InventoryUser, Policy};

pub(crate) fn dev(name: &str, addrs: &[&str], owner: Option<&str>, tags: &[&str]) -> Device {
    Device {
        name: name.to_owned(),
        addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        owner: owner.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        origin: String::new(),
    }
}

fn inv() -> Inventory {
    Inventory {
        devices: vec![
            dev(
                "alice-laptop",
                &["100.64.0.1", "fd7a:115c:a1e0::1"],
                Some("alice@example.com"),
                &[],
            ),
            dev(
                "bob-laptop",
                &["100.64.0.2", "fd7a:115c:a1e0::2"],
                Some("bob@example.com"),
                &[],
            ),
            dev(
                "web-1",
                &["100.64.0.10", "fd7a:115c:a1e0::10"],
                Some("admin@example.com"),
                &["tag:web"],
            ),
            dev(
                "db-1",
                &["100.64.0.20", "fd7a:115c:a1e0::20"],
                Some("admin@example.com"),
                &["tag:db"],
            ),
        ],
        users: vec![InventoryUser {
            login: "admin@example.com".into(),
            roles: vec!["admin".into()],
        }],
    }
}

fn load(text: &str) -> Policy {
    match parse("p.hujson", text, &inv()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    parse("p.hujson", text, &inv())
        .expect_err("should be refused")
        .errors()
        .map(|d| d.message.clone())
        .collect()
}

fn allows(p: &Policy, src: &str, dst: &str, proto: u8, port: u16) -> bool {
    let s: IpAddr = src.parse().unwrap();
    let d: IpAddr = dst.parse().unwrap();
    crate::eval::first_match(p, s, d, proto, port).is_some()
}

const BASE: &str = r#"{
  // a small tailnet
  "groups": {"group:dev": ["alice@example.com"]},
  "tagOwners": {"tag:web": ["group:dev"], "tag:db": []},
  "hosts": {"nas": "192.168.1.5"},
"#;

#[test]
fn acls_users_groups_tags_and_ports() {
    let p = load(&format!(
        r#"{BASE}
  "acls": [
    {{"action": "accept", "src": ["group:dev"], "dst": ["tag:web:80,443", "tag:db:5432"]}},
    {{"action": "accept", "src": ["bob@example.com"], "proto": "udp", "dst": ["nas:53"]}},
    {{"action": "accept", "users": ["tag:web"], "ports": ["[fd7a:115c:a1e0::20]:5432"]}},
  ],
}}"#
    ));
    assert!(allows(&p, "100.64.0.1", "100.64.0.10", 6, 443));
    assert!(allows(&p, "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::10", 6, 80));
    assert!(!allows(&p, "100.64.0.1", "100.64.0.10", 6, 22));
    assert!(
        allows(&p, "100.64.0.1", "100.64.0.10", 1, 0),
        "ICMP to a host with an open port"
    );
    assert!(
        !allows(&p, "100.64.0.2", "100.64.0.10", 6, 443),
        "bob is not in group:dev"
    );
    assert!(allows(&p, "100.64.0.2", "192.168.1.5", 17, 53));
    assert!(!allows(&p, "100.64.0.2", "192.168.1.5", 6, 53));
    assert!(allows(
        &p,
        "fd7a:115c:a1e0::10",
        "fd7a:115c:a1e0::20",
        6,
        5432
    ));
    assert!(!allows(&p, "100.64.0.10", "100.64.0.20", 6, 5432));
    // Tagged devices are not their owner's.
    assert!(!allows(&p, "100.64.0.10", "192.168.1.5", 17, 53));
}

#[test]
fn grants_split_by_protocol() {
    let p = load(&format!(
        r#"{BASE}
  "grants": [
    {{"src": ["autogroup:member"], "dst": ["tag:web"], "ip": ["tcp:443", "udp:53", "icmp:*"]}},
    {{"src": ["tag:web"], "dst": ["tag:db"], "ip": ["5432"]}},
    {{"src": ["*"], "dst": ["nas"], "ip": ["*"]}},
  ],
}}"#
    ));
    assert!(allows(&p, "100.64.0.2", "100.64.0.10", 6, 443));
    assert!(!allows(&p, "100.64.0.2", "100.64.0.10", 6, 53));
    assert!(allows(&p, "100.64.0.2", "100.64.0.10", 17, 53));
    assert!(allows(&p, "100.64.0.2", "100.64.0.10", 1, 0));
    assert!(
        !allows(&p, "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::10", 58, 0),
        "icmp is ICMPv4"
    );
    assert!(
        !allows(&p, "100.64.0.10", "100.64.0.10", 6, 443),
        "tagged devices are not members"
    );
    assert!(allows(&p, "100.64.0.10", "100.64.0.20", 17, 5432));
    assert!(allows(&p, "8.8.8.8", "192.168.1.5", 6, 1));
}

#[test]
fn autogroup_self_is_per_user() {
    let p = load(&format!(
        r#"{BASE}
  "acls": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}}],
}}"#
    ));
    assert!(allows(&p, "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::1", 6, 22));
    assert!(!allows(&p, "100.64.0.1", "100.64.0.2", 6, 22));
    let e = errors(&format!(
        r#"{BASE}
  "acls": [{{"action": "accept", "src": ["tag:web"], "dst": ["autogroup:self:*"]}}],
}}"#
    ));
    assert!(
        e[0].contains("autogroup:self can only be used with users"),
        "{e:?}"
    );
}

#[test]
fn internet_is_what_the_inventory_does_not_hold() {
    let p = load(&format!(
        r#"{BASE}
  "acls": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet:443"]}}],
}}"#
    ));
    assert!(allows(&p, "100.64.0.1", "1.1.1.1", 6, 443));
    assert!(!allows(&p, "100.64.0.1", "100.64.0.10", 6, 443));
    assert!(
        !allows(&p, "100.64.0.1", "100.100.1.1", 6, 443),
        "Tailscale's range is not the internet"
    );
}

#[test]
fn ipsets_add_and_remove() {
    let p = load(&format!(
        r#"{BASE}
  "ipsets": {{
    "ipset:lan": ["10.0.0.0/16", "remove 10.0.5.0/24", "add 10.0.5.7", "nas"],
    "ipset:all": ["ipset:lan", "10.9.0.1-10.9.0.3"],
  }},
  "acls": [{{"action": "accept", "src": ["alice@example.com"], "dst": ["ipset:all:22"]}}],
}}"#
    ));
    for (dst, ok) in [
        ("10.0.1.1", true),
        ("10.0.5.1", false),
        ("10.0.5.7", true),
        ("192.168.1.5", true),
        ("10.9.0.3", true),
        ("10.9.0.4", false),
    ] {
        assert_eq!(allows(&p, "100.64.0.1", dst, 6, 22), ok, "{dst}");
    }
}

#[test]
fn refusals_name_the_rule_and_the_fix() {
    let e = errors(&format!(
        r#"{BASE} "acls": [{{"action": "deny", "src": ["*"], "dst": ["*:*"]}}]}}"#
    ));
    assert!(e[0].contains("action=\"deny\" is not supported"), "{e:?}");
    // An undefined tag: Tailscale refuses the file; segment loads it (real
    // files in git carry such leftovers), says so, and the tag matches nothing.
    let p = load(&format!(
        r#"{BASE} "acls": [{{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}}]}}"#
    ));
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("tag not found: \"tag:nope\"")
                && w.message.contains("Tailscale refuses")),
        "{:?}",
        p.warnings
    );
    assert!(
        p.rules
            .iter()
            .all(|r| r.src.iter().all(|s| p.selector_prefixes(s).is_empty()))
    );
    let e = errors(&format!(
        r#"{BASE} "acls": [{{"action": "accept", "src": ["*"], "dst": ["tag:web:ssh"]}}]}}"#
    ));
    assert!(e[0].contains("invalid first integer"), "{e:?}");
    let e = errors(&format!(
        r#"{BASE} "grants": [{{"src": ["*"], "dst": ["0.0.0.0/0"], "ip": ["*"]}}]}}"#
    ));
    assert!(
        e[0].contains("use \"*\" or \"autogroup:internet\""),
        "{e:?}"
    );
    let e = errors(&format!(
        r#"{BASE} "grants": [{{"src": ["*"], "dst": ["*"]}}]}}"#
    ));
    assert!(e[0].contains("ip and app can not both be empty"), "{e:?}");
    let e = errors(&format!(
        r#"{BASE} "grants": [{{"src": ["*"], "dst": ["*"], "ip": ["icmp"]}}]}}"#
    ));
    assert!(e[0].contains("invalid first integer"), "{e:?}");
    let e = errors(&format!(
        r#"{BASE} "acls": [{{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}}]}}"#
    ));
    assert!(e[0].contains("not valid on the src side"), "{e:?}");
    let e = errors(&format!(
        r#"{BASE} "acls": [{{"action": "accept", "src": ["nsa"], "dst": ["*:*"]}}]}}"#
    ));
    assert!(e[0].contains("is not a user, group, tag, host"), "{e:?}");
    // Positions are those of the offending string.
    let text = format!(
        "{BASE} \"acls\": [\n  {{\"action\": \"accept\", \"src\": [\"group:dev\"], \"dst\": [\"tag:web:ssh\"]}}]}}"
    );
    let err = parse("p.hujson", &text, &inv()).unwrap_err();
    let d = err.errors().next().unwrap();
    let pos = d.pos.unwrap();
    assert_eq!(pos.line, 7);
    assert_eq!(pos.column, 55);
    assert!(err.to_string().contains("p.hujson:7:55"), "{err}");
}

#[test]
fn what_is_not_enforced_is_listed_and_never_widens() {
    let p = load(&format!(
        r#"{BASE}
  "grants": [
    {{"src": ["group:dev"], "dst": ["nas"], "ip": ["tcp:445"], "via": ["tag:web"]}},
    {{"src": ["*"], "dst": ["tag:db"], "ip": ["*"], "srcPosture": ["posture:x"]}},
    {{"src": ["*"], "dst": ["tag:db"], "app": {{"example.com/cap/x": [{{}}]}}}},
    {{"src": ["autogroup:shared"], "dst": ["tag:db"], "ip": ["*"]}},
  ],
  "ssh": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}}],
  "nodeAttrs": [], "postures": {{}}, "derpMap": {{}}, "disableIPv4": false, "randomizeClientPort": true,
  "autoApprovers": {{"routes": {{}}}},
}}"#
    ));
    // Posture, app and autogroup:shared grants admit nothing...
    assert!(!allows(&p, "100.64.0.1", "100.64.0.20", 6, 22));
    assert!(!allows(&p, "8.8.8.8", "100.64.0.20", 6, 22));
    // ...and `via` is enforced as a plain grant, exactly (no wider).
    assert!(allows(&p, "100.64.0.1", "192.168.1.5", 6, 445));
    assert!(!allows(&p, "100.64.0.1", "192.168.1.5", 6, 446));
    assert!(!allows(&p, "100.64.0.2", "192.168.1.5", 6, 445));
    let all = p.not_enforced.join("\n");
    for word in [
        "via",
        "srcPosture",
        "app",
        "autogroup:shared",
        "\"ssh\"",
        "nodeAttrs",
        "postures",
        "derpMap",
        "disableIPv4",
        "randomizeClientPort",
        "autoApprovers",
    ] {
        assert!(all.contains(word), "{word} missing from {all}");
    }
}

#[test]
fn tests_are_decided_for_principals_without_devices() {
    let text = format!(
        r#"{BASE}
  "tagOwners": {{"tag:web": [], "tag:db": [], "tag:empty": []}},
  "groups": {{"group:dev": ["alice@example.com", "carol@example.com"]}},
  "acls": [
    {{"action": "accept", "src": ["group:dev"], "dst": ["tag:empty:22"]}},
    {{"action": "accept", "src": ["tag:empty"], "dst": ["nas:80"]}},
  ],
  "tests": [
    {{"src": "carol@example.com", "accept": ["tag:empty:22"], "deny": ["tag:empty:23", "nas:80"]}},
    {{"src": "tag:empty", "accept": ["nas:80"], "deny": ["tag:web:80"]}},
    {{"src": "group:dev", "accept": ["tag:empty:22"]}},
  ],
}}"#
    );
    let inv = Inventory::default();
    let p = parse("p.hujson", &text, &inv).unwrap();
    let bed = p.test_bed.as_deref().expect("tests run on a test bed");
    assert_eq!(bed.tests.len(), 3);
    let compiled = crate::compile::compile(bed).unwrap();
    let out = crate::verify::run(bed, &compiled);
    assert_eq!(out.len(), 6);
    for o in &out {
        assert!(o.holds, "{o:?}");
        assert!(o.cases > 0, "not vacuous: {o:?}");
    }
    // The enforced policy has no hypothetical devices.
    assert!(
        p.segments
            .iter()
            .all(|s| s.prefixes.is_empty() || s.name == "nas"),
        "{:?}",
        p.segments
    );
    // A failing assertion fails.
    let bad = text.replace("\"deny\": [\"tag:empty:23\"", "\"deny\": [\"tag:empty:22\"");
    let p = parse("p.hujson", &bad, &inv).unwrap();
    let bed = p.test_bed.as_deref().unwrap();
    let out = crate::verify::run(bed, &crate::compile::compile(bed).unwrap());
    assert!(out.iter().any(|o| !o.holds));
}

#[test]
fn malformed_tests_are_refused() {
    for (t, want) in [
        (r#"{"accept": ["nas:80"]}"#, "no \"src\""),
        (r#"{"src": "", "accept": ["nas:80"]}"#, "empty src"),
        (r#"{"src": "alice@example.com"}"#, "neither"),
        (
            r#"{"src": "alice@example.com", "accept": ["nas:*"]}"#,
            "not one port",
        ),
        (
            r#"{"src": "alice@example.com", "accept": ["nas:99999"]}"#,
            "not one port",
        ),
        (
            r#"{"src": "alice@example.com", "accept": ["10.0.0.0/8:22"]}"#,
            "single IP",
        ),
        (
            r#"{"src": "tag:phantom", "accept": ["nas:80"]}"#,
            "tag not found",
        ),
        (
            r#"{"src": "ghost@nowhere.invalid", "accept": ["nas:80"]}"#,
            "not in the inventory",
        ),
        (
            r#"{"src": "alice@example.com", "accept": ["autogroup:self:22"]}"#,
            "cannot be a test dst",
        ),
    ] {
        let e = errors(&format!(r#"{BASE} "tests": [{t}]}}"#));
        assert!(e.iter().any(|m| m.contains(want)), "{t}: {e:?}");
    }
}

#[test]
fn formats_are_detected() {
    assert_eq!(detect("a.hujson", ""), Format::Tailscale);
    assert_eq!(detect("a.JSON", ""), Format::Tailscale);
    assert_eq!(detect("a.yaml", "{}"), Format::Yaml);
    assert_eq!(detect("policy", "// c\n/* d */ {"), Format::Tailscale);
    assert_eq!(detect("policy", "# c\nacls: []"), Format::Yaml);
    assert_eq!(detect("-", "{\"acls\": []}"), Format::Tailscale);
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            proptest::sample::select(
                &[
                    "\"*\"",
                    "\"*:*\"",
                    "\"tag:web\"",
                    "\"tag:web:80\"",
                    "\"group:dev\"",
                    "\"alice@example.com\"",
                    "\"autogroup:self:22\"",
                    "\"autogroup:internet\"",
                    "\"autogroup:bogus\"",
                    "\"nas\"",
                    "\"nas:0\"",
                    "\"[fd7a::1]:22\"",
                    "\"[fd7a::1\"",
                    "\"10.0.0.0/33\"",
                    "\"10.0.0.5/24:*\"",
                    "\"1.2.3.4-1.2.3.1\"",
                    "\"ipset:x\"",
                    "\"remove 10.0.0.0/8\"",
                    "\"tcp:443\"",
                    "\"icmp\"",
                    "\"300:*\"",
                    "\"tcp:99999\"",
                    "\"svc:x:5\"",
                    "\"user:*@x\"",
                    "\"\"",
                    "1",
                    "-1",
                    "true",
                    "null",
                    "\"accept\"",
                    "\"deny\"",
                ][..]
            )
            .prop_map(str::to_owned),
            "[a-z:@*0-9./\\[\\]-]{0,12}".prop_map(|s| format!("{s:?}")),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            let keys = proptest::sample::select(
                &[
                    "acls",
                    "grants",
                    "groups",
                    "hosts",
                    "tagOwners",
                    "ipsets",
                    "tests",
                    "src",
                    "dst",
                    "ip",
                    "proto",
                    "action",
                    "users",
                    "ports",
                    "via",
                    "app",
                    "srcPosture",
                    "accept",
                    "deny",
                    "group:dev",
                    "tag:web",
                    "nas",
                    "ipset:x",
                    "ssh",
                    "x",
                ][..],
            );
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((keys, inner), 0..4).prop_map(|kv| {
                    format!(
                        "{{{}}}",
                        kv.iter()
                            .map(|(k, v)| format!("\"{k}\": {v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the shape, the reader and validator answer with a
        /// policy or errors, never a panic.
        #[test]
        fn random_policies(v in value()) {
            let text = format!("{{\"acls\": [{v}], \"grants\": [{v}], \"tests\": [{v}], \"ipsets\": {{\"ipset:x\": {v}}}, \"x\": {v}}}");
            let _ = parse("p.hujson", &text, &inv());
            let _ = parse("p.hujson", &v, &Inventory::default());
        }
    }
}

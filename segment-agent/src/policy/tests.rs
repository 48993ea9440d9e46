//! Bad input: every error names the place and says how to fix it; nothing
//! panics, whatever the bytes.

use proptest::prelude::*;

use super::*;

/// The first error, as (line, column, message, help).
fn first_error(yaml: &str) -> (u32, u32, String, String) {
    let e = parse("p.yaml", yaml).expect_err("policy should be rejected");
    let d = e.errors().next().expect("at least one error").clone();
    let pos = d.pos.expect("errors carry a position");
    (pos.line, pos.column, d.message, d.help.unwrap_or_default())
}

fn errors(yaml: &str) -> Vec<String> {
    parse("p.yaml", yaml)
        .expect_err("policy should be rejected")
        .errors()
        .map(|d| d.message.clone())
        .collect()
}

#[test]
fn unknown_keys_suggest_the_right_one() {
    let (l, c, m, h) = first_error("acls:\n  - action: accept\n    srcs: [a]\n    dst: [b:1]\n");
    assert_eq!((l, c), (3, 5));
    assert_eq!(m, "unknown key `srcs`");
    assert!(h.starts_with("did you mean `src`?"), "{h}");
    let (l, _, m, h) = first_error("tag:\n  a: [10.0.0.1]\n");
    assert_eq!(l, 1);
    assert_eq!(m, "unknown key `tag`");
    assert!(h.contains("did you mean `tags`?"), "{h}");
}

#[test]
fn undefined_names_suggest_defined_ones() {
    let base =
        "users:\n  alice: [10.0.0.1]\ntags:\n  db-server: [10.0.1.1]\ngroups:\n  admins: [alice]\n";
    let (l, c, m, h) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [alice]\n    dst: [tag:db-servr:5432]\n"
    ));
    assert_eq!((l, c), (10, 11));
    assert_eq!(m, "undefined tag `db-servr`");
    assert_eq!(h, "did you mean `tag:db-server`?");
    let (_, _, m, h) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [group:admin]\n    dst: [tag:db-server:22]\n"
    ));
    assert_eq!(m, "undefined group `admin`");
    assert_eq!(h, "did you mean `group:admins`?");
    let (_, _, m, h) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [alcie]\n    dst: [tag:db-server:22]\n"
    ));
    assert_eq!(m, "`alcie` is not a defined user or host");
    assert_eq!(h, "did you mean `alice`?");
    let (_, _, _, h) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [admins]\n    dst: [tag:db-server:22]\n"
    ));
    assert_eq!(h, "`admins` is a group: write `group:admins`");
}

#[test]
fn cycles_are_errors() {
    let (l, _, m, _) = first_error("groups:\n  a: [group:b]\n  b: [group:a]\n");
    assert_eq!(l, 3);
    assert_eq!(m, "cycle: group:a → group:b → group:a");
    let (_, _, m, _) = first_error("tags:\n  a: [tag:a]\n");
    assert_eq!(m, "cycle: tag:a → tag:a");
}

#[test]
fn bad_addresses_ports_and_protocols() {
    let (l, c, m, h) = first_error("hosts:\n  db: 10.0.0.5/24\n");
    assert_eq!((l, c), (2, 7));
    assert_eq!(m, "`10.0.0.5/24` has host bits set");
    assert!(h.contains("10.0.0.0/24"), "{h}");
    let (_, _, m, _) = first_error("users:\n  a: [10.0.0.256]\n");
    assert_eq!(m, "`10.0.0.256` is not an IP address or CIDR");
    let (l, c, m, h) = first_error(
        "tags:\n  a: [10.0.0.1]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:a:443-80]\n",
    );
    assert_eq!((l, c), (6, 17));
    assert_eq!(m, "port range `443-80` is reversed");
    assert_eq!(h, "write `80-443`");
    let (_, c, m, _) = first_error(
        "tags:\n  a: [10.0.0.1]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [\"tag:a:99999\"]\n",
    );
    assert_eq!(c, 18, "inside quotes, the column skips the quote");
    assert_eq!(m, "port `99999` is out of range");
    let (_, _, m, h) = first_error(
        "tags:\n  a: [10.0.0.1]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:a:22]\n    proto: tpc\n",
    );
    assert_eq!(m, "unknown protocol `tpc`");
    assert_eq!(h, "did you mean `tcp`?");
}

#[test]
fn duplicate_names_are_errors() {
    let (l, _, m, _) = first_error("users:\n  a: [10.0.0.1]\n  a: [10.0.0.2]\n");
    assert_eq!(l, 3);
    assert_eq!(m, "`a` is defined twice");
    let (_, _, m, h) = first_error("users:\n  a: [10.0.0.1]\nhosts:\n  a: 10.0.0.2\n");
    assert_eq!(m, "`a` is both a user (line 2) and a host");
    assert!(h.contains("rename"), "{h}");
}

#[test]
fn yaml_syntax_errors_have_places() {
    let (l, c, m, _) = first_error("acls:\n  - action: accept\n    src: [a\n");
    assert_eq!((l, c), (3, 10));
    assert!(m.contains("unclosed bracket"), "{m}");
    let (_, _, m, h) = first_error("acls: 5\n");
    assert_eq!(m, "expected a list here");
    assert!(h.contains("- item"), "{h}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = errors(
        "tags:\n  a: [10.0.0.1]\nacls:\n  - action: allow\n    src: [tag:b]\n    dst: [tag:a:70000]\n    proto: xyz\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn membership_kinds_are_checked() {
    let base = "users:\n  alice: [10.0.0.1]\nhosts:\n  db: 10.0.0.2\n";
    let (_, _, m, _) = first_error(&format!("{base}tags:\n  t: [alice]\n"));
    assert_eq!(m, "`alice` is a user; tags hold machines");
    let (_, _, m, _) = first_error(&format!("{base}groups:\n  g: [db]\n"));
    assert_eq!(m, "`db` is a host; groups hold users");
    let (_, _, m, _) = first_error(&format!("{base}groups:\n  g: [10.0.0.9]\n"));
    assert!(m.starts_with("groups hold users, not addresses"), "{m}");
}

#[test]
fn rules_need_accept_and_ports() {
    let base = "tags:\n  a: [10.0.0.1]\n";
    let (_, _, m, h) = first_error(&format!(
        "{base}acls:\n  - src: [tag:a]\n    dst: [tag:a:22]\n"
    ));
    assert_eq!(m, "this acl has no `action`");
    assert_eq!(h, "add `action: accept`");
    let (_, _, m, h) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:a]\n"
    ));
    assert_eq!(m, "destination `tag:a` has no ports");
    assert!(h.contains("tag:a:*"), "{h}");
    let (_, _, m, _) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [tag:a:22]\n    dst: [tag:a:22]\n"
    ));
    assert_eq!(m, "`tag:a:22`: ports belong on destinations, not sources");
    let (_, _, m, _) = first_error(&format!(
        "{base}acls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:a:22]\n    proto: icmp\n"
    ));
    assert_eq!(m, "`tag:a:22`: icmp has no ports");
}

#[test]
fn ipv6_destinations() {
    let p = parse(
        "p.yaml",
        "tags:\n  a: [\"fd00::/64\"]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [\"[fd00::1]:22\", \"fd00:1::/64:80\"]\n",
    )
    .unwrap();
    assert_eq!(p.rules[0].dst.len(), 2);
    let (_, _, m, h) = first_error(
        "tags:\n  a: [\"fd00::/64\"]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [\"fd00::1:22\"]\n",
    );
    assert!(m.contains("ambiguous"), "{m}");
    assert!(h.contains("[fd00::1]:22"), "{h}");
}

#[test]
fn an_empty_or_comments_only_policy_is_an_error() {
    for text in ["", "\n", "# nothing yet\n", "---\n# c\n"] {
        let e = parse("p.yaml", text).unwrap_err();
        assert!(e.to_string().contains("the policy file is empty"), "{e}");
        assert!(e.to_string().contains("acls: []"), "{e}");
    }
    let p = parse("p.yaml", "acls: []\n").unwrap();
    assert!(p.rules.is_empty());
    assert!(p.warnings.iter().any(|w| w.message.contains("no acls")));
}

#[test]
fn the_built_in_example_is_valid() {
    let p = example().unwrap();
    assert!(!p.rules.is_empty());
    assert!(!p.tests.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic; they parse or give located errors.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse("fuzz.yaml", &text);
    }

    /// Policy-shaped text with random tokens never panics either.
    #[test]
    fn policy_shaped_text_never_panics(
        tokens in proptest::collection::vec(
            proptest::sample::select(vec![
                "tags:", "groups:", "users:", "hosts:", "acls:", "tests:", "failsafe:", "\n", "  ", "- ",
                "a:", "b:", "[", "]", ",", "tag:a", "group:b", "10.0.0.1", "10.0.0.0/8", "fd00::/8",
                "*", ":22", ":80,443", ":1-2", "src:", "dst:", "proto:", "action: accept", "accept:",
                "deny:", "tcp", "\"", "'", "#", "{", "}", "mode: audit", "modes:", "enforce:", "99999",
            ]),
            0..60,
        ),
    ) {
        let text: String = tokens.concat();
        let _ = parse("fuzz.yaml", &text);
    }
}

#[test]
fn large_policies_are_not_refused_by_the_yaml_reader() {
    // 40,000 rules are about 360,000 YAML nodes, over serde-saphyr's
    // default budget of 250,000.
    let mut y = String::from("acls:\n");
    for i in 0..40_000u32 {
        y.push_str(&format!(
            "  - action: accept\n    src: [{}]\n    dst: [\"{}:{}\"]\n    proto: tcp\n",
            std::net::Ipv4Addr::from(0x0a00_0000 + i),
            std::net::Ipv4Addr::from(0xac10_0000 + i),
            1000 + i % 1000
        ));
    }
    let p = parse("big.yaml", &y).unwrap_or_else(|e| panic!("{}", e.summary()));
    assert_eq!(p.rules.len(), 40_000);
}

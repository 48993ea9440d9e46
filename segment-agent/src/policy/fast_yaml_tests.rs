//! The fast reader against serde-saphyr, the reference: on random policies
//! (and random damage to them) it either declines or builds exactly what
//! the reference builds, every position included; and it does not decline
//! the policies people write.

use proptest::prelude::*;

use super::{fast_yaml, read_yaml_full};

/// xorshift64*: the policy text is drawn from one proptest seed.
struct Rng(u64, bool);

impl Rng {
    /// Whether this policy is drawn from ordinary values only (no damage).
    fn clean(&self) -> bool {
        self.1
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len())]
    }
}

/// Scalars, among them the ones YAML types as something else than a
/// string, and ones that are not valid plain scalars at all.
const SCALARS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/8",
    "192.168.1.0/24",
    "fd00::1",
    "fd00:10::/64",
    "[fd00::1]:22",
    "tag:web",
    "tag:db:5432",
    "group:admins",
    "alice",
    "web-1",
    "db.primary",
    "*",
    "*:22",
    "*:*",
    "host:8000-8100",
    "80",
    "443",
    "0",
    "007",
    "1.5",
    "1e3",
    "-1",
    "+5",
    "0x10",
    "1_000",
    "yes",
    "no",
    "true",
    "False",
    "null",
    "~",
    "on",
    "y",
    "inf",
    ".nan",
    "é-name",
    "naïve:80",
    "a b",
    "a#b",
    "a #c",
    "x: y",
    "a,b",
    "tcp",
    "udp",
    "icmp",
    "accept",
    "enforce",
    "audit",
    "",
    "it's",
    "say \"hi\"",
    "back\\slash",
    "&anchor",
    "!tag",
    "|",
    "- x",
    "? q",
];

/// Scalars that are strings or canonical integers however they are written.
const ORDINARY: &[&str] = &[
    "10.0.0.1",
    "10.0.0.0/8",
    "fd00::1",
    "fd00:10::/64",
    "tag:web",
    "tag:db:5432",
    "group:admins",
    "alice",
    "web-1",
    "80",
    "0",
    "tcp",
    "udp",
    "accept",
    "audit",
    "é-name",
    "naïve:80",
    "a b",
    "a#b",
];

fn scalar(r: &mut Rng) -> String {
    if r.clean() {
        if r.chance(10) {
            return format!(
                "\"{}\"",
                r.pick(&["*", "*:22", "[fd00::1]:22", "yes", "1.5"])
            );
        }
        let s = r.pick(ORDINARY);
        return match r.below(4) {
            0 => format!("\"{s}\""),
            1 => format!("'{s}'"),
            _ => s.to_owned(),
        };
    }
    let s = r.pick(SCALARS);
    match r.below(6) {
        0 => format!("\"{s}\""),
        1 => format!("'{s}'"),
        _ => s.to_owned(),
    }
}

fn space(r: &mut Rng) -> &'static str {
    ["", " ", "  "][r.below(3)]
}

fn comment(r: &mut Rng) -> &'static str {
    if r.chance(10) {
        let n = if r.clean() { 3 } else { 4 };
        [" # note", "  #", " #: x", "# glued"][r.below(n)]
    } else {
        ""
    }
}

/// A value that is a list (flow or block) or a single scalar, written
/// after `key:` at indentation `indent`.
fn list(r: &mut Rng, indent: usize, out: &mut String) {
    let n = r.below(4);
    match r.below(4) {
        0 => {
            out.push(' ');
            out.push_str(&scalar(r));
            out.push_str(comment(r));
            out.push('\n');
        }
        1 => {
            out.push_str(comment(r));
            out.push('\n');
            let at = if r.chance(30) { indent } else { indent + 2 };
            for _ in 0..n.max(1) {
                out.push_str(&" ".repeat(at));
                out.push('-');
                out.push_str(if r.chance(90) { " " } else { "   " });
                out.push_str(&scalar(r));
                out.push_str(comment(r));
                out.push('\n');
            }
        }
        _ => {
            out.push_str(" [");
            out.push_str(space(r));
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                    if r.chance(10) {
                        out.push('\n');
                        out.push_str(&" ".repeat(indent + r.below(4)));
                    } else {
                        out.push_str(space(r));
                    }
                }
                out.push_str(&scalar(r));
                out.push_str(space(r));
            }
            out.push(']');
            out.push_str(comment(r));
            out.push('\n');
        }
    }
}

const RULE_KEYS: &[&str] = &["action", "src", "dst", "proto", "name", "srcs"];

fn rule(r: &mut Rng, indent: usize, out: &mut String) {
    let mut keys: Vec<&str> = RULE_KEYS
        .iter()
        .copied()
        .filter(|k| match *k {
            "src" | "dst" => r.chance(95),
            "srcs" => !r.clean() && r.chance(3),
            _ => r.chance(60),
        })
        .collect();
    if !r.clean() && r.chance(3) && !keys.is_empty() {
        keys.push(keys[0]);
    }
    out.push_str(&" ".repeat(indent));
    if r.chance(15) {
        // A flow mapping.
        out.push_str("- {");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(k);
            out.push_str(": ");
            if *k == "action" || *k == "name" || r.chance(30) {
                out.push_str(&scalar(r));
            } else {
                out.push('[');
                for j in 0..r.below(3) {
                    if j > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&scalar(r));
                }
                out.push(']');
            }
        }
        out.push_str("}\n");
        return;
    }
    out.push('-');
    let gap = if r.chance(85) { 1 } else { 3 };
    out.push_str(&" ".repeat(gap));
    if keys.is_empty() {
        out.push_str("{}\n");
        return;
    }
    let inner = indent + 1 + gap;
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push_str(&" ".repeat(inner));
        }
        out.push_str(k);
        out.push(':');
        if *k == "action" || *k == "name" {
            out.push(' ');
            out.push_str(&scalar(r));
            out.push_str(comment(r));
            out.push('\n');
        } else {
            list(r, inner, out);
        }
    }
}

fn entries(r: &mut Rng, names: &[&str], single: bool, out: &mut String) {
    for _ in 0..r.below(4) {
        out.push_str("  ");
        let name = r.pick(names);
        if r.chance(15) {
            out.push_str(&format!("\"{name}\""));
        } else {
            out.push_str(name);
        }
        out.push(':');
        if single {
            out.push(' ');
            out.push_str(&scalar(r));
            out.push('\n');
        } else {
            list(r, 2, out);
        }
    }
}

fn policy(seed: u64) -> String {
    let mut r = Rng(seed | 1, false);
    r.1 = r.chance(50);
    let mut out = String::new();
    if r.chance(20) {
        out.push_str("# a policy\n\n");
    }
    let sections = [
        "hosts",
        "users",
        "groups",
        "tags",
        "tagOwners",
        "acls",
        "failsafe",
        "tests",
        "enforce",
        "mode",
        "modes",
        "extra",
    ];
    for s in sections {
        let extra = if r.clean() { 0 } else { 3 };
        if !r.chance(if s == "acls" {
            90
        } else if s == "extra" {
            extra
        } else {
            35
        }) {
            continue;
        }
        out.push_str(s);
        out.push(':');
        match s {
            "hosts" | "modes" => {
                out.push('\n');
                entries(
                    &mut r,
                    &["db", "web-1", "80", "tag:x", "yes"],
                    true,
                    &mut out,
                );
            }
            "users" | "groups" | "tags" | "tagOwners" => {
                out.push('\n');
                entries(
                    &mut r,
                    &["alice", "bob", "admins", "web", "tag:web", "é"],
                    false,
                    &mut out,
                );
            }
            "acls" | "failsafe" => {
                let n = r.below(5);
                if n == 0 {
                    out.push_str(" []\n");
                } else {
                    out.push('\n');
                    let indent = if r.chance(25) { 0 } else { 2 };
                    for _ in 0..n {
                        rule(&mut r, indent, &mut out);
                        if r.chance(10) {
                            out.push_str("\n  # between rules\n");
                        }
                    }
                }
            }
            "tests" => {
                out.push('\n');
                for _ in 0..r.below(3) {
                    out.push_str("  - src: ");
                    out.push_str(&scalar(&mut r));
                    out.push('\n');
                    out.push_str(if r.chance(50) {
                        "    accept:"
                    } else {
                        "    deny:"
                    });
                    list(&mut r, 4, &mut out);
                }
            }
            "enforce" => {
                if r.chance(30) {
                    out.push_str(" {ingress: true, egress: false}\n");
                } else {
                    out.push('\n');
                    out.push_str("  ingress: ");
                    let values: &[&str] = if r.clean() {
                        &["true", "false"]
                    } else {
                        &["true", "false", "yes", "\"true\"", "1"]
                    };
                    out.push_str(r.pick(values));
                    out.push('\n');
                }
            }
            _ => {
                out.push(' ');
                out.push_str(&scalar(&mut r));
                out.push('\n');
            }
        }
    }
    // Damage: a character removed, doubled or put in.
    for _ in 0..r.below(3) {
        if r.clean() || out.is_empty() || !r.chance(40) {
            continue;
        }
        let mut at = r.below(out.len());
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        match r.below(3) {
            0 => {
                out.remove(at);
            }
            1 => {
                let c = out[at..].chars().next().unwrap_or(' ');
                out.insert(at, c);
            }
            _ => {
                let c = [
                    ':', '-', '[', ']', '{', '}', '#', '"', '\'', ' ', '\n', '\t', ',', '&',
                ][r.below(14)];
                out.insert(at, c);
            }
        }
    }
    out
}

/// Same result as the reference, or a decline.
fn agrees(text: &str) -> Result<bool, String> {
    match (fast_yaml::read(text), read_yaml_full(text)) {
        (None, _) => Ok(false),
        (Some(fast), Ok(full)) if fast == full => Ok(true),
        (Some(fast), Ok(full)) => {
            let (a, b) = (format!("{fast:#?}"), format!("{full:#?}"));
            let first = a
                .lines()
                .zip(b.lines())
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let around = |s: &str| {
                s.lines()
                    .skip(first.saturating_sub(12))
                    .take(16)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Err(format!(
                "the readers differ on\n{text}\nfast: …{}\nfull: …{}",
                around(&a),
                around(&b)
            ))
        }
        (Some(fast), Err(e)) => Err(format!(
            "the fast reader accepts what the reference refuses ({e}):\n{text}\nfast: {fast:#?}"
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn fast_reader_agrees_with_the_reference(seed in any::<u64>()) {
        let text = policy(seed);
        if let Err(e) = agrees(&text) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn the_random_policies_are_mostly_read_fast() {
    // Otherwise the property above would hold by declining everything.
    let fast = (0..2000u64)
        .filter(|s| agrees(&policy(s.wrapping_mul(0x9e37_79b9_7f4a_7c15))).unwrap_or(false))
        .count();
    assert!(fast > 200, "only {fast} of 2000 random policies read fast");
}

#[test]
fn shipped_policies_are_read_fast_and_agree() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            assert_eq!(agrees(&text), Ok(true), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 5, "found {seen} policies");
}

#[test]
fn a_large_generated_policy_is_read_fast_and_agrees() {
    let mut y = String::from("mode: enforce\nacls:\n");
    for i in 0..500u32 {
        y.push_str(&format!(
            "  - action: accept\n    src: [10.100.{}.{}]\n    dst: [\"[fd00::{i:x}]:{}\"]\n    proto: [tcp, udp]\n",
            i / 256,
            i % 256,
            1000 + i
        ));
    }
    assert_eq!(agrees(&y), Ok(true));
}

#[test]
fn deep_nesting_is_declined_not_overflowed() {
    let y = format!("acls: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    assert!(fast_yaml::read(&y).is_none());
}

//! Synthetic policies of a given size, and the same policy as an nftables
//! ruleset and as iptables rules, for side-by-side measurements.
//!
//! Rule i allows host A_i to reach host B_i on one TCP/UDP port: every rule
//! is distinct and needs its own entry, so the policy's size is real. One
//! rule in ten is IPv6. The benchmark's traffic comes from addresses no
//! rule names, so every variant has to look at all of its state to drop it.

use std::{
    fmt::Write,
    net::{Ipv4Addr, Ipv6Addr},
};

pub struct Synth {
    pub yaml: String,
    pub v4: Vec<(Ipv4Addr, Ipv4Addr, u16)>,
    pub v6: Vec<(Ipv6Addr, Ipv6Addr, u16)>,
}

pub fn src4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a64_0000 + i as u32)
}

pub fn dst4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 + i as u32)
}

pub fn port(i: usize, variant: usize) -> u16 {
    1000 + ((i + variant) % 50_000) as u16
}

/// `n` rules. `variant` 1 changes one rule's port (for reload measurements).
pub fn policy(n: usize, variant: usize) -> Synth {
    let mut y = String::with_capacity(n * 100);
    y.push_str("mode: enforce\nacls:\n");
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in 0..n {
        let p = if i == 0 { port(i, variant) } else { port(i, 0) };
        if i % 10 == 9 {
            let s = Ipv6Addr::from((0xfd00_0100u128 << 96) + i as u128);
            let d = Ipv6Addr::from((0xfd00_0200u128 << 96) + i as u128);
            let _ = writeln!(
                y,
                "  - action: accept\n    src: [\"{s}\"]\n    dst: [\"[{d}]:{p}\"]\n    proto: [tcp, udp]"
            );
            v6.push((s, d, p));
        } else {
            let _ = writeln!(
                y,
                "  - action: accept\n    src: [{}]\n    dst: [\"{}:{p}\"]\n    proto: [tcp, udp]",
                src4(i),
                dst4(i)
            );
            v4.push((src4(i), dst4(i), p));
        }
    }
    if n == 0 {
        y.push_str("  []\n");
    }
    Synth { yaml: y, v4, v6 }
}

/// 10,000 rules over 100,000 addresses: 1,000 tags of 100 hosts, each rule
/// from one tag to another on one port (the foundation issue's size).
pub fn tags_policy(rules: usize, addresses: usize) -> String {
    let per_tag = 100;
    let tags = addresses / per_tag;
    let mut y = String::with_capacity(addresses * 20 + rules * 80);
    y.push_str("tags:\n");
    for t in 0..tags {
        let _ = write!(y, "  t{t}: [");
        for h in 0..per_tag {
            if h > 0 {
                y.push_str(", ");
            }
            let _ = write!(
                y,
                "{}",
                Ipv4Addr::from(0x0a00_0000 + (t * per_tag + h) as u32)
            );
        }
        y.push_str("]\n");
    }
    y.push_str("acls:\n");
    for r in 0..rules {
        let _ = writeln!(
            y,
            "  - action: accept\n    src: [tag:t{}]\n    dst: [tag:t{}:{}]\n    proto: tcp",
            r % tags,
            (r * 7 + 1) % tags,
            1000 + r % 5000
        );
    }
    y
}

/// The policy as nftables would be written for it by someone who knows
/// nftables: the netdev ingress hook of the interface (the earliest point,
/// like XDP), one concatenated set lookup for all rules, a counter on the
/// drop.
pub fn nft_sets(s: &Synth, iface: &str) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "table netdev segbench {{");
    let _ = writeln!(
        y,
        "  set allow4 {{ type ipv4_addr . ipv4_addr . inet_service; flags constant;"
    );
    set_elements(&mut y, &s.v4);
    let _ = writeln!(
        y,
        "  set allow6 {{ type ipv6_addr . ipv6_addr . inet_service; flags constant;"
    );
    set_elements(&mut y, &s.v6);
    let _ = writeln!(
        y,
        "  chain ingress {{ type filter hook ingress device \"{iface}\" priority 0; policy accept;"
    );
    y.push_str("    meta protocol vmap { arp : accept, ip : jump v4, ip6 : jump v6 }\n  }\n");
    y.push_str(
        "  chain v4 {\n    ip saddr . ip daddr . th dport @allow4 accept\n    counter drop\n  }\n",
    );
    y.push_str("  chain v6 {\n    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n    ip6 saddr . ip6 daddr . th dport @allow6 accept\n    counter drop\n  }\n}\n");
    y
}

/// The `elements = { a . b . port, ... }` line of a set (none when empty),
/// and the set's closing brace.
fn set_elements<A: std::fmt::Display>(y: &mut String, rules: &[(A, A, u16)]) {
    if !rules.is_empty() {
        y.push_str("    elements = { ");
        for (i, (a, b, p)) in rules.iter().enumerate() {
            if i > 0 {
                y.push_str(", ");
            }
            let _ = write!(y, "{a} . {b} . {p}");
        }
        y.push_str(" }\n");
    }
    y.push_str("  }\n");
}

/// The policy as one nftables rule per policy rule (how rulesets grow when
/// written by hand).
pub fn nft_linear(s: &Synth, iface: &str) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "table netdev segbench {{");
    let _ = writeln!(
        y,
        "  chain ingress {{ type filter hook ingress device \"{iface}\" priority 0; policy accept;"
    );
    y.push_str("    meta protocol arp accept\n");
    for (a, b, p) in &s.v4 {
        let _ = writeln!(
            y,
            "    ip saddr {a} ip daddr {b} meta l4proto {{ tcp, udp }} th dport {p} accept"
        );
    }
    y.push_str("    counter drop\n  }\n}\n");
    y
}

/// ipset members for iptables with a set match.
pub fn ipset_restore(s: &Synth) -> String {
    let mut y = String::from("create segbench hash:ip,port,ip family inet maxelem 1000000\n");
    for (a, b, p) in &s.v4 {
        let _ = writeln!(y, "add segbench {a},udp:{p},{b}");
    }
    y
}

/// iptables (raw table, before conntrack) with the ipset, then a counted drop.
pub fn iptables_set() -> String {
    "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m set --match-set segbench src,dst,dst -j ACCEPT\n-A PREROUTING -j DROP\nCOMMIT\n".to_owned()
}

/// One iptables rule per policy rule, then a counted drop.
pub fn iptables_linear(s: &Synth) -> String {
    let mut y = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n");
    for (a, b, p) in &s.v4 {
        let _ = writeln!(
            y,
            "-A PREROUTING -s {a} -d {b} -p udp --dport {p} -j ACCEPT"
        );
    }
    y.push_str("-A PREROUTING -j DROP\nCOMMIT\n");
    y
}

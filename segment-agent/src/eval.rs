//! The reference evaluator: a direct reading of the policy, rule by rule,
//! with no compilation. The compiled tables (and the kernel datapath loaded
//! from them) are tested against it.

use std::net::IpAddr;

use crate::policy::{Policy, Rule, has_ports};

/// Index of the first rule that accepts the packet, or `None` (denied).
pub fn first_match(
    policy: &Policy,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
) -> Option<usize> {
    policy
        .rules
        .iter()
        .position(|r| rule_accepts(policy, r, src, dst, proto, dport))
}

/// Whether one rule accepts the packet. Protocols without ports (ICMP and
/// others) match a destination whatever ports it lists, as in Tailscale:
/// if any port of a host is open to you, you may ping it.
pub fn rule_accepts(
    policy: &Policy,
    rule: &Rule,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
) -> bool {
    rule.protos.contains(&proto)
        && rule.src.iter().any(|s| policy.selector_contains(s, src))
        && rule.dst.iter().any(|d| {
            policy.selector_contains(&d.selector, dst)
                && (!has_ports(proto) || d.ports.contains(dport))
        })
}

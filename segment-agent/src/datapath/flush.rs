//! After a policy change: which tracked connections may live on.
//!
//! A flow stays if the new policy would still have let it open — by a rule,
//! because its hook is not enforced, or because its destination is in audit
//! mode — and is removed otherwise, so that a connection the new policy
//! forbids does not keep flowing on the strength of the old one. Connections
//! allowed by both versions are untouched. The decision is pure; only
//! [`flush`] touches the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData};
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_INITIATOR_A, CT_F_UNENFORCED, CtKey, CtValue, IDENTITY_F_AUDIT,
    IPPROTO_ICMP, IPPROTO_ICMPV6, SlotConfig, map_names,
};

use super::{paths::Paths, tables::open_map};
use crate::compile::Compiled;

fn addr(family: u8, words: &[u32; 4]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// The flow as its initiator opened it: (source, destination, protocol,
/// destination port).
pub fn opened_as(key: &CtKey, value: &CtValue) -> (IpAddr, IpAddr, u8, u16) {
    let a = addr(key.family, &key.addr_a);
    let b = addr(key.family, &key.addr_b);
    let (src, dst, dport) = if value.flags & CT_F_INITIATOR_A != 0 {
        (a, b, key.port_b)
    } else {
        (b, a, key.port_a)
    };
    let dport = if matches!(key.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        0
    } else {
        dport
    };
    (src, dst, key.proto, dport)
}

fn admitted_by_rule(c: &Compiled, key: &CtKey, value: &CtValue) -> bool {
    let (src, dst, proto, dport) = opened_as(key, value);
    let s = c.identity_of(src);
    let d = c.identity_of(dst);
    c.rule_for(s.src_class, d.dst_class, proto, dport).is_some()
}

/// Whether a tracked flow would be admitted by the new policy.
pub fn still_allowed(c: &Compiled, config: &SlotConfig, key: &CtKey, value: &CtValue) -> bool {
    let egress = value.flags & CT_F_EGRESS != 0;
    let enforced = if egress {
        config.enforce_egress != 0
    } else {
        config.enforce_ingress != 0
    };
    if !enforced {
        return true;
    }
    if admitted_by_rule(c, key, value) {
        return true;
    }
    let (_, dst, _, _) = opened_as(key, value);
    c.identity_of(dst).flags & IDENTITY_F_AUDIT != 0
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FlushStats {
    pub scanned: usize,
    pub removed: usize,
    /// Audited flows that a rule now allows.
    pub promoted: usize,
}

/// Removes the tracked flows the new policy does not admit.
pub fn flush(paths: &Paths, c: &Compiled, config: &SlotConfig) -> Result<FlushStats> {
    let mut ct: BpfHashMap<MapData, CtKey, CtValue> = open_map(paths, map_names::CONNTRACK)?;
    let mut stale = Vec::new();
    let mut now_allowed = Vec::new();
    let mut stats = FlushStats::default();
    for kv in ct.iter() {
        // An entry can vanish (LRU eviction) while we walk: skip it.
        let Ok((k, v)) = kv else { continue };
        stats.scanned += 1;
        if !still_allowed(c, config, &k, &v) {
            stale.push(k);
        } else if v.flags & CT_F_AUDIT != 0 && admitted_by_rule(c, &k, &v) {
            now_allowed.push((k, v));
        }
    }
    for k in stale {
        if ct.remove(&k).is_ok() {
            stats.removed += 1;
        }
    }
    // Flows audit mode let through that a rule now allows stop counting as
    // would-drop.
    const BPF_EXIST: u64 = 2;
    for (k, mut v) in now_allowed {
        v.flags &= !CT_F_AUDIT;
        if ct.insert(k, v, BPF_EXIST).is_ok() {
            stats.promoted += 1;
        }
    }
    Ok(stats)
}

/// Flags that say how a flow was admitted, for logs.
pub fn describe(flags: u32) -> &'static str {
    if flags & CT_F_UNENFORCED != 0 {
        "unenforced hook"
    } else if flags & CT_F_AUDIT != 0 {
        "audit"
    } else {
        "rule"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, policy};

    fn key_value(
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        proto: u8,
        flags: u32,
    ) -> (CtKey, CtValue) {
        let words = |a: IpAddr| -> [u32; 4] {
            match a {
                IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
                IpAddr::V6(v) => {
                    let o = v.octets();
                    std::array::from_fn(|i| {
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                    })
                }
            }
        };
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let family = if s.is_ipv4() { 4 } else { 6 };
        let (sa, da) = ((words(s), sport), (words(d), dport));
        let (a, b, init_a) = if sa <= da {
            (sa, da, true)
        } else {
            (da, sa, false)
        };
        let key = CtKey {
            addr_a: a.0,
            addr_b: b.0,
            port_a: a.1,
            port_b: b.1,
            proto,
            family,
            _pad: [0; 2],
        };
        let value = CtValue {
            flags: flags | if init_a { CT_F_INITIATOR_A } else { 0 },
            ..CtValue::default()
        };
        (key, value)
    }

    fn cfg(egress: bool) -> SlotConfig {
        SlotConfig {
            enforce_ingress: 1,
            enforce_egress: u32::from(egress),
            ..SlotConfig::default()
        }
    }

    #[test]
    fn flows_follow_the_new_policy() {
        let p = policy::parse(
            "p.yaml",
            "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.0/24, \"fd00::/64\"]\nacls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432]\n    proto: tcp\n",
        )
        .unwrap();
        let c = compile(&p).unwrap();
        // web → db:5432, whichever endpoint sorts first.
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 5432, 6, 0);
        assert!(still_allowed(&c, &cfg(false), &k, &v));
        let (k, v) = key_value("10.0.1.9", 40000, "10.0.0.5", 5432, 6, 0);
        assert!(
            !still_allowed(&c, &cfg(false), &k, &v),
            "db → web is not allowed"
        );
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 22, 6, 0);
        assert!(!still_allowed(&c, &cfg(false), &k, &v));
        // Outgoing flows tracked while egress was not enforced stay while it
        // still is not, and follow the policy once it is.
        let (k, v) = key_value(
            "10.0.1.9",
            40000,
            "192.0.2.1",
            443,
            6,
            CT_F_EGRESS | CT_F_UNENFORCED,
        );
        assert!(still_allowed(&c, &cfg(false), &k, &v));
        assert!(!still_allowed(&c, &cfg(true), &k, &v));
        // ICMP echo: the port fields hold identifiers, not ports.
        let (k, v) = key_value("10.0.0.5", 77, "10.0.1.9", 0, IPPROTO_ICMP, 0);
        assert_eq!(opened_as(&k, &v).3, 0);
    }

    #[test]
    fn audit_destinations_keep_their_flows() {
        let p = policy::parse(
            "p.yaml",
            "mode: audit\ntags:\n  db: [10.0.1.0/24]\nacls: []\n",
        )
        .unwrap();
        let c = compile(&p).unwrap();
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 22, 6, CT_F_AUDIT);
        assert!(still_allowed(&c, &cfg(false), &k, &v));
    }
}

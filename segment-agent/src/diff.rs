//! Semantic diff of two policies, from their compiled tables (not their
//! text): which (source, destination, protocol, port range) become newly
//! allowed and which newly denied.
//!
//! The address space is cut into regions where both policies are constant
//! (every prefix of either policy is a boundary); addresses that both
//! policies treat alike as sources (same source class in each) form one
//! source group, likewise destinations. Ports are cut at every boundary of
//! either policy's port classes. Comparing the two verdicts for one
//! representative of each (source group, destination group, protocol, port
//! interval) is therefore exact for every packet.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    compile::{Compiled, Prefix, PrefixTable},
    policy::{Policy, has_ports, protocol_name},
};

/// A group of addresses both policies treat alike as a source (or as a
/// destination).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub ipv6: bool,
    /// Class in the old and the new policy.
    #[serde(skip)]
    pub classes: (u32, u32),
    /// The segments of these addresses (new policy; old in parentheses when
    /// they differ), or "unassigned addresses".
    pub description: String,
    /// One address of the group.
    pub example: IpAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `allowed` (newly allowed) or `denied` (newly denied).
    pub now: &'static str,
    pub src: Group,
    pub dst: Group,
    pub proto: u8,
    pub proto_name: String,
    /// Inclusive port range; `None` for protocols without ports.
    pub ports: Option<(u16, u16)>,
}

impl Change {
    pub fn line(&self) -> String {
        let ports = match self.ports {
            Some((lo, hi)) if lo == hi => format!(" port {lo}"),
            Some((0, u16::MAX)) => " any port".to_owned(),
            Some((lo, hi)) => format!(" ports {lo}-{hi}"),
            None => String::new(),
        };
        format!(
            "{} {} → {}  {}{}",
            if self.now == "allowed" {
                "+ allow"
            } else {
                "- deny "
            },
            self.src.description,
            self.dst.description,
            self.proto_name,
            ports
        )
    }

    /// Whether this change covers a packet.
    pub fn covers(
        &self,
        old: &Compiled,
        new: &Compiled,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: u16,
    ) -> bool {
        let (os, ns) = (old.identity_of(src), new.identity_of(src));
        let (od, nd) = (old.identity_of(dst), new.identity_of(dst));
        self.proto == proto
            && self.src.ipv6 == src.is_ipv6()
            && self.dst.ipv6 == dst.is_ipv6()
            && self.src.classes == (os.src_class, ns.src_class)
            && self.dst.classes == (od.dst_class, nd.dst_class)
            && self.ports.is_none_or(|(lo, hi)| lo <= port && port <= hi)
    }
}

fn describe(old: (&Policy, &Compiled), new: (&Policy, &Compiled), a: IpAddr) -> String {
    let names = |(p, c): (&Policy, &Compiled)| -> Vec<String> {
        let id = c.identity_of(a);
        c.identities
            .get(&id.id)
            .map(|i| {
                i.segments
                    .iter()
                    .map(|s| p.segment(*s).reference())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (o, n) = (names(old), names(new));
    let fmt = |v: &[String]| {
        if v.is_empty() {
            "unassigned addresses".to_owned()
        } else {
            v.join("+")
        }
    };
    let family = if a.is_ipv6() { " (IPv6)" } else { "" };
    if o == n {
        format!("{}{family}", fmt(&n))
    } else {
        format!("{} (was {}){family}", fmt(&n), fmt(&o))
    }
}

/// Source and destination groups, with one example address each.
fn groups(old: &Compiled, new: &Compiled, dst: bool) -> BTreeMap<(bool, u32, u32), IpAddr> {
    let prefixes: Vec<(Prefix, ())> = old
        .prefixes
        .entries()
        .iter()
        .chain(new.prefixes.entries())
        .map(|(p, _)| (*p, ()))
        .collect();
    let table = PrefixTable::new(prefixes);
    let mut out = BTreeMap::new();
    for root in ["0.0.0.0/0", "::/0"] {
        let root = Prefix::from_net(&root.parse().expect("valid literal"));
        for region in table.regions_within(&root) {
            let a = region.sample;
            let (o, n) = (old.identity_of(a), new.identity_of(a));
            let key = if dst {
                (a.is_ipv6(), o.dst_class, n.dst_class)
            } else {
                (a.is_ipv6(), o.src_class, n.src_class)
            };
            out.entry(key).or_insert(a);
        }
    }
    out
}

/// Port interval starts where either policy's classes change.
fn port_cuts(old: &Compiled, new: &Compiled, proto: u8) -> Vec<(u16, u16)> {
    let Some(block) = segment_common::port_proto_block(proto) else {
        return Vec::new();
    };
    let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
    for c in [old, new] {
        for &(lo, hi, _) in &c.ports[block as usize].intervals {
            cuts.insert(u32::from(lo));
            cuts.insert(u32::from(hi) + 1);
        }
    }
    cuts.insert(65_536);
    let cuts: Vec<u32> = cuts.into_iter().filter(|c| *c <= 65_536).collect();
    cuts.windows(2)
        .map(|w| (w[0] as u16, (w[1] - 1) as u16))
        .collect()
}

pub fn diff(old: (&Policy, &Compiled), new: (&Policy, &Compiled)) -> Vec<Change> {
    let (oc, nc) = (old.1, new.1);
    let srcs = groups(oc, nc, false);
    let dsts = groups(oc, nc, true);
    let protos: BTreeSet<u8> = old
        .0
        .rules
        .iter()
        .chain(new.0.rules.iter())
        .flat_map(|r| r.protos.iter().copied())
        .collect();
    let mut out = Vec::new();
    for (&(s6, so, sn), &sa) in &srcs {
        for (&(d6, d_old, d_new), &da) in &dsts {
            if s6 != d6 {
                continue;
            }
            for &proto in &protos {
                let intervals: Vec<Option<(u16, u16)>> = if has_ports(proto) {
                    port_cuts(oc, nc, proto).into_iter().map(Some).collect()
                } else {
                    vec![None]
                };
                let mut pending: Option<Change> = None;
                for iv in intervals {
                    let port = iv.map(|(lo, _)| lo).unwrap_or(0);
                    let was = oc.rule_for(so, d_old, proto, port).is_some();
                    let is = nc.rule_for(sn, d_new, proto, port).is_some();
                    if was == is {
                        if let Some(c) = pending.take() {
                            out.push(c);
                        }
                        continue;
                    }
                    let now = if is { "allowed" } else { "denied" };
                    // Extend the previous interval when contiguous and alike.
                    if let Some(c) = pending.as_mut()
                        && c.now == now
                        && let (Some((_, hi)), Some((lo, new_hi))) = (c.ports, iv)
                        && u32::from(hi) + 1 == u32::from(lo)
                    {
                        c.ports = Some((c.ports.map(|p| p.0).unwrap_or(lo), new_hi));
                        continue;
                    }
                    if let Some(c) = pending.take() {
                        out.push(c);
                    }
                    pending = Some(Change {
                        now,
                        src: Group {
                            ipv6: s6,
                            classes: (so, sn),
                            description: describe(old, new, sa),
                            example: sa,
                        },
                        dst: Group {
                            ipv6: d6,
                            classes: (d_old, d_new),
                            description: describe(old, new, da),
                            example: da,
                        },
                        proto,
                        proto_name: protocol_name(proto),
                        ports: iv,
                    });
                }
                if let Some(c) = pending.take() {
                    out.push(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile::compile, policy};

    fn both(a: &str, b: &str) -> (Policy, Compiled, Policy, Compiled) {
        let pa = policy::parse("old.yaml", a).unwrap();
        let pb = policy::parse("new.yaml", b).unwrap();
        let (ca, cb) = (compile(&pa).unwrap(), compile(&pb).unwrap());
        (pa, ca, pb, cb)
    }

    #[test]
    fn a_widened_port_range_is_one_newly_allowed_range() {
        let defs = "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.0/24]\n";
        let (pa, ca, pb, cb) = both(
            &format!(
                "{defs}acls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432]\n    proto: tcp\n"
            ),
            &format!(
                "{defs}acls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432-5440]\n    proto: tcp\n  - action: accept\n    src: [tag:db]\n    dst: [tag:web:22]\n    proto: tcp\n"
            ),
        );
        let changes = diff((&pa, &ca), (&pb, &cb));
        let lines: Vec<String> = changes.iter().map(Change::line).collect();
        assert_eq!(
            lines,
            [
                "+ allow tag:db → tag:web  tcp port 22",
                "+ allow tag:web → tag:db  tcp ports 5433-5440"
            ],
            "{lines:#?}"
        );
    }

    #[test]
    fn removed_rules_and_moved_addresses_are_newly_denied() {
        let (pa, ca, pb, cb) = both(
            "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.1, 10.0.1.2]\nacls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:*]\n",
            "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.1]\nacls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:*]\n",
        );
        let changes = diff((&pa, &ca), (&pb, &cb));
        assert!(!changes.is_empty());
        assert!(changes.iter().all(|c| c.now == "denied"), "{changes:#?}");
        assert!(
            changes
                .iter()
                .all(|c| c.dst.description == "unassigned addresses (was tag:db)"),
            "{changes:#?}"
        );
        assert!(
            changes
                .iter()
                .any(|c| c.proto == 6 && c.ports == Some((0, u16::MAX)))
        );
        assert!(changes.iter().any(|c| c.proto == 1 && c.ports.is_none()));
        assert!(
            diff((&pa, &ca), (&pa, &ca)).is_empty(),
            "no change between a policy and itself"
        );
    }
}

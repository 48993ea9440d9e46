//! Policy → the tables the datapath loads as they are.
//!
//! 1. **Identities.** Every segment and every literal address used in a rule is
//!    an *atom*. Each distinct prefix gets the atoms of itself and of every
//!    prefix containing it (see [`prefixes`]), so the LPM trie answers the
//!    full set of atoms of any address. From that set come three numbers:
//!    the counter identity (its segments; stable across reloads), the
//!    source class (its atoms named by some `src`) and the destination class
//!    (its atoms named by some `dst`). Addresses that rules do not tell apart
//!    share a class, which keeps the rule table small: a group of 1,000 users
//!    that only appears as a whole is one class, not 1,000.
//! 2. **Port classes.** Per protocol with ports (TCP, UDP, SCTP), ports covered
//!    by the same destination port sets form a class; a 65,536-entry array
//!    maps port → class. Ranges cost nothing extra: `1024-65535` is one class.
//! 3. **Rule entries** keyed by (source class, destination class, port class,
//!    protocol), valued with the first (lowest) matching rule index. Rules
//!    with `*` ports, and protocols without ports, use `PORT_CLASS_ANY`.

pub mod prefixes;

use std::collections::BTreeMap;

use foldhash::{HashMap as FastMap, HashMapExt};

use ipnet::IpNet;
use segment_common::{
    IDENTITY_F_AUDIT, IDENTITY_F_NO_RULE_FROM, IDENTITY_F_NO_RULE_TO, IDENTITY_WORLD, Identity,
    MAX_PREFIXES, MAX_RULE_ENTRIES, MAX_RULES, PORT_CLASS_ANY, PORT_PROTOS, RULE_F_FAILSAFE,
    RuleKey, RuleValue, port_proto_block,
};
use serde::Serialize;
use thiserror::Error;

use crate::policy::{Mode, Policy, PortSet, SegmentId, Selector, has_ports};
pub use prefixes::{Prefix, PrefixTable, Region};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "the policy needs {needed} {table}, more than the datapath holds ({capacity}); split the policy, or use wider selectors (tags, groups) so that fewer entries are needed"
    )]
    TooLarge {
        table: &'static str,
        needed: u64,
        capacity: u64,
    },
    #[error(
        "{proto} rules use {count} distinct port ranges; at most {max} port classes fit: merge adjacent ports into ranges"
    )]
    TooManyPortClasses {
        proto: &'static str,
        count: usize,
        max: usize,
    },
}

/// What the datapath needs to know about one counter identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdentityInfo {
    pub id: u32,
    /// Segments of the identity, sorted by id.
    pub segments: Vec<SegmentId>,
}

/// Hands out counter identity numbers. Identities are keyed by their set of
/// segment references (`tag:web`, `alice`), so a running agent keeps the
/// same number for the same set across reloads and counters stay meaningful.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct IdentityAllocator {
    /// Segment references → identity (a list of pairs in JSON, whose map
    /// keys must be strings).
    #[serde(with = "pairs")]
    pub ids: BTreeMap<Vec<String>, u32>,
    pub next: u32,
}

mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Pair {
        segments: Vec<String>,
        id: u32,
    }

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<Vec<String>, u32>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<Pair> = m
            .iter()
            .map(|(k, v)| Pair {
                segments: k.clone(),
                id: *v,
            })
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<String>, u32>, D::Error> {
        let v: Vec<Pair> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|p| (p.segments, p.id)).collect())
    }
}

impl IdentityAllocator {
    pub fn id_for(&mut self, refs: Vec<String>) -> u32 {
        if refs.is_empty() {
            return IDENTITY_WORLD;
        }
        if let Some(id) = self.ids.get(&refs) {
            return *id;
        }
        self.next = self.next.max(1);
        let id = self.next;
        self.next += 1;
        self.ids.insert(refs, id);
        id
    }
}

/// Port class intervals of one protocol block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortClassTable {
    /// Disjoint, sorted `(lo, hi, class)`; ports outside are class 0.
    pub intervals: Vec<(u16, u16, u16)>,
    pub classes: usize,
}

impl PortClassTable {
    pub fn class_of(&self, port: u16) -> u16 {
        let i = self.intervals.partition_point(|(_, hi, _)| *hi < port);
        match self.intervals.get(i) {
            Some((lo, hi, c)) if *lo <= port && port <= *hi => *c,
            _ => 0,
        }
    }
}

/// Sizes, for `check` and capacity errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Sizes {
    pub segments: usize,
    pub rules: usize,
    pub identities: usize,
    pub src_classes: usize,
    pub dst_classes: usize,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub port_classes: [usize; 3],
    pub rule_entries: usize,
}

/// The compiled policy: exactly what goes into the maps of one slot.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// LPM entries (both families), each with its identity value.
    pub prefixes: PrefixTable<Identity>,
    /// Value used for addresses outside every prefix.
    pub world: Identity,
    /// Counter identities in use, by id.
    pub identities: BTreeMap<u32, IdentityInfo>,
    /// Per block of `PORT_PROTOS`.
    pub ports: [PortClassTable; 3],
    pub rules: BTreeMap<RuleKey, RuleValue>,
    pub sizes: Sizes,
}

impl Compiled {
    pub fn identity_of(&self, addr: std::net::IpAddr) -> Identity {
        self.prefixes.lookup(addr).copied().unwrap_or(self.world)
    }

    pub fn port_class(&self, proto: u8, port: u16) -> u16 {
        match port_proto_block(proto) {
            Some(b) => self.ports[b as usize].class_of(port),
            None => 0,
        }
    }

    /// The rule entry for a packet between two classes, with the datapath's
    /// own lookup order (specific port class, then any port).
    pub fn rule_for(
        &self,
        src_class: u32,
        dst_class: u32,
        proto: u8,
        dport: u16,
    ) -> Option<RuleValue> {
        let mut key = RuleKey {
            src_class,
            dst_class,
            port_class: PORT_CLASS_ANY,
            proto,
            _pad: 0,
        };
        let class = self.port_class(proto, dport);
        if class != 0 {
            key.port_class = class;
            if let Some(v) = self.rules.get(&key) {
                return Some(*v);
            }
            key.port_class = PORT_CLASS_ANY;
        }
        self.rules.get(&key).copied()
    }

    /// Verdict for one packet: the first matching rule's index, if any.
    pub fn verdict(
        &self,
        src: std::net::IpAddr,
        dst: std::net::IpAddr,
        proto: u8,
        dport: u16,
    ) -> Option<RuleValue> {
        let s = self.identity_of(src);
        let d = self.identity_of(dst);
        self.rule_for(s.src_class, d.dst_class, proto, dport)
    }

    /// Identity values of every region inside the selector's addresses, with
    /// a sample address each.
    pub fn regions(&self, policy: &Policy, sel: &Selector) -> Vec<(Identity, std::net::IpAddr)> {
        let mut out = Vec::new();
        for net in policy.selector_prefixes(sel) {
            for r in self.prefixes.regions_within(&Prefix::from_net(&net)) {
                out.push((r.value.copied().unwrap_or(self.world), r.sample));
            }
        }
        out
    }

    /// One port per port class of `proto` that meets `ports` (0 for
    /// protocols without ports): enough to decide every port in the set.
    pub fn representative_ports(&self, proto: u8, ports: &PortSet) -> Vec<u16> {
        let Some(block) = port_proto_block(proto) else {
            return vec![0];
        };
        let table = &self.ports[block as usize];
        let ranges: Vec<(u16, u16)> = match ports {
            PortSet::Any => vec![(0, u16::MAX)],
            PortSet::Ranges(r) => r.iter().map(|r| (r.lo, r.hi)).collect(),
        };
        let mut reps = BTreeMap::new();
        for (lo, hi) in ranges {
            // Ports of class 0 (in no interval) inside [lo, hi].
            let mut cursor = Some(lo);
            for &(ilo, ihi, class) in &table.intervals {
                if ihi < lo || ilo > hi {
                    continue;
                }
                if let Some(c) = cursor
                    && c < ilo
                {
                    reps.entry(0).or_insert(c);
                }
                reps.entry(class).or_insert(ilo.max(lo));
                cursor = ihi.checked_add(1);
            }
            if let Some(c) = cursor
                && c <= hi
            {
                reps.entry(0).or_insert(c);
            }
        }
        reps.into_values().collect()
    }
}

/// Compiles with fresh identity numbers (for `check`, `test`, `explain`).
pub fn compile(policy: &Policy) -> Result<Compiled, CompileError> {
    compile_with(policy, &mut IdentityAllocator::default())
}

/// An atom: a segment, or a literal address used in some rule.
type Atom = u32;

/// How much the datapath's maps hold. A policy that needs more is refused
/// by the compiler, before anything reaches the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rules: usize,
    pub rule_entries: usize,
    pub prefixes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rules: MAX_RULES as usize,
            rule_entries: MAX_RULE_ENTRIES as usize,
            prefixes: MAX_PREFIXES as usize,
        }
    }
}

pub fn compile_with(
    policy: &Policy,
    ids: &mut IdentityAllocator,
) -> Result<Compiled, CompileError> {
    compile_with_limits(policy, ids, &Limits::default())
}

pub fn compile_with_limits(
    policy: &Policy,
    ids: &mut IdentityAllocator,
    limits: &Limits,
) -> Result<Compiled, CompileError> {
    if policy.rules.len() > limits.rules {
        return Err(CompileError::TooLarge {
            table: "rules",
            needed: policy.rules.len() as u64,
            capacity: limits.rules as u64,
        });
    }
    let n_seg = policy.segments.len() as u32;
    // Literal addresses used in rules become atoms after the segments.
    // Atoms are dense, so sets of them are vectors of flags.
    let mut nets: FastMap<IpNet, Atom> = FastMap::new();
    let mut src_used: Vec<bool> = vec![false; n_seg as usize];
    let mut dst_used: Vec<bool> = vec![false; n_seg as usize];
    let atom_of = |sel: &Selector, nets: &mut FastMap<IpNet, Atom>| -> Option<Atom> {
        match sel {
            Selector::Any => None,
            Selector::Segment(id) => Some(*id),
            Selector::Net(n) => {
                let next = n_seg + nets.len() as u32;
                Some(*nets.entry(*n).or_insert(next))
            }
        }
    };
    let mark = |used: &mut Vec<bool>, a: Atom| {
        let a = a as usize;
        if used.len() <= a {
            used.resize(a + 1, false);
        }
        used[a] = true;
    };
    for rule in &policy.rules {
        for s in &rule.src {
            if let Some(a) = atom_of(s, &mut nets) {
                mark(&mut src_used, a);
            }
        }
        for d in &rule.dst {
            if let Some(a) = atom_of(&d.selector, &mut nets) {
                mark(&mut dst_used, a);
            }
        }
    }
    let n_atoms = n_seg as usize + nets.len();
    src_used.resize(n_atoms, false);
    dst_used.resize(n_atoms, false);

    // Every prefix with its own atoms: sorted (prefix, atom) pairs, walked
    // in runs of one prefix.
    let mut own: Vec<(Prefix, Atom)> = Vec::with_capacity(nets.len());
    for (id, seg) in policy.segments.iter().enumerate() {
        for p in &seg.prefixes {
            own.push((Prefix::from_net(p), id as Atom));
        }
    }
    for (net, atom) in &nets {
        own.push((Prefix::from_net(net), *atom));
    }
    own.sort_unstable();
    own.dedup();
    let distinct = own.chunk_by(|a, b| a.0 == b.0).count();
    if distinct > limits.prefixes {
        return Err(CompileError::TooLarge {
            table: "address prefixes",
            needed: distinct as u64,
            capacity: limits.prefixes as u64,
        });
    }

    // Effective mode of a set of segments: an explicit `enforce` wins, then
    // an explicit `audit`, then the policy default.
    let audit_flags = |segs: &[Atom]| -> u32 {
        let modes: Vec<Mode> = segs
            .iter()
            .filter_map(|s| policy.segments[*s as usize].mode)
            .collect();
        let mode = if modes.contains(&Mode::Enforce) {
            Mode::Enforce
        } else if modes.contains(&Mode::Audit) {
            Mode::Audit
        } else {
            policy.mode
        };
        if mode == Mode::Audit {
            IDENTITY_F_AUDIT
        } else {
            0
        }
    };

    let mut src_classes: FastMap<Vec<Atom>, u32> = FastMap::new();
    src_classes.insert(Vec::new(), 0);
    let mut dst_classes: FastMap<Vec<Atom>, u32> = FastMap::new();
    dst_classes.insert(Vec::new(), 0);
    let mut identities: BTreeMap<u32, IdentityInfo> = BTreeMap::new();
    let world = Identity {
        id: IDENTITY_WORLD,
        src_class: 0,
        dst_class: 0,
        flags: audit_flags(&[]),
    };
    identities.insert(
        IDENTITY_WORLD,
        IdentityInfo {
            id: IDENTITY_WORLD,
            segments: Vec::new(),
        },
    );

    // Walk prefixes in order; a stack of enclosing prefixes gives each one
    // the atoms of all prefixes containing it.
    let mut stack: Vec<(Prefix, Vec<Atom>, Identity)> = Vec::new();
    let mut entries: Vec<(Prefix, Identity)> = Vec::with_capacity(distinct);
    for run in own.chunk_by(|a, b| a.0 == b.0) {
        let prefix = run[0].0;
        let atoms = run.iter().map(|(_, a)| *a);
        while let Some((top, _, _)) = stack.last() {
            if top.contains(&prefix) {
                break;
            }
            stack.pop();
        }
        let (parent_atoms, parent_value) = match stack.last() {
            Some((_, a, v)) => (a.as_slice(), *v),
            None => (&[][..], world),
        };
        let mut closure: Vec<Atom> = parent_atoms.iter().copied().chain(atoms).collect();
        closure.sort_unstable();
        closure.dedup();
        // Atoms are sorted, segments first.
        let segs = &closure[..closure.partition_point(|a| *a < n_seg)];
        let id = if segs.is_empty() {
            IDENTITY_WORLD
        } else {
            let refs: Vec<String> = segs
                .iter()
                .map(|s| policy.segments[*s as usize].reference())
                .collect();
            ids.id_for(refs)
        };
        identities.entry(id).or_insert_with(|| IdentityInfo {
            id,
            segments: segs.to_vec(),
        });
        let src_key: Vec<Atom> = closure
            .iter()
            .copied()
            .filter(|a| src_used[*a as usize])
            .collect();
        let dst_key: Vec<Atom> = closure
            .iter()
            .copied()
            .filter(|a| dst_used[*a as usize])
            .collect();
        let n = src_classes.len() as u32;
        let src_class = *src_classes.entry(src_key).or_insert(n);
        let n = dst_classes.len() as u32;
        let dst_class = *dst_classes.entry(dst_key).or_insert(n);
        let value = Identity {
            id,
            src_class,
            dst_class,
            flags: audit_flags(segs),
        };
        // A prefix that answers the same as its parent adds nothing.
        if value != parent_value {
            entries.push((prefix, value));
        }
        stack.push((prefix, closure, value));
    }

    // Which classes contain each atom (for expanding rule selectors).
    let by_atom = |classes: &FastMap<Vec<Atom>, u32>| -> Vec<Vec<u32>> {
        let mut by: Vec<Vec<u32>> = vec![Vec::new(); n_atoms];
        for (atoms, class) in classes {
            for a in atoms {
                by[*a as usize].push(*class);
            }
        }
        by
    };
    let src_by_atom = by_atom(&src_classes);
    let dst_by_atom = by_atom(&dst_classes);
    let all_src: Vec<u32> = (0..src_classes.len() as u32).collect();
    let all_dst: Vec<u32> = (0..dst_classes.len() as u32).collect();
    let expand = |sels: &mut dyn Iterator<Item = &Selector>,
                  by_atom: &[Vec<u32>],
                  all: &[u32],
                  nets: &FastMap<IpNet, Atom>|
     -> Vec<u32> {
        let mut out = Vec::new();
        for sel in sels {
            let atom = match sel {
                Selector::Any => return all.to_vec(),
                Selector::Segment(id) => *id,
                Selector::Net(n) => nets[n],
            };
            out.extend_from_slice(&by_atom[atom as usize]);
        }
        out.sort_unstable();
        out.dedup();
        out
    };

    // Port classes: ports covered by the same destination port sets.
    let PortClasses {
        tables: ports,
        sets: port_sets,
        dest_base,
    } = port_classes(policy)?;

    // Rule entries.
    let mut rules: BTreeMap<RuleKey, RuleValue> = BTreeMap::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let srcs = expand(&mut rule.src.iter(), &src_by_atom, &all_src, &nets);
        let flags = if rule.is_failsafe() {
            RULE_F_FAILSAFE
        } else {
            0
        };
        let value = RuleValue {
            rule: index as u32,
            flags,
        };
        for (d_index, dest) in rule.dst.iter().enumerate() {
            let dsts = expand(
                &mut std::iter::once(&dest.selector),
                &dst_by_atom,
                &all_dst,
                &nets,
            );
            for &proto in &rule.protos {
                let port_classes: &[u16] = match (&dest.ports, port_proto_block(proto)) {
                    (PortSet::Ranges(_), Some(block)) if has_ports(proto) => {
                        &port_sets[block as usize][dest_base[index] + d_index]
                    }
                    _ => &[PORT_CLASS_ANY],
                };
                for &sc in &srcs {
                    for &dc in &dsts {
                        for &pc in port_classes {
                            let key = RuleKey {
                                src_class: sc,
                                dst_class: dc,
                                port_class: pc,
                                proto,
                                _pad: 0,
                            };
                            rules
                                .entry(key)
                                .and_modify(|v| {
                                    if value.rule < v.rule {
                                        *v = value;
                                    }
                                })
                                .or_insert(value);
                        }
                    }
                    if rules.len() > limits.rule_entries {
                        return Err(CompileError::TooLarge {
                            table: "rule entries",
                            needed: rules.len() as u64,
                            capacity: limits.rule_entries as u64,
                        });
                    }
                }
            }
        }
    }
    // A specific-port entry must report the first rule of either lookup.
    let any_entries: Vec<(RuleKey, RuleValue)> = rules
        .iter()
        .filter(|(k, _)| k.port_class == PORT_CLASS_ANY)
        .map(|(k, v)| (*k, *v))
        .collect();
    for (any_key, any_value) in any_entries {
        let lo = RuleKey {
            port_class: 0,
            ..any_key
        };
        for (_, v) in rules
            .range_mut(lo..any_key)
            .filter(|(k, _)| k.proto == any_key.proto)
        {
            if any_value.rule < v.rule {
                *v = any_value;
            }
        }
    }

    // Classes that no rule entry has: an identity of one is judged without
    // the port class and rule lookups (a flood from addresses no rule
    // names costs the datapath two identity lookups and no more).
    let mut from_any = vec![false; src_classes.len()];
    let mut to_any = vec![false; dst_classes.len()];
    for k in rules.keys() {
        from_any[k.src_class as usize] = true;
        to_any[k.dst_class as usize] = true;
    }
    let no_rule = |v: &mut Identity| {
        if !from_any[v.src_class as usize] {
            v.flags |= IDENTITY_F_NO_RULE_FROM;
        }
        if !to_any[v.dst_class as usize] {
            v.flags |= IDENTITY_F_NO_RULE_TO;
        }
    };
    let mut world = world;
    no_rule(&mut world);
    for (_, v) in &mut entries {
        no_rule(v);
    }

    let sizes = Sizes {
        segments: policy.segments.len(),
        rules: policy.rules.len(),
        identities: identities.len(),
        src_classes: src_classes.len(),
        dst_classes: dst_classes.len(),
        prefixes_v4: entries.iter().filter(|(p, _)| p.bits == 32).count(),
        prefixes_v6: entries.iter().filter(|(p, _)| p.bits == 128).count(),
        port_classes: [ports[0].classes, ports[1].classes, ports[2].classes],
        rule_entries: rules.len(),
    };
    Ok(Compiled {
        prefixes: PrefixTable::new(entries),
        world,
        identities,
        ports,
        rules,
        sizes,
    })
}

/// For every destination of every rule (numbered in rule order, see
/// `dest_base`), the port classes its ports cover, per protocol block.
type PortSetClasses = Vec<Vec<u16>>;

/// Port classes per protocol block; for every destination with explicit
/// ports, the classes its ports cover; and the number of the first
/// destination of each rule.
struct PortClasses {
    tables: [PortClassTable; 3],
    sets: [PortSetClasses; 3],
    dest_base: Vec<usize>,
}

fn port_classes(policy: &Policy) -> Result<PortClasses, CompileError> {
    let mut dest_base = Vec::with_capacity(policy.rules.len());
    let mut n_dests = 0;
    for rule in &policy.rules {
        dest_base.push(n_dests);
        n_dests += rule.dst.len();
    }
    let mut tables: [PortClassTable; 3] = Default::default();
    let mut sets: [PortSetClasses; 3] = Default::default();
    for (block, &proto) in PORT_PROTOS.iter().enumerate() {
        // Boundary events (point, 0 = ends before it / 1 = starts at it,
        // destination): at `lo` a port set starts, after `hi` it ends.
        let mut events: Vec<(u32, u8, u32)> = Vec::new();
        for (ri, rule) in policy.rules.iter().enumerate() {
            if !rule.protos.contains(&proto) {
                continue;
            }
            for (di, d) in rule.dst.iter().enumerate() {
                if let PortSet::Ranges(ranges) = &d.ports {
                    let dest = (dest_base[ri] + di) as u32;
                    for r in ranges {
                        events.push((u32::from(r.lo), 1, dest));
                        events.push((u32::from(r.hi) + 1, 0, dest));
                    }
                }
            }
        }
        events.sort_unstable();
        let block_sets = &mut sets[block];
        if !events.is_empty() {
            block_sets.resize(n_dests, Vec::new());
        }
        // Destinations covering the current interval, with how many of
        // their ranges do (ranges of one destination may overlap).
        let mut active: BTreeMap<u32, u32> = BTreeMap::new();
        let mut interned: FastMap<Vec<u32>, u16> = FastMap::new();
        let mut intervals: Vec<(u16, u16, u16)> = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let at = events[i].0;
            while i < events.len() && events[i].0 == at {
                let (_, kind, dest) = events[i];
                if kind == 0 {
                    if let Some(c) = active.get_mut(&dest) {
                        *c -= 1;
                        if *c == 0 {
                            active.remove(&dest);
                        }
                    }
                } else {
                    *active.entry(dest).or_insert(0) += 1;
                }
                i += 1;
            }
            let Some(&(next, _, _)) = events.get(i) else {
                break;
            };
            if active.is_empty() || at > u32::from(u16::MAX) {
                continue;
            }
            let key: Vec<u32> = active.keys().copied().collect();
            let n = interned.len() + 1;
            if n >= usize::from(PORT_CLASS_ANY) {
                return Err(CompileError::TooManyPortClasses {
                    proto: ["tcp", "udp", "sctp"][block],
                    count: n,
                    max: usize::from(PORT_CLASS_ANY) - 1,
                });
            }
            let (lo, hi) = (at as u16, (next - 1).min(u32::from(u16::MAX)) as u16);
            let class = match interned.get(&key) {
                Some(c) => *c,
                None => {
                    interned.insert(key.clone(), n as u16);
                    n as u16
                }
            };
            // Merge with the previous interval when contiguous and same class.
            match intervals.last_mut() {
                Some(last) if last.2 == class && u32::from(last.1) + 1 == u32::from(lo) => {
                    last.1 = hi
                }
                _ => intervals.push((lo, hi, class)),
            }
            for dest in key {
                let v = &mut block_sets[dest as usize];
                if v.last() != Some(&class) && !v.contains(&class) {
                    v.push(class);
                }
            }
        }
        tables[block] = PortClassTable {
            intervals,
            classes: interned.len(),
        };
    }
    Ok(PortClasses {
        tables,
        sets,
        dest_base,
    })
}

#[cfg(test)]
mod tests;

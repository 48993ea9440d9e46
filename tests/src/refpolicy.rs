//! The differential test's own reading of a policy.
//!
//! A random policy is built here as plain data (tags with member prefixes,
//! hosts and nested tags; users with addresses; groups of users and groups;
//! rules with selectors, port sets and protocols; failsafe entries; modes;
//! enforce flags), rendered to YAML for segment, and evaluated directly from
//! this structure. Nothing here uses segment's parser, validator, resolver,
//! compiler or evaluator, so a mistake in them cannot hide behind the same
//! mistake in the reference. Every rule of evaluation names the sentence of
//! `docs/policy.md` / the README it implements.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// xorshift64*: small, seedable, good enough to pick test cases.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// An IP network (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

impl Net {
    pub fn v4(addr: u32, len: u8) -> Self {
        Net::V4(addr & mask4(len), len)
    }
    pub fn v6(addr: u128, len: u8) -> Self {
        Net::V6(addr & mask6(len), len)
    }
    /// policy.md: "an IP" is one address, "a CIDR" a network. The families
    /// are distinct: an IPv4-mapped IPv6 address is an IPv6 address.
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self, a) {
            (Net::V4(n, l), IpAddr::V4(a)) => u32::from(a) & mask4(*l) == *n,
            (Net::V6(n, l), IpAddr::V6(a)) => u128::from(a) & mask6(*l) == *n,
            _ => false,
        }
    }
    /// As written in YAML (quoted: IPv6 needs it in flow lists).
    fn yaml(&self, bare_host: bool) -> String {
        match *self {
            Net::V4(n, 32) if bare_host => Ipv4Addr::from(n).to_string(),
            Net::V4(n, l) => format!("{}/{l}", Ipv4Addr::from(n)),
            Net::V6(n, 128) if bare_host => format!("\"{}\"", Ipv6Addr::from(n)),
            Net::V6(n, l) => format!("\"{}/{l}\"", Ipv6Addr::from(n)),
        }
    }
    /// As a destination with ports: policy.md "IPv6 destinations take
    /// brackets ... A CIDR needs none".
    fn dst_yaml(&self, bare_host: bool, ports: &str) -> String {
        match *self {
            Net::V4(..) => format!("\"{}:{ports}\"", self.yaml(bare_host)),
            Net::V6(n, 128) if bare_host => format!("\"[{}]:{ports}\"", Ipv6Addr::from(n)),
            Net::V6(n, l) => format!("\"{}/{l}:{ports}\"", Ipv6Addr::from(n)),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TagMember {
    Net(Net),
    Host(usize),
    /// A tag of lower index (no cycles).
    Tag(usize),
}

#[derive(Clone, Debug)]
pub enum GroupMember {
    User(usize),
    /// A group of lower index (no cycles).
    Group(usize),
}

#[derive(Clone, Debug)]
pub enum Sel {
    Any,
    Tag(usize),
    Group(usize),
    User(usize),
    Host(usize),
    /// A literal address (`bare`: written without a prefix length) or CIDR.
    Net(Net, bool),
}

#[derive(Clone, Debug)]
pub enum Ports {
    Any,
    /// Inclusive ranges.
    List(Vec<(u16, u16)>),
}

impl Ports {
    /// policy.md: "one port, a list, a range, a mix, or every port".
    pub fn contains(&self, p: u16) -> bool {
        match self {
            Ports::Any => true,
            Ports::List(l) => l.iter().any(|&(a, b)| a <= p && p <= b),
        }
    }
    fn yaml(&self) -> String {
        match self {
            Ports::Any => "*".into(),
            Ports::List(l) => l
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Dst {
    pub sel: Sel,
    pub ports: Ports,
}

/// A protocol as written: a name or a number.
#[derive(Clone, Copy, Debug)]
pub struct Proto {
    pub name: &'static str,
    pub number: u8,
}

/// My own table of the names the generator uses (IANA numbers).
pub const PROTOS: [Proto; 9] = [
    Proto {
        name: "tcp",
        number: 6,
    },
    Proto {
        name: "udp",
        number: 17,
    },
    Proto {
        name: "sctp",
        number: 132,
    },
    Proto {
        name: "icmp",
        number: 1,
    },
    Proto {
        name: "icmpv6",
        number: 58,
    },
    Proto {
        name: "gre",
        number: 47,
    },
    Proto {
        name: "esp",
        number: 50,
    },
    Proto {
        name: "47",
        number: 47,
    },
    Proto {
        name: "132",
        number: 132,
    },
];

/// policy.md: "Ports apply to TCP, UDP and SCTP."
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub src: Vec<Sel>,
    pub dst: Vec<Dst>,
    /// `None`: no `proto` key.
    pub protos: Option<Vec<Proto>>,
}

impl Rule {
    /// policy.md: "Without `proto`, a rule allows TCP, UDP, ICMP and ICMPv6."
    pub fn allows_proto(&self, p: u8) -> bool {
        match &self.protos {
            None => matches!(p, 6 | 17 | 1 | 58),
            Some(l) => l.iter().any(|x| x.number == p),
        }
    }
}

/// A segment a mode can be given to.
#[derive(Clone, Copy, Debug)]
pub enum Seg {
    Tag(usize),
    Group(usize),
    User(usize),
    Host(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Clone, Debug, Default)]
pub struct PolicyDesc {
    pub hosts: Vec<Net>,
    pub users: Vec<Vec<Net>>,
    pub groups: Vec<Vec<GroupMember>>,
    pub tags: Vec<Vec<TagMember>>,
    pub failsafe: Vec<Rule>,
    pub acls: Vec<Rule>,
    /// `mode:`; `None` when absent (enforce).
    pub mode: Option<Mode>,
    pub modes: Vec<(Seg, Mode)>,
    /// `enforce: {ingress, egress}`; `None` when absent.
    pub enforce: Option<(bool, bool)>,
}

impl PolicyDesc {
    // ---- membership (policy.md "Segments", "Nesting", "Selectors") ----

    /// policy.md: "`tags`: machines: IPs, CIDRs, host names and tags".
    pub fn in_tag(&self, t: usize, a: IpAddr) -> bool {
        self.tags[t].iter().any(|m| match m {
            TagMember::Net(n) => n.contains(a),
            TagMember::Host(h) => self.hosts[*h].contains(a),
            TagMember::Tag(u) => self.in_tag(*u, a),
        })
    }
    /// policy.md: "`groups`: users (bare names) and groups (`group:x`)";
    /// "the group's users' devices".
    pub fn in_group(&self, g: usize, a: IpAddr) -> bool {
        self.groups[g].iter().any(|m| match m {
            GroupMember::User(u) => self.in_user(*u, a),
            GroupMember::Group(h) => self.in_group(*h, a),
        })
    }
    pub fn in_user(&self, u: usize, a: IpAddr) -> bool {
        self.users[u].iter().any(|n| n.contains(a))
    }
    pub fn sel_contains(&self, s: &Sel, a: IpAddr) -> bool {
        match s {
            // policy.md: "`*`: every address, including those in no segment".
            Sel::Any => true,
            Sel::Tag(t) => self.in_tag(*t, a),
            Sel::Group(g) => self.in_group(*g, a),
            Sel::User(u) => self.in_user(*u, a),
            Sel::Host(h) => self.hosts[*h].contains(a),
            Sel::Net(n, _) => n.contains(a),
        }
    }
    fn seg_contains(&self, s: Seg, a: IpAddr) -> bool {
        match s {
            Seg::Tag(t) => self.in_tag(t, a),
            Seg::Group(g) => self.in_group(g, a),
            Seg::User(u) => self.in_user(u, a),
            Seg::Host(h) => self.hosts[h].contains(a),
        }
    }

    // ---- verdicts ----

    /// policy.md "Rules": a rule accepts when the protocol is one of its
    /// protocols, the source is in one of its `src` selectors, and the
    /// destination in one of its `dst` selectors with the port in that
    /// destination's ports — "Protocols without ports (ICMP, GRE, ...) match
    /// a destination whatever ports it lists".
    pub fn rule_accepts(
        r: &Rule,
        me: &Self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: u16,
    ) -> bool {
        r.allows_proto(proto)
            && r.src.iter().any(|s| me.sel_contains(s, src))
            && r.dst.iter().any(|d| {
                me.sel_contains(&d.sel, dst) && (!has_ports(proto) || d.ports.contains(port))
            })
    }

    /// policy.md "Order": "the rule reported for a packet is the first that
    /// matches, failsafe entries first" (failsafe: "accept rules that come
    /// first").
    pub fn first_match(&self, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Option<usize> {
        self.failsafe
            .iter()
            .chain(&self.acls)
            .position(|r| Self::rule_accepts(r, self, src, dst, proto, port))
    }

    /// policy.md "Enforcement and modes": modes follow the destination; "When
    /// an address is in several segments, an explicit `enforce` wins over an
    /// explicit `audit`, which wins over the default `mode`".
    pub fn audit_dst(&self, dst: IpAddr) -> bool {
        let explicit: Vec<Mode> = self
            .modes
            .iter()
            .filter(|(s, _)| self.seg_contains(*s, dst))
            .map(|(_, m)| *m)
            .collect();
        let m = if explicit.contains(&Mode::Enforce) {
            Mode::Enforce
        } else if explicit.contains(&Mode::Audit) {
            Mode::Audit
        } else {
            self.mode.unwrap_or(Mode::Enforce)
        };
        m == Mode::Audit
    }

    /// policy.md: "`enforce.ingress` (default `true`) ... `enforce.egress`
    /// (default `false`)".
    pub fn enforced(&self, egress: bool) -> bool {
        let (i, e) = self.enforce.unwrap_or((true, false));
        if egress { e } else { i }
    }

    // ---- YAML ----

    fn sel_yaml(&self, s: &Sel) -> String {
        match s {
            Sel::Any => "\"*\"".into(),
            Sel::Tag(t) => format!("tag:t{t}"),
            Sel::Group(g) => format!("group:g{g}"),
            Sel::User(u) => format!("u{u}"),
            Sel::Host(h) => format!("h{h}"),
            Sel::Net(n, bare) => n.yaml(*bare),
        }
    }

    fn dst_yaml(&self, d: &Dst) -> String {
        let ports = d.ports.yaml();
        match &d.sel {
            Sel::Net(n, bare) => n.dst_yaml(*bare, &ports),
            Sel::Any => format!("\"*:{ports}\""),
            other => format!("\"{}:{ports}\"", self.sel_yaml(other)),
        }
    }

    fn rule_yaml(&self, y: &mut String, r: &Rule, acl: bool) {
        let src: Vec<String> = r.src.iter().map(|s| self.sel_yaml(s)).collect();
        let dst: Vec<String> = r.dst.iter().map(|d| self.dst_yaml(d)).collect();
        if acl {
            y.push_str("  - action: accept\n    src: [");
        } else {
            y.push_str("  - src: [");
        }
        y.push_str(&src.join(", "));
        y.push_str("]\n    dst: [");
        y.push_str(&dst.join(", "));
        y.push_str("]\n");
        if let Some(p) = &r.protos {
            let names: Vec<&str> = p.iter().map(|p| p.name).collect();
            if names.len() == 1 {
                y.push_str(&format!("    proto: {}\n", names[0]));
            } else {
                y.push_str(&format!("    proto: [{}]\n", names.join(", ")));
            }
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        if let Some(m) = self.mode {
            y.push_str(if m == Mode::Audit {
                "mode: audit\n"
            } else {
                "mode: enforce\n"
            });
        }
        if let Some((i, e)) = self.enforce {
            y.push_str(&format!("enforce: {{ingress: {i}, egress: {e}}}\n"));
        }
        if !self.hosts.is_empty() {
            y.push_str("hosts:\n");
            for (i, h) in self.hosts.iter().enumerate() {
                y.push_str(&format!("  h{i}: {}\n", h.yaml(true)));
            }
        }
        if !self.users.is_empty() {
            y.push_str("users:\n");
            for (i, u) in self.users.iter().enumerate() {
                let a: Vec<String> = u.iter().map(|n| n.yaml(true)).collect();
                y.push_str(&format!("  u{i}: [{}]\n", a.join(", ")));
            }
        }
        if !self.groups.is_empty() {
            y.push_str("groups:\n");
            for (i, g) in self.groups.iter().enumerate() {
                let m: Vec<String> = g
                    .iter()
                    .map(|m| match m {
                        GroupMember::User(u) => format!("u{u}"),
                        GroupMember::Group(g) => format!("group:g{g}"),
                    })
                    .collect();
                y.push_str(&format!("  g{i}: [{}]\n", m.join(", ")));
            }
        }
        if !self.tags.is_empty() {
            y.push_str("tags:\n");
            for (i, t) in self.tags.iter().enumerate() {
                let m: Vec<String> = t
                    .iter()
                    .map(|m| match m {
                        TagMember::Net(n) => n.yaml(true),
                        TagMember::Host(h) => format!("h{h}"),
                        TagMember::Tag(t) => format!("tag:t{t}"),
                    })
                    .collect();
                y.push_str(&format!("  t{i}: [{}]\n", m.join(", ")));
            }
        }
        if !self.modes.is_empty() {
            y.push_str("modes:\n");
            for (s, m) in &self.modes {
                let name = match s {
                    Seg::Tag(t) => format!("tag:t{t}"),
                    Seg::Group(g) => format!("group:g{g}"),
                    Seg::User(u) => format!("u{u}"),
                    Seg::Host(h) => format!("h{h}"),
                };
                let m = if *m == Mode::Audit {
                    "audit"
                } else {
                    "enforce"
                };
                y.push_str(&format!("  {name}: {m}\n"));
            }
        }
        if !self.failsafe.is_empty() {
            y.push_str("failsafe:\n");
            for r in &self.failsafe {
                self.rule_yaml(&mut y, r, false);
            }
        }
        if self.acls.is_empty() {
            y.push_str("acls: []\n");
        } else {
            y.push_str("acls:\n");
            for r in &self.acls {
                self.rule_yaml(&mut y, r, true);
            }
        }
        y
    }
}

// ---------------------------------------------------------------------------
// Random policies.

/// The test's address universe: 10.0.0.0/26 and fd00::/122 (a few hosts of
/// each), plus the IPv4-mapped `::ffff:10.0.0.x` and IPv4-compatible
/// `::10.0.0.x` IPv6 addresses, which must never be confused with 10.0.0.x.
pub const V4_BASE: u32 = 0x0a00_0000;
pub const V6_BASE: u128 = 0xfd00u128 << 112;
pub const MAPPED_BASE: u128 = 0xffff_0000_0000;

/// A random network. `wide` draws from 15 prefix lengths per family, more
/// than the datapath's exact-match tables take (so the LPM trie answers).
pub fn random_net(r: &mut Rng, wide: bool) -> Net {
    let spread = if wide { 15 } else { 6 };
    let roll = r.below(100);
    if roll < if wide { 45 } else { 65 } {
        let len = 33 - spread + r.below(u64::from(spread)) as u8;
        Net::v4(V4_BASE | r.below(40) as u32, len)
    } else if roll < 92 {
        let len = 129 - spread + r.below(u64::from(spread)) as u8;
        Net::v6(V6_BASE | u128::from(r.below(40) as u32), len)
    } else {
        // Mapped or compatible IPv4 in IPv6: an IPv6 network.
        let base = if r.chance(70) { MAPPED_BASE } else { 0 };
        let len = 124 + r.below(5) as u8;
        Net::v6(base | u128::from(V4_BASE | r.below(40) as u32), len)
    }
}

fn random_ports(r: &mut Rng) -> Ports {
    let small = [0u16, 1, 2, 3, 5, 8, 9, 10, 1000, 1001, 40000, 65534, 65535];
    match r.below(5) {
        0 => Ports::Any,
        1 => {
            let a = *r.pick(&small);
            Ports::List(vec![(a, a)])
        }
        2 => {
            let a = *r.pick(&small);
            Ports::List(vec![(a, a.saturating_add(r.below(4) as u16))])
        }
        _ => {
            let a = *r.pick(&small);
            let b = *r.pick(&small);
            let c = *r.pick(&small);
            let mut l = vec![
                (a.min(b), a.min(b)),
                (c, c.saturating_add(r.below(3) as u16)),
            ];
            if a != b {
                l.push((a.max(b), a.max(b)));
            }
            Ports::List(l)
        }
    }
}

pub fn random_policy(r: &mut Rng) -> (PolicyDesc, bool) {
    let wide = r.chance(35);
    let mut p = PolicyDesc::default();
    let n_hosts = r.below(3) as usize;
    for _ in 0..n_hosts {
        p.hosts.push(random_net(r, false));
    }
    let n_users = r.below(4) as usize;
    for _ in 0..n_users {
        let mut a = vec![Net::v4(V4_BASE | r.below(40) as u32, 32)];
        if r.chance(70) {
            a.push(Net::v6(V6_BASE | u128::from(r.below(40) as u32), 128));
        }
        if r.chance(15) {
            a.push(Net::v6(
                MAPPED_BASE | u128::from(V4_BASE | r.below(40) as u32),
                128,
            ));
        }
        p.users.push(a);
    }
    if n_users > 0 {
        for g in 0..1 + r.below(3) as usize {
            let mut m = vec![GroupMember::User(r.below(n_users as u64) as usize)];
            if g > 0 && r.chance(50) {
                m.push(GroupMember::Group(r.below(g as u64) as usize));
            }
            if r.chance(40) {
                m.push(GroupMember::User(r.below(n_users as u64) as usize));
            }
            p.groups.push(m);
        }
    }
    let n_tags = 1 + r.below(5) as usize;
    for t in 0..n_tags {
        let mut m: Vec<TagMember> = (0..r.below(if wide { 12 } else { 4 }))
            .map(|_| TagMember::Net(random_net(r, wide)))
            .collect();
        if n_hosts > 0 && r.chance(30) {
            m.push(TagMember::Host(r.below(n_hosts as u64) as usize));
        }
        if t > 0 && r.chance(30) {
            m.push(TagMember::Tag(r.below(t as u64) as usize));
        }
        p.tags.push(m);
    }
    if r.chance(15) {
        p.mode = Some(Mode::Audit);
    } else if r.chance(5) {
        p.mode = Some(Mode::Enforce);
    }
    if r.chance(40) {
        p.enforce = Some((true, true));
    } else if r.chance(10) {
        p.enforce = Some((r.chance(50), r.chance(50)));
    }
    if r.chance(35) {
        for _ in 0..1 + r.below(3) {
            let seg = match r.below(4) {
                0 if !p.groups.is_empty() => Seg::Group(r.below(p.groups.len() as u64) as usize),
                1 if n_users > 0 => Seg::User(r.below(n_users as u64) as usize),
                2 if n_hosts > 0 => Seg::Host(r.below(n_hosts as u64) as usize),
                _ => Seg::Tag(r.below(n_tags as u64) as usize),
            };
            let name_taken = p.modes.iter().any(|(s, _)| {
                matches!((s, seg), (Seg::Tag(a), Seg::Tag(b)) | (Seg::Group(a), Seg::Group(b))
                    | (Seg::User(a), Seg::User(b)) | (Seg::Host(a), Seg::Host(b)) if *a == b)
            });
            if !name_taken {
                let m = if r.chance(50) {
                    Mode::Audit
                } else {
                    Mode::Enforce
                };
                p.modes.push((seg, m));
            }
        }
    }
    let sel = |r: &mut Rng, p: &PolicyDesc| -> Sel {
        match r.below(8) {
            0 => Sel::Any,
            1 | 2 => Sel::Tag(r.below(p.tags.len() as u64) as usize),
            3 if !p.groups.is_empty() => Sel::Group(r.below(p.groups.len() as u64) as usize),
            4 if !p.users.is_empty() => Sel::User(r.below(p.users.len() as u64) as usize),
            5 if !p.hosts.is_empty() => Sel::Host(r.below(p.hosts.len() as u64) as usize),
            _ => {
                let n = random_net(r, wide);
                let bare = matches!(n, Net::V4(_, 32) | Net::V6(_, 128)) && r.chance(60);
                Sel::Net(n, bare)
            }
        }
    };
    let rule = |r: &mut Rng, p: &PolicyDesc| -> Rule {
        let src = (0..1 + r.below(2)).map(|_| sel(r, p)).collect();
        let protos = match r.below(5) {
            0 | 1 => None,
            2 => Some(vec![*r.pick(&PROTOS[..3])]),
            3 => Some(vec![*r.pick(&PROTOS[..2]), *r.pick(&PROTOS[2..])]),
            _ => Some(vec![
                PROTOS[0],
                PROTOS[1],
                PROTOS[3],
                PROTOS[4],
                *r.pick(&PROTOS[5..]),
            ]),
        };
        // policy.md: "A rule whose *only* protocols have no ports must use `:*`."
        let portless = protos
            .as_ref()
            .is_some_and(|l: &Vec<Proto>| l.iter().all(|x| !has_ports(x.number)));
        let dst = (0..1 + r.below(2))
            .map(|_| Dst {
                sel: sel(r, p),
                ports: if portless {
                    Ports::Any
                } else {
                    random_ports(r)
                },
            })
            .collect();
        Rule { src, dst, protos }
    };
    if r.chance(30) {
        let f = rule(r, &p);
        p.failsafe.push(f);
    }
    for _ in 0..r.below(7) {
        let a = rule(r, &p);
        p.acls.push(a);
    }
    if wide {
        // Networks of ten lengths per family in one rule, so the policy needs
        // more lengths than the exact-match tables take.
        let src = (0..10u8)
            .flat_map(|i| {
                [
                    Sel::Net(Net::v4(V4_BASE | r.below(64) as u32, 22 + i), false),
                    Sel::Net(
                        Net::v6(V6_BASE | u128::from(r.below(64) as u32), 118 + i),
                        false,
                    ),
                ]
            })
            .collect();
        let d = sel(r, &p);
        let ports = random_ports(r);
        p.acls.push(Rule {
            src,
            dst: vec![Dst { sel: d, ports }],
            protos: None,
        });
    }
    (p, wide)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> PolicyDesc {
        PolicyDesc {
            hosts: vec![Net::v4(V4_BASE | 5, 32)],
            users: vec![vec![Net::v4(V4_BASE | 7, 32), Net::v6(V6_BASE | 7, 128)]],
            groups: vec![vec![GroupMember::User(0)], vec![GroupMember::Group(0)]],
            tags: vec![
                vec![TagMember::Host(0)],
                vec![
                    TagMember::Tag(0),
                    TagMember::Net(Net::v6(MAPPED_BASE | u128::from(V4_BASE | 9), 128)),
                ],
            ],
            acls: vec![Rule {
                src: vec![Sel::Group(1)],
                dst: vec![Dst {
                    sel: Sel::Tag(1),
                    ports: Ports::List(vec![(22, 22), (8000, 8100)]),
                }],
                protos: None,
            }],
            modes: vec![(Seg::Tag(1), Mode::Audit), (Seg::Host(0), Mode::Enforce)],
            mode: Some(Mode::Audit),
            ..PolicyDesc::default()
        }
    }

    #[test]
    fn nesting_and_families() {
        let p = policy();
        // tag:t1 holds tag:t0 holds h0 = 10.0.0.5; ::ffff:10.0.0.9 is IPv6.
        assert!(p.in_tag(1, a("10.0.0.5")));
        assert!(p.in_tag(1, a("::ffff:10.0.0.9")));
        assert!(!p.in_tag(1, a("10.0.0.9")));
        assert!(!p.in_tag(1, a("::ffff:10.0.0.5")));
        // group:g1 holds group:g0 holds u0.
        assert!(p.in_group(1, a("fd00::7")));
        assert!(!p.in_group(1, a("::ffff:10.0.0.7")));
    }

    #[test]
    fn ports_protocols_and_order() {
        let mut p = policy();
        let (s, d) = (a("10.0.0.7"), a("10.0.0.5"));
        assert_eq!(p.first_match(s, d, 6, 22), Some(0));
        assert_eq!(p.first_match(s, d, 17, 8100), Some(0));
        assert_eq!(p.first_match(s, d, 6, 23), None);
        // No `proto`: tcp, udp, icmp, icmpv6, not sctp; ICMP ignores ports.
        assert_eq!(p.first_match(s, d, 132, 22), None);
        assert_eq!(p.first_match(s, d, 1, 0), Some(0));
        assert_eq!(p.first_match(s, d, 47, 0), None);
        // Failsafe entries come first.
        p.failsafe.push(Rule {
            src: vec![Sel::Any],
            dst: vec![Dst {
                sel: Sel::Any,
                ports: Ports::Any,
            }],
            protos: Some(vec![PROTOS[0]]),
        });
        assert_eq!(p.first_match(s, d, 6, 22), Some(0));
        assert_eq!(p.first_match(s, d, 17, 22), Some(1));
    }

    #[test]
    fn explicit_enforce_wins_over_audit_then_default() {
        let p = policy();
        // 10.0.0.5 is in h0 (enforce) and tag:t1 (audit).
        assert!(!p.audit_dst(a("10.0.0.5")));
        // ::ffff:10.0.0.9 only in tag:t1 (audit).
        assert!(p.audit_dst(a("::ffff:10.0.0.9")));
        // In no segment with a mode: the default, audit.
        assert!(p.audit_dst(a("10.0.0.30")));
        assert!(p.enforced(false) && !p.enforced(true));
    }

    #[test]
    fn yaml_spells_what_the_structure_says() {
        let y = policy().yaml();
        assert!(y.contains("t1: [tag:t0, \"::ffff:10.0.0.9\"]"), "{y}");
        assert!(y.contains("g1: [group:g0]"), "{y}");
        assert!(y.contains("dst: [\"tag:t1:22,8000-8100\"]"), "{y}");
        assert!(y.contains("  tag:t1: audit\n  h0: enforce\n"), "{y}");
        assert!(!y.contains("proto"), "{y}");
    }
}

//! The validated policy: every name resolved to addresses, every selector,
//! port and protocol checked. Everything downstream (compiler, evaluators,
//! test runner) works from this and never sees YAML.

use std::{fmt, sync::Arc};

use ipnet::IpNet;
use serde::Serialize;

use super::diagnostic::{Diagnostic, Pos, Source};

pub type SegmentId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentKind {
    Tag,
    Group,
    User,
    Host,
    /// A name written as is: `autogroup:member`, `ipset:prod` (Tailscale).
    Alias,
}

impl SegmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentKind::Tag => "tag",
            SegmentKind::Group => "group",
            SegmentKind::User => "user",
            SegmentKind::Host => "host",
            SegmentKind::Alias => "alias",
        }
    }
}

/// A named set of addresses: a tag, group, user or host. Counters are kept
/// per segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub kind: SegmentKind,
    pub name: String,
    /// Resolved addresses, normalized (no duplicates, no prefix inside another).
    pub prefixes: Vec<IpNet>,
    /// Explicit `modes:` entry for this segment.
    pub mode: Option<Mode>,
    pub pos: Option<Pos>,
}

impl Segment {
    /// How the segment is written in a policy: `tag:web`, `group:admins`,
    /// `alice`, `db-primary`.
    pub fn reference(&self) -> String {
        match self.kind {
            SegmentKind::Tag => format!("tag:{}", self.name),
            SegmentKind::Group => format!("group:{}", self.name),
            SegmentKind::User | SegmentKind::Host | SegmentKind::Alias => self.name.clone(),
        }
    }
}

/// Who or what a rule, test or failsafe entry talks about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    /// `*`: every address, including those in no segment.
    Any,
    Segment(SegmentId),
    /// A literal IP or CIDR.
    Net(IpNet),
}

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSet {
    Any,
    /// Sorted, merged, non-empty.
    Ranges(Vec<PortRange>),
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Ranges(r) => r.iter().any(|r| r.contains(port)),
        }
    }

    /// Sorts and merges overlapping or adjacent ranges; a set covering every
    /// port becomes `Any`.
    pub fn normalized(mut ranges: Vec<PortRange>) -> Self {
        ranges.sort();
        let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last_mut() {
                Some(last) if u32::from(r.lo) <= u32::from(last.hi) + 1 => {
                    last.hi = last.hi.max(r.hi);
                }
                _ => out.push(r),
            }
        }
        if out.len() == 1 && out[0].lo == 0 && out[0].hi == u16::MAX {
            PortSet::Any
        } else {
            PortSet::Ranges(out)
        }
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSet::Any => f.write_str("*"),
            PortSet::Ranges(r) => {
                for (i, r) in r.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{r}")?;
                }
                Ok(())
            }
        }
    }
}

/// One destination of a rule: a selector and the ports allowed on it.
#[derive(Debug, Clone)]
pub struct Dest {
    pub selector: Selector,
    pub ports: PortSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "section", content = "index", rename_all = "lowercase")]
pub enum RuleOrigin {
    /// Position in `acls:` (0-based).
    Acl(usize),
    /// Position in `failsafe:` (0-based).
    Failsafe(usize),
    /// Position in a Tailscale policy's `grants` (0-based).
    Grant(usize),
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOrigin::Acl(i) => write!(f, "acl #{}", i + 1),
            RuleOrigin::Failsafe(i) => write!(f, "failsafe #{}", i + 1),
            RuleOrigin::Grant(i) => write!(f, "grant #{}", i + 1),
        }
    }
}

/// An accept rule. Rules are numbered failsafe entries first, then acls,
/// which is also their precedence when reporting which rule matched.
#[derive(Debug, Clone)]
pub struct Rule {
    pub origin: RuleOrigin,
    pub name: Option<String>,
    pub src: Vec<Selector>,
    pub dst: Vec<Dest>,
    /// Sorted, deduplicated IP protocol numbers.
    pub protos: Vec<u8>,
    /// A one-line rendering of the rule as written.
    pub text: String,
    pub pos: Option<Pos>,
}

impl Rule {
    pub fn is_failsafe(&self) -> bool {
        matches!(self.origin, RuleOrigin::Failsafe(_))
    }

    /// `acl #3 (line 27)` or `acl #3 "web-to-db" (line 27)`.
    pub fn label(&self) -> String {
        let mut s = self.origin.to_string();
        if let Some(name) = &self.name {
            s.push_str(&format!(" \"{name}\""));
        }
        if let Some(pos) = self.pos {
            s.push_str(&format!(" (line {})", pos.line));
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Accept,
    Deny,
}

/// One line of a `tests:` entry: `src` may (or may not) reach `dst` on `ports`.
#[derive(Debug, Clone)]
pub struct Assertion {
    pub expect: Expect,
    pub dst: Selector,
    pub dst_text: String,
    pub ports: PortSet,
    pub pos: Option<Pos>,
}

#[derive(Debug, Clone)]
pub struct TestCase {
    pub src: Selector,
    pub src_text: String,
    pub proto: u8,
    pub assertions: Vec<Assertion>,
    pub pos: Option<Pos>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enforce {
    pub ingress: bool,
    pub egress: bool,
}

impl Default for Enforce {
    /// Like Tailscale: what comes in is judged; what goes out is tracked so
    /// that its replies come back.
    fn default() -> Self {
        Self {
            ingress: true,
            egress: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Denied packets pass and are counted as would-drop.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub source: Arc<Source>,
    pub segments: Vec<Segment>,
    pub rules: Vec<Rule>,
    pub tests: Vec<TestCase>,
    pub enforce: Enforce,
    pub mode: Mode,
    /// Non-fatal findings (no acls, no failsafe, ...).
    pub warnings: Vec<Diagnostic>,
    /// Every tag claimed by an inventory device, granted or refused, and why.
    pub membership: Vec<Membership>,
    /// Tailscale policies: the same policy with one hypothetical device per
    /// principal named in `tests`, on which those tests are decided (so that
    /// a test about a user or tag with no device yet is decided for that
    /// principal, not vacuously). Never compiled into the datapath.
    pub test_bed: Option<Box<Policy>>,
    /// Parts of the file that segment reads but does not enforce (Tailscale
    /// SSH, app capabilities, postures...), one line each, for `check`.
    pub not_enforced: Vec<String>,
}

/// The outcome of one device's claim of one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub device: String,
    /// Where the device record came from (the inventory's `origin`).
    pub origin: String,
    /// The tag as claimed, `tag:NAME`.
    pub tag: String,
    pub granted: bool,
    /// Why it was granted or refused, in words.
    pub reason: String,
}

impl Policy {
    pub fn segment(&self, id: SegmentId) -> &Segment {
        &self.segments[id as usize]
    }

    /// Human form of a selector: `*`, `tag:web`, `alice`, `10.0.0.0/8`.
    pub fn selector_text(&self, s: &Selector) -> String {
        match s {
            Selector::Any => "*".to_owned(),
            Selector::Segment(id) => self.segment(*id).reference(),
            Selector::Net(n) => n.to_string(),
        }
    }

    /// Every prefix a selector covers.
    pub fn selector_prefixes(&self, s: &Selector) -> Vec<IpNet> {
        match s {
            Selector::Any => vec![
                "0.0.0.0/0".parse().expect("valid literal"),
                "::/0".parse().expect("valid literal"),
            ],
            Selector::Segment(id) => self.segment(*id).prefixes.clone(),
            Selector::Net(n) => vec![*n],
        }
    }

    /// Does `addr` belong to the selector's addresses?
    pub fn selector_contains(&self, s: &Selector, addr: std::net::IpAddr) -> bool {
        match s {
            Selector::Any => true,
            Selector::Segment(id) => self.segment(*id).prefixes.iter().any(|p| p.contains(&addr)),
            Selector::Net(n) => n.contains(&addr),
        }
    }
}

/// Protocol names understood in `proto:`, with their numbers.
pub const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("tcp", 6),
    ("egp", 8),
    ("igp", 9),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("sctp", 132),
];

/// What `proto` means when a rule leaves it out: TCP, UDP and ICMP (both
/// versions), as in Tailscale.
pub const DEFAULT_PROTOCOLS: [u8; 4] = [1, 6, 17, 58];

pub fn protocol_name(proto: u8) -> String {
    match PROTOCOL_NAMES.iter().find(|(_, n)| *n == proto) {
        Some((name, _)) => (*name).to_owned(),
        None => proto.to_string(),
    }
}

/// Protocols whose destination port is part of rule matching.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

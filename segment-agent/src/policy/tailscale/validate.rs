//! A Tailscale policy tree → segment's [`Policy`].
//!
//! Semantics follow Tailscale's documentation ("Syntax reference for the
//! tailnet policy file", grants, tests) and, where the documentation is
//! silent, the recordings of Tailscale's control server in
//! `../shared/tailscale/headscale-captures.tar.xz`:
//!
//! * a user (`alice@example.com`) is the addresses of the user's devices
//!   that carry no tag (a tagged device belongs to its tags, not to a user);
//! * `tag:T` must be a key of `tagOwners`; its members are the inventory
//!   devices granted the tag (see [`crate::policy::membership`]; owners and
//!   admins may apply any defined tag, as in Tailscale);
//! * `autogroup:member` is every user-owned (untagged) device,
//!   `autogroup:tagged` every tagged one, `autogroup:admin`/`owner`/... the
//!   devices of users with that inventory role, `autogroup:self` expands to
//!   one rule per source user, `autogroup:internet` is every address that is
//!   neither in the inventory nor in Tailscale's ranges, `autogroup:danger-all`
//!   (grant sources) is every address;
//! * `proto` absent means TCP, UDP, ICMP and ICMPv6; `icmp` is ICMPv4;
//! * `tests` are decided on a copy of the policy with one hypothetical
//!   device per principal they name ([`Policy::test_bed`]), so that a test
//!   about a user or tag without devices is decided for that principal.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use ipnet::IpNet;

use crate::policy::{
    diagnostic::{Diagnostic, Pos, Severity, Source, closest},
    hujson::{Key, Node, Value},
    inventory::Inventory,
    membership::{OwnerEntry, TagRules, glob_match, resolve as resolve_membership},
    model::{
        Assertion, DEFAULT_PROTOCOLS, Dest, Enforce, Expect, Membership, Mode, PROTOCOL_NAMES,
        Policy, PortRange, PortSet, Rule, RuleOrigin, Segment, SegmentId, SegmentKind, Selector,
        TestCase,
    },
    validate::normalize,
};

/// Sections that shape the packet filter.
const ENFORCED: &[&str] = &[
    "acls",
    "grants",
    "groups",
    "hosts",
    "tagOwners",
    "ipsets",
    "tests",
];

/// Sections read and reported, with why segment does not enforce them.
pub const NOT_ENFORCED: &[(&str, &str)] = &[
    (
        "ssh",
        "Tailscale SSH is authorized by tailscaled, not by a packet filter",
    ),
    (
        "sshTests",
        "tests of Tailscale SSH rules, which segment does not enforce",
    ),
    ("nodeAttrs", "node attributes configure Tailscale clients"),
    (
        "postures",
        "device posture needs Tailscale's device attributes",
    ),
    (
        "defaultSrcPosture",
        "device posture needs Tailscale's device attributes",
    ),
    (
        "autoApprovers",
        "route and exit-node approval is a control-plane decision",
    ),
    ("derpMap", "DERP relays are Tailscale's transport"),
    ("disableIPv4", "Tailscale address assignment"),
    ("randomizeClientPort", "Tailscale client setting"),
    ("OneCGNATRoute", "Tailscale client routing setting"),
    ("attrConfig", "Tailscale node attribute configuration"),
    ("autogroups", "Tailscale control-plane setting"),
];

/// Application capabilities of Tailscale's own domain that it accepts in
/// grants (others in `tailscale.com/` are refused).
const TAILSCALE_CAPS: &[&str] = &[
    "drive",
    "kubernetes",
    "golink",
    "tsidp",
    "relay",
    "webui",
    "file-sharing-target",
    "taildrive",
    "funnel-ports",
    "tsnet",
];

/// Roles whose users may apply any defined tag (Tailscale's Owner, Admin
/// and Network admin).
const TAG_ANY_ROLES: &[&str] = &["owner", "admin", "network-admin"];

/// Role autogroups, matched against inventory users' roles.
const ROLE_AUTOGROUPS: &[&str] = &[
    "admin",
    "owner",
    "it-admin",
    "network-admin",
    "billing-admin",
    "auditor",
];

/// Addresses that are not the internet: private, shared, link-local,
/// loopback, multicast and reserved ranges of both families.
const NOT_INTERNET: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Tailscale's own address ranges (CGNAT and the ULA prefix).
fn tailnet_ranges() -> [IpNet; 2] {
    [
        "100.64.0.0/10".parse().expect("literal"),
        "fd7a:115c:a1e0::/48".parse().expect("literal"),
    ]
}

/// A device as the filter sees it.
#[derive(Debug, Clone)]
struct Dev {
    addrs: Vec<IpAddr>,
    /// The owning user, for untagged devices.
    user: Option<String>,
    /// Granted tags (names without `tag:`).
    tags: BTreeSet<String>,
    /// Tagged (for `autogroup:tagged`); true when `tags` is not empty, and
    /// for the hypothetical device of a test about `autogroup:tagged`.
    tagged: bool,
    /// Tailscale Services (`svc:NAME`) the device serves.
    services: BTreeSet<String>,
    /// Owned by a member of the tailnet (for `autogroup:member`); false for
    /// the hypothetical device of a user assumed to be outside it.
    member: bool,
}

/// A principal named in a test, and the hypothetical devices that stand for it.
#[derive(Debug, Clone)]
struct Phantom {
    user: Option<String>,
    tags: BTreeSet<String>,
    tagged: bool,
    services: BTreeSet<String>,
    member: bool,
    /// The device's own address (a tailnet address named by a test), or
    /// `None` for fresh addresses.
    addr: Option<IpAddr>,
    /// Extra group membership for a synthetic user (a group with no members).
    group: Option<String>,
    roles: Vec<String>,
}

pub fn validate(
    source: &Arc<Source>,
    root: &Node,
    inventory: &Inventory,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut first = Builder::new(source, root, inventory, &[]);
    first.build_all();
    let principals = first.test_principals.clone();
    if first.diags.iter().any(|d| d.severity == Severity::Error) {
        let mut d = first.diags;
        d.retain(|d| d.severity == Severity::Error);
        return Err(d);
    }
    let unknown_users: Vec<String> = principals
        .iter()
        .filter(|p| p.contains('@') && !p.starts_with("group:") && !p.starts_with("tag:"))
        .filter(|p| !first.user_known(p))
        .cloned()
        .collect();
    let unknown_addresses: Vec<String> = principals
        .iter()
        .filter(|p| {
            first.unknown_host_address(p).is_some()
                || p.parse::<IpAddr>().is_ok_and(|ip| {
                    tailnet_ranges().iter().any(|r| r.contains(&ip)) && inventory.devices.is_empty()
                })
        })
        .cloned()
        .collect();
    let mut candidates: Vec<(String, Vec<Profile>)> = unknown_users
        .iter()
        .map(|u| (u.clone(), profiles().into_iter().skip(1).collect()))
        .collect();
    let mut address_profiles: Vec<Profile> = principals
        .iter()
        .filter(|p| p.contains('@') && !p.starts_with("group:") && !p.starts_with("tag:"))
        .map(|u| Profile::OwnedBy(u.clone()))
        .collect();
    address_profiles.extend(first.tags.keys().map(|t| Profile::Tagged(t.clone())));
    candidates.extend(
        unknown_addresses
            .iter()
            .map(|a| (a.clone(), address_profiles.clone())),
    );
    let mut policy = first.finish();
    let has_tests =
        matches!(root.get("tests").map(|t| &t.value), Some(Value::Array(a)) if !a.is_empty());
    if !has_tests {
        return Ok(policy);
    }
    let bed_for = |profiles: &BTreeMap<String, Profile>| {
        let mut bed = Builder::new(source, root, inventory, &principals);
        bed.profiles = profiles.clone();
        bed.build_all();
        bed.make_tests();
        bed
    };
    let failures = |bed: &Policy| -> usize {
        match crate::compile::compile(bed) {
            Ok(c) => crate::verify::run(bed, &c)
                .iter()
                .filter(|o| !o.holds)
                .count(),
            Err(_) => usize::MAX,
        }
    };
    // Users the inventory does not know: Tailscale knew whether they are
    // members and which roles they have; segment assumes the most ordinary
    // (a member without a role) and, where the tests then fail, the first
    // other assumption under which fewer of them fail, and says so.
    let mut chosen: BTreeMap<String, Profile> = BTreeMap::new();
    let bed = bed_for(&chosen);
    if bed.diags.iter().any(|d| d.severity == Severity::Error) {
        let mut d = bed.diags;
        d.retain(|d| d.severity == Severity::Error);
        return Err(d);
    }
    let mut best_policy = bed.finish();
    let mut best = failures(&best_policy);
    for (who, options) in &candidates {
        if best == 0 {
            break;
        }
        for profile in options {
            let mut trial = chosen.clone();
            trial.insert(who.clone(), profile.clone());
            let candidate = bed_for(&trial).finish();
            let f = failures(&candidate);
            if f < best {
                best = f;
                best_policy = candidate;
                chosen = trial;
            }
        }
    }
    for (user, profile) in &chosen {
        let d = Diagnostic::warning(
            None,
            format!(
                "tests: `{user}` is taken to be {} (the inventory has no record of it; without that assumption some tests fail)",
                profile.describe()
            ),
        )
        .help("give an inventory with the user's roles (`users: [{login, roles}]`) to decide the tests without assumptions");
        policy.warnings.push(d);
    }
    if !unknown_users.is_empty() && inventory.devices.is_empty() && inventory.users.is_empty() {
        policy.not_enforced.push(format!(
            "tests: {} user{} without inventory record{} decided as tailnet members without a role unless stated otherwise",
            unknown_users.len(),
            if unknown_users.len() == 1 { "" } else { "s" },
            if unknown_users.len() == 1 { "" } else { "s" },
        ));
    }
    policy.test_bed = Some(Box::new(best_policy));
    Ok(policy)
}

struct Builder<'a> {
    source: Arc<Source>,
    root: &'a Node,
    inventory: &'a Inventory,
    diags: Vec<Diagnostic>,
    groups: BTreeMap<String, Vec<String>>,
    hosts: BTreeMap<String, Vec<IpNet>>,
    tags: BTreeMap<String, Pos>,
    ipsets: BTreeMap<String, Vec<IpNet>>,
    roles: BTreeMap<String, Vec<String>>,
    devs: Vec<Dev>,
    membership: Vec<Membership>,
    segments: Vec<Segment>,
    seg_ids: HashMap<(SegmentKind, String), SegmentId>,
    rules: Vec<Rule>,
    tests: Vec<TestCase>,
    not_enforced: Vec<String>,
    /// Principals named by tests (in pass one), in order.
    test_principals: Vec<String>,
    /// Pass two: the hypothetical devices of each principal.
    phantoms: &'a [String],
    phantom_devs: BTreeMap<String, Vec<usize>>,
    /// Assumptions about test users the inventory does not know.
    profiles: BTreeMap<String, Profile>,
}

/// What a test principal the inventory does not know is assumed to be:
/// for a user, a member with roles or an outsider; for a Tailscale address,
/// the device of a member, of a named user, or with a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Profile {
    /// A member of the tailnet, with these roles.
    Member(Vec<&'static str>),
    /// Not in the tailnet (not in `autogroup:member`).
    Outsider,
    /// An address: the device of this user.
    OwnedBy(String),
    /// An address: a device with this tag.
    Tagged(String),
}

impl Profile {
    fn describe(&self) -> String {
        match self {
            Profile::Member(r) if r.is_empty() => "a member without a role".to_owned(),
            Profile::Member(r) => format!("a member with the role {}", r.join(", ")),
            Profile::Outsider => "not a member of the tailnet".to_owned(),
            Profile::OwnedBy(u) => format!("a device of {u}"),
            Profile::Tagged(t) => format!("a device tagged tag:{t}"),
        }
    }
}

/// The assumptions tried, most ordinary first.
fn profiles() -> Vec<Profile> {
    let mut v = vec![Profile::Member(Vec::new())];
    v.extend(ROLE_AUTOGROUPS.iter().map(|r| Profile::Member(vec![*r])));
    v.push(Profile::Outsider);
    v
}

/// Which side of a rule a target is on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
    /// A grant destination (no ports, stricter about `0.0.0.0/0`).
    GrantDst,
}

enum Target {
    Sel(Selector),
    /// `autogroup:self`.
    SelfDevices,
}

fn pos_of(n: &Node) -> Option<Pos> {
    Some(n.pos)
}

impl<'a> Builder<'a> {
    fn new(
        source: &Arc<Source>,
        root: &'a Node,
        inventory: &'a Inventory,
        phantoms: &'a [String],
    ) -> Self {
        Self {
            source: source.clone(),
            root,
            inventory,
            diags: Vec::new(),
            groups: BTreeMap::new(),
            hosts: BTreeMap::new(),
            tags: BTreeMap::new(),
            ipsets: BTreeMap::new(),
            roles: inventory
                .users
                .iter()
                .map(|u| (u.login.clone(), u.roles.clone()))
                .collect(),
            devs: Vec::new(),
            membership: Vec::new(),
            segments: Vec::new(),
            seg_ids: HashMap::new(),
            rules: Vec::new(),
            tests: Vec::new(),
            not_enforced: Vec::new(),
            test_principals: Vec::new(),
            phantoms,
            phantom_devs: BTreeMap::new(),
            profiles: BTreeMap::new(),
        }
    }

    fn error(&mut self, pos: Option<Pos>, msg: impl Into<String>, help: impl Into<String>) {
        let help = help.into();
        let mut d = Diagnostic::error(pos, msg);
        if !help.is_empty() {
            d.help = Some(help);
        }
        self.diags.push(d);
    }

    fn warn(&mut self, pos: Option<Pos>, msg: impl Into<String>, help: impl Into<String>) {
        let help = help.into();
        let mut d = Diagnostic::warning(pos, msg);
        if !help.is_empty() {
            d.help = Some(help);
        }
        self.diags.push(d);
    }

    fn section(&self, name: &str) -> Option<&'a Node> {
        self.root.get(name)
    }

    fn build_all(&mut self) {
        let root = self.root;
        let Value::Object(members) = &root.value else {
            self.error(
                pos_of(root),
                format!("a tailnet policy file is an object, not {}", root.kind()),
                "write `{ \"acls\": [ ... ] }`",
            );
            return;
        };
        let mut seen = BTreeSet::new();
        for (k, v) in members {
            if !seen.insert(k.name.as_str()) {
                self.warn(
                    Some(k.pos),
                    format!(
                        "section \"{}\" is written twice: the last one is used",
                        k.name
                    ),
                    "merge the two",
                );
            }
            if ENFORCED.contains(&k.name.as_str()) {
                continue;
            }
            if let Some((_, why)) = NOT_ENFORCED.iter().find(|(n, _)| *n == k.name) {
                let what = match &v.value {
                    Value::Array(a) => format!(" ({} entries)", a.len()),
                    Value::Object(o) => format!(" ({} entries)", o.len()),
                    _ => String::new(),
                };
                self.not_enforced.push(format!(
                    "\"{}\"{what} (line {}): not enforced by segment: {why}",
                    k.name, k.pos.line
                ));
            } else {
                let all = ENFORCED
                    .iter()
                    .copied()
                    .chain(NOT_ENFORCED.iter().map(|(n, _)| *n));
                let help = match closest(&k.name, all) {
                    Some(c) => format!("did you mean \"{c}\"? (unknown sections are ignored)"),
                    None => {
                        "segment ignores it; check the name against Tailscale's syntax reference"
                            .to_owned()
                    }
                };
                self.warn(Some(k.pos), format!("unknown section \"{}\"", k.name), help);
                self.not_enforced.push(format!(
                    "\"{}\" (line {}): unknown section, ignored",
                    k.name, k.pos.line
                ));
            }
        }
        self.read_groups();
        self.read_hosts();
        self.read_tag_owners();
        self.read_ipsets();
        self.resolve_devices();
        self.read_acls();
        self.read_grants();
        self.read_tests();
    }

    /// Strings of a list, reporting other values.
    fn strings(&mut self, n: &'a Node, what: &str) -> Vec<(&'a str, &'a Node)> {
        match &n.value {
            Value::Array(items) => {
                let mut out = Vec::new();
                for i in items {
                    match &i.value {
                        Value::String(s) => out.push((s.as_str(), i)),
                        _ => self.error(
                            pos_of(i),
                            format!("{what} must be strings, not {}", i.kind()),
                            "quote it",
                        ),
                    }
                }
                out
            }
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    pos_of(n),
                    format!("{what}: expected a list, found {}", n.kind()),
                    "write a list: [\"a\", \"b\"]",
                );
                Vec::new()
            }
        }
    }

    fn object(&mut self, name: &str) -> Vec<(&'a crate::policy::hujson::Key, &'a Node)> {
        let Some(n) = self.section(name) else {
            return Vec::new();
        };
        match &n.value {
            Value::Object(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    pos_of(n),
                    format!("\"{name}\" must be an object, not {}", n.kind()),
                    format!("write \"{name}\": {{ \"key\": [ ... ] }}"),
                );
                Vec::new()
            }
        }
    }

    fn list(&mut self, name: &str) -> Vec<&'a Node> {
        let Some(n) = self.section(name) else {
            return Vec::new();
        };
        match &n.value {
            Value::Array(a) => a.iter().collect(),
            Value::Null => Vec::new(),
            _ => {
                self.error(
                    pos_of(n),
                    format!("\"{name}\" must be a list, not {}", n.kind()),
                    format!("write \"{name}\": [ {{ ... }} ]"),
                );
                Vec::new()
            }
        }
    }

    fn read_groups(&mut self) {
        for (k, v) in self.object("groups") {
            if !k.name.starts_with("group:") {
                self.error(
                    Some(k.pos),
                    format!("group names start with `group:` (\"{}\")", k.name),
                    format!("write \"group:{}\"", k.name),
                );
                continue;
            }
            let mut users = Vec::new();
            for (s, n) in self.strings(v, "group members") {
                if s.starts_with("group:") || s.starts_with("tag:") {
                    self.error(
                        pos_of(n),
                        format!("`{s}` cannot be a member of {}", k.name),
                        "groups hold users (login names); Tailscale groups do not nest",
                    );
                } else if s.starts_with("autogroup:") {
                    self.error(
                        pos_of(n),
                        format!("`{s}` cannot be a member of {}", k.name),
                        "groups hold users (login names); use the autogroup directly in rules",
                    );
                } else {
                    users.push(s.to_owned());
                }
            }
            self.groups.insert(k.name.clone(), users);
        }
    }

    fn read_hosts(&mut self) {
        for (k, v) in self.object("hosts") {
            let Some(s) = v.as_str() else {
                self.error(
                    pos_of(v),
                    format!(
                        "host \"{}\" must be an address string, not {}",
                        k.name,
                        v.kind()
                    ),
                    "write \"name\": \"100.64.0.1\" or \"10.0.0.0/24\"",
                );
                continue;
            };
            match parse_net_lenient(s) {
                Ok((net, truncated)) => {
                    if truncated {
                        self.warn(
                            Some(v.inner()),
                            format!("`{s}` has host bits set: it means {net}"),
                            format!("write `{net}`"),
                        );
                    }
                    self.hosts.insert(k.name.clone(), vec![net]);
                }
                Err(m) => self.error(Some(v.inner()), m, "a host is an IP address or a CIDR"),
            }
        }
    }

    fn read_tag_owners(&mut self) {
        for (k, v) in self.object("tagOwners") {
            let Some(name) = k.name.strip_prefix("tag:") else {
                self.error(
                    Some(k.pos),
                    format!(
                        "keys of tagOwners are tags (`tag:NAME`), not \"{}\"",
                        k.name
                    ),
                    format!("write \"tag:{}\"", k.name),
                );
                continue;
            };
            let _ = self.strings(v, "tag owners");
            self.tags.insert(name.to_owned(), k.pos);
        }
    }

    fn read_ipsets(&mut self) {
        let entries = self.object("ipsets");
        let mut raw: BTreeMap<String, Vec<(&'a str, &'a Node)>> = BTreeMap::new();
        for (k, v) in &entries {
            if !k.name.starts_with("ipset:") {
                self.error(
                    Some(k.pos),
                    format!("IP set names start with `ipset:` (\"{}\")", k.name),
                    format!("write \"ipset:{}\"", k.name),
                );
                continue;
            }
            let items = self.strings(v, "IP set entries");
            raw.insert(k.name.clone(), items);
        }
        let names: Vec<String> = raw.keys().cloned().collect();
        for name in names {
            let mut stack = Vec::new();
            self.ipset(&name, &raw, &mut stack);
        }
    }

    /// Resolves an IP set: entries in order, `add X` / `remove X` (or a
    /// bare entry, which adds), where X is an address, CIDR, range
    /// `a-b`, host alias or another `ipset:`.
    fn ipset(
        &mut self,
        name: &str,
        raw: &BTreeMap<String, Vec<(&'a str, &'a Node)>>,
        stack: &mut Vec<String>,
    ) -> Vec<IpNet> {
        if let Some(done) = self.ipsets.get(name) {
            return done.clone();
        }
        if stack.iter().any(|s| s == name) {
            return Vec::new();
        }
        stack.push(name.to_owned());
        let mut set = RangeSet::default();
        for (text, node) in raw.get(name).cloned().unwrap_or_default() {
            let (remove, what) = if let Some(r) = text.strip_prefix("remove ") {
                (true, r.trim())
            } else if let Some(a) = text.strip_prefix("add ") {
                (false, a.trim())
            } else {
                (false, text.trim())
            };
            let nets: Vec<IpNet> = if what.starts_with("ipset:") {
                if !raw.contains_key(what) {
                    self.error(
                        Some(node.inner()),
                        format!("IP set `{what}` is not defined"),
                        "define it under \"ipsets\"",
                    );
                    continue;
                }
                if stack.iter().any(|s| s == what) {
                    self.error(
                        Some(node.inner()),
                        format!("cycle: {} → {what}", stack.join(" → ")),
                        "an IP set cannot contain itself",
                    );
                    continue;
                }
                self.ipset(what, raw, stack)
            } else if let Some(h) = self.hosts.get(what) {
                h.clone()
            } else if let Some(r) = parse_range(what) {
                match r {
                    Ok(nets) => nets,
                    Err(m) => {
                        self.error(
                            Some(node.inner()),
                            m,
                            "write `FIRST-LAST` with two addresses of one family",
                        );
                        continue;
                    }
                }
            } else {
                match parse_net_lenient(what) {
                    Ok((n, _)) => vec![n],
                    Err(m) => {
                        self.error(
                            Some(node.inner()),
                            m,
                            "IP set entries are addresses, CIDRs, ranges `a-b`, host aliases or `ipset:` names, optionally after `add ` or `remove `",
                        );
                        continue;
                    }
                }
            };
            for n in nets {
                if remove {
                    set.remove(n);
                } else {
                    set.add(n);
                }
            }
        }
        stack.pop();
        let nets = set.to_nets();
        self.ipsets.insert(name.to_owned(), nets.clone());
        nets
    }

    fn tag_owner_entries(&self) -> BTreeMap<String, Vec<OwnerEntry>> {
        let mut out = BTreeMap::new();
        for (k, v) in self
            .section("tagOwners")
            .map_or(&[][..], |n| match &n.value {
                Value::Object(m) => m.as_slice(),
                _ => &[],
            })
        {
            let Some(tag) = k.name.strip_prefix("tag:") else {
                continue;
            };
            let entries = match &v.value {
                Value::Array(a) => a
                    .iter()
                    .filter_map(Node::as_str)
                    .map(OwnerEntry::parse)
                    .collect(),
                _ => Vec::new(),
            };
            out.insert(tag.to_owned(), entries);
        }
        out
    }

    fn resolve_devices(&mut self) {
        let owners = self.tag_owner_entries();
        let defined: BTreeSet<String> = self.tags.keys().cloned().collect();
        let groups = self.groups.clone();
        let group_has = |g: &str, u: &str| {
            groups
                .get(&format!("group:{g}"))
                .is_some_and(|m| m.iter().any(|x| x == u))
        };
        self.membership = resolve_membership(
            self.inventory,
            &TagRules {
                defined: &defined,
                owners: &owners,
                group_has: &group_has,
                any_tag_roles: TAG_ANY_ROLES,
            },
        );
        // `svc:NAME` in a device's tags says it serves a Tailscale Service;
        // it is not a tag claim.
        self.membership.retain(|m| !m.tag.starts_with("svc:"));
        for d in &self.inventory.devices {
            let tags: BTreeSet<String> = self
                .membership
                .iter()
                .filter(|m| m.granted && m.device == d.name)
                .map(|m| m.tag.trim_start_matches("tag:").to_owned())
                .collect();
            let tagged = !tags.is_empty();
            self.devs.push(Dev {
                addrs: d.addresses.clone(),
                user: if tagged { None } else { d.owner.clone() },
                tags,
                tagged,
                services: d
                    .tags
                    .iter()
                    .filter(|t| t.starts_with("svc:"))
                    .cloned()
                    .collect(),
                member: true,
            });
        }
        // Hypothetical devices for the principals of tests (pass two).
        let mut used: BTreeSet<IpAddr> = self
            .inventory
            .devices
            .iter()
            .flat_map(|d| d.addresses.iter().copied())
            .collect();
        for nets in self.hosts.values().chain(self.ipsets.values()) {
            for n in nets {
                if n.prefix_len() == n.max_prefix_len() {
                    used.insert(n.addr());
                }
            }
        }
        let mut next4: u32 = u32::from(Ipv4Addr::new(100, 127, 255, 254));
        let mut next6: u128 = u128::from(
            "fd7a:115c:a1e0:5e9::fffe"
                .parse::<Ipv6Addr>()
                .expect("literal"),
        );
        let phantoms: Vec<(String, Vec<Phantom>)> = self
            .phantoms
            .iter()
            .map(|p| (p.clone(), self.phantom_of(p)))
            .collect();
        for (principal, list) in phantoms {
            let mut ids = Vec::new();
            for ph in list {
                let mut addrs = Vec::new();
                if let Some(a) = ph.addr {
                    addrs.push(a);
                }
                while ph.addr.is_none() {
                    let a = IpAddr::V4(Ipv4Addr::from(next4));
                    next4 -= 1;
                    if used.insert(a) {
                        addrs.push(a);
                        break;
                    }
                }
                while ph.addr.is_none() {
                    let a = IpAddr::V6(Ipv6Addr::from(next6));
                    next6 -= 1;
                    if used.insert(a) {
                        addrs.push(a);
                        break;
                    }
                }
                if let (Some(g), Some(u)) = (&ph.group, &ph.user) {
                    self.groups.entry(g.clone()).or_default().push(u.clone());
                }
                if let Some(u) = &ph.user
                    && !ph.roles.is_empty()
                {
                    self.roles
                        .entry(u.clone())
                        .or_default()
                        .extend(ph.roles.clone());
                }
                ids.push(self.devs.len());
                self.devs.push(Dev {
                    addrs,
                    user: ph.user,
                    tags: ph.tags,
                    tagged: ph.tagged,
                    services: ph.services,
                    member: ph.member,
                });
            }
            self.phantom_devs.insert(principal, ids);
        }
    }

    fn address_phantom(&self, p: &str, ip: IpAddr, blank: Phantom) -> Phantom {
        match self.profiles.get(p) {
            Some(Profile::OwnedBy(u)) => Phantom {
                user: Some(u.clone()),
                addr: Some(ip),
                ..blank
            },
            Some(Profile::Tagged(t)) => Phantom {
                tags: [t.clone()].into(),
                tagged: true,
                addr: Some(ip),
                ..blank
            },
            _ => Phantom {
                user: Some(format!("<the owner of {ip}>")),
                addr: Some(ip),
                ..blank
            },
        }
    }

    /// A host alias that is one Tailscale address the inventory does not know.
    fn unknown_host_address(&self, p: &str) -> Option<IpAddr> {
        let nets = self.hosts.get(p)?;
        let [n] = nets.as_slice() else { return None };
        let ip = n.addr();
        (n.prefix_len() == n.max_prefix_len()
            && tailnet_ranges().iter().any(|r| r.contains(&ip))
            && self.inventory.devices.is_empty())
        .then_some(ip)
    }

    /// The hypothetical devices standing for a test principal (none for
    /// addresses and hosts, which are their own addresses).
    fn phantom_of(&self, p: &str) -> Vec<Phantom> {
        let blank = Phantom {
            user: None,
            tags: BTreeSet::new(),
            tagged: false,
            services: BTreeSet::new(),
            member: true,
            addr: None,
            group: None,
            roles: Vec::new(),
        };
        if p.starts_with("svc:") {
            return vec![Phantom {
                services: [p.to_owned()].into(),
                ..blank
            }];
        }
        if let Some(t) = p.strip_prefix("tag:") {
            return vec![Phantom {
                tags: [t.to_owned()].into(),
                tagged: true,
                ..blank
            }];
        }
        if p.starts_with("group:") {
            // As Tailscale decides it: a user who is in this group and no
            // other (not any particular member).
            return vec![Phantom {
                user: Some(format!("<a member of {p}>")),
                group: Some(p.to_owned()),
                ..blank
            }];
        }
        match p {
            "autogroup:member" => {
                return vec![Phantom {
                    user: Some("<a member>".to_owned()),
                    ..blank
                }];
            }
            "autogroup:tagged" => {
                return vec![Phantom {
                    tagged: true,
                    ..blank
                }];
            }
            _ => {}
        }
        if let Some(role) = p.strip_prefix("autogroup:") {
            return vec![Phantom {
                user: Some(format!("<a user with role {role}>")),
                roles: vec![role.to_owned()],
                ..blank
            }];
        }
        if let Some(ip) = self.unknown_host_address(p) {
            return vec![self.address_phantom(p, ip, blank)];
        }
        if p.contains('@') {
            let (member, roles) = match self.profiles.get(p) {
                Some(Profile::Outsider) => (false, Vec::new()),
                Some(Profile::Member(role)) => {
                    (true, role.iter().map(|r| (*r).to_owned()).collect())
                }
                _ => (true, Vec::new()),
            };
            return vec![Phantom {
                user: Some(p.to_owned()),
                member,
                roles,
                ..blank
            }];
        }
        if let Ok(ip) = p.parse::<IpAddr>()
            && tailnet_ranges().iter().any(|r| r.contains(&ip))
            && self.inventory.devices.is_empty()
        {
            // A Tailscale address the inventory does not know: Tailscale
            // knew its device; segment takes it for a member's device
            // unless an assumption says otherwise.
            return vec![self.address_phantom(p, ip, blank)];
        }
        Vec::new()
    }

    fn segment(&mut self, kind: SegmentKind, name: &str, nets: Vec<IpNet>) -> SegmentId {
        if let Some(id) = self.seg_ids.get(&(kind, name.to_owned())) {
            return *id;
        }
        let id = self.segments.len() as SegmentId;
        self.segments.push(Segment {
            kind,
            name: name.to_owned(),
            prefixes: normalize(nets),
            mode: None,
            pos: None,
        });
        self.seg_ids.insert((kind, name.to_owned()), id);
        id
    }

    fn dev_nets(&self, f: impl Fn(&Dev) -> bool) -> Vec<IpNet> {
        self.devs
            .iter()
            .filter(|d| f(d))
            .flat_map(|d| d.addrs.iter().map(|a| IpNet::from(*a)))
            .collect()
    }

    fn user_known(&self, login: &str) -> bool {
        self.inventory.users.iter().any(|u| u.login == login)
            || self
                .inventory
                .devices
                .iter()
                .any(|d| d.owner.as_deref() == Some(login))
    }

    fn user_segment(&mut self, login: &str) -> SegmentId {
        let nets = self.dev_nets(|d| d.user.as_deref() == Some(login));
        self.segment(SegmentKind::User, login, nets)
    }

    /// Resolves one source or destination (without ports).
    fn target(&mut self, text: &str, node: &Node, side: Side, rule: &str) -> Option<Target> {
        let at = Some(node.inner());
        if text == "*" {
            return Some(Target::Sel(Selector::Any));
        }
        if let Some(ag) = text.strip_prefix("autogroup:") {
            return match ag {
                "member" => {
                    let nets = self.dev_nets(|d| d.user.is_some() && d.member);
                    Some(Target::Sel(Selector::Segment(self.segment(
                        SegmentKind::Alias,
                        text,
                        nets,
                    ))))
                }
                "tagged" => {
                    let nets = self.dev_nets(|d| d.tagged);
                    Some(Target::Sel(Selector::Segment(self.segment(
                        SegmentKind::Alias,
                        text,
                        nets,
                    ))))
                }
                "self" if side == Side::Src => {
                    self.error(
                        at,
                        format!("{rule}: \"autogroup:self\" not valid on the src side of a rule"),
                        "autogroup:self is a destination: the devices of the source user",
                    );
                    None
                }
                "self" => Some(Target::SelfDevices),
                "internet" if side == Side::Src => {
                    self.error(
                        at,
                        format!("{rule}: autogroup:internet is only a destination"),
                        "use it in dst, for traffic toward the internet",
                    );
                    None
                }
                "internet" => {
                    let mut known: Vec<IpNet> = self.dev_nets(|_| true);
                    known.extend(tailnet_ranges());
                    known.extend(
                        NOT_INTERNET
                            .iter()
                            .map(|n| n.parse::<IpNet>().expect("literal")),
                    );
                    let nets = complement(&known);
                    Some(Target::Sel(Selector::Segment(self.segment(
                        SegmentKind::Alias,
                        text,
                        nets,
                    ))))
                }
                "danger-all" if side == Side::Src => Some(Target::Sel(Selector::Any)),
                "danger-all" => {
                    self.error(
                        at,
                        format!("{rule}: cannot use autogroup:danger-all as a dst"),
                        "use \"*\" for every destination",
                    );
                    None
                }
                "shared" | "nonroot" => {
                    self.warn(
                        at,
                        format!(
                            "{rule}: `{text}` has no meaning on a plain network: it matches nothing here"
                        ),
                        if ag == "shared" {
                            "devices shared from other tailnets are not in segment's inventory; list their addresses instead"
                        } else {
                            "autogroup:nonroot is for Tailscale SSH users"
                        },
                    );
                    self.not_enforced.push(format!(
                        "{rule} (line {}): `{text}` matches nothing",
                        node.pos.line
                    ));
                    Some(Target::Sel(Selector::Segment(self.segment(
                        SegmentKind::Alias,
                        text,
                        Vec::new(),
                    ))))
                }
                role if ROLE_AUTOGROUPS.contains(&role) => {
                    let users: BTreeSet<String> = self
                        .roles
                        .iter()
                        .filter(|(_, r)| r.iter().any(|r| r == role))
                        .map(|(u, _)| u.clone())
                        .collect();
                    let nets =
                        self.dev_nets(|d| d.user.as_ref().is_some_and(|u| users.contains(u)));
                    Some(Target::Sel(Selector::Segment(self.segment(
                        SegmentKind::Alias,
                        text,
                        nets,
                    ))))
                }
                _ => {
                    let known = [
                        "member",
                        "tagged",
                        "self",
                        "internet",
                        "danger-all",
                        "admin",
                        "owner",
                        "it-admin",
                        "network-admin",
                        "billing-admin",
                        "auditor",
                        "shared",
                    ];
                    self.error(
                        at,
                        format!("{rule}: unknown autogroup `{text}`"),
                        match closest(ag, known) {
                            Some(c) => format!("did you mean `autogroup:{c}`?"),
                            None => format!(
                                "autogroups: {}",
                                known.map(|k| format!("autogroup:{k}")).join(", ")
                            ),
                        },
                    );
                    None
                }
            };
        }
        if text.starts_with("group:") {
            let Some(members) = self.groups.get(text).cloned() else {
                let help = match closest(text, self.groups.keys().map(String::as_str)) {
                    Some(c) => format!("did you mean `{c}`? Otherwise define it under \"groups\""),
                    None => "define it under \"groups\"".to_owned(),
                };
                self.warn(
                    at,
                    format!("{rule}: `{text}` is not defined: it matches nothing"),
                    help,
                );
                return Some(Target::Sel(Selector::Segment(self.segment(
                    SegmentKind::Group,
                    text.trim_start_matches("group:"),
                    Vec::new(),
                ))));
            };
            let nets = self.dev_nets(|d| d.user.as_ref().is_some_and(|u| members.contains(u)));
            for m in &members {
                self.user_segment(m);
            }
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Group,
                text.trim_start_matches("group:"),
                nets,
            ))));
        }
        if let Some(t) = text.strip_prefix("tag:") {
            if !self.tags.contains_key(t) {
                let help = match closest(t, self.tags.keys().map(String::as_str)) {
                    Some(c) => format!("did you mean `tag:{c}`? Tags are defined by \"tagOwners\""),
                    None => format!("add \"{text}\": [OWNERS] to \"tagOwners\""),
                };
                // Tailscale refuses the file; segment loads it (real files
                // in git carry such leftovers) but the tag matches nothing.
                self.warn(
                    at,
                    format!("{rule}: tag not found: \"{text}\" (Tailscale refuses this policy); it matches nothing here"),
                    help,
                );
                return Some(Target::Sel(Selector::Segment(self.segment(
                    SegmentKind::Tag,
                    t,
                    Vec::new(),
                ))));
            }
            let nets = self.dev_nets(|d| d.tags.contains(t));
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Tag,
                t,
                nets,
            ))));
        }
        if text.starts_with("ipset:") {
            let Some(nets) = self.ipsets.get(text).cloned() else {
                self.error(
                    at,
                    format!("{rule}: IP set `{text}` is not defined"),
                    "define it under \"ipsets\"",
                );
                return None;
            };
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Alias,
                text,
                nets,
            ))));
        }
        if text.starts_with("svc:") {
            // Tailscale Services: their addresses are Tailscale's; in the
            // inventory, a device that lists `svc:NAME` among its tags
            // serves it.
            let nets = self.dev_nets(|d| d.services.contains(text));
            if nets.is_empty() && self.phantoms.is_empty() {
                self.not_enforced.push(format!(
                    "{rule} (line {}): `{text}` (a Tailscale Service) has no address: list `{text}` in the tags of the inventory devices that serve it",
                    node.pos.line
                ));
            }
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Alias,
                text,
                nets,
            ))));
        }
        if let Some(pattern) = text.strip_prefix("user:") {
            // `user:*@example.com`: every user whose login matches.
            let nets = self.dev_nets(|d| d.user.as_deref().is_some_and(|u| glob_match(pattern, u)));
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Alias,
                text,
                nets,
            ))));
        }
        if text.contains('@') {
            return Some(Target::Sel(Selector::Segment(self.user_segment(text))));
        }
        if let Some(nets) = self.hosts.get(text).cloned() {
            return Some(Target::Sel(Selector::Segment(self.segment(
                SegmentKind::Host,
                text,
                nets,
            ))));
        }
        if let Some(r) = parse_range(text) {
            return match r {
                Ok(nets) => {
                    let id = self.segment(SegmentKind::Alias, text, nets);
                    Some(Target::Sel(Selector::Segment(id)))
                }
                Err(m) => {
                    self.error(
                        at,
                        format!("{rule}: {m}"),
                        "write `FIRST-LAST` with two addresses of one family",
                    );
                    None
                }
            };
        }
        match parse_net_lenient(text) {
            Ok((net, truncated)) => {
                if side == Side::GrantDst && net.prefix_len() == 0 {
                    self.error(
                        at,
                        format!("{rule}: dst \"{text}\": to allow all IP addresses, use \"*\" or \"autogroup:internet\""),
                        "Tailscale refuses this destination",
                    );
                    return None;
                }
                if truncated {
                    self.warn(
                        at,
                        format!("{rule}: `{text}` has host bits set: it means {net}"),
                        format!("write `{net}`"),
                    );
                }
                Some(Target::Sel(Selector::Net(net)))
            }
            Err(_)
                if text
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '/' || c == ':')
                    && text.contains(['.', ':']) =>
            {
                self.error(
                    at,
                    format!("{rule}: `{text}` is not a valid address or CIDR"),
                    "write an IPv4 or IPv6 address, optionally with /LEN",
                );
                None
            }
            Err(_) => {
                let help = match closest(text, self.hosts.keys().map(String::as_str)) {
                    Some(c) => format!("did you mean the host `{c}`?"),
                    None => "users are written with their domain (`alice@example.com`); hosts must be defined under \"hosts\"".to_owned(),
                };
                self.error(
                    at,
                    format!("{rule}: `{text}` is not a user, group, tag, host, IP set or address"),
                    help,
                );
                None
            }
        }
    }

    /// The users a source list stands for, for `autogroup:self`; `None` (and
    /// an error) when the list holds something that is not users.
    fn self_users(
        &mut self,
        srcs: &[(&str, &Node)],
        rule: &str,
        at: Option<Pos>,
    ) -> Option<Vec<String>> {
        let mut users = BTreeSet::new();
        for (s, _) in srcs {
            if s.contains('@') && !s.starts_with("group:") && !s.starts_with("tag:") {
                users.insert((*s).to_owned());
            } else if s.starts_with("group:") {
                users.extend(self.groups.get(*s).cloned().unwrap_or_default());
            } else if let Some(pattern) = s.strip_prefix("user:") {
                users.extend(
                    self.devs
                        .iter()
                        .filter_map(|d| d.user.clone())
                        .filter(|u| glob_match(pattern, u)),
                );
            } else if *s == "autogroup:member" || (*s == "*" && !rule.starts_with("grant")) {
                users.extend(
                    self.devs
                        .iter()
                        .filter(|d| d.member)
                        .filter_map(|d| d.user.clone()),
                );
            } else if let Some(role) = s
                .strip_prefix("autogroup:")
                .filter(|r| ROLE_AUTOGROUPS.contains(r))
            {
                let with: Vec<String> = self
                    .roles
                    .iter()
                    .filter(|(_, r)| r.iter().any(|r| r == role))
                    .map(|(u, _)| u.clone())
                    .collect();
                users.extend(with);
            } else {
                self.error(
                    at,
                    format!("{rule}: autogroup:self can only be used with users, groups, or supported autogroups (not `{s}`)"),
                    "put the autogroup:self destination in its own rule, whose sources are users, groups or autogroup:member",
                );
                return None;
            }
        }
        Some(users.into_iter().collect())
    }

    /// [`Self::unknown_field`] for every member of `label` not in `fields`.
    fn unknown_fields(
        &mut self,
        label: &str,
        members: &[(Key, Node)],
        fields: &[&str],
        otherwise: &str,
    ) {
        for (k, _) in members {
            if !fields.contains(&k.name.as_str()) {
                self.unknown_field(label, &k.name, k.pos, fields, otherwise);
            }
        }
    }

    /// An error for a field of `label` that is not one of `fields`: the
    /// closest known name if one is near, else what the entry holds.
    fn unknown_field(
        &mut self,
        label: &str,
        name: &str,
        pos: Pos,
        fields: &[&str],
        otherwise: &str,
    ) {
        let help = match closest(name, fields.iter().copied()) {
            Some(c) => format!("did you mean \"{c}\"?"),
            None => otherwise.to_owned(),
        };
        self.error(
            Some(pos),
            format!("{label}: unknown field \"{name}\""),
            help,
        );
    }

    fn read_acls(&mut self) {
        for (i, acl) in self.list("acls").into_iter().enumerate() {
            let label = format!("acl #{}", i + 1);
            let Value::Object(members) = &acl.value else {
                self.error(
                    pos_of(acl),
                    format!("{label} must be an object, not {}", acl.kind()),
                    "write { \"action\": \"accept\", \"src\": [...], \"dst\": [...] }",
                );
                continue;
            };
            self.unknown_fields(
                &label,
                members,
                &["action", "src", "dst", "proto", "users", "ports"],
                "an acl has action, src, dst and optionally proto",
            );
            match acl.get("action").map(|a| (a, a.as_str())) {
                Some((_, Some("accept"))) => {}
                Some((a, Some(other))) => {
                    self.error(Some(a.inner()), format!("{label}: action=\"{other}\" is not supported"), "Tailscale rules only accept: write \"action\": \"accept\" (everything not accepted is denied)");
                    continue;
                }
                Some((a, None)) => {
                    self.error(
                        pos_of(a),
                        format!("{label}: action must be a string"),
                        "write \"action\": \"accept\"",
                    );
                    continue;
                }
                None => {
                    self.error(
                        pos_of(acl),
                        format!("{label} has no \"action\""),
                        "add \"action\": \"accept\"",
                    );
                    continue;
                }
            }
            let src_node = acl.get("src").or_else(|| acl.get("users"));
            let dst_node = acl.get("dst").or_else(|| acl.get("ports"));
            let (Some(src_node), Some(dst_node)) = (src_node, dst_node) else {
                self.error(
                    pos_of(acl),
                    format!("{label} needs \"src\" and \"dst\""),
                    "add \"src\": [...] and \"dst\": [\"target:ports\"]",
                );
                continue;
            };
            let protos = match acl.get("proto") {
                None => DEFAULT_PROTOCOLS.to_vec(),
                Some(p) => {
                    let text = match &p.value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.clone(),
                        _ => {
                            self.error(
                                pos_of(p),
                                format!("{label}: proto must be a string"),
                                "write \"proto\": \"tcp\"",
                            );
                            continue;
                        }
                    };
                    match proto_numbers(&text) {
                        Ok(v) => v,
                        Err(m) => {
                            self.error(Some(p.inner()), format!("{label}: {m}"), proto_help());
                            continue;
                        }
                    }
                }
            };
            let srcs = self.strings(src_node, "sources");
            let dsts = self.strings(dst_node, "destinations");
            let mut src_sel = Vec::new();
            let mut bad = false;
            for (s, n) in &srcs {
                match self.target(s, n, Side::Src, &label) {
                    Some(Target::Sel(sel)) => src_sel.push(sel),
                    Some(Target::SelfDevices) => {}
                    None => bad = true,
                }
            }
            let mut dests = Vec::new();
            let mut self_ports: Option<PortSet> = None;
            for (d, n) in &dsts {
                let (target, ports) = match split_dest(d) {
                    Ok(x) => x,
                    Err((m, h)) => {
                        self.error(Some(n.inner()), format!("{label}: dst=\"{d}\": {m}"), h);
                        bad = true;
                        continue;
                    }
                };
                match self.target(target, n, Side::Dst, &label) {
                    Some(Target::Sel(sel)) => dests.push(Dest {
                        selector: sel,
                        ports,
                    }),
                    Some(Target::SelfDevices) => {
                        self_ports = Some(match self_ports.take() {
                            None => ports,
                            Some(p) => merge_ports(&p, &ports),
                        });
                    }
                    None => bad = true,
                }
            }
            if bad {
                continue;
            }
            let text = format!(
                "accept {} -> {}{}",
                srcs.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(","),
                dsts.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(","),
                acl.get("proto")
                    .and_then(|p| match &p.value {
                        Value::String(s) | Value::Number(s) => Some(format!(" proto {s}")),
                        _ => None,
                    })
                    .unwrap_or_default()
            );
            let origin = RuleOrigin::Acl(i);
            self.push_rules(
                origin,
                &label,
                &srcs,
                src_sel,
                dests,
                self_ports.map(|p| vec![(protos.clone(), p)]),
                vec![(protos, None)],
                text,
                acl.pos,
            );
        }
    }

    /// Adds the rules of one acl or grant: `parts` are (protocols, ports
    /// override) groups; a `None` override keeps each destination's own ports.
    #[allow(clippy::too_many_arguments)]
    fn push_rules(
        &mut self,
        origin: RuleOrigin,
        label: &str,
        srcs: &[(&str, &Node)],
        src_sel: Vec<Selector>,
        dests: Vec<Dest>,
        self_parts: Option<Vec<(Vec<u8>, PortSet)>>,
        parts: Vec<(Vec<u8>, Option<PortSet>)>,
        text: String,
        pos: Pos,
    ) {
        if !dests.is_empty() && !src_sel.is_empty() {
            for (protos, ports) in &parts {
                let dst = dests
                    .iter()
                    .map(|d| Dest {
                        selector: d.selector.clone(),
                        ports: ports.clone().unwrap_or_else(|| d.ports.clone()),
                    })
                    .collect();
                self.rules.push(Rule {
                    origin,
                    name: None,
                    src: src_sel.clone(),
                    dst,
                    protos: protos.clone(),
                    text: text.clone(),
                    pos: Some(pos),
                });
            }
        }
        if let Some(self_parts) = self_parts {
            let Some(users) = self.self_users(srcs, label, Some(pos)) else {
                return;
            };
            for u in users {
                let id = self.user_segment(&u);
                for (protos, ports) in &self_parts {
                    self.rules.push(Rule {
                        origin,
                        name: None,
                        src: vec![Selector::Segment(id)],
                        dst: vec![Dest {
                            selector: Selector::Segment(id),
                            ports: ports.clone(),
                        }],
                        protos: protos.clone(),
                        text: format!("{text} (autogroup:self for {u})"),
                        pos: Some(pos),
                    });
                }
            }
        }
    }

    fn read_grants(&mut self) {
        const FIELDS: &[&str] = &["src", "dst", "ip", "app", "via", "srcPosture"];
        for (i, g) in self.list("grants").into_iter().enumerate() {
            let label = format!("grant #{}", i + 1);
            let Value::Object(members) = &g.value else {
                self.error(
                    pos_of(g),
                    format!("{label} must be an object, not {}", g.kind()),
                    "write { \"src\": [...], \"dst\": [...], \"ip\": [\"*\"] }",
                );
                continue;
            };
            self.unknown_fields(
                &label,
                members,
                FIELDS,
                "a grant has src, dst, and ip and/or app (optionally via, srcPosture)",
            );
            let (Some(src_node), Some(dst_node)) = (g.get("src"), g.get("dst")) else {
                self.error(
                    pos_of(g),
                    format!("{label} needs \"src\" and \"dst\""),
                    "add \"src\": [...] and \"dst\": [...]",
                );
                continue;
            };
            let ip = g
                .get("ip")
                .map(|n| self.strings(n, "ip entries"))
                .unwrap_or_default();
            let app = g.get("app");
            let app_empty = match app.map(|a| &a.value) {
                None | Some(Value::Null) => true,
                Some(Value::Object(o)) => o.is_empty(),
                Some(_) => false,
            };
            if ip.is_empty() && app_empty {
                self.error(
                    pos_of(g),
                    format!("{label}: ip and app can not both be empty"),
                    "add \"ip\": [\"*\"] (or ports such as \"tcp:443\")",
                );
                continue;
            }
            if let Some(app) = app.filter(|_| !app_empty) {
                if let Value::Object(caps) = &app.value {
                    for (k, _) in caps {
                        let bad_form = !k.name.contains('/') || k.name.contains("://");
                        let own = k.name.strip_prefix("tailscale.com/cap/");
                        if bad_form {
                            self.warn(Some(k.pos), format!("{label}: capability name must have the form {{domain}}/{{path}} (Tailscale refuses this policy)"), "write e.g. \"example.com/cap/my-app\" (no scheme)");
                        } else if k.name.starts_with("tailscale.com/")
                            && !own.is_some_and(|c| TAILSCALE_CAPS.contains(&c))
                        {
                            self.warn(Some(k.pos), format!("{label}: capability name must not be in the tailscale.com domain (Tailscale refuses this policy): `{}`", k.name), format!("Tailscale's own capabilities are tailscale.com/cap/{}; use your own domain for others", TAILSCALE_CAPS.join(", tailscale.com/cap/")));
                        }
                    }
                }
                self.not_enforced.push(format!(
                    "{label} (line {}): \"app\" capabilities are for applications, not a packet filter: not enforced",
                    g.pos.line
                ));
            }
            let mut skip = None;
            if let Some(via) = g.get("via") {
                for (v, n) in self.strings(via, "via entries") {
                    if let Some(t) = v.strip_prefix("tag:") {
                        if !self.tags.contains_key(t) {
                            self.warn(
                                Some(n.inner()),
                                format!(
                                    "{label}: tag \"{v}\" not found (Tailscale refuses this policy)"
                                ),
                                format!("add \"{v}\" to \"tagOwners\""),
                            );
                        }
                    } else {
                        self.error(
                            Some(n.inner()),
                            format!("{label}: via can only be a tag (`{v}`)"),
                            "write \"via\": [\"tag:ROUTER\"]",
                        );
                    }
                }
                self.warn(
                    Some(via.pos),
                    format!("{label}: \"via\" is not enforced: the grant is enforced as if it had none"),
                    "on a plain network there is no Tailscale router to route through; segment admits the grant's traffic whatever path it takes",
                );
                self.not_enforced.push(format!(
                    "{label} (line {}): \"via\" not enforced (the grant applies whatever the route)",
                    via.pos.line
                ));
            }
            if g.get("srcPosture").is_some() {
                skip = Some("\"srcPosture\" needs Tailscale's device posture attributes");
            }
            let srcs = self.strings(src_node, "sources");
            let dsts = self.strings(dst_node, "destinations");
            // Protocol groups from `ip`.
            let mut parts: BTreeMap<Vec<u8>, Vec<PortRange>> = BTreeMap::new();
            let mut bad = false;
            for (s, n) in &ip {
                match ip_entry(s) {
                    Ok((protos, ports)) => {
                        let e = parts.entry(protos).or_default();
                        match ports {
                            PortSet::Any => e.push(PortRange {
                                lo: 0,
                                hi: u16::MAX,
                            }),
                            PortSet::Ranges(r) => e.extend(r),
                        }
                    }
                    Err((m, h)) => {
                        self.error(Some(n.inner()), format!("{label}: {m}"), h);
                        bad = true;
                    }
                }
            }
            let mut src_sel = Vec::new();
            let internet_dst = dsts.iter().any(|(d, _)| *d == "autogroup:internet");
            if internet_dst && !app_empty {
                self.error(
                    pos_of(dst_node),
                    format!("{label}: cannot use app grants with autogroup:internet"),
                    "put the app capability in a grant of its own",
                );
                bad = true;
            }
            for (s, n) in &srcs {
                match self.target(s, n, Side::Src, &label) {
                    Some(Target::Sel(sel)) => src_sel.push(sel),
                    Some(Target::SelfDevices) => {}
                    None => bad = true,
                }
            }
            let mut dests = Vec::new();
            let mut has_self = false;
            for (d, n) in &dsts {
                match self.target(d, n, Side::GrantDst, &label) {
                    Some(Target::Sel(sel)) => dests.push(Dest {
                        selector: sel,
                        ports: PortSet::Any,
                    }),
                    Some(Target::SelfDevices) => has_self = true,
                    None => bad = true,
                }
            }
            if bad {
                continue;
            }
            if has_self && self.self_users(&srcs, &label, Some(g.pos)).is_none() {
                continue;
            }
            if let Some(why) = skip {
                self.warn(
                    Some(g.pos),
                    format!("{label} is not enforced: {why}"),
                    "segment admits none of its traffic (unless another rule does); remove the field to enforce it as a plain grant",
                );
                self.not_enforced.push(format!(
                    "{label} (line {}): not enforced: {why}",
                    g.pos.line
                ));
                continue;
            }
            if parts.is_empty() {
                continue;
            }
            let parts: Vec<(Vec<u8>, PortSet)> = parts
                .into_iter()
                .map(|(p, r)| (p, PortSet::normalized(r)))
                .collect();
            let text = format!(
                "grant {} -> {} ip {}",
                srcs.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(","),
                dsts.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(","),
                ip.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(",")
            );
            let self_parts = has_self.then(|| parts.clone());
            let parts = parts.into_iter().map(|(p, r)| (p, Some(r))).collect();
            self.push_rules(
                RuleOrigin::Grant(i),
                &label,
                &srcs,
                src_sel,
                dests,
                self_parts,
                parts,
                text,
                g.pos,
            );
        }
    }

    /// Pass one: checks every test entry and collects its principals.
    fn read_tests(&mut self) {
        for (i, t) in self.list("tests").into_iter().enumerate() {
            let label = format!("test #{}", i + 1);
            let Value::Object(members) = &t.value else {
                self.error(
                    pos_of(t),
                    format!("{label} must be an object"),
                    "write { \"src\": \"alice@example.com\", \"accept\": [\"tag:web:443\"] }",
                );
                continue;
            };
            for (k, _) in members {
                match k.name.as_str() {
                    "src" | "accept" | "deny" | "proto" => {}
                    "srcPostureAttrs" => {
                        self.warn(Some(k.pos), format!("{label}: \"srcPostureAttrs\" is not supported: the test is decided without posture"), "segment does not evaluate device posture");
                        self.not_enforced.push(format!(
                            "{label} (line {}): srcPostureAttrs ignored",
                            k.pos.line
                        ));
                    }
                    other => self.unknown_field(
                        &label,
                        other,
                        k.pos,
                        &["src", "accept", "deny", "proto", "srcPostureAttrs"],
                        "a test has src, accept, deny and optionally proto",
                    ),
                }
            }
            let Some(src) = t.get("src") else {
                self.error(
                    pos_of(t),
                    format!("{label} has no \"src\""),
                    "add \"src\": \"alice@example.com\" (a user, group, tag, host or IP)",
                );
                continue;
            };
            let Some(src_text) = src.as_str() else {
                self.error(
                    pos_of(src),
                    format!("{label}: src must be a string"),
                    "a test has one source",
                );
                continue;
            };
            if t.get("accept").is_none() && t.get("deny").is_none() {
                self.error(
                    pos_of(t),
                    format!("{label} has neither \"accept\" nor \"deny\""),
                    "add \"accept\": [\"target:port\"] and/or \"deny\": [...]",
                );
                continue;
            }
            if let Some(p) = t.get("proto") {
                let text = match &p.value {
                    Value::String(s) | Value::Number(s) => s.clone(),
                    _ => String::new(),
                };
                if let Err(m) = proto_numbers(&text) {
                    self.error(Some(p.inner()), format!("{label}: {m}"), proto_help());
                }
            }
            if self.test_principal(src_text, src, &label, true) {
                self.test_principals.push(src_text.to_owned());
            }
            for key in ["accept", "deny"] {
                let Some(list) = t.get(key) else { continue };
                for (d, n) in self.strings(list, "test destinations") {
                    match split_test_dest(d) {
                        Ok((target, _)) => {
                            if self.test_principal(target, n, &label, false) {
                                self.test_principals.push(target.to_owned());
                            }
                        }
                        Err((m, h)) => {
                            self.error(Some(n.inner()), format!("{label}: \"{d}\": {m}"), h)
                        }
                    }
                }
            }
        }
        let mut seen = BTreeSet::new();
        self.test_principals.retain(|p| seen.insert(p.clone()));
    }

    /// Checks a test's source or destination principal; true when it needs
    /// a hypothetical device (users, groups, tags, autogroups).
    fn test_principal(&mut self, p: &str, node: &Node, label: &str, src: bool) -> bool {
        let at = Some(node.inner());
        let side = if src { "src" } else { "dst" };
        if p.is_empty() {
            self.error(
                Some(node.pos),
                format!("{label}: empty {side}"),
                "name a user, group, tag, host or IP",
            );
            return false;
        }
        if let Some(t) = p.strip_prefix("tag:") {
            if !self.tags.contains_key(t) {
                self.error(
                    at,
                    format!("{label}: {side} tag not found: \"{p}\""),
                    "tags are defined by \"tagOwners\"",
                );
                return false;
            }
            return true;
        }
        if p.starts_with("svc:") {
            return true;
        }
        if p.starts_with("group:") {
            if !src {
                self.error(
                    at,
                    format!("{label}: a group cannot be a test destination (`{p}`)"),
                    "test a user, tag, host or IP",
                );
                return false;
            }
            if !self.groups.contains_key(p) {
                self.error(
                    at,
                    format!("{label}: group `{p}` is not defined"),
                    "define it under \"groups\"",
                );
                return false;
            }
            return true;
        }
        if let Some(ag) = p.strip_prefix("autogroup:") {
            let ok = src && (ag == "member" || ag == "tagged" || ROLE_AUTOGROUPS.contains(&ag));
            if !ok {
                self.error(
                    at,
                    format!("{label}: `{p}` cannot be a test {side}"),
                    if src { "test sources are users, groups, tags, hosts, IPs, autogroup:member or autogroup:tagged" } else { "test destinations are users, tags, hosts or IPs, with one port" },
                );
                return false;
            }
            return true;
        }
        if p.contains('@') {
            if !(self.user_known(p)
                || self.inventory.users.is_empty() && self.inventory.devices.is_empty())
            {
                self.error(at, format!("{label}: user `{p}` is not in the inventory"), "Tailscale fails tests about users that are not in the tailnet; add the user (or a device it owns) to the inventory");
                return false;
            }
            return true;
        }
        let single = |n: &IpNet| n.prefix_len() == n.max_prefix_len();
        if let Some(h) = self.hosts.get(p) {
            if !h.iter().all(single) {
                self.error(
                    at,
                    format!(
                        "{label}: host `{p}` is a network ({}), not one address",
                        h[0]
                    ),
                    "tests name single addresses; test one address of the network",
                );
            }
            return self.unknown_host_address(p).is_some();
        }
        if !p.contains('/')
            && let Ok(ip) = p.parse::<IpAddr>()
        {
            return tailnet_ranges().iter().any(|r| r.contains(&ip))
                && self.inventory.devices.is_empty();
        }
        self.error(
            at,
            format!("{label}: `{p}` is not a user, group, tag, host or single IP address"),
            "tests name single addresses (no CIDR), users (`alice@example.com`), tags or hosts",
        );
        false
    }

    /// Pass two: the test cases, on the hypothetical devices.
    fn make_tests(&mut self) {
        for t in self.list("tests") {
            let Some(src_text) = t.get("src").and_then(Node::as_str) else {
                continue;
            };
            let proto = match t.get("proto").map(|p| &p.value) {
                Some(Value::String(s) | Value::Number(s)) => proto_numbers(s)
                    .ok()
                    .and_then(|v| v.first().copied())
                    .unwrap_or(6),
                _ => 6,
            };
            let Some(src) = self.test_selector(src_text) else {
                continue;
            };
            let mut assertions = Vec::new();
            for (key, expect) in [("accept", Expect::Accept), ("deny", Expect::Deny)] {
                let Some(Value::Array(items)) = t.get(key).map(|n| &n.value) else {
                    continue;
                };
                for n in items {
                    let Some(d) = n.as_str() else { continue };
                    let Ok((target, port)) = split_test_dest(d) else {
                        continue;
                    };
                    let Some(dst) = self.test_selector(target) else {
                        continue;
                    };
                    assertions.push(Assertion {
                        expect,
                        dst,
                        dst_text: d.to_owned(),
                        ports: PortSet::Ranges(vec![PortRange { lo: port, hi: port }]),
                        pos: Some(n.pos),
                    });
                }
            }
            self.tests.push(TestCase {
                src,
                src_text: src_text.to_owned(),
                proto,
                assertions,
                pos: Some(t.pos),
            });
        }
    }

    fn test_selector(&mut self, p: &str) -> Option<Selector> {
        let nets: Vec<IpNet> = if let Some(ids) = self.phantom_devs.get(p) {
            ids.iter()
                .flat_map(|i| self.devs[*i].addrs.iter().map(|a| IpNet::from(*a)))
                .collect()
        } else if let Some(h) = self.hosts.get(p) {
            h.clone()
        } else {
            vec![IpNet::from(p.parse::<IpAddr>().ok()?)]
        };
        Some(Selector::Segment(self.segment(
            SegmentKind::Alias,
            &format!("test principal {p}"),
            nets,
        )))
    }

    fn finish(self) -> Policy {
        let mut warnings = self.diags;
        if self.rules.is_empty() {
            warnings.push(Diagnostic::warning(
                None,
                "the policy admits nothing (no acls or network grants that segment enforces)",
            ));
        }
        Policy {
            source: self.source,
            segments: self.segments,
            rules: self.rules,
            tests: self.tests,
            enforce: Enforce::default(),
            mode: Mode::Enforce,
            warnings,
            membership: self.membership,
            test_bed: None,
            not_enforced: self.not_enforced,
        }
    }
}

fn proto_help() -> String {
    "use a protocol name (tcp, udp, sctp, icmp, ipv6-icmp, igmp, gre, esp, ah, egp, igp, ipv4/ip-in-ip) or an IANA number 0-255".to_owned()
}

/// A protocol name or number → IP protocol numbers. `icmp` is ICMPv4 only
/// (as Tailscale's filter shows); `ipv6-icmp`/`icmpv6` is 58.
pub fn proto_numbers(s: &str) -> Result<Vec<u8>, String> {
    let lower = s.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Ok(DEFAULT_PROTOCOLS.to_vec());
    }
    if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(n, _)| *n == lower) {
        return Ok(vec![*n]);
    }
    match lower.parse::<u16>() {
        Ok(n) if n <= 255 => Ok(vec![n as u8]),
        Ok(_) => Err(format!("protocol number `{s}` is out of range")),
        Err(_) => Err(
            match closest(&lower, PROTOCOL_NAMES.iter().map(|(n, _)| *n)) {
                Some(c) => format!("unknown protocol `{s}` (did you mean `{c}`?)"),
                None => format!("unknown protocol `{s}`"),
            },
        ),
    }
}

/// Tailscale port syntax: `*`, `22`, `80,443`, `8000-8100`. Port 0 only as
/// part of a range.
pub fn ports(s: &str) -> Result<PortSet, (String, String)> {
    if s == "*" {
        return Ok(PortSet::Any);
    }
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str, which: &str| -> Result<u16, (String, String)> {
            x.parse::<u16>().map_err(|_| {
                (
                    format!("port range \"{part}\": invalid {which} integer"),
                    "ports are numbers 1-65535, ranges `a-b`, lists `80,443`, or `*`".to_owned(),
                )
            })
        };
        let lo_n = num(lo, "first")?;
        let hi_n = num(hi, "last")?;
        if lo_n == 0 {
            return Err((
                format!("port range \"{part}\": first port must be >0, or use '*' for wildcard"),
                "write `*` for every port".to_owned(),
            ));
        }
        if lo_n > hi_n {
            return Err((
                format!("port range \"{part}\" is reversed"),
                format!("write `{hi_n}-{lo_n}`"),
            ));
        }
        ranges.push(PortRange { lo: lo_n, hi: hi_n });
    }
    Ok(PortSet::normalized(ranges))
}

/// `target:ports` of an acl destination. IPv6 addresses take brackets
/// (`[fd7a::1]:22`); a CIDR's `/len` makes the last colon unambiguous.
pub fn split_dest(s: &str) -> Result<(&str, PortSet), (String, String)> {
    if s == "*" {
        // Seen in real files; Tailscale reads it as every port of every host.
        return Ok(("*", PortSet::Any));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err((
                "missing `]` after the IPv6 address".into(),
                "write `[fd7a:115c:a1e0::1]:22`".into(),
            ));
        };
        let Some(p) = after.strip_prefix(':') else {
            return Err((
                "no ports after the address".into(),
                format!("write `[{addr}]:*` or `[{addr}]:22`"),
            ));
        };
        return Ok((addr, ports(p)?));
    }
    let Some((target, p)) = s.rsplit_once(':') else {
        return Err((
            "no ports".into(),
            format!("write `{s}:*` for every port, or `{s}:22`, `{s}:80,443`, `{s}:8000-8100`"),
        ));
    };
    if target.is_empty() {
        return Err((
            "no target before the ports".into(),
            "write `TARGET:PORTS`".into(),
        ));
    }
    Ok((target, ports(p)?))
}

/// A test destination: `target:port` with exactly one port.
pub fn split_test_dest(s: &str) -> Result<(&str, u16), (String, String)> {
    let (target, p) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some(x) => x,
            None => {
                return Err((
                    "expected `[IPv6]:PORT`".into(),
                    "write `[fd7a:115c:a1e0::1]:22`".into(),
                ));
            }
        }
    } else {
        match s.rsplit_once(':') {
            Some(x) => x,
            None => return Err(("no port".into(), format!("tests name one port: `{s}:22`"))),
        }
    };
    match p.parse::<u16>() {
        Ok(n) => Ok((target, n)),
        Err(_) => Err((
            format!("`{p}` is not one port"),
            "a test names a single port number (no `*`, list or range)".into(),
        )),
    }
}

/// One `ip` entry of a grant: `*`, `PORTS`, or `PROTO:PORTS`.
pub fn ip_entry(s: &str) -> Result<(Vec<u8>, PortSet), (String, String)> {
    if s == "*" {
        return Ok((DEFAULT_PROTOCOLS.to_vec(), PortSet::Any));
    }
    match s.split_once(':') {
        None => Ok((DEFAULT_PROTOCOLS.to_vec(), ports(s)?)),
        Some((proto, p)) => {
            let protos = proto_numbers(proto).map_err(|m| (m, proto_help()))?;
            Ok((protos, ports(p)?))
        }
    }
}

fn merge_ports(a: &PortSet, b: &PortSet) -> PortSet {
    match (a, b) {
        (PortSet::Any, _) | (_, PortSet::Any) => PortSet::Any,
        (PortSet::Ranges(x), PortSet::Ranges(y)) => {
            PortSet::normalized(x.iter().chain(y).copied().collect())
        }
    }
}

/// An IP or CIDR; a CIDR with host bits set is truncated (and reported).
pub fn parse_net_lenient(s: &str) -> Result<(IpNet, bool), String> {
    if let Some((addr, len)) = s.split_once('/') {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let l: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`/{len}` is not a prefix length (0 to {max})"))?;
        let net = IpNet::new(ip, l).map_err(|_| format!("`{s}` is not a CIDR"))?;
        let t = net.trunc();
        Ok((t, t.addr() != ip))
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address"))?;
        Ok((IpNet::from(ip), false))
    }
}

/// `FIRST-LAST` address ranges; `None` when `s` is not one.
fn parse_range(s: &str) -> Option<Result<Vec<IpNet>, String>> {
    let (a, b) = s.split_once('-')?;
    let a: IpAddr = a.trim().parse().ok()?;
    let Ok(b) = b.trim().parse::<IpAddr>() else {
        return Some(Err(format!(
            "`{s}`: the end of the range is not an address"
        )));
    };
    let (lo, hi, v4) = match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => {
            (u128::from(u32::from(x)), u128::from(u32::from(y)), true)
        }
        (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x), u128::from(y), false),
        _ => return Some(Err(format!("`{s}` mixes IPv4 and IPv6"))),
    };
    if lo > hi {
        return Some(Err(format!("the range `{s}` is reversed")));
    }
    Some(Ok(range_to_nets(lo, hi, v4)))
}

fn bits(v4: bool) -> u32 {
    if v4 { 32 } else { 128 }
}

fn net_range(n: &IpNet) -> (u128, u128, bool) {
    match n {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
            true,
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast()), false),
    }
}

/// The smallest list of prefixes covering exactly `lo..=hi`.
fn range_to_nets(mut lo: u128, hi: u128, v4: bool) -> Vec<IpNet> {
    let width = bits(v4);
    let block_last = |lo: u128, size_bits: u32| {
        if size_bits >= 128 {
            u128::MAX
        } else {
            lo + ((1u128 << size_bits) - 1)
        }
    };
    let mut out = Vec::new();
    loop {
        let mut size_bits = if lo == 0 {
            width
        } else {
            lo.trailing_zeros().min(width)
        };
        while size_bits > 0 && block_last(lo, size_bits) > hi {
            size_bits -= 1;
        }
        let prefix = (width - size_bits) as u8;
        let net = if v4 {
            IpNet::new(IpAddr::V4(Ipv4Addr::from(lo as u32)), prefix)
        } else {
            IpNet::new(IpAddr::V6(Ipv6Addr::from(lo)), prefix)
        }
        .expect("prefix within range");
        out.push(net);
        let last = block_last(lo, size_bits);
        if last >= hi {
            break;
        }
        lo = last + 1;
    }
    out
}

/// Every address of both families not covered by `nets`.
fn complement(nets: &[IpNet]) -> Vec<IpNet> {
    let mut set = RangeSet::default();
    set.add("0.0.0.0/0".parse().expect("literal"));
    set.add("::/0".parse().expect("literal"));
    for n in nets {
        set.remove(*n);
    }
    set.to_nets()
}

/// Sets of addresses as sorted, disjoint inclusive ranges per family.
#[derive(Default)]
struct RangeSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

impl RangeSet {
    fn add(&mut self, n: IpNet) {
        let (lo, hi, v4) = net_range(&n);
        let list = if v4 { &mut self.v4 } else { &mut self.v6 };
        list.push((lo, hi));
        list.sort();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (l, h) in list.drain(..) {
            match merged.last_mut() {
                Some(last) if l <= last.1.saturating_add(1) => last.1 = last.1.max(h),
                _ => merged.push((l, h)),
            }
        }
        *list = merged;
    }

    fn remove(&mut self, n: IpNet) {
        let (lo, hi, v4) = net_range(&n);
        let list = if v4 { &mut self.v4 } else { &mut self.v6 };
        let mut out = Vec::new();
        for &(l, h) in list.iter() {
            if h < lo || l > hi {
                out.push((l, h));
                continue;
            }
            if l < lo {
                out.push((l, lo - 1));
            }
            if h > hi {
                out.push((hi + 1, h));
            }
        }
        *list = out;
    }

    fn to_nets(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(l, h) in &self.v4 {
            out.extend(range_to_nets(l, h, true));
        }
        for &(l, h) in &self.v6 {
            out.extend(range_to_nets(l, h, false));
        }
        out
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ranges_become_prefixes() {
        let n = range_to_nets(
            u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 1))),
            u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 6))),
            true,
        );
        let s: Vec<String> = n.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        let all = range_to_nets(0, u128::MAX, false);
        assert_eq!(all[0].to_string(), "::/0");
        let all4 = range_to_nets(0, u128::from(u32::MAX), true);
        assert_eq!(all4[0].to_string(), "0.0.0.0/0");
    }

    #[test]
    fn complement_leaves_out_what_is_known() {
        let c = complement(&["10.0.0.0/8".parse().unwrap(), "::/1".parse().unwrap()]);
        let has = |a: &str| {
            let a: IpAddr = a.parse().unwrap();
            c.iter().any(|n| n.contains(&a))
        };
        assert!(!has("10.1.2.3"));
        assert!(has("11.0.0.0"));
        assert!(has("9.255.255.255"));
        assert!(!has("::1"));
        assert!(has("8000::1"));
    }

    #[test]
    fn ports_and_ip_entries() {
        assert_eq!(ports("*").unwrap(), PortSet::Any);
        assert_eq!(ports("22,80-81").unwrap().to_string(), "22,80-81");
        assert!(ports("0").unwrap_err().0.contains("first port must be >0"));
        assert!(
            ports("ssh")
                .unwrap_err()
                .0
                .contains("invalid first integer")
        );
        assert_eq!(
            ip_entry("tcp:443").unwrap(),
            (
                vec![6],
                PortSet::Ranges(vec![PortRange { lo: 443, hi: 443 }])
            )
        );
        assert_eq!(ip_entry("icmp:*").unwrap(), (vec![1], PortSet::Any));
        assert_eq!(
            ip_entry("*").unwrap(),
            (DEFAULT_PROTOCOLS.to_vec(), PortSet::Any)
        );
        assert_eq!(ip_entry("8000-8100").unwrap().0, DEFAULT_PROTOCOLS.to_vec());
        assert_eq!(ip_entry("47:*").unwrap().0, vec![47]);
        assert!(ip_entry("icmp").is_err());
        assert_eq!(split_dest("[fd7a::1]:22").unwrap().0, "fd7a::1");
        assert_eq!(split_dest("tag:web:80,443").unwrap().0, "tag:web");
        assert_eq!(split_dest("fd7a::/48:*").unwrap().0, "fd7a::/48");
        assert!(split_dest("host").is_err());
        assert_eq!(split_test_dest("tag:x:22").unwrap(), ("tag:x", 22));
        assert!(split_test_dest("tag:x:*").is_err());
        assert!(split_test_dest("tag:x:22,23").is_err());
        assert_eq!(proto_numbers("17").unwrap(), vec![17]);
        assert_eq!(proto_numbers("ipv6-icmp").unwrap(), vec![58]);
        assert!(
            proto_numbers("tcpp")
                .unwrap_err()
                .contains("did you mean `tcp`")
        );
    }
}

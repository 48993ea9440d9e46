//! Raw policy → validated [`Policy`]: names defined once, references resolved
//! (groups and tags may nest; cycles are errors), addresses, ports and
//! protocols checked. All errors are collected, each with its place and a
//! fix, so one run of `check` shows everything that is wrong.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ipnet::IpNet;

use super::{
    diagnostic::{Diagnostic, Pos, Severity, Source, closest},
    inventory::Inventory,
    membership::{OwnerEntry, TagRules, resolve as resolve_membership},
    model::{
        Assertion, DEFAULT_PROTOCOLS, Dest, Enforce, Expect, Membership, Mode, Policy, PortSet,
        Rule, RuleOrigin, Segment, SegmentId, SegmentKind, Selector, TestCase, has_ports,
        protocol_name,
    },
    raw::{Entries, OneOrMany, RawPolicy, RawRule, RawTest, Spanned, Text},
    syntax::{
        SelectorText, SyntaxError, is_port_continuation, is_valid_name, name_help, parse_dest,
        parse_net, parse_ports, parse_proto, parse_selector,
    },
};

/// Validates a parsed policy. Returns the policy, or every error found.
pub fn validate(
    source: &Arc<Source>,
    raw: RawPolicy,
    inventory: &Inventory,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut v = Validator {
        source: source.clone(),
        diags: Vec::new(),
        segments: Vec::new(),
        tags: HashMap::new(),
        groups: HashMap::new(),
        names: HashMap::new(),
        extra: HashMap::new(),
    };
    v.define_hosts_and_users(&raw, inventory);
    v.define_sets(&raw.tags, SegmentKind::Tag);
    v.define_sets(&raw.groups, SegmentKind::Group);
    let membership = v.tag_membership(&raw, inventory);
    v.resolve_sets(&raw);
    let mode = v.mode(&raw);
    v.segment_modes(&raw);
    let enforce = v.enforce(&raw);

    let mut rules = Vec::new();
    for (i, r) in raw.failsafe.iter().enumerate() {
        if let Some(rule) = v.rule(r, RuleOrigin::Failsafe(i)) {
            rules.push(rule);
        }
    }
    for (i, r) in raw.acls.iter().enumerate() {
        if let Some(rule) = v.rule(r, RuleOrigin::Acl(i)) {
            rules.push(rule);
        }
    }
    let tests: Vec<TestCase> = raw.tests.iter().filter_map(|t| v.test(t)).collect();

    if raw.acls.is_empty() {
        v.warn(
            None,
            "the policy has no acls: every packet that is not failsafe is denied",
            Some("add rules under `acls:`; start with `mode: audit` to see what would be dropped"),
        );
    }
    if raw.failsafe.is_empty() {
        v.warn(
            None,
            "no `failsafe:` entries: a policy mistake can cut off remote access to the hosts that enforce it",
            Some("add e.g. `failsafe: [{src: [MGMT-CIDR], dst: [\"*:22\"], proto: tcp}]`"),
        );
    }
    if !enforce.ingress && !enforce.egress {
        v.warn(
            None,
            "`enforce` turns off both ingress and egress: nothing will be dropped",
            None,
        );
    }

    if v.diags.iter().any(|d| d.severity == Severity::Error) {
        // Warnings about a policy that is wrong anyway are noise.
        v.diags.retain(|d| d.severity == Severity::Error);
        return Err(v.diags);
    }
    Ok(Policy {
        source: source.clone(),
        segments: v.segments,
        rules,
        tests,
        enforce,
        mode,
        warnings: v.diags,
        membership,
        test_bed: None,
        not_enforced: Vec::new(),
    })
}

/// A tag's or group's direct members: addresses, and references to other
/// segments (with where they were written).
type Members = (Vec<IpNet>, Vec<(SegmentId, Option<Pos>)>);

struct Validator {
    source: Arc<Source>,
    diags: Vec<Diagnostic>,
    segments: Vec<Segment>,
    tags: HashMap<String, SegmentId>,
    groups: HashMap<String, SegmentId>,
    /// Users and hosts, which share one namespace (bare names).
    names: HashMap<String, SegmentId>,
    /// Addresses of inventory devices granted a tag, added to its members.
    extra: HashMap<SegmentId, Vec<IpNet>>,
}

/// A scalar's position, and 1 if it is quoted (so sub-ranges skip the quote).
#[derive(Clone, Copy)]
struct At {
    pos: Option<Pos>,
    inner: usize,
}

impl At {
    fn part(self, e: &SyntaxError) -> Option<Pos> {
        self.pos.map(|p| p.narrow(self.inner + e.offset, e.len))
    }
}

impl Validator {
    fn error(&mut self, pos: Option<Pos>, message: impl Into<String>, help: Option<String>) {
        let mut d = Diagnostic::error(pos, message);
        d.help = help;
        self.diags.push(d);
    }

    fn warn(&mut self, pos: Option<Pos>, message: impl Into<String>, help: Option<&str>) {
        let mut d = Diagnostic::warning(pos, message);
        d.help = help.map(str::to_owned);
        self.diags.push(d);
    }

    fn syntax(&mut self, at: At, e: SyntaxError) {
        let pos = at.part(&e);
        self.error(pos, e.message, e.help);
    }

    fn at<T>(&self, s: &Spanned<T>) -> At {
        let pos = Pos::from_place(&s.at);
        let quoted =
            s.at.byte
                .and_then(|o| self.source.text.as_bytes().get(o as usize))
                .is_some_and(|b| *b == b'"' || *b == b'\'');
        At {
            pos,
            inner: usize::from(quoted),
        }
    }

    /// Items of a one-or-many value with their positions.
    fn items<'a>(&self, v: &'a Spanned<OneOrMany>) -> Vec<(&'a str, At)> {
        match &v.value {
            OneOrMany::One(t) => vec![(t.as_str(), self.at(v))],
            OneOrMany::Many(items) => items
                .iter()
                .map(|i| (i.value.as_str(), self.at(i)))
                .collect(),
        }
    }

    fn new_segment(&mut self, kind: SegmentKind, name: &str, pos: Option<Pos>) -> SegmentId {
        let id = self.segments.len() as SegmentId;
        self.segments.push(Segment {
            kind,
            name: name.to_owned(),
            prefixes: Vec::new(),
            mode: None,
            pos,
        });
        id
    }

    fn check_new_name(&mut self, name: &Spanned<Text>, what: &str) -> bool {
        let at = self.at(name);
        if !is_valid_name(name.value.as_str()) {
            self.error(
                at.pos,
                format!("`{}` is not a valid {what} name", name.value.as_str()),
                Some(name_help().to_owned()),
            );
            return false;
        }
        true
    }

    fn define_hosts_and_users(&mut self, raw: &RawPolicy, inventory: &Inventory) {
        for (name, value) in &raw.users.0 {
            if !self.check_new_name(name, "user") {
                continue;
            }
            let mut prefixes = Vec::new();
            let items = self.items(value);
            let owned: Vec<IpNet> = inventory
                .devices
                .iter()
                .filter(|d| d.owner.as_deref() == Some(name.value.as_str()))
                .flat_map(|d| d.addresses.iter().map(|a| IpNet::from(*a)))
                .collect();
            prefixes.extend(owned.iter().copied());
            if items.is_empty() && owned.is_empty() {
                let pos = self.at(value).pos;
                self.error(
                    pos,
                    format!("user `{}` has no addresses", name.value.as_str()),
                    Some("list the user's device addresses, e.g. `[10.0.9.5]`, or give an inventory whose devices it owns".to_owned()),
                );
            }
            for (text, at) in items {
                match parse_net(text) {
                    Ok(net) => prefixes.push(net),
                    Err(e) => self.syntax(at, e),
                }
            }
            let pos = self.at(name).pos;
            let id = self.new_segment(SegmentKind::User, name.value.as_str(), pos);
            self.segments[id as usize].prefixes = normalize(prefixes);
            self.names.insert(name.value.0.clone(), id);
        }
        for (name, value) in &raw.hosts.0 {
            if !self.check_new_name(name, "host") {
                continue;
            }
            let at = self.at(value);
            let prefix = match parse_net(value.value.as_str()) {
                Ok(net) => vec![net],
                Err(e) => {
                    self.syntax(at, e);
                    Vec::new()
                }
            };
            let pos = self.at(name).pos;
            if let Some(other) = self.names.get(name.value.as_str()) {
                let other_line = self.segments[*other as usize].pos.map(|p| p.line);
                self.error(
                    pos,
                    format!(
                        "`{}` is both a user{} and a host",
                        name.value.as_str(),
                        other_line
                            .map(|l| format!(" (line {l})"))
                            .unwrap_or_default()
                    ),
                    Some(
                        "bare names in rules must mean one thing: rename the host or the user"
                            .to_owned(),
                    ),
                );
                continue;
            }
            let id = self.new_segment(SegmentKind::Host, name.value.as_str(), pos);
            self.segments[id as usize].prefixes = prefix;
            self.names.insert(name.value.0.clone(), id);
        }
        // Owners known only from the inventory become users too, so that
        // rules and groups may name them.
        for d in &inventory.devices {
            let Some(owner) = d.owner.as_deref() else {
                continue;
            };
            let nets = d.addresses.iter().map(|a| IpNet::from(*a));
            match self.names.get(owner) {
                Some(&id) if self.segments[id as usize].kind == SegmentKind::User => {
                    if self.segments[id as usize].pos.is_none() {
                        let mut p = std::mem::take(&mut self.segments[id as usize].prefixes);
                        p.extend(nets);
                        self.segments[id as usize].prefixes = normalize(p);
                    }
                }
                Some(_) => self.warn(
                    None,
                    format!(
                        "inventory device `{}`{} is owned by `{owner}`, which the policy defines as a host",
                        d.name,
                        origin_note(&d.origin)
                    ),
                    Some("bare names mean one thing: rename the host, or fix the device's owner"),
                ),
                None if is_valid_name(owner) => {
                    let id = self.new_segment(SegmentKind::User, owner, None);
                    self.segments[id as usize].prefixes = normalize(nets.collect());
                    self.names.insert(owner.to_owned(), id);
                }
                None => self.warn(
                    None,
                    format!(
                        "inventory device `{}`{}: owner `{owner}` is not a valid user name",
                        d.name,
                        origin_note(&d.origin)
                    ),
                    Some(name_help()),
                ),
            }
        }
    }

    /// `tagOwners` checked, and every tag claimed by an inventory device
    /// decided; granted devices' addresses are kept for `resolve_sets`.
    fn tag_membership(&mut self, raw: &RawPolicy, inventory: &Inventory) -> Vec<Membership> {
        let mut owners: BTreeMap<String, Vec<OwnerEntry>> = BTreeMap::new();
        for (key, value) in &raw.tag_owners.0 {
            let at = self.at(key);
            let Some(tag) = key.value.as_str().strip_prefix("tag:") else {
                self.error(
                    at.pos,
                    format!("`{}` is not a tag", key.value.as_str()),
                    Some("keys of `tagOwners` are tags, written `tag:NAME`".to_owned()),
                );
                continue;
            };
            if !self.tags.contains_key(tag) {
                self.error(
                    at.pos,
                    format!("tagOwners names tag:{tag}, which `tags:` does not define"),
                    Some(format!(
                        "add `{tag}: []` under `tags:` (devices granted the tag become its members){}",
                        closest(tag, self.tags.keys().map(String::as_str))
                            .map(|c| format!(", or did you mean `tag:{c}`?"))
                            .unwrap_or_default()
                    )),
                );
                continue;
            }
            let mut entries = Vec::new();
            for (text, at) in self.items(value) {
                let e = OwnerEntry::parse(text);
                let ok = match &e {
                    OwnerEntry::Group(g) => self.lookup_set(SegmentKind::Group, g, at).is_some(),
                    OwnerEntry::Tag(t) => self.lookup_set(SegmentKind::Tag, t, at).is_some(),
                    OwnerEntry::Autogroup(a) => {
                        let known = matches!(
                            a.as_str(),
                            "admin"
                                | "owner"
                                | "member"
                                | "it-admin"
                                | "network-admin"
                                | "billing-admin"
                                | "auditor"
                        );
                        if !known {
                            self.error(
                                at.pos,
                                format!("`autogroup:{a}` cannot own a tag"),
                                Some("use autogroup:member, autogroup:admin, autogroup:owner (or another role), a user, a group, a tag or a device name".to_owned()),
                            );
                        }
                        known
                    }
                    OwnerEntry::Name(n) => {
                        let ok = is_valid_name(&n.replace('*', "a"))
                            || n.starts_with('*')
                                && is_valid_name(&format!("a{}", n.replace('*', "a")));
                        if !ok {
                            self.error(
                                at.pos,
                                format!("`{n}` is not a device name, device glob or user"),
                                Some(format!(
                                    "{}; `*` in a device name matches any characters",
                                    name_help()
                                )),
                            );
                        }
                        ok
                    }
                };
                if ok {
                    entries.push(e);
                }
            }
            owners.insert(tag.to_owned(), entries);
        }
        if inventory.devices.is_empty() {
            return Vec::new();
        }
        let group_users = group_users(raw);
        let group_has = |g: &str, u: &str| group_users.get(g).is_some_and(|s| s.contains(u));
        let defined: BTreeSet<String> = self.tags.keys().cloned().collect();
        let membership = resolve_membership(
            inventory,
            &TagRules {
                defined: &defined,
                owners: &owners,
                group_has: &group_has,
                any_tag_roles: &[],
            },
        );
        for m in &membership {
            if !m.granted {
                continue;
            }
            let tag = m.tag.trim_start_matches("tag:");
            let Some(&id) = self.tags.get(tag) else {
                continue;
            };
            if let Some(d) = inventory.devices.iter().find(|d| d.name == m.device) {
                self.extra
                    .entry(id)
                    .or_default()
                    .extend(d.addresses.iter().map(|a| IpNet::from(*a)));
            }
        }
        membership
    }

    fn define_sets(
        &mut self,
        entries: &Entries<Spanned<Text>, Spanned<OneOrMany>>,
        kind: SegmentKind,
    ) {
        for (name, _) in &entries.0 {
            if !self.check_new_name(name, kind.as_str()) {
                continue;
            }
            let pos = self.at(name).pos;
            let id = self.new_segment(kind, name.value.as_str(), pos);
            let table = match kind {
                SegmentKind::Tag => &mut self.tags,
                _ => &mut self.groups,
            };
            table.insert(name.value.0.clone(), id);
        }
    }

    /// Resolves tag and group members to addresses, following nesting and
    /// refusing cycles.
    fn resolve_sets(&mut self, raw: &RawPolicy) {
        // Direct members first: addresses and references.
        let mut members: HashMap<SegmentId, Members> = HashMap::new();
        for (kind, entries) in [
            (SegmentKind::Tag, &raw.tags),
            (SegmentKind::Group, &raw.groups),
        ] {
            for (name, value) in &entries.0 {
                let table = if kind == SegmentKind::Tag {
                    &self.tags
                } else {
                    &self.groups
                };
                let Some(&id) = table.get(name.value.as_str()) else {
                    continue;
                };
                let mut nets = Vec::new();
                let mut refs = Vec::new();
                let items = self.items(value);
                if items.is_empty() && !self.extra.contains_key(&id) {
                    let pos = self.at(value).pos;
                    self.warn(
                        pos,
                        format!(
                            "{} `{}` has no members: it matches no address",
                            kind.as_str(),
                            name.value.as_str()
                        ),
                        None,
                    );
                }
                for (text, at) in items {
                    if let Some((net, r)) = self.member(kind, text, at) {
                        nets.extend(net);
                        refs.extend(r.map(|r| (r, at.pos)));
                    }
                }
                nets.extend(self.extra.get(&id).into_iter().flatten().copied());
                members.insert(id, (nets, refs));
            }
        }
        // Then the transitive closure, depth first.
        let ids: Vec<SegmentId> = {
            let mut v: Vec<_> = members.keys().copied().collect();
            v.sort();
            v
        };
        let mut done: HashMap<SegmentId, Vec<IpNet>> = HashMap::new();
        for id in ids {
            let mut stack = Vec::new();
            self.closure(id, &members, &mut done, &mut stack);
        }
        for (id, nets) in done {
            self.segments[id as usize].prefixes = normalize(nets);
        }
    }

    fn closure(
        &mut self,
        id: SegmentId,
        members: &HashMap<SegmentId, Members>,
        done: &mut HashMap<SegmentId, Vec<IpNet>>,
        stack: &mut Vec<SegmentId>,
    ) -> Vec<IpNet> {
        if let Some(nets) = done.get(&id) {
            return nets.clone();
        }
        let Some((nets, refs)) = members.get(&id) else {
            // A user or host: its addresses are already known.
            return self.segments[id as usize].prefixes.clone();
        };
        stack.push(id);
        let mut all = nets.clone();
        for (r, pos) in refs {
            if let Some(start) = stack.iter().position(|s| s == r) {
                let mut path: Vec<String> = stack[start..]
                    .iter()
                    .map(|s| self.segments[*s as usize].reference())
                    .collect();
                path.push(self.segments[*r as usize].reference());
                self.error(
                    *pos,
                    format!("cycle: {}", path.join(" → ")),
                    Some(
                        "a group or tag cannot contain itself, directly or through others"
                            .to_owned(),
                    ),
                );
                continue;
            }
            all.extend(self.closure(*r, members, done, stack));
        }
        stack.pop();
        done.insert(id, all.clone());
        all
    }

    /// One member of a tag or group: addresses, or a reference to another
    /// segment.
    fn member(
        &mut self,
        kind: SegmentKind,
        text: &str,
        at: At,
    ) -> Option<(Option<IpNet>, Option<SegmentId>)> {
        let sel = match parse_selector(text) {
            Ok(s) => s,
            Err(e) => {
                self.syntax(at, e);
                return None;
            }
        };
        match (kind, sel) {
            (_, SelectorText::Any) => {
                self.error(
                    at.pos,
                    format!("`*` cannot be a member of a {}", kind.as_str()),
                    Some("use `*` directly in rules; write `0.0.0.0/0` and `::/0` if you mean every address".to_owned()),
                );
                None
            }
            (SegmentKind::Tag, SelectorText::Net(n)) => Some((Some(n), None)),
            (SegmentKind::Group, SelectorText::Net(n)) => {
                self.error(
                    at.pos,
                    format!("groups hold users, not addresses (`{n}`)"),
                    Some("define a user with this address under `users:`, or put the address in a tag".to_owned()),
                );
                None
            }
            (SegmentKind::Tag, SelectorText::Tag(name)) => self
                .lookup_set(SegmentKind::Tag, name, at)
                .map(|id| (None, Some(id))),
            (SegmentKind::Group, SelectorText::Group(name)) => self
                .lookup_set(SegmentKind::Group, name, at)
                .map(|id| (None, Some(id))),
            (SegmentKind::Tag, SelectorText::Group(name)) => {
                self.error(
                    at.pos,
                    format!("a tag cannot contain `group:{name}`"),
                    Some(
                        "tags hold machines (addresses, hosts, other tags); groups hold users"
                            .to_owned(),
                    ),
                );
                None
            }
            (SegmentKind::Group, SelectorText::Tag(name)) => {
                self.error(
                    at.pos,
                    format!("a group cannot contain `tag:{name}`"),
                    Some("groups hold users and other groups; tags hold machines".to_owned()),
                );
                None
            }
            (_, SelectorText::Name(name)) => {
                let id = self.lookup_name(name, at)?;
                let seg_kind = self.segments[id as usize].kind;
                match (kind, seg_kind) {
                    (SegmentKind::Tag, SegmentKind::Host)
                    | (SegmentKind::Group, SegmentKind::User) => Some((None, Some(id))),
                    (SegmentKind::Tag, _) => {
                        self.error(
                            at.pos,
                            format!("`{name}` is a user; tags hold machines"),
                            Some(
                                "put users in groups, or reference the user directly in acls"
                                    .to_owned(),
                            ),
                        );
                        None
                    }
                    _ => {
                        self.error(
                            at.pos,
                            format!("`{name}` is a host; groups hold users"),
                            Some("put machines in tags (`tags: {NAME: [host]}`)".to_owned()),
                        );
                        None
                    }
                }
            }
            (_, SelectorText::Net(_)) => unreachable!("handled above for both kinds"),
            (SegmentKind::User | SegmentKind::Host | SegmentKind::Alias, _) => {
                unreachable!("only tags and groups have members")
            }
        }
    }

    fn lookup_set(&mut self, kind: SegmentKind, name: &str, at: At) -> Option<SegmentId> {
        let table = if kind == SegmentKind::Tag {
            &self.tags
        } else {
            &self.groups
        };
        if let Some(id) = table.get(name) {
            return Some(*id);
        }
        let section = if kind == SegmentKind::Tag {
            "tags"
        } else {
            "groups"
        };
        let help = match closest(name, table.keys().map(String::as_str)) {
            Some(c) => format!("did you mean `{}:{c}`?", kind.as_str()),
            None => format!("define it under `{section}:`"),
        };
        let pos = at
            .pos
            .map(|p| p.narrow(at.inner, kind.as_str().len() + 1 + name.chars().count()));
        self.error(
            pos,
            format!("undefined {} `{name}`", kind.as_str()),
            Some(help),
        );
        None
    }

    fn lookup_name(&mut self, name: &str, at: At) -> Option<SegmentId> {
        if let Some(id) = self.names.get(name) {
            return Some(*id);
        }
        let help = if self.tags.contains_key(name) {
            format!("`{name}` is a tag: write `tag:{name}`")
        } else if self.groups.contains_key(name) {
            format!("`{name}` is a group: write `group:{name}`")
        } else {
            match closest(name, self.names.keys().map(String::as_str)) {
                Some(c) => format!("did you mean `{c}`?"),
                None => "define it under `users:` or `hosts:`".to_owned(),
            }
        };
        let pos = at.pos.map(|p| p.narrow(at.inner, name.chars().count()));
        self.error(
            pos,
            format!("`{name}` is not a defined user or host"),
            Some(help),
        );
        None
    }

    fn selector(&mut self, text: &str, at: At) -> Option<Selector> {
        match parse_selector(text) {
            Ok(sel) => self.resolve(sel, at),
            Err(e) => {
                self.syntax(at, e);
                None
            }
        }
    }

    fn resolve(&mut self, sel: SelectorText<'_>, at: At) -> Option<Selector> {
        Some(match sel {
            SelectorText::Any => Selector::Any,
            SelectorText::Net(n) => Selector::Net(n),
            SelectorText::Tag(name) => {
                Selector::Segment(self.lookup_set(SegmentKind::Tag, name, at)?)
            }
            SelectorText::Group(name) => {
                Selector::Segment(self.lookup_set(SegmentKind::Group, name, at)?)
            }
            SelectorText::Name(name) => Selector::Segment(self.lookup_name(name, at)?),
        })
    }

    /// Destinations of a rule or test, merging port-only items into the
    /// destination before them (`[tag:web:80,443]` reads as two YAML items).
    fn dests(&mut self, items: Vec<(&str, At)>) -> Option<Vec<(Dest, String, At)>> {
        let mut out: Vec<(Dest, String, At)> = Vec::new();
        let mut ok = true;
        for (text, at) in items {
            if is_port_continuation(text) {
                let Some((last, last_text, _)) = out.last_mut() else {
                    self.error(
                        at.pos,
                        format!("`{text}` looks like ports, but there is no destination before it"),
                        Some(
                            "write destinations as `SELECTOR:PORTS`, e.g. `tag:web:80,443`"
                                .to_owned(),
                        ),
                    );
                    ok = false;
                    continue;
                };
                match parse_ports(text) {
                    Ok(more) => {
                        last.ports = merge_ports(&last.ports, &more);
                        last_text.push(',');
                        last_text.push_str(text);
                    }
                    Err(e) => {
                        self.syntax(at, e);
                        ok = false;
                    }
                }
                continue;
            }
            match parse_dest(text) {
                Ok(d) => match self.resolve(d.selector, at) {
                    Some(selector) => out.push((
                        Dest {
                            selector,
                            ports: d.ports,
                        },
                        text.to_owned(),
                        at,
                    )),
                    None => ok = false,
                },
                Err(e) => {
                    self.syntax(at, e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn protos(&mut self, v: &Option<Spanned<OneOrMany>>) -> Option<Vec<u8>> {
        let Some(v) = v else {
            return Some(DEFAULT_PROTOCOLS.to_vec());
        };
        let items = self.items(v);
        if items.is_empty() {
            let pos = self.at(v).pos;
            self.error(
                pos,
                "`proto` is empty",
                Some("leave `proto` out for tcp, udp and icmp, or name one".to_owned()),
            );
            return None;
        }
        let mut out = BTreeSet::new();
        let mut ok = true;
        for (text, at) in items {
            match parse_proto(text) {
                Ok(p) => {
                    out.insert(p);
                }
                Err(e) => {
                    self.syntax(at, e);
                    ok = false;
                }
            }
        }
        ok.then(|| out.into_iter().collect())
    }

    fn rule(&mut self, r: &Spanned<RawRule>, origin: RuleOrigin) -> Option<Rule> {
        let rule_pos = self.at(r).pos;
        let raw = &r.value;
        let section = match origin {
            RuleOrigin::Acl(_) | RuleOrigin::Grant(_) => "acls",
            RuleOrigin::Failsafe(_) => "failsafe",
        };
        let mut ok = true;
        match &raw.action {
            Some(a) if a.value.as_str() == "accept" => {}
            Some(a) => {
                let pos = self.at(a).pos;
                self.error(
                    pos,
                    format!("unknown action `{}`", a.value.as_str()),
                    Some(
                        "the only action is `accept`: everything not accepted is denied".to_owned(),
                    ),
                );
                ok = false;
            }
            None if section == "acls" => {
                self.error(
                    rule_pos,
                    "this acl has no `action`",
                    Some("add `action: accept`".to_owned()),
                );
                ok = false;
            }
            None => {}
        }
        let src_items = self.items(&raw.src);
        if src_items.is_empty() {
            let pos = self.at(&raw.src).pos;
            self.error(
                pos,
                "`src` is empty",
                Some("name who may connect, or `*` for anyone".to_owned()),
            );
            ok = false;
        }
        let mut src = Vec::new();
        let mut src_texts = Vec::new();
        for (text, at) in src_items {
            let resolved = match parse_selector(text) {
                Ok(sel) => self.resolve(sel, at),
                Err(_) if parse_dest(text).is_ok() => {
                    self.error(
                        at.pos,
                        format!("`{text}`: ports belong on destinations, not sources"),
                        Some("remove the port from `src`; put it on the `dst` entries".to_owned()),
                    );
                    None
                }
                Err(e) => {
                    self.syntax(at, e);
                    None
                }
            };
            match resolved {
                Some(s) => {
                    src.push(s);
                    src_texts.push(text.to_owned());
                }
                None => ok = false,
            }
        }
        let dst_items = self.items(&raw.dst);
        if dst_items.is_empty() {
            let pos = self.at(&raw.dst).pos;
            self.error(
                pos,
                "`dst` is empty",
                Some("name what may be reached, with ports: `tag:db:5432`".to_owned()),
            );
            ok = false;
        }
        let dests = self.dests(dst_items);
        let protos = self.protos(&raw.proto);
        let (Some(dests), Some(protos)) = (dests, protos) else {
            return None;
        };
        if raw.proto.is_some() && protos.iter().all(|p| !has_ports(*p)) {
            for (d, text, at) in &dests {
                if d.ports != PortSet::Any {
                    let names: Vec<String> = protos.iter().map(|p| protocol_name(*p)).collect();
                    self.error(
                        at.pos,
                        format!("`{text}`: {} has no ports", names.join(", ")),
                        Some("write the destination with `:*`".to_owned()),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        let name = raw.name.as_ref().map(|n| n.value.0.clone());
        let dst_texts: Vec<&str> = dests.iter().map(|(_, t, _)| t.as_str()).collect();
        let mut text = format!(
            "src: [{}] dst: [{}]",
            src_texts.join(", "),
            dst_texts.join(", ")
        );
        if raw.proto.is_some() {
            let names: Vec<String> = protos.iter().map(|p| protocol_name(*p)).collect();
            text.push_str(&format!(" proto: {}", names.join(",")));
        }
        Some(Rule {
            origin,
            name,
            src,
            dst: dests.into_iter().map(|(d, _, _)| d).collect(),
            protos,
            text,
            pos: rule_pos,
        })
    }

    fn test(&mut self, t: &Spanned<RawTest>) -> Option<TestCase> {
        let raw = &t.value;
        let pos = self.at(t).pos;
        let src_at = self.at(&raw.src);
        let src = self.selector(raw.src.value.as_str(), src_at);
        let proto = match &raw.proto {
            None => Some(6),
            Some(p) => {
                let at = self.at(p);
                match parse_proto(p.value.as_str()) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        self.syntax(at, e);
                        None
                    }
                }
            }
        };
        if raw.accept.is_none() && raw.deny.is_none() {
            self.error(
                pos,
                "this test asserts nothing",
                Some("add `accept:` and/or `deny:` lists of `DST:PORT`".to_owned()),
            );
            return None;
        }
        let mut assertions = Vec::new();
        let mut ok = true;
        for (expect, list) in [(Expect::Accept, &raw.accept), (Expect::Deny, &raw.deny)] {
            let Some(list) = list else { continue };
            let items = self.items(list);
            match self.dests(items) {
                Some(dests) => {
                    for (d, text, at) in dests {
                        assertions.push(Assertion {
                            expect,
                            dst: d.selector,
                            dst_text: text,
                            ports: d.ports,
                            pos: at.pos,
                        });
                    }
                }
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(TestCase {
            src: src?,
            src_text: raw.src.value.0.clone(),
            proto: proto?,
            assertions,
            pos,
        })
    }

    fn parse_mode(&mut self, v: &Spanned<Text>) -> Option<Mode> {
        match v.value.as_str() {
            "enforce" => Some(Mode::Enforce),
            "audit" => Some(Mode::Audit),
            other => {
                let pos = self.at(v).pos;
                let help = match closest(other, ["enforce", "audit"]) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => "modes are `enforce` (drop what is denied) and `audit` (count it, let it pass)".to_owned(),
                };
                self.error(pos, format!("unknown mode `{other}`"), Some(help));
                None
            }
        }
    }

    fn mode(&mut self, raw: &RawPolicy) -> Mode {
        match &raw.mode {
            Some(m) => self.parse_mode(m).unwrap_or_default(),
            None => Mode::Enforce,
        }
    }

    fn segment_modes(&mut self, raw: &RawPolicy) {
        for (key, value) in &raw.modes.0 {
            let at = self.at(key);
            let Some(mode) = self.parse_mode(value) else {
                continue;
            };
            match self.selector(key.value.as_str(), at) {
                Some(Selector::Segment(id)) => self.segments[id as usize].mode = Some(mode),
                Some(_) => self.error(
                    at.pos,
                    format!("`{}` is not a segment", key.value.as_str()),
                    Some("`modes:` keys name a tag, group, user or host; use `mode:` for the default".to_owned()),
                ),
                None => {}
            }
        }
    }

    fn enforce(&mut self, raw: &RawPolicy) -> Enforce {
        let mut e = Enforce::default();
        if let Some(v) = &raw.enforce {
            if let Some(i) = &v.value.ingress {
                e.ingress = i.value;
            }
            if let Some(eg) = &v.value.egress {
                e.egress = eg.value;
            }
        }
        e
    }
}

fn origin_note(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!(" ({origin})")
    }
}

/// Every group's users, following nested groups (cycles are reported by
/// `resolve_sets`; here they just stop the walk).
fn group_users(raw: &RawPolicy) -> HashMap<String, BTreeSet<String>> {
    let direct: HashMap<&str, Vec<&str>> = raw
        .groups
        .0
        .iter()
        .map(|(k, v)| {
            let items: Vec<&str> = match &v.value {
                OneOrMany::One(t) => vec![t.as_str()],
                OneOrMany::Many(i) => i.iter().map(|i| i.value.as_str()).collect(),
            };
            (k.value.as_str(), items)
        })
        .collect();
    fn walk<'a>(
        g: &'a str,
        direct: &HashMap<&'a str, Vec<&'a str>>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut BTreeSet<String>,
    ) {
        if !seen.insert(g) {
            return;
        }
        for m in direct.get(g).into_iter().flatten() {
            match m.strip_prefix("group:") {
                Some(inner) => walk(inner, direct, seen, out),
                None => {
                    out.insert((*m).to_owned());
                }
            }
        }
    }
    direct
        .keys()
        .map(|g| {
            let mut out = BTreeSet::new();
            walk(g, &direct, &mut BTreeSet::new(), &mut out);
            ((*g).to_owned(), out)
        })
        .collect()
}

fn merge_ports(a: &PortSet, b: &PortSet) -> PortSet {
    match (a, b) {
        (PortSet::Any, _) | (_, PortSet::Any) => PortSet::Any,
        (PortSet::Ranges(x), PortSet::Ranges(y)) => {
            PortSet::normalized(x.iter().chain(y.iter()).copied().collect())
        }
    }
}

/// Sorts prefixes, drops duplicates and prefixes inside another one.
pub fn normalize(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    nets.sort_by_key(|n| (n.network(), n.prefix_len()));
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        if out.last().is_some_and(|last: &IpNet| last.contains(&n)) {
            continue;
        }
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_drops_nested_and_duplicates() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.0.0.0/8",
            "192.168.0.1/32",
            "fd00::/8",
            "fd00::1/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let out: Vec<String> = normalize(nets).iter().map(|n| n.to_string()).collect();
        assert_eq!(out, ["10.0.0.0/8", "192.168.0.1/32", "fd00::/8"]);
    }
}

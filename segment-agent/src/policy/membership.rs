//! Which inventory devices may wear which tags: a device's claim of `tag:T`
//! is granted when the policy defines `T` and an entry of `tagOwners` for
//! `tag:T` matches the device. Shared by the YAML and Tailscale readers; the
//! caller says how names in `tagOwners` are written and how groups resolve.
//!
//! An entry matches a device when it is
//! * the device's name, or a glob over device names with `*` (`db-*`);
//! * the login of the device's owner;
//! * `group:G` where the group contains the owner (as a user);
//! * `autogroup:member` (the device has an owner), or `autogroup:ROLE`
//!   (`admin`, `owner`, `it-admin`, ...) where the owner's inventory user has
//!   that role;
//! * `tag:X`, a tag the device is itself granted (decided to a fixpoint, so
//!   the order of devices and tags does not matter).
//!
//! Refusals are never errors: they are recorded with their reason.

use std::collections::{BTreeMap, BTreeSet};

use super::{inventory::Inventory, model::Membership};

/// One entry of a `tagOwners` list, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerEntry {
    /// A device name (glob with `*`) or a user login.
    Name(String),
    /// `group:G` (the group's name without the prefix).
    Group(String),
    /// `autogroup:X` (without the prefix).
    Autogroup(String),
    /// `tag:X` (without the prefix).
    Tag(String),
}

impl OwnerEntry {
    pub fn parse(s: &str) -> Self {
        if let Some(g) = s.strip_prefix("group:") {
            OwnerEntry::Group(g.to_owned())
        } else if let Some(a) = s.strip_prefix("autogroup:") {
            OwnerEntry::Autogroup(a.to_owned())
        } else if let Some(t) = s.strip_prefix("tag:") {
            OwnerEntry::Tag(t.to_owned())
        } else {
            OwnerEntry::Name(s.to_owned())
        }
    }

    pub fn text(&self) -> String {
        match self {
            OwnerEntry::Name(n) => n.clone(),
            OwnerEntry::Group(g) => format!("group:{g}"),
            OwnerEntry::Autogroup(a) => format!("autogroup:{a}"),
            OwnerEntry::Tag(t) => format!("tag:{t}"),
        }
    }
}

/// `*` matches any run of characters (including none); everything else
/// matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// What the resolver needs to know about the policy.
pub struct TagRules<'a> {
    /// Tags the policy defines (names without `tag:`).
    pub defined: &'a BTreeSet<String>,
    /// `tagOwners`, by tag name without `tag:`.
    pub owners: &'a BTreeMap<String, Vec<OwnerEntry>>,
    /// Whether group `G` (without `group:`) contains user `login`.
    pub group_has: &'a dyn Fn(&str, &str) -> bool,
    /// Roles whose users may apply any defined tag whatever `tagOwners`
    /// says (Tailscale: Owner, Admin and Network admin); empty for YAML.
    pub any_tag_roles: &'a [&'a str],
}

/// Decides every claim of every device. Returns one record per (device,
/// claimed tag), in inventory order; `granted` tells which joined the tag.
pub fn resolve(inventory: &Inventory, rules: &TagRules<'_>) -> Vec<Membership> {
    let roles: BTreeMap<&str, &[String]> = inventory
        .users
        .iter()
        .map(|u| (u.login.as_str(), u.roles.as_slice()))
        .collect();
    // granted[i] = tags granted to device i so far.
    let mut granted: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); inventory.devices.len()];
    loop {
        let mut changed = false;
        for (i, d) in inventory.devices.iter().enumerate() {
            for claim in &d.tags {
                let Some(tag) = claim.strip_prefix("tag:") else {
                    continue;
                };
                if granted[i].contains_key(tag) || !rules.defined.contains(tag) {
                    continue;
                }
                let owner_roles: &[String] = d
                    .owner
                    .as_deref()
                    .and_then(|o| roles.get(o).copied())
                    .unwrap_or(&[]);
                if let Some(role) = rules
                    .any_tag_roles
                    .iter()
                    .find(|r| owner_roles.iter().any(|o| o == *r))
                {
                    granted[i].insert(
                        tag.to_owned(),
                        format!(
                            "the owner `{}` has the role `{role}`, which may apply any tag",
                            d.owner.as_deref().unwrap_or_default()
                        ),
                    );
                    changed = true;
                    continue;
                }
                let Some(entries) = rules.owners.get(tag) else {
                    continue;
                };
                let hit = entries.iter().find(|e| match e {
                    OwnerEntry::Name(n) => {
                        glob_match(n, &d.name) || d.owner.as_deref() == Some(n.as_str())
                    }
                    OwnerEntry::Group(g) => {
                        d.owner.as_deref().is_some_and(|o| (rules.group_has)(g, o))
                    }
                    OwnerEntry::Autogroup(a) if a == "member" => d.owner.is_some(),
                    OwnerEntry::Autogroup(a) => owner_roles.iter().any(|r| r == a),
                    OwnerEntry::Tag(t) => granted[i].contains_key(t.as_str()),
                });
                if let Some(e) = hit {
                    let why = match e {
                        OwnerEntry::Name(n) if d.owner.as_deref() == Some(n.as_str()) => {
                            format!("the device's owner `{n}`")
                        }
                        OwnerEntry::Name(n) if n == &d.name => "the device's name".to_owned(),
                        OwnerEntry::Name(n) => format!("`{n}`, which matches the device's name"),
                        OwnerEntry::Group(g) => format!(
                            "`group:{g}`, which contains the owner `{}`",
                            d.owner.as_deref().unwrap_or_default()
                        ),
                        OwnerEntry::Autogroup(a) => format!(
                            "`autogroup:{a}`, which the owner `{}` belongs to",
                            d.owner.as_deref().unwrap_or_default()
                        ),
                        OwnerEntry::Tag(t) => format!("`tag:{t}`, which the device is granted"),
                    };
                    granted[i].insert(
                        tag.to_owned(),
                        format!("tagOwners of tag:{tag} lists {why}"),
                    );
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }

    let mut out = Vec::new();
    for (i, d) in inventory.devices.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for claim in &d.tags {
            if !seen.insert(claim.as_str()) {
                continue;
            }
            let (ok, reason) = match claim.strip_prefix("tag:") {
                None => (
                    false,
                    format!("`{claim}` is not a tag: tags are written `tag:NAME`"),
                ),
                Some(tag) => match granted[i].get(tag) {
                    Some(why) => (true, why.clone()),
                    None if !rules.defined.contains(tag) => {
                        (false, format!("the policy does not define tag:{tag}"))
                    }
                    None => match rules.owners.get(tag) {
                        None => (
                            false,
                            format!("tagOwners has no entry for tag:{tag}: nobody may apply it"),
                        ),
                        Some(entries) => (
                            false,
                            format!(
                                "no entry of tagOwners for tag:{tag} ({}) matches the device{}",
                                entries
                                    .iter()
                                    .map(OwnerEntry::text)
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                match &d.owner {
                                    Some(o) => format!(" or its owner `{o}`"),
                                    None => " (it has no owner)".to_owned(),
                                }
                            ),
                        ),
                    },
                },
            };
            out.push(Membership {
                device: d.name.clone(),
                origin: d.origin.clone(),
                tag: claim.clone(),
                granted: ok,
                reason,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::inventory::{Device, InventoryUser};

    fn dev(name: &str, owner: Option<&str>, tags: &[&str]) -> Device {
        Device {
            name: name.to_owned(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            owner: owner.map(str::to_owned),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            origin: format!("test:{name}"),
        }
    }

    fn run(
        devices: Vec<Device>,
        users: Vec<InventoryUser>,
        defined: &[&str],
        owners: &[(&str, &[&str])],
        any_tag_roles: &[&str],
    ) -> Vec<Membership> {
        let inv = Inventory { devices, users };
        let defined: BTreeSet<String> = defined.iter().map(|s| (*s).to_owned()).collect();
        let owners: BTreeMap<String, Vec<OwnerEntry>> = owners
            .iter()
            .map(|(t, e)| {
                (
                    (*t).to_owned(),
                    e.iter().map(|s| OwnerEntry::parse(s)).collect(),
                )
            })
            .collect();
        let group_has = |g: &str, u: &str| g == "ops" && u == "carol";
        resolve(
            &inv,
            &TagRules {
                defined: &defined,
                owners: &owners,
                group_has: &group_has,
                any_tag_roles,
            },
        )
    }

    #[test]
    fn globs() {
        assert!(glob_match("db-*", "db-1"));
        assert!(glob_match("db-*", "db-"));
        assert!(!glob_match("db-*", "web-1"));
        assert!(glob_match("*-prod-*", "eu-prod-7"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn each_kind_of_entry_grants() {
        let m = run(
            vec![
                dev("db-1", None, &["tag:db"]),
                dev("laptop", Some("alice"), &["tag:dev"]),
                dev("ops-box", Some("carol"), &["tag:ops"]),
                dev("adm", Some("root"), &["tag:adm"]),
                dev("anyone", Some("dave"), &["tag:mem"]),
                dev("web", None, &["tag:db", "tag:web"]),
                dev("exact", None, &["tag:ex"]),
            ],
            vec![InventoryUser {
                login: "root".into(),
                roles: vec!["admin".into()],
            }],
            &["db", "dev", "ops", "adm", "mem", "web", "ex"],
            &[
                ("db", &["db-*", "web"]),
                ("dev", &["alice"]),
                ("ops", &["group:ops"]),
                ("adm", &["autogroup:admin"]),
                ("mem", &["autogroup:member"]),
                // tag:web is owned by tag:db, which `web` is granted.
                ("web", &["tag:db"]),
                ("ex", &["exact"]),
            ],
            &[],
        );
        assert_eq!(m.len(), 8);
        for r in &m {
            assert!(r.granted, "{r:?}");
            assert!(r.reason.contains("tagOwners"), "{r:?}");
        }
        assert!(m[1].reason.contains("owner `alice`"));
        assert!(m[2].reason.contains("group:ops"));
    }

    #[test]
    fn tag_owned_by_tag_is_order_independent() {
        // tag:a is granted through tag:b, which comes later in the claims.
        let m = run(
            vec![dev("x", None, &["tag:a", "tag:b"])],
            vec![],
            &["a", "b"],
            &[("a", &["tag:b"]), ("b", &["x"])],
            &[],
        );
        assert!(m.iter().all(|r| r.granted), "{m:?}");
    }

    #[test]
    fn refusals_say_why() {
        let m = run(
            vec![
                dev("a", Some("bob"), &["tag:undefined"]),
                dev("b", Some("bob"), &["tag:noowner"]),
                dev("c", Some("bob"), &["tag:other"]),
                dev("d", None, &["tag:other"]),
                dev("e", Some("member-only"), &["tag:adm"]),
                dev("f", None, &["web"]),
                dev("g", Some("bob"), &["tag:loop"]),
            ],
            vec![],
            &["noowner", "other", "adm", "loop"],
            &[
                ("other", &["alice", "group:ops"]),
                ("adm", &["autogroup:admin"]),
                ("loop", &["tag:loop"]),
            ],
            &[],
        );
        assert_eq!(m.len(), 7);
        assert!(m.iter().all(|r| !r.granted), "{m:?}");
        assert!(m[0].reason.contains("does not define tag:undefined"));
        assert!(m[1].reason.contains("no entry for tag:noowner"));
        assert!(m[2].reason.contains("alice, group:ops"));
        assert!(m[2].reason.contains("owner `bob`"));
        assert!(m[3].reason.contains("no owner"));
        assert!(m[5].reason.contains("not a tag"));
        assert_eq!(m[0].origin, "test:a");
    }

    #[test]
    fn admin_roles_apply_any_defined_tag_when_asked() {
        let users = vec![InventoryUser {
            login: "root".into(),
            roles: vec!["admin".into()],
        }];
        let m = run(
            vec![
                dev("a", Some("root"), &["tag:t"]),
                dev("b", Some("root"), &["tag:nope"]),
            ],
            users.clone(),
            &["t"],
            &[("t", &[])],
            &["admin"],
        );
        assert!(m[0].granted);
        assert!(!m[1].granted, "an undefined tag stays refused");
        let m = run(
            vec![dev("a", Some("root"), &["tag:t"])],
            users,
            &["t"],
            &[("t", &[])],
            &[],
        );
        assert!(!m[0].granted);
    }
}

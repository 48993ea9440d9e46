//! `tagOwners` and inventories in the YAML format: which devices join which
//! tags, which addresses join which users, and what is refused (and why).

use std::net::IpAddr;

use super::*;

fn dev(name: &str, addr: &str, owner: Option<&str>, tags: &[&str]) -> Device {
    Device {
        name: name.to_owned(),
        addresses: vec![addr.parse().unwrap()],
        owner: owner.map(str::to_owned),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        origin: format!("inv.yaml:{name}"),
    }
}

fn seg<'a>(p: &'a Policy, reference: &str) -> &'a Segment {
    p.segments
        .iter()
        .find(|s| s.reference() == reference)
        .unwrap_or_else(|| panic!("no segment {reference}"))
}

fn has(p: &Policy, reference: &str, addr: &str) -> bool {
    let a: IpAddr = addr.parse().unwrap();
    seg(p, reference).prefixes.iter().any(|n| n.contains(&a))
}

const POLICY: &str = "
users:
  alice: [10.9.0.1]
groups:
  ops: [carol]
  staff: [group:ops]
tags:
  db: [10.1.0.1]
  web: []
  mon: []
  adm: []
  any: []
  nobody: []
  front: [tag:web]
tagOwners:
  tag:db: [db-*]
  tag:web: [alice, group:staff]
  tag:mon: [tag:db]
  tag:adm: [autogroup:admin]
  tag:any: [autogroup:member]
acls:
  - {action: accept, src: [tag:web], dst: [tag:db:5432]}
failsafe:
  - {src: [10.99.0.0/16], dst: ['*:22'], proto: tcp}
";

fn inventory() -> Inventory {
    Inventory {
        devices: vec![
            dev("db-1", "10.1.0.2", None, &["tag:db", "tag:mon"]),
            dev("laptop", "10.9.0.2", Some("alice"), &["tag:web"]),
            dev("carols", "10.9.0.3", Some("carol"), &["tag:web", "tag:adm"]),
            dev("boss", "10.9.0.4", Some("root"), &["tag:adm", "tag:any"]),
            dev(
                "stray",
                "10.9.0.5",
                None,
                &["tag:web", "tag:nobody", "tag:nope", "tag:any"],
            ),
        ],
        users: vec![InventoryUser {
            login: "root".into(),
            roles: vec!["admin".into()],
        }],
    }
}

#[test]
fn granted_devices_join_their_tags_beside_static_members() {
    let p = parse_with("p.yaml", POLICY, &inventory()).unwrap();
    assert!(has(&p, "tag:db", "10.1.0.1"), "static member stays");
    assert!(has(&p, "tag:db", "10.1.0.2"), "db-1 matches the glob db-*");
    assert!(
        has(&p, "tag:mon", "10.1.0.2"),
        "owned by tag:db, which db-1 has"
    );
    assert!(has(&p, "tag:web", "10.9.0.2"), "owner alice is listed");
    assert!(
        has(&p, "tag:web", "10.9.0.3"),
        "carol is in ops, inside staff"
    );
    assert!(
        has(&p, "tag:front", "10.9.0.3"),
        "nested tags see inventory members"
    );
    assert!(has(&p, "tag:adm", "10.9.0.4"), "root has the admin role");
    assert!(
        has(&p, "tag:any", "10.9.0.4"),
        "any owned device is a member"
    );
    assert!(!has(&p, "tag:adm", "10.9.0.3"), "carol is no admin");
    assert!(!has(&p, "tag:web", "10.9.0.5"));
    assert!(
        !has(&p, "tag:any", "10.9.0.5"),
        "no owner, no autogroup:member"
    );
    assert!(seg(&p, "tag:nobody").prefixes.is_empty());
}

#[test]
fn owners_get_their_devices_addresses() {
    let p = parse_with("p.yaml", POLICY, &inventory()).unwrap();
    assert!(has(&p, "alice", "10.9.0.1"));
    assert!(has(&p, "alice", "10.9.0.2"));
    // carol is only in the inventory (and a group member): she becomes a user.
    assert!(has(&p, "carol", "10.9.0.3"));
    assert!(has(&p, "group:ops", "10.9.0.3"));
    assert!(has(&p, "group:staff", "10.9.0.3"));
}

#[test]
fn every_claim_is_recorded_with_its_reason() {
    let p = parse_with("p.yaml", POLICY, &inventory()).unwrap();
    let find = |d: &str, t: &str| {
        p.membership
            .iter()
            .find(|m| m.device == d && m.tag == t)
            .unwrap_or_else(|| panic!("no record for {d} {t}"))
    };
    assert_eq!(p.membership.len(), 11);
    assert!(find("db-1", "tag:db").granted);
    assert_eq!(find("db-1", "tag:db").origin, "inv.yaml:db-1");
    let r = find("stray", "tag:web");
    assert!(!r.granted);
    assert!(r.reason.contains("alice, group:staff"), "{}", r.reason);
    let r = find("stray", "tag:nobody");
    assert!(!r.granted && r.reason.contains("no entry"), "{}", r.reason);
    let r = find("stray", "tag:nope");
    assert!(
        !r.granted && r.reason.contains("does not define"),
        "{}",
        r.reason
    );
    let r = find("carols", "tag:adm");
    assert!(!r.granted, "{}", r.reason);
}

#[test]
fn rules_and_tests_see_inventory_members() {
    let policy = format!("{POLICY}tests:\n  - src: laptop-user\n    accept: [tag:db:5432]\n")
        .replace("laptop-user", "tag:web");
    let p = parse_with("p.yaml", &policy, &inventory()).unwrap();
    let a: IpAddr = "10.9.0.2".parse().unwrap();
    let b: IpAddr = "10.1.0.2".parse().unwrap();
    assert_eq!(crate::eval::first_match(&p, a, b, 6, 5432), Some(1));
    assert_eq!(crate::eval::first_match(&p, a, b, 6, 5433), None);
    // Without the laptop in the inventory, the same packet is denied.
    let mut inv = inventory();
    inv.devices.retain(|d| d.name != "laptop");
    let p = parse_with("p.yaml", &policy, &inv).unwrap();
    assert_eq!(crate::eval::first_match(&p, a, b, 6, 5432), None);
}

#[test]
fn a_user_with_no_listed_addresses_is_fine_when_the_inventory_has_devices() {
    let policy = "users:\n  dave: []\nacls:\n  - {action: accept, src: [dave], dst: ['*:22']}\n";
    assert!(parse("p.yaml", policy).is_err());
    let inv = Inventory {
        devices: vec![dev("d", "10.2.0.1", Some("dave"), &[])],
        users: vec![],
    };
    let p = parse_with("p.yaml", policy, &inv).unwrap();
    assert!(has(&p, "dave", "10.2.0.1"));
}

#[test]
fn tag_owners_mistakes_are_errors_with_positions() {
    let bad = |text: &str| {
        let e = parse("p.yaml", text).expect_err("should be rejected");
        let d = e.errors().next().unwrap().clone();
        (
            d.pos.expect("position").line,
            d.message,
            d.help.unwrap_or_default(),
        )
    };
    let (l, m, h) = bad("tags:\n  web: []\ntagOwners:\n  tag:wbe: [alice]\n");
    assert_eq!(l, 4);
    assert!(m.contains("does not define"), "{m}");
    assert!(h.contains("tag:web"), "{h}");
    let (l, m, _) = bad("tags:\n  web: []\ntagOwners:\n  web: [alice]\n");
    assert_eq!(l, 4);
    assert!(m.contains("is not a tag"), "{m}");
    let (l, m, _) = bad("tags:\n  web: []\ntagOwners:\n  tag:web: [group:nope]\n");
    assert_eq!(l, 4);
    assert!(m.contains("nope"), "{m}");
    let (_, m, _) = bad("tags:\n  web: []\ntagOwners:\n  tag:web: [autogroup:shared]\n");
    assert!(m.contains("cannot own a tag"), "{m}");
    let (_, m, _) = bad("tags:\n  web: []\ntagOwners:\n  tag:web: ['bad name!']\n");
    assert!(m.contains("not a device name"), "{m}");
}

#[test]
fn inventory_owner_clashing_with_a_host_is_a_warning() {
    let policy =
        "hosts:\n  bob: 10.0.0.9\nacls:\n  - {action: accept, src: [bob], dst: ['*:22']}\n";
    let inv = Inventory {
        devices: vec![dev("d", "10.2.0.1", Some("bob"), &[])],
        users: vec![],
    };
    let p = parse_with("p.yaml", policy, &inv).unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.message.contains("defines as a host")),
        "{:?}",
        p.warnings
    );
    assert!(!has(&p, "bob", "10.2.0.1"));
}

//! Tailscale policy files enforced with real connections: the lab tailnet
//! of `policies/tailscale/lab.hujson` with its inventory admits what the
//! file allows and drops the rest — given to `run` as it is (with
//! `--inventory`), and converted to segment's YAML; and every example
//! tailnet of `policies/tailscale/` passes its own `tests` block on the
//! wire.

use std::{net::IpAddr, path::Path};

use segment::policy::{self, Inventory, convert};
use segment_tests::{
    agent::{Agent, Dirs},
    lab::{HostSpec, Lab},
    traffic::{
        LONG, SHORT, Tcp, assert_tcp, ip, sa, tcp_echo_server, tcp_exchange, udp_echo_server,
        udp_exchange,
    },
};

#[test]
fn a_tailnet_policy_file_is_enforced() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tailscale");
    let inv = Inventory::load(&dir.join("lab.inventory.yaml")).expect("inventory");
    let p = policy::load_with(&dir.join("lab.hujson"), &inv).expect("policy");
    let yaml = convert::to_yaml(&p);

    let lab = Lab::standard();
    let _agent = Agent::start(&lab.gw, &yaml, &lab.gw_ifaces(), &[]);
    admits_what_the_lab_tailnet_allows(&lab);
}

#[test]
fn run_enforces_a_tailnet_policy_file_with_its_inventory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tailscale");
    let lab = Lab::standard();
    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.state).expect("state dir");
    let policy = dirs.state.join("lab.hujson");
    std::fs::copy(dir.join("lab.hujson"), &policy).expect("copy the policy");
    let inventory = dir.join("lab.inventory.yaml");
    let inventory = inventory.to_str().expect("path");
    let _agent = Agent::start_with(
        &lab.gw,
        dirs,
        &policy,
        &lab.gw_ifaces(),
        &["--inventory", inventory],
    );
    admits_what_the_lab_tailnet_allows(&lab);
}

fn admits_what_the_lab_tailnet_allows(lab: &Lab) {
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let _s3 = tcp_echo_server(&web.ns, sa(web.ip4(), 80));
    let _s4 = tcp_echo_server(&web.ns, sa(web.ip4(), 5432));

    // tag:web → tag:db:5432 (acl, tcp).
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
    // carol (group:ops) → tag:db:22; alice, on the same laptop, is denied.
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.7")),
        sa(db.ip4(), 22),
        Tcp::Echoed,
    );
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(db.ip4(), 22),
        Tcp::TimedOut,
    );
    // autogroup:member → tag:web:80 (grant), for alice too.
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(web.ip4(), 80),
        Tcp::Echoed,
    );
    // No rule admits db → web.
    assert_tcp(&db.ns, None, sa(web.ip4(), 5432), Tcp::TimedOut);
}

/// Every example tailnet of `policies/tailscale/` (each with its inventory)
/// enforced by `run` on a lab built from that inventory: one namespace per
/// device (with the device's addresses) and per literal address or host
/// the file's own `tests` name. Each of those tests — written by hand, the
/// oracle here — is then tried with real connections from every device of
/// its source to every device of each destination, in each address family
/// both have: `accept` entries must echo, `deny` entries must not.
///
/// The test resolves the tests' principals itself, from the raw document
/// and the inventory records (tags, owners, the `groups` and `hosts`
/// sections), as Tailscale defines them: a user's devices are the untagged
/// ones they own; a tag's, the devices carrying it.
#[test]
fn every_example_tailnet_passes_its_own_tests_with_real_connections() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tailscale");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("policies/tailscale")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hujson"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "example tailnets: {files:?}");
    let mut report = Vec::new();
    for file in &files {
        let counts = enforce_example(file);
        assert!(
            counts.accepted > 0 && counts.denied > 0,
            "{}: {counts:?} — a file whose tests were not exercised proves nothing",
            file.display()
        );
        report.push(format!(
            "{}: {} connections accepted, {} dropped, as its tests say; {} test entries \
             untried (no device of the source in the destination's family)",
            file.display(),
            counts.accepted,
            counts.denied,
            counts.untried
        ));
    }
    println!("{}", report.join("\n"));
}

#[derive(Debug, Default)]
struct Counts {
    /// Connections that had to pass and did.
    accepted: usize,
    /// Connections that had to be dropped and were.
    denied: usize,
    /// Test entries no connection could try (a source without devices, a
    /// destination in no family of the source).
    untried: usize,
}

/// A device of the inventory as Tailscale sees it: the tags its owner may
/// apply (`tagOwners`), the others refused.
struct Node {
    addresses: Vec<IpAddr>,
    owner: Option<String>,
    tags: Vec<String>,
}

/// Applies `tagOwners`: a tag holds if its owners name the device's owner
/// (as a login, in a group, or as `autogroup:admin` by the inventory's
/// roles) or a tag the device holds.
fn nodes(doc: &serde_json::Value, inventory: &Inventory) -> Vec<Node> {
    let admins: Vec<&str> = inventory
        .users
        .iter()
        .filter(|u| u.roles.iter().any(|r| r == "admin"))
        .map(|u| u.login.as_str())
        .collect();
    let owns = |entry: &str, user: &str, held: &[String]| -> bool {
        if entry == "autogroup:admin" {
            admins.contains(&user)
        } else if entry.starts_with("group:") {
            doc["groups"][entry]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m.as_str() == Some(user)))
        } else if entry.starts_with("tag:") {
            held.iter().any(|t| t == entry)
        } else if entry.starts_with("autogroup:") {
            panic!("tagOwners entry {entry}: extend this test")
        } else {
            entry == user
        }
    };
    inventory
        .devices
        .iter()
        .map(|d| {
            let user = d.owner.as_deref().unwrap_or("");
            let mut held: Vec<String> = Vec::new();
            // Twice: a tag owned by a tag may come after it.
            for _ in 0..2 {
                for tag in &d.tags {
                    let entries = doc["tagOwners"][tag]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let granted = entries
                        .iter()
                        .any(|e| owns(e.as_str().expect("owner"), user, &held));
                    if granted && !held.contains(tag) {
                        held.push(tag.clone());
                    }
                }
            }
            Node {
                addresses: d.addresses.clone(),
                owner: d.owner.clone(),
                tags: held,
            }
        })
        .collect()
}

/// The hosts a test entry names, each as its addresses (a device has all
/// of its own; a literal address or host alias is one host).
fn principals(name: &str, doc: &serde_json::Value, devices: &[Node]) -> Vec<Vec<IpAddr>> {
    let untagged_of = |user: &str| {
        devices
            .iter()
            .filter(|d| d.tags.is_empty() && d.owner.as_deref() == Some(user))
            .map(|d| d.addresses.clone())
            .collect::<Vec<_>>()
    };
    if name.starts_with("tag:") {
        return devices
            .iter()
            .filter(|d| d.tags.iter().any(|t| t == name))
            .map(|d| d.addresses.clone())
            .collect();
    }
    if name.starts_with("group:") {
        let members = doc["groups"][name].as_array().expect("group in the file");
        return members
            .iter()
            .flat_map(|m| untagged_of(m.as_str().expect("member")))
            .collect();
    }
    if name.contains('@') {
        return untagged_of(name);
    }
    let literal = doc["hosts"][name].as_str().unwrap_or(name);
    let addr: IpAddr = literal
        .parse()
        .unwrap_or_else(|_| panic!("test target {name} ({literal}) is not an address"));
    vec![vec![addr]]
}

/// `tag:db:5432`, `10.0.0.1:22`, `[fd00::1]:80` → (target, port).
fn split_target(entry: &str) -> (String, u16) {
    let (target, port) = entry.rsplit_once(':').expect("target:port");
    let target = target.trim_start_matches('[').trim_end_matches(']');
    (target.to_string(), port.parse().expect("a single port"))
}

fn enforce_example(file: &Path) -> Counts {
    let stem = file.file_stem().and_then(|s| s.to_str()).expect("name");
    let inventory = ["yaml", "json"]
        .iter()
        .map(|ext| file.with_file_name(format!("{stem}.inventory.{ext}")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{stem} has no inventory"));
    let text = std::fs::read_to_string(file).expect("policy");
    let doc = policy::hujson::to_json(&policy::hujson::parse(&text).expect("HuJSON"));
    let devices = nodes(&doc, &Inventory::load(&inventory).expect("inventory"));

    // The cases, resolved to addresses: (proto, from, to, port, accept).
    let mut cases = Vec::new();
    let mut untried = 0;
    for test in doc["tests"].as_array().expect("tests") {
        let proto = test["proto"].as_str().unwrap_or("tcp").to_string();
        let sources = principals(test["src"].as_str().expect("src"), &doc, &devices);
        for (key, accept) in [("accept", true), ("deny", false)] {
            for entry in test[key].as_array().into_iter().flatten() {
                let (target, port) = split_target(entry.as_str().expect("entry"));
                let mut tried = false;
                for from in &sources {
                    for to in principals(&target, &doc, &devices) {
                        for (f, t) in pairs_by_family(from, &to) {
                            cases.push((proto.clone(), f, t, port, accept));
                            tried = true;
                        }
                    }
                }
                if !tried {
                    untried += 1;
                }
            }
        }
    }

    // One namespace per address group: devices, then the literals.
    let mut groups: Vec<Vec<IpAddr>> = devices.iter().map(|d| d.addresses.clone()).collect();
    for (_, from, to, _, _) in &cases {
        for a in [from, to] {
            if !groups.iter().any(|g| g.contains(a)) {
                groups.push(vec![*a]);
            }
        }
    }
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let specs = groups
        .iter()
        .enumerate()
        .map(|(i, addrs)| {
            let mut v4 = vec![(leak(format!("10.250.{i}.1")), 24)];
            let mut v6 = vec![(leak(format!("fd99:0:{i}::1")), 64)];
            for a in addrs {
                match a {
                    IpAddr::V4(_) => v4.push((leak(a.to_string()), 32)),
                    IpAddr::V6(_) => v6.push((leak(a.to_string()), 128)),
                }
            }
            HostSpec {
                name: leak(format!("h{i}")),
                v4,
                v6,
                gw4: leak(format!("10.250.{i}.254")),
                gw6: Some(leak(format!("fd99:0:{i}::fe"))),
            }
        })
        .collect();
    let lab = Lab::new(specs);
    for (host, addrs) in lab.hosts.iter().zip(&groups) {
        for a in addrs {
            let (family, len) = if a.is_ipv4() { ("-4", 32) } else { ("-6", 128) };
            lab.gw.ip(&[
                family,
                "route",
                "add",
                &format!("{a}/{len}"),
                "dev",
                &host.gw_iface,
            ]);
        }
    }
    let ns_of = |a: &IpAddr| {
        let i = groups.iter().position(|g| g.contains(a)).expect("placed");
        &lab.hosts[i].ns
    };

    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.state).expect("state dir");
    let policy = dirs.state.join(format!("{stem}.hujson"));
    std::fs::copy(file, &policy).expect("copy the policy");
    let inventory = inventory.to_str().expect("path");
    let _agent = Agent::start_with(
        &lab.gw,
        dirs,
        &policy,
        &lab.gw_ifaces(),
        &["--inventory", inventory],
    );

    let mut counts = Counts {
        untried,
        ..Counts::default()
    };
    for (proto, from, to, port, accept) in &cases {
        let dst = sa(*to, *port);
        let passed = match proto.as_str() {
            "tcp" => {
                let _server = tcp_echo_server(ns_of(to), dst);
                let timeout = if *accept { LONG } else { SHORT };
                let got = tcp_exchange(ns_of(from), Some(*from), dst, timeout);
                assert!(
                    matches!(got, Tcp::Echoed | Tcp::TimedOut),
                    "{stem}: tcp {from} → {dst}: {got:?}"
                );
                got == Tcp::Echoed
            }
            "udp" => {
                let _server = udp_echo_server(ns_of(to), dst);
                let timeout = if *accept { LONG } else { SHORT };
                udp_exchange(ns_of(from), Some(*from), dst, timeout)
            }
            other => panic!("{stem}: a test with proto {other} (extend this test)"),
        };
        assert_eq!(
            passed,
            *accept,
            "{stem}: {proto} {from} → {dst} should be {}",
            if *accept { "accepted" } else { "denied" }
        );
        if *accept {
            counts.accepted += 1;
        } else {
            counts.denied += 1;
        }
    }
    counts
}

/// Every (source address, destination address) of one family.
fn pairs_by_family(from: &[IpAddr], to: &[IpAddr]) -> Vec<(IpAddr, IpAddr)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let f = from.iter().find(|a| a.is_ipv6() == v6);
        let t = to.iter().find(|a| a.is_ipv6() == v6);
        if let (Some(f), Some(t)) = (f, t) {
            out.push((*f, *t));
        }
    }
    out
}

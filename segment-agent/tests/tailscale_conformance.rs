//! Conformance with Tailscale itself: replays headscale's recordings of the
//! hosted Tailscale control server (`../shared/tailscale/headscale-captures.tar.xz`).
//!
//! For each capture: segment must accept the policy Tailscale accepted and
//! refuse (or warn about, naming why) the one it refused; for an accepted
//! policy, with the capture's topology as the inventory, the set of
//! (source, destination, protocol, port) that segment admits toward each
//! node's own addresses must equal the packet filter Tailscale pushed to
//! that node (restricted to those addresses: segment has no subnet routers
//! or exit nodes, so routes are out of scope).
//!
//! Prints the pass count per category and every mismatch with its reason.
//! Deliberate differences are listed in `DEVIATIONS` with their reason;
//! anything else fails the test.
//!
//! Run: `SEGMENT_SKIP_EBPF=1 cargo test -p segment-agent --test tailscale_conformance -- --nocapture`

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use segment::policy::{
    Device, Inventory, InventoryUser, Policy, has_ports,
    hujson::{self, Node, Value},
    tailscale,
};

/// Captures where segment differs from Tailscale on purpose, and why.
const DEVIATIONS: &[(&str, &str)] = &[];

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tailscale")
}

struct Unpacked(PathBuf);

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unpack() -> Unpacked {
    let dir = std::env::temp_dir().join(format!("segment-tscap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let archive = shared().join("headscale-captures.tar.xz");
    let st = Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("tar runs");
    assert!(st.success(), "cannot unpack {}", archive.display());
    Unpacked(dir)
}

fn s(n: &Node) -> &str {
    n.as_str().unwrap_or_default()
}

fn arr(n: Option<&Node>) -> &[Node] {
    match n.map(|n| &n.value) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

fn members(n: Option<&Node>) -> &[(hujson::Key, Node)] {
    match n.map(|n| &n.value) {
        Some(Value::Object(m)) => m,
        _ => &[],
    }
}

fn num(n: Option<&Node>) -> u64 {
    match n.map(|n| &n.value) {
        Some(Value::Number(x)) => x.parse().unwrap_or(0),
        _ => 0,
    }
}

/// The capture's topology as an inventory: the tailnet's owner has the
/// Owner role (as the account that created it); tagged nodes were tagged
/// by it.
fn inventory(cap: &Node) -> Inventory {
    let topo = cap.get("topology").expect("topology");
    let owner = cap.get("tailnet").map(s).unwrap_or_default().to_owned();
    let mut logins = BTreeMap::new();
    let mut users = Vec::new();
    for u in arr(topo.get("users")) {
        let email = u.get("email").map(s).unwrap_or_default().to_owned();
        logins.insert(
            u.get("name").map(s).unwrap_or_default().to_owned(),
            email.clone(),
        );
        users.push(InventoryUser {
            roles: if email == owner {
                vec!["owner".into()]
            } else {
                Vec::new()
            },
            login: email,
        });
    }
    let mut devices = Vec::new();
    for (k, n) in members(topo.get("nodes")) {
        let mut addresses: Vec<IpAddr> = Vec::new();
        for f in ["ipv4", "ipv6"] {
            if let Some(a) = n
                .get(f)
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
            {
                addresses.push(a);
            }
        }
        let tags: Vec<String> = arr(n.get("tags")).iter().map(|t| s(t).to_owned()).collect();
        let owner_login = match n.get("user").and_then(|u| u.as_str()) {
            Some(u) => logins.get(u).cloned(),
            None if !tags.is_empty() => Some(owner.clone()),
            None => None,
        };
        devices.push(Device {
            name: k.name.clone(),
            addresses,
            owner: owner_login,
            tags,
            origin: format!("topology node {}", k.name),
        });
    }
    Inventory { devices, users }
}

/// Inclusive address range of a prefix or `*`, per family.
fn ranges_of(text: &str, v4: bool) -> Vec<(u128, u128)> {
    if text == "*" {
        return vec![(0, if v4 { u128::from(u32::MAX) } else { u128::MAX })];
    }
    if let Some((a, b)) = text.split_once('-') {
        let (Ok(a), Ok(b)) = (a.parse::<IpAddr>(), b.parse::<IpAddr>()) else {
            return Vec::new();
        };
        if a.is_ipv4() != v4 {
            return Vec::new();
        }
        return vec![(addr_num(a), addr_num(b))];
    }
    let net: ipnet::IpNet = match text.parse() {
        Ok(n) => n,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(a) => a.into(),
            Err(_) => return Vec::new(),
        },
    };
    net_range(&net, v4).into_iter().collect()
}

fn net_range(net: &ipnet::IpNet, v4: bool) -> Option<(u128, u128)> {
    match net {
        ipnet::IpNet::V4(n) if v4 => Some((
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        )),
        ipnet::IpNet::V6(n) if !v4 => Some((u128::from(n.network()), u128::from(n.broadcast()))),
        _ => None,
    }
}

fn addr_num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn net_contains(text: &str, a: IpAddr) -> bool {
    ranges_of(text, a.is_ipv4())
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&addr_num(a)))
}

/// (source range, port range) boxes admitted toward one address and protocol.
type Boxes = Vec<((u128, u128), (u16, u16))>;

fn recorded(node: &Node, a: IpAddr, proto: u8) -> Boxes {
    let mut out = Vec::new();
    for m in arr(node.get("packet_filter_matches")) {
        let protos: Vec<u8> = match arr(m.get("IPProto")) {
            [] => vec![6, 17, 1, 58],
            p => p.iter().map(|x| num(Some(x)) as u8).collect(),
        };
        if !protos.contains(&proto) {
            continue;
        }
        for d in arr(m.get("Dsts")) {
            if !net_contains(d.get("Net").map(s).unwrap_or_default(), a) {
                continue;
            }
            let ports = d.get("Ports");
            let (lo, hi) = if has_ports(proto) {
                (
                    num(ports.and_then(|p| p.get("First"))) as u16,
                    num(ports.and_then(|p| p.get("Last"))) as u16,
                )
            } else {
                (0, u16::MAX)
            };
            for src in arr(m.get("Srcs")) {
                for r in ranges_of(s(src), a.is_ipv4()) {
                    out.push((r, (lo, hi)));
                }
            }
        }
    }
    out
}

fn ours(policy: &Policy, a: IpAddr, proto: u8) -> Boxes {
    let mut out = Vec::new();
    for r in &policy.rules {
        if !r.protos.contains(&proto) {
            continue;
        }
        for d in &r.dst {
            if !policy.selector_contains(&d.selector, a) {
                continue;
            }
            let port_ranges: Vec<(u16, u16)> = match (&d.ports, has_ports(proto)) {
                (_, false) | (segment::policy::PortSet::Any, _) => vec![(0, u16::MAX)],
                (segment::policy::PortSet::Ranges(rs), true) => {
                    rs.iter().map(|r| (r.lo, r.hi)).collect()
                }
            };
            for src in &r.src {
                for p in policy.selector_prefixes(src) {
                    if let Some(range) = net_range(&p, a.is_ipv4()) {
                        for pr in &port_ranges {
                            out.push((range, *pr));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The first difference between two unions of boxes, if any.
fn difference(a: &Boxes, b: &Boxes) -> Option<(u128, u16, bool)> {
    let mut cuts: Vec<u128> = Vec::new();
    for ((lo, hi), _) in a.iter().chain(b) {
        cuts.push(*lo);
        if *hi < u128::MAX {
            cuts.push(hi + 1);
        }
    }
    cuts.sort();
    cuts.dedup();
    let ports_at = |boxes: &Boxes, x: u128| {
        let mut v: Vec<(u16, u16)> = boxes
            .iter()
            .filter(|((lo, hi), _)| *lo <= x && x <= *hi)
            .map(|(_, p)| *p)
            .collect();
        v.sort();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (lo, hi) in v {
            match merged.last_mut() {
                Some(l) if u32::from(lo) <= u32::from(l.1) + 1 => l.1 = l.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    };
    for x in cuts {
        let (pa, pb) = (ports_at(a, x), ports_at(b, x));
        if pa != pb {
            // A port allowed by one side and not the other.
            let inside = |v: &[(u16, u16)], p: u16| v.iter().any(|(l, h)| *l <= p && p <= *h);
            let candidates = pa.iter().chain(&pb).flat_map(|(l, h)| [*l, *h]);
            for p in candidates {
                if inside(&pa, p) != inside(&pb, p) {
                    return Some((x, p, inside(&pa, p)));
                }
            }
            return Some((x, 0, !pa.is_empty()));
        }
    }
    None
}

fn show(x: u128, v4: bool) -> String {
    if v4 {
        std::net::Ipv4Addr::from(x as u32).to_string()
    } else {
        std::net::Ipv6Addr::from(x).to_string()
    }
}

/// The sources Tailscale's filter can ever see: its address ranges (less
/// the range it reserves, 100.115.92.0/23) and the approved subnet routes.
/// segment's `*` is every address; Tailscale's is every address its tailnet
/// carries, so filters are compared over this space.
fn universe(cap: &Node, v4: bool) -> Vec<(u128, u128)> {
    let mut texts: Vec<String> = vec!["fd7a:115c:a1e0::/48".into()];
    let mut out = Vec::new();
    let cgnat = ranges_of("100.64.0.0/10", true);
    let reserved = ranges_of("100.115.92.0/23", true);
    if v4 {
        let (lo, hi) = cgnat[0];
        let (rlo, rhi) = reserved[0];
        out.push((lo, rlo - 1));
        out.push((rhi + 1, hi));
    }
    for (_, n) in members(cap.get("topology").and_then(|t| t.get("nodes"))) {
        for r in arr(n.get("approved_routes")) {
            texts.push(s(r).to_owned());
        }
    }
    for t in texts {
        out.extend(ranges_of(&t, v4));
    }
    out
}

fn clip(boxes: Boxes, space: &[(u128, u128)]) -> Boxes {
    let mut out = Vec::new();
    for ((lo, hi), p) in boxes {
        for (ulo, uhi) in space {
            let (a, b) = (lo.max(*ulo), hi.min(*uhi));
            if a <= b {
                out.push(((a, b), p));
            }
        }
    }
    out
}

/// Compares every node's filter; returns the first mismatch, explained.
fn compare(cap: &Node, policy: &Policy, inv: &Inventory) -> Option<String> {
    let spaces = [universe(cap, true), universe(cap, false)];
    for (k, node) in members(cap.get("captures")) {
        let Some(dev) = inv.devices.iter().find(|d| d.name == k.name) else {
            continue;
        };
        if node.get("packet_filter_matches").is_none() {
            // Some policy-test captures record no filter for a node.
            continue;
        }
        for &a in &dev.addresses {
            for proto in [6u8, 17, 1, 58, 132, 47, 50, 51, 2] {
                let space = &spaces[usize::from(!a.is_ipv4())];
                let r = clip(recorded(node, a, proto), space);
                let o = clip(ours(policy, a, proto), space);
                if let Some((src, port, ours_allows)) = difference(&o, &r) {
                    return Some(format!(
                        "node {} ({a}): proto {proto} from {} port {port}: segment {}, Tailscale {}",
                        k.name,
                        show(src, a.is_ipv4()),
                        if ours_allows { "admits" } else { "denies" },
                        if ours_allows { "denies" } else { "admits" },
                    ));
                }
            }
        }
    }
    None
}

#[derive(Default)]
struct Tally {
    total: usize,
    pass: usize,
    deviations: usize,
    mismatches: Vec<String>,
}

#[test]
fn replays_every_capture() {
    let dir = unpack();
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in walk(&dir.0) {
        if entry.extension().is_some_and(|e| e == "hujson") {
            files.push(entry);
        }
    }
    files.sort();
    assert!(
        files.len() >= 538,
        "expected 538 captures, found {}",
        files.len()
    );
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for f in &files {
        let category = f
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = f.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(f).unwrap();
        let cap = hujson::parse(&text).unwrap_or_else(|e| panic!("{}: {}", f.display(), e.message));
        let t = tallies.entry(category.clone()).or_default();
        t.total += 1;
        let input = cap.get("input").expect("input");
        let code = num(input.get("api_response_code"));
        let message = input
            .get("api_response_body")
            .and_then(|b| b.get("message"))
            .map(s)
            .unwrap_or_default()
            .to_owned();
        let policy_text = match input.get("full_policy") {
            Some(n) => match &n.value {
                Value::String(p) => p.clone(),
                _ => hujson::to_json(n).to_string(),
            },
            None => panic!("{id}: no policy"),
        };
        let inv = inventory(&cap);
        let result = tailscale::parse(&format!("{id}.json"), &policy_text, &inv);
        let outcome: Result<(), String> = match (code, result) {
            (200, Err(e)) => Err(format!(
                "Tailscale accepted it; segment refused: {}",
                e.errors()
                    .next()
                    .map(|d| d.message.clone())
                    .unwrap_or_default()
            )),
            (200, Ok(p)) => {
                let failed = test_failures(&p);
                if let Some(f) = failed {
                    Err(format!("Tailscale accepted it; a test fails here: {f}"))
                } else {
                    match compare(&cap, &p, &inv) {
                        Some(m) => Err(m),
                        None => Ok(()),
                    }
                }
            }
            (_, Err(_)) => Ok(()),
            (_, Ok(p)) => {
                let warned = p
                    .warnings
                    .iter()
                    .any(|w| w.message.contains("Tailscale refuses"));
                if warned || test_failures(&p).is_some() {
                    Ok(())
                } else {
                    Err(format!(
                        "Tailscale refused it ({message}); segment accepted it without a word"
                    ))
                }
            }
        };
        match outcome {
            Ok(()) => t.pass += 1,
            Err(why) => {
                if let Some((_, reason)) = DEVIATIONS.iter().find(|(d, _)| *d == id) {
                    t.deviations += 1;
                    println!("deviation {category}/{id}: {why} — {reason}");
                } else {
                    t.mismatches.push(format!("{category}/{id}: {why}"));
                }
            }
        }
    }
    let mut all = Vec::new();
    println!("\nTailscale conformance (headscale captures):");
    for (cat, t) in &tallies {
        println!(
            "  {cat:<20} {}/{} pass, {} documented deviations, {} mismatches",
            t.pass,
            t.total,
            t.deviations,
            t.mismatches.len()
        );
        all.extend(t.mismatches.iter().cloned());
    }
    for m in &all {
        println!("MISMATCH {m}");
    }
    assert!(all.is_empty(), "{} mismatches (listed above)", all.len());
}

/// The first failing test assertion of a policy, if any.
fn test_failures(p: &Policy) -> Option<String> {
    let bed = p.test_bed.as_deref()?;
    let compiled = segment::compile::compile(bed).ok()?;
    segment::verify::run(bed, &compiled)
        .into_iter()
        .find(|o| !o.holds)
        .map(|o| format!("test {} src {} {:?} {}", o.test, o.src, o.expect, o.dst))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

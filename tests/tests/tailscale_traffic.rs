//! A Tailscale policy file enforced with real connections: the lab tailnet
//! of `policies/tailscale/lab.hujson` with its inventory admits what the
//! file allows and drops the rest — given to `run` as it is (with
//! `--inventory`), and converted to segment's YAML.

use std::path::Path;

use segment::policy::{self, Inventory, convert};
use segment_tests::{
    agent::{Agent, Dirs},
    lab::Lab,
    traffic::{Tcp, assert_tcp, ip, sa, tcp_echo_server},
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

//! `cargo xtask demo`: the built-in example policy enforced on a gateway
//! between five namespaces (web server, database, an office with alice, bob,
//! carol and dave, a staff PC, a finance file server), real connections that
//! the policy allows and denies, the reason for each, and the per-segment
//! counters. Everything is removed at the end.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use segment_tests::{
    agent::Agent,
    lab::{HostSpec, Lab},
    netns::Netns,
    traffic::{Server, Tcp, ping, tcp_echo_server, tcp_exchange},
};

struct Flow {
    from: &'static str,
    src: &'static str,
    to: &'static str,
    dst: &'static str,
    port: u16,
    allow: bool,
}

#[rustfmt::skip]
const FLOWS: &[Flow] = &[
    Flow { from: "web-server", src: "10.10.0.2", to: "db-primary", dst: "10.10.1.10", port: 5432, allow: true },
    Flow { from: "db-primary", src: "10.10.1.10", to: "web-server", dst: "10.10.0.2", port: 22, allow: false },
    Flow { from: "carol (admins)", src: "10.10.9.7", to: "db-primary", dst: "10.10.1.10", port: 22, allow: true },
    Flow { from: "alice (finance)", src: "10.10.9.5", to: "db-primary", dst: "10.10.1.10", port: 22, allow: false },
    Flow { from: "dave (webmasters)", src: "10.10.9.8", to: "web-server", dst: "10.10.0.2", port: 22, allow: true },
    Flow { from: "dave (webmasters)", src: "10.10.9.8", to: "db-primary", dst: "10.10.1.10", port: 5432, allow: false },
    Flow { from: "carol (it-support)", src: "10.10.9.7", to: "staff-pc", dst: "10.10.9.140", port: 3389, allow: true },
    Flow { from: "alice (finance)", src: "10.10.9.5", to: "staff-pc", dst: "10.10.9.140", port: 3389, allow: false },
    Flow { from: "alice (finance)", src: "10.10.9.5", to: "finance-share", dst: "10.10.5.10", port: 445, allow: true },
    Flow { from: "carol (it-support)", src: "10.10.9.7", to: "finance-share", dst: "10.10.5.10", port: 445, allow: false },
    Flow { from: "db-primary", src: "10.10.1.10", to: "web-server", dst: "10.10.0.2", port: 443, allow: true },
    Flow { from: "bob (IPv6)", src: "fd00:9::6", to: "web-server", dst: "fd00:10::2", port: 443, allow: true },
    Flow { from: "bob (IPv6)", src: "fd00:9::6", to: "web-server", dst: "fd00:10::2", port: 22, allow: false },
];

fn lab() -> Lab {
    Lab::new(vec![
        HostSpec {
            name: "web",
            v4: vec![("10.10.0.2", 24)],
            v6: vec![("fd00:10::2", 64)],
            gw4: "10.10.0.254",
            gw6: Some("fd00:10::fe"),
        },
        HostSpec {
            name: "db",
            v4: vec![("10.10.1.10", 24)],
            v6: vec![],
            gw4: "10.10.1.254",
            gw6: None,
        },
        HostSpec {
            name: "office",
            v4: vec![
                ("10.10.9.5", 25),
                ("10.10.9.6", 25),
                ("10.10.9.7", 25),
                ("10.10.9.8", 25),
            ],
            v6: vec![("fd00:9::6", 64)],
            gw4: "10.10.9.126",
            gw6: Some("fd00:9::fe"),
        },
        HostSpec {
            name: "staffpc",
            v4: vec![("10.10.9.140", 25)],
            v6: vec![],
            gw4: "10.10.9.254",
            gw6: None,
        },
        HostSpec {
            name: "finance",
            v4: vec![("10.10.5.10", 24)],
            v6: vec![],
            gw4: "10.10.5.254",
            gw6: None,
        },
    ])
}

fn host_of<'a>(lab: &'a Lab, addr: &str) -> &'a Netns {
    let ip: IpAddr = addr.parse().expect("address");
    let h = lab
        .hosts
        .iter()
        .find(|h| {
            h.v4.iter().any(|a| IpAddr::V4(*a) == ip) || h.v6.iter().any(|a| IpAddr::V6(*a) == ip)
        })
        .expect("a lab host has this address");
    &h.ns
}

fn agent_cmd(bin: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .context("running segment-agent")?;
    if !out.status.success() {
        bail!(
            "segment-agent {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run() -> Result<()> {
    let bin = crate::util::build_agent(false)?;
    // SAFETY: single-threaded here: nothing else reads the environment yet.
    unsafe { std::env::set_var("SEGMENT_AGENT_BIN", &bin) };
    let policy = agent_cmd(&bin, &["example"])?;
    println!("\n== segment demo: the built-in example policy (`segment-agent example`) ==\n");
    let dir = std::env::temp_dir().join(format!("segment-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy_path = dir.join("example.yaml");
    std::fs::write(&policy_path, &policy)?;
    print!(
        "{}",
        agent_cmd(&bin, &["check", policy_path.to_str().unwrap_or_default()])?
    );
    println!();
    print!(
        "{}",
        agent_cmd(&bin, &["test", policy_path.to_str().unwrap_or_default()])?
    );

    println!(
        "\n== building the lab: a gateway routing between web, db, office, staff-pc, finance =="
    );
    let lab = lab();
    let listeners: std::collections::BTreeSet<(&str, u16)> =
        FLOWS.iter().map(|f| (f.dst, f.port)).collect();
    let mut servers: Vec<Server> = Vec::new();
    for (dst, port) in listeners {
        servers.push(tcp_echo_server(
            host_of(&lab, dst),
            SocketAddr::new(dst.parse()?, port),
        ));
    }
    println!(
        "== starting the enforcer on the gateway's interfaces (native XDP ingress, TC egress) =="
    );
    let agent = Agent::start(&lab.gw, &policy, &lab.gw_ifaces(), &[]);
    for line in agent.log().lines() {
        println!("  agent: {line}");
    }

    println!("\n== real TCP connections through the gateway ==\n");
    println!("  {:<48} {:<7} {:<9} WHY", "CONNECTION", "EXPECT", "RESULT");
    let mut wrong = 0;
    for f in FLOWS {
        let ns = host_of(&lab, f.src);
        let dst = SocketAddr::new(f.dst.parse()?, f.port);
        let timeout = if f.allow {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(700)
        };
        let outcome = tcp_exchange(ns, Some(f.src.parse()?), dst, timeout);
        let allowed = matches!(outcome, Tcp::Echoed);
        let why: serde_json::Value = serde_json::from_str(&agent_cmd(
            &bin,
            &[
                "explain",
                policy_path.to_str().unwrap_or_default(),
                "--src",
                f.src,
                "--dst",
                f.dst,
                "--dport",
                &f.port.to_string(),
                "--json",
            ],
        )?)?;
        let reason = why["rule"]["label"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| "no rule allows it".to_owned());
        let ok = allowed == f.allow;
        if !ok {
            wrong += 1;
        }
        println!(
            "  {:<48} {:<7} {:<9} {}{}",
            format!("{} → {} :{}", f.from, f.to, f.port),
            if f.allow { "allow" } else { "drop" },
            if allowed { "allowed" } else { "dropped" },
            reason,
            if ok { "" } else { "   <-- UNEXPECTED" }
        );
    }
    let office = host_of(&lab, "10.10.9.7");
    let pinged = ping(
        office,
        Some("10.10.9.7".parse()?),
        "10.10.9.140".parse()?,
        Duration::from_secs(2),
    );
    println!(
        "  {:<48} {:<7} {:<9} acl #4 \"it-support-rdp\"",
        "carol → staff-pc ping (no proto: tcp, udp, icmp)",
        "allow",
        if pinged { "allowed" } else { "dropped" },
    );
    if !pinged {
        wrong += 1;
    }

    println!("\n== `segment-agent stats`: what was allowed and dropped, per segment ==\n");
    let dirs = agent.dirs.args();
    let mut args = vec!["stats"];
    args.extend(dirs.iter().map(String::as_str));
    print!("{}", agent_cmd(&bin, &args)?);
    drop(servers);
    drop(agent);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n== lab removed (namespaces, programs, pins) ==");
    if wrong > 0 {
        bail!("{wrong} connection(s) did not behave as the policy says");
    }
    println!("every connection behaved as the policy says");
    Ok(())
}

/// `cargo xtask demo --fleet`: an etcd and three hosts (network namespaces,
/// each with its own agent, pin and state directory) enforcing one policy
/// published once; the hosts enroll with the tags they claim, `tagOwners`
/// grants or refuses them; real connections allowed and dropped; `fleet
/// status`; then etcd is killed and enforcement is shown unchanged.
pub fn run_fleet() -> Result<()> {
    use segment_tests::{
        agent::Dirs,
        fleet::{Fleet, fleet_policy},
    };
    let bin = crate::util::build_agent(false)?;
    // SAFETY: single-threaded here: nothing else reads the environment yet.
    unsafe { std::env::set_var("SEGMENT_AGENT_BIN", &bin) };
    println!("\n== segment fleet demo: one policy in etcd, three hosts enforcing it ==\n");
    println!("== building the lab: web, db, laptop; etcd in the gateway on 10.99.0.1 ==");
    let mut fleet = Fleet::new(false);
    let policy = fleet_policy(None);
    println!("\n-- the policy --\n{policy}");
    let path = fleet.files.path.join("fleet.yaml");
    std::fs::write(&path, &policy)?;
    let (code, out, err) = fleet.cli(
        &fleet.lab.gw,
        &["publish", path.to_str().unwrap_or_default()],
    );
    if code != 0 {
        bail!("publish failed: {out}{err}");
    }
    print!(
        "$ segment-agent publish fleet.yaml --store {}\n{out}",
        fleet.etcd.url()
    );
    let (web, db, laptop) = (
        fleet.lab.host("web"),
        fleet.lab.host("db"),
        fleet.lab.host("laptop"),
    );
    let _servers = [
        tcp_echo_server(&db.ns, SocketAddr::new(db.ip4(), 5432)),
        tcp_echo_server(&web.ns, SocketAddr::new(web.ip4(), 22)),
    ];
    println!(
        "\n== each host runs its own agent: `segment-agent run --store URL --iface eth0 --host NAME --tags ...` =="
    );
    let _db = fleet.agent(&db.ns, "db-1", &["tag:db"], Dirs::new());
    println!("  db-1    claims tag:db");
    let _web = fleet.agent(&web.ns, "web-1", &["tag:web"], Dirs::new());
    println!("  web-1   claims tag:web");
    let _laptop = fleet.agent(&laptop.ns, "laptop", &["tag:web"], Dirs::new());
    println!("  laptop  claims tag:web (tagOwners gives tag:web to web-* only)");
    fleet.wait_converged(&["db-1", "web-1", "laptop"], Duration::from_secs(60));
    let (_, status, _) = fleet.cli(&fleet.lab.gw, &["fleet", "status"]);
    println!(
        "\n$ segment-agent fleet status --store {}\n{status}",
        fleet.etcd.url()
    );

    let flows: [(&str, &Netns, SocketAddr, bool); 3] = [
        (
            "web-1 → db-1 :5432 (tag:web → tag:db)",
            &web.ns,
            SocketAddr::new(db.ip4(), 5432),
            true,
        ),
        (
            "laptop → db-1 :5432 (claim refused)",
            &laptop.ns,
            SocketAddr::new(db.ip4(), 5432),
            false,
        ),
        (
            "db-1 → web-1 :22 (no rule)",
            &db.ns,
            SocketAddr::new(web.ip4(), 22),
            false,
        ),
    ];
    let mut wrong = 0;
    let mut check = |title: &str| {
        println!("\n== {title} ==\n");
        println!("  {:<44} {:<7} RESULT", "CONNECTION", "EXPECT");
        for (what, ns, dst, allow) in &flows {
            let timeout = if *allow {
                Duration::from_secs(3)
            } else {
                Duration::from_millis(800)
            };
            let allowed = matches!(tcp_exchange(ns, None, *dst, timeout), Tcp::Echoed);
            if allowed != *allow {
                wrong += 1;
            }
            println!(
                "  {what:<44} {:<7} {}{}",
                if *allow { "allow" } else { "drop" },
                if allowed { "allowed" } else { "dropped" },
                if allowed == *allow {
                    ""
                } else {
                    "   <-- UNEXPECTED"
                }
            );
        }
    };
    check("real TCP connections between the hosts");
    fleet.etcd.kill9();
    println!(
        "\n== etcd killed (kill -9): the agents keep enforcing the last applied policy and membership =="
    );
    check("the same connections with the store down");
    drop(fleet);
    println!("\n== lab removed (namespaces, etcd, programs, pins) ==");
    if wrong > 0 {
        bail!("{wrong} connection(s) did not behave as the policy says");
    }
    println!("every connection behaved as the policy says, with and without the store");
    Ok(())
}

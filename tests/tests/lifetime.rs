//! Enforcement outlives the agent: `kill -9` leaves programs, conntrack and
//! counters in place; a new agent adopts them (one program per hook, not
//! two); `stats` answers without an agent; `detach` restores the network.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use segment_tests::{
    agent::{Agent, command},
    lab::Lab,
    netns::Netns,
    policies::LAB_POLICY,
    traffic::{LONG, SHORT, Tcp, sa, tcp_echo_server, tcp_exchange},
};

/// XDP program ids attached to `iface` (from `ip -d link`).
fn xdp_prog_ids(ns: &Netns, iface: &str) -> Vec<u32> {
    let out = ns.ip(&["-d", "link", "show", iface]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .filter(|(_, w)| w.starts_with("prog/xdp"))
        .filter_map(|(i, _)| words.get(i + 1..i + 3))
        .filter(|w| w[0] == "id")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// An established connection that stays open across agent restarts.
fn open_stream(ns: &Netns, dst: SocketAddr) -> TcpStream {
    ns.run(|| {
        let s = TcpStream::connect_timeout(&dst, LONG).expect("connect");
        s.set_read_timeout(Some(LONG)).ok();
        s
    })
}

fn roundtrip(s: &mut TcpStream, tag: &str) {
    s.write_all(tag.as_bytes()).expect("write");
    let mut buf = vec![0u8; tag.len()];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
    assert_eq!(buf, tag.as_bytes());
}

#[test]
fn enforcement_survives_kill_9_and_is_adopted_then_detached() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let ids_first = xdp_prog_ids(&lab.gw, &db.gw_iface);
    assert_eq!(ids_first.len(), 1, "one XDP program on {}", db.gw_iface);
    let mut stream = open_stream(&web.ns, sa(db.ip4(), 5432));
    roundtrip(&mut stream, "before");

    // kill -9: nothing opens up, nothing closes.
    let (dirs, policy) = agent.kill9();
    roundtrip(&mut stream, "after kill -9");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );
    // stats reads the pinned maps with no agent running.
    let (code, out, err) = command(None, &dirs, &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let db_seg = stats["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tag:db-server")
        .unwrap();
    assert!(db_seg["dropped_packets"].as_u64().unwrap() >= 1, "{db_seg}");

    // A new agent adopts: same links, new programs, no second attachment.
    let mut agent = Agent::start_with(&lab.gw, dirs, &policy, &lab.gw_ifaces(), &[]);
    let log = agent.log();
    assert!(log.contains("adopting pinned state"), "{log}");
    assert!(log.contains("XDP ingress adopted"), "{log}");
    let ids_second = xdp_prog_ids(&lab.gw, &db.gw_iface);
    assert_eq!(ids_second.len(), 1, "still one XDP program");
    assert_ne!(
        ids_second, ids_first,
        "the new agent's program replaced the old one in place"
    );
    roundtrip(&mut stream, "after restart");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );

    // A second concurrent agent on the same state is refused.
    let (code, _, err) = command(
        Some(&lab.gw),
        &agent.dirs,
        &[
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--iface",
            &db.gw_iface,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another segment agent is running"), "{err}");

    // Stop cleanly (enforcement stays), then detach: the network is open.
    assert_eq!(agent.stop(), Some(0));
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );
    let (code, out, err) = command(None, &agent.dirs, &["detach"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("segment removed"), "{out}");
    assert!(
        xdp_prog_ids(&lab.gw, &db.gw_iface).is_empty(),
        "no XDP program left"
    );
    assert!(!agent.dirs.pin.exists(), "pins removed");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), LONG),
        Tcp::Echoed
    );
    roundtrip(&mut stream, "after detach");
}

#[test]
fn egress_tracks_outgoing_flows_and_enforces_when_asked() {
    let lab = Lab::standard();
    let db = lab.host("db");
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    // The gateway itself (10.10.1.254, in no segment) opens a connection to
    // db. Egress is not enforced by default: the SYN is tracked on the way
    // out, so the SYN-ACK, which no rule allows, passes on the way in.
    {
        let _agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
        assert_eq!(
            tcp_exchange(&lab.gw, None, sa(db.ip4(), 5432), LONG),
            Tcp::Echoed
        );
    }
    // With egress enforced, the same connection is not allowed out.
    let enforced = format!("enforce:\n  ingress: true\n  egress: true\n{LAB_POLICY}");
    let agent = Agent::start(&lab.gw, &enforced, &lab.gw_ifaces(), &[]);
    assert_eq!(
        tcp_exchange(&lab.gw, None, sa(db.ip4(), 5432), SHORT),
        Tcp::TimedOut
    );
    let world = agent.segment("world");
    assert!(
        world["egress"]["dropped_packets"].as_u64().unwrap() >= 1,
        "{world}"
    );
    // Forwarded traffic the policy allows still flows with egress enforced.
    let web = lab.host("web");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
}

//! Enforcement outlives the agent: `kill -9` leaves programs, conntrack and
//! counters in place; a new agent adopts them (one program per hook, not
//! two); `stats` answers without an agent; `detach` restores the network.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use segment::datapath::{Paths, loader::link_facts, paths::Hook};

use segment_tests::{
    agent::{Agent, Dirs, agent_bin, command},
    lab::Lab,
    netns::Netns,
    policies::LAB_POLICY,
    traffic::{LONG, Probe, Stream, Tcp, assert_tcp, sa, tcp_echo_server},
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);

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
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
    let (code, out, err) = command(None, &agent.dirs, &["detach"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("segment removed"), "{out}");
    assert!(
        xdp_prog_ids(&lab.gw, &db.gw_iface).is_empty(),
        "no XDP program left"
    );
    assert!(!agent.dirs.pin.exists(), "pins removed");
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::Echoed);
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
        assert_tcp(&lab.gw, None, sa(db.ip4(), 5432), Tcp::Echoed);
    }
    // With egress enforced, the same connection is not allowed out.
    let enforced = format!("enforce:\n  ingress: true\n  egress: true\n{LAB_POLICY}");
    let agent = Agent::start(&lab.gw, &enforced, &lab.gw_ifaces(), &[]);
    assert_tcp(&lab.gw, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    let world = agent.segment("world");
    assert!(
        world["egress"]["dropped_packets"].as_u64().unwrap() >= 1,
        "{world}"
    );
    // Forwarded traffic the policy allows still flows with egress enforced.
    let web = lab.host("web");
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
}

/// Removes a directory when dropped (one handed over by `Agent::kill9`
/// that no later agent owns).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kernel ids of the XDP and TC links pinned for each interface.
fn link_ids(dirs: &Dirs, ifaces: &[String]) -> Vec<(String, u32, u32)> {
    let paths = Paths::resolve(Some(dirs.pin.clone()), Some(dirs.state.clone()));
    ifaces
        .iter()
        .map(|i| {
            let id = |hook| {
                link_facts(&paths.link(hook, i))
                    .unwrap()
                    .unwrap_or_else(|| panic!("no {hook:?} link pinned for {i}"))
                    .id
            };
            (i.clone(), id(Hook::Xdp), id(Hook::Tc))
        })
        .collect()
}

#[test]
fn a_restart_with_a_fresh_state_dir_adopts_the_links_in_place_and_a_second_agent_is_refused() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let ifaces = lab.gw_ifaces();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &ifaces, &[]);
    let before = link_ids(&agent.dirs, &ifaces);
    let stream = Stream::start(&web.ns, sa(db.ip4(), 5432));
    let probe = Probe::start(&laptop.ns, None, sa(db.ip4(), 5432));
    let (old, _) = agent.kill9();
    let _old_state = RemoveDir(old.state.clone());

    // The state directory is lost: a new agent gets a fresh one, on the same
    // pin directory.
    let fresh = Dirs {
        pin: old.pin.clone(),
        state: Dirs::new().state,
    };
    std::fs::create_dir_all(&fresh.state).unwrap();
    let policy = fresh.state.join("policy.yaml");
    std::fs::write(&policy, LAB_POLICY).unwrap();
    let agent = Agent::start_with(&lab.gw, fresh, &policy, &ifaces, &[]);
    for i in &ifaces {
        assert!(
            agent.log().contains(&format!("{i}: XDP ingress adopted"))
                && agent.log().contains("TC egress adopted"),
            "{}",
            agent.log()
        );
        assert_eq!(xdp_prog_ids(&lab.gw, i).len(), 1, "one program on {i}");
    }
    // The same links: the new programs were swapped into them, so no
    // interface was without a program at any moment.
    assert_eq!(link_ids(&agent.dirs, &ifaces), before);

    // A second agent with yet another state directory on the same pin
    // directory is refused.
    let other = Dirs::new();
    let _other_state = RemoveDir(other.state.clone());
    let mut second = Command::new("nsenter");
    second
        .arg(format!("--net={}", lab.gw.path().display()))
        .arg(agent_bin())
        .args(["run", "--policy", policy.to_str().unwrap()]);
    for i in &ifaces {
        second.args(["--iface", i]);
    }
    let mut second = second
        .args([
            "--metrics-addr",
            "none",
            "--pin-dir",
            agent.dirs.pin.to_str().unwrap(),
            "--state-dir",
            other.state.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second agent on the same pin directory kept running");
        }
        std::thread::sleep(segment_tests::wait::POLL);
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("is running on the pin directory"), "{err}");
    assert_eq!(link_ids(&agent.dirs, &ifaces), before, "untouched by it");

    let report = stream.stop();
    let (attempts, through) = probe.stop();
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.max_gap < Duration::from_millis(500), "{report:?}");
    assert!(attempts > 5);
    assert_eq!(through, 0, "no denied connection got through");
}

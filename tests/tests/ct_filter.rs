//! The conntrack filter (`SEG_CTF_V1`) and the conntrack size, with real
//! traffic through the enforcing gateway: tracked flows keep passing while
//! the filter is rebuilt under them again and again, a flood of unknown
//! flows is dropped by the policy without touching the tables, and
//! `--conntrack-entries` sizes the tables (or is refused).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use segment::datapath::{Paths, ct_filter::Filter, grace::GracePeriod};
use segment_common::{CtKey, map_names, pending_ct_entries};
use segment_tests::{
    agent::{self, Agent, Dirs},
    frames::{L4, Packet, ethernet},
    lab::Lab,
    policies::LAB_POLICY,
    traffic::{
        LONG, RawLink, SHORT, connect, echo, sa, tcp_echo_server, udp_echo_server, udp_exchange,
    },
};

fn reasons(agent: &Agent) -> BTreeMap<String, u64> {
    agent.reasons("ingress")
}

fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

fn paths(agent: &Agent) -> Paths {
    Paths::resolve(Some(agent.dirs.pin.clone()), Some(agent.dirs.state.clone()))
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The datapath's flow key of an IPv4 flow (endpoints in a fixed order).
fn ct_key4(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> CtKey {
    let word = |a: IpAddr| match a {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (s, d) = (word(src), word(dst));
    let src_is_a = (s, sport) <= (d, dport);
    let ((addr_a, port_a), (addr_b, port_b)) = if src_is_a {
        ((s, sport), (d, dport))
    } else {
        ((d, dport), (s, sport))
    };
    CtKey {
        addr_a,
        addr_b,
        port_a,
        port_b,
        proto,
        family: 4,
        _pad: [0; 2],
    }
}

#[test]
fn conntrack_filter_rebuilt_again_and_again_never_hides_a_tracked_flow() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _tcp = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _udp = udp_echo_server(&db.ns, sa(db.ip4(), 5353));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let paths = paths(&agent);
    let filter = Filter::open(&paths).expect("the agent pinned the filter");
    assert!(
        matches!(filter.active(), 1 | 2),
        "the loader built the filter: {}",
        filter.active()
    );
    assert_ne!(filter.key(), [0, 0], "a random key was written");

    // Rebuilds back to back, racing the flows opened and answered below.
    // (The agent's own rebuilds wait for a fill this test never reaches, so
    // this is the only rebuilder, as the pin-dir lock makes the agent.)
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilder = {
        let (stop, paths) = (stop.clone(), paths.clone());
        std::thread::spawn(move || {
            let filter = Filter::open(&paths).expect("open the filter");
            let grace = GracePeriod::new().expect("grace period map");
            let mut bitmaps = [0u32; 2];
            while !stop.load(Ordering::Relaxed) {
                let r = filter.rebuild(&paths, &grace).expect("rebuild");
                bitmaps[r.bitmap as usize] += 1;
            }
            bitmaps
        })
    };

    let before = reasons(&agent);
    let mut conns = Vec::new();
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        conns.push(connect(&web.ns, sa(db.ip4(), 5432)));
        assert!(
            udp_exchange(&web.ns, None, sa(db.ip4(), 5353), LONG),
            "round {round}: a new UDP flow's reply came back"
        );
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(
                echo(c, format!("round {round} conn {i}").as_bytes()),
                "round {round}: connection {i} still answers"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let bitmaps = rebuilder.join().expect("the rebuilder");
    assert!(
        bitmaps[0] >= 5 && bitmaps[1] >= 5,
        "both bitmaps were rebuilt and made active many times: {bitmaps:?}"
    );
    let after = reasons(&agent);
    // db never may open a flow to web: had the filter hidden a flow, its
    // replies would have been judged and dropped.
    assert_eq!(grew(&before, &after, "drop_no_rule"), 0, "{after:?}");
    let replies = (ROUNDS * (ROUNDS + 1) / 2 + ROUNDS) as u64;
    assert!(
        grew(&before, &after, "pass_conntrack") >= replies,
        "every reply passed as tracked ({replies}+): {after:?}"
    );
    // And the filter in force holds every flow of the tables.
    for c in &conns {
        let local = c.local_addr().expect("local");
        let key = ct_key4(local.ip(), local.port(), db.ip4(), 5432, 6);
        assert!(filter.may_hold(&key), "{key:?}");
    }
}

#[test]
fn conntrack_filter_lets_a_flood_of_unknown_udp_drop_by_policy_without_lookups() {
    let lab = Lab::standard();
    let (laptop, db) = (lab.host("laptop"), lab.host("db"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let filter = Filter::open(&paths(&agent)).expect("the agent pinned the filter");
    let tx = RawLink::open(&laptop.ns, "eth0");
    // No rule lets the laptop's users send UDP to db.
    const FLOOD: u64 = 4096;
    let before = reasons(&agent);
    let mut keys = Vec::new();
    for i in 0..FLOOD {
        let sport = 10_000 + i as u16;
        let dport = 7_000 + (i % 977) as u16;
        let p = Packet::new(laptop.ip4(), db.ip4(), L4::Udp { sport, dport });
        tx.send(&ethernet(laptop.gw_mac, laptop.mac, &[], &p.ip()));
        keys.push(ct_key4(laptop.ip4(), sport, db.ip4(), dport, 17));
    }
    wait_for("the flood to be judged", Duration::from_secs(30), || {
        grew(&before, &reasons(&agent), "drop_no_rule") >= FLOOD
    });
    std::thread::sleep(SHORT);
    let after = reasons(&agent);
    assert_eq!(grew(&before, &after, "drop_no_rule"), FLOOD, "{after:?}");
    assert_eq!(grew(&before, &after, "pass_conntrack"), 0, "{after:?}");
    // The bits the datapath tested for them: almost all clear (a set bit is
    // another flow's, or a collision), so almost all skipped both lookups.
    let looked_up = keys.iter().filter(|k| filter.may_hold(k)).count() as u64;
    assert!(
        looked_up * 20 < FLOOD,
        "{looked_up} of {FLOOD} flood packets had to look conntrack up"
    );
}

fn bpftool_max_entries(pin: &std::path::Path) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .expect("running bpftool");
    assert!(out.status.success(), "bpftool map show {}", pin.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["max_entries"].as_u64().expect("max_entries")
}

#[test]
fn conntrack_entries_sizes_the_tables_keeps_pinned_ones_and_refuses_bad_values() {
    let lab = Lab::standard();
    let agent = Agent::start(
        &lab.gw,
        LAB_POLICY,
        &lab.gw_ifaces(),
        &["--conntrack-entries", "4096"],
    );
    let pin = |name: &str| agent.dirs.pin.join(name);
    assert_eq!(bpftool_max_entries(&pin(map_names::CONNTRACK)), 4096);
    assert_eq!(
        bpftool_max_entries(&pin(map_names::CONNTRACK_PENDING)),
        u64::from(pending_ct_entries(4096))
    );

    // A restarted agent asking for another size keeps the pinned tables
    // (and their flows) and says so.
    let (dirs, policy) = agent.kill9();
    let agent = Agent::start_with(
        &lab.gw,
        dirs.clone(),
        &policy,
        &lab.gw_ifaces(),
        &["--conntrack-entries", "8192"],
    );
    assert_eq!(
        bpftool_max_entries(&dirs.pin.join(map_names::CONNTRACK)),
        4096
    );
    let log = agent.log();
    assert!(
        log.contains("keeping the pinned SEG_CT_V2 of 4096 entries (asked for 8192)"),
        "{log}"
    );
    drop(agent);

    // Bad values are refused before anything is loaded.
    let fresh = Dirs::new();
    for (bad, why) in [
        ("12", "between 1024 and 16777216"),
        ("99999999", "between 1024 and 16777216"),
        ("many", "not a number"),
    ] {
        let (code, _, err) = agent::command(
            Some(&lab.gw),
            &fresh,
            &[
                "run",
                "--policy",
                policy.to_str().expect("utf-8 path"),
                "--iface",
                &lab.gw_ifaces()[0],
                "--conntrack-entries",
                bad,
            ],
        );
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
        assert!(!fresh.pin.exists(), "nothing was pinned for {bad}");
    }
}

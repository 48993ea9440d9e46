//! Live operations under traffic: reload storms, broken policies, kill -9
//! and restart, commit-confirmed rollbacks, audit mode, and flushing the
//! connections a new policy forbids.

use std::time::{Duration, Instant};

use segment::{
    control::{Request, request},
    datapath::Paths,
};
use segment_tests::{
    agent::{Agent, command},
    lab::Lab,
    policies::LAB_POLICY,
    traffic::{
        LONG, Probe, SHORT, Stream, Tcp, UdpSink, sa, tcp_echo_server, tcp_exchange, udp_send,
    },
};

fn paths(agent: &Agent) -> Paths {
    Paths::resolve(Some(agent.dirs.pin.clone()), Some(agent.dirs.state.clone()))
}

/// LAB_POLICY with one more rule: a different policy that allows and denies
/// the same things for web → db:5432 and laptop → db:5432.
fn variant() -> String {
    format!(
        "{LAB_POLICY}  - action: accept\n    src: [tag:staff]\n    dst: [tag:web:8080, tag:web:9000-9100]\n    proto: tcp\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn a_reload_storm_neither_interrupts_allowed_nor_lets_denied_through() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let paths = paths(&agent);
    let stream = Stream::start(&web.ns, sa(db.ip4(), 5432));
    let probe = Probe::start(&laptop.ns, None, sa(db.ip4(), 5432));
    let policies = [LAB_POLICY.to_owned(), variant()];
    let mut client_ms = Vec::new();
    let mut switch_ms = Vec::new();
    const RELOADS: usize = 1000;
    for i in 0..RELOADS {
        let req = Request::Apply {
            name: format!("storm-{}.yaml", i % 2),
            policy: policies[i % 2].clone(),
            confirm_within_secs: None,
        };
        let started = Instant::now();
        let resp = request(&paths, &req, Duration::from_secs(10)).expect("agent answers");
        client_ms.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(resp.ok, "reload {i}: {}", resp.message);
        switch_ms.push(resp.data["switch_ms"].as_f64().unwrap());
    }
    let report = stream.stop();
    let (attempts, through) = probe.stop();
    assert!(
        report.error.is_none(),
        "the allowed stream broke: {:?}",
        report.error
    );
    assert!(
        report.max_gap < Duration::from_secs(1),
        "the allowed stream stalled for {:?}",
        report.max_gap
    );
    assert!(report.exchanges > 100, "{report:?}");
    assert!(attempts > 10, "the probe ran ({attempts} attempts)");
    assert_eq!(through, 0, "denied probes got through during the storm");
    for v in [&mut client_ms, &mut switch_ms] {
        v.sort_by(f64::total_cmp);
    }
    eprintln!(
        "{RELOADS} reloads: request→answer median {:.2} ms, p99 {:.2} ms; write+switch median {:.2} ms, p99 {:.2} ms; stream {} exchanges, max gap {:?}, {} retransmits; probe {attempts} attempts, 0 through",
        percentile(&client_ms, 0.5),
        percentile(&client_ms, 0.99),
        percentile(&switch_ms, 0.5),
        percentile(&switch_ms, 0.99),
        report.exchanges,
        report.max_gap,
        report.retransmits
    );
    let s = agent.stats();
    assert_eq!(s["generation"].as_u64().unwrap(), RELOADS as u64 + 1);
}

#[test]
fn a_broken_policy_changes_nothing() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let mut agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let generation = agent.stats()["generation"].as_u64().unwrap();
    // Broken on line 3: an unclosed flow list.
    std::fs::write(
        &agent.policy,
        "tags:\n  web: [10.10.0.0/24]\n  db: [10.10.1.10\n",
    )
    .unwrap();
    agent.wait_for_log("reload rejected", Duration::from_secs(5));
    let log = agent.log();
    assert!(log.contains("policy.yaml:3:"), "the log says where: {log}");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );
    assert_eq!(
        agent.stats()["generation"].as_u64().unwrap(),
        generation,
        "stats still answers, same generation"
    );
    // `reload` reports the rejection with its place, exit 1.
    let (code, _, err) = command(None, &agent.dirs, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("policy.yaml:3:"), "{err}");
    // A semantic error (undefined tag) too.
    std::fs::write(
        &agent.policy,
        format!("{LAB_POLICY}  - action: accept\n    src: [tag:nope]\n    dst: [tag:web:1]\n"),
    )
    .unwrap();
    let (code, _, err) = command(None, &agent.dirs, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("undefined tag `nope`"), "{err}");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed
    );
    assert_eq!(agent.stats()["generation"].as_u64().unwrap(), generation);
}

#[test]
fn kill_9_under_traffic_loses_nothing_and_lets_nothing_through() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let stream = Stream::start(&web.ns, sa(db.ip4(), 5432));
    let probe = Probe::start(&laptop.ns, None, sa(db.ip4(), 5432));
    std::thread::sleep(Duration::from_millis(500));
    let (dirs, policy) = agent.kill9();
    std::thread::sleep(Duration::from_millis(1000));
    let agent = Agent::start_with(&lab.gw, dirs, &policy, &lab.gw_ifaces(), &[]);
    assert!(agent.log().contains("adopted"), "{}", agent.log());
    std::thread::sleep(Duration::from_millis(1000));
    let report = stream.stop();
    let (attempts, through) = probe.stop();
    assert!(report.error.is_none(), "{report:?}");
    assert!(report.max_gap < Duration::from_millis(500), "{report:?}");
    assert_eq!(
        report.retransmits, 0,
        "no packet of the allowed stream was lost: {report:?}"
    );
    assert!(attempts > 5);
    assert_eq!(through, 0, "no denied connection got through");
    eprintln!(
        "kill -9 and restart under traffic: {report:?}, probe {attempts} attempts, 0 through"
    );
}

#[test]
fn apply_with_confirm_within_rolls_back_unless_confirmed() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // The candidate: web may reach db on 22, and no longer on 5432.
    let candidate = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [tag:db-server:22]");
    let path = agent.dirs.state.join("candidate.yaml");
    std::fs::write(&path, &candidate).unwrap();
    let p = path.to_str().unwrap();

    let started = Instant::now();
    let (code, out, err) = command(None, &agent.dirs, &["apply", p, "--confirm-within", "2s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rolls back in 2s"), "{out}");
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), LONG),
        Tcp::Echoed,
        "candidate in force"
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), SHORT),
        Tcp::TimedOut
    );
    let (_, out, _) = command(None, &agent.dirs, &["status"]);
    assert!(out.contains("rolls back in"), "{out}");
    while started.elapsed() < Duration::from_millis(2600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        agent
            .log()
            .contains("was not confirmed in time: rolling back"),
        "{}",
        agent.log()
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed,
        "rolled back"
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
        Tcp::TimedOut
    );
    assert_eq!(
        std::fs::read_to_string(&agent.policy).unwrap(),
        LAB_POLICY,
        "the committed policy is unchanged"
    );

    // Confirmed in time: it stays, and becomes the policy file.
    let (code, _, err) = command(None, &agent.dirs, &["apply", p, "--confirm-within", "2s"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = command(None, &agent.dirs, &["confirm"]);
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 22), LONG),
        Tcp::Echoed,
        "confirmed candidate stays"
    );
    assert_eq!(std::fs::read_to_string(&agent.policy).unwrap(), candidate);
    let (code, _, err) = command(None, &agent.dirs, &["confirm"]);
    assert_eq!(code, 1, "nothing left to confirm: {err}");
    // A candidate that does not validate is refused before it reaches the agent.
    std::fs::write(&path, "acls: [\n").unwrap();
    let (code, _, err) = command(None, &agent.dirs, &["apply", p, "--confirm-within", "2s"]);
    assert_eq!(code, 1);
    assert!(err.contains("candidate.yaml:"), "{err}");
}

#[test]
fn audit_mode_counts_exactly_what_enforce_mode_drops_and_passes_it() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    const N: usize = 25;
    let run = |mode: &str| -> (u64, u64, u64) {
        let policy = format!("mode: {mode}\n{LAB_POLICY}");
        let agent = Agent::start(&lab.gw, &policy, &lab.gw_ifaces(), &[]);
        let sink = UdpSink::start(&db.ns, sa(db.ip4(), 9999));
        udp_send(&laptop.ns, None, sa(db.ip4(), 9999), N);
        let received = sink.stop();
        let seg = agent.segment("tag:db-server");
        (
            seg["dropped_packets"].as_u64().unwrap(),
            seg["would_drop_packets"].as_u64().unwrap(),
            received,
        )
    };
    let (dropped, would, received) = run("enforce");
    assert_eq!(
        (dropped, would, received),
        (N as u64, 0, 0),
        "enforce: all dropped"
    );
    let (dropped, would, received) = run("audit");
    assert_eq!(
        (dropped, would, received),
        (0, N as u64, N as u64),
        "audit: the same count, all delivered"
    );
}

#[test]
fn a_new_policy_flushes_the_connections_it_forbids_and_keeps_the_others() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&web.ns, sa(web.ip4(), 80));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let kept = Stream::start(&laptop.ns, sa(web.ip4(), 80));
    let cut = Stream::start(&web.ns, sa(db.ip4(), 5432));
    std::thread::sleep(Duration::from_millis(300));
    // web → db:5432 is no longer allowed; staff → web:80 still is.
    let without = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [tag:db-server:5433]");
    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "without.yaml".into(),
            policy: without,
            confirm_within_secs: None,
        },
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(resp.ok, "{}", resp.message);
    assert!(
        resp.data["flows_flushed"].as_u64().unwrap() >= 1,
        "{}",
        resp.data
    );
    std::thread::sleep(Duration::from_millis(1500));
    let kept = kept.stop();
    let cut = cut.stop();
    assert!(
        kept.error.is_none() && kept.max_gap < Duration::from_secs(1),
        "allowed by both: {kept:?}"
    );
    assert!(
        cut.max_gap >= Duration::from_secs(1) || cut.error.is_some(),
        "forbidden now: {cut:?}"
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), SHORT),
        Tcp::TimedOut
    );
}

//! Live operations under traffic: reload storms, broken policies, kill -9
//! and restart, commit-confirmed rollbacks, audit mode, and flushing the
//! connections a new policy forbids.

use std::time::{Duration, Instant};

use segment::{
    control::{Request, request},
    datapath::Paths,
};
use segment_tests::{
    agent::{Agent, as_nobody, command},
    lab::Lab,
    policies::LAB_POLICY,
    process::Umask,
    traffic::{
        LONG, Probe, SHORT, Stream, Tcp, UdpSink, assert_tcp, sa, tcp_echo_server, tcp_exchange,
        udp_send,
    },
    wait,
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
            force: false,
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
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
    wait::until_true("the stream's flow tracked", Duration::from_secs(10), || {
        agent.stats()["conntrack_entries"].as_u64() >= Some(1)
    });
    let (dirs, policy) = agent.kill9();
    // No agent: enforcement goes on (the stream and the probe run meanwhile).
    let no_agent = |when: &str| {
        assert_eq!(
            tcp_exchange(&laptop.ns, None, sa(db.ip4(), 5432), SHORT),
            Tcp::TimedOut,
            "denied {when}"
        );
        assert_eq!(
            tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
            Tcp::Echoed,
            "allowed {when}"
        );
    };
    no_agent("while no agent runs");
    let agent = Agent::start_with(&lab.gw, dirs, &policy, &lab.gw_ifaces(), &[]);
    assert!(agent.log().contains("adopted"), "{}", agent.log());
    no_agent("after the restart");
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    let (_, out, _) = command(None, &agent.dirs, &["status"]);
    assert!(out.contains("rolls back in"), "{out}");
    wait::until_true("the rollback", Duration::from_secs(15), || {
        agent.log().contains("rolled back: generation")
    });
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before its deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed,
        "rolled back"
    );
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
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
    // Nothing is pending any more: no deadline can roll it back.
    let (_, out, _) = command(None, &agent.dirs, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["pending"].is_null(), "{status}");
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
    wait::until_true("both flows tracked", Duration::from_secs(10), || {
        agent.stats()["conntrack_entries"].as_u64() >= Some(2)
    });
    // web → db:5432 is no longer allowed; staff → web:80 still is.
    let without = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [tag:db-server:5433]");
    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "without.yaml".into(),
            policy: without,
            confirm_within_secs: None,
            force: false,
        },
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(resp.ok, "{}", resp.message);
    // The flush removes web → db — unless one of the stream's packets
    // (every 2 ms) came first: the datapath re-judges an entry of the old
    // generation and removes it itself, leaving the flush nothing to do.
    // Either way the stream below stops.
    assert!(resp.data["flows_flushed"].is_u64(), "{}", resp.data);
    // An observation window, not a wait: the forbidden stream must make no
    // progress for a second while the other one goes on.
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
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
}

#[test]
fn durations_that_would_overflow_are_refused_and_change_nothing() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let generation = agent.stats()["generation"].as_u64().unwrap();
    let candidate = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [tag:db-server:22]");
    let path = agent.dirs.state.join("candidate.yaml");
    std::fs::write(&path, &candidate).unwrap();
    let p = path.to_str().unwrap();

    // The command line refuses them (usage error, exit 2) ...
    for args in [
        vec!["apply", p, "--confirm-within", "10000000000000000000s"],
        vec!["apply", p, "--confirm-within", "99999999999999999999999h"],
        vec!["observe", "--duration", "10000000000000000000s"],
        vec!["stats", "--watch", "999999999999999999999999999"],
    ] {
        let (code, out, err) = command(None, &agent.dirs, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("too long"), "{args:?}: {err}");
    }
    // ... and so does the agent, when a client sends them itself.
    let paths = paths(&agent);
    for secs in [1e19, f64::MAX, 604_801.0, -1.0] {
        let resp = request(
            &paths,
            &Request::Apply {
                name: "candidate.yaml".into(),
                policy: candidate.clone(),
                confirm_within_secs: Some(secs),
                force: false,
            },
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!resp.ok, "confirm_within_secs {secs}: {}", resp.message);
        assert!(
            resp.message.contains("nothing applied"),
            "{secs}: {}",
            resp.message
        );
        let resp = request(
            &paths,
            &Request::Observe { seconds: secs },
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!resp.ok, "observe {secs}: {}", resp.message);
    }
    // Nothing was applied, the agent is alive, the policy in force is the old one.
    let (code, out, err) = command(None, &agent.dirs, &["status", "--json"]);
    assert_eq!(code, 0, "the agent still answers: {out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["pending"].is_null(), "{status}");
    assert_eq!(status["generation"].as_u64(), Some(generation));
    assert_eq!(agent.stats()["generation"].as_u64(), Some(generation));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// A directory bind-mounted read-only over itself (as a ConfigMap mount is),
/// unmounted when dropped.
struct ReadOnlyDir(std::path::PathBuf);

impl ReadOnlyDir {
    fn new(dir: &std::path::Path) -> Self {
        let run = |args: &[&str]| {
            let s = std::process::Command::new("mount")
                .args(args)
                .status()
                .expect("mount");
            assert!(s.success(), "mount {args:?}");
        };
        let d = dir.to_str().unwrap();
        run(&["--bind", d, d]);
        let guard = Self(dir.to_path_buf());
        run(&["-o", "remount,bind,ro", d]);
        guard
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn apply_to_a_read_only_policy_file_exits_2_and_says_it_was_applied_but_not_saved() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let dirs = segment_tests::agent::Dirs::new();
    let config = dirs.state.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let policy = config.join("policy.yaml");
    std::fs::write(&policy, LAB_POLICY).unwrap();
    let agent = Agent::start_with(&lab.gw, dirs, &policy, &lab.gw_ifaces(), &[]);
    let _ro = ReadOnlyDir::new(&config);
    let generation = agent.stats()["generation"].as_u64().unwrap();
    let candidate = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [tag:db-server:22]");
    let path = agent.dirs.state.join("candidate.yaml");
    std::fs::write(&path, &candidate).unwrap();
    let p = path.to_str().unwrap();

    let (code, out, err) = command(None, &agent.dirs, &["apply", p]);
    assert_eq!(
        code, 2,
        "an operational failure, not an invalid policy: {out}{err}"
    );
    assert!(
        err.contains(&format!("applied as generation {}", generation + 1))
            && err.contains("not saved"),
        "{err}"
    );
    // It is in force, as the message says; the file is unchanged.
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::Echoed);
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), LAB_POLICY);
    // The same for confirming a candidate; an invalid one still exits 1.
    let (code, _, err) = command(None, &agent.dirs, &["apply", p, "--confirm-within", "60s"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = command(None, &agent.dirs, &["confirm"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not saved"), "{err}");
    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "bad.yaml".into(),
            policy: "acls: [\n".into(),
            confirm_within_secs: None,
            force: false,
        },
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        resp.error_kind(),
        Some(segment::control::ErrorKind::Invalid)
    );
    assert!(!resp.applied);
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_control_socket_is_private_whatever_the_umask_and_refuses_other_users() {
    let lab = Lab::standard();
    let umask = Umask::set(0);
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let sock = agent.dirs.state.join("agent.sock");
    assert_eq!(mode(&sock), 0o600, "started under umask 000");
    assert_eq!(mode(&agent.dirs.state.join("state.json")), 0o600);
    assert_eq!(mode(&agent.dirs.state.join("slot-0.yaml")), 0o644);
    let open = LAB_POLICY.replace("dst: [tag:db-server:5432]", "dst: [\"*:*\"]");
    let candidate = agent.dirs.state.join("allow-all.yaml");
    std::fs::write(&candidate, &open).unwrap();
    let c = candidate.to_str().unwrap();
    let (code, out, err) = as_nobody(&agent.dirs, &["apply", c]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("ermission denied"), "{err}");
    drop(agent);

    // With --control-group the group may connect, and read, but not apply.
    let agent = Agent::start(
        &lab.gw,
        LAB_POLICY,
        &lab.gw_ifaces(),
        &["--control-group", "nogroup"],
    );
    drop(umask);
    let generation = agent.stats()["generation"].as_u64().unwrap();
    let sock = agent.dirs.state.join("agent.sock");
    assert_eq!(mode(&sock), 0o660);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&sock).unwrap().gid(), 65534);
    }
    let (code, out, err) = as_nobody(&agent.dirs, &["status"]);
    assert_eq!(code, 0, "a member of the control group may ask: {out}{err}");
    let candidate = agent.dirs.state.join("allow-all.yaml");
    std::fs::write(&candidate, &open).unwrap();
    let c = candidate.to_str().unwrap();
    for args in [vec!["apply", c], vec!["reload"], vec!["confirm"]] {
        let (code, out, err) = as_nobody(&agent.dirs, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("permission denied: uid 65534"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(agent.stats()["generation"].as_u64(), Some(generation));
    assert!(
        agent
            .log()
            .contains("refused a state-changing request from uid 65534")
    );
    // Root still may.
    let (code, _, err) = command(None, &agent.dirs, &["apply", c]);
    assert_eq!(code, 0, "{err}");
}

/// LAB_POLICY with a failsafe entry (at the end, so that a prefix of the
/// file lacks it) for laptop (10.10.9.5, no rule allows it) → db:22, and
/// `extra_hosts` more host definitions (to make the file big).
fn with_failsafe(extra_hosts: usize) -> String {
    let mut hosts = String::from("hosts:\n  db: 10.10.1.10\n");
    for i in 0..extra_hosts {
        hosts.push_str(&format!("  h{i}: 10.200.{}.{}\n", i / 250, i % 250 + 1));
    }
    format!(
        "{}failsafe:\n  - {{src: [10.10.9.5/32], dst: [\"10.10.1.10:22\"], proto: tcp}}\n",
        LAB_POLICY.replacen("hosts:\n  db: 10.10.1.10\n", &hosts, 1)
    )
}

fn generation(agent: &Agent) -> u64 {
    agent.stats()["generation"].as_u64().unwrap()
}

#[test]
fn a_policy_written_slowly_in_place_is_applied_once_and_only_complete() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let mut agent = Agent::start(&lab.gw, &with_failsafe(0), &lab.gw_ifaces(), &[]);
    agent.wait_for_log("watching", Duration::from_secs(10));
    let g0 = generation(&agent);
    let allowed = Stream::start(&web.ns, sa(db.ip4(), 5432));
    let failsafe = Stream::start(&laptop.ns, sa(db.ip4(), 22));
    // The new policy, about 1 MB, written over the watched file in place in
    // 12 pieces, each ending at a line boundary (every prefix is valid YAML:
    // host definitions, no rules, no failsafe), 300 ms apart.
    let big = with_failsafe(40_000);
    let lines: Vec<&str> = big.split_inclusive('\n').collect();
    let pieces: Vec<String> = lines
        .chunks(lines.len() / 12 + 1)
        .map(|c| c.concat())
        .collect();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&agent.policy)
            .unwrap();
        for piece in &pieces {
            f.write_all(piece.as_bytes()).unwrap();
            f.flush().unwrap();
            // The writer's pace (this is what a slow writer looks like).
            std::thread::sleep(Duration::from_millis(300));
            // The agent keeps answering meanwhile, and applies nothing.
            let (code, out, err) = command(None, &agent.dirs, &["status", "--json"]);
            assert_eq!(code, 0, "{out}{err}");
            let status: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                status["generation"].as_u64(),
                Some(g0),
                "a prefix was applied"
            );
        }
    }
    // Closed: applied once, as a whole.
    wait::until_true(
        "the complete file in force",
        Duration::from_secs(30),
        || generation(&agent) == g0 + 1,
    );
    let settled = Instant::now();
    wait::holds_for(
        "no second generation for the same file",
        Duration::from_millis(1500),
        || generation(&agent) == g0 + 1,
    );
    let allowed = allowed.stop();
    let failsafe = failsafe.stop();
    assert!(
        allowed.error.is_none() && allowed.max_gap < Duration::from_millis(1500),
        "allowed before and after: {allowed:?}"
    );
    assert!(
        failsafe.error.is_none() && failsafe.max_gap < Duration::from_millis(1500),
        "failsafe before and after: {failsafe:?}"
    );
    assert_eq!(
        agent.log().matches("reloaded ").count(),
        1,
        "{}",
        agent.log()
    );
    eprintln!(
        "slow in-place write: one generation, {:?} after close; {allowed:?}",
        settled.elapsed()
    );
}

#[test]
fn truncate_then_write_and_a_policy_without_the_failsafe_keep_the_failsafe_flowing() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let _s = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let policy = with_failsafe(0);
    let agent = Agent::start(&lab.gw, &policy, &lab.gw_ifaces(), &[]);
    let g0 = generation(&agent);
    let failsafe = Stream::start(&laptop.ns, sa(db.ip4(), 22));
    let mut agent = agent;
    agent.wait_for_log("watching", Duration::from_secs(10));

    // An editor's truncate-then-write, with a pause between the two.
    std::fs::File::create(&agent.policy).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(&agent.policy, &policy).unwrap();
    agent.wait_for_log("the policy file is empty", Duration::from_secs(10));
    wait::until_true(
        "the rewritten file in force",
        Duration::from_secs(10),
        || generation(&agent) == g0 + 1,
    );

    // A file without the failsafe entry is refused, and says which one.
    std::fs::write(&agent.policy, LAB_POLICY).unwrap();
    agent.wait_for_log("drops failsafe entries", Duration::from_secs(10));
    assert!(agent.log().contains("10.10.9.5/32"), "{}", agent.log());
    assert_eq!(generation(&agent), g0 + 1);
    let report = failsafe.stop();
    assert!(
        report.error.is_none() && report.max_gap < Duration::from_millis(1000),
        "the failsafe flow never stopped: {report:?}"
    );
    let (code, _, err) = command(None, &agent.dirs, &["reload"]);
    assert_eq!(code, 1, "refused: {err}");
    assert!(err.contains("--force"), "{err}");
    // ... unless forced.
    let (code, out, err) = command(None, &agent.dirs, &["reload", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(generation(&agent), g0 + 2);
    assert_tcp(&laptop.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
}

#[test]
fn a_policy_file_above_the_size_limit_is_refused() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let g0 = generation(&agent);
    // 65 MiB, sparse: the size alone refuses it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&agent.policy)
        .unwrap();
    f.set_len(65 << 20).unwrap();
    drop(f);
    let (code, _, err) = command(None, &agent.dirs, &["reload"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("MiB a policy may have"), "{err}");
    assert_eq!(generation(&agent), g0);
}

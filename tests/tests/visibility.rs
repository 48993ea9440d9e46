//! Visibility with real traffic: Prometheus metrics (checked with a real
//! parser), the flow log (exact counts, rate limit under a flood of a
//! million packets), `explain --live` against the loaded program, and
//! `observe` → `suggest` → enforce.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use segment_tests::{
    agent::{Agent, command, offline},
    lab::Lab,
    netns::Netns,
    policies::LAB_POLICY,
    process::rss_kib,
    traffic::{
        LONG, SHORT, Tcp, assert_tcp, ip, ping, sa, tcp_echo_server, tcp_exchange, udp_echo_server,
        udp_exchange, udp_send,
    },
    wait,
};

/// GET /metrics from the agent's default address, inside its namespace.
fn scrape(ns: &Netns) -> prometheus_parse::Scrape {
    let body = ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let (head, text) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid exposition format")
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or(0.0)
}

fn flows(agent: &Agent) -> Vec<serde_json::Value> {
    let (code, out, err) = command(None, &agent.dirs, &["flows", "--json", "--limit", "100000"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn denied_packets_show_in_metrics_and_the_flow_log() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let dropped = [
        ("segment", "tag:db-server"),
        ("direction", "ingress"),
        ("verdict", "dropped"),
    ];
    let before = scrape(&lab.gw);
    let n_before = sample(&before, "segment_packets_total", &dropped);
    const N: usize = 30;
    udp_send(&laptop.ns, Some(ip("10.10.9.5")), sa(db.ip4(), 9999), N);
    let after = wait::until("the drops in the metrics", Duration::from_secs(10), || {
        let m = scrape(&lab.gw);
        (sample(&m, "segment_packets_total", &dropped) - n_before >= N as f64).then_some(m)
    });
    assert_eq!(
        sample(&after, "segment_packets_total", &dropped) - n_before,
        N as f64
    );
    assert_eq!(
        sample(
            &after,
            "segment_packets_total",
            &[
                ("segment", "alice"),
                ("direction", "ingress"),
                ("verdict", "dropped")
            ]
        ),
        N as f64
    );
    assert!(sample(&after, "segment_bytes_total", &dropped) > 0.0);
    assert_eq!(sample(&after, "segment_policy_generation", &[]), 1.0);
    assert_eq!(
        sample(&after, "segment_policy_last_reload_success", &[]),
        1.0
    );
    assert!(
        sample(
            &after,
            "segment_map_capacity_entries",
            &[("map", "conntrack")]
        ) > 0.0
    );
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "segment_rule_hits_total")
    );
    assert!(
        sample(
            &after,
            "segment_datapath_packets_total",
            &[("reason", "drop_no_rule"), ("hook", "ingress")]
        ) >= N as f64
    );
    // Names follow the conventions: counters end in _total, units in the name.
    for s in &after.samples {
        if matches!(s.value, prometheus_parse::Value::Counter(_)) {
            assert!(s.metric.ends_with("_total"), "{}", s.metric);
        }
    }

    // The flow log has one record per denied packet (well under the rate limit).
    // (The agent reads the ring buffer every 100 ms.)
    let records = wait::until("the flow records", Duration::from_secs(10), || {
        let r: Vec<_> = flows(&agent)
            .into_iter()
            .filter(|r| r["dport"] == 9999)
            .collect();
        (r.len() >= N).then_some(r)
    });
    assert_eq!(records.len(), N, "{records:?}");
    let r = &records[0];
    assert_eq!(r["verdict"], "dropped");
    assert_eq!(r["reason"], "no rule matched");
    assert_eq!(r["src"], "10.10.9.5");
    assert_eq!(r["dst"], "10.10.1.10");
    assert_eq!(r["proto"], "udp");
    assert!(
        r["src_segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "alice"),
        "{r}"
    );
    assert!(
        r["dst_segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "tag:db-server"),
        "{r}"
    );
    let (_, text, _) = command(None, &agent.dirs, &["flows"]);
    assert!(
        text.contains("10.10.9.5:")
            && text.contains("10.10.1.10:9999")
            && text.contains("no rule matched"),
        "{text}"
    );
}

#[test]
fn a_flood_of_a_million_denied_packets_is_counted_not_hoarded() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // Its loop is running (the flow log open) before memory is measured.
    wait::until_true("the agent answers", Duration::from_secs(10), || {
        command(None, &agent.dirs, &["flows", "--limit", "1"]).0 == 0
    });
    let rss_before = rss_kib(agent.pid()).expect("the agent's VmRSS");
    let stats = agent.stats();
    let (w0, s0) = (
        stats["flow_log"]["written"].as_u64().unwrap(),
        stats["flow_log"]["suppressed"].as_u64().unwrap(),
    );
    const N: u64 = 1_000_000;
    udp_send(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(db.ip4(), 7777),
        N as usize,
    );
    // Until every drop counted so far is accounted for (and two reads agree:
    // the flood has drained).
    let mut last = None;
    let (w1, s1, dropped) =
        wait::until("every drop accounted for", Duration::from_secs(30), || {
            let stats = agent.stats();
            let w1 = stats["flow_log"]["written"].as_u64().unwrap();
            let s1 = stats["flow_log"]["suppressed"].as_u64().unwrap();
            let dropped = stats["segments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "alice")
                .and_then(|a| a["dropped_packets"].as_u64())
                .unwrap_or(0);
            let now = (w1, s1, dropped);
            let settled = last == Some(now) && (w1 - w0) + (s1 - s0) == dropped;
            last = Some(now);
            settled.then_some(now)
        });
    // Whatever the sender managed to push through the kernel, every drop is
    // accounted for: written to the log or counted as suppressed.
    assert!(
        dropped > 100_000,
        "the flood reached the gateway: {dropped}"
    );
    assert_eq!(
        (w1 - w0) + (s1 - s0),
        dropped,
        "written {} + suppressed {} = dropped {dropped}",
        w1 - w0,
        s1 - s0
    );
    assert!(s1 - s0 > 0, "the rate limit engaged");
    let rss_after = rss_kib(agent.pid()).expect("the agent's VmRSS");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "agent memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The flow log is still usable, and bounded.
    let records = wait::until("flow records read", Duration::from_secs(10), || {
        let r = flows(&agent);
        (!r.is_empty()).then_some(r)
    });
    assert!(
        !records.is_empty() && records.len() <= 10_000,
        "{}",
        records.len()
    );
    let (code, _, err) = command(None, &agent.dirs, &["flows", "--limit", "5"]);
    assert_eq!(code, 0, "{err}");
    eprintln!(
        "flood: {dropped} dropped, {} logged, {} suppressed; agent RSS {rss_before} KiB -> {rss_after} KiB",
        w1 - w0,
        s1 - s0
    );
}

#[test]
fn explain_live_asks_the_loaded_program_without_side_effects() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let policy = agent.policy.to_str().unwrap().to_owned();
    let before = agent.stats();
    for (src, dst, proto, port, verdict) in [
        ("10.10.0.2", "10.10.1.10", "tcp", "5432", "allow"),
        ("10.10.9.5", "10.10.1.10", "tcp", "5432", "drop"),
        ("10.10.9.7", "10.10.1.10", "tcp", "22", "allow"),
        ("fd00:9::5", "fd00:10::2", "tcp", "8443", "allow"),
        ("10.10.1.10", "10.10.0.2", "udp", "53", "drop"),
        ("10.10.9.5", "10.10.0.2", "icmp", "0", "allow"),
    ] {
        let (code, out, err) = command(
            None,
            &agent.dirs,
            &[
                "explain", &policy, "--src", src, "--dst", dst, "--proto", proto, "--dport", port,
                "--live", "--json",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["verdict"], verdict, "{src} -> {dst} {proto}/{port}: {v}");
        assert_eq!(v["live"]["verdict"], verdict, "{v}");
        assert_eq!(v["live"]["agrees"], true, "{v}");
        assert_eq!(v["live"]["generation"], 1);
    }
    // Dry runs leave no trace: no counters, no conntrack entry, no flow log.
    let after = agent.stats();
    assert_eq!(before["segments"], after["segments"]);
    assert_eq!(before["conntrack_entries"], after["conntrack_entries"]);
    assert_eq!(before["flow_log"], after["flow_log"]);
    let (_, out, _) = command(
        None,
        &agent.dirs,
        &[
            "explain",
            &policy,
            "--src",
            "10.10.9.5",
            "--dst",
            "10.10.1.10",
            "--dport",
            "5432",
            "--live",
        ],
    );
    assert!(out.contains("live:    drop  (drop_no_rule)"), "{out}");
}

#[test]
fn observe_then_suggest_allows_exactly_the_observed_traffic() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let _s3 = tcp_echo_server(&web.ns, sa(web.ip4(), 80));
    let _s4 = tcp_echo_server(&web.ns, sa(web.ip4(), 22));
    let _s5 = tcp_echo_server(&web.ns, sa(web.ip4(), 8080));
    let _u = udp_echo_server(&db.ns, sa(db.ip4(), 5353));
    // Definitions only, no rules, everything in audit: nothing is dropped
    // while observing.
    let defs: String = LAB_POLICY.split("acls:").next().unwrap().to_owned();
    let agent = Agent::start(
        &lab.gw,
        &format!("mode: audit\n{defs}acls: []\n"),
        &lab.gw_ifaces(),
        &[],
    );
    let dirs = agent.dirs.clone();
    let observer =
        std::thread::spawn(move || command(None, &dirs, &["observe", "--duration", "4s"]));
    wait::until_true("the observation started", Duration::from_secs(10), || {
        agent.log().contains("observing every new flow")
    });
    // The traffic to take inventory of.
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(web.ip4(), 80),
        Tcp::Echoed,
    );
    assert!(ping(&laptop.ns, Some(ip("10.10.9.5")), web.ip4(), LONG));
    assert!(udp_exchange(&web.ns, None, sa(db.ip4(), 5353), LONG));
    let (code, out, err) = observer.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("10.10.0.2") && out.contains("5432"), "{out}");

    let (code, suggested, err) = command(None, &agent.dirs, &["suggest"]);
    assert_eq!(code, 0, "{err}");
    let path = agent.dirs.state.join("suggested.yaml");
    std::fs::write(&path, &suggested).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = offline(&["check", p]);
    assert_eq!(code, 0, "{suggested}\n{out}{err}");
    let (code, out, err) = offline(&["test", p]);
    assert_eq!(code, 0, "{suggested}\n{out}{err}");
    drop(agent);

    // Enforced: what was observed works, and nothing else the lab tries.
    let _enforcing = Agent::start(&lab.gw, &suggested, &lab.gw_ifaces(), &[]);
    assert_eq!(
        tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
        Tcp::Echoed,
        "{suggested}"
    );
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(web.ip4(), 80),
        Tcp::Echoed,
    );
    assert!(ping(&laptop.ns, Some(ip("10.10.9.5")), web.ip4(), LONG));
    assert!(udp_exchange(&web.ns, None, sa(db.ip4(), 5353), LONG));
    for (ns, src, dst) in [
        (&db.ns, None, sa(web.ip4(), 22)),
        (&db.ns, None, sa(web.ip4(), 80)),
        (&laptop.ns, Some(ip("10.10.9.5")), sa(db.ip4(), 5432)),
        (&laptop.ns, Some(ip("10.10.9.7")), sa(web.ip4(), 80)),
        (&laptop.ns, Some(ip("10.10.9.5")), sa(web.ip4(), 8080)),
        (&web.ns, None, sa(db.ip4(), 22)),
    ] {
        assert_eq!(
            tcp_exchange(ns, src, dst, SHORT),
            Tcp::TimedOut,
            "{src:?} -> {dst} must stay denied\n{suggested}"
        );
    }
    assert!(!ping(&web.ns, None, laptop.ip4(), SHORT));
    assert!(!udp_exchange(&laptop.ns, None, sa(db.ip4(), 5353), SHORT));
}

/// Hits of rule `index` in the policy in force, from `stats --json`.
fn rule_hits(agent: &Agent, index: usize) -> u64 {
    let stats = agent.stats();
    let rule = stats["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["index"] == index))
        .unwrap_or_else(|| panic!("no rule {index} in {stats}"));
    rule["hits"].as_u64().expect("hits")
}

#[test]
fn rule_hits_start_afresh_in_a_slot_that_is_written_again() {
    // A slot's hit counters are emptied and kept when the next policy
    // written into it fits them; counts of the policy the slot held before
    // must not show up under the new one.
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _s = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let to_db = sa(db.ip4(), 5432);
    for _ in 0..2 {
        assert_tcp(&web.ns, None, to_db, Tcp::Echoed);
    }
    // Each new flow is judged once per hook it crosses on the gateway.
    let two_flows = wait::until("the hits of two flows", Duration::from_secs(10), || {
        let h = rule_hits(&agent, 0);
        (h >= 2 && h.is_multiple_of(2)).then_some(h)
    });
    let per_flow = two_flows / 2;
    // Generation 2 into the other slot, then the original policy back into
    // the slot that counted those flows.
    let changed = LAB_POLICY.replace("dst: [tag:web:80]", "dst: [tag:web:81]");
    let other = agent.dirs.state.join("changed.yaml");
    std::fs::write(&other, &changed).unwrap();
    let same = agent.dirs.state.join("same.yaml");
    std::fs::write(&same, LAB_POLICY).unwrap();
    for (path, generation) in [(&other, 2), (&same, 3)] {
        let (code, out, err) = command(None, &agent.dirs, &["apply", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(agent.stats()["generation"], generation, "{out}{err}");
    }
    assert_eq!(rule_hits(&agent, 0), 0, "counts of generation 1 survived");
    assert_tcp(&web.ns, None, to_db, Tcp::Echoed);
    let one_flow = wait::until("the hits of one flow", Duration::from_secs(10), || {
        let h = rule_hits(&agent, 0);
        (h >= per_flow).then_some(h)
    });
    assert_eq!(one_flow, per_flow);
}

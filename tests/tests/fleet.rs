//! The fleet, for real: hosts in namespaces, each with its own agent
//! enforcing the store's policy on its own interface, and an etcd the test
//! starts in the gateway namespace (see `segment_tests::fleet`). Needs root.
//!
//! Publish refuses an invalid policy and a failing test (store untouched);
//! enrollment grants a tag and refuses a claim; a host changes address;
//! a host leaving its tag loses its flows; the store dies (kill -9) and
//! enforcement stays, also across an agent restart; compaction while an
//! agent is away; TLS with client certificates.

use std::time::Duration;

use segment_tests::{
    agent::Dirs,
    etcd::Etcd,
    fleet::{Fleet, fleet_policy, host, tags},
    netns::require_root,
    traffic::{Stream, Tcp, assert_tcp, sa, tcp_echo_server},
};

const CONVERGE: Duration = Duration::from_secs(30);

fn store_cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(segment_tests::agent::agent_bin())
        .args(args)
        .args(["--store", url])
        .output()
        .expect("running segment-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn publish_refuses_an_invalid_policy_and_a_failing_test_and_leaves_the_store_untouched() {
    require_root();
    let etcd = Etcd::start();
    let dir = segment_tests::etcd::TempDir::new("publish");
    let good = dir.path.join("good.yaml");
    std::fs::write(&good, fleet_policy(None)).unwrap();
    let (code, out, err) = store_cli(&etcd.url(), &["publish", good.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rev = first["revision"].as_i64().unwrap();

    // Invalid: an undefined tag. Exit 1, with the position.
    let invalid = dir.path.join("invalid.yaml");
    std::fs::write(
        &invalid,
        fleet_policy(None).replace("dst: [tag:db:5432]", "dst: [tag:dbb:5432]"),
    )
    .unwrap();
    let (code, _, err) = store_cli(&etcd.url(), &["publish", invalid.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("dbb") && err.contains("invalid.yaml:"),
        "{err}"
    );

    // Valid, but its own test fails: exit 1.
    let failing = dir.path.join("failing.yaml");
    std::fs::write(
        &failing,
        fleet_policy(None).replace("deny: [tag:db:22]", "deny: [tag:db:5432]"),
    )
    .unwrap();
    let (code, _, err) = store_cli(&etcd.url(), &["publish", failing.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("FAIL") && err.contains("nothing published"),
        "{err}"
    );

    // The store still holds the first document, at its revision.
    let (code, out, err) = store_cli(&etcd.url(), &["fleet", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["revision"].as_i64(), Some(rev));
    assert_eq!(
        s["store_revision"].as_i64(),
        Some(rev),
        "nothing else was written"
    );
    assert_eq!(s["policy"]["sha256"], first["sha256"]);

    // A stale --if-revision: exit 3, nothing written.
    let (code, _, err) = store_cli(
        &etcd.url(),
        &[
            "publish",
            good.to_str().unwrap(),
            "--if-revision",
            &(rev - 1).to_string(),
        ],
    );
    assert_eq!(code, 3, "{err}");
    // And an unreachable store: exit 2.
    let (code, _, err) = store_cli("http://127.0.0.1:9", &["publish", good.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn enrollment_grants_tags_refuses_claims_follows_addresses_and_revokes_flows() {
    require_root();
    let fleet = Fleet::new(false);
    let (web, db, laptop) = (
        fleet.lab.host("web"),
        fleet.lab.host("db"),
        fleet.lab.host("laptop"),
    );
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let rev = fleet.publish(&fleet_policy(None));
    let _db = fleet.agent(&db.ns, "db-1", &["tag:db"], Dirs::new());
    let _web = fleet.agent(&web.ns, "web-1", &["tag:web"], Dirs::new());
    // The laptop claims tag:web; tagOwners gives tag:web to web-* only.
    let _laptop = fleet.agent(&laptop.ns, "laptop", &["tag:web"], Dirs::new());

    let s = fleet.wait_converged(&["db-1", "web-1", "laptop"], CONVERGE);
    assert_eq!(s["revision"].as_i64(), Some(rev));
    assert_eq!(s["summary"], format!("3 of 3 hosts on revision {rev}"));
    assert_eq!(tags(&s, "web-1", "granted_tags"), ["tag:web"]);
    assert_eq!(tags(&s, "db-1", "granted_tags"), ["tag:db"]);
    assert!(tags(&s, "laptop", "granted_tags").is_empty());
    assert_eq!(tags(&s, "laptop", "refused_tags"), ["tag:web"]);
    assert_eq!(host(&s, "web-1").unwrap()["addresses"][0], "10.10.0.2");

    // Granted: web-1 reaches db-1. Refused: the laptop does not.
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&laptop.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    // db-1's agent reports its datapath's totals: web-1's packets passed,
    // the laptop's SYNs dropped.
    let s = fleet.wait_status("db-1 reporting what it dropped", CONVERGE, |s| {
        host(s, "db-1").is_some_and(|h| {
            let c = &h["counters"];
            c["dropped_packets"].as_u64().is_some_and(|n| n >= 1)
                && c["passed_packets"].as_u64().is_some_and(|n| n >= 1)
        })
    });
    let counters = &host(&s, "db-1").unwrap()["counters"];
    assert!(
        counters["read_at_ms"].as_u64().is_some_and(|t| t > 0),
        "{counters}"
    );

    // web-1 moves to 10.10.0.3: its agent enrolls the new address, db-1's
    // agent admits it.
    web.ns.sysctl("net.ipv4.conf.eth0.promote_secondaries", "1");
    web.ns.ip(&["addr", "add", "10.10.0.3/24", "dev", "eth0"]);
    web.ns.ip(&["addr", "del", "10.10.0.2/24", "dev", "eth0"]);
    web.ns
        .ip(&["route", "replace", "default", "via", "10.10.0.254"]);
    let s = fleet.wait_status("web-1 at 10.10.0.3, converged", CONVERGE, |s| {
        host(s, "web-1").is_some_and(|h| h["addresses"] == serde_json::json!(["10.10.0.3"]))
            && ["db-1", "web-1", "laptop"]
                .iter()
                .all(|n| host(s, n).is_some_and(|h| h["behind"] == false))
    });
    assert_eq!(
        s["revision"].as_i64(),
        Some(rev),
        "a membership change, not a publish"
    );
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);

    // web-1 leaves the fleet while a connection to db-1 is open: db-1's
    // agent applies the new membership and flushes the flow.
    let stream = Stream::start(&web.ns, sa(db.ip4(), 5432));
    std::thread::sleep(Duration::from_millis(300));
    let (code, out, err) = fleet.cli(&fleet.lab.gw, &["fleet", "remove", "web-1"]);
    assert_eq!(code, 0, "{out}{err}");
    fleet.wait_status("db-1 applied the removal", CONVERGE, |s| {
        host(s, "web-1").is_none_or(|h| h["enrolled"] == false)
            && host(s, "db-1").is_some_and(|h| h["behind"] == false)
    });
    let report = stream.stop();
    assert!(
        report.error.is_some(),
        "the open connection survived the revocation: {report:?}"
    );
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    // Removing an unknown host: exit 1.
    let (code, _, _) = fleet.cli(&fleet.lab.gw, &["fleet", "remove", "web-1"]);
    assert_eq!(code, 1);
}

#[test]
fn a_store_outage_changes_nothing_and_compaction_is_recovered() {
    require_root();
    let mut fleet = Fleet::new(false);
    let (web, db, laptop) = (
        fleet.lab.host("web"),
        fleet.lab.host("db"),
        fleet.lab.host("laptop"),
    );
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 5433));
    fleet.publish(&fleet_policy(None));
    let db_agent = fleet.agent(&db.ns, "db-1", &["tag:db"], Dirs::new());
    let _web = fleet.agent(&web.ns, "web-1", &["tag:web"], Dirs::new());
    fleet.wait_converged(&["db-1", "web-1"], CONVERGE);
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);

    // kill -9 of etcd under traffic: the open connection goes on, a new
    // allowed one opens, denied stays denied.
    let stream = Stream::start(&web.ns, sa(db.ip4(), 5432));
    fleet.etcd.kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&web.ns, None, sa(db.ip4(), 5433), Tcp::TimedOut);
    assert_tcp(&laptop.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);

    // db-1's agent is killed and restarted while the store is down: it
    // enforces the view it saved.
    let (dirs, _) = db_agent.kill9();
    let mut db_agent = fleet.agent(&db.ns, "db-1", &["tag:db"], dirs);
    db_agent.wait_for_log("starting from the saved fleet view", Duration::from_secs(5));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&laptop.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    let report = stream.stop();
    assert!(report.error.is_none(), "the stream broke: {report:?}");

    // The store comes back: a new publish converges everywhere.
    fleet.etcd.restart();
    let rev = fleet.publish(&fleet_policy(Some(5433)));
    let s = fleet.wait_converged(&["db-1", "web-1"], CONVERGE);
    assert_eq!(s["revision"].as_i64(), Some(rev));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5433), Tcp::Echoed);

    // db-1's agent is away while the policy changes and the history is
    // compacted past what it saw: on its return its watch finds the
    // revision compacted, it re-reads, and converges.
    let (dirs, _) = db_agent.kill9();
    let rev = fleet.publish(&fleet_policy(None));
    let (code, out, err) = fleet.cli(&fleet.lab.gw, &["fleet", "status"]);
    assert_eq!(code, 0, "{out}{err}");
    compact(&fleet, rev);
    let mut db_agent = fleet.agent(&db.ns, "db-1", &["tag:db"], dirs);
    db_agent.wait_for_log("was compacted", CONVERGE);
    let s = fleet.wait_converged(&["db-1", "web-1"], CONVERGE);
    assert_eq!(s["revision"].as_i64(), Some(rev));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5433), Tcp::TimedOut);
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
}

/// Compacts the fleet's etcd at `rev` (through the store layer, from the
/// gateway namespace where etcd listens).
fn compact(fleet: &Fleet, rev: i64) {
    let url = fleet.etcd.url();
    fleet.lab.gw.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = segment::store::Store::connect(
                &segment::store::StoreConfig::for_endpoints(&url).unwrap(),
            )
            .await
            .unwrap();
            s.compact(rev).await.unwrap();
        });
    });
}

#[test]
fn agents_use_the_store_over_tls_with_client_certificates() {
    require_root();
    let fleet = Fleet::new(true);
    assert!(fleet.etcd.url().starts_with("https://"));
    let (web, db, laptop) = (
        fleet.lab.host("web"),
        fleet.lab.host("db"),
        fleet.lab.host("laptop"),
    );
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let rev = fleet.publish(&fleet_policy(None));
    let _db = fleet.agent(&db.ns, "db-1", &["tag:db"], Dirs::new());
    let _web = fleet.agent(&web.ns, "web-1", &["tag:web"], Dirs::new());
    let s = fleet.wait_converged(&["db-1", "web-1"], CONVERGE);
    assert_eq!(s["revision"].as_i64(), Some(rev));
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    assert_tcp(&laptop.ns, None, sa(db.ip4(), 5432), Tcp::TimedOut);
    // Without the client certificate the store is unreachable: exit 2.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", fleet.lab.gw.path().display()))
        .arg(segment_tests::agent::agent_bin())
        .args(["fleet", "status", "--store", &fleet.etcd.url()])
        .args([
            "--store-ca",
            fleet.certs.as_ref().unwrap().ca.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

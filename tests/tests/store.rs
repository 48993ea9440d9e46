//! The store layer against real etcd servers that each test starts (own
//! data directory, free ports, killed and removed on drop): put, watch and
//! resume; compaction recovery; lease expiry against enrollment; TLS with
//! client certificates; a three-member cluster losing its leader, and
//! losing its quorum to hung members; the README's RBAC commands, run as written.
//!
//! Needs the `etcd` binary (`cargo xtask setup`), not root:
//! `cargo xtask test --store`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use segment::store::{
    self, Enrollment, FleetView, HostCounters, HostStatus, PolicyDocument, Store, StoreConfig,
    StoreError, status::ReporterConfig,
};
use segment_tests::etcd::{Certs, Cluster, Etcd};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(15);

fn enrollment(name: &str, addr: &str, tags: &[&str]) -> Enrollment {
    Enrollment {
        name: name.into(),
        addresses: vec![addr.parse().unwrap()],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        enrolled_at: 1,
        refreshed_at: segment::datapath::state::unix_now(),
        expires_after_secs: 86_400,
    }
}

fn doc(text: &str) -> PolicyDocument {
    PolicyDocument::new("fleet.yaml", text)
}

/// Starts following the store; returns the receiver of complete views.
fn follow(url: &str, start: Option<FleetView>) -> watch::Receiver<Arc<FleetView>> {
    let cfg = StoreConfig::for_endpoints(url).unwrap();
    let (tx, rx) = watch::channel(Arc::new(FleetView::default()));
    tokio::spawn(store::watch::follow(cfg, None, start, tx));
    rx
}

/// Waits (with a deadline) for a view that satisfies `pred`.
async fn wait_view(
    rx: &mut watch::Receiver<Arc<FleetView>>,
    what: &str,
    pred: impl Fn(&FleetView) -> bool,
) -> Arc<FleetView> {
    let until = Instant::now() + DEADLINE;
    loop {
        {
            let v = rx.borrow_and_update().clone();
            if pred(&v) {
                return v;
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the watcher stopped while waiting for {what}"),
            Err(_) => panic!(
                "no view with {what} within {DEADLINE:?}; last: {:?}",
                rx.borrow()
            ),
        }
    }
}

async fn connect(url: &str) -> Store {
    Store::connect(&StoreConfig::for_endpoints(url).unwrap())
        .await
        .unwrap()
}

fn policy_text(v: &FleetView) -> Option<&str> {
    v.policy.as_ref().map(|p| p.value.text.as_str())
}

#[tokio::test]
async fn put_watch_and_resume_from_the_last_revision() {
    let etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    let r1 = s.publish(&doc("acls: []\n"), None).await.unwrap();
    s.enroll(&enrollment("web-1", "10.0.0.1", &["tag:web"]))
        .await
        .unwrap();

    let mut rx = follow(&etcd.url(), None);
    let v = wait_view(&mut rx, "the policy and web-1", |v| {
        v.policy.is_some() && v.hosts.contains_key("web-1")
    })
    .await;
    assert_eq!(v.policy.as_ref().unwrap().mod_revision, r1);
    assert_eq!(v.reads, 1, "the range is read once at the start");

    // Live changes arrive as events, whole transactions at a time.
    s.enroll(&enrollment("db-1", "10.0.1.1", &["tag:db"]))
        .await
        .unwrap();
    let r2 = s
        .publish(&doc("acls: []\n# two\n"), Some(r1))
        .await
        .unwrap();
    let v = wait_view(&mut rx, "the second policy", |v| {
        policy_text(v) == Some("acls: []\n# two\n")
    })
    .await;
    assert!(v.hosts.contains_key("db-1"));
    assert_eq!(v.revision, r2);
    assert_eq!(v.reads, 1, "events, not re-reads");

    // The follower stops; changes happen; a new follower resumes from the
    // last view (as an agent restarted from its snapshot does) and catches
    // up from the watch alone, without re-reading.
    drop(rx);
    let last = (*v).clone();
    let (removed, _) = s.remove_host("web-1").await.unwrap();
    assert!(removed);
    let r3 = s.publish(&doc("acls: []\n# three\n"), None).await.unwrap();
    let mut rx = follow(&etcd.url(), Some(last));
    let v = wait_view(&mut rx, "the third policy", |v| v.revision >= r3).await;
    assert_eq!(policy_text(&v), Some("acls: []\n# three\n"));
    assert!(!v.hosts.contains_key("web-1"), "the delete was replayed");
    assert!(v.hosts.contains_key("db-1"));
    assert_eq!(v.reads, 1, "resumed from the revision, not re-read");
}

#[tokio::test]
async fn publish_with_a_stale_revision_is_refused_and_writes_nothing() {
    let etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    let r1 = s.publish(&doc("acls: []\n"), Some(0)).await.unwrap();
    // Only-if-none-yet now fails.
    match s.publish(&doc("acls: []\n# x\n"), Some(0)).await {
        Err(StoreError::Conflict { expected, current }) => {
            assert_eq!((expected, current), (0, r1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let r2 = s.publish(&doc("acls: []\n# y\n"), Some(r1)).await.unwrap();
    assert!(matches!(
        s.publish(&doc("acls: []\n# z\n"), Some(r1)).await,
        Err(StoreError::Conflict { current, .. }) if current == r2
    ));
    let p = s.policy().await.unwrap().unwrap();
    assert_eq!(p.mod_revision, r2);
    assert_eq!(p.value.text, "acls: []\n# y\n");
}

#[tokio::test]
async fn a_compacted_revision_is_recovered_by_re_reading_the_prefix() {
    let etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    s.publish(&doc("acls: []\n"), None).await.unwrap();
    s.enroll(&enrollment("a", "10.0.0.1", &[])).await.unwrap();
    s.enroll(&enrollment("b", "10.0.0.2", &[])).await.unwrap();
    let mut rx = follow(&etcd.url(), None);
    let old = wait_view(&mut rx, "a and b", |v| v.hosts.len() == 2).await;
    drop(rx);

    // While no one watches: b leaves, c joins, a new policy, and the
    // history is compacted past everything the old view knew.
    s.remove_host("b").await.unwrap();
    s.enroll(&enrollment("c", "10.0.0.3", &[])).await.unwrap();
    let last = s.publish(&doc("acls: []\n# after\n"), None).await.unwrap();
    s.compact(last).await.unwrap();

    let mut rx = follow(&etcd.url(), Some((*old).clone()));
    let before = old.reads;
    let v = wait_view(&mut rx, "the view after compaction", |v| v.reads > before).await;
    assert_eq!(
        v.hosts.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["a", "c"],
        "b vanished with the re-read"
    );
    assert_eq!(policy_text(&v), Some("acls: []\n# after\n"));
    assert!(v.revision >= last);
    // And the watch continues from there.
    s.enroll(&enrollment("d", "10.0.0.4", &[])).await.unwrap();
    let v = wait_view(&mut rx, "d", |v| v.hosts.contains_key("d")).await;
    assert_eq!(v.reads, before + 1, "one re-read, then events");
}

#[tokio::test]
async fn a_burst_of_joins_is_handed_out_paced_and_every_view_whole() {
    const JOINS: usize = 300;
    let etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    s.publish(&doc("acls: []\n"), None).await.unwrap();
    let mut rx = follow(&etcd.url(), None);
    wait_view(&mut rx, "the policy", |v| v.policy.is_some()).await;

    // A reader as fast as the follower can hand views out: it records
    // every view it sees.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => {}
                other => panic!("the views stopped before all joins arrived: {other:?}"),
            }
            let v = rx.borrow_and_update().clone();
            seen.push((Instant::now(), v.revision, v.hosts.len()));
            if v.hosts.len() == JOINS {
                return seen;
            }
        }
    });
    let started = Instant::now();
    let mut revisions = Vec::with_capacity(JOINS);
    for i in 0..JOINS {
        let e = enrollment(
            &format!("h-{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            &[],
        );
        revisions.push(s.enroll(&e).await.unwrap());
    }
    let seen = reader.await.unwrap();
    let span = seen.last().unwrap().0 - started;

    // Whole: a view at revision R holds exactly the joins committed by R.
    for &(_, rev, hosts) in &seen {
        let committed = revisions.iter().filter(|&&r| r <= rev).count();
        assert_eq!(hosts, committed, "the view at revision {rev} is not whole");
    }
    // Paced: at most one view per 50 ms interval (plus the first, at once,
    // and the last, at the end of the burst), however fast the writes.
    let allowed = (span.as_millis() / 50) as usize + 2;
    assert!(
        seen.len() <= allowed,
        "{} views in {span:?} for {JOINS} joins: more than one per 50 ms",
        seen.len()
    );
    assert!(
        seen.len() < JOINS,
        "{} views for {JOINS} joins: the burst was not coalesced",
        seen.len()
    );
}

fn web_1_status() -> HostStatus {
    HostStatus {
        name: "web-1".into(),
        applied_revision: 7,
        view_revision: 8,
        generation: 3,
        policy_sha256: "ab".into(),
        membership_sha256: "cd".into(),
        last_error: None,
        error_revision: None,
        reported_at_ms: 1,
        agent_version: "test".into(),
        counters: Some(HostCounters {
            passed_packets: 12,
            dropped_packets: 3,
            would_drop_packets: 0,
            read_at_ms: 1,
        }),
    }
}

/// A 2 s lease: expiry is quick to observe.
const QUICK_LEASE: ReporterConfig = ReporterConfig {
    ttl_secs: 2,
    debounce: Duration::from_millis(20),
    retry: Duration::from_millis(200),
};

#[tokio::test]
async fn a_status_outlives_a_store_restart_that_broke_its_keep_alive_stream() {
    let mut etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    let (_tx, rx) = watch::channel(Some(web_1_status()));
    let reporter = tokio::spawn(store::status::report(s.clone(), QUICK_LEASE, rx));
    let until = Instant::now() + DEADLINE;
    while !s.read_all().await.unwrap().statuses.contains_key("web-1") {
        assert!(Instant::now() < until, "no status written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // etcd comes back with the lease (a restart keeps leases and resets
    // their TTLs), but the keep-alive stream died with its connection.
    etcd.restart();
    // Watched for three TTLs after the restart: by then the old lease,
    // renewed by nothing, has lapsed; the status must be on a new one.
    let window = Instant::now() + Duration::from_secs(3 * QUICK_LEASE.ttl_secs as u64);
    let mut reads = 0;
    while Instant::now() < window {
        if let Ok(all) = s.read_all().await {
            assert!(
                all.statuses.contains_key("web-1"),
                "the status lapsed with a lease nobody renewed after the restart"
            );
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reads >= 10, "only {reads} reads answered after the restart");
    reporter.abort();
}

#[tokio::test]
async fn a_lapsed_status_lease_removes_the_status_but_not_the_enrollment() {
    let etcd = Etcd::start();
    let s = connect(&etcd.url()).await;
    s.enroll(&enrollment("web-1", "10.0.0.1", &["tag:web"]))
        .await
        .unwrap();
    let status = web_1_status();
    let (tx, rx) = watch::channel(Some(status.clone()));
    let reporter = tokio::spawn(store::status::report(s.clone(), QUICK_LEASE, rx));

    let until = Instant::now() + DEADLINE;
    loop {
        let all = s.read_all().await.unwrap();
        if let Some(st) = all.statuses.get("web-1") {
            assert_eq!(st.value, status);
            break;
        }
        assert!(Instant::now() < until, "no status written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kept alive well past its TTL while the reporter runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        s.read_all().await.unwrap().statuses.contains_key("web-1"),
        "the keep-alive holds the lease"
    );
    let mut newer = status.clone();
    newer.applied_revision = 9;
    tx.send_replace(Some(newer.clone()));
    let until = Instant::now() + DEADLINE;
    loop {
        let all = s.read_all().await.unwrap();
        if all.statuses.get("web-1").map(|s| &s.value) == Some(&newer) {
            break;
        }
        assert!(Instant::now() < until, "the newer status was not written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The agent dies: no more keep-alives. The status goes with its lease;
    // the enrollment (membership) stays.
    reporter.abort();
    let until = Instant::now() + DEADLINE;
    loop {
        let all = s.read_all().await.unwrap();
        if !all.statuses.contains_key("web-1") {
            assert!(all.view.hosts.contains_key("web-1"), "enrollment kept");
            break;
        }
        assert!(Instant::now() < until, "the status outlived its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let certs = Certs::generate("127.0.0.1".parse().unwrap(), "web-1");
    let etcd = Etcd::start_tls(&certs);
    assert!(etcd.url().starts_with("https://"));

    let cfg = StoreConfig {
        ca: Some(certs.ca.clone()),
        cert: Some(certs.client_cert.clone()),
        key: Some(certs.client_key.clone()),
        ..StoreConfig::for_endpoints(&etcd.url()).unwrap()
    };
    let s = Store::connect(&cfg).await.unwrap();
    let rev = s.publish(&doc("acls: []\n"), None).await.unwrap();
    assert_eq!(s.policy().await.unwrap().unwrap().mod_revision, rev);

    // The watch works over TLS too.
    let (tx, mut rx) = watch::channel(Arc::new(FleetView::default()));
    tokio::spawn(store::watch::follow(cfg.clone(), None, None, tx));
    wait_view(&mut rx, "the policy over TLS", |v| v.policy.is_some()).await;

    // Without a client certificate the server refuses us.
    let no_cert = StoreConfig {
        cert: None,
        key: None,
        ..cfg.clone()
    };
    let refused = match Store::connect(&no_cert).await {
        Ok(s) => s.policy().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "a client without a certificate got in");
    // Nor does a client that does not trust the CA get anywhere.
    let no_ca = StoreConfig { ca: None, ..cfg };
    let refused = match Store::connect(&no_ca).await {
        Ok(s) => s.policy().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "a client accepted an unknown CA");
}

/// The member that leads, by asking each member's status.
async fn leader_index(cluster: &Cluster) -> usize {
    let until = Instant::now() + DEADLINE;
    loop {
        for (i, m) in cluster.members.iter().enumerate() {
            if m.pid().is_none() {
                continue;
            }
            let Ok(s) = Store::connect(&StoreConfig::for_endpoints(&m.url()).unwrap()).await else {
                continue;
            };
            let mut c = s.client();
            if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
                && st.header().map(|h| h.member_id()) == Some(st.leader())
            {
                return i;
            }
        }
        assert!(Instant::now() < until, "no leader within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_three_member_cluster_loses_its_leader_and_the_watch_continues() {
    let mut cluster = Cluster::start(3);
    let urls = cluster.urls();
    let s = connect(&urls).await;
    s.publish(&doc("acls: []\n# one\n"), None).await.unwrap();
    let mut rx = follow(&urls, None);
    wait_view(&mut rx, "the first policy", |v| {
        policy_text(v) == Some("acls: []\n# one\n")
    })
    .await;

    let leader = leader_index(&cluster).await;
    cluster.members[leader].kill9();
    // The two survivors elect a new leader; publishing through them works
    // (retry within a deadline: the first attempt may meet the dead member
    // or the election).
    let survivors: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.pid().is_some())
        .map(|m| m.url())
        .collect();
    let s2 = connect(&survivors.join(",")).await;
    let until = Instant::now() + DEADLINE;
    let rev = loop {
        match s2.publish(&doc("acls: []\n# two\n"), None).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < until, "no publish after leader loss: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let v = wait_view(&mut rx, "the policy published after the leader died", |v| {
        v.revision >= rev
    })
    .await;
    assert_eq!(policy_text(&v), Some("acls: []\n# two\n"));
    assert_ne!(leader_index(&cluster).await, leader);
}

/// Two of three members hang (SIGSTOP: the sockets stay open, nothing
/// answers): the cluster has no quorum. A publish through the survivor
/// fails within the request deadline as "unavailable" (never hangs, never
/// succeeds), the follower keeps the last complete view (what the agent
/// keeps enforcing), and once the members resume, the next publish reaches
/// it.
#[tokio::test]
async fn a_cluster_without_quorum_refuses_writes_in_time_and_the_view_holds() {
    let cluster = Cluster::start(3);
    let urls = cluster.urls();
    let s = connect(&urls).await;
    let one = s.publish(&doc("acls: []\n# one\n"), None).await.unwrap();
    let mut rx = follow(&urls, None);
    wait_view(&mut rx, "the first policy", |v| {
        policy_text(v) == Some("acls: []\n# one\n")
    })
    .await;

    let survivor = cluster.members[2].url();
    for m in &cluster.members[..2] {
        m.signal(libc::SIGSTOP);
    }
    // Resumed even if an assertion below fails (the members are killed on
    // drop either way; a stopped process dies of SIGKILL too).
    struct Resume<'a>(&'a Cluster);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            for m in &self.0.members[..2] {
                m.signal(libc::SIGCONT);
            }
        }
    }
    let resume = Resume(&cluster);

    let lone = connect(&survivor).await;
    let started = Instant::now();
    let limit = StoreConfig::default().request_timeout + Duration::from_secs(5);
    // etcd may still commit a proposal whose request timed out, once quorum
    // is back, and not necessarily before a later publish (a follower
    // forwards it when the leader wakes). Made as README advises, with
    // --if-revision, it then cannot overwrite the publish below.
    let lost = doc("acls: []\n# lost\n");
    match tokio::time::timeout(limit, lone.publish(&lost, Some(one))).await {
        Err(_) => panic!("a publish without quorum hung past {limit:?}"),
        Ok(Ok(rev)) => panic!("a publish without quorum succeeded (revision {rev})"),
        Ok(Err(e)) => assert!(
            e.is_unavailable(),
            "a publish without quorum failed, but not as unavailable: {e:?}"
        ),
    }
    assert!(started.elapsed() < limit);
    assert_eq!(
        policy_text(&rx.borrow()),
        Some("acls: []\n# one\n"),
        "the follower still holds the last complete view"
    );

    drop(resume);
    let until = Instant::now() + DEADLINE;
    let rev = loop {
        match s.publish(&doc("acls: []\n# two\n"), None).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    Instant::now() < until,
                    "no publish after quorum came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let v = wait_view(
        &mut rx,
        "the policy published after quorum came back",
        |v| v.revision >= rev,
    )
    .await;
    // (The refused publish is not asserted absent from history: etcd may
    // still have committed it before "two"; its revision condition keeps
    // it from landing after.)
    assert_eq!(policy_text(&v), Some("acls: []\n# two\n"));
}

/// The fenced block after README's `<!-- rbac-commands` marker.
fn readme_rbac_commands() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let after = &readme[readme
        .find("<!-- rbac-commands")
        .expect("README has the rbac-commands marker")..];
    let body = &after[after.find("```sh\n").expect("a sh block after the marker") + 6..];
    body[..body.find("```").expect("the block ends")].to_owned()
}

/// Whether the store said "permission denied" (and not: unreachable).
fn denied<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    match r {
        Err(StoreError::Request { source, .. }) => source.to_string().contains("permission denied"),
        other => {
            eprintln!("expected permission denied, got {other:?}");
            false
        }
    }
}

fn status_of(name: &str) -> HostStatus {
    HostStatus {
        name: name.into(),
        applied_revision: 1,
        view_revision: 1,
        generation: 1,
        policy_sha256: "ab".into(),
        membership_sha256: "cd".into(),
        last_error: None,
        error_revision: None,
        reported_at_ms: 1,
        agent_version: "test".into(),
        counters: None,
    }
}

/// README "Security model" gives etcdctl commands for the roles; they are
/// run here as written (through `sh -e`), then each user does what an agent
/// and a publisher do: the host user follows the fleet and writes its own
/// enrollment and status, and is refused another host's keys and the
/// policy; the publisher publishes and removes hosts; no one else gets in.
#[tokio::test]
async fn the_readme_rbac_commands_confine_an_agent_to_its_own_keys() {
    let etcd = Etcd::start();
    let script = readme_rbac_commands();
    assert!(
        script.contains("auth enable"),
        "the block enables auth:\n{script}"
    );
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .env("ETCDCTL_ENDPOINTS", etcd.url())
        .env("ROOT_PASSWORD", "root-secret")
        .env("PUBLISHER_PASSWORD", "publisher-secret")
        .env("HOST_PASSWORD", "host-secret")
        .output()
        .expect("sh (etcdctl comes from `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "README's RBAC commands failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let as_user = |user: &str, password: &str| StoreConfig {
        user: Some(user.into()),
        password: Some(password.into()),
        ..StoreConfig::for_endpoints(&etcd.url()).unwrap()
    };
    let publisher = Store::connect(&as_user("publisher", "publisher-secret"))
        .await
        .expect("the publisher logs in");
    let host = Store::connect(&as_user("host-web-1", "host-secret"))
        .await
        .expect("the host logs in");

    // The publisher's part.
    publisher.publish(&doc("acls: []\n"), None).await.unwrap();
    publisher
        .enroll(&enrollment("db-1", "10.0.0.2", &["tag:db"]))
        .await
        .unwrap();

    // The agent's part, as web-1.
    host.enroll(&enrollment("web-1", "10.0.0.1", &["tag:web"]))
        .await
        .expect("web-1 writes its own enrollment");
    let lease = host.grant_lease(30).await.unwrap();
    host.put_status(&status_of("web-1"), lease)
        .await
        .expect("web-1 writes its own status");
    let (tx, mut rx) = watch::channel(Arc::new(FleetView::default()));
    tokio::spawn(store::watch::follow(
        as_user("host-web-1", "host-secret"),
        None,
        None,
        tx,
    ));
    let v = wait_view(&mut rx, "the policy and both hosts, read as web-1", |v| {
        v.policy.is_some() && v.hosts.contains_key("web-1") && v.hosts.contains_key("db-1")
    })
    .await;
    assert_eq!(policy_text(&v), Some("acls: []\n"));

    // What web-1 must not do.
    assert!(
        denied(
            host.enroll(&enrollment("db-1", "10.0.0.1", &["tag:db"]))
                .await
        ),
        "web-1 overwrites db-1's enrollment"
    );
    assert!(
        denied(host.enroll(&enrollment("web-10", "10.0.0.9", &[])).await),
        "web-1 enrolls a name its key is a prefix of"
    );
    assert!(
        denied(host.put_status(&status_of("db-1"), lease).await),
        "web-1 writes db-1's status"
    );
    assert!(
        denied(
            host.publish(
                &doc("acls: [{action: accept, src: ['*'], dst: ['*:*']}]\n"),
                None
            )
            .await
        ),
        "web-1 publishes a policy"
    );
    assert!(denied(host.remove_host("db-1").await), "web-1 removes db-1");
    let p = publisher.policy().await.unwrap().unwrap();
    assert_eq!(p.value.text, "acls: []\n", "the policy is the publisher's");
    assert!(publisher.enrollment("db-1").await.unwrap().is_some());

    // The publisher retires hosts; a client without credentials reads nothing.
    let (removed, _) = publisher.remove_host("db-1").await.unwrap();
    assert!(removed);
    if let Ok(anonymous) = Store::connect(&StoreConfig::for_endpoints(&etcd.url()).unwrap()).await {
        assert!(
            anonymous.policy().await.is_err(),
            "a client without credentials read the policy"
        );
    }
}

//! `segment-fleet-bench` (run by `cargo xtask bench`, or alone with
//! `cargo xtask bench --fleet`): how fast a fleet converges.
//!
//! One etcd on this machine; N simulated agents (1, 100, 1,000) in this
//! process, each with its own client connection, watch, enrollment and
//! lease, each running the real pipeline — watch → view → membership
//! (`tagOwners`, through `policy::parse_with`) → compile → switch → status
//! report — with a datapath stand-in that records the switch. Parsing and
//! compiling are memoized by input hash, and the membership by enrollment
//! revision, across the agents (they would all compute the same
//! membership and tables: on two shared cores, not memoizing would
//! measure the CPU queue, not the system). Beside them, one real
//! `segment-agent run --store` with the real datapath, on a veth pair of
//! its own.
//!
//! Convergence: publish a change to a 100-rule policy; for each agent, the
//! time from the publish's commit (the transaction's answer) to the moment
//! its status report with the new revision is seen in etcd (through a
//! watch on the status keys). Churn: hosts join (enrollments written) at
//! 100 per second; after the last join, the time until every agent reports
//! the final membership.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use etcd_client::{EventType, WatchOptions};
use segment::{
    compile, policy,
    store::{
        Enrollment, HostStatus, PolicyDocument, Store, StoreConfig,
        enroll::Enrollee,
        membership,
        membership::MembershipCache,
        records::decode,
        source::{FleetSource, Next, PolicyCache, SourceOptions},
    },
};
use segment_tests::etcd::{Etcd, TempDir};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const TAGS: usize = 50;
const RULES: usize = 100;
const TARGET_P99_MS: f64 = 1000.0;

type CompileCache = Arc<Mutex<HashMap<String, Arc<Result<(), String>>>>>;

fn policy_text(variant: usize) -> String {
    let mut s = String::from("tags:\n");
    for t in 0..TAGS {
        let _ = writeln!(s, "  t{t}: [10.200.{t}.1]");
    }
    s.push_str("tagOwners:\n");
    for t in 0..TAGS {
        let _ = writeln!(s, "  tag:t{t}: [host-*, real-*, join-*]");
    }
    s.push_str("acls:\n");
    for r in 0..RULES {
        let (a, b) = (r % TAGS, (r + 1 + r / TAGS) % TAGS);
        let port = 1000 + r + variant * 200;
        let _ = writeln!(
            s,
            "  - {{action: accept, src: [tag:t{a}], dst: [\"tag:t{b}:{port}\"], proto: tcp}}"
        );
    }
    s
}

fn addr(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        (100 + i / 65_536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8,
    ))
}

/// Validates and compiles like `publish` does, then writes it.
async fn publish(store: &Store, variant: usize) -> (i64, Instant) {
    let text = policy_text(variant);
    let p = policy::parse("bench.yaml", &text).expect("the bench policy is valid");
    compile::compile(&p).expect("the bench policy compiles");
    let rev = store
        .publish(&PolicyDocument::new("bench.yaml", &text), None)
        .await
        .expect("publishing");
    (rev, Instant::now())
}

/// One simulated agent: the real source, a stand-in datapath.
async fn sim_agent(
    cfg: StoreConfig,
    i: usize,
    pcache: PolicyCache,
    mcache: MembershipCache,
    ccache: CompileCache,
    switches: Arc<AtomicU64>,
) {
    let who = Enrollee {
        name: format!("host-{i}"),
        addresses: vec![addr(i)],
        ifaces: Vec::new(),
        tags: vec![format!("tag:t{}", i % TAGS)],
        expiry: Duration::from_secs(86_400),
    };
    let opts = SourceOptions {
        address_poll: Duration::from_secs(3600),
        cache: Some(pcache),
        membership_cache: Some(mcache),
        ..SourceOptions::default()
    };
    let mut src = FleetSource::start(cfg, who, None, opts);
    let mut generation = 0;
    loop {
        match src.next().await {
            Next::Apply(c) => {
                let cached = ccache
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&c.desired.input_hash).cloned());
                let compiled = match cached {
                    Some(r) => r,
                    None => {
                        let r = Arc::new(match &*c.policy {
                            Ok(p) => compile::compile(p).map(|_| ()).map_err(|e| e.to_string()),
                            Err(e) => Err(e.summary()),
                        });
                        if let Ok(mut m) = ccache.lock() {
                            m.insert(c.desired.input_hash.clone(), r.clone());
                        }
                        r
                    }
                };
                match &*compiled {
                    Ok(()) => {
                        // The stand-in switch.
                        generation += 1;
                        switches.fetch_add(1, Ordering::Relaxed);
                        src.applied(&c, generation);
                    }
                    Err(e) => src.failed(c.policy_revision(), e),
                }
            }
            Next::Unusable {
                policy_revision,
                error,
            } => src.failed(policy_revision, &error),
        }
    }
}

/// Every status write seen in etcd: (host, status, when seen).
async fn observe(store: Store, tx: mpsc::UnboundedSender<(String, HostStatus, Instant)>) {
    let prefix = store.keys().status_prefix();
    let mut c = store.client();
    let mut stream = c
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watching the status keys");
    while let Ok(Some(resp)) = stream.message().await {
        let now = Instant::now();
        for ev in resp.events() {
            if ev.event_type() != EventType::Put {
                continue;
            }
            let Some(kv) = ev.kv() else { continue };
            if let Ok(st) = decode::<HostStatus>(kv.key(), kv.value())
                && tx.send((st.name.clone(), st, now)).is_err()
            {
                return;
            }
        }
    }
}

/// The real agent on a veth pair of its own (root namespace; its store
/// traffic is on loopback, its datapath on the veth).
struct RealAgent {
    child: Child,
    bin: PathBuf,
    iface: String,
    pin: PathBuf,
    state: TempDir,
}

impl RealAgent {
    fn start(url: &str) -> Option<Self> {
        let bin = segment_tests::agent::agent_bin();
        let iface = format!("segfb{}", std::process::id() % 100_000);
        let ok = Command::new("ip")
            .args([
                "link",
                "add",
                &iface,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{iface}p"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("fleet bench: no veth pair for the real agent; it does not take part");
            return None;
        }
        let _ = Command::new("ip")
            .args(["link", "set", &iface, "up"])
            .status();
        let _ = Command::new("ip")
            .args(["link", "set", &format!("{iface}p"), "up"])
            .status();
        let state = TempDir::new("fleet-bench-agent");
        let pin = PathBuf::from(format!("/sys/fs/bpf/segfb-{}", std::process::id()));
        let log = std::fs::File::create(state.path.join("agent.log")).ok()?;
        let child = Command::new(&bin)
            .args(["run", "--store", url, "--iface", &iface, "--host", "real-0"])
            .args([
                "--tags",
                "tag:t0",
                "--address",
                "10.250.0.1",
                "--metrics-addr",
                "none",
            ])
            .arg("--pin-dir")
            .arg(&pin)
            .arg("--state-dir")
            .arg(&state.path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .ok()?;
        Some(Self {
            child,
            bin,
            iface,
            pin,
            state,
        })
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.bin)
            .args(["detach", "--force", "--pin-dir"])
            .arg(&self.pin)
            .arg("--state-dir")
            .arg(&self.state.path)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = Command::new("ip")
            .args(["link", "del", &self.iface])
            .status();
    }
}

fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    json!({"n": v.len(), "p50_ms": p(0.5), "p99_ms": p(0.99), "max_ms": v[v.len() - 1]})
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// CPU time (user + system) of a process so far, in seconds; None when
/// it cannot be read (the figure is then left out, never reported as 0).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Waits for reports until `done` says every host is there; returns
/// (host → time seen) for the reports that `accept`ed.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(String, HostStatus, Instant)>,
    hosts: &[String],
    deadline: Duration,
    accept: impl Fn(&HostStatus) -> bool,
) -> HashMap<String, Instant> {
    let until = tokio::time::Instant::now() + deadline;
    let mut seen = HashMap::new();
    while seen.len() < hosts.len() {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some((name, st, at))) => {
                if accept(&st) && hosts.contains(&name) {
                    seen.entry(name).or_insert(at);
                }
            }
            _ => break,
        }
    }
    seen
}

/// The membership the store holds now (retrying while etcd is too busy
/// to answer within the request deadline).
async fn expected_membership(store: &Store) -> (usize, String) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        match store.read_view().await {
            Ok(view) => {
                let inv = membership::inventory(&view, segment::datapath::state::unix_now());
                return (inv.devices.len(), membership::membership_hash(&inv));
            }
            Err(e) if Instant::now() >= until => {
                eprintln!("  the store did not answer for 120 s: {e}");
                return (0, String::new());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn enrollment(name: String, address: std::net::IpAddr, tag: usize) -> Enrollment {
    let now = segment::datapath::state::unix_now();
    Enrollment {
        name,
        addresses: vec![address],
        tags: vec![format!("tag:t{}", tag % TAGS)],
        enrolled_at: now,
        refreshed_at: now,
        expires_after_secs: 86_400,
    }
}

/// Writes the simulated hosts' enrollments first, 100 per transaction (an
/// agent re-enrolling with the same name, addresses and tags changes no
/// membership), so that setting up a thousand agents is not itself a
/// thousand-join storm; the churn phase measures joins.
async fn pre_enroll(store: &Store, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|&i| {
                let e = enrollment(format!("host-{i}"), addr(i), i);
                etcd_client::TxnOp::put(
                    store.keys().host(&e.name),
                    segment::store::records::encode(&e),
                    None,
                )
            })
            .collect();
        let mut c = store.client();
        c.txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("writing the enrollments");
    }
}

async fn run_size(n: usize, rounds: usize, churn_secs: u64, real: bool) -> Value {
    eprintln!(
        "== fleet: {n} simulated agents{} ==",
        if real { " + 1 real agent" } else { "" }
    );
    let etcd = Etcd::start();
    let cfg = StoreConfig::for_endpoints(&etcd.url()).expect("endpoint");
    let admin = Store::connect(&cfg).await.expect("connecting");
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(observe(admin.clone(), tx));
    let (r0, _) = publish(&admin, 0).await;
    pre_enroll(&admin, n).await;

    let pcache: PolicyCache = Arc::default();
    let mcache: MembershipCache = Arc::default();
    let ccache: CompileCache = Arc::default();
    let switches = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(sim_agent(
            cfg.clone(),
            i,
            pcache.clone(),
            mcache.clone(),
            ccache.clone(),
            switches.clone(),
        )));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let real_agent = if real {
        RealAgent::start(&etcd.url())
    } else {
        None
    };
    let mut hosts: Vec<String> = (0..n).map(|i| format!("host-{i}")).collect();
    if real_agent.is_some() {
        hosts.push("real-0".to_owned());
    }
    // Everyone enrolled, and on r0 with the full membership.
    let until = Instant::now() + Duration::from_secs(300);
    let (count, full) = loop {
        let (c, h) = expected_membership(&admin).await;
        if c >= hosts.len() || Instant::now() > until {
            break (c, h);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ready = collect(&mut rx, &hosts, Duration::from_secs(300), |s| {
        s.applied_revision == r0 && s.membership_sha256 == full
    })
    .await;
    let startup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "  {count} enrolled; {} of {} on the first policy with the full membership after {startup_s:.1} s",
        ready.len(),
        hosts.len()
    );

    let mut sim_lat = Vec::new();
    let mut real_lat = Vec::new();
    let mut converged_all = true;
    for k in 0..rounds {
        let (rev, t0) = publish(&admin, k + 1).await;
        let seen = collect(&mut rx, &hosts, Duration::from_secs(60), |s| {
            s.applied_revision == rev
        })
        .await;
        converged_all &= seen.len() == hosts.len();
        for (h, at) in &seen {
            let ms = at.duration_since(t0).as_secs_f64() * 1e3;
            if h == "real-0" {
                real_lat.push(ms);
            } else {
                sim_lat.push(ms);
            }
        }
        eprintln!(
            "  publish {}: {} of {} applied",
            k + 1,
            seen.len(),
            hosts.len()
        );
    }

    let mut churn = json!(null);
    if churn_secs > 0 {
        let joins = (churn_secs * 100) as usize;
        let real_pid = real_agent.as_ref().map(|a| a.child.id());
        let real_cpu_before = real_pid.and_then(cpu_secs);
        let writer = admin.clone();
        let t_start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut writes = Vec::with_capacity(joins);
        for j in 0..joins {
            tick.tick().await;
            let e = enrollment(format!("join-{j}"), addr(200_000 + j), j);
            let w = writer.clone();
            // A join whose write times out (etcd busy fanning out to the
            // watchers) is written again, as an agent's enrollment would be.
            writes.push(tokio::spawn(async move {
                let mut tries = 0;
                loop {
                    match w.enroll(&e).await {
                        Err(err) if err.is_unavailable() && tries < 5 => tries += 1,
                        other => break other,
                    }
                }
            }));
        }
        // A join that still fails is a failed join: counted, and the churn
        // target is missed (never a silent ✓).
        let mut failed_joins = 0usize;
        for w in writes {
            if !matches!(w.await, Ok(Ok(_))) {
                failed_joins += 1;
            }
        }
        // Catch-up is measured from the moment the last join was committed
        // (its write answered), not from when this process finished reading
        // the membership back: by then the agents may long be done, and
        // every figure would read 0.
        let t_last = Instant::now();
        let written = t_start.elapsed().as_secs_f64();
        let until = Instant::now() + Duration::from_secs(30);
        let (c, final_hash) = loop {
            let (c, h) = expected_membership(&admin).await;
            if c >= hosts.len() + joins || Instant::now() > until {
                break (c, h);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let seen = collect(&mut rx, &hosts, Duration::from_secs(120), |s| {
            s.membership_sha256 == final_hash
        })
        .await;
        let lat: Vec<f64> = seen
            .values()
            .map(|at| at.saturating_duration_since(t_last).as_secs_f64() * 1e3)
            .collect();
        let p = percentiles(lat);
        // What following the churn cost the real agent (watch, views,
        // membership, parse, compile, switch, reports): its CPU time from
        // the first join until every agent caught up.
        let real_cpu = match (real_pid.and_then(cpu_secs), real_cpu_before) {
            (Some(after), Some(before)) => json!(after - before),
            _ => json!(null),
        };
        let ok = failed_joins == 0
            && seen.len() == hosts.len()
            && p["p99_ms"].as_f64().is_some_and(|v| v <= TARGET_P99_MS);
        eprintln!(
            "  churn: {joins} joins in {written:.1} s ({:.0}/s, {failed_joins} failed after 6 tries); {} of {} caught up: {p}",
            joins as f64 / written,
            seen.len(),
            hosts.len()
        );
        churn = json!({
            "joins": joins,
            "failed_joins": failed_joins,
            "enrolled_at_end": c,
            "seconds": written,
            "joins_per_second": joins as f64 / written,
            "caught_up": seen.len(),
            "agents": hosts.len(),
            "catch_up_after_last_join": p,
            "real_agent_cpu_seconds": real_cpu,
            "ok": ok,
        });
    }
    let etcd_rss = etcd.pid().map(rss_mib).unwrap_or(0.0);
    let self_rss = rss_mib(std::process::id());
    for t in &tasks {
        t.abort();
    }
    drop(real_agent);
    let sim = percentiles(sim_lat);
    let ok = converged_all && sim["p99_ms"].as_f64().is_some_and(|v| v <= TARGET_P99_MS);
    json!({
        "agents": n,
        "real_agent": real,
        "rules": RULES,
        "rounds": rounds,
        "startup_seconds": startup_s,
        "converged_every_round": converged_all,
        "publish_to_applied_report": sim,
        "real_agent_publish_to_applied_report": percentiles(real_lat),
        "switches": switches.load(Ordering::Relaxed),
        "compiles": ccache.lock().map(|m| m.len()).unwrap_or(0),
        "etcd_rss_mib": etcd_rss,
        "bench_process_rss_mib": self_rss,
        "churn": churn,
        "ok": ok,
    })
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

fn ms(v: &Value, k: &str) -> String {
    v[k].as_f64()
        .map(|x| format!("{x:.0}"))
        .unwrap_or_else(|| "-".into())
}

fn main() {
    segment_tests::netns::require_root();
    raise_nofile();
    let mut quick = false;
    let mut json_path = PathBuf::from("target/bench/fleet.json");
    let mut md_path = PathBuf::from("docs/fleet-benchmarks.md");
    let mut command = "cargo xtask bench --fleet".to_owned();
    // `--size AGENTS:ROUNDS:CHURN_SECS` (repeatable): only these sizes,
    // for measuring one change at one size.
    let mut only: Vec<(usize, usize, u64)> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = it.next().expect("--json PATH").into(),
            "--markdown" => md_path = it.next().expect("--markdown PATH").into(),
            "--command" => command = it.next().expect("--command TEXT"),
            "--size" => {
                let v = it.next().expect("--size AGENTS:ROUNDS:CHURN_SECS");
                let f: Vec<u64> = v
                    .split(':')
                    .map(|x| x.parse().expect("--size AGENTS:ROUNDS:CHURN_SECS"))
                    .collect();
                assert!(f.len() == 3, "--size AGENTS:ROUNDS:CHURN_SECS");
                only.push((f[0] as usize, f[1] as usize, f[2]));
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sizes: &[(usize, usize, u64)] = if !only.is_empty() {
        &only
    } else if quick {
        &[(1, 2, 0), (100, 2, 3), (1000, 2, 0)]
    } else {
        &[(1, 5, 0), (100, 5, 10), (1000, 5, 10)]
    };
    let mut results = Vec::new();
    for &(n, rounds, churn) in sizes {
        results.push(runtime.block_on(run_size(n, rounds, churn, true)));
    }
    let report = json!({"command": command, "quick": quick, "results": results});
    if let Some(dir) = json_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).expect("json");

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Fleet convergence\n\nMeasured with `{command}` on this machine (2 shared cores): one etcd 3.4, N simulated agents in one process (own connection, watch, enrollment and lease each; real watch → membership → compile → switch stand-in → status report pipeline, membership memoized by enrollment revision and parse and compile by input hash) plus one real `segment-agent run --store` with the real datapath. A {RULES}-rule policy over {TAGS} tags whose members are the enrolled hosts (granted by `tagOwners`). Latency: publish commit → the agent's status report with the new revision, seen in etcd. Target: p99 ≤ 1 s.\n"
    );
    let _ = writeln!(
        md,
        "| agents | publishes | p50 ms | p99 ms | max ms | real agent p50/max ms | all converged | etcd RSS MiB | p99 ≤ 1 s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &results {
        let p = &r["publish_to_applied_report"];
        let ra = &r["real_agent_publish_to_applied_report"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {:.0} | {} |",
            r["agents"],
            r["rounds"],
            ms(p, "p50_ms"),
            ms(p, "p99_ms"),
            ms(p, "max_ms"),
            ms(ra, "p50_ms"),
            ms(ra, "max_ms"),
            r["converged_every_round"],
            r["etcd_rss_mib"].as_f64().unwrap_or(0.0),
            mark(r["ok"] == true)
        );
    }
    let _ = writeln!(
        md,
        "\nEnrollment churn (hosts joining at 100/s while the agents watch; catch-up = from the commit of the last join until each agent reports the final membership; a join whose write still fails after 6 tries is a failed join and misses the target; real agent CPU = the CPU time the real agent spent from the first join until every agent caught up):\n\n| agents | joins | failed joins | joins/s | caught up | p50 ms | p99 ms | max ms | real agent CPU s | target met |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in &results {
        let c = &r["churn"];
        if c.is_null() {
            continue;
        }
        let p = &c["catch_up_after_last_join"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {}/{} | {} | {} | {} | {} | {} |",
            r["agents"],
            c["joins"],
            c["failed_joins"],
            c["joins_per_second"].as_f64().unwrap_or(0.0),
            c["caught_up"],
            c["agents"],
            ms(p, "p50_ms"),
            ms(p, "p99_ms"),
            ms(p, "max_ms"),
            c["real_agent_cpu_seconds"]
                .as_f64()
                .map_or("n/a".to_owned(), |v| format!("{v:.2}")),
            mark(c["ok"] == true)
        );
    }
    if let Some(dir) = md_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&md_path, &md).expect("markdown");
    print!("{md}");
}

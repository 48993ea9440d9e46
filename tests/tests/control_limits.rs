//! The operator always reaches the control socket: idle connections to it
//! or to the metrics port, and endless requests, must not lock them out or
//! grow the agent without bound. (From the red team's `redteam.rs`, where
//! they were `redteam_defect_*` tests; the limits are in the README,
//! "Limits".)

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use segment::agent::limits::MAX_REQUEST_BYTES;
use segment_tests::{
    agent::Agent,
    control::{answers_status, socket_path},
    lab::Lab,
    policies::LAB_POLICY,
    process::rss_kib,
};

/// The agent's (soft, hard) open files limit, from /proc.
fn nofile_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut words = line["Max open files".len()..].split_whitespace();
    (
        words.next().unwrap_or_default().to_owned(),
        words.next().unwrap_or_default().to_owned(),
    )
}

/// Sets the agent's open files limit to what a systemd service gets by
/// default (1024 soft) after it started, so that the agent's own raise at
/// startup does not hide what the connection limits must do.
fn systemd_default_nofile(agent: &Agent) {
    let pid = agent.pid().to_string();
    let out = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:20000"])
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// Kills a spawned process when dropped.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Idle connections to the control socket must not lock the operator out:
/// with the file limit a systemd service gets by default (1024 soft), 1100
/// idle connections that never send a request must not stop `status` from
/// being answered. (And the agent raised its soft limit to the hard one at
/// startup.)
#[test]
fn idle_control_connections_lock_out_the_operator() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let (soft, hard) = nofile_limit(agent.pid());
    assert_eq!(
        soft, hard,
        "the agent did not raise its soft open files limit to the hard one"
    );
    systemd_default_nofile(&agent);
    let sock = socket_path(&agent);
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match UnixStream::connect(&sock) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    // Let the agent accept what it can.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered = answers_status(&agent, Duration::from_secs(5));
    let held = idle.len();
    drop(idle);
    let after = answers_status(&agent, Duration::from_secs(10));
    assert!(
        answered.is_some(),
        "with {held} idle control connections open, `status` got no answer in 5 s \
         (answered after closing them: {})",
        after.is_some()
    );
}

/// A request line without an end must not grow the agent without bound:
/// 256 MiB with no newline gets the connection closed once the request is
/// longer than the largest one the agent takes (an `apply` of the largest
/// policy), and costs no more memory than that.
#[test]
fn unbounded_control_request_line() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let pid = agent.pid();
    let before = rss_kib(pid).unwrap_or(0);
    let mut s = UnixStream::connect(socket_path(&agent)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    let mut peak = before;
    for _ in 0..256 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    // Give the agent a moment to read what is in flight.
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(s);
    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        answers_status(&agent, Duration::from_secs(10)).is_some(),
        "agent stopped answering after a {sent}-byte request"
    );
    assert!(
        sent < 256 << 20,
        "the agent took a {} MiB request line without a newline",
        sent >> 20
    );
    // The agent may hold one request of the largest size it takes.
    let bound_mib = (MAX_REQUEST_BYTES >> 20) + 16;
    assert!(
        growth_mib < bound_mib,
        "a {} MiB request line without a newline grew the agent by {growth_mib} MiB, \
         more than {bound_mib} MiB (RSS {before} KiB -> {peak} KiB)",
        sent >> 20
    );
}

/// The metrics port (127.0.0.1:9464, no credentials) is open to every local
/// user. An unprivileged user (uid 65534) holding 1100 idle connections to
/// it, with the file limit a systemd service gets by default (1024 soft),
/// must not lock the operator out of the control socket.
#[test]
fn idle_metrics_connections_from_nobody_lock_out_the_operator() {
    let lab = Lab::standard();
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    systemd_default_nofile(&agent);
    let script = "import socket,sys\ns=[]\nfor i in range(1100):\n  try:\n    s.append(socket.create_connection(('127.0.0.1',9464),timeout=2))\n  except Exception:\n    break\nprint(len(s),flush=True)\nsys.stdin.read()\n";
    let mut holder = Reap(
        Command::new("nsenter")
            .arg(format!("--net={}", lab.gw.path().display()))
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .args(["/usr/bin/python3", "-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn connection holder"),
    );
    let mut held = String::new();
    if let Some(out) = holder.0.stdout.take() {
        BufReader::new(out).read_line(&mut held).ok();
    }
    let n: usize = held.trim().parse().unwrap_or(0);
    assert!(n > 1000, "the holder opened only {n:?} connections");
    let answered = answers_status(&agent, Duration::from_secs(5));
    drop(holder);
    let after = answers_status(&agent, Duration::from_secs(10));
    assert!(
        answered.is_some(),
        "uid 65534 holding {} idle connections to the metrics port: `status` got no answer \
         in 5 s (answered after they closed: {})",
        held.trim(),
        after.is_some()
    );
}

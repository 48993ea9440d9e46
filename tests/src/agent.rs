//! Running the real `segment-agent` binary against a lab: each instance gets
//! its own pin and state directories, and is stopped and fully detached when
//! dropped (even if the test panicked).

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::netns::{Netns, PREFIX};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long an agent may take from start to "enforcing on": the kernel
/// verifies several programs, seconds of CPU, and a CI run on a loaded
/// 2-CPU machine has needed more than 30 s.
const STARTUP: Duration = Duration::from_secs(120);

/// The agent binary: `$SEGMENT_AGENT_BIN`, else the workspace's debug build.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SEGMENT_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    for profile in ["debug", "release"] {
        let p = root.join("target").join(profile).join("segment-agent");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "segment-agent is not built: run `cargo build -p segment-agent` or set SEGMENT_AGENT_BIN"
    );
}

/// Unique pin and state directories of one agent instance.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub pin: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}-{}-{n}", std::process::id());
        Self {
            pin: PathBuf::from("/sys/fs/bpf").join(&tag),
            state: std::env::temp_dir().join(&tag),
        }
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--pin-dir".into(),
            self.pin.display().to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
        ]
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `segment-agent ARGS... --pin-dir .. --state-dir ..` (a one-shot
/// command such as `stats`), returning (exit code, stdout, stderr).
pub fn command(ns: Option<&Netns>, dirs: &Dirs, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display()))
                .arg(agent_bin());
            c
        }
        None => Command::new(agent_bin()),
    };
    cmd.args(args).args(dirs.args());
    outcome(&cmd.output().expect("running segment-agent"))
}

/// (exit code, stdout, stderr) of a finished command; -1 when a signal
/// ended it.
pub fn outcome(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `segment-agent ARGS... --pin-dir .. --state-dir ..` as uid/gid
/// 65534 (nobody/nogroup) with no other groups, returning (exit code,
/// stdout, stderr). Through setpriv, which drops root's capabilities only
/// at the exec: the binary is found even in a checkout that nobody may
/// not enter (a 0700 `mktemp -d`), and then runs without them.
pub fn as_nobody(dirs: &Dirs, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(args)
        .args(dirs.args())
        .output()
        .expect("setpriv");
    outcome(&out)
}

/// Runs `segment-agent ARGS...` with no directories (offline commands such
/// as `check`, `test`, `explain`).
pub fn offline(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .expect("running segment-agent");
    outcome(&out)
}

/// A running `segment-agent run`.
pub struct Agent {
    pub dirs: Dirs,
    child: Option<Child>,
    log: PathBuf,
    pub policy: PathBuf,
    ns: PathBuf,
    /// Set when the directories were handed to another agent.
    handed_over: bool,
}

impl Agent {
    /// Writes `policy` to a file and starts the agent inside `ns` on
    /// `ifaces`, waiting until it enforces.
    pub fn start(ns: &Netns, policy: &str, ifaces: &[String], extra: &[&str]) -> Self {
        let dirs = Dirs::new();
        std::fs::create_dir_all(&dirs.state).expect("state dir");
        let policy_path = dirs.state.join("policy.yaml");
        std::fs::write(&policy_path, policy).expect("write policy");
        Self::start_with(ns, dirs, &policy_path, ifaces, extra)
    }

    /// Starts `segment-agent run ARGS...` (e.g. `--store URL --iface eth0
    /// --host web-1`) inside `ns` with `dirs`, waiting until it enforces.
    pub fn start_run(ns: &Netns, dirs: Dirs, args: &[String]) -> Self {
        std::fs::create_dir_all(&dirs.state).expect("state dir");
        let log = dirs.state.join(format!(
            "agent-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg(agent_bin())
            .arg("run")
            .args(args)
            .args(dirs.args())
            .args(["--metrics-addr", "none"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log_file.try_clone().expect("clone log")))
            .stderr(Stdio::from(log_file));
        let child = cmd.spawn().expect("spawn segment-agent");
        let mut agent = Self {
            policy: dirs.state.join("policy.yaml"),
            dirs,
            child: Some(child),
            log,
            ns: ns.path(),
            handed_over: false,
        };
        agent.wait_for_log("enforcing on", STARTUP);
        agent
    }

    /// Starts an agent with existing directories (to test restarts).
    pub fn start_with(
        ns: &Netns,
        dirs: Dirs,
        policy: &Path,
        ifaces: &[String],
        extra: &[&str],
    ) -> Self {
        let log = dirs.state.join(format!(
            "agent-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg(agent_bin())
            .arg("run")
            .arg("--policy")
            .arg(policy);
        for i in ifaces {
            cmd.arg("--iface").arg(i);
        }
        cmd.args(extra)
            .args(dirs.args())
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log_file.try_clone().expect("clone log")))
            .stderr(Stdio::from(log_file));
        let child = cmd.spawn().expect("spawn segment-agent");
        let mut agent = Self {
            dirs,
            child: Some(child),
            log,
            policy: policy.to_path_buf(),
            ns: ns.path(),
            handed_over: false,
        };
        agent.wait_for_log("enforcing on", STARTUP);
        agent
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle`; panics with the log if the
    /// agent exits or time runs out.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "segment-agent exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("agent running")
    }

    /// Sends a signal to the agent process (nsenter execs it, so the pid is
    /// the agent's).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we spawned.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGKILL, and reap: enforcement must stay in place. The directories
    /// (and the policy file in them) are handed over, for a new agent to
    /// adopt; whoever holds them next cleans up.
    pub fn kill9(mut self) -> (Dirs, PathBuf) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.handed_over = true;
        (self.dirs.clone(), self.policy.clone())
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: kill with a pid we spawned.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `segment-agent stats --json` against this agent's pins.
    pub fn stats(&self) -> serde_json::Value {
        let (code, out, err) = command(None, &self.dirs, &["stats", "--json"]);
        assert_eq!(code, 0, "stats failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats JSON: {e}\n{out}"))
    }

    /// Packets per datapath reason (`drop_no_rule`, ...) on one hook
    /// (`ingress` or `egress`), from `stats --json`.
    pub fn reasons(&self, hook: &str) -> std::collections::BTreeMap<String, u64> {
        let s = self.stats();
        s["reasons"]
            .as_array()
            .expect("stats --json has reasons")
            .iter()
            .filter(|r| r["hook"] == hook)
            .map(|r| {
                (
                    r["reason"].as_str().expect("reason name").to_owned(),
                    r["packets"].as_u64().expect("packet count"),
                )
            })
            .collect()
    }

    /// Waits until the `reason` counter of `hook` has not moved for `quiet`
    /// (at most `timeout` in all), and returns its value. For the links'
    /// own chatter after they come up (IPv6 multicast listener reports go
    /// out a few times in the first second or two): a test that counts
    /// exactly starts once it is over.
    pub fn wait_until_quiet(
        &self,
        hook: &str,
        reason: &str,
        quiet: Duration,
        timeout: Duration,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        let count = || self.reasons(hook).get(reason).copied().unwrap_or(0);
        let (mut last, mut since) = (count(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = count();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{hook} {reason} kept counting for {timeout:?}: the lab is not quiet"
            );
        }
    }

    /// A segment's entry in `stats --json`.
    pub fn segment(&self, name: &str) -> serde_json::Value {
        let s = self.stats();
        s["segments"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
            .unwrap_or(serde_json::json!({"name": name, "dropped_packets": 0, "allowed_packets": 0, "would_drop_packets": 0}))
    }

    pub fn netns_path(&self) -> &Path {
        &self.ns
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if self.handed_over {
            return;
        }
        let _ = command(None, &self.dirs, &["detach", "--force"]);
        let _ = std::fs::remove_dir_all(&self.dirs.pin);
        if std::thread::panicking() {
            eprintln!("--- agent log ({}) ---\n{}", self.log.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dirs.state);
    }
}

//! Starting the agent: load, adopt, attach, apply.
//!
//! Order of operations, chosen so that no packet ever meets a half-set-up
//! datapath: validate and compile the policy (a bad policy stops here, with
//! nothing touched); load the programs, adopting pinned maps; write the
//! policy to the inactive slot and switch to it; only then attach — or, if
//! an earlier agent left pinned links, swap our programs into them
//! atomically. Stopping the process leaves everything in place. What
//! happens after that is in [`super::daemon`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use log::{error, info, warn};

use super::{
    daemon::Daemon,
    source::{PolicySource, SourceError},
};
use crate::datapath::{
    Enforcer, Paths, iface,
    loader::{self, XdpModeArg},
    state::Interface,
};

/// How to run the agent (what `run`'s flags say).
#[derive(Debug, Clone)]
pub struct Config {
    pub ifaces: Vec<String>,
    pub xdp_mode: XdpModeArg,
    /// Where to serve Prometheus metrics (`None`: nowhere).
    pub metrics_addr: Option<SocketAddr>,
    /// Conntrack table size, used when the table is first created.
    pub conntrack_size: u32,
    /// Group allowed to connect to the control socket (mode 0660); `None`:
    /// root only (0600). Members may ask `status` and `flows`; changing
    /// the policy takes root or the agent's user whatever the group.
    pub control_group: Option<u32>,
    pub paths: Paths,
}

/// How a run of the agent ended.
#[derive(Debug)]
pub enum Ended {
    /// Stopped by SIGINT/SIGTERM; enforcement stays in place.
    Stopped,
    /// The source's policy is invalid: not started, nothing touched.
    Invalid(SourceError),
    /// The policy is valid but does not compile (it does not fit the
    /// datapath): not started, nothing touched.
    DoesNotCompile {
        policy: String,
        error: crate::compile::CompileError,
    },
}

/// Where the locks of pin directories live. A pin directory is on bpffs,
/// which has no flock, so its lock is a file named after it here.
pub const PIN_LOCK_DIR: &str = "/run/segment/locks";

/// An exclusive lock held for the agent's lifetime.
struct AgentLock {
    _file: std::fs::File,
}

impl AgentLock {
    /// Locks `path` (created 0600), or explains who holds it.
    fn acquire(path: &Path, busy: impl FnOnce(&str) -> String) -> Result<Self> {
        use std::{
            io::{Seek, Write},
            os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
        };
        let mut file = std::fs::OpenOptions::new()
            .mode(0o600)
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            bail!("{}", busy(holder.trim()));
        }
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        Ok(Self { _file: file })
    }
}

/// The lock file of a pin directory: FNV-1a of its canonical path (stable
/// across builds, unlike std's hasher).
pub fn pin_lock_file(pin_dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(pin_dir).unwrap_or_else(|_| pin_dir.to_path_buf());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(PIN_LOCK_DIR).join(format!("{h:016x}.lock"))
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("bad interface name {name:?}"))?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface named {name} (see `ip link`)");
    }
    Ok(i)
}

/// Starts enforcing the source's policy on the configured interfaces and
/// keeps it current until SIGINT/SIGTERM.
pub fn run<S: PolicySource>(config: Config, mut source: S) -> Result<Ended> {
    let paths = &config.paths;
    // Descriptors are what idle connections cost; with the soft limit
    // systemd gives (1024), a few hundred of them would exhaust it.
    match super::limits::raise_nofile_limit() {
        Ok((before, after)) if before < after => {
            info!("open files limit raised from {before} to {after} (the hard limit)");
        }
        Ok((_, now)) => info!("open files limit: {now}"),
        Err(e) => warn!("could not raise the open files limit: {e}"),
    }
    let doc = match (source.reader())() {
        Ok(d) => d,
        Err(e) => {
            error!("not starting: {}", e.summary());
            return Ok(Ended::Invalid(e));
        }
    };
    let policy = &doc.policy;
    for w in &policy.warnings {
        warn!("{}", w.message);
    }
    // Every interface must exist, and be one segment can enforce on,
    // before anything is attached anywhere.
    let mut ifaces = Vec::new();
    for name in &config.ifaces {
        let native = config.xdp_mode == XdpModeArg::Native;
        ifaces.push((name.clone(), ifindex(name)?, iface::classify(name, native)?));
    }

    {
        use std::os::unix::fs::DirBuilderExt;
        // Not writable by others whatever the umask (when we create it).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&paths.state_dir)
            .with_context(|| format!("creating {}", paths.state_dir.display()))?;
    }
    let _lock = AgentLock::acquire(&paths.lock_file(), |pid| {
        format!(
            "another segment agent is running with this state directory (pid {pid}); stop it first, or use --state-dir/--pin-dir for a separate instance"
        )
    })?;
    // Two agents with different state directories must not share one pin
    // directory either (they would fight over the same links and maps).
    loader::ensure_pin_dir(paths)?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(PIN_LOCK_DIR)
            .with_context(|| format!("creating {PIN_LOCK_DIR}"))?;
    }
    let _pin_lock = AgentLock::acquire(&pin_lock_file(&paths.pin_dir), |pid| {
        format!(
            "another segment agent (pid {pid}) is running on the pin directory {}; stop it first, or give this one its own --pin-dir",
            paths.pin_dir.display()
        )
    })?;

    let level = log_level_for_ebpf();
    let mut ebpf = loader::load(paths, level, config.conntrack_size)?;
    loader::pin_programs(&mut ebpf, paths)?;
    crate::datapath::ct_filter::maintain_in_background(paths);
    let mut enforcer = Enforcer::open(paths)?;
    let adopting = enforcer.active_slot()?.is_some();
    if adopting {
        info!(
            "adopting pinned state under {} (policy generation {})",
            paths.pin_dir.display(),
            enforcer.state.generation
        );
    }

    let started = Instant::now();
    let (compiled, ids) = match enforcer.compile(policy) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", policy.source.name);
            return Ok(Ended::DoesNotCompile {
                policy: policy.source.name.clone(),
                error: e,
            });
        }
    };
    let report = enforcer.apply(policy, compiled, ids, started.elapsed())?;
    info!(
        "policy {} applied as generation {} (slot {}): {} rules, {} identities, {} rule entries; compiled in {:?}, written in {:?}",
        policy.source.name,
        report.generation,
        report.slot,
        report.sizes.rules,
        report.sizes.identities,
        report.sizes.rule_entries,
        report.compile_time,
        report.write_time
    );
    source.applied(super::source::Applied::InForce {
        generation: report.generation,
        revision: doc.revision,
    });

    let mut attached = Vec::new();
    for (name, index, kind) in &ifaces {
        let a = loader::attach_ingress(&mut ebpf, paths, name, *kind, *index, config.xdp_mode)?;
        let egress_adopted = loader::attach_egress(&mut ebpf, paths, name, *kind, *index)?;
        let mode = if a.adopted {
            enforcer
                .state
                .interfaces
                .iter()
                .find(|i| i.name == *name && i.ifindex == *index)
                .map(|i| i.xdp_mode.clone())
                // The state was lost: the mode is the earlier agent's.
                .unwrap_or_else(|| "kept".to_owned())
        } else {
            a.xdp_mode.to_owned()
        };
        info!(
            "{name}: XDP ingress {} ({mode} mode), TC egress {}",
            if a.adopted { "adopted" } else { "attached" },
            if egress_adopted {
                "adopted"
            } else {
                "attached"
            }
        );
        attached.push(Interface {
            name: name.clone(),
            ifindex: *index,
            xdp_mode: mode,
        });
    }
    // Keep interfaces attached by an earlier agent in the record.
    let mut all = attached.clone();
    for old in &enforcer.state.interfaces {
        if !all.iter().any(|i| i.name == old.name)
            && paths
                .link(crate::datapath::paths::Hook::Xdp, &old.name)
                .exists()
        {
            all.push(old.clone());
        }
    }
    enforcer.set_interfaces(all)?;

    let logger = aya_log::EbpfLogger::init(&mut ebpf);
    if let Err(e) = &logger {
        warn!("datapath log messages will not be shown: {e}");
    }

    // Announced by `serve` once the control socket answers, so that whoever
    // waits for this line (scripts, systemd units, tests) can talk to it.
    let ready = format!(
        "enforcing on {}; stopping this process leaves enforcement in place (pinned under {}); `segment-agent detach` removes it",
        config.ifaces.join(", "),
        paths.pin_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut logger = logger.ok();
    let mut daemon = Daemon::new(source, &mut enforcer, doc.policy.clone());
    let access = super::control::Access {
        group: config.control_group,
    };
    runtime.block_on(daemon.serve(config.metrics_addr, access, &ready, || {
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
    }))?;
    drop(daemon);
    info!(
        "agent stopped; enforcement of generation {} stays in place",
        enforcer.state.generation
    );
    Ok(Ended::Stopped)
}

/// The eBPF log level matching the agent's own (`RUST_LOG`), so disabled
/// levels are pruned by the verifier.
fn log_level_for_ebpf() -> u8 {
    // aya-log levels: Error=1, Warn=2, Info=3, Debug=4, Trace=5.
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => 1,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 3,
        log::LevelFilter::Debug => 4,
        log::LevelFilter::Trace => 5,
    }
}

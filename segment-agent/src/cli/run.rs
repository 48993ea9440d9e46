//! `segment-agent run`: load, attach, enforce, and keep the policy current.
//!
//! Order of operations, chosen so that no packet ever meets a half-set-up
//! datapath: validate and compile the policy (a bad policy stops here, with
//! nothing touched); load the programs, adopting pinned maps; write the
//! policy to the inactive slot and switch to it; only then attach — or, if
//! an earlier agent left pinned links, swap our programs into them
//! atomically. Stopping the process leaves everything in place. What
//! happens after that is in `daemon`.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, anyhow, bail};
use log::{error, info, warn};

use super::{Outcome, daemon::Daemon};
use crate::{
    datapath::{
        Enforcer, Paths,
        loader::{self, XdpModeArg},
        state::Interface,
    },
    policy,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy file. It is watched: saving it reloads the policy (as do
    /// SIGHUP and `segment-agent reload`).
    #[arg(long)]
    pub policy: PathBuf,
    /// Interface to enforce on (repeat for several).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Serve Prometheus metrics on this address (`none` to disable).
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Conntrack table size (entries), used when the table is first created.
    #[arg(long, default_value_t = segment_common::DEFAULT_CT_ENTRIES)]
    pub conntrack_size: u32,
    #[command(flatten)]
    pub dirs: DirArgs,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> std::result::Result<MetricsAddr, String> {
    if s == "none" || s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("`{s}` is not an address:port (e.g. 127.0.0.1:9464) or `none`"))
}

/// Where state lives (both default to the standard locations).
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// bpffs directory for pinned maps, programs and links
    /// [env: SEGMENT_PIN_DIR] [default: /sys/fs/bpf/segment]
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Directory for the state file and control socket
    /// [env: SEGMENT_STATE_DIR] [default: /run/segment]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl DirArgs {
    pub fn paths(&self) -> Paths {
        Paths::resolve(self.pin_dir.clone(), self.state_dir.clone())
    }
}

/// Holds an exclusive lock on the state directory for the agent's lifetime.
struct AgentLock {
    _file: std::fs::File,
}

impl AgentLock {
    fn acquire(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
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
            bail!(
                "another segment agent is running with this state directory (pid {}); stop it first, or use --state-dir/--pin-dir for a separate instance",
                holder.trim()
            );
        }
        std::fs::write(path, std::process::id().to_string())?;
        Ok(Self { _file: file })
    }
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

pub fn run(args: RunArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    let policy = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            error!("not starting: {}", e.summary());
            return Ok(Outcome::Rejected);
        }
    };
    for w in &policy.warnings {
        warn!("{}", w.message);
    }
    // Every interface must exist before anything is attached anywhere.
    let mut ifaces = Vec::new();
    for name in &args.ifaces {
        ifaces.push((name.clone(), ifindex(name)?));
    }

    std::fs::create_dir_all(&paths.state_dir)
        .with_context(|| format!("creating {}", paths.state_dir.display()))?;
    let _lock = AgentLock::acquire(&paths.lock_file())?;

    let level = log_level_for_ebpf();
    let mut ebpf = loader::load(&paths, level, args.conntrack_size)?;
    loader::pin_programs(&mut ebpf, &paths)?;
    let mut enforcer = Enforcer::open(&paths)?;
    let adopting = enforcer.active_slot()?.is_some();
    if adopting {
        info!(
            "adopting pinned state under {} (policy generation {})",
            paths.pin_dir.display(),
            enforcer.state.generation
        );
    }

    let started = Instant::now();
    let (compiled, ids) = match enforcer.compile(&policy) {
        Ok(c) => c,
        Err(e) => {
            error!("{}: {e}", policy.source.name);
            return Ok(Outcome::Rejected);
        }
    };
    let report = enforcer.apply(&policy, compiled, ids, started.elapsed())?;
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

    let mut attached = Vec::new();
    for (name, index) in &ifaces {
        let same_iface = enforcer
            .state
            .interfaces
            .iter()
            .any(|i| i.name == *name && i.ifindex == *index);
        let a = loader::attach_ingress(&mut ebpf, &paths, name, args.xdp_mode, same_iface)?;
        let egress_adopted = loader::attach_egress(&mut ebpf, &paths, name, same_iface)?;
        let mode = if a.adopted {
            enforcer
                .state
                .interfaces
                .iter()
                .find(|i| i.name == *name)
                .map(|i| i.xdp_mode.clone())
                .unwrap_or_else(|| "native".to_owned())
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

    info!(
        "enforcing on {}; stopping this process leaves enforcement in place (pinned under {}); `segment-agent detach` removes it",
        args.ifaces.join(", "),
        paths.pin_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut logger = logger.ok();
    let mut daemon = Daemon::new(&args.policy, &mut enforcer);
    runtime.block_on(daemon.serve(args.metrics_addr.0, || {
        if let Some(l) = logger.as_mut() {
            l.flush();
        }
    }))?;
    drop(daemon);
    info!(
        "agent stopped; enforcement of generation {} stays in place",
        enforcer.state.generation
    );
    Ok(Outcome::Success)
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

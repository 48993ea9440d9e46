//! Loading the embedded eBPF object, adopting maps already pinned by an
//! earlier agent, pinning the programs, and attaching them to interfaces
//! through pinned bpf_links (so enforcement outlives the process, and a new
//! agent swaps its programs in atomically instead of attaching twice).

use std::{io, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use log::{info, warn};
use segment_common::map_names;

use super::paths::{Hook, Paths, on_bpffs};

/// The eBPF object built by `build.rs` and carried inside the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/segment.bpf.o"));

pub fn object() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this segment-agent was built with SEGMENT_SKIP_EBPF=1 and carries no datapath; rebuild it without that variable"
        );
    }
    Ok(OBJECT)
}

/// How to attach XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode, falling back to generic mode with a warning.
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only: works on any interface, slower.
    Skb,
}

/// Checks that the pin directory can be created on a bpffs.
pub fn ensure_pin_dir(paths: &Paths) -> Result<()> {
    if !on_bpffs(&paths.pin_dir) {
        bail!(
            "{} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` (or run `cargo xtask setup`)",
            paths.pin_dir.display()
        );
    }
    std::fs::create_dir_all(paths.links_dir())
        .with_context(|| format!("creating {}", paths.links_dir().display()))?;
    Ok(())
}

/// Loads the object with every map taken from (or pinned to) the pin
/// directory, then loads both programs into the kernel.
pub fn load(paths: &Paths, log_level: u8, ct_entries: u32) -> Result<Ebpf> {
    ensure_pin_dir(paths)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&paths.pin_dir)
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(map_names::CONNTRACK, ct_entries)
        .load(object()?)
        .context("loading the eBPF object (are you root?)")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(map_names::PROG_INGRESS)
        .context("ingress program missing from the object")?
        .try_into()?;
    xdp.load().context("the kernel refused the XDP program")?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(map_names::PROG_EGRESS)
        .context("egress program missing from the object")?
        .try_into()?;
    tc.load().context("the kernel refused the TC program")?;
    Ok(ebpf)
}

/// Pins both programs (replacing older pins), for bpftool and for
/// `explain --live`.
pub fn pin_programs(ebpf: &mut Ebpf, paths: &Paths) -> Result<()> {
    for name in [map_names::PROG_INGRESS, map_names::PROG_EGRESS] {
        let path = paths.program(name);
        remove_pin(&path)?;
        let prog = ebpf.program_mut(name).context("program missing")?;
        prog.pin(&path)
            .with_context(|| format!("pinning {name} at {}", path.display()))?;
    }
    Ok(())
}

pub fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("removing {}: {e}", path.display())),
    }
}

fn pinned_link(path: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(FdLink::from(link))),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(anyhow!("opening pinned link {}: {e}", path.display())),
    }
}

/// What happened when attaching to one interface.
#[derive(Debug, Clone)]
pub struct Attached {
    pub adopted: bool,
    /// `native`, `generic`, or `kept` (adopted link keeps its mode).
    pub xdp_mode: &'static str,
}

/// Attaches (or adopts) the ingress program on `iface`. `adopt` says
/// whether a pinned link for this interface may be reused (the caller checks
/// it belongs to the same interface instance).
pub fn attach_ingress(
    ebpf: &mut Ebpf,
    paths: &Paths,
    iface: &str,
    mode: XdpModeArg,
    adopt: bool,
) -> Result<Attached> {
    let path = paths.link(Hook::Xdp, iface);
    let prog: &mut Xdp = ebpf
        .program_mut(map_names::PROG_INGRESS)
        .context("ingress program missing")?
        .try_into()?;
    if adopt && let Some(fd_link) = pinned_link(&path)? {
        let link = XdpLink::try_from(fd_link).context("the pinned XDP link is not an XDP link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the XDP link on {iface}"))?;
        // Dropping our handle closes our fd; the pin keeps the link alive.
        drop(prog.take_link(id)?);
        return Ok(Attached {
            adopted: true,
            xdp_mode: "kept",
        });
    }
    remove_pin(&path)?;
    let attempts: &[(XdpMode, &'static str)] = match mode {
        XdpModeArg::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        XdpModeArg::Native => &[(XdpMode::Driver, "native")],
        XdpModeArg::Skb => &[(XdpMode::Skb, "generic")],
    };
    let mut last_err = None;
    for (i, (flags, name)) in attempts.iter().enumerate() {
        match prog.attach(iface, *flags) {
            Ok(id) => {
                if i > 0 {
                    warn!(
                        "{iface}: native XDP is not available; using generic (skb) mode, which is slower"
                    );
                }
                let link = prog.take_link(id)?;
                let fd_link: FdLink = link
                    .try_into()
                    .map_err(|_| anyhow!("{iface}: the kernel attached XDP without a bpf_link (kernel < 5.9?); segment needs bpf_link to keep enforcement across restarts"))?;
                fd_link
                    .pin(&path)
                    .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
                return Ok(Attached {
                    adopted: false,
                    xdp_mode: name,
                });
            }
            Err(e) => {
                info!("{iface}: XDP {name} attach failed: {e}");
                last_err = Some(e);
            }
        }
    }
    let e = last_err.expect("at least one attempt");
    Err(anyhow!(e)).with_context(|| {
        format!("attaching XDP to {iface} (does it exist? is another XDP program attached? `ip link show {iface}`)")
    })
}

/// Attaches (or adopts) the egress program on `iface` through TCX.
pub fn attach_egress(ebpf: &mut Ebpf, paths: &Paths, iface: &str, adopt: bool) -> Result<bool> {
    let path = paths.link(Hook::Tc, iface);
    let prog: &mut SchedClassifier = ebpf
        .program_mut(map_names::PROG_EGRESS)
        .context("egress program missing")?
        .try_into()?;
    if adopt && let Some(fd_link) = pinned_link(&path)? {
        let link = SchedClassifierLink::try_from(fd_link)
            .context("the pinned TC link is not a TC link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the TC link on {iface}"))?;
        drop(prog.take_link(id)?);
        return Ok(true);
    }
    remove_pin(&path)?;
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| {
            format!("attaching TC egress to {iface} (segment needs TCX links, kernel >= 6.6)")
        })?;
    let link = prog.take_link(id)?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|_| anyhow!("{iface}: TC egress attached without a bpf_link"))?;
    fd_link
        .pin(&path)
        .with_context(|| format!("pinning the TC link at {}", path.display()))?;
    Ok(false)
}

/// Removes the pinned links of `iface` (which detaches the programs).
pub fn detach_iface(paths: &Paths, iface: &str) -> Result<bool> {
    let mut any = false;
    for hook in [Hook::Xdp, Hook::Tc] {
        let path = paths.link(hook, iface);
        if path.exists() {
            remove_pin(&path)?;
            any = true;
        }
    }
    Ok(any)
}

/// Interfaces with a pinned link, from the link pin names.
pub fn pinned_interfaces(paths: &Paths) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(paths.links_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| {
            n.strip_prefix("xdp_")
                .or_else(|| n.strip_prefix("tc_egress_"))
                .map(str::to_owned)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

//! Loading the embedded eBPF object, adopting maps already pinned by an
//! earlier agent, pinning the programs, and attaching them to interfaces
//! through pinned bpf_links (so enforcement outlives the process, and a new
//! agent swaps its programs in atomically instead of attaching twice).

#![warn(clippy::arithmetic_side_effects)]

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

use super::{
    iface::LinkKind,
    paths::{Hook, Paths, on_bpffs},
};

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

/// Conntrack sizes `--conntrack-entries` accepts: below, a handful of busy
/// clients evict each other; above, the preallocated tables cost gigabytes
/// of kernel memory.
pub const CT_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = 1024..=(1 << 24);

/// A conntrack table already pinned with another size than asked for: the
/// pinned one is kept (its flows with it), and the caller says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSize {
    pub map: &'static str,
    pub pinned: u32,
    pub asked: u32,
}

/// The conntrack tables pinned with a size other than `ct_entries` asks for.
/// Pinned maps are adopted as they are (a map cannot be resized; re-creating
/// it would drop every tracked flow, cutting live connections of replies).
pub fn pinned_conntrack_sizes(paths: &Paths, ct_entries: u32) -> Vec<KeptSize> {
    [
        (map_names::CONNTRACK, ct_entries),
        (
            map_names::CONNTRACK_PENDING,
            segment_common::pending_ct_entries(ct_entries),
        ),
    ]
    .into_iter()
    .filter_map(|(map, asked)| {
        let pinned = aya::maps::MapData::from_pin(paths.map(map))
            .ok()?
            .info()
            .ok()?
            .max_entries();
        (pinned != asked).then_some(KeptSize { map, pinned, asked })
    })
    .collect()
}

/// Loads the object with every map taken from (or pinned to) the pin
/// directory, then loads its programs (each hook's Ethernet and L3 variant)
/// into the kernel, and prepares the conntrack filter.
pub fn load(paths: &Paths, log_level: u8, ct_entries: u32) -> Result<Ebpf> {
    ensure_pin_dir(paths)?;
    if !CT_ENTRIES_RANGE.contains(&ct_entries) {
        bail!(
            "{ct_entries} conntrack entries: the size must be between {} and {}",
            CT_ENTRIES_RANGE.start(),
            CT_ENTRIES_RANGE.end()
        );
    }
    for kept in pinned_conntrack_sizes(paths, ct_entries) {
        warn!(
            "keeping the pinned {} of {} entries (asked for {}) and the flows in it; the new size takes effect once enforcement is removed (`segment-agent detach`) and the agent starts again",
            kept.map, kept.pinned, kept.asked
        );
    }
    let mut loader = EbpfLoader::new();
    pin_outer_maps(&mut loader, paths);
    let mut ebpf = loader
        .default_map_pin_directory(&paths.pin_dir)
        .override_global(aya_log::LEVEL, &log_level, false)
        // The full program: every ablation branch pruned by the verifier.
        .override_global(segment_common::ABLATE_GLOBAL, &0u32, true)
        .map_max_entries(map_names::CONNTRACK, ct_entries)
        .map_max_entries(
            map_names::CONNTRACK_PENDING,
            segment_common::pending_ct_entries(ct_entries),
        )
        .load(object()?)
        .context("loading the eBPF object (are you root?)")?;
    for name in [map_names::PROG_INGRESS, map_names::PROG_INGRESS_L3] {
        let xdp: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("the kernel refused the XDP program {name}"))?;
    }
    for name in [map_names::PROG_EGRESS, map_names::PROG_EGRESS_L3] {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        tc.load()
            .with_context(|| format!("the kernel refused the TC program {name}"))?;
    }
    if let Err(e) = super::ct_filter::prepare(paths) {
        // The datapath then looks every flow up: slower, never wrong.
        warn!("conntrack filter off: {e}");
    }
    Ok(ebpf)
}

/// The maps of maps are BTF maps, which carry no pinning of their own:
/// pin (or adopt) them by name like the others, so that every instance of
/// the object reads the same per-slot tables.
pub fn pin_outer_maps(loader: &mut EbpfLoader<'_>, paths: &Paths) {
    for name in map_names::OUTER {
        loader.map_pin_path(name, paths.map(name));
    }
}

/// Pins the programs (replacing older pins), for bpftool and for
/// `explain --live`.
pub fn pin_programs(ebpf: &mut Ebpf, paths: &Paths) -> Result<()> {
    for name in map_names::PROGRAMS {
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

// From linux/bpf.h (UAPI, stable): commands, link types, attach types.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;
const BPF_TCX_EGRESS: u32 = 47;

/// What the kernel says a pinned link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkFacts {
    pub id: u32,
    pub link_type: u32,
    pub prog_id: u32,
    pub ifindex: u32,
    /// For TCX links: ingress or egress.
    pub attach_type: u32,
}

/// Opens the link pinned at `path` (if any) and asks the kernel what it is
/// (BPF_OBJ_GET, then BPF_OBJ_GET_INFO_BY_FD).
pub fn link_facts(path: &Path) -> Result<Option<LinkFacts>> {
    use std::os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// `struct bpf_link_info` (linux/bpf.h): three u32s, then a union that
    /// is 8-byte aligned; XDP and TCX links put the ifindex first in it
    /// (and TCX its attach type second).
    #[repr(C, align(8))]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        attach_type: u32,
        _rest: [u64; 7],
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("NUL in {}", path.display()))?;
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_GET reads a NUL-terminated path through `get`, which
    // outlives the call; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(None);
        }
        return Err(anyhow!("opening pinned link {}: {e}", path.display()));
    }
    let fd = i32::try_from(fd).map_err(|_| anyhow!("bad descriptor from BPF_OBJ_GET"))?;
    // SAFETY: a fresh descriptor the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = LinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        _pad: 0,
        ifindex: 0,
        attach_type: 0,
        _rest: [0; 7],
    };
    let attr = GetInfo {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap_or(u32::MAX),
        info_len: u32::try_from(std::mem::size_of::<LinkInfo>()).unwrap_or(0),
        info: std::ptr::addr_of_mut!(info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const GetInfo,
            std::mem::size_of::<GetInfo>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(anyhow!(
            "{} is pinned but is not a link the kernel describes: {e}",
            path.display()
        ));
    }
    Ok(Some(LinkFacts {
        id: info.id,
        link_type: info.link_type,
        prog_id: info.prog_id,
        ifindex: info.ifindex,
        attach_type: info.attach_type,
    }))
}

/// Whether a pinned link is ours to adopt on the interface with `ifindex`:
/// an XDP link (or a TCX egress link) attached to exactly that interface.
fn adoptable(facts: &LinkFacts, hook: Hook, ifindex: u32) -> bool {
    match hook {
        Hook::Xdp => facts.link_type == BPF_LINK_TYPE_XDP && facts.ifindex == ifindex,
        Hook::Tc => {
            facts.link_type == BPF_LINK_TYPE_TCX
                && facts.attach_type == BPF_TCX_EGRESS
                && facts.ifindex == ifindex
        }
    }
}

/// Decides from the pinned link itself whether to adopt it: returns the
/// link to update in place, or `None` (no pin, or a pin that is not a link
/// of this hook on this interface: it is replaced only once a new link is
/// attached).
fn adoptable_link(path: &Path, hook: Hook, iface: &str, ifindex: u32) -> Result<Option<FdLink>> {
    let Some(facts) = link_facts(path)? else {
        return Ok(None);
    };
    if !adoptable(&facts, hook, ifindex) {
        warn!(
            "{iface}: the link pinned at {} (link {}, type {}, ifindex {}) is not this hook on this interface (ifindex {ifindex}); it is replaced once the new link is attached",
            path.display(),
            facts.id,
            facts.link_type,
            facts.ifindex
        );
        return Ok(None);
    }
    pinned_link(path)
}

/// Pins a freshly attached link at `path`: pinned beside it first, then
/// renamed over whatever is pinned there, so the old pin (and the link it
/// holds) goes only once its replacement is attached and pinned.
fn pin_replacing(link: FdLink, path: &Path, what: &str) -> Result<()> {
    // bpffs refuses names with a dot; `new…` is not a link name
    // `pinned_interfaces` reads.
    let tmp = path.with_file_name(format!(
        "new{}_{}",
        std::process::id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("link"),
    ));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp)
        .with_context(|| format!("pinning the {what} link at {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("moving the {what} link pin to {}", path.display())
    })
}

/// Attaches (or adopts) the ingress program on `iface`. A link pinned for
/// this interface is adopted when the kernel says it is an XDP link on this
/// very interface (whatever the state file remembers): our program replaces
/// the old one in place, and the interface is never without one.
pub fn attach_ingress(
    ebpf: &mut Ebpf,
    paths: &Paths,
    iface: &str,
    kind: LinkKind,
    ifindex: u32,
    mode: XdpModeArg,
) -> Result<Attached> {
    let path = paths.link(Hook::Xdp, iface);
    let prog: &mut Xdp = ebpf
        .program_mut(kind.ingress_program())
        .context("ingress program missing")?
        .try_into()?;
    if let Some(fd_link) = adoptable_link(&path, Hook::Xdp, iface, ifindex)? {
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
    let attempts: &[(XdpMode, &'static str)] = match mode {
        // `iface::classify` refused `native` for these already.
        _ if !kind.native_xdp() => &[(XdpMode::Skb, "generic")],
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
                pin_replacing(fd_link, &path, "XDP")?;
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
    let e = last_err.map_or_else(|| anyhow!("no XDP attach mode to try"), |e| anyhow!(e));
    Err(e).with_context(|| {
        format!("attaching XDP to {iface} (does it exist? is another XDP program attached? `ip link show {iface}`)")
    })
}

/// Attaches (or adopts, as [`attach_ingress`]) the egress program for
/// `kind` on `iface` through TCX.
pub fn attach_egress(
    ebpf: &mut Ebpf,
    paths: &Paths,
    iface: &str,
    kind: LinkKind,
    ifindex: u32,
) -> Result<bool> {
    let path = paths.link(Hook::Tc, iface);
    let prog: &mut SchedClassifier = ebpf
        .program_mut(kind.egress_program())
        .context("egress program missing")?
        .try_into()?;
    if let Some(fd_link) = adoptable_link(&path, Hook::Tc, iface, ifindex)? {
        let link = SchedClassifierLink::try_from(fd_link)
            .context("the pinned TC link is not a TC link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program of the TC link on {iface}"))?;
        drop(prog.take_link(id)?);
        return Ok(true);
    }
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
    pin_replacing(fd_link, &path, "TC")?;
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

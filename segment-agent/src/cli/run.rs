//! `segment-agent run`: the flags of the running agent. The agent itself
//! (startup, daemon loop, control and metrics servers, policy source) is
//! [`crate::agent`].

use std::path::PathBuf;

use anyhow::Result;

use super::Outcome;
use crate::{
    agent::{self, Config, Ended, StoreSource, WatchedFile},
    datapath::{Paths, loader::XdpModeArg},
    store::{StoreArgs, enroll},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy file. It is watched: saving it reloads the policy (as do
    /// SIGHUP and `segment-agent reload`). Or `--store`.
    #[arg(long, required_unless_present_any = ["store", "store_config"], conflicts_with_all = ["store", "store_config"])]
    pub policy: Option<PathBuf>,
    /// With --policy: an inventory (YAML, JSON or HuJSON: devices with
    /// addresses, owner and tags; users with roles) that the policy's tags,
    /// users and groups resolve to — what a Tailscale policy file needs on a
    /// plain network. Re-read with every reload (SIGHUP, `reload`, a save of
    /// the policy file).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["store", "store_config"])]
    pub inventory: Option<PathBuf>,
    /// Enforce the fleet's policy from the store (etcd) instead of a file,
    /// and enroll this host: `--store http://10.0.0.1:2379[,URL...]`.
    #[command(flatten)]
    pub store: StoreArgs,
    /// With --store: this host's name in the fleet [default: the hostname].
    #[arg(long, value_name = "NAME", conflicts_with = "policy")]
    pub host: Option<String>,
    /// With --store: the tags this host claims (granted only as the
    /// policy's `tagOwners` allows), comma-separated: tag:web,tag:prod.
    #[arg(
        long,
        value_name = "TAGS",
        value_delimiter = ',',
        conflicts_with = "policy"
    )]
    pub tags: Vec<String>,
    /// With --store: this host's addresses (repeat) [default: the addresses
    /// of the --iface interfaces, followed when they change].
    #[arg(long = "address", value_name = "IP", conflicts_with = "policy")]
    pub addresses: Vec<std::net::IpAddr>,
    /// With --store: membership ends this long after the agent last
    /// refreshed the enrollment (it refreshes every tenth of it, at most
    /// hourly). A stopped agent does not take its host out of its tags
    /// before that; `fleet remove` does at once.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_expiry)]
    pub enrollment_expiry: std::time::Duration,
    /// With --store: how often the datapath's packet totals (passed,
    /// dropped, would-drop) go into this host's status record, for `fleet
    /// status`. One small write per host each time.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = crate::control::parse_duration,
        conflicts_with = "policy"
    )]
    pub report_counters_every: std::time::Duration,
    /// Interface to enforce on (repeat for several).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Serve Prometheus metrics on this address (`none` to disable).
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Let this group connect to the control socket (mode 0660 instead of
    /// 0600): its members may run `status` and `flows`; changing the policy
    /// still takes root (or the agent's user).
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub control_group: Option<u32>,
    /// Confirmed-flow conntrack table size in entries (1,024 to 16,777,216;
    /// the unconfirmed-flow table gets a quarter of it). Preallocated: about
    /// 220 bytes of kernel memory per entry, both tables together. Takes
    /// effect when the tables are created: tables already pinned keep their
    /// size, and their flows (the agent says so).
    #[arg(
        long,
        visible_alias = "conntrack-size",
        value_name = "N",
        default_value_t = segment_common::DEFAULT_CT_ENTRIES,
        value_parser = parse_ct_entries
    )]
    pub conntrack_entries: u32,
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

fn parse_ct_entries(s: &str) -> std::result::Result<u32, String> {
    let range = crate::datapath::loader::CT_ENTRIES_RANGE;
    let digits: String = s.chars().filter(|c| *c != '_' && *c != ',').collect();
    // Wide enough that any run of digits is a number, if out of range.
    match digits.parse::<u128>() {
        Ok(n) if n >= u128::from(*range.start()) && n <= u128::from(*range.end()) => Ok(n as u32),
        Ok(_) => Err(format!(
            "{s} entries is out of range: give between {} and {} (the default, {}, costs about 55 MiB of kernel memory)",
            range.start(),
            range.end(),
            segment_common::DEFAULT_CT_ENTRIES
        )),
        Err(_) => Err(format!("`{s}` is not a number of entries (e.g. 262144)")),
    }
}

/// A group name or number.
fn parse_group(s: &str) -> std::result::Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(s).map_err(|_| format!("bad group name {s:?}"))?;
    // SAFETY: `libc::group` is plain data (integers and pointers); all-zero is valid.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `group` and `buf`, both ours and alive,
    // and sets `found` to `&group` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!(
            "no group named `{s}` (see /etc/group, or give its number)"
        ));
    }
    Ok(group.gr_gid)
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

/// `7d`, `12h`, `30m`, `90s`, ...
fn parse_expiry(s: &str) -> std::result::Result<std::time::Duration, String> {
    match s.trim().strip_suffix('d') {
        Some(days) => days
            .parse::<f64>()
            .ok()
            .filter(|d| d.is_finite() && *d > 0.0)
            .map(|d| std::time::Duration::from_secs_f64(d * 86_400.0))
            .ok_or_else(|| format!("`{s}` is not a duration (write e.g. 7d, 12h, 30m)")),
        None => crate::control::parse_duration(s),
    }
}

pub fn run(args: RunArgs) -> Result<Outcome> {
    let config = Config {
        ifaces: args.ifaces.clone(),
        xdp_mode: args.xdp_mode,
        metrics_addr: args.metrics_addr.0,
        conntrack_size: args.conntrack_entries,
        control_group: args.control_group,
        paths: args.dirs.paths(),
    };
    let ended = match &args.policy {
        Some(path) => agent::run(
            config,
            WatchedFile::new(path).with_inventory(args.inventory.as_deref()),
        )?,
        None => {
            let cfg = args.store.config()?;
            let who = enroll::Enrollee {
                name: args.host.clone().unwrap_or_else(enroll::hostname),
                addresses: args.addresses.clone(),
                ifaces: args.ifaces.clone(),
                tags: args.tags.clone(),
                expiry: args.enrollment_expiry,
            };
            let source = StoreSource::start(cfg, who, config.paths.state_dir.clone())?
                .reporting_counters_every(args.report_counters_every);
            agent::run(config, source)?
        }
    };
    match ended {
        Ended::Stopped => Ok(Outcome::Success),
        Ended::Invalid(e) => {
            eprint!("{e}");
            Ok(Outcome::Rejected)
        }
        Ended::DoesNotCompile { policy, error } => {
            eprintln!("{policy}: {error}");
            Ok(Outcome::Rejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ct_entries;

    #[test]
    fn conntrack_entries_in_range_are_taken() {
        assert_eq!(parse_ct_entries("1024"), Ok(1024));
        assert_eq!(parse_ct_entries("262_144"), Ok(262_144));
        assert_eq!(parse_ct_entries("16,777,216"), Ok(1 << 24));
    }

    #[test]
    fn conntrack_entries_out_of_range_or_not_numbers_are_refused() {
        for bad in ["1023", "0", "16777217", "99999999999999999999"] {
            let e = parse_ct_entries(bad).unwrap_err();
            assert!(e.contains("between 1024 and 16777216"), "{bad}: {e}");
        }
        for bad in ["", "lots", "-5", "1e6"] {
            let e = parse_ct_entries(bad).unwrap_err();
            assert!(e.contains("not a number"), "{bad}: {e}");
        }
    }
}

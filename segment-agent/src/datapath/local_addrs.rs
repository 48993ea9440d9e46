//! This host's own addresses, for the datapath's martian check: a packet
//! arriving at ingress whose source is one of them is dropped
//! (`drop_martian`). The set is every address of every interface of the
//! agent's network namespace, IPv4 and IPv6, link-local included; the
//! unspecified addresses are never "own".
//!
//! [`own_keys`] is the pure part; [`list`] asks the kernel (getifaddrs);
//! [`sync`] writes only the differences into `SEG_LOCAL`, so calling it on
//! every policy apply and every watch tick costs one getifaddrs and one map
//! walk of a handful of entries.
#![warn(clippy::arithmetic_side_effects)]

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use segment_common::{LocalAddrKey, MAX_LOCAL_ADDRS, map_names};

use super::{paths::Paths, tables::open_map};

/// The martian table's key for an address, laid out as the datapath reads
/// packet addresses (network-order bytes packed in native-endian words).
pub fn key_of(addr: IpAddr) -> LocalAddrKey {
    match addr {
        IpAddr::V4(v4) => LocalAddrKey {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            family: 4,
            _pad: [0; 3],
        },
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut addr = [0u32; 4];
            for (word, chunk) in addr.iter_mut().zip(o.chunks_exact(4)) {
                *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
            LocalAddrKey {
                addr,
                family: 6,
                _pad: [0; 3],
            }
        }
    }
}

/// The keys of a set of interface addresses: the unspecified addresses are
/// left out (a source of 0.0.0.0 or :: is never this host speaking).
pub fn own_keys(addrs: impl IntoIterator<Item = IpAddr>) -> BTreeSet<LocalAddrKey> {
    addrs
        .into_iter()
        .filter(|a| !a.is_unspecified())
        .map(key_of)
        .collect()
}

/// Every address of every interface of this network namespace.
pub fn list() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its
            // real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is not used after this.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// What [`sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    /// Addresses left out because the table is full.
    pub left_out: usize,
}

/// Makes `SEG_LOCAL` hold exactly this namespace's addresses, writing only
/// what changed.
pub fn sync(paths: &Paths) -> Result<SyncReport> {
    let want = own_keys(list().context("listing this host's addresses (getifaddrs)")?);
    let mut map: BpfHashMap<MapData, LocalAddrKey, u32> = open_map(paths, map_names::LOCAL_ADDRS)?;
    let have: BTreeSet<LocalAddrKey> = map.keys().filter_map(Result::ok).collect();
    let mut report = SyncReport::default();
    // Remove first, so that a host that swapped many addresses has room for
    // the new ones.
    for k in have.difference(&want) {
        map.remove(k).with_context(|| {
            format!(
                "removing a former own address from {}",
                map_names::LOCAL_ADDRS
            )
        })?;
        report.removed = report.removed.saturating_add(1);
    }
    let room = (MAX_LOCAL_ADDRS as usize).saturating_sub(have.intersection(&want).count());
    for (i, k) in want.difference(&have).enumerate() {
        if i >= room {
            report.left_out = report.left_out.saturating_add(1);
            continue;
        }
        map.insert(k, 1, 0)
            .with_context(|| format!("adding an own address to {}", map_names::LOCAL_ADDRS))?;
        report.added = report.added.saturating_add(1);
    }
    if report.left_out > 0 {
        log::warn!(
            "{} of this host's addresses do not fit the martian table ({MAX_LOCAL_ADDRS}): packets spoofing them are judged by the policy",
            report.left_out
        );
    }
    Ok(report)
}

/// [`sync`], for callers that must carry on if it fails: the martian set
/// then stays as it was (the policy still judges every packet), and the
/// failure is logged.
pub fn sync_or_warn(paths: &Paths) {
    match sync(paths) {
        Ok(r) if r.added > 0 || r.removed > 0 => {
            log::info!(
                "own addresses (martian check): {} added, {} removed",
                r.added,
                r.removed
            );
        }
        Ok(_) => {}
        Err(e) => log::warn!("could not refresh this host's own addresses: {e:#}"),
    }
}

/// How often the daemon's tick re-reads the addresses (the spec asks for at
/// least every 2 s).
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// [`sync_or_warn`] at most every [`REFRESH_EVERY`]: called from the
/// daemon's 100 ms tick, it costs a clock read when not due.
pub fn refresh(paths: &Paths) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let now = Instant::now();
    {
        let Ok(mut last) = LAST.lock() else { return };
        if last.is_some_and(|t| now.saturating_duration_since(t) < REFRESH_EVERY) {
            return;
        }
        *last = Some(now);
    }
    sync_or_warn(paths);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_datapath_layout_and_skip_unspecified() {
        let keys = own_keys([
            "10.10.1.254".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "::".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "10.10.1.254".parse().unwrap(),
        ]);
        assert_eq!(keys.len(), 2, "{keys:?}");
        let v4 = key_of("10.10.1.254".parse().unwrap());
        // The packet's bytes, as the parser packs them into word 0.
        assert_eq!(v4.addr, [u32::from_ne_bytes([10, 10, 1, 254]), 0, 0, 0]);
        assert_eq!(v4.family, 4);
        let v6 = key_of("fe80::1".parse().unwrap());
        assert_eq!(v6.addr[0], u32::from_ne_bytes([0xfe, 0x80, 0, 0]));
        assert_eq!(v6.addr[3], u32::from_ne_bytes([0, 0, 0, 1]));
        assert!(keys.contains(&v4) && keys.contains(&v6));
    }
}

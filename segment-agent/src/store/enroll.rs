//! Enrolling this host: its name (default: the hostname), its addresses
//! (default: those of the interfaces it enforces on) and the tags it
//! claims. The record is written at start, rewritten when the addresses
//! change, and refreshed well before it expires; it is never leased (an
//! agent that stops does not take its host out of the fleet's tags).

use std::{net::IpAddr, time::Duration};

use log::{info, warn};

use super::{
    Enrollment, Store, StoreError, client::error_chain, keys::check_host_name, watch::Backoff,
};
use crate::datapath::state::unix_now;

/// Default membership expiry: a host whose agent has not refreshed its
/// enrollment for a week stops being a member.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who this host says it is.
#[derive(Debug, Clone)]
pub struct Enrollee {
    pub name: String,
    /// Explicit addresses; when empty, those of `ifaces` (re-read while
    /// running, so an address change is enrolled).
    pub addresses: Vec<IpAddr>,
    pub ifaces: Vec<String>,
    pub tags: Vec<String>,
    pub expiry: Duration,
}

impl Enrollee {
    /// Checks the name and the tags (`tag:NAME`).
    pub fn check(&self) -> Result<(), StoreError> {
        check_host_name(&self.name).map_err(|reason| StoreError::BadHostName {
            name: self.name.clone(),
            reason,
        })?;
        for t in &self.tags {
            let ok = t.strip_prefix("tag:").is_some_and(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
            if !ok {
                return Err(StoreError::Usage {
                    message: format!(
                        "`{t}` is not a tag: write tag:NAME (letters, digits, -, _ and .)"
                    ),
                });
            }
        }
        if self.expiry < Duration::from_secs(2) {
            return Err(StoreError::Usage {
                message: "the enrollment expiry must be at least 2 s".into(),
            });
        }
        Ok(())
    }

    /// The addresses to enroll now.
    pub fn current_addresses(&self) -> Vec<IpAddr> {
        let mut a = if self.addresses.is_empty() {
            interface_addresses(&self.ifaces)
        } else {
            self.addresses.clone()
        };
        a.sort();
        a.dedup();
        a
    }

    pub fn record(&self, enrolled_at: Option<u64>) -> Enrollment {
        let now = unix_now();
        Enrollment {
            name: self.name.clone(),
            addresses: self.current_addresses(),
            tags: self.tags.clone(),
            enrolled_at: enrolled_at.unwrap_or(now),
            refreshed_at: now,
            expires_after_secs: self.expiry.as_secs(),
        }
    }

    /// How often the record is refreshed: a tenth of the expiry, at most
    /// hourly.
    pub fn refresh_interval(&self) -> Duration {
        (self.expiry / 10).min(Duration::from_secs(3600))
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The addresses of the named interfaces (all interfaces but loopback when
/// `ifaces` is empty), without IPv6 link-local ones.
pub fn interface_addresses(ifaces: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from the kernel.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if ifaces.is_empty() {
            if name == "lo" {
                continue;
            }
        } else if !ifaces.iter().any(|i| *i == name) {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                let a = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if (a.segments()[0] & 0xffc0) == 0xfe80 {
                    continue;
                }
                IpAddr::V6(a)
            }
            _ => continue,
        };
        if !addr.is_loopback() {
            out.push(addr);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// Keeps this host enrolled until the task is dropped: writes the record
/// (retrying with backoff while the store is away), rewrites it when the
/// interface addresses change (checked every `poll`), refreshes it on
/// `refresh_interval`. A record deleted by `fleet remove` is not written
/// again (the operator retired the host; restarting the agent enrolls it).
pub async fn keep_enrolled(store: Store, who: Enrollee, poll: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut enrolled_at = None;
    let mut written: Option<Vec<IpAddr>> = None;
    let mut last_write = tokio::time::Instant::now();
    loop {
        let addrs = who.current_addresses();
        let due =
            written.as_ref() != Some(&addrs) || last_write.elapsed() >= who.refresh_interval();
        if due {
            if written.is_some()
                && let Ok(None) = store.enrollment(&who.name).await
            {
                warn!(
                    "store: {} was removed from the fleet (`fleet remove`): not enrolling again until the agent restarts",
                    who.name
                );
                return;
            }
            if enrolled_at.is_none()
                && let Ok(Some(old)) = store.enrollment(&who.name).await
            {
                enrolled_at = Some(old.value.enrolled_at);
            }
            let rec = who.record(enrolled_at);
            match store.enroll(&rec).await {
                Ok(rev) => {
                    if written.as_ref() != Some(&addrs) {
                        info!(
                            "store: enrolled as {} with {} claiming {} (revision {rev})",
                            rec.name,
                            list(&rec.addresses),
                            if rec.tags.is_empty() {
                                "no tags".to_owned()
                            } else {
                                rec.tags.join(", ")
                            }
                        );
                    }
                    enrolled_at = Some(rec.enrolled_at);
                    written = Some(addrs);
                    last_write = tokio::time::Instant::now();
                    backoff.reset();
                }
                Err(e) => {
                    warn!(
                        "store: enrolling {}: {}; retrying",
                        who.name,
                        error_chain(&e)
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

fn list(a: &[IpAddr]) -> String {
    if a.is_empty() {
        return "no addresses".into();
    }
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

//! After a policy change: which tracked connections may live on.
//!
//! A flow stays if the new policy would still have let it open — by a rule,
//! because its hook is not enforced, or because its destination is in audit
//! mode — and is removed otherwise, so that a connection the new policy
//! forbids does not keep flowing on the strength of the old one. Connections
//! allowed by both versions are untouched. The decision is pure; only
//! [`flush`] touches the kernel.
//!
//! The flush is an optimisation, not what keeps a revoked flow from
//! flowing: every entry carries the generation that admitted it, and the
//! datapath re-judges an entry of another generation at its next packet
//! with the same rule ([`still_allowed`]). So a flush that fails part-way,
//! or an entry re-created behind it by a packet that still read the old
//! slot, costs a lookup, not enforcement. [`flush`] says what it could not
//! do as a [`FlushOutcome`], for `reload` to report.
#![warn(clippy::arithmetic_side_effects)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, IterableMap, Map, MapData, MapError};
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_INITIATOR_A, CT_F_UNENFORCED, CtKey, CtValue, IDENTITY_F_AUDIT,
    IPPROTO_ICMP, IPPROTO_ICMPV6, SlotConfig, map_names,
};

use super::{
    batch::{self, BatchError},
    paths::Paths,
};
use crate::compile::Compiled;

fn addr(family: u8, words: &[u32; 4]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// The flow as its initiator opened it: (source, destination, protocol,
/// destination port).
pub fn opened_as(key: &CtKey, value: &CtValue) -> (IpAddr, IpAddr, u8, u16) {
    let a = addr(key.family, &key.addr_a);
    let b = addr(key.family, &key.addr_b);
    let (src, dst, dport) = if value.flags & CT_F_INITIATOR_A != 0 {
        (a, b, key.port_b)
    } else {
        (b, a, key.port_a)
    };
    let dport = if matches!(key.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) {
        0
    } else {
        dport
    };
    (src, dst, key.proto, dport)
}

fn admitted_by_rule(c: &Compiled, key: &CtKey, value: &CtValue) -> bool {
    let (src, dst, proto, dport) = opened_as(key, value);
    let s = c.identity_of(src);
    let d = c.identity_of(dst);
    c.rule_for(s.src_class, d.dst_class, proto, dport).is_some()
}

/// Whether a tracked flow would be admitted by the new policy, judged as its
/// initiator opened it (initiator → responder, protocol, responder port; 0
/// for ICMP): kept when the hook that created it is not enforced, when a
/// rule admits it, or when the responder is in audit mode.
///
/// The datapath applies the same rule (`segment-ebpf/src/conntrack.rs`,
/// `readmit`) to an entry whose generation is not the active one; the two
/// must stay the same rule.
pub fn still_allowed(c: &Compiled, config: &SlotConfig, key: &CtKey, value: &CtValue) -> bool {
    let egress = value.flags & CT_F_EGRESS != 0;
    let enforced = if egress {
        config.enforce_egress != 0
    } else {
        config.enforce_ingress != 0
    };
    if !enforced {
        return true;
    }
    if admitted_by_rule(c, key, value) {
        return true;
    }
    let (_, dst, _, _) = opened_as(key, value);
    c.identity_of(dst).flags & IDENTITY_F_AUDIT != 0
}

/// What the flush did, and what it could not do.
#[derive(Debug, Default, Clone)]
pub struct FlushOutcome {
    pub scanned: usize,
    pub removed: usize,
    /// Audited flows that a rule now allows.
    pub promoted: usize,
    /// What failed. The policy is in force all the same, and the datapath
    /// re-judges every entry the flush did not reach at its next packet.
    pub failed: Vec<FlushFailure>,
}

impl FlushOutcome {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// One thing the flush could not do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushFailure {
    #[error("opening the pinned conntrack map {map}")]
    Open {
        map: &'static str,
        #[source]
        error: Arc<MapError>,
    },
    #[error("reading a conntrack entry")]
    Read(#[source] Arc<MapError>),
    #[error("removing the flow {flow}, which the new policy forbids")]
    Remove {
        flow: String,
        #[source]
        error: Arc<MapError>,
    },
    #[error("remembering the revoked flow {flow}, so that egress pick-up cannot bring it back")]
    Revoke {
        flow: String,
        #[source]
        error: Arc<MapError>,
    },
    #[error("clearing the audit mark of the flow {flow}, which a rule now allows")]
    Promote {
        flow: String,
        #[source]
        error: Arc<MapError>,
    },
}

/// For `reload`'s answer: empty when the flush was complete, else what
/// failed (the policy is in force either way).
pub fn summary(failed: &[FlushFailure]) -> String {
    match failed.first() {
        None => String::new(),
        Some(first) => format!(
            "; the conntrack flush was incomplete ({} failure{}, first: {:#}): those flows are re-judged by the datapath at their next packet",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            anyhow::Error::new(first.clone())
        ),
    }
}

fn describe_flow(key: &CtKey, value: &CtValue) -> String {
    let (src, dst, proto, dport) = opened_as(key, value);
    format!("{src} -> {dst} proto {proto} port {dport}")
}

/// The entry was gone already (expired, evicted, or removed by the
/// datapath's own re-judging): nothing left to do, not a failure.
fn vanished(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn open_conntrack(
    paths: &Paths,
    name: &str,
) -> Result<BpfHashMap<MapData, CtKey, CtValue>, MapError> {
    let data = MapData::from_pin(paths.map(name))?;
    BpfHashMap::try_from(Map::from_map_data(data)?)
}

/// Removes the tracked flows the new policy does not admit, from both the
/// confirmed and the unconfirmed table. Never fails as a whole: what went
/// wrong is in [`FlushOutcome::failed`].
pub fn flush(paths: &Paths, c: &Compiled, config: &SlotConfig) -> FlushOutcome {
    let mut out = FlushOutcome::default();
    let mut revoked = Vec::new();
    for map in [map_names::CONNTRACK, map_names::CONNTRACK_PENDING] {
        flush_table(paths, map, c, config, &mut out, &mut revoked);
    }
    remember_revoked(paths, &revoked, &mut out);
    out
}

/// Marks removed flows as revoked (`SEG_CTGONE`), as the datapath does for
/// the flows its own re-judge removes: the revoked connection's next
/// segments from this host must not re-create it by egress pick-up.
fn remember_revoked(paths: &Paths, revoked: &[(CtKey, CtValue)], out: &mut FlushOutcome) {
    if revoked.is_empty() {
        return;
    }
    let mut gone: BpfHashMap<MapData, CtKey, u64> =
        match MapData::from_pin(paths.map(map_names::CONNTRACK_REVOKED))
            .and_then(|d| Map::from_map_data(d).and_then(BpfHashMap::try_from))
        {
            Ok(m) => m,
            Err(e) => {
                out.failed.push(FlushFailure::Open {
                    map: map_names::CONNTRACK_REVOKED,
                    error: Arc::new(e),
                });
                return;
            }
        };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own. CLOCK_MONOTONIC
    // is the clock the datapath's timestamps use.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    let keys: Vec<CtKey> = revoked.iter().map(|(k, _)| *k).collect();
    let stamps = vec![now; keys.len()];
    let fd = IterableMap::map(&gone).fd().as_fd();
    let (failed, unbatched) = batch::past_failures(keys.len(), |from| {
        batch::update(fd, &keys[from..], &stamps[from..])
    });
    for (at, error) in failed {
        let (k, v) = &revoked[at];
        out.failed.push(FlushFailure::Revoke {
            flow: describe_flow(k, v),
            error: Arc::new(batch_error("bpf_map_update_batch", error)),
        });
    }
    for (k, v) in &revoked[unbatched.unwrap_or(keys.len())..] {
        if let Err(e) = gone.insert(k, now, 0) {
            out.failed.push(FlushFailure::Revoke {
                flow: describe_flow(k, v),
                error: Arc::new(e),
            });
        }
    }
}

fn batch_error(call: &'static str, io_error: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

fn flush_table(
    paths: &Paths,
    map: &'static str,
    c: &Compiled,
    config: &SlotConfig,
    out: &mut FlushOutcome,
    revoked: &mut Vec<(CtKey, CtValue)>,
) {
    let mut ct = match open_conntrack(paths, map) {
        Ok(ct) => ct,
        Err(e) => {
            out.failed.push(FlushFailure::Open {
                map,
                error: Arc::new(e),
            });
            return;
        }
    };
    let mut stale = Vec::new();
    let mut now_allowed = Vec::new();
    for (k, v) in scan(&ct, out) {
        out.scanned = out.scanned.saturating_add(1);
        if !still_allowed(c, config, &k, &v) {
            stale.push((k, v));
        } else if v.flags & CT_F_AUDIT != 0 && admitted_by_rule(c, &k, &v) {
            now_allowed.push((k, v));
        }
    }
    remove(&mut ct, stale, out, revoked);
    // Flows audit mode let through that a rule now allows stop counting as
    // would-drop.
    const BPF_EXIST: u64 = 2;
    for (k, mut v) in now_allowed {
        v.flags &= !CT_F_AUDIT;
        match ct.insert(k, v, BPF_EXIST) {
            Ok(()) => out.promoted = out.promoted.saturating_add(1),
            Err(e) if vanished(&e) => {}
            Err(e) => out.failed.push(FlushFailure::Promote {
                flow: describe_flow(&k, &v),
                error: Arc::new(e),
            }),
        }
    }
}

type Conntrack = BpfHashMap<MapData, CtKey, CtValue>;

/// Every entry of a conntrack table: a few thousand per call, else (a
/// kernel without batch lookups) by iteration, two calls per entry.
fn scan(ct: &Conntrack, out: &mut FlushOutcome) -> Vec<(CtKey, CtValue)> {
    match batch::lookup_all(IterableMap::map(ct).fd().as_fd()) {
        Ok(all) => return all,
        Err(BatchError::Unsupported) => {}
        // Whatever the batch read before failing is read again below.
        Err(e @ BatchError::Failed { .. }) => {
            log::debug!("conntrack batch lookup failed ({e}); iterating instead")
        }
    }
    let mut all = Vec::new();
    for kv in ct.iter() {
        match kv {
            Ok(kv) => all.push(kv),
            // An entry can vanish (LRU eviction) while we walk: skip it.
            Err(e) if vanished(&e) => continue,
            Err(e) => out.failed.push(FlushFailure::Read(Arc::new(e))),
        }
    }
    all
}

/// Removes `stale` (in batches; a flow gone already is skipped), adding
/// what was removed to `revoked`.
fn remove(
    ct: &mut Conntrack,
    stale: Vec<(CtKey, CtValue)>,
    out: &mut FlushOutcome,
    revoked: &mut Vec<(CtKey, CtValue)>,
) {
    let before = revoked.len();
    let keys: Vec<CtKey> = stale.iter().map(|(k, _)| *k).collect();
    let (failed, unbatched) = batch::past_failures(keys.len(), |from| {
        batch::delete(IterableMap::map(&*ct).fd().as_fd(), &keys[from..])
    });
    let batched = unbatched.unwrap_or(keys.len());
    let mut failed = failed.into_iter().peekable();
    for (i, flow) in stale[..batched].iter().enumerate() {
        match failed.next_if(|(at, _)| *at == i) {
            None => revoked.push(*flow),
            // Gone already (expired, evicted, re-judged by the datapath).
            Some((_, error)) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Some((_, error)) => out.failed.push(FlushFailure::Remove {
                flow: describe_flow(&flow.0, &flow.1),
                error: Arc::new(batch_error("bpf_map_delete_batch", error)),
            }),
        }
    }
    for (k, v) in &stale[batched..] {
        match ct.remove(k) {
            Ok(()) => revoked.push((*k, *v)),
            Err(e) if vanished(&e) => {}
            Err(e) => out.failed.push(FlushFailure::Remove {
                flow: describe_flow(k, v),
                error: Arc::new(e),
            }),
        }
    }
    out.removed = out
        .removed
        .saturating_add(revoked.len().saturating_sub(before));
}

/// Flags that say how a flow was admitted, for logs.
pub fn describe(flags: u32) -> &'static str {
    if flags & CT_F_UNENFORCED != 0 {
        "unenforced hook"
    } else if flags & CT_F_AUDIT != 0 {
        "audit"
    } else {
        "rule"
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // fixed-size test data
mod tests {
    use super::*;
    use crate::{compile::compile, policy};

    fn key_value(
        src: &str,
        sport: u16,
        dst: &str,
        dport: u16,
        proto: u8,
        flags: u32,
    ) -> (CtKey, CtValue) {
        let words = |a: IpAddr| -> [u32; 4] {
            match a {
                IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
                IpAddr::V6(v) => {
                    let o = v.octets();
                    std::array::from_fn(|i| {
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                    })
                }
            }
        };
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let family = if s.is_ipv4() { 4 } else { 6 };
        let (sa, da) = ((words(s), sport), (words(d), dport));
        let (a, b, init_a) = if sa <= da {
            (sa, da, true)
        } else {
            (da, sa, false)
        };
        let key = CtKey {
            addr_a: a.0,
            addr_b: b.0,
            port_a: a.1,
            port_b: b.1,
            proto,
            family,
            _pad: [0; 2],
        };
        let value = CtValue {
            flags: flags | if init_a { CT_F_INITIATOR_A } else { 0 },
            ..CtValue::default()
        };
        (key, value)
    }

    fn cfg(egress: bool) -> SlotConfig {
        SlotConfig {
            enforce_ingress: 1,
            enforce_egress: u32::from(egress),
            ..SlotConfig::default()
        }
    }

    #[test]
    fn flows_follow_the_new_policy() {
        let p = policy::parse(
            "p.yaml",
            "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.0/24, \"fd00::/64\"]\nacls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432]\n    proto: tcp\n",
        )
        .unwrap();
        let c = compile(&p).unwrap();
        // web → db:5432, whichever endpoint sorts first.
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 5432, 6, 0);
        assert!(still_allowed(&c, &cfg(false), &k, &v));
        let (k, v) = key_value("10.0.1.9", 40000, "10.0.0.5", 5432, 6, 0);
        assert!(
            !still_allowed(&c, &cfg(false), &k, &v),
            "db → web is not allowed"
        );
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 22, 6, 0);
        assert!(!still_allowed(&c, &cfg(false), &k, &v));
        // Outgoing flows tracked while egress was not enforced stay while it
        // still is not, and follow the policy once it is.
        let (k, v) = key_value(
            "10.0.1.9",
            40000,
            "192.0.2.1",
            443,
            6,
            CT_F_EGRESS | CT_F_UNENFORCED,
        );
        assert!(still_allowed(&c, &cfg(false), &k, &v));
        assert!(!still_allowed(&c, &cfg(true), &k, &v));
        // ICMP echo: the port fields hold identifiers, not ports.
        let (k, v) = key_value("10.0.0.5", 77, "10.0.1.9", 0, IPPROTO_ICMP, 0);
        assert_eq!(opened_as(&k, &v).3, 0);
    }

    #[test]
    fn an_incomplete_flush_is_reported_with_its_first_failure() {
        assert_eq!(summary(&[]), "");
        let e = |errno| {
            Arc::new(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_delete_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            }))
        };
        assert!(
            vanished(&e(libc::ENOENT)),
            "an entry gone already is not a failure"
        );
        assert!(!vanished(&e(libc::EPERM)));
        let failed = vec![
            FlushFailure::Remove {
                flow: "10.0.0.5 -> 10.0.1.9 proto 6 port 5432".into(),
                error: e(libc::EPERM),
            },
            FlushFailure::Read(e(libc::EINVAL)),
        ];
        let text = summary(&failed);
        assert!(text.contains("2 failures"), "{text}");
        assert!(text.contains("10.0.0.5 -> 10.0.1.9"), "{text}");
        assert!(text.contains("re-judged by the datapath"), "{text}");
    }

    #[test]
    fn audit_destinations_keep_their_flows() {
        let p = policy::parse(
            "p.yaml",
            "mode: audit\ntags:\n  db: [10.0.1.0/24]\nacls: []\n",
        )
        .unwrap();
        let c = compile(&p).unwrap();
        let (k, v) = key_value("10.0.0.5", 40000, "10.0.1.9", 22, 6, CT_F_AUDIT);
        assert!(still_allowed(&c, &cfg(false), &k, &v));
    }
}

//! Connection tracking: which flows the policy admitted, so that their
//! packets in both directions pass without being judged again.
//!
//! One entry per flow, keyed by the canonical (sorted) pair of endpoints, so
//! a reply finds its flow with a single lookup. Only openers create entries:
//! a TCP SYN without ACK, the first UDP/SCTP/other packet, an ICMP echo
//! request. A stray ACK never does.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_FIN_A, CT_F_FIN_B, CT_F_INITIATOR_A, CT_F_REPLIED, CT_F_RST,
    CT_REFRESH_NS, CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_ESTABLISHED_NS,
    CT_TIMEOUT_TCP_SYN_NS, CT_TIMEOUT_UDP_NS, CT_TIMEOUT_UDP_REPLIED_NS, CtKey, CtValue,
    FRAG_TIMEOUT_NS, FragKey, FragValue, HOOK_EGRESS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::{
    maps::{CONNTRACK, FRAGMENTS},
    parse::{Frag, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Monotonic time, coarse (jiffy resolution): timeouts are seconds long and
/// the coarse clock costs a fraction of the precise one on every packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `(src, sport) < (dst, dport)` in an arbitrary but fixed total order.
#[inline(always)]
fn src_is_a(src: &[u32; 4], sport: u16, dst: &[u32; 4], dport: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if src[i] != dst[i] {
            return src[i] < dst[i];
        }
        i += 1;
    }
    sport <= dport
}

/// The flow key and whether the packet's source is endpoint `a`.
#[inline(always)]
pub fn flow_key(
    family: u8,
    proto: u8,
    src: &[u32; 4],
    sport: u16,
    dst: &[u32; 4],
    dport: u16,
) -> (CtKey, bool) {
    let from_a = src_is_a(src, sport, dst, dport);
    let key = if from_a {
        CtKey {
            addr_a: *src,
            addr_b: *dst,
            port_a: sport,
            port_b: dport,
            proto,
            family,
            _pad: [0; 2],
        }
    } else {
        CtKey {
            addr_a: *dst,
            addr_b: *src,
            port_a: dport,
            port_b: sport,
            proto,
            family,
            _pad: [0; 2],
        }
    };
    (key, from_a)
}

/// Whether this packet may open a flow.
#[inline(always)]
pub fn is_opener(pkt: &Packet) -> bool {
    match pkt.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN,
        IPPROTO_ICMP => pkt.icmp_type == 8,
        IPPROTO_ICMPV6 => pkt.icmp_type == 128,
        _ => true,
    }
}

/// A TCP flow reset, or finished in both directions.
#[inline(always)]
fn closing(flags: u32) -> bool {
    flags & CT_F_RST != 0 || flags & (CT_F_FIN_A | CT_F_FIN_B) == CT_F_FIN_A | CT_F_FIN_B
}

#[inline(always)]
fn timeout_ns(proto: u8, flags: u32) -> u64 {
    match proto {
        IPPROTO_TCP => {
            if closing(flags) {
                CT_TIMEOUT_TCP_CLOSING_NS
            } else if flags & CT_F_REPLIED == 0 {
                CT_TIMEOUT_TCP_SYN_NS
            } else {
                CT_TIMEOUT_TCP_ESTABLISHED_NS
            }
        }
        IPPROTO_UDP => {
            if flags & CT_F_REPLIED == 0 {
                CT_TIMEOUT_UDP_NS
            } else {
                CT_TIMEOUT_UDP_REPLIED_NS
            }
        }
        _ => CT_TIMEOUT_OTHER_NS,
    }
}

/// A tracked flow the packet belongs to.
pub struct Tracked {
    /// Counter identities oriented as the packet travels.
    pub src_id: u32,
    pub dst_id: u32,
    /// The flow was let through by audit mode, this packet comes from its
    /// initiator and this is the hook that judged the flow: the policy would
    /// drop it here, so it counts as would-drop. (A routed packet also meets
    /// the other hook; counting it there again would count it twice.)
    pub audited: bool,
}

/// Whether the packet can only be judged by the policy: a TCP SYN (or an
/// ICMP echo request) opens a flow, and conntrack would pass it only as a
/// retransmission from a flow's initiator, which the policy admits just the
/// same. Skipping the lookup spares a SYN flood one hash lookup per packet.
#[inline(always)]
pub fn needs_no_lookup(pkt: &Packet) -> bool {
    // Any other protocol's "opener" is just its first packet, which may as
    // well be a reply: those need the lookup.
    matches!(pkt.proto, IPPROTO_TCP | IPPROTO_ICMP | IPPROTO_ICMPV6) && is_opener(pkt)
}

/// Looks the packet's flow up and, if the packet belongs to it, updates the
/// flow's state. Returns `None` when the packet must be judged by the policy:
/// no flow, an expired flow, or a packet that could not be part of the flow
/// (a SYN from the responder, a new SYN on a closed connection).
#[inline(always)]
pub fn track(pkt: &Packet, now: u64, hook: u32, dry: bool) -> Option<Tracked> {
    if needs_no_lookup(pkt) {
        return None;
    }
    let (key, from_a) = flow_key(
        pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
    );
    let ct = CONNTRACK.get_ptr_mut(&key)?;
    // SAFETY: the pointer comes from a successful lookup and stays valid for
    // the rest of this program run.
    let ct = unsafe { &mut *ct };
    let flags = ct.flags;
    if now.wrapping_sub(ct.last_seen_ns) > timeout_ns(pkt.proto, flags) {
        if !dry {
            let _ = CONNTRACK.remove(&key);
        }
        return None;
    }
    let initiator_is_a = flags & CT_F_INITIATOR_A != 0;
    let from_initiator = initiator_is_a == from_a;
    let mut new_flags = flags;
    if pkt.proto == IPPROTO_TCP {
        let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if syn_only && (!from_initiator || closing(flags)) {
            return None;
        }
        if pkt.tcp_flags & TCP_RST != 0 {
            new_flags |= CT_F_RST;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            new_flags |= if from_a { CT_F_FIN_A } else { CT_F_FIN_B };
        }
    } else if !from_initiator && (pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6) {
        // Only an echo reply answers an echo request.
        if !matches!(
            (pkt.proto, pkt.icmp_type),
            (IPPROTO_ICMP, 0) | (IPPROTO_ICMPV6, 129)
        ) {
            return None;
        }
    }
    if !from_initiator {
        new_flags |= CT_F_REPLIED;
    }
    if dry {
        // A dry run only looks.
    } else if new_flags != flags {
        ct.flags = new_flags;
        ct.last_seen_ns = now;
    } else if now.wrapping_sub(ct.last_seen_ns) > CT_REFRESH_NS {
        ct.last_seen_ns = now;
    }
    let (src_id, dst_id) = if from_initiator {
        (ct.src_id, ct.dst_id)
    } else {
        (ct.dst_id, ct.src_id)
    };
    Some(Tracked {
        src_id,
        dst_id,
        audited: from_initiator
            && flags & CT_F_AUDIT != 0
            && (flags & CT_F_EGRESS != 0) == (hook == HOOK_EGRESS),
    })
}

/// Whether the flow an ICMP error quotes is tracked. The quoted packet went
/// the other way, so its source is our destination: the key is the same.
#[inline(always)]
pub fn is_related(family: u8, q: &crate::parse::Quoted, now: u64) -> bool {
    let (key, _) = flow_key(family, q.proto, &q.src, q.sport, &q.dst, q.dport);
    match CONNTRACK.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup.
        Some(ct) => unsafe {
            now.wrapping_sub((*ct).last_seen_ns) <= timeout_ns(q.proto, (*ct).flags)
        },
        None => false,
    }
}

/// Whether an admitted opener that skipped the lookup (see
/// [`needs_no_lookup`]) belongs to a live flow its sender started: a
/// retransmitted SYN, or a routed SYN meeting its second hook. That flow's
/// entry stays as it is — overwriting it would reset its state and record
/// the wrong hook, and a flow admitted on an enforced hook would then look
/// unenforced to the flush after a policy change. Only admitted openers pay
/// for this lookup; a flood of denied SYNs does not.
#[inline(always)]
fn keeps_flow(key: &CtKey, from_a: bool, proto: u8, now: u64) -> bool {
    let Some(ct) = CONNTRACK.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: pointer from a successful lookup, valid for this program run.
    let ct = unsafe { &mut *ct };
    let flags = ct.flags;
    let keep = (flags & CT_F_INITIATOR_A != 0) == from_a
        && !(proto == IPPROTO_TCP && closing(flags))
        && now.wrapping_sub(ct.last_seen_ns) <= timeout_ns(proto, flags);
    if keep {
        ct.last_seen_ns = now;
    }
    keep
}

/// Records a flow the policy admitted (or that passed unjudged/audited).
#[inline(always)]
pub fn open(pkt: &Packet, now: u64, src_id: u32, dst_id: u32, rule: u32, extra_flags: u32) {
    let (key, from_a) = flow_key(
        pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
    );
    if needs_no_lookup(pkt) && keeps_flow(&key, from_a, pkt.proto, now) {
        return;
    }
    let value = CtValue {
        last_seen_ns: now,
        created_ns: now,
        src_id,
        dst_id,
        flags: if from_a { CT_F_INITIATOR_A } else { 0 } | extra_flags,
        rule,
    };
    // A full LRU evicts its oldest entry; a failure here only means the
    // replies will be judged by the policy, never that anything opens up.
    let _ = CONNTRACK.insert(&key, &value, 0);
}

#[inline(always)]
fn frag_key(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// Remembers that the first fragment of a datagram passed, so that its later
/// fragments (which carry no ports) pass too.
#[inline(always)]
pub fn remember_first_fragment(pkt: &Packet, now: u64, reason: u32, src_id: u32, dst_id: u32) {
    if pkt.frag != Frag::First {
        return;
    }
    let value = FragValue {
        seen_ns: now,
        reason,
        src_id,
        dst_id,
        _pad: 0,
    };
    let _ = FRAGMENTS.insert(&frag_key(pkt), &value, 0);
}

/// The verdict of a later fragment's first fragment, if it passed recently.
#[inline(always)]
pub fn first_fragment(pkt: &Packet, now: u64) -> Option<FragValue> {
    let v = FRAGMENTS.get_ptr(&frag_key(pkt))?;
    // SAFETY: pointer from a successful lookup; copied out at once.
    let v = unsafe { *v };
    if now.wrapping_sub(v.seen_ns) > FRAG_TIMEOUT_NS {
        return None;
    }
    Some(v)
}

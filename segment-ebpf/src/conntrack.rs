//! Connection tracking: which flows the policy admitted, so that their
//! packets in both directions pass without being judged again.
//!
//! One entry per flow, keyed by the canonical (sorted) pair of endpoints, so
//! a reply finds its flow with a single lookup. Only openers create entries:
//! a TCP SYN without ACK, the first UDP/SCTP/other packet, an ICMP echo
//! request. A stray ACK never does.
//!
//! A bitmap in front of both tables ([`crate::ct_filter`]) spares a packet
//! of an untracked flow both lookups when its bit is clear.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_FIN_A, CT_F_FIN_B, CT_F_INITIATOR_A, CT_F_MIDSTREAM,
    CT_F_REPLIED, CT_F_RST, CT_F_SYNACK_OK, CT_REFRESH_NS, CT_SEEN_INITIATOR, CT_SEEN_RESPONDER,
    CT_TIMEOUT_OTHER_NS, CT_TIMEOUT_TCP_CLOSING_NS, CT_TIMEOUT_TCP_ESTABLISHED_NS,
    CT_TIMEOUT_TCP_SYN_NS, CT_TIMEOUT_UDP_NS, CT_TIMEOUT_UDP_REPLIED_NS, CT_WSCALE_UNKNOWN, CtKey,
    CtValue, FRAG_TIMEOUT_NS, FragKey, FragValue, HOOK_EGRESS, HOOK_INGRESS, IDENTITY_F_AUDIT,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Identity, SlotConfig,
};

use crate::{
    ct_filter::{may_hold, note},
    maps::{CONNTRACK, CT_NEW, CT_PENDING, CT_REVOKED, FRAGMENTS},
    parse::{Cursor, Frag, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, WSCALE_NONE, is_icmp_error},
    policy::matching_rule,
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

/// Whether this packet, leaving at egress, re-creates the entry of a TCP
/// flow that is not tracked (it expired, was evicted, or predates the
/// agent): a segment without SYN and without RST from this host's side of
/// an established connection. At ingress such a packet never creates
/// state; at egress it is this host (or a flow it routes) speaking, and
/// the policy (or an unenforced egress) still decides.
///
/// Never a flow a policy change revoked: the revoked connection's own
/// segments (the server still answering a client the new policy forbids)
/// would otherwise re-create it at once, as if this host had opened it.
#[inline(always)]
pub fn picks_up(pkt: &Packet, hook: u32) -> bool {
    hook == HOOK_EGRESS
        && pkt.proto == IPPROTO_TCP
        && pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0
        && !was_revoked(pkt)
}

#[inline(always)]
fn was_revoked(pkt: &Packet) -> bool {
    let (key, _) = flow_key(
        pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
    );
    // SAFETY: a plain lookup; the value is not read.
    // Not behind the filter: only egress TCP segments that missed conntrack
    // get here (this host speaking, not a flood from outside), and the
    // tombstones the agent's flush writes stay out of its bookkeeping.
    unsafe { CT_REVOKED.get(&key).is_some() }
}

/// Options of a SYN walked looking for the window scale (Linux sends it
/// fifth, after MSS, SACK-permitted, timestamps and a NOP). Not found
/// within them, the window is taken unscaled: narrower, so a RST is
/// honoured less readily, never more.
const MAX_TCP_OPTIONS: usize = 8;
/// RFC 7323: shifts above 14 are taken as 14.
const MAX_WSCALE: u8 = 14;

/// The window scale option of a SYN or SYN-ACK, or `WSCALE_NONE`.
#[inline(always)]
pub fn syn_window_scale(c: &Cursor, pkt: &Packet) -> u8 {
    if pkt.proto != IPPROTO_TCP || pkt.tcp_flags & TCP_SYN == 0 {
        return WSCALE_NONE;
    }
    let end = pkt.tcp.off as usize + pkt.tcp.hlen as usize;
    let mut at = pkt.tcp.off as usize + 20;
    let mut i = 0;
    while i < MAX_TCP_OPTIONS {
        // Headers lie well inside the first KiB; the bound also lets the
        // verifier see the offset is small.
        if at >= end || at > 1024 {
            return WSCALE_NONE;
        }
        let Some([kind, len]) = c.bytes::<2>(at) else {
            return WSCALE_NONE;
        };
        match kind {
            0 => return WSCALE_NONE,
            1 => at += 1,
            3 => {
                if len != 3 {
                    return WSCALE_NONE;
                }
                let Some([_, shift]) = c.bytes::<2>(at + 1) else {
                    return WSCALE_NONE;
                };
                return if shift > MAX_WSCALE {
                    MAX_WSCALE
                } else {
                    shift
                };
            }
            _ => {
                if len < 2 {
                    return WSCALE_NONE;
                }
                at += len as usize;
            }
        }
        i += 1;
    }
    WSCALE_NONE
}

/// `seq` within `[end - win - 1, end + win]`, modulo 2^32.
#[inline(always)]
fn in_window(seq: u32, end: u32, win: u32) -> bool {
    let low = end.wrapping_sub(win).wrapping_sub(1);
    seq.wrapping_sub(low) <= win.wrapping_mul(2).wrapping_add(1)
}

/// The sequence number just past a segment: data, plus one for SYN and FIN.
#[inline(always)]
fn segment_end(pkt: &Packet) -> u32 {
    let mut len = pkt.tcp.payload as u32;
    if pkt.tcp_flags & TCP_SYN != 0 {
        len += 1;
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        len += 1;
    }
    pkt.tcp.seq.wrapping_add(len)
}

#[inline(always)]
fn seen_bit(side: usize) -> u8 {
    if side == 0 {
        CT_SEEN_INITIATOR
    } else {
        CT_SEEN_RESPONDER
    }
}

/// Whether a RST or FIN from `side` is plausibly in window, so that it may
/// change the flow's state. A side whose sequence space is not known yet
/// (it never sent anything else) can only close with a RST that
/// acknowledges exactly what the other side sent: the answer to a SYN
/// nobody listens for.
#[inline(always)]
fn closes_in_window(ct: &CtValue, pkt: &Packet, side: usize) -> bool {
    let other = 1 - side;
    if ct.seen & seen_bit(side) != 0 {
        return in_window(pkt.tcp.seq, ct.end[side], ct.maxwin[other]);
    }
    pkt.tcp_flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK
        && ct.seen & seen_bit(other) != 0
        && pkt.tcp.ack == ct.end[other]
}

/// Learns from a segment of `side` (not a RST): its end and window, and on
/// the responder's SYN-ACK the window scales. Writes only what moved
/// enough to matter, so the established fast path is nearly write-free.
#[inline(always)]
fn learn(ct: &mut CtValue, pkt: &Packet, side: usize) {
    let other = 1 - side;
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    if syn && side == 1 {
        // RFC 7323: scaling is on only if both SYNs carry the option; a
        // flow picked up mid-stream never saw the initiator's SYN.
        if pkt.tcp.wscale != WSCALE_NONE
            && ct.wscale[0] != CT_WSCALE_UNKNOWN
            && ct.flags & CT_F_MIDSTREAM == 0
        {
            ct.wscale[1] = pkt.tcp.wscale;
        } else {
            ct.wscale[0] = 0;
            ct.wscale[1] = 0;
        }
    }
    // Windows in SYN segments are never scaled, nor any window before the
    // responder's SYN-ACK says whether both sides scale (RFC 7323 2.2).
    let shift = if syn || ct.wscale[side] == CT_WSCALE_UNKNOWN || ct.wscale[1] == CT_WSCALE_UNKNOWN
    {
        0
    } else {
        ct.wscale[side] & 0x0f
    };
    let win = (pkt.tcp.win as u32) << shift;
    let end = segment_end(pkt);
    let bit = seen_bit(side);
    if ct.seen & bit == 0 {
        ct.end[side] = end;
        ct.maxwin[side] = win;
        ct.seen |= bit;
        return;
    }
    let ahead = end.wrapping_sub(ct.end[side]);
    if (ahead as i32) > 0 && ahead > ct.maxwin[other] / 2 {
        ct.end[side] = end;
    }
    if win > ct.maxwin[side] {
        ct.maxwin[side] = win;
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

/// Whether a packet entering at ingress on `ifindex` comes through the side
/// its direction of the flow belongs to. The entry records the interface
/// the flow was created on (I) and the hook that created it:
///
/// * created at ingress (the initiator's packets came in on I): the
///   initiator's packets must enter on I, the responder's on any other
///   interface (they are routed towards the initiator's side) — and, once
///   the initiator's packets were seen leaving by an interface O at egress
///   (the flow is routed through this host), on O only ("not I" alone
///   would let a host on a third link forge the responder's side of a
///   routed flow);
/// * created at egress (the flow left through I): the responder's packets
///   must enter on I, the initiator's on any other interface.
///
/// At egress both directions match whatever the interface: a packet there
/// was already admitted by the host (routed or sent by it). The key alone
/// is direction-free, so without this a packet forged on any link with a
/// flow's addresses and ports would pass as that flow. (A host that routes
/// a flow back out the interface it came in on has its replies judged by
/// the policy.)
#[inline(always)]
fn enters_on_its_side(ct: &CtValue, from_initiator: bool, hook: u32, ifindex: u32) -> bool {
    if hook == HOOK_EGRESS {
        return true;
    }
    let created_at_egress = ct.flags & CT_F_EGRESS != 0;
    if !from_initiator && !created_at_egress && ct.ifindex_out != 0 {
        // A responder's packet of an ingress-created flow whose way out is
        // known: through that side only (S6 amendment).
        return ct.ifindex_out == ifindex;
    }
    let must_be_creation_iface = from_initiator != created_at_egress;
    (ct.ifindex == ifindex) == must_be_creation_iface
}

/// Remembers the interface an ingress-created flow leaves by (the first
/// time its initiator's packets meet the egress hook): written once.
#[inline(always)]
fn note_way_out(ct: &mut CtValue, from_initiator: bool, hook: u32, ifindex: u32, dry: bool) {
    if !dry
        && hook == HOOK_EGRESS
        && from_initiator
        && ct.ifindex_out == 0
        && ct.flags & CT_F_EGRESS == 0
    {
        ct.ifindex_out = ifindex;
    }
}

/// The flow's entry: in the confirmed table, else in the unconfirmed one
/// (`true`). Confirmed flows are found with one lookup; only flows still
/// being set up pay for two, and untracked packets for none when the
/// filter (`ct_filter`) says the tables hold no entry for them.
#[inline(always)]
fn lookup(key: &CtKey) -> Option<(*mut CtValue, bool)> {
    if !may_hold(key) {
        return None;
    }
    if let Some(p) = CONNTRACK.get_ptr_mut(key) {
        return Some((p, false));
    }
    CT_PENDING.get_ptr_mut(key).map(|p| (p, true))
}

#[inline(always)]
fn forget(key: &CtKey, pending: bool) {
    let _ = if pending {
        CT_PENDING.remove(key)
    } else {
        CONNTRACK.remove(key)
    };
}

/// Whether this packet confirms a flow still in the unconfirmed table:
///
/// * TCP opened with a SYN: the initiator acknowledges the responder's SYN
///   (`ack` in `[end_r, end_r + maxwin_i]`) after the responder's SYN-ACK
///   acknowledged exactly the initiator's SYN (`CT_F_SYNACK_OK`). A flood
///   of SYNs and blind ACKs guesses neither sequence number;
/// * TCP picked up at egress: the responder answers, acknowledging within
///   the initiator's window;
/// * anything else: the responder answers.
#[inline(always)]
fn confirms(ct: &CtValue, pkt: &Packet, from_initiator: bool, flags: u32) -> bool {
    if pkt.proto != IPPROTO_TCP {
        return !from_initiator;
    }
    if pkt.tcp_flags & (TCP_ACK | TCP_RST | TCP_SYN) != TCP_ACK {
        return false;
    }
    if flags & CT_F_MIDSTREAM != 0 {
        let win = if ct.maxwin[0] > 65_535 {
            ct.maxwin[0]
        } else {
            65_535
        };
        return !from_initiator && in_window(pkt.tcp.ack, ct.end[0], win);
    }
    from_initiator
        && flags & CT_F_SYNACK_OK != 0
        && ct.seen & CT_SEEN_RESPONDER != 0
        && pkt.tcp.ack.wrapping_sub(ct.end[1]) <= ct.maxwin[0]
}

/// A tracked flow admitted by an earlier policy than the active one: what
/// [`readmit`] needs to re-judge it.
pub struct Stale {
    ct: *mut CtValue,
    pending: bool,
    from_initiator: bool,
}

/// What conntrack says about a packet.
pub enum Track {
    /// Part of a tracked flow: passes.
    Hit(Tracked),
    /// To be judged by the policy.
    Miss,
    /// Part of a tracked flow that an earlier policy admitted: [`readmit`]
    /// decides, once the packet's identities are known.
    Stale(Stale),
}

/// Whether the active policy (slot `slot`, settings `cfg`) still admits a
/// flow admitted by an earlier one, judged as its initiator opened it:
/// initiator address → responder address, the protocol, the responder's
/// port (0 for ICMP and ICMPv6, whose "ports" are echo identifiers), on the
/// hook that created it. It is kept when that hook is not enforced, when a
/// rule admits it, or when the responder is in audit mode; otherwise the
/// entry is removed and the packet is judged as untracked. An audit entry a
/// rule admits stops being one, enforced hook or not.
///
/// This is the rule of the agent's `datapath::flush::still_allowed`, which
/// applies it to every entry right after a switch; the datapath applies it
/// again to any entry whose generation is not the active one, so a flow the
/// flush missed (it failed, or a packet still reading the old slot
/// re-created the entry behind it) stops at its next packet. The two must
/// stay the same rule.
///
/// `src` and `dst` are the identities of the packet's source and
/// destination (the caller needs them anyway if the flow is revoked): the
/// initiator's and responder's, in the order the packet travels.
#[inline(always)]
pub fn readmit(
    pkt: &Packet,
    stale: &Stale,
    slot: u32,
    cfg: &SlotConfig,
    src: &Identity,
    dst: &Identity,
    dry: bool,
) -> bool {
    // SAFETY: the pointer comes from the lookup in `track` during this
    // program run, and nothing removed the entry since.
    let ct = unsafe { &mut *stale.ct };
    let flags = ct.flags;
    let enforced = if flags & CT_F_EGRESS != 0 {
        cfg.enforce_egress != 0
    } else {
        cfg.enforce_ingress != 0
    };
    let (initiator, responder, dport) = if stale.from_initiator {
        (src, dst, pkt.dport)
    } else {
        (dst, src, pkt.sport)
    };
    let dport = if pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6 {
        0
    } else {
        dport
    };
    let mut new_flags = flags;
    // A rule that admits the flow ends its audit mark whether or not the
    // hook is enforced (as the agent's flush does).
    let by_rule = matching_rule(
        slot,
        initiator.src_class,
        responder.dst_class,
        pkt.proto,
        dport,
    )
    .is_some();
    if by_rule {
        new_flags &= !CT_F_AUDIT;
    }
    let kept = !enforced || by_rule || responder.flags & IDENTITY_F_AUDIT != 0;
    if dry {
        return kept;
    }
    if kept {
        ct.generation = cfg.generation as u32;
        ct.flags = new_flags;
    } else {
        let (key, _) = flow_key(
            pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
        );
        forget(&key, stale.pending);
        let _ = CT_REVOKED.insert(&key, &now_ns(), 0);
    }
    kept
}

/// Looks the packet's flow up and, if the packet belongs to it, updates the
/// flow's state. Returns `None` when the packet must be judged by the policy:
/// no flow, an expired flow, a packet entering through the wrong side (see
/// [`enters_on_its_side`]), or a packet that could not be part of the flow
/// (a SYN from the responder, a new SYN on a closed connection). With
/// `generation`, a flow admitted by another generation is [`Track::Stale`].
///
/// An ICMP error is never part of a flow of its own (its "ports" are 0,
/// like those of an echo flow with identifier 0): it passes only as related
/// to the flow it quotes, under `icmp`'s conditions, or by the policy.
#[inline(always)]
pub fn track(
    pkt: &Packet,
    now: u64,
    hook: u32,
    ifindex: u32,
    dry: bool,
    generation: Option<u32>,
) -> Track {
    if needs_no_lookup(pkt) || is_icmp_error(pkt.proto, pkt.icmp_type) {
        return Track::Miss;
    }
    let (key, from_a) = flow_key(
        pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
    );
    let Some((ptr, pending)) = lookup(&key) else {
        return Track::Miss;
    };
    // SAFETY: the pointer comes from a successful lookup and stays valid for
    // the rest of this program run.
    let ct = unsafe { &mut *ptr };
    let flags = ct.flags;
    if now.wrapping_sub(ct.last_seen_ns) > timeout_ns(pkt.proto, flags) {
        if !dry {
            forget(&key, pending);
        }
        return Track::Miss;
    }
    let initiator_is_a = flags & CT_F_INITIATOR_A != 0;
    let from_initiator = initiator_is_a == from_a;
    if !enters_on_its_side(ct, from_initiator, hook, ifindex) {
        return Track::Miss;
    }
    if let Some(active) = generation
        && ct.generation != active
    {
        return Track::Stale(Stale {
            ct: ptr,
            pending,
            from_initiator,
        });
    }
    note_way_out(ct, from_initiator, hook, ifindex, dry);
    let mut new_flags = flags;
    if pkt.proto == IPPROTO_TCP {
        let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if syn_only && (!from_initiator || closing(flags)) {
            return Track::Miss;
        }
        let side = if from_initiator { 0 } else { 1 };
        let rst = pkt.tcp_flags & TCP_RST != 0;
        let fin = pkt.tcp_flags & TCP_FIN != 0;
        if (rst || fin) && !closes_in_window(ct, pkt, side) {
            // A blind RST/FIN: it is part of the flow (it passes) but
            // changes nothing — not its state, not its timer.
            return hit(ct, from_initiator, flags, hook);
        }
        if rst {
            new_flags |= CT_F_RST;
        } else {
            if pending
                && side == 1
                && pkt.tcp_flags & TCP_SYN != 0
                && pkt.tcp_flags & TCP_ACK != 0
                && ct.seen & CT_SEEN_RESPONDER == 0
                && pkt.tcp.ack == ct.end[0]
            {
                new_flags |= CT_F_SYNACK_OK;
            }
            if !dry {
                learn(ct, pkt, side);
            }
        }
        if fin {
            new_flags |= if from_a { CT_F_FIN_A } else { CT_F_FIN_B };
        }
    } else if !from_initiator && (pkt.proto == IPPROTO_ICMP || pkt.proto == IPPROTO_ICMPV6) {
        // Only an echo reply answers an echo request.
        if !matches!(
            (pkt.proto, pkt.icmp_type),
            (IPPROTO_ICMP, 0) | (IPPROTO_ICMPV6, 129)
        ) {
            return Track::Miss;
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
    let result = hit(ct, from_initiator, flags, hook);
    if pending && !dry && confirms(ct, pkt, from_initiator, new_flags) {
        // Into the confirmed table (which may evict its least recently
        // used confirmed flow, never because of unconfirmed ones). If that
        // fails the flow simply stays unconfirmed.
        ct.last_seen_ns = now;
        if CONNTRACK.insert(&key, ct, 0).is_ok() {
            // Its bit is set already (from its creation), but a rebuild
            // may have cleared the inactive bitmap since and walked
            // `SEG_CT_V2` before the move: set it again.
            note(&key);
            let _ = CT_PENDING.remove(&key);
        }
    }
    result
}

/// A packet of a tracked flow, oriented as it travels.
#[inline(always)]
fn hit(ct: &CtValue, from_initiator: bool, flags: u32, hook: u32) -> Track {
    let (src_id, dst_id) = if from_initiator {
        (ct.src_id, ct.dst_id)
    } else {
        (ct.dst_id, ct.src_id)
    };
    Track::Hit(Tracked {
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
    match lookup(&key) {
        // SAFETY: pointer from a successful lookup.
        Some((ct, _)) => unsafe {
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
fn keeps_flow(key: &CtKey, from_a: bool, proto: u8, now: u64, hook: u32, ifindex: u32) -> bool {
    let Some((ct, _)) = lookup(key) else {
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
        note_way_out(ct, true, hook, ifindex, false);
    }
    keep
}

/// `bpf_map_update_elem` flag: only create, never replace.
const BPF_NOEXIST: u64 = 1;

/// Records a flow the policy of `generation` admitted (or that passed
/// unjudged/audited), as created on `ifindex` by the hook named in
/// `extra_flags`.
#[inline(always)]
pub fn open(
    pkt: &Packet,
    now: u64,
    ifindex: u32,
    generation: u32,
    src_id: u32,
    dst_id: u32,
    rule: u32,
    extra_flags: u32,
) {
    let (key, from_a) = flow_key(
        pkt.family, pkt.proto, &pkt.src, pkt.sport, &pkt.dst, pkt.dport,
    );
    let skipped_lookup = needs_no_lookup(pkt);
    let hook = if extra_flags & CT_F_EGRESS != 0 {
        HOOK_EGRESS
    } else {
        HOOK_INGRESS
    };
    if skipped_lookup && keeps_flow(&key, from_a, pkt.proto, now, hook, ifindex) {
        return;
    }
    let tcp = pkt.proto == IPPROTO_TCP;
    let syn = tcp && pkt.tcp_flags & TCP_SYN != 0;
    // The initiator's sequence space, from its first segment. A flow
    // picked up in the middle (at egress, no SYN) has unknown window
    // scales: taken as none.
    let (end, maxwin, wscale, seen) = if tcp {
        (
            segment_end(pkt),
            pkt.tcp.win as u32,
            if syn {
                [pkt.tcp.wscale, CT_WSCALE_UNKNOWN]
            } else {
                [0, 0]
            },
            CT_SEEN_INITIATOR,
        )
    } else {
        (0, 0, [CT_WSCALE_UNKNOWN; 2], 0)
    };
    let midstream = if tcp && !syn { CT_F_MIDSTREAM } else { 0 };
    let Some(value) = CT_NEW.get_ptr_mut(0) else {
        // Cannot happen (a one-entry per-CPU array); if it did, the flow
        // is simply not tracked and its replies are judged by the policy.
        return;
    };
    // SAFETY: this CPU's scratch entry, from a successful lookup; a program
    // run is not preempted on its CPU, so nothing else uses it meanwhile.
    let value = unsafe { &mut *value };
    value.last_seen_ns = now;
    value.created_ns = now;
    value.src_id = src_id;
    value.dst_id = dst_id;
    value.flags = if from_a { CT_F_INITIATOR_A } else { 0 } | extra_flags | midstream;
    value.rule = rule;
    value.ifindex = ifindex;
    value.ifindex_out = 0;
    value.generation = generation;
    value._pad = 0;
    value.end = [end, 0];
    value.maxwin = [maxwin, 0];
    value.wscale = wscale;
    value.seen = seen;
    value._pad2 = [0; 5];
    // A datagram opener went through `track` first, which removed an
    // expired entry: an entry still there is live and the packet did not
    // match it (it entered through the wrong side). It passed by policy,
    // but must not take the flow over — re-anchoring the entry to the side
    // a forger chose.
    let flags = if skipped_lookup { 0 } else { BPF_NOEXIST };
    let held = may_hold(&key);
    if !held {
        // No entry in any table: nothing to replace or to check.
    } else if skipped_lookup {
        // A new SYN (or echo request) the policy admitted that is not part
        // of a live flow of its sender: the flow it replaces (closed, or
        // another initiator's) goes, so the new one is not shadowed by it.
        let _ = CONNTRACK.remove(&key);
    } else if CONNTRACK.get_ptr(&key).is_some() {
        // Live and confirmed, and the packet did not match it (see above).
        return;
    }
    // Every new flow starts unconfirmed. A full LRU evicts its oldest
    // entry — another unconfirmed flow, never a confirmed one; a failure
    // here only means the replies will be judged by the policy, never that
    // anything opens up.
    if CT_PENDING.insert(&key, value, flags).is_ok() {
        note(&key);
    }
}

#[inline(always)]
fn frag_key(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.frag_proto,
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

//! The two kinds of ICMP that pass without a rule lookup, and what a packet
//! must look like to be one of them. Both are doors through the policy, so
//! each condition below closes a way to forge one.
//!
//! * An ICMP error passes as related to the flow it quotes only if it could
//!   have been caused by that flow's packet: not fragmented, a code its type
//!   has, no longer than a router may make it, and addressed to the quoted
//!   packet's source (Linux conntrack's rule; the outer source may be any
//!   router on the path, so it is not checked). The quote itself is parsed
//!   in `parse`, and conntrack then checks the quoted flow is live.
//! * Neighbour discovery (RFC 4861) and MLD (RFC 2710/3810) pass whatever
//!   the policy says only in the form the link needs: never fragmented
//!   (RFC 6980), code 0, the hop limit that proves it was not routed (255,
//!   or 1 for MLD), a plausible size, and the source address scope each
//!   message type requires.

use segment_common::{IPPROTO_ICMP, IPPROTO_ICMPV6};

use crate::parse::{Frag, Packet};

/// RFC 1812 4.3.2.3: an ICMPv4 error holds at most 576 bytes of IP.
const MAX_ICMP_ERROR_V4: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error must not exceed the minimum MTU.
const MAX_ICMP_ERROR_V6: usize = 1280;
/// Neighbour discovery and MLD messages are never larger than this either.
const MAX_NEIGHBOR_PACKET: usize = 1280;

/// Whether an ICMP error of this type, with `code`, in an IP packet of
/// `ip_len` bytes (header included), may stand for the packet it quotes.
#[inline(always)]
pub fn error_may_quote(pkt: &Packet, code: u8, ip_len: usize) -> bool {
    // ICMPv6 inside IPv4 (or the reverse) is nobody's error message.
    let (icmp, max) = if pkt.family == 4 {
        (IPPROTO_ICMP, MAX_ICMP_ERROR_V4)
    } else {
        (IPPROTO_ICMPV6, MAX_ICMP_ERROR_V6)
    };
    pkt.proto == icmp
        && pkt.frag == Frag::None
        && ip_len <= max
        && error_code_fits(pkt.proto, pkt.icmp_type, code)
}

/// The codes each error type defines (RFC 792/1812, RFC 4443).
#[inline(always)]
fn error_code_fits(proto: u8, icmp_type: u8, code: u8) -> bool {
    match (proto, icmp_type) {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        (IPPROTO_ICMP, 3) => code <= 15,
        (IPPROTO_ICMP, 4) => code == 0,
        (IPPROTO_ICMP, 11) => code <= 1,
        (IPPROTO_ICMP, 12) => code <= 2,
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        (IPPROTO_ICMPV6, 1) => code <= 7,
        (IPPROTO_ICMPV6, 2) => code == 0,
        (IPPROTO_ICMPV6, 3) => code <= 1,
        (IPPROTO_ICMPV6, 4) => code <= 3,
        _ => false,
    }
}

const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const ROUTER_SOLICIT: u8 = 133;
const ROUTER_ADVERT: u8 = 134;
const NEIGHBOR_SOLICIT: u8 = 135;
const NEIGHBOR_ADVERT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;

/// What the neighbour discovery checks need besides the parsed packet
/// (whose `src`/`dst` words are read in place: the BPF stack has no room
/// for copies of the addresses).
#[derive(Clone, Copy)]
pub struct Neighbor {
    pub code: u8,
    pub hop_limit: u8,
    /// A fragment header anywhere in the chain.
    pub fragment_header: bool,
    /// Bytes of the ICMPv6 message (payload length minus extension headers).
    pub msg_len: u16,
    /// Bytes of the whole IPv6 packet.
    pub total_len: u32,
}

/// `None` if the message is not neighbour discovery or MLD at all;
/// otherwise whether it is the kind that passes whatever the policy says.
#[inline(always)]
pub fn neighbor_ok(pkt: &Packet, m: Neighbor) -> Option<bool> {
    // Hop limit and the smallest message of each type (RFC 4861 4.1-4.5,
    // RFC 2710 3, RFC 3810 5.2).
    let (hop_limit, min_len) = match pkt.icmp_type {
        ROUTER_SOLICIT => (255, 8),
        ROUTER_ADVERT => (255, 16),
        NEIGHBOR_SOLICIT | NEIGHBOR_ADVERT => (255, 24),
        REDIRECT => (255, 40),
        MLD_QUERY | MLD_REPORT | MLD_DONE => (1, 24),
        MLD2_REPORT => (1, 8),
        _ => return None,
    };
    let ok = !m.fragment_header
        && m.code == 0
        && m.hop_limit == hop_limit
        && m.msg_len >= min_len
        && m.total_len as usize <= MAX_NEIGHBOR_PACKET
        && source_fits(pkt);
    Some(ok)
}

/// The source address each message type may come from.
#[inline(always)]
fn source_fits(pkt: &Packet) -> bool {
    let src = &pkt.src;
    if is_multicast(src) {
        return false;
    }
    match pkt.icmp_type {
        // Only routers send these, always from their link-local address.
        ROUTER_ADVERT | REDIRECT | MLD_QUERY => is_link_local(src),
        // A host without an address yet reports from ::.
        MLD_REPORT | MLD_DONE | MLD2_REPORT => is_link_local(src) || is_unspecified(src),
        // Duplicate address detection solicits from :: to the
        // solicited-node group of the address being tried.
        NEIGHBOR_SOLICIT => !is_unspecified(src) || is_solicited_node(&pkt.dst),
        NEIGHBOR_ADVERT => !is_unspecified(src),
        // Router solicitation: any unicast source, or ::.
        _ => true,
    }
}

// Addresses are network-order bytes packed into words (`Packet::src`):
// comparing words with words built the same way needs no byte order.

#[inline(always)]
fn byte(a: &[u32; 4], i: usize) -> u8 {
    a[i / 4].to_ne_bytes()[i % 4]
}

#[inline(always)]
fn is_multicast(a: &[u32; 4]) -> bool {
    byte(a, 0) == 0xff
}

/// fe80::/10.
#[inline(always)]
fn is_link_local(a: &[u32; 4]) -> bool {
    byte(a, 0) == 0xfe && byte(a, 1) & 0xc0 == 0x80
}

#[inline(always)]
fn is_unspecified(a: &[u32; 4]) -> bool {
    a[0] | a[1] | a[2] | a[3] == 0
}

/// ff02::1:ff00:0/104.
#[inline(always)]
fn is_solicited_node(a: &[u32; 4]) -> bool {
    a[0] == u32::from_ne_bytes([0xff, 0x02, 0, 0])
        && a[1] == 0
        && a[2] == u32::from_ne_bytes([0, 0, 0, 0x01])
        && byte(a, 12) == 0xff
}

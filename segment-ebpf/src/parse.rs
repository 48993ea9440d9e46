//! Packet parsing: Ethernet (with up to two 802.1Q/802.1ad tags) or no
//! link-layer header at all (tun, WireGuard: [`Link::L3`]), IPv4 (with
//! options), IPv6 (with a bounded walk over extension headers), and the first
//! bytes of TCP, UDP, SCTP, ICMP and ICMPv6.
//!
//! Two kinds of ICMP pass without a rule lookup, so both are checked here
//! before they are given that status (see [`crate::icmp`]): errors quoting a
//! flow (`Packet::quoted`) and IPv6 neighbour discovery / MLD
//! ([`Parsed::Neighbor`]).
//!
//! Every read goes through [`Cursor::get`], the single bounds check. Anything
//! that does not add up (a header cut short, an IHL below 5, a TCP data offset
//! below 5, a first fragment too short to hold the ports) is `Malformed`:
//! the caller drops it, because a packet whose ports cannot be read cannot be
//! shown to be allowed.

use core::mem::size_of;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use segment_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

use crate::icmp::{Neighbor, error_may_quote, neighbor_ok};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// IPv6 extension headers walked: a chain of this many still reaches its
/// upper-layer header, one more is `ExtHeaders`.
const MAX_EXT_HEADERS: usize = 8;
/// Bytes of IPv6 extension headers walked before giving up.
const MAX_EXT_BYTES: usize = 512;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where the packet stands with respect to IP fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment: carries the transport header.
    First,
    /// Later fragment: no transport header, judged by its first fragment.
    Later,
}

/// The flow an ICMP error quotes (the packet that caused the error).
#[derive(Clone, Copy)]
pub struct Quoted {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

#[derive(Clone, Copy)]
pub struct Packet {
    /// 4 or 6.
    pub family: u8,
    /// Transport protocol (IPv4 protocol, or IPv6 last next-header).
    pub proto: u8,
    /// Addresses as raw network-order bytes packed in words; IPv4 uses word 0.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports in host byte order. For ICMP echo: the identifier stands in for
    /// the requester's port, 0 for the responder's. Zero when there are none.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub frag: Frag,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
    /// The protocol that, with the addresses and `frag_id`, names the
    /// datagram in fragment tracking: the IPv4 protocol, or the Next Header
    /// of the IPv6 fragment header. Every fragment of a datagram carries
    /// the same one (RFC 8200 4.5), even when extension headers (destination
    /// options, say) sit between the fragment header and the upper layer,
    /// which only the first fragment shows.
    pub frag_proto: u8,
    /// Set for ICMP/ICMPv6 errors that quote a parsable packet.
    pub quoted: Option<Quoted>,
    /// TCP only (zero otherwise), for conntrack's sequence tracking:
    /// sequence and acknowledgement numbers, the raw window, and the bytes
    /// of segment data (the datagram's transport bytes minus the header).
    pub tcp: TcpSeg,
}

/// The fields of a TCP header conntrack's window checks need.
#[derive(Clone, Copy, Default)]
pub struct TcpSeg {
    pub seq: u32,
    pub ack: u32,
    pub win: u16,
    /// Header length in bytes (data offset × 4).
    pub hlen: u16,
    pub payload: u16,
    /// Offset of the TCP header from the start of the frame.
    pub off: u16,
    /// Window scale option of a SYN (filled by conntrack, not the parser);
    /// `WSCALE_NONE` when absent.
    pub wscale: u8,
    pub _pad: [u8; 3],
}

/// No window scale option.
pub const WSCALE_NONE: u8 = 0xff;

impl TcpSeg {
    pub const NONE: TcpSeg = TcpSeg {
        seq: 0,
        ack: 0,
        win: 0,
        hlen: 0,
        payload: 0,
        off: 0,
        wscale: WSCALE_NONE,
        _pad: [0; 3],
    };
}

/// What comes before the IP header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// An Ethernet header, possibly VLAN-tagged.
    Ethernet,
    /// Nothing: the IP header is at offset 0 and its version nibble is the
    /// only sign of the family (tun, WireGuard, Tailscale). No ARP, no VLAN.
    L3,
}

impl Packet {
    /// Starts describing a new packet. Field by field rather than as one
    /// struct value: a whole `Packet` built first would take its size of
    /// the BPF stack, on the way into the scratch map where it lives.
    #[inline(always)]
    fn reset(&mut self, family: u8, proto: u8, frag_id: u32) {
        self.family = family;
        self.proto = proto;
        self.sport = 0;
        self.dport = 0;
        self.tcp_flags = 0;
        self.icmp_type = 0;
        self.frag = Frag::None;
        self.frag_id = frag_id;
        self.frag_proto = proto;
        self.quoted = None;
        self.tcp = TcpSeg::NONE;
    }
}

pub enum Parsed {
    /// ARP, LLDP and everything else that is not IP.
    NotIp,
    /// IPv6 neighbour discovery and multicast listener messages that are
    /// what RFC 4861 / RFC 3810 allow on a link (see [`neighbor_ok`]).
    Neighbor,
    /// An IP packet, described in the `Packet` passed to [`parse`].
    Ip,
    Malformed,
    /// IPv6 extension header chain longer than the walk allows.
    ExtHeaders,
    /// IPv4 loose/strict source route option, or an IPv6 routing header
    /// with segments left: the packet's final destination is not the
    /// destination address it is judged by.
    SourceRoute,
}

pub struct Cursor {
    data: usize,
    end: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(data: usize, end: usize) -> Self {
        Self { data, end }
    }

    /// A pointer to a `T` at `off`, if the whole `T` lies inside the packet.
    #[inline(always)]
    pub fn get<T>(&self, off: usize) -> Option<*const T> {
        let start = self.data + off;
        if start + size_of::<T>() > self.end {
            return None;
        }
        Some(start as *const T)
    }

    /// Whether the packet holds `off` bytes (that is, `off` is at most its end).
    #[inline(always)]
    pub fn holds(&self, off: usize) -> bool {
        self.data + off <= self.end
    }

    /// Copies `N` bytes at `off`. Reads are always at least two bytes wide:
    /// LLVM turns a one-byte check into `start >= end`, which the verifier
    /// does not accept as a proof of range.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        // SAFETY: `get` checked all `N` bytes lie inside the packet.
        self.get::<[u8; N]>(off).map(|p| unsafe { *p })
    }

    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.bytes::<2>(off).map(u16::from_be_bytes)
    }
}

const ECHO_REQUEST: u8 = 1;
const ECHO_REPLY: u8 = 2;

#[inline(always)]
fn icmp_echo_kind(proto: u8, icmp_type: u8) -> Option<u8> {
    match (proto, icmp_type) {
        (IPPROTO_ICMP, 8) | (IPPROTO_ICMPV6, 128) => Some(ECHO_REQUEST),
        (IPPROTO_ICMP, 0) | (IPPROTO_ICMPV6, 129) => Some(ECHO_REPLY),
        _ => None,
    }
}

#[inline(always)]
pub fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    match proto {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        IPPROTO_ICMP => matches!(icmp_type, 3 | 4 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        IPPROTO_ICMPV6 => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

#[inline(always)]
fn v4_words(b: [u8; 4]) -> [u32; 4] {
    [u32::from_ne_bytes(b), 0, 0, 0]
}

#[inline(always)]
fn v6_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// Parses the packet into `pkt` (which lives in a per-CPU map, not on the
/// 512-byte BPF stack). `link` is a constant at each program's call site,
/// which the verifier follows into the call, so each program only ever
/// runs the parser of its own kind of interface.
///
/// A BPF subprogram of its own rather than inlined: its locals then live in
/// its own stack frame, which is free again before the policy lookups run,
/// instead of adding to the caller's (the frames along a call chain must
/// fit in 512 bytes together).
#[inline(never)]
pub fn parse(c: &Cursor, link: Link, pkt: &mut Packet) -> Parsed {
    match link {
        Link::Ethernet => parse_ethernet(c, pkt),
        Link::L3 => parse_l3(c, pkt),
    }
}

/// A packet that starts with its IP header. Anything but version 4 or 6 is
/// malformed: there is no "not IP" on a device that only carries IP.
#[inline(always)]
fn parse_l3(c: &Cursor, pkt: &mut Packet) -> Parsed {
    let Some([first, _]) = c.bytes::<2>(0) else {
        return Parsed::Malformed;
    };
    match first >> 4 {
        4 => parse_ipv4(c, 0, pkt),
        6 => parse_ipv6(c, 0, pkt),
        _ => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ethernet(c: &Cursor, pkt: &mut Packet) -> Parsed {
    let Some(mut ether_type) = c.be16_at(12) else {
        return Parsed::Malformed;
    };
    let mut off = EthHdr::LEN;
    // Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(inner) = c.be16_at(off + 2) else {
            return Parsed::Malformed;
        };
        ether_type = inner;
        off += 4;
    }
    match ether_type {
        ETH_P_IP => parse_ipv4(c, off, pkt),
        ETH_P_IPV6 => parse_ipv6(c, off, pkt),
        // A third tag is not something we can see through: judge it as IP
        // would be judged only if we could; refusing is the safe answer.
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Malformed,
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(c: &Cursor, off: usize, pkt: &mut Packet) -> Parsed {
    let Some(ip) = c.get::<Ipv4Hdr>(off) else {
        return Parsed::Malformed;
    };
    // SAFETY: `get` checked the fixed header lies inside the packet.
    let ip = unsafe { &*ip };
    let vihl = ip.vihl;
    if vihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let hlen = ((vihl & 0x0f) as usize) * 4;
    if hlen < Ipv4Hdr::LEN {
        return Parsed::Malformed;
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < hlen || !c.holds(off + hlen) {
        return Parsed::Malformed;
    }
    if hlen > Ipv4Hdr::LEN && routes_by_source(c, off + Ipv4Hdr::LEN, off + hlen) {
        return Parsed::SourceRoute;
    }
    let frags = u16::from_be_bytes(ip.frags);
    let frag_off = frags & 0x1fff;
    let more = frags & 0x2000 != 0;
    pkt.reset(4, ip.proto, u16::from_be_bytes(ip.id) as u32);
    pkt.src = v4_words(ip.src_addr);
    pkt.dst = v4_words(ip.dst_addr);
    if frag_off != 0 {
        // RFC 1858: a fragment at offset 8 bytes can only exist to overwrite
        // the TCP flags of the first fragment.
        if frag_off == 1 && pkt.proto == IPPROTO_TCP {
            return Parsed::Malformed;
        }
        pkt.frag = Frag::Later;
        return Parsed::Ip;
    }
    if more {
        pkt.frag = Frag::First;
    }
    // The transport header must lie inside the IP datagram, not in padding
    // after it.
    let l4_room = tot_len - hlen;
    if parse_l4(c, off + hlen, l4_room, pkt).is_none() {
        return Parsed::Malformed;
    }
    if is_icmp_error(pkt.proto, pkt.icmp_type)
        && let Some([_, code]) = c.bytes::<2>(off + hlen)
        && error_may_quote(pkt, code, tot_len)
    {
        pkt.quoted = parse_quoted_v4(c, off + hlen + 8, off + tot_len);
        drop_unless_addressed_to_source(pkt);
    }
    Parsed::Ip
}

#[inline(always)]
fn parse_ipv6(c: &Cursor, off: usize, pkt: &mut Packet) -> Parsed {
    let Some(ip) = c.get::<Ipv6Hdr>(off) else {
        return Parsed::Malformed;
    };
    // SAFETY: `get` checked the fixed header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    pkt.reset(6, ip.next_hdr, 0);
    pkt.src = v6_words(ip.src_addr);
    pkt.dst = v6_words(ip.dst_addr);
    let mut next = ip.next_hdr;
    let mut ext = 0usize;
    let base = off + Ipv6Hdr::LEN;
    // RFC 6980: neighbour discovery never comes in fragments, not even in an
    // atomic one.
    let mut fragment_header = false;
    for _ in 0..MAX_EXT_HEADERS {
        if ext > MAX_EXT_BYTES {
            return Parsed::ExtHeaders;
        }
        let at = base + ext;
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some([nh, len, _, segments_left]) = c.bytes::<4>(at) else {
                    return Parsed::Malformed;
                };
                // A routing header with segments left sends the packet on
                // to an address the policy never saw (RFC 5095 deprecated
                // type 0 for exactly this; SRv6 does it by design).
                if next == 43 && segments_left != 0 {
                    return Parsed::SourceRoute;
                }
                next = nh;
                ext += (len as usize + 1) * 8;
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let Some([nh, len]) = c.bytes::<2>(at) else {
                    return Parsed::Malformed;
                };
                next = nh;
                ext += (len as usize + 2) * 4;
            }
            // Fragment header: 8 bytes.
            44 => {
                let Some(h) = c.bytes::<8>(at) else {
                    return Parsed::Malformed;
                };
                let (nh, fo, id) = (
                    h[0],
                    u16::from_be_bytes([h[2], h[3]]),
                    u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                );
                next = nh;
                ext += 8;
                fragment_header = true;
                pkt.frag_id = id;
                pkt.frag_proto = nh;
                let frag_off = fo >> 3;
                let more = fo & 1 != 0;
                if frag_off != 0 {
                    pkt.proto = next;
                    pkt.frag = Frag::Later;
                    return Parsed::Ip;
                }
                if more {
                    pkt.frag = Frag::First;
                }
            }
            // Anything else is the upper-layer protocol (including ones we
            // do not know, which the policy then judges by number).
            _ => break,
        }
    }
    // The walk stops at the upper-layer header or after its last header; in
    // the second case the header it stopped at must be the upper layer.
    if is_ext_header(next) || ext > MAX_EXT_BYTES {
        return Parsed::ExtHeaders;
    }
    if ext > payload_len || !c.holds(base + ext) {
        return Parsed::Malformed;
    }
    pkt.proto = next;
    let l4 = base + ext;
    if parse_l4(c, l4, payload_len - ext, pkt).is_none() {
        return Parsed::Malformed;
    }
    if pkt.proto != IPPROTO_ICMPV6 {
        return Parsed::Ip;
    }
    let Some([_, code]) = c.bytes::<2>(l4) else {
        return Parsed::Malformed;
    };
    let nd = Neighbor {
        code,
        hop_limit: ip.hop_limit,
        fragment_header,
        msg_len: (payload_len - ext) as u16,
        total_len: (Ipv6Hdr::LEN + payload_len) as u32,
    };
    match neighbor_ok(pkt, nd) {
        Some(true) => return Parsed::Neighbor,
        // Neighbour discovery or MLD the link does not need this way: the
        // policy judges it like any ICMPv6 message.
        Some(false) => return Parsed::Ip,
        None => {}
    }
    if is_icmp_error(pkt.proto, pkt.icmp_type)
        && error_may_quote(pkt, code, Ipv6Hdr::LEN + payload_len)
    {
        pkt.quoted = parse_quoted_v6(c, l4 + 8, base + payload_len);
        drop_unless_addressed_to_source(pkt);
    }
    Parsed::Ip
}

/// An error goes back to the source of the packet that caused it: one
/// addressed elsewhere quotes a flow it has nothing to do with.
#[inline(always)]
fn drop_unless_addressed_to_source(pkt: &mut Packet) {
    if let Some(q) = &pkt.quoted
        && q.src != pkt.dst
    {
        pkt.quoted = None;
    }
}

/// IPv4 options carried by the header between `start` and `end` (at most 40
/// bytes): whether one of them is a loose (131) or strict (137) source
/// route. A router that honours it (`accept_source_route`, on by default on
/// Linux routers) forwards the packet to the next address of the route, not
/// to the destination the policy judged.
#[inline(always)]
fn routes_by_source(c: &Cursor, start: usize, end: usize) -> bool {
    const EOL: u8 = 0;
    const NOP: u8 = 1;
    const LSRR: u8 = 131;
    const SSRR: u8 = 137;
    let room = end.saturating_sub(start);
    let mut rel = 0usize;
    // 40 option bytes hold at most 40 options.
    for _ in 0..40 {
        // `rel` never exceeds 40 here (every step is checked against
        // `room` below), so the mask changes nothing; it makes the
        // verifier see one range for `rel` after a few rounds, so the
        // paths through the loop merge instead of multiplying (without it
        // loading the program took minutes).
        rel &= 0x3f;
        if rel >= room {
            return false;
        }
        // Two bytes are read even for the one-byte options, so the last
        // option byte may be the first byte of the transport header (or
        // past the frame, when nothing follows: then it can only be a
        // one-byte option, which routes nothing).
        let Some([kind, len]) = c.bytes::<2>(start + rel) else {
            return false;
        };
        match kind {
            EOL => return false,
            NOP => rel += 1,
            LSRR | SSRR => return true,
            _ => {
                let len = len as usize;
                if len < 2 || rel + len > room {
                    // Linux refuses the whole packet for an option it
                    // cannot walk (ip_options_compile), so nothing after
                    // it is ever honoured: the packet is judged as usual.
                    return false;
                }
                rel += len;
            }
        }
    }
    false
}

/// The extension headers the walk knows how to step over.
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// Reads ports, TCP flags and ICMP type. `room` is how many bytes the IP
/// header says the datagram has after the network header(s).
#[inline(always)]
fn parse_l4(c: &Cursor, off: usize, room: usize, pkt: &mut Packet) -> Option<()> {
    match pkt.proto {
        IPPROTO_TCP => {
            if room < 20 {
                return None;
            }
            let h = c.bytes::<20>(off)?;
            if h[12] >> 4 < 5 {
                return None;
            }
            pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.dport = u16::from_be_bytes([h[2], h[3]]);
            pkt.tcp_flags = h[13];
            let hlen = (h[12] >> 4) as usize * 4;
            pkt.tcp = TcpSeg {
                seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
                win: u16::from_be_bytes([h[14], h[15]]),
                hlen: hlen as u16,
                payload: room.saturating_sub(hlen) as u16,
                off: off as u16,
                wscale: WSCALE_NONE,
                _pad: [0; 3],
            };
        }
        IPPROTO_UDP => {
            if room < 8 {
                return None;
            }
            let h = c.bytes::<8>(off)?;
            pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        IPPROTO_SCTP => {
            if room < 12 {
                return None;
            }
            let h = c.bytes::<12>(off)?;
            pkt.sport = u16::from_be_bytes([h[0], h[1]]);
            pkt.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if room < 8 {
                return None;
            }
            let h = c.bytes::<8>(off)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            pkt.icmp_type = h[0];
            match icmp_echo_kind(pkt.proto, h[0]) {
                Some(ECHO_REQUEST) => pkt.sport = id,
                Some(_) => pkt.dport = id,
                None => {}
            }
        }
        _ => {}
    }
    Some(())
}

/// The IPv4 header and first 8 transport bytes quoted by an ICMP error,
/// read only inside the outer datagram (which ends at `end`, an offset).
#[inline(always)]
fn parse_quoted_v4(c: &Cursor, off: usize, end: usize) -> Option<Quoted> {
    if off + Ipv4Hdr::LEN > end {
        return None;
    }
    let ip = c.get::<Ipv4Hdr>(off)?;
    // SAFETY: `get` checked the fixed header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return None;
    }
    let hlen = ((ip.vihl & 0x0f) as usize) * 4;
    if hlen < Ipv4Hdr::LEN {
        return None;
    }
    quoted_ports(
        c,
        off + hlen,
        end,
        ip.proto,
        v4_words(ip.src_addr),
        v4_words(ip.dst_addr),
    )
}

#[inline(always)]
fn parse_quoted_v6(c: &Cursor, off: usize, end: usize) -> Option<Quoted> {
    if off + Ipv6Hdr::LEN > end {
        return None;
    }
    let ip = c.get::<Ipv6Hdr>(off)?;
    // SAFETY: `get` checked the fixed header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return None;
    }
    quoted_ports(
        c,
        off + Ipv6Hdr::LEN,
        end,
        ip.next_hdr,
        v6_words(ip.src_addr),
        v6_words(ip.dst_addr),
    )
}

/// The quoted packet's ports (or echo identifier), which must lie inside
/// the outer datagram: bytes past its end are padding anyone can fill.
#[inline(always)]
fn quoted_ports(
    c: &Cursor,
    off: usize,
    end: usize,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
) -> Option<Quoted> {
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            if off + 4 > end {
                return None;
            }
            (c.be16_at(off)?, c.be16_at(off + 2)?)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if off + 8 > end {
                return None;
            }
            let h = c.bytes::<8>(off)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            match icmp_echo_kind(proto, h[0]) {
                Some(ECHO_REQUEST) => (id, 0),
                Some(_) => (0, id),
                None => return None,
            }
        }
        _ => (0, 0),
    };
    Some(Quoted {
        src,
        dst,
        sport,
        dport,
        proto,
    })
}

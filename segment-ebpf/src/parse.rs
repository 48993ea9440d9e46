//! Packet parsing: Ethernet (with up to two 802.1Q/802.1ad tags), IPv4 (with
//! options), IPv6 (with a bounded walk over extension headers), and the first
//! bytes of TCP, UDP, SCTP, ICMP and ICMPv6.
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

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// IPv6 extension headers walked before giving up (`ExtHeaders`).
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
    /// Set for ICMP/ICMPv6 errors that quote a parsable packet.
    pub quoted: Option<Quoted>,
}

pub enum Parsed {
    /// ARP, LLDP and everything else that is not IP.
    NotIp,
    /// IPv6 neighbour discovery and multicast listener messages.
    Neighbor,
    /// An IP packet, described in the `Packet` passed to [`parse`].
    Ip,
    Malformed,
    /// IPv6 extension header chain longer than the walk allows.
    ExtHeaders,
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
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
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
fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    match proto {
        // Destination unreachable, source quench, time exceeded, parameter problem.
        IPPROTO_ICMP => matches!(icmp_type, 3 | 4 | 11 | 12),
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        IPPROTO_ICMPV6 => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

/// ICMPv6 messages the link needs to work: MLD (130-132, 143) and neighbour
/// discovery (133-137). They pass whatever the policy says.
#[inline(always)]
fn is_neighbor_icmpv6(icmp_type: u8) -> bool {
    matches!(icmp_type, 130..=137 | 143)
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
/// 512-byte BPF stack).
#[inline(always)]
pub fn parse(c: &Cursor, pkt: &mut Packet) -> Parsed {
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
    let frags = u16::from_be_bytes(ip.frags);
    let frag_off = frags & 0x1fff;
    let more = frags & 0x2000 != 0;
    *pkt = Packet {
        family: 4,
        proto: ip.proto,
        src: v4_words(ip.src_addr),
        dst: v4_words(ip.dst_addr),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        frag: Frag::None,
        frag_id: u16::from_be_bytes(ip.id) as u32,
        quoted: None,
    };
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
    if pkt.quoted.is_none() && is_icmp_error(pkt.proto, pkt.icmp_type) {
        pkt.quoted = parse_quoted_v4(c, off + hlen + 8);
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
    *pkt = Packet {
        family: 6,
        proto: ip.next_hdr,
        src: v6_words(ip.src_addr),
        dst: v6_words(ip.dst_addr),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        frag: Frag::None,
        frag_id: 0,
        quoted: None,
    };
    let mut next = ip.next_hdr;
    let mut ext = 0usize;
    let base = off + Ipv6Hdr::LEN;
    let mut done = false;
    for _ in 0..MAX_EXT_HEADERS {
        if ext > MAX_EXT_BYTES {
            return Parsed::ExtHeaders;
        }
        let at = base + ext;
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some([nh, len]) = c.bytes::<2>(at) else {
                    return Parsed::Malformed;
                };
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
                pkt.frag_id = id;
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
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Parsed::ExtHeaders;
    }
    if ext > MAX_EXT_BYTES || ext > payload_len || !c.holds(base + ext) {
        return Parsed::Malformed;
    }
    pkt.proto = next;
    if parse_l4(c, base + ext, payload_len - ext, pkt).is_none() {
        return Parsed::Malformed;
    }
    if pkt.proto == IPPROTO_ICMPV6 && is_neighbor_icmpv6(pkt.icmp_type) {
        return Parsed::Neighbor;
    }
    if is_icmp_error(pkt.proto, pkt.icmp_type) {
        pkt.quoted = parse_quoted_v6(c, base + ext + 8);
    }
    Parsed::Ip
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

/// The IPv4 header and first 8 transport bytes quoted by an ICMP error.
#[inline(always)]
fn parse_quoted_v4(c: &Cursor, off: usize) -> Option<Quoted> {
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
        ip.proto,
        v4_words(ip.src_addr),
        v4_words(ip.dst_addr),
    )
}

#[inline(always)]
fn parse_quoted_v6(c: &Cursor, off: usize) -> Option<Quoted> {
    let ip = c.get::<Ipv6Hdr>(off)?;
    // SAFETY: `get` checked the fixed header lies inside the packet.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return None;
    }
    quoted_ports(
        c,
        off + Ipv6Hdr::LEN,
        ip.next_hdr,
        v6_words(ip.src_addr),
        v6_words(ip.dst_addr),
    )
}

#[inline(always)]
fn quoted_ports(c: &Cursor, off: usize, proto: u8, src: [u32; 4], dst: [u32; 4]) -> Option<Quoted> {
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => (c.be16_at(off)?, c.be16_at(off + 2)?),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
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

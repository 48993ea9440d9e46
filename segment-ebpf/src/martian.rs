//! Martians: a packet that arrives from outside claiming one of this host's
//! own addresses as its source. No honest peer sends one (the host's own
//! traffic to itself never crosses an attached interface's ingress), and
//! letting it through would let an outsider speak as the host — match the
//! host's own tracked flows, or be routed on as if the host had sent it.
//!
//! The agent keeps `SEG_LOCAL` equal to the addresses of every interface of
//! its network namespace (IPv4 and IPv6, link-local included; never the
//! unspecified addresses).

use segment_common::LocalAddrKey;

use crate::{maps::LOCAL_ADDRS, parse::Packet};

/// Whether the packet's source is one of this host's own addresses.
#[inline(always)]
pub fn is_martian(pkt: &Packet) -> bool {
    is_own(pkt.family, &pkt.src)
}

/// Whether `addr` is one of this host's own addresses.
#[inline(always)]
pub fn is_own(family: u8, addr: &[u32; 4]) -> bool {
    let key = LocalAddrKey {
        addr: *addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: a plain lookup; the value is not read.
    unsafe { LOCAL_ADDRS.get(&key).is_some() }
}

/// Whether an IPv6 neighbour discovery or MLD message arriving at ingress
/// is addressed to this link: link-local unicast (fe80::/10), link-scope
/// multicast (ffX2::/16), or this host. The hop limit (255 / 1) proves it
/// came from the link, not that it is for it: NS/NA/RS addressed to a host
/// behind another interface would be routed on unjudged otherwise.
#[inline(always)]
pub fn neighbor_for_this_link(pkt: &Packet) -> bool {
    let b = pkt.dst[0].to_ne_bytes();
    let link_local = b[0] == 0xfe && b[1] & 0xc0 == 0x80;
    let link_multicast = b[0] == 0xff && b[1] & 0x0f == 0x02;
    link_local || link_multicast || is_own(pkt.family, &pkt.dst)
}

//! Which pair of programs an interface gets, from its link type.
//!
//! The programs must know where the IP header starts. On Ethernet it follows
//! a 14-byte header (and VLAN tags); on devices without a link-layer header
//! (tun, WireGuard, Tailscale: `ARPHRD_NONE`) XDP generic and TC both start
//! at the IP header. Any other link type is refused: reading an Ethernet
//! header where there is none takes address bytes for an EtherType, calls
//! the packet "not IP" and passes it, which would be enforcement in name
//! only. Tunnel devices (ipip, gre, sit, ip6tnl) are refused until verified
//! on a kernel that has them (the one this was built on has none): their
//! receive paths set the decapsulated packet's MAC header to the outer IP
//! header, and generic XDP starts at the MAC header, so the programs would
//! see the outer packet rather than the one to judge.
//!
//! The link type comes from `SIOCGIFHWADDR` on a socket of the agent's own
//! network namespace, not from `/sys/class/net/IF/type`: sysfs shows the
//! namespace it was mounted in, which under `nsenter --net` is not the
//! agent's.

use std::{ffi::CString, io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use segment_common::map_names;

/// `ARPHRD_ETHER`: Ethernet and everything that looks like it (veth, bridge,
/// bond, macvlan, TAP).
const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_NONE`: no link-layer header (tun, WireGuard, Tailscale).
const ARPHRD_NONE: u16 = 65534;

/// How packets start on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Behind an Ethernet header.
    Ethernet,
    /// At the IP header.
    L3,
}

impl LinkKind {
    /// The kind of interface a link type is, if segment can enforce on it.
    pub fn of(arphrd: u16) -> Option<Self> {
        match arphrd {
            ARPHRD_ETHER => Some(Self::Ethernet),
            ARPHRD_NONE => Some(Self::L3),
            _ => None,
        }
    }

    pub fn ingress_program(self) -> &'static str {
        match self {
            Self::Ethernet => map_names::PROG_INGRESS,
            Self::L3 => map_names::PROG_INGRESS_L3,
        }
    }

    pub fn egress_program(self) -> &'static str {
        match self {
            Self::Ethernet => map_names::PROG_EGRESS,
            Self::L3 => map_names::PROG_EGRESS_L3,
        }
    }

    /// Whether native (driver) XDP may be used. Devices without a link-layer
    /// header get generic XDP only: that is the mode in which the data is
    /// known to start at the IP header (tun, for one, runs a native program
    /// only on some of its receive paths).
    pub fn native_xdp(self) -> bool {
        self == Self::Ethernet
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error(
        "{iface} has link type {arphrd} ({}); segment enforces only on Ethernet interfaces (type 1) and on interfaces without a link-layer header such as tun, WireGuard and Tailscale (type 65534), and refuses the rest rather than pass their traffic unjudged",
        link_type_name(*arphrd)
    )]
    Unsupported { iface: String, arphrd: u16 },
    #[error(
        "{iface} has no link-layer header: segment attaches generic XDP there, not native; use --xdp-mode auto or skb"
    )]
    NativeXdp { iface: String },
    #[error("reading the link type of {iface}: {source} (does it exist? see `ip link`)")]
    Query {
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// The kind of `iface` (in the agent's network namespace), or why segment
/// will not enforce on it; `native` says native XDP was asked for.
pub fn classify(iface: &str, native: bool) -> Result<LinkKind, IfaceError> {
    let arphrd = link_type(iface).map_err(|source| IfaceError::Query {
        iface: iface.to_owned(),
        source,
    })?;
    let kind = LinkKind::of(arphrd).ok_or_else(|| IfaceError::Unsupported {
        iface: iface.to_owned(),
        arphrd,
    })?;
    if native && !kind.native_xdp() {
        return Err(IfaceError::NativeXdp {
            iface: iface.to_owned(),
        });
    }
    Ok(kind)
}

/// The device's `ARPHRD_*` type: `SIOCGIFHWADDR` reports it as the family
/// of the hardware address, for every kind of device.
fn link_type(iface: &str) -> io::Result<u16> {
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass, which outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR wrote the hardware address member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// A name for the link types an operator is likely to try (`if_arp.h`).
pub fn link_type_name(arphrd: u16) -> &'static str {
    match arphrd {
        ARPHRD_ETHER => "Ethernet",
        ARPHRD_NONE => "no link-layer header",
        32 => "InfiniBand",
        512 => "PPP",
        768 => "IPIP tunnel",
        769 => "IPv6-in-IPv6 tunnel",
        772 => "loopback",
        776 => "SIT tunnel",
        778 => "GRE tunnel",
        823 => "IPv6 GRE tunnel",
        280 => "CAN",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_and_headerless_devices_are_supported() {
        assert_eq!(LinkKind::of(1), Some(LinkKind::Ethernet));
        assert_eq!(LinkKind::of(65534), Some(LinkKind::L3));
        assert_eq!(LinkKind::Ethernet.ingress_program(), "segment_ingress");
        assert_eq!(LinkKind::L3.ingress_program(), "segment_ingress_l3");
        assert_eq!(LinkKind::L3.egress_program(), "segment_egress_l3");
        assert!(LinkKind::Ethernet.native_xdp());
        assert!(!LinkKind::L3.native_xdp());
    }

    #[test]
    fn everything_else_is_refused_by_name() {
        for t in [0, 32, 512, 768, 769, 772, 776, 778, 823, 65535] {
            assert_eq!(LinkKind::of(t), None, "type {t}");
        }
        let e = IfaceError::Unsupported {
            iface: "lo".into(),
            arphrd: 772,
        };
        let msg = e.to_string();
        assert!(msg.contains("lo has link type 772 (loopback)"), "{msg}");
        assert!(msg.contains("65534"), "{msg}");
    }

    #[test]
    fn a_name_that_cannot_be_an_interface_is_an_error_not_a_panic() {
        assert!(matches!(
            classify("bad\0name", false),
            Err(IfaceError::Query { .. })
        ));
        assert!(matches!(
            classify("a-name-longer-than-ifnamsiz", false),
            Err(IfaceError::Query { .. })
        ));
    }
}

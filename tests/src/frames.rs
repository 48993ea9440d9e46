//! Building packets byte by byte: well-formed ones with correct checksums,
//! and the hostile shapes the datapath must not be fooled by (IP options,
//! fragments, IPv6 extension header chains, VLAN and QinQ tags, truncation).

use std::net::IpAddr;

use crate::traffic::checksum;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (chosen by the address family).
    Icmp {
        ty: u8,
        code: u8,
        id: u16,
        seq: u16,
    },
    /// Any other protocol number, with the payload as its body.
    Other(u8),
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const URG: u8 = 0x20;

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Other(p) => *p,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers before the transport header: (type, body
    /// without the next-header/length bytes, padded to 8-byte units).
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    pub ident: u32,
    /// TCP sequence and acknowledgement numbers and window (defaults 1, 0,
    /// 64240).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_window: u16,
    /// TCP window scale option (RFC 7323), sent when `Some(shift)`.
    pub tcp_wscale: Option<u8>,
    /// IPv4 TTL / IPv6 hop limit (default 64).
    pub hop_limit: u8,
}

impl Packet {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            payload: b"segment-test".to_vec(),
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            ident: 0x1234,
            tcp_seq: 1,
            tcp_ack: 0,
            tcp_window: 64240,
            tcp_wscale: None,
            hop_limit: 64,
        }
    }

    pub fn v6(&self) -> bool {
        self.dst.is_ipv6()
    }

    fn pseudo(&self, proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&[0, proto]);
                p.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&(len as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, proto]);
            }
            _ => panic!("mixed address families"),
        }
        p
    }

    /// The transport header and payload, with a correct checksum.
    pub fn transport(&self) -> Vec<u8> {
        let v6 = self.v6();
        let proto = self.l4.proto(v6);
        let mut t = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..8].copy_from_slice(&self.tcp_seq.to_be_bytes());
                h[8..12].copy_from_slice(&self.tcp_ack.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = flags;
                h[14..16].copy_from_slice(&self.tcp_window.to_be_bytes());
                if let Some(shift) = self.tcp_wscale {
                    // Window scale (kind 3, length 3) and a NOP: 4 bytes.
                    h.extend_from_slice(&[3, 3, shift, 1]);
                    h[12] = 6 << 4;
                }
                h
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h
            }
            L4::Sctp { sport, dport } => {
                let mut h = vec![0u8; 12];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h
            }
            L4::Icmp { ty, code, id, seq } => {
                let mut h = vec![ty, code, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h
            }
            L4::Other(_) => Vec::new(),
        };
        let hlen = t.len();
        t.extend_from_slice(&self.payload);
        let csum_at = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp { .. } => Some(2),
            _ => None,
        };
        if let Some(at) = csum_at {
            let mut data = if matches!(self.l4, L4::Icmp { .. }) && !v6 {
                Vec::new()
            } else {
                self.pseudo(proto, t.len())
            };
            data.extend_from_slice(&t);
            let c = checksum(&data);
            t[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let _ = hlen;
        t
    }

    /// IPv4 header for a datagram (or fragment) carrying `body`.
    fn ipv4_header(&self, body_len: usize, frag_units: u16, more: bool) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (self.src, self.dst) else {
            panic!("not IPv4")
        };
        let mut opts = self.ipv4_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let mut h = vec![0u8; 20];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + body_len) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&(self.ident as u16).to_be_bytes());
        let frags = frag_units & 0x1fff | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frags.to_be_bytes());
        h[8] = self.hop_limit;
        h[9] = self.l4.proto(false);
        h[12..16].copy_from_slice(&s.octets());
        h[16..20].copy_from_slice(&d.octets());
        h.extend_from_slice(&opts);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    /// IPv6 header and extension headers for a packet carrying `body`
    /// (with a fragment header when `frag` is given).
    fn ipv6_headers(&self, body_len: usize, frag: Option<(u16, bool)>) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (self.src, self.dst) else {
            panic!("not IPv6")
        };
        let mut chain: Vec<(u8, Vec<u8>)> = self.ipv6_ext.clone();
        if let Some((units, more)) = frag {
            let mut b = vec![0u8; 6];
            let fo = (units << 3) | u16::from(more);
            b[0..2].copy_from_slice(&fo.to_be_bytes());
            b[2..6].copy_from_slice(&self.ident.to_be_bytes());
            chain.push((44, b));
        }
        let upper = self.l4.proto(true);
        let mut ext = Vec::new();
        for (i, (_, body)) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map(|(t, _)| *t).unwrap_or(upper);
            let mut body = body.clone();
            // Header is 2 bytes + body, a multiple of 8 bytes in total.
            while !(body.len() + 2).is_multiple_of(8) {
                body.push(0);
            }
            let len_units = ((body.len() + 2) / 8 - 1) as u8;
            ext.push(next);
            ext.push(if chain[i].0 == 44 { 0 } else { len_units });
            ext.extend_from_slice(&body);
        }
        let first = chain.first().map(|(t, _)| *t).unwrap_or(upper);
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((ext.len() + body_len) as u16).to_be_bytes());
        h[6] = first;
        h[7] = self.hop_limit;
        h[8..24].copy_from_slice(&s.octets());
        h[24..40].copy_from_slice(&d.octets());
        h.extend_from_slice(&ext);
        h
    }

    /// The whole IP datagram.
    pub fn ip(&self) -> Vec<u8> {
        let t = self.transport();
        let mut p = if self.v6() {
            self.ipv6_headers(t.len(), None)
        } else {
            self.ipv4_header(t.len(), 0, false)
        };
        p.extend_from_slice(&t);
        p
    }

    /// One fragment of the datagram: transport bytes `[at*8, at*8+len)`.
    pub fn fragment(&self, at_units: u16, len: usize, more: bool) -> Vec<u8> {
        let t = self.transport();
        let start = usize::from(at_units) * 8;
        let end = (start + len).min(t.len());
        let body = &t[start.min(t.len())..end];
        let mut p = if self.v6() {
            self.ipv6_headers(body.len(), Some((at_units, more)))
        } else {
            self.ipv4_header(body.len(), at_units, more)
        };
        p.extend_from_slice(body);
        p
    }
}

/// Wraps an IP packet in Ethernet, with VLAN tags given as (TPID, VID),
/// outermost first.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], vlans: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ip.len() + 22);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

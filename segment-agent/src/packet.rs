//! Synthetic packets for `explain --live`: the first packet of a flow
//! (TCP SYN, a UDP datagram, an ICMP echo request, or a bare header for
//! other protocols), framed in Ethernet.

use std::net::IpAddr;

const SPORT: u16 = 40_000;

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying the first packet of a flow from `src` to
/// `dst:dport` over `proto`.
pub fn opener(src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Vec<u8> {
    let v6 = dst.is_ipv6();
    let l4: Vec<u8> = match proto {
        6 => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&SPORT.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h
        }
        17 => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&SPORT.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        132 => {
            let mut h = vec![0u8; 12];
            h[0..2].copy_from_slice(&SPORT.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h
        }
        1 | 58 => {
            let ty = if v6 { 128 } else { 8 };
            let mut h = vec![ty, 0, 0, 0, 0x5e, 0x67, 0, 1];
            if !v6 {
                let c = checksum(&h);
                h[2..4].copy_from_slice(&c.to_be_bytes());
            }
            h
        }
        _ => Vec::new(),
    };
    let mut ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h
        }
        _ => Vec::new(),
    };
    ip.extend_from_slice(&l4);
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    frame.extend_from_slice(&(if v6 { 0x86ddu16 } else { 0x0800u16 }).to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_right_shape() {
        let f = opener(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            6,
            22,
        );
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[14 + 20 + 2..14 + 20 + 4], &22u16.to_be_bytes());
        assert_eq!(checksum(&f[14..34]), 0, "valid IPv4 header checksum");
        let f = opener(
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            58,
            0,
        );
        assert_eq!(f[14 + 40], 128, "ICMPv6 echo request");
    }
}

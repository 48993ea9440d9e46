//! Hostile frames, crafted byte by byte and sent through a raw socket into
//! the enforcing gateway: none passes where the policy says drop. Each frame
//! is checked twice: by what reaches the destination host, and by the
//! datapath's own reason counters (so a frame the gateway's kernel would
//! have discarded anyway still has to be judged right by segment).

use std::{collections::BTreeMap, time::Duration};

use segment_tests::{
    agent::Agent,
    frames::{ACK, FIN, L4, PSH, Packet, RST, SYN, TPID_8021AD, TPID_8021Q, URG, ethernet},
    lab::{Host, Lab},
    policies::LAB_POLICY,
    traffic::{RawLink, ip},
};

const ALICE: &str = "10.10.9.5";
const CAROL: &str = "10.10.9.7";
const DB: &str = "10.10.1.10";
const ALICE6: &str = "fd00:9::5";
const WEB6: &str = "fd00:10::2";

/// Replies of allowed probes (db's RST passes through conntrack) and non-IP
/// frames are not what is being judged here. Neighbour discovery is: the
/// links' own chatter is over before the first case (`wait_until_quiet`).
const IGNORED: [&str; 2] = ["pass_conntrack", "pass_not_ip"];
/// An address no segment holds: the lab policy admits nothing from it.
const OFF_LINK6: &str = "2001:db8::5";

struct Bench<'a> {
    agent: Agent,
    laptop: &'a Host,
    tx: RawLink,
    rx_db: RawLink,
    rx_web: RawLink,
    n: u32,
}

impl Bench<'_> {
    fn reasons(&self) -> BTreeMap<String, u64> {
        let s = self.agent.stats();
        s["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["hook"] == "ingress")
            .map(|r| {
                (
                    r["reason"].as_str().unwrap().to_owned(),
                    r["packets"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// A unique payload marker for the next frame.
    fn marker(&mut self) -> Vec<u8> {
        self.n += 1;
        format!("hostile-{:06}", self.n).into_bytes()
    }

    /// Sends frames (one per IP packet in `ips`, with `vlans`) and checks
    /// that the datapath counted exactly `expect` (reason → count) and that
    /// the marked frames did (or did not) reach the destination.
    fn case(
        &mut self,
        name: &str,
        ips: Vec<Vec<u8>>,
        vlans: &[(u16, u16)],
        marker: &[u8],
        expect: &[(&str, u64)],
        arrives: bool,
    ) {
        let before = self.reasons();
        for ip in &ips {
            let frame = ethernet(self.laptop.gw_mac, self.laptop.mac, vlans, ip);
            self.tx.send(&frame);
        }
        let seen_db = self.rx_db.capture_with(marker, Duration::from_millis(150));
        let seen_web = self.rx_web.capture_with(marker, Duration::from_millis(10));
        let after = self.reasons();
        let delta: BTreeMap<String, u64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(k, d)| *d > 0 && !IGNORED.contains(&k.as_str()))
            .collect();
        let want: BTreeMap<String, u64> =
            expect.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        assert_eq!(delta, want, "{name}: reason counters");
        let arrived = !seen_db.is_empty() || !seen_web.is_empty();
        assert_eq!(arrived, arrives, "{name}: arrived at the destination");
    }
}

/// The marker sits 8 bytes into the payload, so that the second fragment
/// of a datagram split after 24 transport bytes carries all of it.
fn with_marker(mut p: Packet, marker: &[u8]) -> Packet {
    let mut payload = b"........".to_vec();
    payload.extend_from_slice(marker);
    payload.resize(64, b'.');
    p.payload = payload;
    p
}

#[test]
fn hostile_frames_never_pass_where_the_policy_says_drop() {
    let lab = Lab::standard();
    let (laptop, db, web) = (lab.host("laptop"), lab.host("db"), lab.host("web"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    agent.wait_until_quiet(
        "ingress",
        "pass_neighbor_discovery",
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    let mut b = Bench {
        agent,
        laptop,
        tx: RawLink::open(&laptop.ns, "eth0"),
        rx_db: RawLink::open(&db.ns, "eth0"),
        rx_web: RawLink::open(&web.ns, "eth0"),
        n: 0,
    };
    let tcp = |src: &str, dst: &str, dport: u16, flags: u8| {
        Packet::new(
            ip(src),
            ip(dst),
            L4::Tcp {
                sport: 40000,
                dport,
                flags,
            },
        )
    };

    // Baselines: the same SYN from an admin (allowed) and from alice (not).
    let m = b.marker();
    b.case(
        "allowed SYN",
        vec![with_marker(tcp(CAROL, DB, 22, SYN), &m).ip()],
        &[],
        &m,
        &[("pass_rule", 1)],
        true,
    );
    let m = b.marker();
    b.case(
        "denied SYN",
        vec![with_marker(tcp(ALICE, DB, 22, SYN), &m).ip()],
        &[],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );

    // IPv4 options move the ports: the real destination port is 23
    // (denied); the bytes where ports would be without options say 22
    // (allowed). Reading at the real IHL is what keeps this out.
    let m = b.marker();
    let mut p = with_marker(tcp(CAROL, DB, 23, SYN), &m);
    p.ipv4_options = vec![0x9c, 0x40, 0x00, 22, 0x01, 0x01, 0x01, 0x00];
    b.case(
        "options hide the port",
        vec![p.ip()],
        &[],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(tcp(CAROL, DB, 22, SYN), &m);
    p.ipv4_options = vec![1, 1, 1, 1];
    b.case(
        "options, allowed port",
        vec![p.ip()],
        &[],
        &m,
        &[("pass_rule", 1)],
        true,
    );

    // Broken IPv4 headers.
    let m = b.marker();
    let mut raw = with_marker(tcp(CAROL, DB, 22, SYN), &m).ip();
    raw[0] = 0x44;
    b.case("IHL 4", vec![raw], &[], &m, &[("drop_malformed", 1)], false);
    let m = b.marker();
    let mut raw = with_marker(tcp(CAROL, DB, 22, SYN), &m).ip();
    raw[0] = 0x4f;
    raw[2..4].copy_from_slice(&40u16.to_be_bytes());
    b.case(
        "IHL beyond the datagram",
        vec![raw],
        &[],
        &m,
        &[("drop_malformed", 1)],
        false,
    );
    let m = b.marker();
    let mut raw = with_marker(tcp(CAROL, DB, 22, SYN), &m).ip();
    raw.truncate(30);
    raw[2..4].copy_from_slice(&30u16.to_be_bytes());
    raw.extend_from_slice(&m);
    b.case(
        "truncated TCP header",
        vec![raw],
        &[],
        &m,
        &[("drop_malformed", 1)],
        false,
    );

    // Fragments. A later fragment carries no ports: it passes only behind a
    // first fragment that passed.
    let m = b.marker();
    let mut p = with_marker(tcp(ALICE, DB, 22, SYN), &m);
    p.ident = 0x4242;
    b.case(
        "later fragment alone",
        vec![p.fragment(2, 48, false)],
        &[],
        &m,
        &[("drop_fragment", 1)],
        false,
    );
    // Only 8 bytes of TCP: the ports are there, the flags are not. A
    // distinctive source port marks it.
    let _ = b.marker();
    let mut p = Packet::new(
        ip(CAROL),
        ip(DB),
        L4::Tcp {
            sport: 31337,
            dport: 22,
            flags: SYN,
        },
    );
    p.ident = 0x4343;
    let tiny = p.fragment(0, 8, true);
    let marker = tiny[20..28].to_vec();
    b.case(
        "tiny first fragment",
        vec![tiny],
        &[],
        &marker,
        &[("drop_malformed", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(tcp(CAROL, DB, 22, SYN), &m);
    p.ident = 0x4444;
    b.case(
        "fragment at offset 8 bytes",
        vec![p.fragment(1, 40, false)],
        &[],
        &m,
        &[("drop_malformed", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(tcp(CAROL, DB, 22, SYN), &m);
    p.ident = 0x4545;
    b.case(
        "allowed datagram in two fragments",
        vec![p.fragment(0, 24, true), p.fragment(3, 200, false)],
        &[],
        &m,
        &[("pass_rule", 1), ("pass_fragment", 1)],
        true,
    );
    let m = b.marker();
    let mut p = with_marker(tcp(ALICE, DB, 22, SYN), &m);
    p.ident = 0x4646;
    b.case(
        "denied datagram in two fragments",
        vec![p.fragment(0, 24, true), p.fragment(3, 200, false)],
        &[],
        &m,
        &[("drop_no_rule", 1), ("drop_fragment", 1)],
        false,
    );

    // Odd TCP flags: denied stays denied whatever the flags.
    for (name, flags) in [
        ("SYN+FIN", SYN | FIN),
        ("null", 0),
        ("XMAS", FIN | PSH | URG),
        ("ACK", ACK),
        ("RST", RST),
    ] {
        let m = b.marker();
        b.case(
            name,
            vec![with_marker(tcp(ALICE, DB, 22, flags), &m).ip()],
            &[],
            &m,
            &[("drop_no_rule", 1)],
            false,
        );
    }

    // VLAN tags: judged through one or two tags; a third is refused.
    let m = b.marker();
    b.case(
        "802.1Q denied",
        vec![with_marker(tcp(ALICE, DB, 22, SYN), &m).ip()],
        &[(TPID_8021Q, 7)],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );
    let m = b.marker();
    b.case(
        "QinQ denied",
        vec![with_marker(tcp(ALICE, DB, 22, SYN), &m).ip()],
        &[(TPID_8021AD, 7), (TPID_8021Q, 8)],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );
    let m = b.marker();
    b.case(
        "three tags",
        vec![with_marker(tcp(CAROL, DB, 22, SYN), &m).ip()],
        &[(TPID_8021AD, 7), (TPID_8021Q, 8), (TPID_8021Q, 9)],
        &m,
        &[("drop_malformed", 1)],
        false,
    );

    // IPv6: an extension header chain past the walk's limit, a chain the
    // walk handles, an unknown next header, a lone later fragment.
    let v6 = |dport: u16| {
        Packet::new(
            ip(ALICE6),
            ip(WEB6),
            L4::Tcp {
                sport: 40000,
                dport,
                flags: SYN,
            },
        )
    };
    let m = b.marker();
    let mut p = with_marker(v6(8443), &m);
    p.ipv6_ext = (0..8).map(|_| (60u8, vec![1, 4, 0, 0, 0, 0])).collect();
    b.case(
        "eight destination option headers, allowed",
        vec![p.ip()],
        &[],
        &m,
        &[("pass_rule", 1)],
        true,
    );
    let m = b.marker();
    let mut p = with_marker(v6(8443), &m);
    p.ipv6_ext = (0..9).map(|_| (60u8, vec![1, 4, 0, 0, 0, 0])).collect();
    b.case(
        "nine destination option headers",
        vec![p.ip()],
        &[],
        &m,
        &[("drop_ext_headers", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(v6(8443), &m);
    p.ipv6_ext = vec![(0, vec![1, 4, 0, 0, 0, 0]), (60, vec![1, 4, 0, 0, 0, 0])];
    b.case(
        "hop-by-hop + destination options, allowed",
        vec![p.ip()],
        &[],
        &m,
        &[("pass_rule", 1)],
        true,
    );
    let m = b.marker();
    let mut p = with_marker(v6(8444), &m);
    p.ipv6_ext = vec![(60, vec![1, 4, 0, 0, 0, 0])];
    b.case(
        "destination options, denied port",
        vec![p.ip()],
        &[],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );
    let m = b.marker();
    let p = with_marker(Packet::new(ip(ALICE6), ip(WEB6), L4::Other(253)), &m);
    b.case(
        "unknown next header",
        vec![p.ip()],
        &[],
        &m,
        &[("drop_no_rule", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(v6(8443), &m);
    p.ident = 0x0bad_cafe;
    b.case(
        "IPv6 later fragment alone",
        vec![p.fragment(4, 48, false)],
        &[],
        &m,
        &[("drop_fragment", 1)],
        false,
    );
    let m = b.marker();
    let mut p = with_marker(v6(8443), &m);
    p.ident = 0x0bad_beef;
    b.case(
        "IPv6 allowed datagram in two fragments",
        vec![p.fragment(0, 24, true), p.fragment(3, 200, false)],
        &[],
        &m,
        &[("pass_rule", 1), ("pass_fragment", 1)],
        true,
    );

    neighbor_discovery(&mut b);
}

/// An ICMPv6 message of type `ty` (code 0, four reserved bytes, then the
/// marked payload) with hop limit `hop_limit`.
fn icmp6(src: &str, dst: &str, ty: u8, code: u8, marker: &[u8]) -> Packet {
    with_marker(
        Packet::new(
            ip(src),
            ip(dst),
            L4::Icmp {
                ty,
                code,
                id: 0,
                seq: 0,
            },
        ),
        marker,
    )
}

/// Sets the hop limit of an IPv6 packet (not covered by the ICMPv6
/// checksum).
fn hop_limit(mut raw: Vec<u8>, limit: u8) -> Vec<u8> {
    raw[7] = limit;
    raw
}

/// Neighbour discovery and MLD pass whatever the policy says only as the
/// link needs them (RFC 4861, RFC 3810, RFC 6980); every other message of
/// those types is judged by the policy, which admits nothing from these
/// sources.
fn neighbor_discovery(b: &mut Bench<'_>) {
    const NS: u8 = 135;
    let pass = &[("pass_neighbor_discovery", 1)][..];
    let drop = &[("drop_no_rule", 1)][..];
    let gw_group = "ff02::1:ff00:fe";
    let cases = [
        // name, source, destination, type, code, hop limit, bytes (0: as built)
        (
            "NS to the gateway's solicited-node group",
            ALICE6,
            gw_group,
            NS,
            0,
            255,
            0,
            pass,
        ),
        (
            "NS of duplicate address detection",
            "::",
            "ff02::1:ff00:5",
            NS,
            0,
            255,
            0,
            pass,
        ),
        (
            "NA from a global address",
            ALICE6,
            "ff02::1",
            136,
            0,
            255,
            0,
            pass,
        ),
        (
            "RS from a link-local address",
            "fe80::5",
            "ff02::2",
            133,
            0,
            255,
            0,
            pass,
        ),
        ("MLDv2 report", "fe80::5", "ff02::16", 143, 0, 1, 0, pass),
        ("NS of 1280 bytes", ALICE6, gw_group, NS, 0, 255, 1280, pass),
        (
            "800-byte NS from off-link, hop limit 64",
            OFF_LINK6,
            WEB6,
            NS,
            0,
            64,
            800,
            drop,
        ),
        ("NS of 1281 bytes", OFF_LINK6, WEB6, NS, 0, 255, 1281, drop),
        ("NS with code 1", OFF_LINK6, WEB6, NS, 1, 255, 0, drop),
        (
            "NS shorter than its target",
            OFF_LINK6,
            WEB6,
            NS,
            0,
            255,
            60,
            drop,
        ),
        (
            "NS from :: to a unicast address",
            "::",
            WEB6,
            NS,
            0,
            255,
            0,
            drop,
        ),
        ("NA from ::", "::", WEB6, 136, 0, 255, 0, drop),
        (
            "Redirect from a global address",
            OFF_LINK6,
            WEB6,
            137,
            0,
            255,
            0,
            drop,
        ),
        ("RA with hop limit 64", "fe80::1", WEB6, 134, 0, 64, 0, drop),
        (
            "RA from a global address",
            OFF_LINK6,
            WEB6,
            134,
            0,
            255,
            0,
            drop,
        ),
        (
            "MLD query from a global address",
            OFF_LINK6,
            WEB6,
            130,
            0,
            1,
            0,
            drop,
        ),
        (
            "MLDv2 report with hop limit 64",
            "fe80::5",
            "ff02::16",
            143,
            0,
            64,
            0,
            drop,
        ),
    ];
    for (name, src, dst, ty, code, limit, len, expect) in cases {
        let m = b.marker();
        let mut p = icmp6(src, dst, ty, code, &m);
        if len > 0 {
            // 40 bytes of IPv6 header and 8 of ICMPv6 header.
            p.payload.resize(len - 48, b'.');
        }
        // Multicast is not forwarded; everything else is dropped.
        b.case(name, vec![hop_limit(p.ip(), limit)], &[], &m, expect, false);
    }

    // RFC 6980: never in fragments, not even in an atomic one.
    let m = b.marker();
    let mut p = icmp6(OFF_LINK6, WEB6, NS, 0, &m);
    p.ident = 0x6980;
    b.case(
        "NS in an atomic fragment",
        vec![hop_limit(p.fragment(0, 200, false), 255)],
        &[],
        &m,
        drop,
        false,
    );
    let m = b.marker();
    let mut p = icmp6(OFF_LINK6, WEB6, NS, 0, &m);
    p.ident = 0x6981;
    b.case(
        "NS in two fragments",
        vec![
            hop_limit(p.fragment(0, 24, true), 255),
            hop_limit(p.fragment(3, 200, false), 255),
        ],
        &[],
        &m,
        &[("drop_no_rule", 1), ("drop_fragment", 1)],
        false,
    );
}

//! ICMP errors pass without a rule lookup only when they could really have
//! been caused by the tracked flow they quote: addressed to the quoted
//! packet's source, with a code their type has, no longer than a router
//! may make them, not fragmented, quoting a packet of their own family.
//! Forgeries that quote a live flow are judged by the policy like any other
//! ICMP message (and the lab policy drops them: no rule admits ICMP from
//! their source).
//!
//! Each error is sent as a raw frame from a third host into the enforcing
//! gateway and checked twice: by the gateway's reason counters, and by
//! whether it reached a host behind it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, UdpSocket},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use segment::datapath::{Paths, tables::open_map};
use segment_common::{CtKey, CtValue, map_names};
use segment_tests::{
    agent::Agent,
    frames::{L4, Packet, ethernet},
    lab::{Host, Lab},
    policies::LAB_POLICY,
    traffic::{LONG, RawLink, ip, sa, udp_echo_server},
};

const WEB: &str = "10.10.0.2";
const DB: &str = "10.10.1.10";
const WEB6: &str = "fd00:10::2";
const ALICE6: &str = "fd00:9::5";
/// A router on the path: in no segment, so the policy admits nothing from it.
const ROUTER: &str = "192.0.2.1";
const ROUTER6: &str = "2001:db8::1";
const FLOW_PORT: u16 = 40123;
const FLOW_PORT6: u16 = 40124;

/// Reasons that count traffic other than the frame under test: the replies
/// of the flows the test opened, and non-IP frames of the links.
const OTHER_TRAFFIC: [&str; 2] = ["pass_conntrack", "pass_not_ip"];

struct Attacker<'a> {
    agent: &'a Agent,
    from: &'a Host,
    tx: RawLink,
    /// Where a frame that gets through would arrive.
    victims: Vec<RawLink>,
    n: u32,
}

impl Attacker<'_> {
    fn reasons(&self) -> BTreeMap<String, u64> {
        self.agent.reasons("ingress")
    }

    fn marker(&mut self) -> Vec<u8> {
        self.n += 1;
        format!("icmp-error-{:04}", self.n).into_bytes()
    }

    /// Sends one IP packet and checks the one reason it must be counted
    /// under, and whether it arrived.
    fn case(&mut self, name: &str, packet: Vec<u8>, marker: &[u8], reason: &str, arrives: bool) {
        let before = self.reasons();
        let frame = ethernet(self.from.gw_mac, self.from.mac, &[], &packet);
        self.tx.send(&frame);
        // The sockets queue what arrives meanwhile: the first one waits,
        // the others only read their queue.
        let arrived = self.victims.iter().enumerate().any(|(i, rx)| {
            let wait = Duration::from_millis(if i == 0 { 300 } else { 20 });
            !rx.capture_with(marker, wait).is_empty()
        });
        let after = self.reasons();
        let delta: BTreeMap<String, u64> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(k, d)| *d > 0 && !OTHER_TRAFFIC.contains(&k.as_str()))
            .collect();
        let want = BTreeMap::from([(reason.to_owned(), 1)]);
        assert_eq!(delta, want, "{name}: reason counters");
        assert_eq!(arrived, arrives, "{name}: arrived behind the gateway");
    }
}

/// An ICMP or ICMPv6 error from `src` to `dst` quoting `quoted`, with the
/// marker after the quote, padded so that the whole IP packet is `len` bytes.
fn icmp_error(
    src: &str,
    dst: &str,
    (ty, code): (u8, u8),
    quoted: &[u8],
    marker: &[u8],
    len: usize,
) -> Packet {
    let mut p = Packet::new(
        ip(src),
        ip(dst),
        L4::Icmp {
            ty,
            code,
            id: 0,
            seq: 0,
        },
    );
    let headers = if p.v6() { 40 + 8 } else { 20 + 8 };
    let mut payload = quoted.to_vec();
    payload.extend_from_slice(marker);
    assert!(headers + payload.len() <= len, "{len} bytes is too short");
    payload.resize(len - headers, 0);
    p.payload = payload;
    p
}

/// The first bytes of a UDP datagram of the flow, as an error quotes them.
fn quote(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut q = Packet::new(ip(src), ip(dst), L4::Udp { sport, dport });
    q.payload = b"probe".to_vec();
    let mut bytes = q.ip();
    bytes.truncate(if q.v6() { 48 } else { 28 });
    bytes
}

/// Opens a UDP flow the policy allows from `host` (`src:sport`) to `dst`,
/// and waits for the answer, so that the gateway tracks it.
fn open_udp_flow(host: &Host, src: &str, sport: u16, dst: std::net::SocketAddr) {
    let src = sa(ip(src), sport);
    let answered = host.ns.run(move || {
        let s = UdpSocket::bind(src).expect("bind the flow's source");
        s.set_read_timeout(Some(LONG)).ok();
        s.send_to(b"probe", dst).expect("send");
        let mut buf = [0u8; 64];
        matches!(s.recv_from(&mut buf), Ok((_, from)) if from == dst)
    });
    assert!(answered, "the allowed flow {src} -> {dst} got no answer");
}

#[test]
fn forged_icmp_errors_quoting_a_live_flow_are_judged_by_the_policy() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    agent.wait_until_quiet(
        "ingress",
        "pass_neighbor_discovery",
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    // Live, tracked flows: web -> db:5353 and alice -> web:80, over UDP.
    let _db_udp = udp_echo_server(&db.ns, sa(ip(DB), 5353));
    let _web_udp = udp_echo_server(&web.ns, sa(ip(WEB6), 80));
    open_udp_flow(web, WEB, FLOW_PORT, sa(ip(DB), 5353));
    open_udp_flow(laptop, ALICE6, FLOW_PORT6, sa(ip(WEB6), 80));

    // IPv4: errors about web's flow, injected from the laptop's link.
    let q4 = quote(WEB, FLOW_PORT, DB, 5353);
    let mut a = Attacker {
        agent: &agent,
        from: laptop,
        tx: RawLink::open(&laptop.ns, "eth0"),
        victims: vec![
            RawLink::open(&web.ns, "eth0"),
            RawLink::open(&db.ns, "eth0"),
        ],
        n: 0,
    };
    let unreachable = (3, 3);
    for (name, dst, kind, len, related) in [
        ("genuine port unreachable", WEB, unreachable, 100, true),
        ("genuine, exactly 576 bytes", WEB, unreachable, 576, true),
        ("600 bytes to a different host", DB, unreachable, 600, false),
        ("to the quoted destination", DB, unreachable, 100, false),
        ("unreachable with code 16", WEB, (3, 16), 100, false),
        ("time exceeded with code 2", WEB, (11, 2), 100, false),
        ("source quench with code 1", WEB, (4, 1), 100, false),
        ("577 bytes", WEB, unreachable, 577, false),
    ] {
        let m = a.marker();
        let p = icmp_error(ROUTER, dst, kind, &q4, &m, len).ip();
        let reason = if related {
            "pass_icmp_related"
        } else {
            "drop_no_rule"
        };
        a.case(name, p, &m, reason, related);
    }
    let m = a.marker();
    let p = icmp_error(ROUTER, WEB, unreachable, &q4, &m, 100);
    a.case(
        "first fragment of an error",
        p.fragment(0, 200, true),
        &m,
        "drop_no_rule",
        false,
    );
    let m = a.marker();
    let q6_in_v4 = quote(ALICE6, FLOW_PORT6, WEB6, 80);
    let p = icmp_error(ROUTER, WEB, unreachable, &q6_in_v4, &m, 120).ip();
    a.case("quoting an IPv6 packet", p, &m, "drop_no_rule", false);

    // IPv6: errors about alice's flow, injected from db's link.
    let q6 = quote(ALICE6, FLOW_PORT6, WEB6, 80);
    let mut a = Attacker {
        agent: &agent,
        from: db,
        tx: RawLink::open(&db.ns, "eth0"),
        victims: vec![
            RawLink::open(&laptop.ns, "eth0"),
            RawLink::open(&web.ns, "eth0"),
        ],
        n: 100,
    };
    let unreachable = (1, 4);
    for (name, dst, kind, len, related) in [
        ("genuine port unreachable", ALICE6, unreachable, 200, true),
        (
            "genuine packet too big, 1280 bytes",
            ALICE6,
            (2, 0),
            1280,
            true,
        ),
        ("to the quoted destination", WEB6, unreachable, 200, false),
        ("unreachable with code 8", ALICE6, (1, 8), 200, false),
        ("packet too big with code 1", ALICE6, (2, 1), 200, false),
        ("1281 bytes", ALICE6, unreachable, 1281, false),
    ] {
        let m = a.marker();
        let p = icmp_error(ROUTER6, dst, kind, &q6, &m, len).ip();
        let reason = if related {
            "pass_icmp_related"
        } else {
            "drop_no_rule"
        };
        a.case(name, p, &m, reason, related);
    }
    let m = a.marker();
    let p = icmp_error(ROUTER6, ALICE6, unreachable, &q6, &m, 200);
    a.case(
        "first fragment of an error",
        p.fragment(0, 300, true),
        &m,
        "drop_no_rule",
        false,
    );
}

/// Whether the gateway tracks an ICMP flow between `a` and `b` whose
/// "ports" are 0 (an echo flow with identifier 0), in either table.
fn tracks_echo_id0(agent: &Agent, a: IpAddr, b: IpAddr) -> bool {
    let paths = Paths::resolve(Some(agent.dirs.pin.clone()), Some(agent.dirs.state.clone()));
    let word = |a: IpAddr| match a {
        IpAddr::V4(v) => u32::from_ne_bytes(v.octets()),
        IpAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (a, b) = (word(a), word(b));
    [map_names::CONNTRACK, map_names::CONNTRACK_PENDING]
        .iter()
        .any(|name| {
            let map: BpfHashMap<MapData, CtKey, CtValue> =
                open_map(&paths, name).expect("open a pinned conntrack map");
            map.keys().filter_map(Result::ok).any(|k| {
                k.proto == 1
                    && (k.port_a, k.port_b) == (0, 0)
                    && ((k.addr_a[0], k.addr_b[0]) == (a, b)
                        || (k.addr_a[0], k.addr_b[0]) == (b, a))
            })
        })
}

/// An ICMP error has the "ports" 0 of an echo flow with identifier 0 (and
/// of any other non-echo ICMP message between the same hosts). It must
/// never pass as a packet of such a flow: that skipped every condition an
/// error must meet and the policy as well. Here the echo flow is tracked
/// from egress (sent by the gateway on the laptop's behalf, egress not
/// enforced), so the laptop's packets towards db find it from their side;
/// the policy admits no ICMP from the laptop to db.
#[test]
fn an_icmp_error_is_never_part_of_an_echo_flow_with_identifier_0() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    agent.wait_until_quiet(
        "ingress",
        "pass_neighbor_discovery",
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    let alice = ip("10.10.9.5");
    // An echo request 10.10.9.5 -> db, identifier 0, leaving the gateway
    // towards db: tracked at egress with the laptop's address as initiator.
    let out = RawLink::open(&lab.gw, &db.gw_iface);
    let request = Packet::new(
        alice,
        ip(DB),
        L4::Icmp {
            ty: 8,
            code: 0,
            id: 0,
            seq: 1,
        },
    );
    out.send(&ethernet(db.mac, db.gw_mac, &[], &request.ip()));
    let deadline = std::time::Instant::now() + LONG;
    while !tracks_echo_id0(&agent, alice, ip(DB)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the echo request leaving towards db was not tracked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Errors from the laptop's link to db with the flow's addresses: one
    // quoting a flow nobody tracks, one whose quote is cut short. Neither
    // is related; the policy drops both.
    let mut a = Attacker {
        agent: &agent,
        from: laptop,
        tx: RawLink::open(&laptop.ns, "eth0"),
        victims: vec![RawLink::open(&db.ns, "eth0")],
        n: 200,
    };
    let untracked = quote(DB, 5353, "10.10.9.5", 40999);
    let m = a.marker();
    let p = icmp_error("10.10.9.5", DB, (3, 3), &untracked, &m, 100).ip();
    a.case(
        "an error quoting an untracked flow",
        p,
        &m,
        "drop_no_rule",
        false,
    );
    let m = a.marker();
    let p = icmp_error("10.10.9.5", DB, (3, 3), &untracked[..22], &m, 100).ip();
    a.case("an error with a short quote", p, &m, "drop_no_rule", false);
    assert!(
        tracks_echo_id0(&agent, alice, ip(DB)),
        "the echo flow itself is still tracked"
    );
}

//! Conntrack's trust boundary, with real traffic through the enforcing
//! gateway and frames forged byte by byte on the hosts' links: packets that
//! spoof the gateway's own addresses (martians), replies injected from the
//! wrong side, entries admitted by a policy no longer in force.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use segment::{
    control::{Request, request},
    datapath::{Paths, tables::open_map},
};
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_FIN_A, CT_F_FIN_B, CT_F_INITIATOR_A, CT_F_MIDSTREAM, CT_F_RST,
    CtKey, CtValue, map_names,
};
use segment_tests::{
    agent::Agent,
    frames::{ACK, FIN, L4, Packet, RST, SYN, ethernet},
    lab::{Host, Lab},
    policies::LAB_POLICY,
    traffic::{LONG, RawLink, SHORT, checksum, connect, echo, ip, sa, tcp_echo_server},
};

/// Ingress reason counters (name → packets) of the agent's datapath.
fn ingress_reasons(agent: &Agent) -> BTreeMap<String, u64> {
    agent.stats()["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["hook"] == "ingress")
        .map(|r| {
            (
                r["reason"].as_str().expect("name").to_owned(),
                r["packets"].as_u64().expect("packets"),
            )
        })
        .collect()
}

/// What changed between two readings, leaving out what the links and the
/// live connections of a test produce by themselves.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    const IGNORED: [&str; 3] = ["pass_conntrack", "pass_neighbor_discovery", "pass_not_ip"];
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(k, d)| *d > 0 && !IGNORED.contains(&k.as_str()))
        .collect()
}

fn want(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// A forged frame sent by `from` on its own link, towards the gateway.
fn inject(tx: &RawLink, from: &Host, ip_packet: &[u8]) {
    tx.send(&ethernet(from.gw_mac, from.mac, &[], ip_packet));
}

fn marked(mut p: Packet, marker: &str) -> Packet {
    p.payload = marker.as_bytes().to_vec();
    p
}

/// Waits until `cond` holds, or fails with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn packets_spoofing_the_gateways_own_addresses_are_martians() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // The gateway itself (10.10.1.254 on db's link, in no segment) holds a
    // connection to db: its egress hook tracks it.
    let mut conn = connect(&lab.gw, sa(db.ip4(), 5432));
    assert!(
        echo(&mut conn, b"before"),
        "the gateway's own connection works"
    );
    let gw_port = conn.local_addr().expect("local address").port();
    let tx = RawLink::open(&laptop.ns, "eth0");
    let rx_db = RawLink::open(&db.ns, "eth0");

    let before = ingress_reasons(&agent);
    // From the laptop's link: the gateway's own connection, as if the
    // gateway had sent the next segment (it matches the tracked flow's
    // addresses and ports exactly).
    let own_flow = marked(
        Packet::new(
            ip("10.10.1.254"),
            db.ip4(),
            L4::Tcp {
                sport: gw_port,
                dport: 5432,
                flags: ACK,
            },
        ),
        "martian-own-flow",
    );
    inject(&tx, laptop, &own_flow.ip());
    // The gateway's address on the laptop's own link, in IPv6.
    let own_v6 = marked(
        Packet::new(
            ip("fd00:9::fe"),
            db.ip6(),
            L4::Udp {
                sport: 5353,
                dport: 5353,
            },
        ),
        "martian-own-v6",
    );
    inject(&tx, laptop, &own_v6.ip());
    // A lab host's address where it does not belong (web's, from the
    // laptop's link) is not one of the gateway's: the policy judges it, and
    // web → db:22 is denied.
    let foreign = marked(
        Packet::new(
            ip("10.10.0.2"),
            db.ip4(),
            L4::Tcp {
                sport: 40000,
                dport: 22,
                flags: SYN,
            },
        ),
        "martian-foreign",
    );
    inject(&tx, laptop, &foreign.ip());
    let seen = rx_db.capture_with(b"martian-", Duration::from_millis(300));
    assert!(seen.is_empty(), "{} forged frames reached db", seen.len());
    let mut got = BTreeMap::new();
    wait_for("the three forged frames to be counted", LONG, || {
        got = delta(&before, &ingress_reasons(&agent));
        got.values().sum::<u64>() >= 3
    });
    assert_eq!(got, want(&[("drop_martian", 2), ("drop_no_rule", 1)]));
    assert!(
        echo(&mut conn, b"after"),
        "the gateway's own connection still works"
    );
}

#[test]
fn replies_forged_on_the_wrong_link_are_judged_by_the_policy() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // A flow routed through the gateway (created at ingress on web's link)
    // and one of the gateway's own (created at egress on db's link).
    let mut routed = connect(&web.ns, sa(db.ip4(), 5432));
    let mut own = connect(&lab.gw, sa(db.ip4(), 5432));
    assert!(echo(&mut routed, b"routed before"));
    assert!(echo(&mut own, b"own before"));
    let web_port = routed.local_addr().expect("local address").port();
    let gw_port = own.local_addr().expect("local address").port();
    let tx = RawLink::open(&laptop.ns, "eth0");
    let rx_web = RawLink::open(&web.ns, "eth0");

    // The laptop, on its own link, claims to be db answering both flows:
    // right addresses, right ports, wrong side.
    const N: u64 = 20;
    let before = ingress_reasons(&agent);
    for i in 0..N {
        let to_web = marked(
            Packet::new(
                db.ip4(),
                web.ip4(),
                L4::Tcp {
                    sport: 5432,
                    dport: web_port,
                    flags: ACK,
                },
            ),
            &format!("forged-reply-web-{i}"),
        );
        inject(&tx, laptop, &to_web.ip());
        let to_gw = marked(
            Packet::new(
                db.ip4(),
                ip("10.10.1.254"),
                L4::Tcp {
                    sport: 5432,
                    dport: gw_port,
                    flags: ACK,
                },
            ),
            &format!("forged-reply-gw-{i}"),
        );
        inject(&tx, laptop, &to_gw.ip());
    }
    let seen = rx_web.capture_with(b"forged-reply-web-", Duration::from_millis(300));
    assert!(seen.is_empty(), "{} forged replies reached web", seen.len());
    let mut got = BTreeMap::new();
    wait_for("the forged replies to be counted", LONG, || {
        got = delta(&before, &ingress_reasons(&agent));
        got.values().sum::<u64>() >= 2 * N
    });
    // db → web and db → the gateway are not allowed: dropped, and none of
    // them passed as conntrack (the flows' own packets do, so that counter
    // is checked by the exchanges below rather than by its delta).
    assert_eq!(got, want(&[("drop_no_rule", 2 * N)]));
    // The real replies, entering through db's link, keep flowing.
    assert!(echo(&mut routed, b"routed after"), "the routed flow works");
    assert!(echo(&mut own, b"own after"), "the gateway's own flow works");
}

fn paths(agent: &Agent) -> Paths {
    Paths::resolve(Some(agent.dirs.pin.clone()), Some(agent.dirs.state.clone()))
}

fn conntrack(agent: &Agent) -> BpfHashMap<MapData, CtKey, CtValue> {
    open_map(&paths(agent), map_names::CONNTRACK).expect("open the pinned conntrack map")
}

fn unconfirmed(agent: &Agent) -> BpfHashMap<MapData, CtKey, CtValue> {
    open_map(&paths(agent), map_names::CONNTRACK_PENDING)
        .expect("open the pinned unconfirmed-flow map")
}

fn find_tcp(
    map: &BpfHashMap<MapData, CtKey, CtValue>,
    port: u16,
    other_port: u16,
) -> Option<(CtKey, CtValue)> {
    map.iter().filter_map(Result::ok).find(|(k, _)| {
        k.proto == 6
            && ((k.port_a, k.port_b) == (port, other_port)
                || (k.port_a, k.port_b) == (other_port, port))
    })
}

/// The confirmed TCP flow between `port` and `other_port`, if any.
fn tcp_entry(agent: &Agent, port: u16, other_port: u16) -> Option<(CtKey, CtValue)> {
    find_tcp(&conntrack(agent), port, other_port)
}

#[test]
fn a_revoked_flow_stops_at_its_next_packet_even_when_the_flush_missed_it() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _db = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _web = tcp_echo_server(&web.ns, sa(web.ip4(), 80));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let first = agent.stats()["generation"].as_u64().expect("generation");
    // web → db:5432, which the next policy revokes, and staff (the laptop)
    // → web:80, which both policies allow.
    let mut revoked = connect(&web.ns, sa(db.ip4(), 5432));
    let mut kept = connect(&laptop.ns, sa(web.ip4(), 80));
    assert!(echo(&mut revoked, b"revoked before"));
    assert!(echo(&mut kept, b"kept before"));
    let revoked_port = revoked.local_addr().expect("local address").port();
    let kept_port = kept.local_addr().expect("local address").port();
    let (old_key, old_value) = tcp_entry(&agent, revoked_port, 5432).expect("web → db is tracked");
    assert_eq!(u64::from(old_value.generation), first);

    let without_web_db = LAB_POLICY.replace(
        "  - action: accept\n    src: [tag:web]\n    dst: [tag:db-server:5432]\n    proto: tcp\n",
        "",
    );
    assert_ne!(
        without_web_db, LAB_POLICY,
        "the rule to revoke is in the policy"
    );
    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "revoke.yaml".into(),
            policy: without_web_db,
            confirm_within_secs: None,
            force: false,
        },
        LONG,
    )
    .expect("the agent answers");
    assert!(resp.ok, "{}", resp.message);
    let second = resp.data["generation"].as_u64().expect("generation");
    assert!(resp.data["flows_flushed"].as_u64().expect("flushed") >= 1);
    assert!(
        tcp_entry(&agent, revoked_port, 5432).is_none(),
        "the flush removed it"
    );

    // What the flush cannot see: a packet that still read the old slot
    // while the switch happened re-creates the entry behind the flush's
    // walk, as the old policy admitted it. Put exactly that entry back.
    conntrack(&agent)
        .insert(old_key, old_value, 0)
        .expect("restore the entry");
    let before = ingress_reasons(&agent);
    revoked.set_read_timeout(Some(SHORT)).expect("timeout");
    assert!(
        !echo(&mut revoked, b"revoked after"),
        "the revoked flow still flows on an entry of generation {first}"
    );
    let got = delta(&before, &ingress_reasons(&agent));
    assert!(
        got.get("drop_no_rule").copied().unwrap_or(0) >= 1,
        "web's next segment was judged by the policy and dropped: {got:?}"
    );
    assert!(
        tcp_entry(&agent, revoked_port, 5432).is_none(),
        "the datapath removed the stale entry"
    );

    // The flow both policies allow is re-judged once and keeps flowing,
    // now under the new generation.
    let (_, stale) = tcp_entry(&agent, kept_port, 80).expect("laptop → web is tracked");
    assert_eq!(
        u64::from(stale.generation),
        first,
        "the flush leaves kept flows alone"
    );
    assert!(echo(&mut kept, b"kept after"), "the kept flow still flows");
    let (_, fresh) = tcp_entry(&agent, kept_port, 80).expect("still tracked");
    assert_eq!(u64::from(fresh.generation), second);
}

#[test]
fn a_flush_over_more_flows_than_one_batch_removes_exactly_the_forbidden_ones() {
    // More entries than one batch lookup returns (4,096), so the scan
    // resumes from the kernel's cursor several times in each table.
    const PER_KIND: u16 = 6_000;
    const PENDING_PER_KIND: u16 = 700;
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let generation = agent.stats()["generation"].as_u64().expect("generation") as u32;
    let word = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
        std::net::IpAddr::V6(_) => unreachable!("the lab's first addresses are IPv4"),
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own (the
    // datapath's clock, so the agent sees the entries as fresh).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    // web → db:5432 is allowed (kept); web → db:5433 is not (removed).
    let entry = |sport: u16, dport: u16| {
        (
            CtKey {
                addr_a: word(web.ip4()),
                addr_b: word(db.ip4()),
                port_a: sport,
                port_b: dport,
                proto: 6,
                family: 4,
                _pad: [0; 2],
            },
            CtValue {
                last_seen_ns: now,
                created_ns: now,
                flags: CT_F_INITIATOR_A,
                generation,
                ..CtValue::default()
            },
        )
    };
    let mut kept = std::collections::HashSet::new();
    let mut forbidden = std::collections::HashSet::new();
    for (mut map, n, first_port) in [
        (conntrack(&agent), PER_KIND, 1024),
        (unconfirmed(&agent), PENDING_PER_KIND, 1024 + PER_KIND),
    ] {
        for i in 0..n {
            for (dport, set) in [(5432, &mut kept), (5433, &mut forbidden)] {
                let (k, v) = entry(first_port + i, dport);
                map.insert(k, v, 0).expect("insert a flow");
                set.insert(k);
            }
        }
    }

    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "same-rules.yaml".into(),
            policy: format!("{LAB_POLICY}# the same rules\n"),
            confirm_within_secs: None,
            force: false,
        },
        LONG,
    )
    .expect("the agent answers");
    assert!(resp.ok, "{}", resp.message);
    let total = usize::from(PER_KIND + PENDING_PER_KIND);
    assert_eq!(
        resp.data["flows_flushed"].as_u64(),
        Some(total as u64),
        "{}",
        resp.data
    );
    assert!(
        resp.data["flows_scanned"].as_u64().unwrap_or(0) >= 2 * total as u64,
        "{}",
        resp.data
    );

    // Read back one element at a time (not the flush's batch path).
    let left: std::collections::HashSet<CtKey> = [conntrack(&agent), unconfirmed(&agent)]
        .iter()
        .flat_map(|m| m.keys().filter_map(Result::ok).collect::<Vec<_>>())
        .filter(|k| kept.contains(k) || forbidden.contains(k))
        .collect();
    assert_eq!(left.len(), kept.len(), "every allowed flow is kept");
    assert!(left == kept, "exactly the allowed flows are left");
    let gone: BpfHashMap<MapData, CtKey, u64> =
        open_map(&paths(&agent), map_names::CONNTRACK_REVOKED).expect("the revoked-flow map");
    let revoked: std::collections::HashSet<CtKey> = gone
        .keys()
        .filter_map(Result::ok)
        .filter(|k| forbidden.contains(k))
        .collect();
    assert!(
        revoked == forbidden,
        "{} of {} removed flows remembered as revoked",
        revoked.len(),
        forbidden.len()
    );
}

/// An IPv4 TCP segment with every field the test chooses (and a correct
/// checksum): what a blind attacker on a link can send.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per header field the test forges"
)]
fn tcp4(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = checksum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + t.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&t);
    ip
}

/// (source port, destination port, seq, payload length) of an IPv4 TCP
/// frame from `src`.
fn tcp_of(frame: &[u8], src: std::net::Ipv4Addr) -> Option<(u16, u16, u32, u32)> {
    let ip = frame.get(14..)?;
    if ip.first()? >> 4 != 4 || ip.get(9)? != &6 || ip.get(12..16)? != src.octets() {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let t = ip.get(ihl..total)?;
    let doff = usize::from(t.get(12)? >> 4) * 4;
    Some((
        u16::from_be_bytes([t[0], t[1]]),
        u16::from_be_bytes([t[2], t[3]]),
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        (t.len() - doff) as u32,
    ))
}

/// db's next sequence number on the connection from the gateway's `port`:
/// one echo, watched on db's link.
fn db_next_seq(conn: &mut TcpStream, rx_db: &RawLink, db: std::net::Ipv4Addr, port: u16) -> u32 {
    let marker = format!("seq-probe-{port}");
    conn.write_all(marker.as_bytes()).expect("write");
    let frames = rx_db.capture_with(marker.as_bytes(), Duration::from_millis(300));
    let mut back = vec![0u8; marker.len()];
    conn.read_exact(&mut back).expect("the echo comes back");
    frames
        .iter()
        .filter_map(|f| tcp_of(f, db))
        .filter(|(sport, dport, _, _)| (*sport, *dport) == (5432, port))
        .map(|(_, _, seq, len)| seq.wrapping_add(len))
        .next_back()
        .expect("db's answer was seen on its link")
}

#[test]
fn blind_resets_change_nothing_in_window_ones_close_and_egress_readmits() {
    let lab = Lab::standard();
    let db = lab.host("db");
    let std::net::IpAddr::V4(db4) = db.ip4() else {
        unreachable!()
    };
    let gw4: std::net::Ipv4Addr = "10.10.1.254".parse().expect("address");
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let link = RawLink::open(&db.ns, "eth0");
    // Connections the gateway itself opened to db (tracked at egress).
    let mut live = connect(&lab.gw, sa(db.ip4(), 5432));
    let mut doomed = connect(&lab.gw, sa(db.ip4(), 5432));
    let live_port = live.local_addr().expect("local address").port();
    let doomed_port = doomed.local_addr().expect("local address").port();
    let next = db_next_seq(&mut live, &link, db4, live_port);

    // A blind spray from db's side of the link (the side the replies come
    // from): a RST for every ephemeral port, and, at the live connection's
    // port, a thousand more RSTs and FINs with sequence numbers from the
    // half of the sequence space no window reaches.
    let far = next.wrapping_add(1 << 31);
    let mut sent = 0u64;
    let send = |ip: Vec<u8>| inject(&link, db, &ip);
    let before = ingress_reasons(&agent);
    for port in 32768..=60999u16 {
        send(tcp4(db4, gw4, 5432, port, far, 0, RST, b""));
        sent += 1;
    }
    for i in 0..1000u32 {
        let seq = far.wrapping_add(i.wrapping_mul(4096));
        send(tcp4(db4, gw4, 5432, live_port, seq, 0, RST, b""));
        send(tcp4(db4, gw4, 5432, live_port, seq, 0, FIN | ACK, b""));
        sent += 2;
    }
    // The RSTs at other ports match no flow (db → the gateway is denied);
    // those at the live connection match it and pass, changing nothing.
    wait_for("the spray to be judged", Duration::from_secs(20), || {
        let r = ingress_reasons(&agent);
        let n = |k: &str| r.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        n("pass_conntrack") + n("drop_no_rule") >= sent
    });
    let (_, v) = tcp_entry(&agent, live_port, 5432).expect("the live connection is tracked");
    assert_eq!(
        v.flags & (CT_F_RST | CT_F_FIN_A | CT_F_FIN_B),
        0,
        "{sent} out-of-window RSTs/FINs changed the entry's state"
    );
    assert!(echo(&mut live, b"after the spray"), "the connection works");

    // A RST in window still closes the entry.
    let doomed_next = db_next_seq(&mut doomed, &link, db4, doomed_port);
    send(tcp4(db4, gw4, 5432, doomed_port, doomed_next, 0, RST, b""));
    wait_for("the in-window RST to close the entry", LONG, || {
        tcp_entry(&agent, doomed_port, 5432).is_some_and(|(_, v)| v.flags & CT_F_RST != 0)
    });

    // The live connection's entry goes (as when it expires or is evicted):
    // the gateway's next segment re-creates it at egress, and db's replies
    // pass again.
    let (k, _) = tcp_entry(&agent, live_port, 5432).expect("tracked");
    conntrack(&agent).remove(&k).expect("remove the entry");
    assert!(tcp_entry(&agent, live_port, 5432).is_none());
    assert!(
        echo(&mut live, b"after expiry"),
        "the next outgoing segment re-admitted the flow"
    );
    let (_, v) = tcp_entry(&agent, live_port, 5432).expect("tracked again");
    assert_eq!(
        v.flags & (CT_F_EGRESS | CT_F_MIDSTREAM),
        CT_F_EGRESS | CT_F_MIDSTREAM
    );
}

#[test]
fn a_flood_of_new_flows_does_not_evict_a_live_idle_connection() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let std::net::IpAddr::V4(db4) = db.ip4() else {
        unreachable!()
    };
    let _server = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let agent = Agent::start(
        &lab.gw,
        LAB_POLICY,
        &lab.gw_ifaces(),
        &["--conntrack-size", "1024"],
    );
    // A live connection web → db, idle from here on.
    let mut live = connect(&web.ns, sa(db.ip4(), 5432));
    assert!(echo(&mut live, b"before the flood"));
    let port = live.local_addr().expect("local address").port();
    let (_, original) = tcp_entry(&agent, port, 5432).expect("the handshake confirmed it");
    assert_eq!(original.flags & (CT_F_EGRESS | CT_F_MIDSTREAM), 0);

    // 10 × the table: allowed new flows (web's segment → db:5432) from 64
    // spoofed sources, each a SYN then a blind ACK, forged on web's link.
    const FLOWS: u32 = 10 * 1024;
    let tx = RawLink::open(&web.ns, "eth0");
    let before = ingress_reasons(&agent);
    for i in 0..FLOWS {
        let src = std::net::Ipv4Addr::new(10, 10, 0, 100 + (i % 64) as u8);
        let sport = 20_000 + (i / 64) as u16;
        let isn = i.wrapping_mul(0x9e37_79b9);
        inject(&tx, web, &tcp4(src, db4, sport, 5432, isn, 0, SYN, b""));
        let guess = isn ^ 0x5a5a_5a5a;
        inject(
            &tx,
            web,
            &tcp4(src, db4, sport, 5432, isn.wrapping_add(1), guess, ACK, b""),
        );
    }
    // Every SYN passes by rule; a blind ACK passes by rule or as part of
    // its (unconfirmed) flow.
    wait_for("the flood to be judged", Duration::from_secs(30), || {
        let r = ingress_reasons(&agent);
        let n = |k: &str| r.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        n("pass_rule") + n("pass_conntrack") >= u64::from(2 * FLOWS)
    });
    let stats = agent.stats();
    let maps = stats["maps"].as_array().expect("maps");
    let table = |name: &str| {
        maps.iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("stats lists {name}: {stats}"))
            .clone()
    };
    assert_eq!(table("conntrack")["capacity"], 1024);
    assert_eq!(table("conntrack_unconfirmed")["capacity"], 1024);
    assert!(
        table("conntrack_unconfirmed")["entries"]
            .as_u64()
            .expect("entries")
            > 0,
        "the flood's flows were tracked as unconfirmed: {stats}"
    );
    // None of them confirmed (blind ACKs guess no sequence number), so the
    // live connection's entry is still the one its handshake confirmed.
    let (_, now) = tcp_entry(&agent, port, 5432).expect("the live connection was not evicted");
    assert_eq!(now.created_ns, original.created_ns);
    assert!(echo(&mut live, b"after the flood"), "its replies pass");
    assert!(find_tcp(&unconfirmed(&agent), port, 5432).is_none());
}

/// The flow between `port` and `other_port` in either table (confirmed or
/// not yet).
fn any_tcp_entry(agent: &Agent, port: u16, other_port: u16) -> Option<CtValue> {
    find_tcp(&conntrack(agent), port, other_port)
        .or_else(|| find_tcp(&unconfirmed(agent), port, other_port))
        .map(|(_, v)| v)
}

/// RFC 7323 2.2: a window is scaled only once both SYNs are known to carry
/// the window scale option. An initiator's segment that comes before the
/// responder's SYN-ACK cannot be scaled yet: scaled by its own SYN's shift
/// (14), a 65,535-byte window became a gigabyte, and the responder's side
/// then took a RST from anywhere in its sequence space as in window.
/// Both ends are forged on their links with addresses no host has, so no
/// real stack answers in between.
#[test]
fn windows_are_not_scaled_before_the_syn_ack_says_both_sides_scale() {
    let lab = Lab::standard();
    let (web, laptop) = (lab.host("web"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    // staff → web:80 is allowed.
    let (client, server) = (ip("10.10.9.99"), ip("10.10.0.99"));
    let (cport, sport) = (40_000u16, 80u16);
    let from_client = RawLink::open(&laptop.ns, "eth0");
    let from_server = RawLink::open(&web.ns, "eth0");
    let segment = |from_c: bool, flags: u8, seq: u32, ack: u32, wscale: Option<u8>, data: &[u8]| {
        let (s, d, sp, dp) = if from_c {
            (client, server, cport, sport)
        } else {
            (server, client, sport, cport)
        };
        let mut p = Packet::new(
            s,
            d,
            L4::Tcp {
                sport: sp,
                dport: dp,
                flags,
            },
        );
        p.tcp_seq = seq;
        p.tcp_ack = ack;
        p.tcp_window = 65_535;
        p.tcp_wscale = wscale;
        p.payload = data.to_vec();
        if from_c {
            inject(&from_client, laptop, &p.ip());
        } else {
            inject(&from_server, web, &p.ip());
        }
    };
    segment(true, SYN, 1000, 0, Some(14), b"");
    wait_for("the SYN to be tracked", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some()
    });
    // Ten bytes from the initiator before any SYN-ACK.
    segment(true, ACK, 1001, 0, None, b"0123456789");
    wait_for("the early segment to be learnt", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some_and(|v| v.end[0] == 1011)
    });
    let v = any_tcp_entry(&agent, cport, sport).expect("tracked");
    assert_eq!(
        v.maxwin[0], 65_535,
        "a window before the SYN-ACK was scaled: {v:?}"
    );
    // The responder's SYN-ACK (it scales by 0), then a RST from it
    // 200,000 bytes past its sequence space: outside any window the
    // initiator advertised.
    segment(false, SYN | ACK, 5000, 1011, Some(0), b"");
    wait_for("the SYN-ACK to be learnt", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some_and(|v| v.seen & 2 != 0)
    });
    let before = ingress_reasons(&agent);
    segment(false, RST, 5001 + 200_000, 0, None, b"");
    wait_for("the blind RST to be judged", LONG, || {
        let after = ingress_reasons(&agent);
        after.get("pass_conntrack") > before.get("pass_conntrack")
    });
    let v = any_tcp_entry(&agent, cport, sport).expect("still tracked");
    assert_eq!(
        v.flags & CT_F_RST,
        0,
        "a RST outside the window closed the flow: {v:?}"
    );
    // In window, a RST still closes it.
    segment(false, RST, 5001, 0, None, b"");
    wait_for("the in-window RST to close the flow", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some_and(|v| v.flags & CT_F_RST != 0)
    });
}

/// README "Conntrack": windows are "taken unscaled for a flow picked up at
/// egress": its initiator's SYN was never seen, so a SYN-ACK met later in
/// the flow cannot turn scaling on for the responder (it did, by the
/// SYN-ACK's own shift of 14).
#[test]
fn a_flow_picked_up_at_egress_stays_unscaled() {
    let lab = Lab::standard();
    let web = lab.host("web");
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let (client, server) = (ip("10.10.9.98"), ip("10.10.0.98"));
    let (cport, sport) = (40_001u16, 80u16);
    // The gateway's own side of the link towards web (egress), and web's.
    let egress = RawLink::open(&lab.gw, &web.gw_iface);
    let from_server = RawLink::open(&web.ns, "eth0");
    let segment = |from_c: bool, flags: u8, seq: u32, window: u16, wscale: Option<u8>| {
        let (s, d, sp, dp) = if from_c {
            (client, server, cport, sport)
        } else {
            (server, client, sport, cport)
        };
        let mut p = Packet::new(
            s,
            d,
            L4::Tcp {
                sport: sp,
                dport: dp,
                flags,
            },
        );
        p.tcp_seq = seq;
        p.tcp_window = window;
        p.tcp_wscale = wscale;
        if from_c {
            egress.send(&ethernet(web.mac, web.gw_mac, &[], &p.ip()));
        } else {
            inject(&from_server, web, &p.ip());
        }
    };
    // A segment without SYN leaving towards web: picked up (egress is not
    // enforced by the lab policy).
    segment(true, ACK, 1000, 65_535, None);
    wait_for("the segment to be picked up", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some()
    });
    // The responder: a SYN-ACK offering a shift of 14, then a segment with
    // a 65,535-byte window.
    segment(false, SYN | ACK, 7000, 1000, Some(14));
    wait_for("the SYN-ACK to be learnt", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some_and(|v| v.seen & 2 != 0)
    });
    segment(false, ACK, 7001, 65_535, None);
    wait_for("the responder's window to be learnt", LONG, || {
        any_tcp_entry(&agent, cport, sport).is_some_and(|v| v.maxwin[1] >= 65_535)
    });
    let v = any_tcp_entry(&agent, cport, sport).expect("tracked");
    assert_eq!(v.flags & CT_F_MIDSTREAM, CT_F_MIDSTREAM, "{v:?}");
    assert_eq!(
        v.maxwin[1], 65_535,
        "a picked-up flow's window was scaled: {v:?}"
    );
}

/// An audited flow (let through only because its destination audits) that
/// the new policy admits by a rule stops being audited, whether or not its
/// hook is enforced any more: the agent's flush said so, but the datapath's
/// own re-judge (what stops a flow the flush missed) kept the audit mark
/// whenever the hook was no longer enforced, and the flow's packets went on
/// counting as would-drop under a policy that admits them.
#[test]
fn a_rule_ends_an_audit_mark_at_the_re_judge_on_an_unenforced_hook_too() {
    let lab = Lab::standard();
    let db = lab.host("db");
    let audited = format!(
        "enforce: {{ingress: true, egress: true}}\nmodes:\n  tag:db-server: audit\n{LAB_POLICY}"
    );
    let agent = Agent::start(&lab.gw, &audited, &lab.gw_ifaces(), &[]);
    // The gateway itself sends to db:9999: no rule, egress enforced, db
    // audits: tracked at egress as audited.
    let dst = sa(db.ip4(), 9999);
    let socket = lab.gw.run(move || {
        let s = std::net::UdpSocket::bind("10.10.1.254:0").expect("bind");
        s.send_to(b"audited", dst).expect("send");
        s
    });
    let port = socket.local_addr().expect("local address").port();
    let find = || {
        [conntrack(&agent), unconfirmed(&agent)]
            .iter()
            .find_map(|m| {
                m.iter().filter_map(Result::ok).find(|(k, _)| {
                    k.proto == 17
                        && ((k.port_a, k.port_b) == (port, 9999)
                            || (k.port_a, k.port_b) == (9999, port))
                })
            })
    };
    wait_for("the audited flow to be tracked", LONG, || find().is_some());
    let (key, old) = find().expect("tracked");
    assert_eq!(old.flags & CT_F_AUDIT, CT_F_AUDIT, "{old:?}");

    // Egress no longer enforced, and a rule now admits the flow.
    let admitted = audited
        .replace("egress: true", "egress: false")
        .replace(
            "acls:\n",
            "acls:\n  - action: accept\n    src: [10.10.1.254]\n    dst: [\"db:9999\"]\n    proto: udp\n",
        );
    let resp = request(
        &paths(&agent),
        &Request::Apply {
            name: "admitted.yaml".into(),
            policy: admitted,
            confirm_within_secs: None,
            force: true,
        },
        LONG,
    )
    .expect("the agent answers");
    assert!(resp.ok, "{}", resp.message);
    let second = resp.data["generation"].as_u64().expect("generation");
    // As if the flush had missed it: the entry as the old policy left it.
    for mut m in [conntrack(&agent), unconfirmed(&agent)] {
        let _ = m.remove(&key);
    }
    unconfirmed(&agent)
        .insert(key, old, 0)
        .expect("restore the entry");
    socket.send_to(b"admitted", dst).expect("send");
    wait_for("the next packet to re-judge the flow", LONG, || {
        find().is_some_and(|(_, v)| u64::from(v.generation) == second)
    });
    let (_, v) = find().expect("kept");
    assert_eq!(
        v.flags & CT_F_AUDIT,
        0,
        "a flow a rule admits is still audited: {v:?}"
    );
}

//! Real traffic through a gateway enforcing a policy with native XDP on its
//! veth ends: what the policy allows gets through (with replies, thanks to
//! conntrack), what it does not is dropped, in both IP versions, over VLANs
//! and QinQ, and every drop is counted for its segments.

use std::time::Duration;

use segment_tests::{
    agent::Agent,
    frames::{TPID_8021AD, TPID_8021Q},
    lab::Lab,
    policies::LAB_POLICY,
    traffic::{
        LONG, RawLink, SHORT, Tcp, assert_tcp, ip, ping, sa, tcp_echo_server, tcp_exchange,
        udp_echo_server, udp_exchange, udp_send,
    },
    vlan::Trunk,
    wait,
};

#[test]
fn tcp_follows_the_policy_in_one_direction_only() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let _s3 = tcp_echo_server(&web.ns, sa(web.ip4(), 5432));

    // Allowed: the connection opens and data flows both ways (the replies
    // pass through conntrack, no rule allows db → web).
    assert_tcp(&web.ns, None, sa(db.ip4(), 5432), Tcp::Echoed);
    // carol is an admin; alice, on the same laptop, is not.
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.7")),
        sa(db.ip4(), 22),
        Tcp::Echoed,
    );
    assert_tcp(
        &laptop.ns,
        Some(ip("10.10.9.5")),
        sa(db.ip4(), 22),
        Tcp::TimedOut,
    );
    // Denied: a timeout, not a refusal (the SYN never reached db).
    assert_tcp(&web.ns, None, sa(db.ip4(), 22), Tcp::TimedOut);
    // The reverse of a directional rule is refused.
    assert_tcp(&db.ns, None, sa(web.ip4(), 5432), Tcp::TimedOut);
    // A port nobody listens on, but allowed: the RST comes back.
    assert_eq!(
        tcp_exchange(&laptop.ns, None, sa(web.ip4(), 80), LONG),
        Tcp::Refused
    );
}

#[test]
fn udp_and_icmp_echo_follow_the_policy_and_replies_pass() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _u = udp_echo_server(&db.ns, sa(db.ip4(), 5353));
    assert!(
        udp_exchange(&web.ns, None, sa(db.ip4(), 5353), LONG),
        "allowed UDP with its reply"
    );
    assert!(
        !udp_exchange(&laptop.ns, None, sa(db.ip4(), 5353), SHORT),
        "denied UDP"
    );
    // staff → web allows icmp (no proto: tcp, udp, icmp); the echo reply
    // passes through conntrack.
    assert!(ping(&laptop.ns, None, web.ip4(), LONG), "allowed ping");
    assert!(!ping(&web.ns, None, laptop.ip4(), SHORT), "denied ping");
    assert!(!ping(&db.ns, None, web.ip4(), SHORT), "denied ping");
    // IPv6 ICMP likewise.
    assert!(ping(&laptop.ns, None, web.ip6(), LONG), "allowed ping6");
    assert!(!ping(&db.ns, None, web.ip6(), SHORT), "denied ping6");
}

#[test]
fn ipv6_is_enforced() {
    let lab = Lab::standard();
    let (web, db, laptop) = (lab.host("web"), lab.host("db"), lab.host("laptop"));
    let _agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _s1 = tcp_echo_server(&web.ns, sa(web.ip6(), 8443));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip6(), 5432));
    assert_tcp(&laptop.ns, None, sa(web.ip6(), 8443), Tcp::Echoed);
    assert_tcp(&web.ns, None, sa(db.ip6(), 5432), Tcp::Echoed);
    assert_tcp(&laptop.ns, None, sa(db.ip6(), 5432), Tcp::TimedOut);
    assert_tcp(&db.ns, None, sa(web.ip6(), 8443), Tcp::TimedOut);
}

#[test]
fn exactly_n_denied_packets_are_counted_for_their_segments() {
    let lab = Lab::standard();
    let (db, laptop) = (lab.host("db"), lab.host("laptop"));
    let agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let before: Vec<u64> = ["tag:staff", "alice", "tag:db-server", "db"]
        .iter()
        .map(|s| agent.segment(s)["dropped_packets"].as_u64().unwrap())
        .collect();
    const N: usize = 37;
    udp_send(&laptop.ns, Some(ip("10.10.9.5")), sa(db.ip4(), 9999), N);
    let stats = wait::until("the drops counted", Duration::from_secs(10), || {
        let s = agent.stats();
        let db = s["segments"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == "tag:db-server")?["dropped_packets"]
            .as_u64()?;
        (db - before[2] >= N as u64).then_some(s)
    });
    for (i, name) in ["tag:staff", "alice", "tag:db-server", "db"]
        .iter()
        .enumerate()
    {
        let seg = stats["segments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == *name)
            .unwrap();
        assert_eq!(
            seg["dropped_packets"].as_u64().unwrap() - before[i],
            N as u64,
            "{name}: {seg}"
        );
    }
    let staff = stats["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tag:staff")
        .unwrap();
    assert_eq!(
        staff["as_source"]["dropped_packets"].as_u64().unwrap() - before[0],
        N as u64
    );
    assert_eq!(
        staff["ingress"]["dropped_packets"].as_u64().unwrap() - before[0],
        N as u64
    );
    // The reason is visible too.
    let reasons = stats["reasons"].as_array().unwrap();
    let no_rule = reasons
        .iter()
        .find(|r| r["reason"] == "drop_no_rule" && r["hook"] == "ingress")
        .unwrap();
    assert!(no_rule["packets"].as_u64().unwrap() >= N as u64);
}

/// web reaches the gateway over an 802.1Q trunk, then over QinQ (802.1ad
/// outer tag, 802.1Q inner): real sockets, tags inside the frames. If the
/// datapath did not see through the tags it would take the frames for
/// non-IP and let denied traffic pass.
#[test]
fn vlan_and_qinq_tagged_traffic_is_enforced() {
    let lab = Lab::standard();
    let (web, db) = (lab.host("web"), lab.host("db"));
    let _agent = Agent::start(&lab.gw, LAB_POLICY, &lab.gw_ifaces(), &[]);
    let _s1 = tcp_echo_server(&db.ns, sa(db.ip4(), 5432));
    let _s2 = tcp_echo_server(&db.ns, sa(db.ip4(), 22));
    let _s3 = tcp_echo_server(&db.ns, sa(db.ip6(), 5432));
    let _s4 = tcp_echo_server(&db.ns, sa(db.ip6(), 22));
    for tags in [
        vec![(TPID_8021Q, 100)],
        vec![(TPID_8021Q, 200), (TPID_8021AD, 300)],
    ] {
        let trunk = Trunk::new(&web.ns, "eth0", &lab.gw, &web.gw_iface, &tags);
        let wire = RawLink::open(&web.ns, "eth0");
        assert_eq!(
            tcp_exchange(&web.ns, None, sa(db.ip4(), 5432), LONG),
            Tcp::Echoed,
            "{tags:?}"
        );
        assert_eq!(
            tcp_exchange(&web.ns, None, sa(db.ip4(), 22), SHORT),
            Tcp::TimedOut,
            "{tags:?}"
        );
        assert_eq!(
            tcp_exchange(&web.ns, None, sa(db.ip6(), 5432), LONG),
            Tcp::Echoed,
            "{tags:?}"
        );
        assert_eq!(
            tcp_exchange(&web.ns, None, sa(db.ip6(), 22), SHORT),
            Tcp::TimedOut,
            "{tags:?}"
        );
        // The frames on the wire really carried the tags, outermost first.
        let frames = wire.frames(Duration::from_millis(200));
        let expected: Vec<u8> = tags
            .iter()
            .rev()
            .flat_map(|(tpid, vid)| [tpid.to_be_bytes(), vid.to_be_bytes()].concat())
            .collect();
        let tagged = frames
            .iter()
            .filter(|f| f.len() > 12 + expected.len() && f[12..12 + expected.len()] == expected[..])
            .count();
        assert!(
            tagged > 0,
            "no frame on the wire carried {tags:?} ({} frames seen)",
            frames.len()
        );
        drop(trunk);
    }
}

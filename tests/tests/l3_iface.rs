//! Interfaces without an Ethernet header: segment enforces on a tun device
//! (the link type of WireGuard and Tailscale interfaces) by parsing from
//! the IP header, and refuses link types it cannot parse rather than call
//! itself enforcing while it passes everything.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use segment_tests::{
    agent::{Agent, Dirs, agent_bin, command},
    frames::{L4, Packet, SYN},
    netns::Netns,
    traffic::{
        LONG, RawLink, SHORT, Tcp, ip, sa, tcp_echo_server, tcp_exchange, udp_echo_server,
        udp_exchange,
    },
    tun::{Side, TunPair},
};

const CLIENT: &str = "10.20.0.1";
const SERVER: &str = "10.20.0.2";
const CLIENT6: &str = "fd00:20::1";
const SERVER6: &str = "fd00:20::2";

const POLICY: &str = r#"
hosts:
  client: 10.20.0.1
  client6: "fd00:20::1"
  server: 10.20.0.2
  server6: "fd00:20::2"
acls:
  - action: accept
    src: [client, client6]
    dst: [server:8080, server6:8080]
    proto: tcp
"#;

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, reason: &str) -> u64 {
    after.get(reason).copied().unwrap_or(0) - before.get(reason).copied().unwrap_or(0)
}

#[test]
fn a_tun_device_is_enforced_from_its_ip_header() {
    let client = Netns::new("l3c");
    let server = Netns::new("l3s");
    let tun = TunPair::new(&client, "tun-c", &server, "tun-s");
    client.ip(&["addr", "add", CLIENT, "peer", SERVER, "dev", "tun-c"]);
    server.ip(&["addr", "add", SERVER, "peer", CLIENT, "dev", "tun-s"]);
    client.ip(&[
        "addr",
        "add",
        &format!("{CLIENT6}/64"),
        "dev",
        "tun-c",
        "nodad",
    ]);
    server.ip(&[
        "addr",
        "add",
        &format!("{SERVER6}/64"),
        "dev",
        "tun-s",
        "nodad",
    ]);

    let agent = Agent::start(&server, POLICY, &["tun-s".to_owned()], &[]);
    assert!(
        agent
            .log()
            .contains("tun-s: XDP ingress attached (generic mode)"),
        "a device without a link-layer header gets generic XDP:\n{}",
        agent.log()
    );
    let _allowed = tcp_echo_server(&server, sa(ip(SERVER), 8080));
    let _allowed6 = tcp_echo_server(&server, sa(ip(SERVER6), 8080));
    let _denied = tcp_echo_server(&server, sa(ip(SERVER), 8081));
    let _denied6 = tcp_echo_server(&server, sa(ip(SERVER6), 8081));
    let _udp = udp_echo_server(&server, sa(ip(SERVER), 9000));

    let (in0, out0) = (agent.reasons("ingress"), agent.reasons("egress"));
    // Allowed connections work both ways: the replies leave through the
    // egress program, which must find their flow in conntrack.
    for dst in [sa(ip(SERVER), 8080), sa(ip(SERVER6), 8080)] {
        assert_eq!(tcp_exchange(&client, None, dst, LONG), Tcp::Echoed, "{dst}");
    }
    // Denied ones never open: on today's Ethernet parser the IPv4 source
    // address would have been read as the EtherType and everything passed.
    for dst in [sa(ip(SERVER), 8081), sa(ip(SERVER6), 8081)] {
        assert_eq!(
            tcp_exchange(&client, None, dst, SHORT),
            Tcp::TimedOut,
            "{dst}"
        );
    }
    assert!(
        !udp_exchange(&client, None, sa(ip(SERVER), 9000), SHORT),
        "a denied UDP datagram got an answer"
    );
    let (in1, out1) = (agent.reasons("ingress"), agent.reasons("egress"));
    assert!(delta(&in1, &in0, "pass_rule") >= 2, "ingress: {in1:?}");
    assert!(delta(&in1, &in0, "drop_no_rule") >= 3, "ingress: {in1:?}");
    assert!(
        delta(&out1, &out0, "pass_conntrack") >= 2,
        "egress: {out1:?}"
    );
    for (hook, after, before) in [("ingress", &in1, &in0), ("egress", &out1, &out0)] {
        assert_eq!(
            delta(after, before, "pass_not_ip"),
            0,
            "{hook}: an IP packet was taken for something else: {after:?}"
        );
    }

    // Packets handed straight to the server's tun device, seen (or not)
    // behind XDP by a packet socket on it.
    let rx = RawLink::open(&server, "tun-s");
    let cases: [(&str, Vec<u8>, &str, bool); 3] = [
        (
            "denied SYN",
            marked_syn(8081, b"l3-denied"),
            "drop_no_rule",
            false,
        ),
        (
            "allowed SYN",
            marked_syn(8080, b"l3-allowed"),
            "pass_rule",
            true,
        ),
        (
            "IPv4 header cut short",
            [0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, b'l', b'3']
                .into_iter()
                .chain(*b"-short")
                .collect(),
            "drop_malformed",
            false,
        ),
    ];
    for (name, packet, reason, arrives) in cases {
        let marker = &packet[packet.len() - 6..];
        let before = agent.reasons("ingress");
        tun.inject(Side::B, &packet);
        let seen = !rx
            .capture_with(marker, Duration::from_millis(300))
            .is_empty();
        let after = agent.reasons("ingress");
        assert_eq!(delta(&after, &before, reason), 1, "{name}: {after:?}");
        assert_eq!(seen, arrives, "{name}: got past XDP");
    }
}

/// A SYN from the client to `port` whose payload ends with `marker`.
fn marked_syn(port: u16, marker: &[u8]) -> Vec<u8> {
    let mut p = Packet::new(
        ip(CLIENT),
        ip(SERVER),
        L4::Tcp {
            sport: 41000,
            dport: port,
            flags: SYN,
        },
    );
    p.payload = marker.to_vec();
    p.ip()
}

/// A `segment-agent run` that must not be running for long: killed and
/// detached when dropped, whatever the test found.
struct Run {
    child: Option<Child>,
    dirs: Dirs,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = command(None, &self.dirs, &["detach", "--force"]);
        let _ = std::fs::remove_dir_all(&self.dirs.pin);
        let _ = std::fs::remove_dir_all(&self.dirs.state);
    }
}

/// Runs `segment-agent run --iface IFACE EXTRA...` in `ns`, which must
/// refuse to start (exit 2) without attaching anything; returns its stderr.
fn refused(ns: &Netns, iface: &str, extra: &[&str]) -> String {
    let dirs = Dirs::new();
    std::fs::create_dir_all(&dirs.state).expect("state dir");
    let policy = dirs.state.join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .arg(agent_bin())
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--iface", iface, "--metrics-addr", "none"])
        .args(extra)
        .args(dirs.args())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn segment-agent");
    let mut run = Run {
        child: Some(child),
        dirs: dirs.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let c = run.child.as_mut().expect("child");
        if let Some(status) = c.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`run --iface {iface} {extra:?}` is still running: it did not refuse"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = run
        .child
        .take()
        .expect("child")
        .wait_with_output()
        .expect("output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        !stderr.contains("enforcing") && !stdout.contains("enforcing"),
        "{stdout}{stderr}"
    );
    let links = dirs.pin.join("links");
    let pinned = std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        pinned, 0,
        "nothing may stay attached to a refused interface"
    );
    stderr
}

#[test]
fn run_refuses_what_it_cannot_enforce() {
    let ns = Netns::new("l3lo");
    let stderr = refused(&ns, "lo", &[]);
    assert!(
        stderr.contains("lo has link type 772 (loopback)"),
        "the error names the device and its type:\n{stderr}"
    );
    // Native XDP on a device without a link-layer header is not what was
    // verified to start at the IP header: asked for explicitly, refused.
    ns.ip(&["tuntap", "add", "mode", "tun", "name", "tun-x"]);
    ns.ip(&["link", "set", "tun-x", "up"]);
    let stderr = refused(&ns, "tun-x", &["--xdp-mode", "native"]);
    assert!(
        stderr.contains("tun-x has no link-layer header"),
        "the error says why:\n{stderr}"
    );
}

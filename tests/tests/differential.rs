//! The kernel datapath against the reference evaluator.
//!
//! Random policies (written as YAML, so the parser is exercised too) are
//! compiled and loaded into the real maps; random frames — well-formed,
//! tagged, fragmented, with IP options and IPv6 extension headers,
//! truncated, replies to earlier flows, ICMP errors quoting them — run
//! through the loaded XDP and TC programs with BPF_PROG_TEST_RUN. Every
//! verdict must equal the reference: the policy's first matching rule
//! (`eval::first_match`, which reads the policy rule by rule, not the
//! compiled tables), plus a model of connection tracking and fragment
//! tracking written from the design, not from the kernel code.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use segment::{
    datapath::{
        Enforcer, Paths, loader,
        tables::{SlotContents, open_map},
    },
    eval::first_match,
    policy::{self, Mode, Policy},
};
use segment_common::{CtKey, CtValue, FragKey, FragValue, LENS_USE_LPM, SlotConfig, map_names};
use segment_tests::{
    agent::Dirs,
    frames::{ACK, FIN, L4, PSH, Packet, RST, SYN, TPID_8021AD, TPID_8021Q, ethernet},
    netns::require_root,
};

/// xorshift64*: small, seedable, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Random policies.

fn v4(host: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | host)
}

fn v6(host: u128) -> Ipv6Addr {
    Ipv6Addr::from((0xfd00u128 << 112) | host)
}

/// A random network. `wide` policies draw from 15 prefix lengths per
/// family, more than the exact-match tables take, so the datapath answers
/// them from the LPM tries; the others from the exact-match tables.
fn prefix(r: &mut Rng, wide: bool) -> String {
    let spread = if wide { 15 } else { 6 };
    if r.chance(if wide { 50 } else { 75 }) {
        let len = 33 - spread as u8 + r.below(spread) as u8;
        let host = r.below(32) as u32;
        let net = ipnet_trunc_v4(host, len);
        format!("{}/{}", v4(net), len)
    } else {
        let len = 129 - spread as u8 + r.below(spread) as u8;
        let host = r.below(32) as u128;
        let mask = if len == 128 {
            u128::MAX
        } else {
            !((1u128 << (128 - len)) - 1)
        };
        format!("\"{}/{}\"", v6(host & mask), len)
    }
}

fn ipnet_trunc_v4(host: u32, len: u8) -> u32 {
    let mask = if len == 32 {
        u32::MAX
    } else {
        !((1u32 << (32 - len)) - 1)
    };
    host & mask
}

fn ports(r: &mut Rng) -> String {
    let small = [0u16, 1, 2, 3, 5, 8, 9, 10, 1000, 1001, 65534, 65535];
    match r.below(5) {
        0 => "*".to_owned(),
        1 => r.pick(&small).to_string(),
        2 => {
            let a = *r.pick(&small);
            let b = a.saturating_add(r.below(4) as u16);
            format!("{a}-{b}")
        }
        _ => {
            let a = *r.pick(&small);
            let b = *r.pick(&small);
            if a == b {
                a.to_string()
            } else {
                format!("{},{}", a.min(b), a.max(b))
            }
        }
    }
}

fn random_policy(r: &mut Rng) -> String {
    let n_tags = 1 + r.below(5);
    let n_users = r.below(3);
    let n_hosts = r.below(3);
    let wide = r.chance(35);
    let mut y = String::new();
    if r.chance(15) {
        y.push_str("mode: audit\n");
    }
    if r.chance(40) {
        y.push_str("enforce: {ingress: true, egress: true}\n");
    }
    let mut selectors = vec!["\"*\"".to_owned()];
    y.push_str("tags:\n");
    for t in 0..n_tags {
        let members: Vec<String> = (0..r.below(if wide { 12 } else { 4 }))
            .map(|_| prefix(r, wide))
            .collect();
        y.push_str(&format!("  t{t}: [{}]\n", members.join(", ")));
        selectors.push(format!("tag:t{t}"));
    }
    if n_users > 0 {
        y.push_str("users:\n");
        for u in 0..n_users {
            y.push_str(&format!(
                "  u{u}: [{}, \"{}\"]\n",
                v4(r.below(40) as u32),
                v6(r.below(40) as u128)
            ));
            selectors.push(format!("u{u}"));
        }
        y.push_str("groups:\n  g0: [u0]\n");
        selectors.push("group:g0".to_owned());
    }
    if n_hosts > 0 {
        y.push_str("hosts:\n");
        for h in 0..n_hosts {
            y.push_str(&format!("  h{h}: {}\n", v4(r.below(40) as u32)));
            selectors.push(format!("h{h}"));
        }
    }
    selectors.push(prefix(r, wide));
    if r.chance(25) {
        y.push_str(&format!(
            "modes:\n  tag:t0: {}\n",
            if r.chance(50) { "audit" } else { "enforce" }
        ));
    }
    let rule = |r: &mut Rng, y: &mut String, action: bool| {
        let src: Vec<String> = (0..1 + r.below(2))
            .map(|_| r.pick(&selectors).clone())
            .collect();
        let dst: Vec<String> = (0..1 + r.below(2))
            .map(|_| {
                let sel = r.pick(&selectors).clone();
                let sel = sel.trim_matches('"');
                let ports = ports(r);
                if sel.contains(':')
                    && !sel.starts_with("tag:")
                    && !sel.starts_with("group:")
                    && !sel.contains('/')
                {
                    format!("\"[{sel}]:{ports}\"")
                } else {
                    format!("\"{sel}:{ports}\"")
                }
            })
            .collect();
        if action {
            y.push_str("  - action: accept\n");
            y.push_str(&format!("    src: [{}]\n", src.join(", ")));
        } else {
            y.push_str(&format!("  - src: [{}]\n", src.join(", ")));
        }
        y.push_str(&format!("    dst: [{}]\n", dst.join(", ")));
        match r.below(4) {
            0 => {}
            1 => y.push_str(&format!("    proto: {}\n", r.pick(&["tcp", "udp", "sctp"]))),
            2 => y.push_str(&format!(
                "    proto: [{}, {}]\n",
                r.pick(&["tcp", "udp"]),
                r.pick(&["sctp", "udp", "tcp"])
            )),
            _ => y.push_str("    proto: [tcp, udp, icmp, icmpv6, 47]\n"),
        }
    };
    if r.chance(30) {
        y.push_str("failsafe:\n");
        rule(r, &mut y, false);
    }
    y.push_str("acls:\n");
    let n_rules = r.below(7);
    if n_rules == 0 && !wide {
        y.push_str("  []\n");
    }
    for _ in 0..n_rules {
        rule(r, &mut y, true);
    }
    if wide {
        // Networks of ten lengths per family in one rule, so that the
        // policy needs more lengths than the exact-match tables take.
        let nets: Vec<String> = (0..10u8)
            .flat_map(|i| {
                let host4 = r.below(64) as u32;
                let host6 = r.below(64) as u128;
                let (l4, l6) = (22 + i, 118 + i);
                let mask6 = !((1u128 << (128 - l6)) - 1);
                [
                    format!("{}/{l4}", v4(ipnet_trunc_v4(host4, l4))),
                    format!("\"{}/{l6}\"", v6(host6 & mask6)),
                ]
            })
            .collect();
        y.push_str(&format!(
            "  - action: accept\n    src: [{}]\n    dst: [\"{}:{}\"]\n",
            nets.join(", "),
            r.pick(&selectors).trim_matches('"'),
            ports(r)
        ));
    }
    y
}

// ---------------------------------------------------------------------------
// The reference model of the datapath.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    Ingress,
    Egress,
}

fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
        IpAddr::V6(v) => {
            let o = v.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// Both endpoints (address words, port), smaller first, and the protocol.
type FlowKey = (([u32; 4], u16), ([u32; 4], u16), u8);

/// Canonical flow key (same order as the datapath) and whether src is `a`.
fn flow(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> (FlowKey, bool) {
    let s = (words(src), sport);
    let d = (words(dst), dport);
    if s <= d {
        ((s, d, proto), true)
    } else {
        ((d, s, proto), false)
    }
}

#[derive(Clone, Copy, Debug)]
struct Ct {
    initiator_a: bool,
    fin_a: bool,
    fin_b: bool,
    rst: bool,
}

#[derive(Default)]
struct Model {
    ct: HashMap<FlowKey, Ct>,
    frags: HashMap<(IpAddr, IpAddr, u32, u8), ()>,
}

/// What a generated frame is, for the model.
#[derive(Clone, Debug)]
struct Case {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Ports as the datapath sees them (echo identifiers for ICMP echo).
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: Option<u8>,
    /// 0: not a fragment, 1: first fragment, 2: later fragment.
    frag: u8,
    ident: u32,
    /// The flow an ICMP error quotes (src, sport, dst, dport, proto).
    quoted: Option<(IpAddr, u16, IpAddr, u16, u8)>,
    /// Cut short inside the headers.
    malformed: bool,
}

fn is_opener(c: &Case) -> bool {
    match c.proto {
        6 => c.tcp_flags & (SYN | ACK | RST | FIN) == SYN,
        1 => c.icmp_type == Some(8),
        58 => c.icmp_type == Some(128),
        _ => true,
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132)
}

impl Model {
    fn judge(&mut self, p: &Policy, c: &Case, hook: Hook) -> bool {
        if c.malformed {
            return false;
        }
        if c.frag != 2 && c.proto == 58 && matches!(c.icmp_type, Some(130..=137) | Some(143)) {
            return true;
        }
        let audit_dst = |p: &Policy, a: IpAddr| -> bool {
            // Effective mode of the destination's segments.
            let modes: Vec<Mode> = p
                .segments
                .iter()
                .filter(|s| s.prefixes.iter().any(|n| n.contains(&a)))
                .filter_map(|s| s.mode)
                .collect();
            let m = if modes.contains(&Mode::Enforce) {
                Mode::Enforce
            } else if modes.contains(&Mode::Audit) {
                Mode::Audit
            } else {
                p.mode
            };
            m == Mode::Audit
        };
        if c.frag == 2 {
            if self.frags.contains_key(&(c.src, c.dst, c.ident, c.proto)) {
                return true;
            }
            return audit_dst(p, c.dst);
        }
        let remember = |m: &mut Model| {
            if c.frag == 1 {
                m.frags.insert((c.src, c.dst, c.ident, c.proto), ());
            }
        };
        let (key, from_a) = flow(c.src, c.sport, c.dst, c.dport, c.proto);
        // Openers that conntrack could only pass as retransmissions are
        // judged by the policy directly.
        let policy_only = match c.proto {
            6 => c.tcp_flags & (SYN | ACK | RST | FIN) == SYN,
            1 => c.icmp_type == Some(8),
            58 => c.icmp_type == Some(128),
            _ => false,
        };
        if let Some(ct) = (!policy_only).then(|| self.ct.get(&key).copied()).flatten() {
            let from_initiator = ct.initiator_a == from_a;
            let mut matched = true;
            if c.proto == 6 {
                let syn_only = c.tcp_flags & (SYN | ACK) == SYN;
                let closing = ct.rst || (ct.fin_a && ct.fin_b);
                if syn_only && (!from_initiator || closing) {
                    matched = false;
                }
            } else if !from_initiator && (c.proto == 1 || c.proto == 58) {
                matched = matches!((c.proto, c.icmp_type), (1, Some(0)) | (58, Some(129)));
            }
            if matched {
                let e = self.ct.get_mut(&key).unwrap();
                if c.proto == 6 {
                    if c.tcp_flags & RST != 0 {
                        e.rst = true;
                    }
                    if c.tcp_flags & FIN != 0 {
                        if from_a {
                            e.fin_a = true
                        } else {
                            e.fin_b = true
                        }
                    }
                }
                remember(self);
                return true;
            }
        }
        if let Some((qs, qsp, qd, qdp, qp)) = c.quoted {
            let (qk, _) = flow(qs, qsp, qd, qdp, qp);
            if self.ct.contains_key(&qk) {
                return true;
            }
        }
        let enforced = match hook {
            Hook::Ingress => p.enforce.ingress,
            Hook::Egress => p.enforce.egress,
        };
        let open = |m: &mut Model| {
            // An opener judged by the policy within a live flow its sender
            // started (a retransmission) leaves the flow's state alone.
            let live = m.ct.get(&key).is_some_and(|ct| {
                ct.initiator_a == from_a && !(c.proto == 6 && (ct.rst || (ct.fin_a && ct.fin_b)))
            });
            if is_opener(c) && !live {
                m.ct.insert(
                    key,
                    Ct {
                        initiator_a: from_a,
                        fin_a: false,
                        fin_b: false,
                        rst: false,
                    },
                );
            }
        };
        if !enforced {
            open(self);
            remember(self);
            return true;
        }
        let dport = if has_ports(c.proto) { c.dport } else { 0 };
        if first_match(p, c.src, c.dst, c.proto, dport).is_some() {
            open(self);
            remember(self);
            return true;
        }
        if audit_dst(p, c.dst) {
            open(self);
            remember(self);
            return true;
        }
        false
    }
}

// ---------------------------------------------------------------------------
// Random frames.

fn addr(r: &mut Rng, family6: bool) -> IpAddr {
    if family6 {
        IpAddr::V6(v6(r.below(40) as u128))
    } else {
        IpAddr::V4(v4(r.below(40) as u32))
    }
}

struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    l4: u8,
}

/// Builds a frame and its description. About half the frames continue or
/// answer an earlier flow, so that connection tracking is exercised.
fn random_frame(r: &mut Rng, flows: &mut Vec<Flow>) -> (Vec<u8>, Case) {
    let reuse = !flows.is_empty() && r.chance(45);
    let (src, dst, mut sport, mut dport, kind) = if reuse {
        let f = &flows[r.below(flows.len() as u64) as usize];
        if r.chance(55) {
            (f.dst, f.src, f.dport, f.sport, f.l4)
        } else {
            (f.src, f.dst, f.sport, f.dport, f.l4)
        }
    } else {
        let six = r.chance(25);
        let ports = [0u16, 1, 2, 3, 5, 8, 9, 10, 1000, 1001, 40000, 65534, 65535];
        (
            addr(r, six),
            addr(r, six),
            *r.pick(&ports),
            *r.pick(&ports),
            r.below(7) as u8,
        )
    };
    let six = dst.is_ipv6();
    let flags_set = [
        SYN,
        SYN,
        SYN | ACK,
        ACK,
        ACK | PSH,
        FIN | ACK,
        RST,
        RST | ACK,
        SYN | FIN,
        0,
    ];
    let mut case = Case {
        src,
        dst,
        proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: None,
        frag: 0,
        ident: r.below(1 << 16) as u32,
        quoted: None,
        malformed: false,
    };
    let l4 = match kind {
        0 | 1 => {
            let flags = *r.pick(&flags_set);
            case.tcp_flags = flags;
            L4::Tcp {
                sport,
                dport,
                flags,
            }
        }
        2 => L4::Udp { sport, dport },
        3 => L4::Sctp { sport, dport },
        4 => {
            // Echo request / reply with the "port" trick, or another type.
            let id = sport;
            let (req, rep) = if six { (128, 129) } else { (8, 0) };
            let ty = match r.below(10) {
                0..=4 => req,
                5..=7 => rep,
                8 => {
                    if six {
                        135
                    } else {
                        13
                    }
                }
                _ => {
                    if six {
                        1
                    } else {
                        3
                    }
                }
            };
            if ty == req {
                sport = id;
                dport = 0;
            } else if ty == rep {
                sport = 0;
                dport = id;
            } else {
                sport = 0;
                dport = 0;
            }
            case.icmp_type = Some(ty);
            L4::Icmp {
                ty,
                code: 0,
                id,
                seq: 1,
            }
        }
        5 => {
            sport = 0;
            dport = 0;
            L4::Other(47)
        }
        _ => {
            sport = 0;
            dport = 0;
            L4::Other(50)
        }
    };
    case.proto = l4.proto(six);
    case.sport = if matches!(
        l4,
        L4::Tcp { .. } | L4::Udp { .. } | L4::Sctp { .. } | L4::Icmp { .. }
    ) {
        sport
    } else {
        0
    };
    case.dport = if matches!(
        l4,
        L4::Tcp { .. } | L4::Udp { .. } | L4::Sctp { .. } | L4::Icmp { .. }
    ) {
        dport
    } else {
        0
    };
    if !reuse && !matches!(l4, L4::Icmp { .. }) {
        flows.push(Flow {
            src,
            dst,
            sport,
            dport,
            l4: kind,
        });
        if flows.len() > 64 {
            flows.remove(0);
        }
    } else if !reuse && case.icmp_type.is_some_and(|t| t == 8 || t == 128) {
        flows.push(Flow {
            src,
            dst,
            sport,
            dport,
            l4: 4,
        });
    }
    let mut p = Packet::new(src, dst, l4);
    p.ident = case.ident;
    p.payload = vec![0x5a; r.below(80) as usize];
    // ICMP errors quote a packet of an earlier flow (sent the other way).
    if matches!(case.icmp_type, Some(3) | Some(1))
        && let Some(f) = flows
            .iter()
            .find(|f| f.dst == src && f.src.is_ipv6() == six && f.l4 <= 3)
    {
        let proto = match f.l4 {
            0 | 1 => 6,
            2 => 17,
            _ => 132,
        };
        let inner_l4 = match proto {
            6 => L4::Tcp {
                sport: f.sport,
                dport: f.dport,
                flags: SYN,
            },
            17 => L4::Udp {
                sport: f.sport,
                dport: f.dport,
            },
            _ => L4::Sctp {
                sport: f.sport,
                dport: f.dport,
            },
        };
        let inner = Packet::new(f.src, f.dst, inner_l4).ip();
        // An ICMP error quotes the IP header and 8 bytes of what follows.
        p.payload = inner[..inner.len().min(if six { 48 } else { 28 })].to_vec();
        case.quoted = Some((f.src, f.sport, f.dst, f.dport, proto));
    }
    if !six && r.chance(10) {
        p.ipv4_options = vec![1; 4 * (1 + r.below(3) as usize)];
    }
    if six && r.chance(15) {
        p.ipv6_ext = (0..1 + r.below(3))
            .map(|_| (60u8, vec![1, 4, 0, 0, 0, 0]))
            .collect();
    }
    let vlans: Vec<(u16, u16)> = match r.below(10) {
        0 => vec![(TPID_8021Q, 10)],
        1 => vec![(TPID_8021AD, 10), (TPID_8021Q, 20)],
        _ => vec![],
    };
    let transport_len = p.transport().len();
    let ip = if r.chance(8) && transport_len > 24 {
        // Fragments: the first carries 24 transport bytes, a later one the rest.
        if r.chance(50) {
            case.frag = 1;
            // 24 transport bytes cannot hold an ICMP error's quote.
            case.quoted = None;
            p.fragment(0, 24, true)
        } else {
            case.frag = 2;
            p.fragment(3, transport_len, false)
        }
    } else {
        p.ip()
    };
    let mut frame = ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &vlans, &ip);
    if case.frag != 2 && r.chance(4) {
        // Cut inside the headers: Ethernet + tags + IP + transport minimum.
        let ip_hdr = if six {
            40 + p
                .ipv6_ext
                .iter()
                .map(|(_, b)| (b.len() + 2).next_multiple_of(8))
                .sum::<usize>()
        } else {
            20 + p.ipv4_options.len()
        };
        let l4_min = match case.proto {
            6 => 20,
            17 | 1 | 58 => 8,
            132 => 12,
            _ => 0,
        };
        let headers = 14 + 4 * vlans.len() + ip_hdr + l4_min;
        let cut = 14 + r.below((headers - 14) as u64) as usize;
        frame.truncate(cut);
        case.malformed = true;
        // A cut inside an ICMP error's quote is not inside the headers.
        case.quoted = None;
    }
    (frame, case)
}

// ---------------------------------------------------------------------------

fn clear<K: aya::Pod, V: aya::Pod>(map: &mut BpfHashMap<MapData, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}

#[test]
fn datapath_agrees_with_the_reference_on_100k_random_packets() {
    require_root();
    let dirs = Dirs::new();
    let paths = Paths::resolve(Some(dirs.pin.clone()), Some(dirs.state.clone()));
    std::fs::create_dir_all(&dirs.state).unwrap();
    struct Cleanup(Dirs);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0.pin);
            let _ = std::fs::remove_dir_all(&self.0.state);
        }
    }
    let _cleanup = Cleanup(dirs.clone());
    let mut ebpf = loader::load(&paths, 0, 1 << 18).expect("load datapath");
    let mut enforcer = Enforcer::open(&paths).expect("open maps");
    let mut ct: BpfHashMap<MapData, CtKey, CtValue> =
        open_map(&paths, map_names::CONNTRACK).unwrap();
    let mut frags: BpfHashMap<MapData, FragKey, FragValue> =
        open_map(&paths, map_names::FRAGMENTS).unwrap();

    let seed = std::env::var("SEGMENT_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5e67_2026u64);
    let mut r = Rng(seed);
    let (mut total, mut mismatches) = (0usize, Vec::new());
    // Policies whose IPv4 / IPv6 identities the datapath reads from the
    // LPM trie rather than the exact-match tables.
    let mut lpm_rounds = [0usize; 2];
    let policies = 250;
    let per_policy = 440;
    for round in 0..policies {
        let yaml = random_policy(&mut r);
        let policy = policy::parse("random.yaml", &yaml)
            .unwrap_or_else(|e| panic!("generated an invalid policy:\n{yaml}\n{e}"));
        let (compiled, ids) = enforcer.compile(&policy).expect("compile");
        let layout = SlotContents::from_compiled(&compiled, SlotConfig::default()).config;
        for (family, count) in [layout.lens_v4_count, layout.lens_v6_count]
            .into_iter()
            .enumerate()
        {
            if count == LENS_USE_LPM {
                lpm_rounds[family] += 1;
            }
        }
        enforcer
            .apply(&policy, compiled, ids, Default::default())
            .expect("apply");
        clear(&mut ct);
        clear(&mut frags);
        let mut model = Model::default();
        let mut flows = Vec::new();
        for _ in 0..per_policy {
            let (frame, case) = random_frame(&mut r, &mut flows);
            let hook = if r.chance(80) {
                Hook::Ingress
            } else {
                Hook::Egress
            };
            let expected = model.judge(&policy, &case, hook);
            let opts = TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::default()
            };
            let result = match hook {
                Hook::Ingress => {
                    let prog: &mut Xdp = ebpf
                        .program_mut(map_names::PROG_INGRESS)
                        .unwrap()
                        .try_into()
                        .unwrap();
                    prog.test_run(opts).map(|r| r.return_value == 2)
                }
                Hook::Egress => {
                    let prog: &mut SchedClassifier = ebpf
                        .program_mut(map_names::PROG_EGRESS)
                        .unwrap()
                        .try_into()
                        .unwrap();
                    prog.test_run(opts).map(|r| r.return_value != 2)
                }
            };
            let actual = match result {
                Ok(v) => v,
                Err(ProgramError::SyscallError(_)) if case.malformed && hook == Hook::Egress => {
                    // The kernel will not build an skb from a frame cut this
                    // short, so no TC program ever sees one.
                    continue;
                }
                Err(e) => panic!("test run ({hook:?}, {} bytes): {e:?}", frame.len()),
            };
            total += 1;
            if actual != expected && mismatches.len() < 10 {
                mismatches.push(format!(
                    "round {round} {hook:?}: datapath {} but reference {}: {case:?}\npolicy:\n{yaml}",
                    if actual { "passed" } else { "dropped" },
                    if expected { "passes" } else { "drops" },
                ));
            }
        }
    }
    assert!(total >= 100_000, "ran {total} packets");
    // Both lookups, in both families, and reloads between them, were tried.
    for (family, n) in ["IPv4", "IPv6"].iter().zip(lpm_rounds) {
        assert!(
            n >= 10 && n <= policies - 10,
            "{family}: {n} of {policies} policies used the LPM trie"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches (seed {seed:#x}):\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
    eprintln!(
        "{total} packets over {policies} random policies: datapath == reference (seed {seed:#x}; \
         {} / {} policies used the IPv4 / IPv6 LPM trie, the rest exact-match tables)",
        lpm_rounds[0], lpm_rounds[1]
    );
}

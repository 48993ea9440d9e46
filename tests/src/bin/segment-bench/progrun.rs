//! Per-packet cost of the XDP program, with BPF_PROG_TEST_RUN: the loaded
//! datapath (with real maps holding a policy of each size) against a
//! trivial `XDP_DROP` program, in the same run. Each case averages 64
//! distinct packets, since one repeated packet stays in cache and hides
//! what the map sizes cost.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use segment::{
    datapath::{Enforcer, Paths, loader},
    policy,
};
use segment_common::map_names;
use segment_tests::{
    bpfasm,
    frames::{ACK, L4, Packet, SYN, ethernet},
};

use crate::synth;

pub struct ProgRun {
    /// ns per packet, by case then size.
    pub ns: BTreeMap<String, BTreeMap<usize, f64>>,
    /// The trivial XDP_DROP program, ns per packet.
    pub trivial_ns: f64,
    /// Parse + compile + write, per size (ms).
    pub parse_ms: BTreeMap<usize, f64>,
    pub compile_ms: BTreeMap<usize, f64>,
    pub load_ms: BTreeMap<usize, f64>,
}

const DISTINCT: usize = 64;

fn frame(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let mut p = Packet::new(src, dst, l4);
    p.payload = vec![0; 18];
    ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &[], &p.ip())
}

fn world4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 20, (i >> 8) as u8, i as u8))
}

fn world6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from((0xfd00_0900u128 << 96) + i as u128))
}

fn ns_per_packet(prog: &Xdp, frames: &[Vec<u8>], repeat: u32) -> f64 {
    let mut total = 0.0;
    for f in frames {
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(f),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("test run");
        total += r.duration.as_nanos() as f64;
    }
    total / frames.len() as f64
}

pub fn run(sizes: &[usize], quick: bool) -> ProgRun {
    let repeat = if quick { 2_000 } else { 20_000 };
    let dir = format!("segbench-{}", std::process::id());
    let paths = Paths::resolve(
        Some(std::path::PathBuf::from("/sys/fs/bpf").join(&dir)),
        Some(std::env::temp_dir().join(&dir)),
    );
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");
    let mut ebpf = loader::load(&paths, 0, 1 << 18).expect("loading the datapath");
    let mut enforcer = Enforcer::open(&paths).expect("opening its maps");

    let trivial = bpfasm::load(
        bpfasm::BPF_PROG_TYPE_XDP,
        &[bpfasm::mov_imm(0, bpfasm::XDP_DROP), bpfasm::exit()],
    );
    let trivial_frames: Vec<Vec<u8>> = (0..DISTINCT)
        .map(|i| {
            frame(
                world4(i),
                IpAddr::V4(synth::dst4(i)),
                L4::Tcp {
                    sport: 40000,
                    dport: 1,
                    flags: SYN,
                },
            )
        })
        .collect();

    let mut out = ProgRun {
        ns: BTreeMap::new(),
        trivial_ns: 0.0,
        parse_ms: BTreeMap::new(),
        compile_ms: BTreeMap::new(),
        load_ms: BTreeMap::new(),
    };
    let mut trivial_samples = Vec::new();
    for &size in sizes {
        let s = synth::policy(size, 0);
        let t0 = Instant::now();
        let p = policy::parse("bench.yaml", &s.yaml).expect("synthetic policy parses");
        let t1 = Instant::now();
        let (compiled, ids) = enforcer.compile(&p).expect("compiles");
        let t2 = Instant::now();
        enforcer.apply(&p, compiled, ids, t2 - t1).expect("applies");
        let t3 = Instant::now();
        out.parse_ms.insert(size, (t1 - t0).as_secs_f64() * 1e3);
        out.compile_ms.insert(size, (t2 - t1).as_secs_f64() * 1e3);
        out.load_ms.insert(size, (t3 - t2).as_secs_f64() * 1e3);
        eprintln!(
            "  policy {size:>6} rules: parse {:.1} ms, compile {:.1} ms, load {:.1} ms",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3
        );

        let prog: &mut Xdp = ebpf
            .program_mut(map_names::PROG_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let pick = |i: usize| i * s.v4.len().max(1) / DISTINCT;
        // UDP: like the line-rate flood, it cannot skip the conntrack lookup.
        let denied: Vec<Vec<u8>> = (0..DISTINCT)
            .map(|i| {
                let (_, d, _) = s.v4[pick(i) % s.v4.len()];
                frame(
                    world4(i),
                    IpAddr::V4(d),
                    L4::Udp {
                        sport: 40000 + i as u16,
                        dport: 1,
                    },
                )
            })
            .collect();
        let denied_syn: Vec<Vec<u8>> = (0..DISTINCT)
            .map(|i| {
                let (_, d, _) = s.v4[pick(i) % s.v4.len()];
                frame(
                    world4(i),
                    IpAddr::V4(d),
                    L4::Tcp {
                        sport: 40000,
                        dport: 1,
                        flags: SYN,
                    },
                )
            })
            .collect();
        let allowed: Vec<Vec<u8>> = (0..DISTINCT)
            .map(|i| {
                let (a, d, p) = s.v4[pick(i) % s.v4.len()];
                frame(
                    IpAddr::V4(a),
                    IpAddr::V4(d),
                    L4::Tcp {
                        sport: 40000 + i as u16,
                        dport: p,
                        flags: ACK,
                    },
                )
            })
            .collect();
        // Open 64 connections, then measure their replies.
        let replies: Vec<Vec<u8>> = (0..DISTINCT)
            .map(|i| {
                let (a, d, p) = s.v4[pick(i) % s.v4.len()];
                let syn = frame(
                    IpAddr::V4(a),
                    IpAddr::V4(d),
                    L4::Tcp {
                        sport: 50000 + i as u16,
                        dport: p,
                        flags: SYN,
                    },
                );
                prog.test_run(TestRunOptions {
                    data_in: Some(&syn),
                    ..TestRunOptions::default()
                })
                .expect("syn");
                frame(
                    IpAddr::V4(d),
                    IpAddr::V4(a),
                    L4::Tcp {
                        sport: p,
                        dport: 50000 + i as u16,
                        flags: SYN | ACK,
                    },
                )
            })
            .collect();
        let denied6: Vec<Vec<u8>> = (0..DISTINCT)
            .map(|i| {
                let d = if s.v6.is_empty() {
                    world6(1000 + i)
                } else {
                    IpAddr::V6(s.v6[(i * s.v6.len() / DISTINCT) % s.v6.len()].1)
                };
                frame(
                    world6(i),
                    d,
                    L4::Tcp {
                        sport: 40000,
                        dport: 1,
                        flags: SYN,
                    },
                )
            })
            .collect();
        for (case, frames) in [
            ("denied", &denied),
            ("denied_tcp_syn", &denied_syn),
            ("allowed", &allowed),
            ("conntrack_hit", &replies),
            ("ipv6_denied", &denied6),
        ] {
            let v = ns_per_packet(prog, frames, repeat);
            out.ns.entry(case.to_owned()).or_default().insert(size, v);
        }
        // The baseline, measured between the sizes so that both see the
        // same machine conditions.
        let mut t = 0.0;
        for f in &trivial_frames {
            t += f64::from(
                bpfasm::test_run(&trivial, f, None, repeat, 0, 0)
                    .expect("trivial run")
                    .1,
            );
        }
        trivial_samples.push(t / trivial_frames.len() as f64);
        eprintln!(
            "  prog_run {size:>6} rules: denied udp {:.0} ns, denied syn {:.0} ns, allowed {:.0} ns, conntrack hit {:.0} ns, ipv6 {:.0} ns (XDP_DROP {:.0} ns)",
            out.ns["denied"][&size],
            out.ns["denied_tcp_syn"][&size],
            out.ns["allowed"][&size],
            out.ns["conntrack_hit"][&size],
            out.ns["ipv6_denied"][&size],
            trivial_samples.last().copied().unwrap_or_default()
        );
    }
    trivial_samples.sort_by(f64::total_cmp);
    out.trivial_ns = trivial_samples[trivial_samples.len() / 2];
    drop(ebpf);
    let _ = std::fs::remove_dir_all(&paths.pin_dir);
    let _ = std::fs::remove_dir_all(&paths.state_dir);
    out
}

//! Drop rate on a real interface. A generator in one namespace sends
//! denied UDP traffic from 16,384 source addresses and random ports into a
//! veth pair with BPF_PROG_TEST_RUN in live-frames mode (the xdp-trafficgen
//! technique); the receiving end runs, in turn, a trivial XDP_DROP (the
//! limit), segment with each policy size, nftables and iptables. Method:
//!
//! * every variant keeps an XDP program on the receiving veth (veth only
//!   delivers XDP_TX'd frames to an XDP-enabled peer; it also gives every
//!   variant the same packet accounting): segment itself, or a counting
//!   XDP_PASS in front of nftables or iptables;
//! * threaded NAPI on the receiver, its kernel thread pinned to CPU 1 and the
//!   generator to CPU 0, so that sender and receiver do not share a core;
//! * what is counted is what the receiver processed (its own drop
//!   counters), not what the generator offered; the generator must out-run
//!   the receiver by 20 % for a result to count as receiver-bound;
//! * every run checks what it claims: segment's reason counters must show
//!   the flood dropped as `drop_no_rule` and nothing of it passed; a
//!   ruleset's drop counter must account for what its XDP_PASS counter let
//!   through. After the runs, an allowed probe (UDP from a policy source to
//!   its destination and port, sent the same way) must pass: segment counts
//!   it as passed, a ruleset lets it by without its drop counter moving.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use segment_tests::{
    agent::Agent,
    bpfasm,
    frames::{L4, Packet, ethernet},
    netns::{Netns, sh},
};

use crate::synth;

const RX_IF: &str = "rx0";
const GEN_IF: &str = "gen0";

pub struct Lab {
    pub sender: Netns,
    pub rx: Netns,
    frame: Vec<u8>,
    /// An allowed packet (rule 0 of every synthetic policy).
    probe: Vec<u8>,
    gen_ifindex: u32,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub processed: u64,
    pub sent: u64,
    pub seconds: f64,
    /// Receiver CPU time per processed packet, if the NAPI thread was found.
    pub cpu_ns_per_packet: Option<f64>,
}

impl Sample {
    pub fn mpps(&self) -> f64 {
        self.processed as f64 / self.seconds / 1e6
    }
    pub fn offered_mpps(&self) -> f64 {
        self.sent as f64 / self.seconds / 1e6
    }
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The receiver's NAPI kernel thread, pinned to `cpu`.
fn pin_napi(cpu: usize) -> Option<i32> {
    let mut found = None;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim().starts_with(&format!("napi/{RX_IF}-")) {
            // SAFETY: a zeroed cpu_set_t with one CPU set, for that thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            found = Some(pid);
        }
    }
    found
}

/// utime + stime of a thread, in nanoseconds.
fn cpu_ns(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some((utime + stime) * 1_000_000_000 / hz.max(1))
}

impl Lab {
    pub fn new() -> Self {
        segment_tests::netns::sweep_stale();
        let sender = Netns::new("gen");
        let rx = Netns::new("rx");
        sh(&[
            "ip",
            "link",
            "add",
            GEN_IF,
            "netns",
            sender.name(),
            "type",
            "veth",
            "peer",
            "name",
            RX_IF,
            "netns",
            rx.name(),
        ]);
        sender.ip(&["addr", "add", "10.30.0.2/24", "dev", GEN_IF]);
        rx.ip(&["addr", "add", "10.30.0.1/24", "dev", RX_IF]);
        sender.ip(&["link", "set", GEN_IF, "up"]);
        rx.ip(&["link", "set", RX_IF, "up"]);
        // Threaded NAPI: the receive work runs in a kernel thread we can pin.
        // veth has NAPI instances only with GRO or XDP on; GRO makes them
        // exist now, and the flag also applies to those XDP re-creates.
        rx.exec(&["ethtool", "-K", RX_IF, "gro", "on"]);
        rx.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{RX_IF}/threaded"),
        ]);
        let rx_mac = rx.mac(RX_IF);
        let gen_mac = sender.mac(GEN_IF);
        let mut p = Packet::new(
            std::net::IpAddr::V4(Ipv4Addr::new(10, 20, 1, 0)),
            std::net::IpAddr::V4(Ipv4Addr::new(10, 30, 0, 1)),
            L4::Udp { sport: 1, dport: 9 },
        );
        p.ident = 0x8000;
        p.payload = vec![0; 18];
        let mut ip = p.ip();
        // UDP checksum 0 (none): the generator rewrites the ports.
        ip[26] = 0;
        ip[27] = 0;
        let frame = ethernet(rx_mac, gen_mac, &[], &ip);
        let mut probe = Packet::new(
            std::net::IpAddr::V4(synth::src4(0)),
            std::net::IpAddr::V4(synth::dst4(0)),
            L4::Udp {
                sport: 5555,
                dport: synth::port(0, 0),
            },
        );
        probe.payload = vec![0; 18];
        let probe = ethernet(rx_mac, gen_mac, &[], &probe.ip());
        let gen_ifindex = sender.ifindex(GEN_IF);
        Self {
            sender,
            rx,
            frame,
            probe,
            gen_ifindex,
        }
    }

    /// Sends for `seconds` from CPU 0; returns frames handed to the wire.
    fn generate(&self, seconds: f64, repeat: u32) -> (u64, f64) {
        let frame = self.frame.clone();
        let ifindex = self.gen_ifindex;
        self.sender.run(move || {
            pin_current_thread(0);
            let prog = bpfasm::udp_generator();
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
            let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
            let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed().as_secs_f64() < seconds {
                bpfasm::test_run(
                    &prog,
                    &frame,
                    Some(&ctx),
                    repeat,
                    bpfasm::BPF_F_TEST_XDP_LIVE_FRAMES,
                    64,
                )
                .expect("live frames test run");
                sent += u64::from(repeat);
            }
            (sent, started.elapsed().as_secs_f64())
        })
    }

    /// Sends `PROBE_BURST` copies of the allowed probe frame.
    fn send_probe(&self) {
        let frame = self.probe.clone();
        let ifindex = self.gen_ifindex;
        self.sender.run(move || {
            let prog = bpfasm::load(
                bpfasm::BPF_PROG_TYPE_XDP,
                &[bpfasm::mov_imm(0, bpfasm::XDP_TX), bpfasm::exit()],
            );
            let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
            let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
            bpfasm::test_run(
                &prog,
                &frame,
                Some(&ctx),
                PROBE_BURST as u32,
                bpfasm::BPF_F_TEST_XDP_LIVE_FRAMES,
                PROBE_BURST as u32,
            )
            .expect("sending the probe");
        });
    }

    /// Runs the generator against whatever is attached and counts what the
    /// receiver processed with `count`.
    pub fn measure(&self, seconds: f64, repeat: u32, count: &dyn Fn() -> u64) -> Sample {
        let napi = pin_napi(1);
        let before = count();
        let cpu_before = napi.and_then(cpu_ns);
        let (sent, elapsed) = self.generate(seconds, repeat);
        // Let the receiver drain its queue.
        std::thread::sleep(Duration::from_millis(100));
        let processed = count() - before;
        let cpu = match (napi.and_then(cpu_ns), cpu_before) {
            (Some(a), Some(b)) if processed > 0 => Some((a - b) as f64 / processed as f64),
            _ => None,
        };
        Sample {
            processed,
            sent,
            seconds: elapsed,
            cpu_ns_per_packet: cpu,
        }
    }

    fn attach_counting(&self, action: i32) -> (OwnedFd, OwnedFd) {
        let ifindex = self.rx.ifindex(RX_IF);
        self.rx.run(move || {
            let counters = bpfasm::percpu_counters(1);
            let prog = bpfasm::counting_xdp(&counters, action);
            let link = bpfasm::link(&prog, ifindex, bpfasm::BPF_XDP, bpfasm::XDP_FLAGS_DRV_MODE);
            (counters, link)
        })
    }
}

/// Copies of the allowed probe sent after a variant's runs, in bursts
/// small enough for the veth ring (256 frames), each counted before the next.
pub const PROBES: u64 = PROBE_BURST * 4;
const PROBE_BURST: u64 = 50;

/// Sends the probe in bursts; after each, waits until `counted` (since the
/// start) reaches what was sent so far. Panics with `name` if it does not.
fn probe(lab: &Lab, name: &str, counted: &dyn Fn() -> u64) {
    for sent in (1..=PROBES / PROBE_BURST).map(|k| k * PROBE_BURST) {
        lab.send_probe();
        assert!(
            poll(5.0, || counted() >= sent),
            "{name}: the allowed probe did not get through: {} of {sent} counted",
            counted()
        );
    }
}

/// Polls `cond` until it holds or `secs` pass; says whether it held.
fn poll(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// segment's ingress reason counters, by reason name. A missing or
/// unparsable figure is an error.
fn ingress_reasons(agent: &Agent) -> BTreeMap<String, u64> {
    let st = agent.stats();
    let list = st["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("stats --json has no reasons: {st}"));
    let m: BTreeMap<String, u64> = list
        .iter()
        .filter(|r| r["hook"] == "ingress")
        .map(|r| {
            let name = r["reason"]
                .as_str()
                .unwrap_or_else(|| panic!("reason without a name: {r}"));
            let n = r["packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("reason {name} without a packet count: {r}"));
            (name.to_owned(), n)
        })
        .collect();
    assert!(
        m.contains_key("drop_no_rule") && m.contains_key("pass_rule"),
        "stats --json lacks drop_no_rule or pass_rule: {st}"
    );
    m
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after[k] - before.get(k).copied().unwrap_or(0)
}

/// The flood was dropped: `drop_no_rule` grew by what was processed and no
/// other ingress reason grew but the host's own neighbour discovery.
fn assert_flood_dropped(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, s: &Sample) {
    assert!(s.processed > 0, "segment: the receiver processed nothing");
    let others: Vec<String> = after
        .keys()
        .filter(|k| {
            !matches!(
                k.as_str(),
                "drop_no_rule" | "pass_neighbor_discovery" | "pass_not_ip"
            )
        })
        .filter(|k| delta(after, before, k) > 0)
        .map(|k| format!("{k} ×{}", delta(after, before, k)))
        .collect();
    assert!(
        others.is_empty(),
        "segment: part of the denied flood took another path: {others:?}"
    );
}

/// A ruleset dropped the flood: its drop counter accounts for (nearly) all
/// that its XDP_PASS counter let through; only the host's own few packets
/// (neighbour discovery, ARP) may differ.
fn assert_ruleset_dropped(name: &str, xdp: u64, dropped: u64) {
    assert!(
        dropped > 0 && dropped as f64 >= 0.99 * xdp as f64,
        "{name}: the ruleset dropped {dropped} of {xdp} packets that reached it"
    );
}

/// A ruleset let the probe by: its XDP counter saw every probe, its drop
/// counter did not move meanwhile.
fn assert_ruleset_passes_probe(
    lab: &Lab,
    name: &str,
    xdp: &dyn Fn() -> u64,
    dropped: &dyn Fn() -> u64,
) {
    let (x0, d0) = (xdp(), dropped());
    probe(
        lab,
        &format!("{name} (frames seen by its XDP_PASS)"),
        &|| xdp() - x0,
    );
    // What XDP passed reaches the hook within the same softirq; let any
    // straggler be counted before reading.
    std::thread::sleep(Duration::from_millis(100));
    let d = dropped() - d0;
    assert_eq!(
        d, 0,
        "{name}: the ruleset dropped {d} of {PROBES} allowed probes"
    );
}

/// What a variant measures with, and how it is torn down.
pub enum Variant {
    Limit,
    Segment(usize),
    NftSets(usize),
    NftLinear(usize),
    IptablesSet(usize),
    IptablesLinear(usize),
}

impl Variant {
    pub fn name(&self) -> String {
        match self {
            Variant::Limit => "xdp_drop".into(),
            Variant::Segment(n) => format!("segment/{n}"),
            Variant::NftSets(n) => format!("nft_sets/{n}"),
            Variant::NftLinear(n) => format!("nft_linear/{n}"),
            Variant::IptablesSet(n) => format!("iptables_ipset/{n}"),
            Variant::IptablesLinear(n) => format!("iptables_linear/{n}"),
        }
    }
}

fn nft_drop_count(rx: &Netns, chain: &str) -> u64 {
    let out = rx.exec(&["nft", "-j", "list", "chain", "netdev", "segbench", chain]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nft -j list chain {chain}: {e}"));
    let counters: Vec<u64> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("rule"))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.get("counter").cloned())
        .map(|c| {
            c["packets"]
                .as_u64()
                .unwrap_or_else(|| panic!("nft counter without packets: {c}"))
        })
        .collect();
    assert!(
        !counters.is_empty(),
        "no drop counter in nft chain {chain}: {v}"
    );
    counters.iter().sum()
}

fn iptables_drop_count(rx: &Netns) -> u64 {
    let out = rx.exec(&[
        "iptables-legacy",
        "-t",
        "raw",
        "-L",
        "PREROUTING",
        "-v",
        "-x",
        "-n",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("DROP"))
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("unparsable iptables counter line: {l}"))
        })
        .collect();
    assert!(
        !counts.is_empty(),
        "no DROP rule in iptables raw PREROUTING:\n{text}"
    );
    counts.iter().sum()
}

/// Sets a variant up, measures it `runs` times, tears it down.
pub fn run_variant(lab: &Lab, v: &Variant, runs: usize, seconds: f64, repeat: u32) -> Vec<Sample> {
    let mut samples = Vec::new();
    match v {
        Variant::Limit => {
            let (counters, _link) = lab.attach_counting(bpfasm::XDP_DROP);
            for _ in 0..runs {
                let s = lab.measure(seconds, repeat, &|| bpfasm::read_counter(&counters, 0));
                assert!(s.processed > 0, "XDP_DROP: the receiver processed nothing");
                samples.push(s);
            }
        }
        Variant::Segment(n) => {
            let s = synth::policy(*n, 0);
            let agent = Agent::start(
                &lab.rx,
                &s.yaml,
                &[RX_IF.to_owned()],
                &["--metrics-addr", "none"],
            );
            let dropped = || ingress_reasons(&agent)["drop_no_rule"];
            for _ in 0..runs {
                let before = ingress_reasons(&agent);
                let s = lab.measure(seconds, repeat, &dropped);
                assert_flood_dropped(&before, &ingress_reasons(&agent), &s);
                samples.push(s);
            }
            let before = ingress_reasons(&agent);
            let passed = || {
                let after = ingress_reasons(&agent);
                delta(&after, &before, "pass_rule") + delta(&after, &before, "pass_conntrack")
            };
            probe(
                lab,
                &format!("segment/{n} (passed by rule or conntrack)"),
                &passed,
            );
        }
        Variant::NftSets(n) | Variant::NftLinear(n) => {
            let s = synth::policy(*n, 0);
            let (counters, _link) = lab.attach_counting(bpfasm::XDP_PASS);
            let rules = match v {
                Variant::NftSets(_) => synth::nft_sets(&s, RX_IF),
                _ => synth::nft_linear(&s, RX_IF),
            };
            let file = std::env::temp_dir().join(format!("segbench-{}.nft", std::process::id()));
            std::fs::write(&file, rules).expect("nft file");
            lab.rx.exec(&["nft", "-f", file.to_str().unwrap()]);
            let chain = if matches!(v, Variant::NftSets(_)) {
                "v4"
            } else {
                "ingress"
            };
            let xdp = || bpfasm::read_counter(&counters, 0);
            let dropped = || nft_drop_count(&lab.rx, chain);
            for _ in 0..runs {
                let x0 = xdp();
                let s = lab.measure(seconds, repeat, &dropped);
                assert_ruleset_dropped(&v.name(), xdp() - x0, s.processed);
                samples.push(s);
            }
            assert_ruleset_passes_probe(lab, &v.name(), &xdp, &dropped);
            lab.rx
                .exec(&["nft", "delete", "table", "netdev", "segbench"]);
            let _ = std::fs::remove_file(file);
        }
        Variant::IptablesSet(n) | Variant::IptablesLinear(n) => {
            let s = synth::policy(*n, 0);
            let (counters, _link) = lab.attach_counting(bpfasm::XDP_PASS);
            let dir = std::env::temp_dir();
            let rules = dir.join(format!("segbench-{}.ipt", std::process::id()));
            if matches!(v, Variant::IptablesSet(_)) {
                let set = dir.join(format!("segbench-{}.ipset", std::process::id()));
                std::fs::write(&set, synth::ipset_restore(&s)).expect("ipset file");
                lab.rx
                    .exec(&["sh", "-c", &format!("ipset restore < {}", set.display())]);
                std::fs::write(&rules, synth::iptables_set()).expect("iptables file");
                let _ = std::fs::remove_file(set);
            } else {
                std::fs::write(&rules, synth::iptables_linear(&s)).expect("iptables file");
            }
            lab.rx.exec(&[
                "sh",
                "-c",
                &format!("iptables-legacy-restore < {}", rules.display()),
            ]);
            let xdp = || bpfasm::read_counter(&counters, 0);
            let dropped = || iptables_drop_count(&lab.rx);
            for _ in 0..runs {
                let x0 = xdp();
                let s = lab.measure(seconds, repeat, &dropped);
                assert_ruleset_dropped(&v.name(), xdp() - x0, s.processed);
                samples.push(s);
            }
            assert_ruleset_passes_probe(lab, &v.name(), &xdp, &dropped);
            lab.rx.exec(&["iptables-legacy", "-t", "raw", "-F"]);
            if matches!(v, Variant::IptablesSet(_)) {
                lab.rx.exec(&["ipset", "destroy", "segbench"]);
            }
            let _ = std::fs::remove_file(rules);
        }
    }
    samples
}

/// Median, min, max of the rates (Mpps), and the medians of the other figures.
pub fn summarize(samples: &[Sample]) -> BTreeMap<&'static str, f64> {
    let mut rates: Vec<f64> = samples.iter().map(Sample::mpps).collect();
    rates.sort_by(f64::total_cmp);
    let mut offered: Vec<f64> = samples.iter().map(Sample::offered_mpps).collect();
    offered.sort_by(f64::total_cmp);
    let mut cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_ns_per_packet).collect();
    cpu.sort_by(f64::total_cmp);
    let mut m = BTreeMap::new();
    m.insert("median_mpps", rates[rates.len() / 2]);
    m.insert("min_mpps", rates[0]);
    m.insert("max_mpps", rates[rates.len() - 1]);
    m.insert("offered_mpps", offered[offered.len() / 2]);
    if !cpu.is_empty() {
        m.insert("rx_cpu_ns_per_packet", cpu[cpu.len() / 2]);
    }
    m
}

//! Per-packet cost of the XDP program, with BPF_PROG_TEST_RUN: the loaded
//! datapath (with real maps holding a policy of each size) against a
//! trivial `XDP_DROP` program, in the same run, two ways:
//!
//! * **cold**: 16,384 distinct packets per case (distinct sources, random
//!   ports, destinations spread over the policy), in random order, each run
//!   *once* (`repeat` = 1, one `BPF_PROG_TEST_RUN` per packet, no live
//!   frames). Between two runs of the program lie a syscall and the other
//!   16,383 packets' lookups, so a packet's map entries are as far from the
//!   caches as in a flood from 16,384 sources. The kernel's timer wraps the
//!   one run, so each figure includes the timer's own cost (the trivial
//!   program shows it). min/median/max are over the packets.
//! * **warm**: 64 distinct packets, each repeated in the kernel's loop:
//!   every lookup after the first hits the cache. min/median/max are over
//!   the 64 per-packet averages.
//!
//! Every timed run is checked: its return value must be the case's
//! verdict, and the reason counters (`SEG_REASON`, ingress hook) must have
//! grown by exactly the number of runs, all under the case's reason.
//! A case that took another path fails the benchmark.
//!
//! **Ablation**: the same cases, cold and warm, through instances of the
//! program loaded with the `ABLATE` global at each level (parse only, +
//! identities, + rule, + conntrack, + counters; the full program adds the
//! flow log), over the same pinned maps and never attached. Each level's
//! verdict is checked too: its return value, and either the case's reason
//! counted once per run (the counters level) or nothing counted at all
//! (the levels below it), which proves the run left where the level says.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    time::Instant,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use segment::{
    datapath::{Enforcer, Paths, loader},
    policy,
};
use segment_common::{
    ABLATE_CONNTRACK, ABLATE_COUNTERS, ABLATE_GLOBAL, ABLATE_IDENTITIES, ABLATE_PARSE, ABLATE_RULE,
    REASON_COUNT, Reason, ReasonCounters, map_names,
};
use segment_tests::{
    bpfasm,
    frames::{ACK, L4, Packet, SYN, ethernet},
    netns::Netns,
};
use serde_json::{Value, json};

use crate::{Rng, synth};

/// Distinct packets of a cold case.
pub const COLD: usize = 16_384;
/// Distinct packets of a warm case.
pub const WARM: usize = 64;

/// min/median/max of a set of per-packet figures (ns).
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    fn of(mut v: Vec<f64>) -> Self {
        assert!(!v.is_empty(), "no samples");
        v.sort_by(f64::total_cmp);
        Self {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }
    pub fn json(&self) -> Value {
        json!({"min_ns": self.min, "median_ns": self.median, "max_ns": self.max, "packets": self.n})
    }
}

/// The four kinds of packet issue 12 sets targets for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    DeniedSyn,
    DeniedUdp,
    AllowedFirst,
    TrackedReply,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::DeniedSyn,
        Kind::DeniedUdp,
        Kind::AllowedFirst,
        Kind::TrackedReply,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Kind::DeniedSyn => "denied_syn",
            Kind::DeniedUdp => "denied_udp",
            Kind::AllowedFirst => "allowed_first",
            Kind::TrackedReply => "tracked_reply",
        }
    }
    /// The verdict every timed run of the case must have.
    fn expected(self) -> (u32, Reason) {
        match self {
            Kind::DeniedSyn | Kind::DeniedUdp => (bpfasm::XDP_DROP as u32, Reason::DropNoRule),
            Kind::AllowedFirst => (bpfasm::XDP_PASS as u32, Reason::PassRule),
            Kind::TrackedReply => (bpfasm::XDP_PASS as u32, Reason::PassConntrack),
        }
    }

    /// The verdict every timed run of the case must have at `level`: the
    /// return value, and the reason counted (`None`: nothing may be counted).
    fn expected_at(self, level: Level) -> (u32, Option<Reason>) {
        let drop = bpfasm::XDP_DROP as u32;
        let pass = bpfasm::XDP_PASS as u32;
        match level {
            // A fixed drop, whatever the packet.
            Level::Parse | Level::Identities => (drop, None),
            // The policy alone: a reply is judged like any packet (no rule
            // admits it).
            Level::Rule => match self {
                Kind::AllowedFirst => (pass, None),
                _ => (drop, None),
            },
            Level::Conntrack => (self.expected().0, None),
            Level::Counters | Level::Full => {
                let (ret, reason) = self.expected();
                (ret, Some(reason))
            }
        }
    }
}

/// A level of the ablation: the stages an instance runs (cumulative).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Level {
    Parse,
    Identities,
    Rule,
    Conntrack,
    Counters,
    /// The program as attached: + the flow log.
    Full,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Parse,
        Level::Identities,
        Level::Rule,
        Level::Conntrack,
        Level::Counters,
        Level::Full,
    ];
    /// The value of the `ABLATE` global (0: the full program).
    fn global(self) -> u32 {
        match self {
            Level::Parse => ABLATE_PARSE,
            Level::Identities => ABLATE_IDENTITIES,
            Level::Rule => ABLATE_RULE,
            Level::Conntrack => ABLATE_CONNTRACK,
            Level::Counters => ABLATE_COUNTERS,
            Level::Full => 0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Level::Parse => "parse",
            Level::Identities => "identities",
            Level::Rule => "rule",
            Level::Conntrack => "conntrack",
            Level::Counters => "counters",
            Level::Full => "flow_log",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Level::Parse => "parse only",
            Level::Identities => "+ identities",
            Level::Rule => "+ rule",
            Level::Conntrack => "+ conntrack",
            Level::Counters => "+ counters",
            Level::Full => "+ flow log (full)",
        }
    }
}

/// One case at one ablation level.
pub struct Ablated {
    pub kind: Kind,
    pub v6: bool,
    pub level: Level,
    pub cold: Stats,
    pub warm: Stats,
}

impl Ablated {
    pub fn key(&self) -> String {
        format!("{}_{}", self.kind.name(), if self.v6 { "v6" } else { "v4" })
    }
}

pub struct Case {
    pub kind: Kind,
    pub v6: bool,
    pub cold: Stats,
    pub warm: Stats,
    /// Allowed first packets only: the same kind of run as `cold`, but the
    /// first since the policy was loaded for each rule they hit (the rule
    /// hit counter is created then). `cold` is measured after it, on new
    /// flows over the same rules.
    pub first_hit: Option<Stats>,
}

impl Case {
    pub fn key(&self) -> String {
        format!("{}_{}", self.kind.name(), if self.v6 { "v6" } else { "v4" })
    }
}

pub struct ProgRun {
    /// Cases by size.
    pub cases: BTreeMap<usize, Vec<Case>>,
    /// The trivial XDP_DROP program, measured before each size: (cold, warm).
    pub trivial: BTreeMap<usize, (Stats, Stats)>,
    /// Parse + compile + write, per size (ms).
    pub parse_ms: BTreeMap<usize, f64>,
    pub compile_ms: BTreeMap<usize, f64>,
    pub load_ms: BTreeMap<usize, f64>,
    /// Every case at every level, by size (the full level is the case's
    /// own figures).
    pub ablation: BTreeMap<usize, Vec<Ablated>>,
    /// Translated (xlated) BPF instructions of each instance, by level, as
    /// the kernel reports after verification.
    pub xlated_insns: BTreeMap<&'static str, u32>,
}

impl ProgRun {
    pub fn case(&self, size: usize, kind: Kind, v6: bool) -> &Case {
        self.cases[&size]
            .iter()
            .find(|c| c.kind == kind && c.v6 == v6)
            .expect("every case is measured at every size")
    }

    pub fn ablated(&self, size: usize, kind: Kind, v6: bool, level: Level) -> &Ablated {
        self.ablation[&size]
            .iter()
            .find(|a| a.kind == kind && a.v6 == v6 && a.level == level)
            .expect("every case is measured at every level")
    }
}

fn frame(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let mut p = Packet::new(src, dst, l4);
    p.payload = vec![0; 18];
    ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &[], &p.ip())
}

/// Addresses no rule names (the policy's are 10.100/16, 172.16/16, fd00:100::/32, fd00:200::/32).
fn world4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a14_0000 + i as u32))
}

fn world6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from((0xfd00_0900u128 << 96) + i as u128))
}

/// The policy's rules of one family, as addresses.
fn rules(s: &synth::Synth, v6: bool) -> Vec<(IpAddr, IpAddr, u16)> {
    if v6 {
        s.v6.iter()
            .map(|(a, b, p)| (IpAddr::V6(*a), IpAddr::V6(*b), *p))
            .collect()
    } else {
        s.v4.iter()
            .map(|(a, b, p)| (IpAddr::V4(*a), IpAddr::V4(*b), *p))
            .collect()
    }
}

/// The reason counters of the ingress hook, summed over CPUs. A map that
/// cannot be read is an error.
struct Reasons(PerCpuArray<MapData, ReasonCounters>);

impl Reasons {
    fn open(paths: &Paths) -> Self {
        Self(
            segment::datapath::tables::open_map(paths, map_names::REASONS)
                .expect("opening the reason counters"),
        )
    }
    fn read(&self) -> Vec<u64> {
        (0..REASON_COUNT)
            .map(|r| {
                self.0
                    .get(&(r * 2), 0)
                    .unwrap_or_else(|e| panic!("reading reason counter {r}: {e}"))
                    .iter()
                    .map(|c| c.packets)
                    .sum()
            })
            .collect()
    }
    /// Asserts that exactly `runs` packets were counted since `before`, all
    /// under `reason` (`None`: that nothing was counted).
    fn assert_delta(&self, before: &[u64], runs: u64, reason: Option<Reason>, what: &str) {
        let after = self.read();
        let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        let others: Vec<String> = delta
            .iter()
            .enumerate()
            .filter(|(r, d)| **d > 0 && reason.is_none_or(|reason| *r as u32 != reason as u32))
            .map(|(r, d)| {
                format!(
                    "{} ×{d}",
                    Reason::from_u32(r as u32).map(Reason::name).unwrap_or("?")
                )
            })
            .collect();
        let Some(reason) = reason else {
            assert!(
                others.is_empty(),
                "{what}: expected nothing counted (an ablated instance below the counters \
                 level), got {others:?} — the benchmark timed another path than it claims"
            );
            return;
        };
        assert!(
            delta[reason as usize] == runs && others.is_empty(),
            "{what}: expected {runs} runs counted as {}, got {} (other reasons: {:?}) — \
             the benchmark timed another path than it claims",
            reason.name(),
            delta[reason as usize],
            others
        );
    }
}

/// The program under test and its reason counters.
struct Bench<'a> {
    prog: &'a Xdp,
    reasons: &'a Reasons,
    /// Where the tracked replies enter: a veth in a namespace of the
    /// benchmark's own, while their flows were opened on `lo` (the test
    /// run's default), so that they come through the other side, as
    /// conntrack requires of a responder.
    replies: &'a Netns,
    reply_ifindex: u32,
}

/// Removes the benchmark's pins and state even when a check fails.
struct Cleanup(Paths);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.pin_dir);
        let _ = std::fs::remove_dir_all(&self.0.state_dir);
    }
}

fn run_once(prog: &Xdp, f: &[u8], repeat: u32, ingress_ifindex: Option<u32>) -> (u32, f64) {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: Option<Vec<u8>> = ingress_ifindex.map(|i| {
        [0, f.len() as u32, 0, i, 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    });
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(f),
            ctx_in: ctx.as_deref(),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("test run");
    (r.return_value, r.duration.as_nanos() as f64)
}

/// Runs every frame `repeat` times, checks every verdict, returns the
/// per-frame ns.
fn timed(b: &Bench<'_>, frames: &[Vec<u8>], repeat: u32, kind: Kind, what: &str) -> Vec<f64> {
    timed_at(b, frames, repeat, kind, Level::Full, what)
}

/// [`timed`] through the instance of `level` (`b.prog` must be it).
fn timed_at(
    b: &Bench<'_>,
    frames: &[Vec<u8>],
    repeat: u32,
    kind: Kind,
    level: Level,
    what: &str,
) -> Vec<f64> {
    if kind == Kind::TrackedReply {
        return b
            .replies
            .run(|| timed_on(b, frames, repeat, kind, level, what, Some(b.reply_ifindex)));
    }
    timed_on(b, frames, repeat, kind, level, what, None)
}

/// [`timed_at`], entering on `ifindex` (in the calling thread's namespace).
fn timed_on(
    b: &Bench<'_>,
    frames: &[Vec<u8>],
    repeat: u32,
    kind: Kind,
    level: Level,
    what: &str,
    ifindex: Option<u32>,
) -> Vec<f64> {
    let (prog, reasons) = (b.prog, b.reasons);
    let (ret, reason) = kind.expected_at(level);
    let before = reasons.read();
    let mut ns = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let (r, d) = run_once(prog, f, repeat, ifindex);
        if r != ret {
            // Say what the run was counted as, if anything.
            let counted: Vec<String> = reasons
                .read()
                .iter()
                .zip(&before)
                .enumerate()
                .filter(|(_, (a, b))| a > b)
                .map(|(r, (a, b))| {
                    let name = Reason::from_u32(r as u32).map(Reason::name);
                    format!("{} ×{}", name.unwrap_or("?"), a - b)
                })
                .collect();
            panic!(
                "{what}: packet {i} returned {r}, expected {ret} ({}); counted since the \
                 case began: {counted:?}",
                reason.map(Reason::name).unwrap_or("nothing counted")
            );
        }
        ns.push(d);
    }
    reasons.assert_delta(
        &before,
        frames.len() as u64 * u64::from(repeat),
        reason,
        what,
    );
    ns
}

/// The case's packets: `n` distinct ones. For the tracked reply, the flows
/// are opened first (their openers' verdicts are checked too).
fn packets(
    b: &Bench<'_>,
    s: &synth::Synth,
    kind: Kind,
    v6: bool,
    n: usize,
    rng: &mut Rng,
    what: &str,
) -> Vec<Vec<u8>> {
    let allowed = rules(s, v6);
    assert!(
        !allowed.is_empty(),
        "the synthetic policy has rules of both families"
    );
    // Distinct flows: a fresh block of source ports per call.
    let base = rng.below(1 << 14) as u32;
    let sport = |i: usize| 1024 + ((base + i as u32) % 64_000) as u16;
    let world = |i: usize| if v6 { world6(i) } else { world4(i) };
    let mut out: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let (a, d, p) = allowed[i % allowed.len()];
            match kind {
                Kind::DeniedSyn => frame(
                    world(i),
                    d,
                    L4::Tcp {
                        sport: sport(i),
                        dport: 1 + rng.below(65_535) as u16,
                        flags: SYN,
                    },
                ),
                Kind::DeniedUdp => frame(
                    world(i),
                    d,
                    L4::Udp {
                        sport: sport(i),
                        dport: 1 + rng.below(65_535) as u16,
                    },
                ),
                Kind::AllowedFirst => frame(
                    a,
                    d,
                    L4::Tcp {
                        sport: sport(i),
                        dport: p,
                        flags: SYN,
                    },
                ),
                Kind::TrackedReply => frame(
                    d,
                    a,
                    L4::Tcp {
                        sport: p,
                        dport: sport(i),
                        flags: SYN | ACK,
                    },
                ),
            }
        })
        .collect();
    if kind == Kind::TrackedReply {
        let openers: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let (a, d, p) = allowed[i % allowed.len()];
                frame(
                    a,
                    d,
                    L4::Tcp {
                        sport: sport(i),
                        dport: p,
                        flags: SYN,
                    },
                )
            })
            .collect();
        timed(
            b,
            &openers,
            1,
            Kind::AllowedFirst,
            &format!("{what} (opening the flows)"),
        );
    }
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

pub fn run(sizes: &[usize], quick: bool, rng: &mut Rng) -> ProgRun {
    let repeat = if quick { 2_000 } else { 20_000 };
    let dir = format!("segbench-{}", std::process::id());
    let paths = Paths::resolve(
        Some(std::path::PathBuf::from("/sys/fs/bpf").join(&dir)),
        Some(std::env::temp_dir().join(&dir)),
    );
    let cleanup = Cleanup(paths.clone());
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");
    // Room for every flow one size's full-program cases open: 2 × 2 ×
    // (COLD + WARM). The ablation levels with conntrack open as many again
    // each; the LRU tables then evict the oldest flows, of cases already
    // measured.
    let ebpf = loader::load(&paths, 0, 1 << 19).expect("loading the datapath");
    // SEGMENT_BENCH_CT_FILTER=off: the conntrack lookups without the
    // filter in front of them, for an A/B within one build.
    if std::env::var("SEGMENT_BENCH_CT_FILTER").is_ok_and(|v| v == "off") {
        segment::datapath::ct_filter::Filter::open(&paths)
            .expect("opening the conntrack filter")
            .disable();
        eprintln!("conntrack filter off (SEGMENT_BENCH_CT_FILTER=off)");
    }
    let mut enforcer = Enforcer::open(&paths).expect("opening its maps");
    let reasons = Reasons::open(&paths);
    let ablated: Vec<(Level, Ebpf)> = Level::ALL
        .into_iter()
        .filter(|l| *l != Level::Full)
        .map(|l| (l, load_ablated(&paths, l)))
        .collect();
    let mut xlated_insns = BTreeMap::new();
    xlated_insns.insert(Level::Full.name(), xlated(ingress(&ebpf)));
    for (level, e) in &ablated {
        xlated_insns.insert(level.name(), xlated(ingress(e)));
    }
    eprintln!(
        "  translated BPF instructions per instance: {}",
        Level::ALL
            .iter()
            .map(|l| format!("{} {}", l.label(), xlated_insns[l.name()]))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let replies_ns = Netns::new("bench");
    replies_ns.ip(&["link", "add", "bv0", "type", "veth", "peer", "name", "bv1"]);
    let reply_ifindex = replies_ns.ifindex("bv0");

    let trivial = bpfasm::load(
        bpfasm::BPF_PROG_TYPE_XDP,
        &[bpfasm::mov_imm(0, bpfasm::XDP_DROP), bpfasm::exit()],
    );
    let mut out = ProgRun {
        cases: BTreeMap::new(),
        trivial: BTreeMap::new(),
        parse_ms: BTreeMap::new(),
        compile_ms: BTreeMap::new(),
        load_ms: BTreeMap::new(),
        ablation: BTreeMap::new(),
        xlated_insns,
    };
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

        // The baseline, measured at each size so that it sees the same
        // machine conditions as the cases beside it.
        let trivial_frames = packets_for_trivial(COLD, rng);
        let t_cold = trivial_ns(&trivial, &trivial_frames, 1);
        let t_warm = trivial_ns(&trivial, &trivial_frames[..WARM], repeat);

        let b = Bench {
            prog: ingress(&ebpf),
            reasons: &reasons,
            replies: &replies_ns,
            reply_ifindex,
        };
        let mut cases = Vec::new();
        let mut levels = Vec::new();
        for v6 in [false, true] {
            for kind in Kind::ALL {
                let what = format!(
                    "{size} rules, {} {}",
                    kind.name(),
                    if v6 { "IPv6" } else { "IPv4" }
                );
                let first_hit = (kind == Kind::AllowedFirst).then(|| {
                    let frames = packets(&b, &s, kind, v6, COLD, rng, &what);
                    Stats::of(timed(&b, &frames, 1, kind, &format!("{what}, first hits")))
                });
                let cold_frames = packets(&b, &s, kind, v6, COLD, rng, &what);
                let cold = timed(&b, &cold_frames, 1, kind, &format!("{what}, cold"));
                let warm_frames = packets(&b, &s, kind, v6, WARM, rng, &what);
                let warm: Vec<f64> =
                    timed(&b, &warm_frames, repeat, kind, &format!("{what}, warm"));
                let (cold, warm) = (Stats::of(cold), Stats::of(warm));
                cases.push(Case {
                    kind,
                    v6,
                    cold,
                    warm,
                    first_hit,
                });
                // The ablation, right after the full program's figures so
                // that all levels of a case see the same machine.
                levels.push(Ablated {
                    kind,
                    v6,
                    level: Level::Full,
                    cold,
                    warm,
                });
                for (level, e) in &ablated {
                    let lb = Bench {
                        prog: ingress(e),
                        ..b
                    };
                    let what = format!("{what}, ablation level {}", level.label());
                    // Flows (for the reply) are opened by the full program.
                    let cold_frames = packets(&b, &s, kind, v6, COLD, rng, &what);
                    let cold =
                        timed_at(&lb, &cold_frames, 1, kind, *level, &format!("{what}, cold"));
                    let warm_frames = packets(&b, &s, kind, v6, WARM, rng, &what);
                    let warm = timed_at(
                        &lb,
                        &warm_frames,
                        repeat,
                        kind,
                        *level,
                        &format!("{what}, warm"),
                    );
                    levels.push(Ablated {
                        kind,
                        v6,
                        level: *level,
                        cold: Stats::of(cold),
                        warm: Stats::of(warm),
                    });
                }
            }
        }
        for v6 in [false, true] {
            for kind in Kind::ALL {
                let row: Vec<String> = Level::ALL
                    .iter()
                    .map(|l| {
                        let a = levels
                            .iter()
                            .find(|a| a.kind == kind && a.v6 == v6 && a.level == *l)
                            .expect("measured above");
                        format!("{:.0}/{:.0}", a.cold.median, a.warm.median)
                    })
                    .collect();
                eprintln!(
                    "  ablation {size:>6} rules, {}_{}, median ns cold/warm by level ({}): {}",
                    kind.name(),
                    if v6 { "v6" } else { "v4" },
                    Level::ALL.map(Level::name).join(", "),
                    row.join(", ")
                );
            }
        }
        out.ablation.insert(size, levels);
        let line: Vec<String> = cases
            .iter()
            .map(|c| match &c.first_hit {
                Some(h) => format!(
                    "{} {:.0}/{:.0} (rule's first hit {:.0})",
                    c.key(),
                    c.cold.median,
                    c.warm.median,
                    h.median
                ),
                None => format!("{} {:.0}/{:.0}", c.key(), c.cold.median, c.warm.median),
            })
            .collect();
        eprintln!(
            "  prog_run {size:>6} rules, median ns cold/warm: {} (XDP_DROP {:.0}/{:.0})",
            line.join(", "),
            t_cold.median,
            t_warm.median
        );
        out.cases.insert(size, cases);
        out.trivial.insert(size, (t_cold, t_warm));
    }
    drop(ablated);
    drop(ebpf);
    drop(cleanup);
    out
}

/// The ingress XDP program of a loaded object.
fn ingress(ebpf: &Ebpf) -> &Xdp {
    ebpf.program(map_names::PROG_INGRESS)
        .expect("the ingress program")
        .try_into()
        .expect("an XDP program")
}

/// A never-attached instance of the ingress program with the `ABLATE`
/// global at `level`, over the benchmark's pinned maps (as `explain
/// --live` loads its dry instance).
fn load_ablated(paths: &Paths, level: Level) -> Ebpf {
    let value = level.global();
    let mut loader = EbpfLoader::new();
    // The per-slot tables are maps of maps, pinned by name: the same ones
    // the full program reads.
    loader::pin_outer_maps(&mut loader, paths);
    let mut ebpf = loader
        .default_map_pin_directory(&paths.pin_dir)
        .override_global(ABLATE_GLOBAL, &value, true)
        .load(loader::object().expect("the agent carries the datapath"))
        .unwrap_or_else(|e| {
            panic!(
                "loading the object at ablation level {}: {e}",
                level.label()
            )
        });
    let prog: &mut Xdp = ebpf
        .program_mut(map_names::PROG_INGRESS)
        .expect("the ingress program")
        .try_into()
        .expect("an XDP program");
    prog.load()
        .unwrap_or_else(|e| panic!("the kernel refused ablation level {}: {e}", level.label()));
    ebpf
}

/// Instructions of a loaded program after verification (the verifier's
/// dead-code removal included): what the JIT compiles.
fn xlated(prog: &Xdp) -> u32 {
    let info = prog.info().expect("the program's info");
    info.size_translated()
        .expect("the kernel reports the translated size")
        / 8
}

fn packets_for_trivial(n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            frame(
                world4(i),
                IpAddr::V4(synth::dst4(i)),
                L4::Tcp {
                    sport: 1024 + rng.below(60_000) as u16,
                    dport: 1,
                    flags: SYN,
                },
            )
        })
        .collect()
}

fn trivial_ns(prog: &OwnedFd, frames: &[Vec<u8>], repeat: u32) -> Stats {
    Stats::of(
        frames
            .iter()
            .map(|f| {
                let (ret, ns) = bpfasm::test_run(prog, f, None, repeat, 0, 0).expect("trivial run");
                assert_eq!(ret, bpfasm::XDP_DROP as u32, "the trivial program drops");
                f64::from(ns)
            })
            .collect(),
    )
}

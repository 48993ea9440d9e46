//! The control plane: how long a policy takes to parse, compile and load,
//! how long a reload takes, and what the agent and its maps occupy.

use std::{collections::BTreeMap, fmt::Write, time::Instant};

use segment::{
    compile,
    datapath::{Enforcer, Paths, loader},
    policy,
};
use segment_common::map_names;
use segment_tests::{agent::Agent, netns::Netns};

use crate::synth;

pub struct Reload {
    /// Parse + compile + write + switch, per reload (ms).
    pub total_ms: Vec<f64>,
    /// Write + switch only (ms).
    pub switch_ms: Vec<f64>,
}

/// Alternates two policies of `size` rules that differ in one rule.
pub fn reloads(size: usize, count: usize) -> Reload {
    let dir = format!("segbench-reload-{}", std::process::id());
    let paths = Paths::resolve(
        Some(std::path::PathBuf::from("/sys/fs/bpf").join(&dir)),
        Some(std::env::temp_dir().join(&dir)),
    );
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");
    let ebpf = loader::load(&paths, 0, 1 << 16).expect("loading the datapath");
    let mut enforcer = Enforcer::open(&paths).expect("maps");
    let texts = [synth::policy(size, 0).yaml, synth::policy(size, 1).yaml];
    let mut out = Reload {
        total_ms: Vec::new(),
        switch_ms: Vec::new(),
    };
    // The first application fills both slots.
    for t in &texts {
        let p = policy::parse("bench.yaml", t).unwrap();
        let (c, ids) = enforcer.compile(&p).unwrap();
        enforcer.apply(&p, c, ids, Default::default()).unwrap();
    }
    for i in 0..count {
        let started = Instant::now();
        let p = policy::parse("bench.yaml", &texts[i % 2]).unwrap();
        let (c, ids) = enforcer.compile(&p).unwrap();
        let r = enforcer.apply(&p, c, ids, Default::default()).unwrap();
        out.total_ms.push(started.elapsed().as_secs_f64() * 1e3);
        out.switch_ms.push(r.write_time.as_secs_f64() * 1e3);
    }
    drop(ebpf);
    let _ = std::fs::remove_dir_all(&paths.pin_dir);
    let _ = std::fs::remove_dir_all(&paths.state_dir);
    out
}

/// Parse, compile and load of one policy into a fresh datapath.
#[derive(Debug, Clone)]
pub struct Scale {
    pub rules: usize,
    pub rule_entries: usize,
    pub bytes: usize,
    pub parse_ms: f64,
    pub compile_ms: f64,
    pub load_ms: f64,
}

impl Scale {
    pub fn total_ms(&self) -> f64 {
        self.parse_ms + self.compile_ms + self.load_ms
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rules": self.rules,
            "rule_entries": self.rule_entries,
            "bytes": self.bytes,
            "parse_ms": self.parse_ms,
            "compile_ms": self.compile_ms,
            "load_ms": self.load_ms,
            "total_ms": self.total_ms(),
        })
    }
}

/// The policy of the 1,000,000-rule-entry case: 250,000 rules between 500
/// sources and 500 destinations (every pair once), each on two TCP/UDP
/// ports of different port classes (one of 7, one of 11), so 4 entries a
/// rule. Few addresses and port classes: the size is in the rule table,
/// which is what the case is about.
pub fn million_entries_policy() -> String {
    const SIDE: usize = 500;
    let rules = SIDE * SIDE;
    let mut y = String::with_capacity(rules * 110);
    y.push_str("mode: enforce\nacls:\n");
    for i in 0..rules {
        let (s, d) = (i % SIDE, i / SIDE);
        let (p, q) = (2000 + i % 7, 3000 + i % 11);
        let _ = writeln!(
            y,
            "  - action: accept\n    src: [10.200.{}.{}]\n    dst: [\"172.20.{}.{}:{p},{}\"]\n    proto: [tcp, udp]",
            s / 256,
            s % 256,
            d / 256,
            d % 256,
            q
        );
    }
    y
}

/// Parse, compile and load (write into the maps and switch) of `text`, in
/// a datapath of its own so that every size starts from empty maps.
pub fn scale_one(text: &str) -> Result<Scale, String> {
    let dir = format!("segbench-scale-{}", std::process::id());
    let paths = Paths::resolve(
        Some(std::path::PathBuf::from("/sys/fs/bpf").join(&dir)),
        Some(std::env::temp_dir().join(&dir)),
    );
    std::fs::create_dir_all(&paths.state_dir).expect("state dir");
    let result = (|| {
        let ebpf = loader::load(&paths, 0, 1 << 16).map_err(|e| format!("loading: {e:#}"))?;
        let mut enforcer = Enforcer::open(&paths).map_err(|e| format!("maps: {e:#}"))?;
        let t0 = Instant::now();
        let p = policy::parse("bench.yaml", text).map_err(|e| format!("{e}"))?;
        let t1 = Instant::now();
        let (c, ids) = enforcer.compile(&p).map_err(|e| format!("{e}"))?;
        let t2 = Instant::now();
        let rule_entries = c.sizes.rule_entries;
        enforcer
            .apply(&p, c, ids, t2 - t1)
            .map_err(|e| format!("applying: {e:#}"))?;
        let t3 = Instant::now();
        drop(ebpf);
        Ok(Scale {
            rules: p.rules.len(),
            rule_entries,
            bytes: text.len(),
            parse_ms: (t1 - t0).as_secs_f64() * 1e3,
            compile_ms: (t2 - t1).as_secs_f64() * 1e3,
            load_ms: (t3 - t2).as_secs_f64() * 1e3,
        })
    })();
    let _ = std::fs::remove_dir_all(&paths.pin_dir);
    let _ = std::fs::remove_dir_all(&paths.state_dir);
    result
}

/// [`scale_one`] at each size of synthetic policy, then the
/// 1,000,000-rule-entry case (keyed `MILLION`). A size that fails to
/// parse, compile or load is an error, except the million case, whose
/// failure is reported (the datapath may not hold it).
pub fn scale(sizes: &[usize]) -> (BTreeMap<usize, Scale>, Result<Scale, String>) {
    let mut out = BTreeMap::new();
    for &size in sizes {
        let s = scale_one(&synth::policy(size, 0).yaml)
            .unwrap_or_else(|e| panic!("the {size}-rule policy: {e}"));
        eprintln!(
            "  policy {size:>6} rules ({:.1} MB): parse {:.1} ms, compile {:.1} ms, load {:.1} ms",
            s.bytes as f64 / 1e6,
            s.parse_ms,
            s.compile_ms,
            s.load_ms
        );
        out.insert(size, s);
    }
    let million = scale_one(&million_entries_policy());
    match &million {
        Ok(s) => eprintln!(
            "  policy of {} rule entries ({} rules, {:.1} MB): parse {:.1} ms, compile {:.1} ms, load {:.1} ms",
            s.rule_entries,
            s.rules,
            s.bytes as f64 / 1e6,
            s.parse_ms,
            s.compile_ms,
            s.load_ms
        ),
        Err(e) => eprintln!("  policy of 1,000,000 rule entries: refused: {e}"),
    }
    (out, million)
}

/// Parse + compile time of 10,000 rules over 100,000 addresses (ms), best of 3.
pub fn tags_compile_ms() -> (f64, usize) {
    let text = synth::tags_policy(10_000, 100_000);
    let mut best = f64::MAX;
    let mut entries = 0;
    for _ in 0..3 {
        let started = Instant::now();
        let p = policy::parse("tags.yaml", &text).expect("parses");
        let c = compile::compile(&p).expect("compiles");
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
        entries = c.sizes.rule_entries;
    }
    (best, entries)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

/// Kernel memory of each of segment's maps (bpftool's `bytes_memlock`), in
/// bytes, by map name; the inner maps of the maps of maps (the per-slot
/// policy tables, unpinned) as `NAME[slot]`. A map that is missing or whose
/// figure does not parse is an error.
pub fn map_memory(pin_dir: &std::path::Path) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = map_names::ALL
        .iter()
        .map(|name| {
            let pin = pin_dir.join(name);
            (
                (*name).to_owned(),
                memlock(&["pinned".as_ref(), pin.as_os_str()]),
            )
        })
        .collect();
    for name in map_names::OUTER {
        let data = aya::maps::MapData::from_pin(pin_dir.join(name))
            .unwrap_or_else(|e| panic!("opening {name}: {e}"));
        let outer: aya::maps::ArrayOfMaps<aya::maps::MapData, aya::maps::MapData> =
            aya::maps::Map::from_map_data(data)
                .and_then(|m| m.try_into())
                .unwrap_or_else(|e| panic!("{name} is not an array of maps: {e}"));
        for slot in 0..outer.len() {
            match outer.get(&slot, 0) {
                Ok(inner) => {
                    let id = inner.info().expect("inner map info").id().to_string();
                    out.insert(
                        format!("{name}[{slot}]"),
                        memlock(&["id".as_ref(), id.as_ref()]),
                    );
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => panic!("reading {name}[{slot}]: {e}"),
            }
        }
    }
    out
}

/// `bytes_memlock` of the map `bpftool map show ARGS` names.
fn memlock(args: &[&std::ffi::OsStr]) -> u64 {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running bpftool: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool map show {args:?}: {e}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["bytes_memlock"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_memlock for {args:?}: {v}"))
}

/// What the agent and its maps occupy with a policy of a given size.
pub struct Footprint {
    pub rss_kib: u64,
    /// `bytes_memlock` by map name.
    pub maps: BTreeMap<String, u64>,
}

impl Footprint {
    pub fn map_bytes(&self) -> u64 {
        self.maps.values().sum()
    }
}

/// The agent's resident memory and its maps' memory with a policy of `size`.
pub fn footprint(ns: &Netns, iface: &str, size: usize) -> Footprint {
    let s = synth::policy(size, 0);
    let agent = Agent::start(
        ns,
        &s.yaml,
        &[iface.to_owned()],
        &["--metrics-addr", "none"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    Footprint {
        rss_kib: rss_kib(agent.pid()),
        maps: map_memory(&agent.dirs.pin),
    }
}

pub fn percentiles(v: &mut [f64]) -> BTreeMap<&'static str, f64> {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    BTreeMap::from([("median", at(0.5)), ("p99", at(0.99)), ("max", at(1.0))])
}

//! The control plane: how long a policy takes to parse, compile and load,
//! how long a reload takes, and what the agent and its maps occupy.

use std::{collections::BTreeMap, time::Instant};

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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Kernel memory of segment's maps (bpftool's `bytes_memlock`), in bytes.
fn map_memory(pin_dir: &std::path::Path) -> u64 {
    map_names::ALL
        .iter()
        .filter_map(|name| {
            let out = std::process::Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(pin_dir.join(name))
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["bytes_memlock"].as_u64()
        })
        .sum()
}

/// The agent's resident memory and its maps' memory with a policy of `size`.
pub fn footprint(ns: &Netns, iface: &str, size: usize) -> (u64, u64) {
    let s = synth::policy(size, 0);
    let agent = Agent::start(
        ns,
        &s.yaml,
        &[iface.to_owned()],
        &["--metrics-addr", "none"],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rss = rss_kib(agent.pid());
    let maps = map_memory(&agent.dirs.pin);
    (rss, maps)
}

pub fn percentiles(v: &mut [f64]) -> BTreeMap<&'static str, f64> {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    BTreeMap::from([("median", at(0.5)), ("p99", at(0.99)), ("max", at(1.0))])
}

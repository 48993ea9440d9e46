//! `cargo xtask bench`: segment against the XDP limit, nftables and
//! iptables, side by side in one run, plus the per-packet program cost and
//! the control plane. Writes a JSON report and a markdown page.
//!
//! Absolute numbers on shared machines drift from run to run; ratios
//! measured in the same run do not, which is why every figure here comes
//! with its baseline from the same run.

mod control;
mod linerate;
mod progrun;
mod synth;

use std::{collections::BTreeMap, fmt::Write, path::PathBuf};

use serde_json::{Value, json};

struct Args {
    quick: bool,
    prog_only: bool,
    json: PathBuf,
    markdown: PathBuf,
    command: String,
}

fn args() -> Args {
    let mut quick = false;
    let mut json = PathBuf::from("target/bench/report.json");
    let mut markdown = PathBuf::from("docs/benchmarks.md");
    let mut command = "cargo xtask bench".to_owned();
    let mut prog_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            // For profiling the datapath: only the per-packet cost, printed.
            "--prog-only" => prog_only = true,
            "--json" => json = it.next().expect("--json PATH").into(),
            "--markdown" => markdown = it.next().expect("--markdown PATH").into(),
            "--command" => command = it.next().expect("--command TEXT"),
            other => panic!("unknown argument {other}"),
        }
    }
    Args {
        quick,
        json,
        markdown,
        command,
        prog_only,
    }
}

/// xorshift64*, seeded from the clock: the order of variants is random.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kib as f64 / 1048576.0).round(),
        "kernel": kernel.trim(),
    })
}

fn keyed<T: Into<Value> + Clone>(m: &BTreeMap<usize, T>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect(),
    )
}

fn main() {
    segment_tests::netns::require_root();
    let a = args();
    let sizes: Vec<usize> = if a.quick {
        vec![10, 10_000]
    } else {
        vec![10, 1_000, 10_000, 100_000]
    };
    let (runs, seconds, repeat) = if a.quick {
        (2, 0.5, 1 << 20)
    } else {
        (5, 1.5, 1 << 22)
    };
    let started = std::time::Instant::now();

    eprintln!("== per-packet cost (BPF_PROG_TEST_RUN, 64 distinct packets per case) ==");
    let pr = progrun::run(&sizes, a.quick);
    if a.prog_only {
        return;
    }

    eprintln!("== control plane ==");
    let mut reload: BTreeMap<usize, BTreeMap<&str, f64>> = BTreeMap::new();
    for &size in &sizes {
        let count = match (a.quick, size) {
            (_, 100_000) => 5,
            (true, _) => 20,
            (false, s) if s >= 10_000 => 30,
            _ => 100,
        };
        let mut r = control::reloads(size, count);
        let mut m: BTreeMap<&str, f64> = BTreeMap::new();
        for (k, v) in control::percentiles(&mut r.total_ms) {
            m.insert(
                if k == "median" {
                    "median_ms"
                } else if k == "p99" {
                    "p99_ms"
                } else {
                    "max_ms"
                },
                v,
            );
        }
        for (k, v) in control::percentiles(&mut r.switch_ms) {
            m.insert(
                if k == "median" {
                    "switch_median_ms"
                } else if k == "p99" {
                    "switch_p99_ms"
                } else {
                    "switch_max_ms"
                },
                v,
            );
        }
        eprintln!(
            "  reload {size:>6} rules ({count}×): median {:.2} ms, p99 {:.2} ms (switch p99 {:.2} ms)",
            m["median_ms"], m["p99_ms"], m["switch_p99_ms"]
        );
        reload.insert(size, m);
    }
    let (tags_ms, tags_entries) = control::tags_compile_ms();
    eprintln!(
        "  10,000 rules over 100,000 addresses: parse + compile {tags_ms:.0} ms ({tags_entries} rule entries)"
    );

    eprintln!("== drop rate on a veth pair (receiver on CPU 1, generator on CPU 0) ==");
    let lab = linerate::Lab::new();
    let mut footprint: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for &size in &sizes {
        footprint.insert(size, control::footprint(&lab.rx, "rx0", size));
    }
    let mut variants = vec![linerate::Variant::Limit];
    for &s in &sizes {
        variants.push(linerate::Variant::Segment(s));
        variants.push(linerate::Variant::NftSets(s));
        variants.push(linerate::Variant::IptablesSet(s));
        if s <= 1_000 {
            variants.push(linerate::Variant::NftLinear(s));
        }
        if s <= 10_000 {
            variants.push(linerate::Variant::IptablesLinear(s));
        }
    }
    let mut samples: BTreeMap<String, Vec<linerate::Sample>> = BTreeMap::new();
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1);
    for round in 0..runs {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for &i in &order {
            let v = &variants[i];
            let s = linerate::run_variant(&lab, v, 1, seconds, repeat);
            eprintln!(
                "  round {}/{runs} {:<24} {:>7.3} Mpps processed of {:>7.3} offered",
                round + 1,
                v.name(),
                s[0].mpps(),
                s[0].offered_mpps()
            );
            samples.entry(v.name()).or_default().extend(s);
        }
    }
    drop(lab);
    let summary: BTreeMap<String, BTreeMap<&str, f64>> = samples
        .iter()
        .map(|(k, v)| (k.clone(), linerate::summarize(v)))
        .collect();
    let median = |name: &str| summary.get(name).map(|m| m["median_mpps"]).unwrap_or(0.0);
    let per_size = |prefix: &str| -> BTreeMap<usize, f64> {
        sizes
            .iter()
            .filter(|s| summary.contains_key(&format!("{prefix}/{s}")))
            .map(|s| (*s, median(&format!("{prefix}/{s}"))))
            .collect()
    };
    let limit = median("xdp_drop");
    let seg = per_size("segment");
    let nft = per_size("nft_sets");
    let nft_lin = per_size("nft_linear");
    let ipt = per_size("iptables_ipset");
    let ipt_lin = per_size("iptables_linear");

    // prog_run figures, with the baseline as its own case.
    let mut prog_ns = pr.ns.clone();
    prog_ns.insert(
        "trivial_xdp_drop".into(),
        sizes.iter().map(|s| (*s, pr.trivial_ns)).collect(),
    );
    let compile_load: BTreeMap<usize, f64> = sizes
        .iter()
        .map(|s| (*s, pr.parse_ms[s] + pr.compile_ms[s] + pr.load_ms[s]))
        .collect();
    let target_size = if sizes.contains(&10_000) {
        10_000
    } else {
        *sizes.last().unwrap()
    };
    let reload_p99 = reload[&target_size]["p99_ms"];

    // Where the targets stand.
    let largest = *sizes.last().unwrap();
    let smallest = sizes[0];
    let best_nft = nft
        .get(&target_size)
        .copied()
        .unwrap_or(0.0)
        .max(nft_lin.get(&target_size).copied().unwrap_or(0.0));
    let targets = json!({
        "segment_vs_xdp_drop_at_10k": seg.get(&target_size).copied().unwrap_or(0.0) / limit,
        "segment_vs_best_nft_at_10k": seg.get(&target_size).copied().unwrap_or(0.0) / best_nft,
        "segment_vs_linear_iptables_at_10k": seg.get(&target_size).copied().unwrap_or(0.0) / ipt_lin.get(&target_size).copied().unwrap_or(f64::NAN),
        "prog_cost_largest_vs_smallest": pr.ns["denied"][&largest] / pr.ns["denied"][&smallest],
        "compile_load_largest_ms": compile_load[&largest],
        "reload_p99_ms_at_10k": reload_p99,
        // XDP_DROP keeps up with a one-CPU generator: its figure is then the
        // generator's rate, a lower bound of the limit. Every other receiver
        // must be the bottleneck for its figure to mean anything.
        "generator_outruns_receiver": summary
            .iter()
            .filter(|(name, _)| name.as_str() != "xdp_drop")
            .all(|(_, m)| m["offered_mpps"] >= 1.2 * m["median_mpps"]),
        "limit_is_generator_bound": summary
            .iter()
            .filter(|(name, _)| name.as_str() == "xdp_drop")
            .all(|(_, m)| m["offered_mpps"] < 1.2 * m["median_mpps"]),
    });

    let report = json!({
        "command": a.command,
        "machine": machine(),
        "quick": a.quick,
        "seconds_per_run": seconds,
        "runs_per_variant": runs,
        "limit_xdp_drop_mpps": limit,
        "segment_drop_mpps": keyed(&seg),
        "nft_drop_mpps": keyed(&nft),
        "nft_linear_drop_mpps": keyed(&nft_lin),
        "iptables_drop_mpps": keyed(&ipt),
        "iptables_linear_drop_mpps": keyed(&ipt_lin),
        "linerate": summary,
        "prog_run_ns": prog_ns.iter().map(|(k, v)| (k.clone(), keyed(v))).collect::<serde_json::Map<_, _>>(),
        "compile_load_ms": keyed(&compile_load),
        "parse_ms": keyed(&pr.parse_ms),
        "compile_ms": keyed(&pr.compile_ms),
        "load_ms": keyed(&pr.load_ms),
        "reload_p99_ms": reload_p99,
        "reload_ms": reload.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "compile_10k_rules_100k_addresses_ms": tags_ms,
        "agent_rss_kib": keyed(&footprint.iter().map(|(k, v)| (*k, v.0)).collect()),
        "map_memory_bytes": keyed(&footprint.iter().map(|(k, v)| (*k, v.1)).collect()),
        "targets": targets,
        "duration_seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(dir) = a.json.parent() {
        std::fs::create_dir_all(dir).expect("report directory");
    }
    std::fs::write(&a.json, serde_json::to_vec_pretty(&report).unwrap())
        .expect("writing the JSON report");
    std::fs::write(&a.markdown, markdown(&report, &sizes)).expect("writing the markdown report");
    eprintln!("wrote {} and {}", a.json.display(), a.markdown.display());
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.is_finite() => {
            if x >= 100.0 {
                format!("{x:.0}")
            } else if x >= 1.0 {
                format!("{x:.2}")
            } else {
                format!("{x:.3}")
            }
        }
        _ => "–".to_owned(),
    }
}

fn markdown(r: &Value, sizes: &[usize]) -> String {
    let mut md = String::new();
    let m = &r["machine"];
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `{}` on {} ({} CPUs, {} GiB), Linux {}. {} runs per variant of {} s each{}. \
Absolute rates on this shared machine drift between runs; compare figures within one run (the ratios below).\n",
        r["command"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or("?"),
        m["cpus"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        r["runs_per_variant"],
        r["seconds_per_run"],
        if r["quick"] == true { " (quick)" } else { "" }
    );
    let _ = writeln!(
        md,
        "## Drop rate on a veth pair (Mpps processed by the receiver, median of runs)\n"
    );
    let _ = write!(md, "| variant |");
    for s in sizes {
        let _ = write!(md, " {s} rules |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sizes.len()));
    let _ = writeln!(
        md,
        "| trivial XDP_DROP (the limit) |{}",
        format!(" {} |", f(&r["limit_xdp_drop_mpps"])).repeat(sizes.len())
    );
    for (label, key) in [
        ("**segment**", "segment_drop_mpps"),
        (
            "nftables, netdev ingress, concatenated set",
            "nft_drop_mpps",
        ),
        ("nftables, one rule per policy rule", "nft_linear_drop_mpps"),
        (
            "iptables (raw) + ipset hash:ip,port,ip",
            "iptables_drop_mpps",
        ),
        (
            "iptables (raw), one rule per policy rule",
            "iptables_linear_drop_mpps",
        ),
    ] {
        let _ = write!(md, "| {label} |");
        for s in sizes {
            let _ = write!(md, " {} |", f(&r[key][s.to_string()]));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "\nEvery run's median, min, max, offered rate and receiver CPU time per packet are in `target/bench/report.json` (`linerate`).\n"
    );
    let _ = writeln!(
        md,
        "## Per-packet cost of the XDP program (ns, BPF_PROG_TEST_RUN, 64 distinct packets)\n"
    );
    let _ = write!(md, "| case |");
    for s in sizes {
        let _ = write!(md, " {s} rules |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sizes.len()));
    for (label, key) in [
        ("trivial XDP_DROP", "trivial_xdp_drop"),
        ("denied UDP (conntrack miss, policy lookup, drop)", "denied"),
        ("denied TCP SYN (policy lookup, drop)", "denied_tcp_syn"),
        ("allowed (policy lookup, pass)", "allowed"),
        ("conntrack hit (a reply)", "conntrack_hit"),
        ("IPv6 denied", "ipv6_denied"),
    ] {
        let _ = write!(md, "| {label} |");
        for s in sizes {
            let _ = write!(md, " {} |", f(&r["prog_run_ns"][key][s.to_string()]));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "\n## Control plane\n");
    let _ = write!(md, "| | ");
    for s in sizes {
        let _ = write!(md, " {s} rules |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(sizes.len()));
    for (label, key, sub) in [
        ("parse (ms)", "parse_ms", None),
        ("compile (ms)", "compile_ms", None),
        ("load into the maps and switch (ms)", "load_ms", None),
        ("parse + compile + load (ms)", "compile_load_ms", None),
        ("reload, median (ms)", "reload_ms", Some("median_ms")),
        ("reload, p99 (ms)", "reload_ms", Some("p99_ms")),
        (
            "reload, write + switch p99 (ms)",
            "reload_ms",
            Some("switch_p99_ms"),
        ),
        ("agent resident memory (KiB)", "agent_rss_kib", None),
        ("BPF map memory (bytes)", "map_memory_bytes", None),
    ] {
        let _ = write!(md, "| {label} |");
        for s in sizes {
            let v = match sub {
                Some(k) => &r[key][s.to_string()][k],
                None => &r[key][s.to_string()],
            };
            let _ = write!(md, " {} |", f(v));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "\nA reload alternates two policies of the size that differ in one rule. Parse + compile of 10,000 rules over 100,000 addresses (1,000 tags of 100 hosts): {} ms.\n",
        f(&r["compile_10k_rules_100k_addresses_ms"])
    );
    let t = &r["targets"];
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | this run |\n|---|---|");
    let _ = writeln!(
        md,
        "| segment at 10,000 rules ≥ 0.6 × XDP_DROP | {} × |",
        f(&t["segment_vs_xdp_drop_at_10k"])
    );
    let _ = writeln!(
        md,
        "| segment at 10,000 rules ≥ 3 × the best nftables ruleset | {} × |",
        f(&t["segment_vs_best_nft_at_10k"])
    );
    let _ = writeln!(
        md,
        "| segment at 10,000 rules ≥ 100 × linear iptables | {} × |",
        f(&t["segment_vs_linear_iptables_at_10k"])
    );
    let _ = writeln!(
        md,
        "| program cost at the largest size ≤ 1.2 × at 10 rules | {} × |",
        f(&t["prog_cost_largest_vs_smallest"])
    );
    let _ = writeln!(
        md,
        "| compile + load of the largest policy ≤ 2 s | {} ms |",
        f(&t["compile_load_largest_ms"])
    );
    let _ = writeln!(
        md,
        "| hot reload p99 ≤ 50 ms at 10,000 rules | {} ms |",
        f(&t["reload_p99_ms_at_10k"])
    );
    let _ = writeln!(
        md,
        "| generator out-ran every receiver but XDP_DROP by ≥ 20 % | {} |",
        t["generator_outruns_receiver"]
    );
    if t["limit_is_generator_bound"] == true {
        let _ = writeln!(
            md,
            "\nXDP_DROP received nearly all the generator sent: its rate is the \
             generator's (one CPU), so the real limit is higher and segment's \
             ratio to it lower than shown."
        );
    }
    md
}

//! `cargo xtask`: the one door to anything that needs root, the BPF
//! toolchain or a network lab.
//!
//! * `setup` — install what a fresh Debian 12 machine lacks (idempotent).
//! * `test`  — setup, then every test: unit and property tests, then the
//!   root tests in network namespaces (one at a time: they share the kernel)
//!   and the store tests (real etcd servers, no root; `--store` alone).
//! * `demo`  — setup, then a namespace lab enforcing the built-in example.
//! * `lint`  — rustfmt and clippy (`-D warnings`), host and BPF crates.
//! * `bench` — segment against XDP_DROP, nftables and iptables (the driver
//!   is `tests/src/bin/segment-bench`), then the fleet's convergence
//!   (`tests/src/bin/segment-fleet-bench`; `--fleet` for that alone).

mod demo;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "segment's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain and system packages segment needs (idempotent).
    Setup,
    /// Run every test: unit/property tests, then the root tests.
    Test {
        /// Only the unit and property tests (no root, no kernel).
        #[arg(long)]
        unit: bool,
        /// Only the root tests (namespaces, real traffic, BPF).
        #[arg(long)]
        root: bool,
        /// Only the store tests: the etcd layer against etcd servers the
        /// tests start themselves (needs etcd, not root).
        #[arg(long)]
        store: bool,
        /// Extra arguments for the root test binaries (e.g. a test name).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Build a namespace lab, enforce the example policy, show traffic and counters.
    Demo {
        /// The fleet instead: etcd and three hosts, each with its own agent,
        /// one published policy, enrollment by tag, then etcd stopped.
        #[arg(long)]
        fleet: bool,
    },
    /// rustfmt --check and clippy -D warnings.
    Lint,
    /// Measure segment against the XDP limit, nftables and iptables, the
    /// per-packet program cost (cold and warm cache), memory and the control
    /// plane; write docs/benchmarks.md and target/bench/report.json.
    Bench {
        /// A short version (fewer runs and seconds, baselines at 10,000
        /// rules only) that writes target/bench/benchmarks.md, never
        /// docs/benchmarks.md.
        #[arg(long)]
        quick: bool,
        /// Only the fleet's convergence benchmark (etcd, 1/100/1,000
        /// agents, enrollment churn): docs/fleet-benchmarks.md.
        #[arg(long)]
        fleet: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test {
            unit,
            root,
            store,
            filter,
        } => {
            setup::run()?;
            if store && !unit && !root {
                let mut args = vec!["test", "-p", "segment-tests", "--test", "store", "--"];
                args.extend(filter.iter().map(String::as_str));
                util::cargo(&args)?;
                println!("store tests passed");
                return Ok(());
            }
            // The root run includes the store tests (a test target of
            // segment-tests like the others).
            let (unit, root) = if !unit && !root {
                (true, true)
            } else {
                (unit, root || store)
            };
            if unit {
                util::cargo(&[
                    "test",
                    "--workspace",
                    "--exclude",
                    "segment-tests",
                    "--exclude",
                    "segment-ebpf",
                ])?;
            }
            if root {
                let agent = util::build_agent(false)?;
                let mut args = vec!["test", "-p", "segment-tests", "--", "--test-threads=1"];
                args.extend(filter.iter().map(String::as_str));
                util::cargo_env(
                    &args,
                    &[("SEGMENT_AGENT_BIN", agent.to_str().unwrap_or_default())],
                )?;
            }
            println!("all tests passed");
            Ok(())
        }
        Cmd::Demo { fleet } => {
            setup::run()?;
            if fleet {
                demo::run_fleet()
            } else {
                demo::run()
            }
        }
        Cmd::Bench { quick, fleet } => {
            setup::run()?;
            let agent = util::build_agent(true)?;
            util::cargo(&[
                "build",
                "--release",
                "-p",
                "segment-tests",
                "--features",
                "bench",
                "--bin",
                "segment-bench",
                "--bin",
                "segment-fleet-bench",
            ])?;
            let root = util::root();
            let fleet_bench = || -> Result<()> {
                let mut cmd =
                    std::process::Command::new(agent.with_file_name("segment-fleet-bench"));
                cmd.current_dir(&root)
                    .env("SEGMENT_AGENT_BIN", &agent)
                    .args([
                        "--json",
                        "target/bench/fleet.json",
                        "--markdown",
                        "docs/fleet-benchmarks.md",
                        "--command",
                    ])
                    .arg(match (quick, fleet) {
                        (true, true) => "cargo xtask bench --fleet --quick",
                        (false, true) => "cargo xtask bench --fleet",
                        (true, false) => "cargo xtask bench --quick",
                        (false, false) => "cargo xtask bench",
                    });
                if quick {
                    cmd.arg("--quick");
                }
                let status = cmd.status()?;
                anyhow::ensure!(status.success(), "the fleet benchmark failed ({status})");
                Ok(())
            };
            if fleet {
                return fleet_bench();
            }
            let bin = agent.with_file_name("segment-bench");
            let mut cmd = std::process::Command::new(&bin);
            cmd.current_dir(&root)
                .env("SEGMENT_AGENT_BIN", &agent)
                // A quick run is not the record: it writes under target/ only.
                .args([
                    "--json",
                    "target/bench/report.json",
                    "--markdown",
                    if quick {
                        "target/bench/benchmarks.md"
                    } else {
                        "docs/benchmarks.md"
                    },
                ])
                .args([
                    "--command",
                    if quick {
                        "cargo xtask bench --quick"
                    } else {
                        "cargo xtask bench"
                    },
                ]);
            if quick {
                cmd.arg("--quick");
            }
            let status = cmd.status()?;
            anyhow::ensure!(status.success(), "the benchmark failed ({status})");
            fleet_bench()
        }
        Cmd::Lint => {
            util::cargo(&["fmt", "--all", "--", "--check"])?;
            util::cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--exclude",
                "segment-ebpf",
                "--",
                "-D",
                "warnings",
            ])?;
            util::bpf_clippy()?;
            println!("lint clean");
            Ok(())
        }
    }
}

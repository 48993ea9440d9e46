//! `cargo xtask`: the one door to anything that needs root, the BPF
//! toolchain or a network lab.
//!
//! * `setup` — install what a fresh Debian 12 machine lacks (idempotent).
//! * `test`  — setup, then every test: unit and property tests, then the
//!   root tests in network namespaces (one at a time: they share the kernel).
//! * `demo`  — setup, then a namespace lab enforcing the built-in example.
//! * `lint`  — rustfmt and clippy (`-D warnings`), host and BPF crates.
//! * `bench` — segment against XDP_DROP, nftables and iptables (the driver
//!   is `tests/src/bin/segment-bench`).

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
        /// Extra arguments for the root test binaries (e.g. a test name).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Build a namespace lab, enforce the example policy, show traffic and counters.
    Demo,
    /// rustfmt --check and clippy -D warnings.
    Lint,
    /// Measure segment against the XDP limit, nftables and iptables, the
    /// per-packet program cost and the control plane; write
    /// docs/benchmarks.md and target/bench/report.json.
    Bench {
        /// A short version (fewer sizes, runs and seconds).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Test { unit, root, filter } => {
            setup::run()?;
            let (unit, root) = if !unit && !root {
                (true, true)
            } else {
                (unit, root)
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
        Cmd::Demo => {
            setup::run()?;
            demo::run()
        }
        Cmd::Bench { quick } => {
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
            ])?;
            let bin = agent.with_file_name("segment-bench");
            let root = util::root();
            let mut cmd = std::process::Command::new(&bin);
            cmd.current_dir(&root)
                .env("SEGMENT_AGENT_BIN", &agent)
                .args([
                    "--json",
                    "target/bench/report.json",
                    "--markdown",
                    "docs/benchmarks.md",
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
            Ok(())
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

//! The command line. Each subcommand lives in its own module and returns an
//! [`Outcome`]; `main` prints errors (with their causes) and maps outcomes to
//! documented exit codes:
//!
//! * 0 — success (the policy is valid, every test holds, the command did its job);
//! * 1 — the policy is invalid or a test assertion fails (nothing was applied);
//! * 2 — usage error, or an operational failure (no permission, no interface,
//!   the kernel refused a program, the store is unreachable, ...);
//! * 3 — `publish --if-revision N`: someone published after N (nothing written).

#![warn(clippy::arithmetic_side_effects)]

mod check;
mod control_cmds;
mod convert;
mod detach;
pub mod explain;
pub mod fleet;
mod output;
mod policy_tests;
mod publish;
pub mod run;
mod stats;
mod visibility;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// What a command concluded, beyond "it ran".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The input is wrong (invalid policy, failing test): exit 1.
    Rejected,
    /// A conditional write lost the race (`publish --if-revision`): exit 3.
    Conflict,
}

#[derive(Parser, Debug)]
#[command(
    name = "segment-agent",
    version,
    about = "Network microsegmentation enforced in the kernel with XDP and TC",
    long_about = "segment enforces a Tailscale-style policy (who may reach which tags, hosts and \
ports) on this host's interfaces: an XDP program judges what comes in, a TC program what goes \
out, default deny, with connection tracking and per-segment counters.\n\n\
Start with `segment-agent example > policy.yaml`, then `check`, `test` and `explain` it \
offline before you `run` it (ideally with `mode: audit` first).",
    after_help = "Exit codes: 0 success, 1 invalid policy or failing test, 2 usage or operational error (store unreachable), 3 publish --if-revision conflict."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate and compile a policy; print what it compiles to.
    ///
    /// Exits 0 when the policy is valid, 1 when it is not (with every error,
    /// its file, line and column, and how to fix it).
    Check {
        /// The policy file: segment's YAML, or a Tailscale policy file
        /// (`.hujson`/`.json`, or content starting with `{`).
        policy: PathBuf,
        /// Devices (name, addresses, owner, tags) and users (login, roles),
        /// YAML or JSON: where users' and tags' addresses come from.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the policy's `tests:` section and print every assertion's result.
    ///
    /// An assertion holds only if it holds for every address of its source
    /// to every address of its destination. Exits 0 when all hold, else 1.
    Test {
        policy: PathBuf,
        /// Devices and users (YAML or JSON), as for `check`.
        #[arg(long)]
        inventory: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Say whether the policy allows a packet, which rule allows it, and the
    /// segments of both ends.
    Explain {
        policy: PathBuf,
        /// Devices and users (YAML or JSON), as for `check`.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Source address.
        #[arg(long)]
        src: std::net::IpAddr,
        /// Destination address.
        #[arg(long)]
        dst: std::net::IpAddr,
        /// Protocol: tcp, udp, icmp, icmpv6, sctp or a number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Destination port (ignored for protocols without ports).
        #[arg(long, default_value_t = 0)]
        dport: u16,
        /// Also ask the running datapath: run a synthetic packet through the
        /// loaded program (BPF_PROG_TEST_RUN, dry: nothing is recorded) and
        /// show its verdict beside the reference evaluator's.
        #[arg(long)]
        live: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dirs: run::DirArgs,
    },
    /// Enforce a policy on interfaces; stay in the foreground.
    ///
    /// Loads the XDP (ingress) and TC (egress) programs, pins maps, programs
    /// and links under the pin directory, writes the policy and attaches.
    /// Stopping the process leaves enforcement in place; a second `run`
    /// adopts what is pinned. The policy file is watched and reloaded on
    /// change or SIGHUP; a policy that fails validation leaves the running
    /// one untouched.
    Run(Box<run::RunArgs>),
    /// Per-segment allowed/dropped counters, rule hits and drop reasons.
    ///
    /// Reads the pinned maps: works whether or not `run` is alive.
    Stats(stats::StatsArgs),
    /// Ask the running agent to re-read its policy file now.
    ///
    /// Exit 0 when the new policy is in force, 1 when it was rejected (the
    /// running policy stays; the reason is printed).
    Reload(control_cmds::ReloadArgs),
    /// Apply a policy to the running agent, optionally as a candidate that
    /// rolls back by itself unless confirmed (like `commit confirmed`).
    ///
    /// Without --confirm-within, the policy is committed: written over the
    /// agent's policy file. With it, the agent rolls back to its policy file
    /// unless `segment-agent confirm` is run in time.
    Apply(control_cmds::ApplyArgs),
    /// Keep the candidate applied with `apply --confirm-within`.
    Confirm(control_cmds::DirOnly),
    /// What the running agent enforces (generation, pending candidate).
    Status(control_cmds::StatusArgs),
    /// Recent dropped (and would-drop) flows from the running agent's flow log.
    ///
    /// Time, addresses and ports, protocol, segments of both ends, verdict and
    /// reason. The datapath rate-limits the log; suppressed records are counted.
    Flows(visibility::FlowsArgs),
    /// Record every new flow for a while (take inventory), aggregated by
    /// source, destination, protocol and port; saved for `suggest`.
    ///
    /// Best run with the policy in `mode: audit` (or an empty policy in audit
    /// mode), so that nothing is dropped while observing.
    Observe(visibility::ObserveArgs),
    /// Write a least-privilege policy allowing exactly what `observe` saw.
    Suggest(visibility::SuggestArgs),
    /// Which (source, destination, protocol, ports) a new policy newly allows
    /// or newly denies, computed from the compiled tables.
    Diff(visibility::DiffArgs),
    /// Convert a policy to the other language: a Tailscale policy file (with
    /// its inventory resolved) to segment's YAML, or YAML to a Tailscale
    /// policy file (`--to tailscale`). Verdicts are preserved; printed on
    /// stdout.
    Convert(convert::ConvertArgs),
    /// Remove segment: programs, links, maps and state (or only the named
    /// interfaces' links).
    Detach(detach::DetachArgs),
    /// Print the built-in example policy (a starting point for your own).
    Example,
    /// Publish a policy to the fleet's store (etcd), for every `run --store`
    /// agent to enforce.
    ///
    /// Validates, compiles and runs the policy's `tests:` (on its own, then
    /// with the hosts enrolled now); only if all of that holds is it written,
    /// in one transaction. Exit 0 published (the store revision is printed),
    /// 1 invalid or a failing test (nothing written), 2 store unreachable,
    /// 3 --if-revision conflict (nothing written).
    Publish(publish::PublishArgs),
    /// The fleet in the store: enrolled hosts, their tags and convergence;
    /// retiring a host.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_target(false)
        .init();
    match dispatch(cli) {
        Ok(Outcome::Success) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => std::process::ExitCode::from(1),
        Ok(Outcome::Conflict) => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::from(2)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Check {
            policy,
            inventory,
            json,
        } => check::run(&policy, inventory.as_deref(), json),
        Command::Test {
            policy,
            inventory,
            json,
        } => policy_tests::run(&policy, inventory.as_deref(), json),
        Command::Explain {
            policy,
            inventory,
            src,
            dst,
            proto,
            dport,
            live,
            json,
            dirs,
        } => explain::run(
            &policy,
            inventory.as_deref(),
            src,
            dst,
            &proto,
            dport,
            json,
            live.then(|| dirs.paths()),
        ),
        Command::Run(args) => run::run(*args),
        Command::Stats(args) => stats::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Reload(args) => control_cmds::reload(args),
        Command::Apply(args) => control_cmds::apply(args),
        Command::Confirm(args) => control_cmds::confirm(args),
        Command::Status(args) => control_cmds::status(args),
        Command::Flows(args) => visibility::flows(args),
        Command::Observe(args) => visibility::observe(args),
        Command::Suggest(args) => visibility::suggest(args),
        Command::Diff(args) => visibility::diff(args),
        Command::Convert(args) => convert::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Fleet(cmd) => fleet::run(cmd),
        Command::Example => {
            print!("{}", crate::policy::EXAMPLE_POLICY);
            Ok(Outcome::Success)
        }
    }
}

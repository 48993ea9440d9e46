//! `flows`, `observe`, `suggest` and `diff`: seeing what the datapath does,
//! and building and reviewing policies from it.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};

use super::{Outcome, output::load_and_compile, output::print_json, run::DirArgs};
use crate::{
    control::{Request, parse_duration, request},
    datapath::{Paths, state::State},
    diff,
    flows::{FlowRecord, format_line},
    observe::{self, Observation},
    policy,
};

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Keep printing new records as they come.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per record.
    #[arg(long)]
    pub json: bool,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn flows(args: FlowsArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    let mut after = 0;
    let mut warned = 0;
    loop {
        let resp = request(
            &paths,
            &Request::Flows {
                after,
                limit: Some(args.limit),
            },
            Duration::from_secs(10),
        )?;
        if !resp.ok {
            return super::control_cmds::outcome(resp);
        }
        let records: Vec<FlowRecord> = serde_json::from_value(resp.data["records"].clone())
            .context("reading the agent's flow records")?;
        for r in &records {
            if args.json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                println!("{}", format_line(r));
            }
            after = after.max(r.seq);
        }
        let suppressed = resp.data["suppressed"].as_u64().unwrap_or(0);
        if suppressed > warned && !args.json {
            eprintln!(
                "({} records suppressed by the datapath's rate limit so far: floods are counted, not logged one by one)",
                suppressed
            );
            warned = suppressed;
        }
        if !args.follow {
            return Ok(Outcome::Success);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// How long to watch (e.g. 30s, 10m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Also write this observation (alone) to a file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn observe(args: ObserveArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    let resp = request(
        &paths,
        &Request::Observe {
            seconds: args.duration.as_secs_f64(),
        },
        args.duration.saturating_add(Duration::from_secs(30)),
    )?;
    if !resp.ok {
        return super::control_cmds::outcome(resp);
    }
    let obs: Observation = serde_json::from_value(resp.data.clone())?;
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&obs)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if args.json {
        print_json(&resp.data);
        return Ok(Outcome::Success);
    }
    println!("{}", resp.message);
    println!(
        "{:<40} {:<40} {:<7} {:>6} {:>8}",
        "SOURCE", "DESTINATION", "PROTO", "PORT", "FLOWS"
    );
    for f in &obs.flows {
        println!(
            "{:<40} {:<40} {:<7} {:>6} {:>8}",
            f.src,
            f.dst,
            policy::protocol_name(f.proto),
            f.port,
            f.seen.flows
        );
    }
    println!("next: `segment-agent suggest` writes a policy allowing exactly this");
    Ok(Outcome::Success)
}

#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// Observations to use [default: observed.json in the state directory].
    #[arg(long)]
    pub observed: Option<PathBuf>,
    /// Policy whose hosts, users, groups and tags name things [default: the
    /// policy the agent enforces].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn suggest(args: SuggestArgs) -> Result<Outcome> {
    let paths: Paths = args.dirs.paths();
    let observed_path = args
        .observed
        .clone()
        .unwrap_or_else(|| paths.state_dir.join("observed.json"));
    let obs: Observation =
        serde_json::from_slice(&std::fs::read(&observed_path).with_context(|| {
            format!(
                "reading {} (run `segment-agent observe` first)",
                observed_path.display()
            )
        })?)
        .with_context(|| format!("{} is not an observation", observed_path.display()))?;
    let policy_path = match args.policy {
        Some(p) => Some(p),
        None => current_policy(&paths),
    };
    let current = match &policy_path {
        Some(p) => match policy::load(p) {
            Ok(p) => Some(p),
            Err(e) => {
                eprint!("{e}");
                return Ok(Outcome::Rejected);
            }
        },
        None => None,
    };
    print!("{}", observe::suggest(&obs, current.as_ref()));
    Ok(Outcome::Success)
}

/// The policy file of the slot the agent enforces, if any.
fn current_policy(paths: &Paths) -> Option<PathBuf> {
    let state = State::load(&paths.state_file()).ok()?;
    let slot = state
        .slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.generation)))
        .max_by_key(|(_, g)| *g)?
        .0;
    let p = paths.slot_policy(slot as u32);
    p.exists().then_some(p)
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The old policy (YAML or Tailscale policy file).
    pub old: PathBuf,
    /// The new policy (YAML or Tailscale policy file).
    pub new: PathBuf,
    /// Devices and users (YAML or JSON) for the Tailscale policy file(s)
    /// among the two. A YAML policy converted from one is a snapshot of its
    /// addresses and is read without it.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn diff(args: DiffArgs) -> Result<Outcome> {
    let inventory_for = |path: &std::path::Path| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let ts = crate::policy::tailscale::detect(&path.display().to_string(), &text)
            == crate::policy::tailscale::Format::Tailscale;
        args.inventory.as_deref().filter(|_| ts)
    };
    let Some((old, old_c)) = load_and_compile(&args.old, inventory_for(&args.old), args.json)
    else {
        return Ok(Outcome::Rejected);
    };
    let Some((new, new_c)) = load_and_compile(&args.new, inventory_for(&args.new), args.json)
    else {
        return Ok(Outcome::Rejected);
    };
    let changes = diff::diff((&old, &old_c), (&new, &new_c));
    if args.json {
        print_json(&serde_json::json!({
            "old": args.old,
            "new": args.new,
            "changes": changes,
            "newly_allowed": changes.iter().filter(|c| c.now == "allowed").count(),
            "newly_denied": changes.iter().filter(|c| c.now == "denied").count(),
        }));
        return Ok(Outcome::Success);
    }
    if changes.is_empty() {
        println!("no change: both policies allow and deny exactly the same packets");
    }
    for c in &changes {
        println!("{}", c.line());
    }
    Ok(Outcome::Success)
}

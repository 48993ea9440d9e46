//! Commands that talk to the running agent: `reload`, `apply`, `confirm`,
//! `status`.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::{Outcome, output::print_json, run::DirArgs};
use crate::{
    control::{ErrorKind, Request, Response, parse_duration, request},
    policy,
};

#[derive(Debug, clap::Args)]
pub struct DirOnly {
    #[command(flatten)]
    pub dirs: DirArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Apply the file even if it drops failsafe entries the running policy
    /// has (otherwise refused, with the entries it would drop).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dirs: DirArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dirs: DirArgs,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The policy to apply.
    pub policy: PathBuf,
    /// Roll back unless `segment-agent confirm` runs within this long
    /// (e.g. 60s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub confirm_within: Option<Duration>,
    /// Apply it even if it drops failsafe entries the running policy has
    /// (otherwise refused, with the entries it would drop).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub dirs: DirArgs,
}

const TIMEOUT: Duration = Duration::from_secs(60);

/// Prints the agent's answer; the exit code follows its kind: 0 done, 1 the
/// input was refused (nothing applied), 2 an operational failure (the
/// message says whether the policy was applied anyway).
pub(super) fn outcome(resp: Response) -> Result<Outcome> {
    match resp.error_kind() {
        None => {
            println!("{}", resp.message);
            Ok(Outcome::Success)
        }
        Some(ErrorKind::Invalid) => {
            eprintln!("{}", resp.message);
            Ok(Outcome::Rejected)
        }
        Some(ErrorKind::Operational | ErrorKind::NotPermitted) => {
            Err(anyhow::anyhow!(resp.message))
        }
    }
}

pub fn reload(args: ReloadArgs) -> Result<Outcome> {
    outcome(request(
        &args.dirs.paths(),
        &Request::Reload { force: args.force },
        TIMEOUT,
    )?)
}

pub fn confirm(args: DirOnly) -> Result<Outcome> {
    outcome(request(&args.dirs.paths(), &Request::Confirm, TIMEOUT)?)
}

pub fn apply(args: ApplyArgs) -> Result<Outcome> {
    // Check locally first: errors print with their snippets, and nothing
    // reaches the agent.
    let policy = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return Ok(Outcome::Rejected);
        }
    };
    let req = Request::Apply {
        name: policy.source.name.clone(),
        policy: policy.source.text.clone(),
        confirm_within_secs: args.confirm_within.map(|d| d.as_secs_f64()),
        force: args.force,
    };
    outcome(request(&args.dirs.paths(), &req, TIMEOUT)?)
}

pub fn status(args: StatusArgs) -> Result<Outcome> {
    let resp = request(&args.dirs.paths(), &Request::Status, TIMEOUT)?;
    if args.json {
        print_json(&resp.data);
    } else {
        println!("{}", resp.message);
        if let Some(p) = resp.data.get("pending").filter(|p| !p.is_null()) {
            println!(
                "candidate {} (generation {}) rolls back in {:.0}s unless confirmed",
                p["name"].as_str().unwrap_or("?"),
                p["generation"],
                p["rollback_in_secs"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(if resp.ok {
        Outcome::Success
    } else {
        Outcome::Rejected
    })
}

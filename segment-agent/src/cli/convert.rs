//! `segment-agent convert`: a Tailscale policy file to segment's YAML, and back.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{Outcome, output::load_and_compile, output::print_warnings};
use crate::policy::{convert, tailscale};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Yaml,
    Tailscale,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The policy to convert (YAML or a Tailscale policy file).
    pub policy: PathBuf,
    /// Devices and users (YAML or JSON): where users' and tags' addresses
    /// come from.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// The language to write; default: the other one.
    #[arg(long, value_enum)]
    pub to: Option<Target>,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<Outcome> {
    let Some((policy, _)) = load_and_compile(&args.policy, args.inventory.as_deref(), false) else {
        return Ok(Outcome::Rejected);
    };
    print_warnings(&policy);
    let from = tailscale::detect(&policy.source.name, &policy.source.text);
    let to = args.to.unwrap_or(match from {
        tailscale::Format::Tailscale => Target::Yaml,
        tailscale::Format::Yaml => Target::Tailscale,
    });
    print!(
        "{}",
        match to {
            Target::Yaml => convert::to_yaml(&policy),
            Target::Tailscale => convert::to_tailscale(&policy),
        }
    );
    Ok(Outcome::Success)
}

//! `segment-agent stats`: counters per segment and direction, rule hits and
//! datapath reasons, read by [`crate::stats::collect`] from the pinned maps
//! (with or without a running agent), printed.

use std::time::Duration;

use anyhow::Result;

use super::{Outcome, output::print_json, run::DirArgs};
use crate::{
    control::parse_duration,
    stats::{StatsView, collect},
};

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print a JSON object (with --watch: one object per line).
    #[arg(long)]
    pub json: bool,
    /// Print again every SECS seconds (or 500ms, 2m, ...) until interrupted.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub watch: Option<Duration>,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn run(args: StatsArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    loop {
        let v = collect(&paths)?;
        if args.json {
            if args.watch.is_some() {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print_json(&serde_json::to_value(&v)?);
            }
        } else {
            print_text(&v);
        }
        match args.watch {
            Some(every) => std::thread::sleep(every),
            None => break,
        }
        if !args.json {
            println!();
        }
    }
    Ok(Outcome::Success)
}

fn print_text(v: &StatsView) {
    println!(
        "policy {} (generation {}), override {}, {} conntrack entries",
        v.policy.as_deref().unwrap_or("-"),
        v.generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into()),
        v.override_mode,
        v.conntrack_entries
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "SEGMENT", "ALLOWED", "DROPPED", "WOULD-DROP", "DROP-IN", "DROP-OUT"
    );
    for seg in &v.segments {
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>12} {:>12}",
            seg.name,
            seg.total.allowed_packets,
            seg.total.dropped_packets,
            seg.total.would_drop_packets,
            seg.ingress.dropped_packets,
            seg.egress.dropped_packets,
        );
    }
    if !v.rules.is_empty() {
        println!("{:<48} {:>12}", "RULE", "HITS");
        for r in &v.rules {
            println!("{:<48} {:>12}", r.label, r.hits);
        }
    }
    let drops: Vec<_> = v
        .reasons
        .iter()
        .filter(|r| r.drop && r.packets != 0)
        .collect();
    if !drops.is_empty() {
        println!("{:<48} {:>12}", "DROP REASON (HOOK)", "PACKETS");
        for r in drops {
            println!(
                "{:<48} {:>12}",
                format!("{} ({})", r.reason, r.hook),
                r.packets
            );
        }
    }
}

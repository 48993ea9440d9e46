//! Whether this machine's hardware performance counters can tell which
//! lookups miss (instructions, cycles, cache and dTLB misses). Virtual
//! machines often have no PMU; then `perf stat` reports `<not supported>`
//! for every hardware event, and the benchmark says so instead of printing
//! figures it could not measure.

use std::process::Command;

/// The events the question needs.
pub const EVENTS: &str = "instructions,cycles,cache-misses,dTLB-load-misses";

/// What `perf stat` said about the events.
#[derive(Clone, Debug)]
pub enum Availability {
    /// Every event counted something.
    Counting,
    /// Why not: perf missing, or which events are not supported.
    Unavailable(String),
}

/// Asks `perf stat -x,` about [`EVENTS`] over `true`.
pub fn probe() -> Availability {
    let out = match Command::new("perf")
        .args(["stat", "-x", ",", "-e", EVENTS, "true"])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            return Availability::Unavailable(format!(
                "perf could not be run ({e}); install linux-perf"
            ));
        }
    };
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Availability::Unavailable(format!("perf stat failed: {}", text.trim()));
    }
    // CSV lines: value,unit,event,...; the value is `<not supported>` or
    // `<not counted>` when the event cannot be counted.
    let mut missing = Vec::new();
    let mut seen = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let Some(event) = fields.get(2) else { continue };
        if !EVENTS.split(',').any(|e| event.starts_with(e)) {
            continue;
        }
        seen += 1;
        if fields[0].trim().parse::<u64>().is_err() {
            missing.push(format!("{event}: {}", fields[0].trim()));
        }
    }
    if seen == 0 {
        return Availability::Unavailable(format!(
            "perf stat printed no figures for {EVENTS}: {}",
            text.trim()
        ));
    }
    if missing.is_empty() {
        Availability::Counting
    } else {
        Availability::Unavailable(format!("perf stat: {}", missing.join(", ")))
    }
}

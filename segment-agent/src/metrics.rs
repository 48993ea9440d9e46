//! Prometheus text exposition of the agent's counters. Built from the same
//! [`StatsView`] `stats --json` prints, so the two never disagree. Names follow the
//! Prometheus conventions: a `segment_` prefix, base units (bytes, seconds),
//! `_total` on counters.

#![warn(clippy::arithmetic_side_effects)]

use std::fmt::Write;

use serde::Serialize;

use crate::{report::Counters, stats::StatsView};

/// What only the running agent knows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentMetrics {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// 1 if the last reload attempt succeeded (the initial load counts).
    pub last_reload_ok: bool,
    pub last_reload_unix: f64,
    pub flow_records_read: u64,
    pub flow_records_kept: usize,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", esc(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn num<T: TryInto<u64>>(v: T) -> f64 {
    // Counters above 2^53 lose precision as f64, as in every Prometheus client.
    v.try_into().map(|v: u64| v as f64).unwrap_or(f64::MAX)
}

fn counters_of(c: &Counters, unit: &str) -> [(&'static str, u64); 3] {
    if unit == "bytes" {
        [
            ("allowed", c.allowed_bytes),
            ("dropped", c.dropped_bytes),
            ("would_drop", c.would_drop_bytes),
        ]
    } else {
        [
            ("allowed", c.allowed_packets),
            ("dropped", c.dropped_packets),
            ("would_drop", c.would_drop_packets),
        ]
    }
}

/// The exposition for the datapath's counters and the agent's own.
pub fn exposition(stats: &StatsView, agent: &AgentMetrics) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };

    for (metric, unit, help) in [
        (
            "segment_packets_total",
            "packets",
            "Packets with the segment at either end, by hook and verdict.",
        ),
        (
            "segment_bytes_total",
            "bytes",
            "Bytes with the segment at either end, by hook and verdict.",
        ),
    ] {
        f.header(metric, "counter", help);
        for seg in &stats.segments {
            for (direction, c) in [("ingress", &seg.ingress), ("egress", &seg.egress)] {
                for (label, v) in counters_of(c, unit) {
                    f.sample(
                        metric,
                        &[
                            ("segment", &seg.name),
                            ("kind", &seg.kind),
                            ("direction", direction),
                            ("verdict", label),
                        ],
                        num(v),
                    );
                }
            }
        }
    }

    f.header("segment_rule_hits_total", "counter", "Packets each rule of the policy in force admitted (new flows, and packets judged without conntrack).");
    for r in &stats.rules {
        let index = r.index.to_string();
        f.sample(
            "segment_rule_hits_total",
            &[
                ("rule", &r.label),
                ("index", &index),
                ("failsafe", if r.failsafe { "true" } else { "false" }),
            ],
            num(r.hits),
        );
    }

    f.header(
        "segment_datapath_packets_total",
        "counter",
        "Packets by datapath decision reason and hook.",
    );
    for r in &stats.reasons {
        f.sample(
            "segment_datapath_packets_total",
            &[("reason", r.reason), ("hook", r.hook)],
            num(r.packets),
        );
    }
    f.header(
        "segment_datapath_bytes_total",
        "counter",
        "Bytes by datapath decision reason and hook.",
    );
    for r in &stats.reasons {
        f.sample(
            "segment_datapath_bytes_total",
            &[("reason", r.reason), ("hook", r.hook)],
            num(r.bytes),
        );
    }

    f.header("segment_conntrack_entries", "gauge", "Tracked connections.");
    f.sample(
        "segment_conntrack_entries",
        &[],
        num(stats.conntrack_entries),
    );
    f.header(
        "segment_map_entries",
        "gauge",
        "Entries in use, per BPF map.",
    );
    for m in &stats.maps {
        f.sample("segment_map_entries", &[("map", m.name)], num(m.entries));
    }
    f.header(
        "segment_map_capacity_entries",
        "gauge",
        "Maximum entries, per BPF map.",
    );
    for m in &stats.maps {
        f.sample(
            "segment_map_capacity_entries",
            &[("map", m.name)],
            num(m.capacity),
        );
    }

    f.header(
        "segment_policy_generation",
        "gauge",
        "Generation of the policy in force.",
    );
    f.sample(
        "segment_policy_generation",
        &[],
        num(stats.generation.unwrap_or(0)),
    );
    f.header(
        "segment_policy_reloads_total",
        "counter",
        "Policy reload attempts by result.",
    );
    f.sample(
        "segment_policy_reloads_total",
        &[("result", "success")],
        num(agent.reloads_ok),
    );
    f.sample(
        "segment_policy_reloads_total",
        &[("result", "failure")],
        num(agent.reloads_failed),
    );
    f.header(
        "segment_policy_last_reload_success",
        "gauge",
        "1 if the last reload attempt succeeded.",
    );
    f.sample(
        "segment_policy_last_reload_success",
        &[],
        if agent.last_reload_ok { 1.0 } else { 0.0 },
    );
    f.header(
        "segment_policy_last_reload_timestamp_seconds",
        "gauge",
        "Unix time of the last reload attempt.",
    );
    f.sample(
        "segment_policy_last_reload_timestamp_seconds",
        &[],
        agent.last_reload_unix,
    );

    f.header(
        "segment_flow_log_records_total",
        "counter",
        "Flow log records the datapath wrote, or suppressed by its rate limit.",
    );
    f.sample(
        "segment_flow_log_records_total",
        &[("result", "written")],
        num(stats.flow_log.written),
    );
    f.sample(
        "segment_flow_log_records_total",
        &[("result", "suppressed")],
        num(stats.flow_log.suppressed),
    );
    f.header(
        "segment_flow_log_records_kept",
        "gauge",
        "Flow log records the agent keeps in memory.",
    );
    f.sample(
        "segment_flow_log_records_kept",
        &[],
        num(agent.flow_records_kept),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::SegmentStats,
        stats::{FlowLogCounters, MapUse, ReasonCount, RuleHits, Totals},
    };

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            esc(r#"acl #1 "web" (line 3)"#),
            r#"acl #1 \"web\" (line 3)"#
        );
        assert_eq!(esc("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn segments_become_labelled_counters() {
        let web = SegmentStats {
            name: "tag:web".into(),
            kind: "tag".into(),
            ingress: Counters {
                dropped_packets: 5,
                dropped_bytes: 300,
                allowed_packets: 1,
                ..Counters::default()
            },
            ..SegmentStats::default()
        };
        let stats = StatsView {
            pin_dir: "/sys/fs/bpf/segment".into(),
            policy: Some("p.yaml".into()),
            generation: Some(4),
            active_slot: Some(1),
            override_mode: "none",
            enforce: None,
            interfaces: vec![],
            totals: Totals::default(),
            conntrack_entries: 2,
            conntrack_unconfirmed: 0,
            maps: vec![MapUse {
                name: "conntrack",
                entries: 2,
                capacity: 10,
            }],
            flow_log: FlowLogCounters {
                written: 5,
                suppressed: 0,
            },
            segments: vec![web],
            rules: vec![RuleHits {
                index: 0,
                label: "acl #1 \"x\"".into(),
                text: String::new(),
                failsafe: false,
                hits: 3,
            }],
            reasons: vec![ReasonCount {
                reason: "drop_no_rule",
                drop: true,
                hook: "ingress",
                packets: 5,
                bytes: 300,
            }],
        };
        let text = exposition(&stats, &AgentMetrics::default());
        assert!(text.contains(
            "segment_packets_total{segment=\"tag:web\",kind=\"tag\",direction=\"ingress\",verdict=\"dropped\"} 5"
        ), "{text}");
        assert!(text.contains("segment_rule_hits_total{rule=\"acl #1 \\\"x\\\"\",index=\"0\",failsafe=\"false\"} 3"), "{text}");
        assert!(text.contains("segment_policy_generation 4"), "{text}");
        assert!(
            text.contains(
                "segment_datapath_bytes_total{reason=\"drop_no_rule\",hook=\"ingress\"} 300"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE segment_conntrack_entries gauge"),
            "{text}"
        );
    }
}

//! Prometheus text exposition of the agent's counters. Built from the same
//! object `stats --json` prints, so the two never disagree. Names follow the
//! Prometheus conventions: a `segment_` prefix, base units (bytes, seconds),
//! `_total` on counters.

use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

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

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The exposition for a `stats` object.
pub fn exposition(stats: &Value, agent: &AgentMetrics) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let segments = stats["segments"].as_array().cloned().unwrap_or_default();

    let verdicts = [
        ("allowed", "allowed"),
        ("dropped", "dropped"),
        ("would_drop", "would_drop"),
    ];
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
        for seg in &segments {
            let name = seg["name"].as_str().unwrap_or("?");
            let kind = seg["kind"].as_str().unwrap_or("?");
            for direction in ["ingress", "egress"] {
                for (label, field) in verdicts {
                    let v = num(&seg[direction][format!("{field}_{unit}")]);
                    f.sample(
                        metric,
                        &[
                            ("segment", name),
                            ("kind", kind),
                            ("direction", direction),
                            ("verdict", label),
                        ],
                        v,
                    );
                }
            }
        }
    }

    f.header("segment_rule_hits_total", "counter", "Packets each rule of the policy in force admitted (new flows, and packets judged without conntrack).");
    for r in stats["rules"].as_array().into_iter().flatten() {
        let index = r["index"].to_string();
        f.sample(
            "segment_rule_hits_total",
            &[
                ("rule", r["label"].as_str().unwrap_or("?")),
                ("index", &index),
                (
                    "failsafe",
                    if r["failsafe"].as_bool() == Some(true) {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ],
            num(&r["hits"]),
        );
    }

    f.header(
        "segment_datapath_packets_total",
        "counter",
        "Packets by datapath decision reason and hook.",
    );
    for r in stats["reasons"].as_array().into_iter().flatten() {
        f.sample(
            "segment_datapath_packets_total",
            &[
                ("reason", r["reason"].as_str().unwrap_or("?")),
                ("hook", r["hook"].as_str().unwrap_or("?")),
            ],
            num(&r["packets"]),
        );
    }
    f.header(
        "segment_datapath_bytes_total",
        "counter",
        "Bytes by datapath decision reason and hook.",
    );
    for r in stats["reasons"].as_array().into_iter().flatten() {
        f.sample(
            "segment_datapath_bytes_total",
            &[
                ("reason", r["reason"].as_str().unwrap_or("?")),
                ("hook", r["hook"].as_str().unwrap_or("?")),
            ],
            num(&r["bytes"]),
        );
    }

    f.header("segment_conntrack_entries", "gauge", "Tracked connections.");
    f.sample(
        "segment_conntrack_entries",
        &[],
        num(&stats["conntrack_entries"]),
    );
    f.header(
        "segment_map_entries",
        "gauge",
        "Entries in use, per BPF map.",
    );
    for m in stats["maps"].as_array().into_iter().flatten() {
        f.sample(
            "segment_map_entries",
            &[("map", m["name"].as_str().unwrap_or("?"))],
            num(&m["entries"]),
        );
    }
    f.header(
        "segment_map_capacity_entries",
        "gauge",
        "Maximum entries, per BPF map.",
    );
    for m in stats["maps"].as_array().into_iter().flatten() {
        f.sample(
            "segment_map_capacity_entries",
            &[("map", m["name"].as_str().unwrap_or("?"))],
            num(&m["capacity"]),
        );
    }

    f.header(
        "segment_policy_generation",
        "gauge",
        "Generation of the policy in force.",
    );
    f.sample("segment_policy_generation", &[], num(&stats["generation"]));
    f.header(
        "segment_policy_reloads_total",
        "counter",
        "Policy reload attempts by result.",
    );
    f.sample(
        "segment_policy_reloads_total",
        &[("result", "success")],
        agent.reloads_ok as f64,
    );
    f.sample(
        "segment_policy_reloads_total",
        &[("result", "failure")],
        agent.reloads_failed as f64,
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
        num(&stats["flow_log"]["written"]),
    );
    f.sample(
        "segment_flow_log_records_total",
        &[("result", "suppressed")],
        num(&stats["flow_log"]["suppressed"]),
    );
    f.header(
        "segment_flow_log_records_kept",
        "gauge",
        "Flow log records the agent keeps in memory.",
    );
    f.sample(
        "segment_flow_log_records_kept",
        &[],
        agent.flow_records_kept as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let stats = serde_json::json!({
            "segments": [{"name": "tag:web", "kind": "tag",
                "ingress": {"dropped_packets": 5, "dropped_bytes": 300, "allowed_packets": 1},
                "egress": {}}],
            "rules": [{"index": 0, "label": "acl #1 \"x\"", "failsafe": false, "hits": 3}],
            "reasons": [{"reason": "drop_no_rule", "hook": "ingress", "packets": 5, "bytes": 300}],
            "conntrack_entries": 2,
            "maps": [{"name": "conntrack", "entries": 2, "capacity": 10}],
            "generation": 4,
            "flow_log": {"written": 5, "suppressed": 0},
        });
        let text = exposition(&stats, &AgentMetrics::default());
        assert!(text.contains(
            "segment_packets_total{segment=\"tag:web\",kind=\"tag\",direction=\"ingress\",verdict=\"dropped\"} 5"
        ), "{text}");
        assert!(text.contains("segment_rule_hits_total{rule=\"acl #1 \\\"x\\\"\",index=\"0\",failsafe=\"false\"} 3"), "{text}");
        assert!(text.contains("segment_policy_generation 4"), "{text}");
        assert!(
            text.contains("# TYPE segment_conntrack_entries gauge"),
            "{text}"
        );
    }
}

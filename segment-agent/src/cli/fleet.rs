//! `segment-agent fleet status|remove --store URL`.
//!
//! `status` shows every enrolled host: addresses, claimed tags and which of
//! them the current policy's `tagOwners` grants (computed here, exactly as
//! every agent computes it), the policy revision and membership the host
//! has applied, its generation and policy hash, its last report and
//! whether it is behind; then "N of M hosts on revision R". Exit 0, or 2
//! when the store is unreachable.
//!
//! `remove HOST` retires a host's enrollment (and its status): every agent
//! drops it from the tags it was granted. Exit 0 removed, 1 no such host.

use std::collections::BTreeSet;

use anyhow::Context;
use serde_json::json;

use super::{Outcome, output::print_json};
use crate::{
    datapath::state::unix_now,
    policy::Membership,
    store::{Store, StoreArgs, client::FleetRecords, membership},
};

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Every enrolled host, what it claims and is granted, what it applied.
    ///
    /// A host is behind when the policy revision or the membership it
    /// applied is not the current one, or it has not reported at all.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Retire a host: delete its enrollment (membership ends everywhere) and
    /// its status. Its agent, if it still runs, enrolls again.
    Remove {
        host: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        FleetCommand::Status { store, json } => {
            let cfg = store.config()?;
            let records = runtime.block_on(async {
                let s = Store::connect(&cfg).await?;
                s.read_all().await
            });
            let records = records.context("reading the fleet")?;
            let status = FleetStatus::compute(&records, unix_now());
            if json {
                print_json(&status.to_json());
            } else {
                status.print();
            }
            Ok(Outcome::Success)
        }
        FleetCommand::Remove { host, store } => {
            let cfg = store.config()?;
            let (removed, revision) = runtime
                .block_on(async {
                    let s = Store::connect(&cfg).await?;
                    s.remove_host(&host).await
                })
                .context("removing the host")?;
            if removed {
                println!("removed host {host} at store revision {revision}");
                Ok(Outcome::Success)
            } else {
                eprintln!("no host named {host} is enrolled (nothing removed)");
                Ok(Outcome::Rejected)
            }
        }
    }
}

/// One line of `fleet status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostLine {
    pub name: String,
    pub enrolled: bool,
    pub expired: bool,
    pub addresses: Vec<std::net::IpAddr>,
    pub claimed_tags: Vec<String>,
    pub granted_tags: Vec<String>,
    pub refused_tags: Vec<Refused>,
    pub applied_revision: Option<i64>,
    pub generation: Option<u64>,
    pub policy_sha256: Option<String>,
    pub membership_current: Option<bool>,
    pub last_error: Option<String>,
    pub reported_at_ms: Option<u64>,
    pub report_age_secs: Option<f64>,
    pub agent_version: Option<String>,
    /// The host's packet totals as its agent last reported them.
    pub counters: Option<crate::store::HostCounters>,
    pub counters_age_secs: Option<f64>,
    pub behind: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    pub tag: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct FleetStatus {
    pub revision: Option<i64>,
    pub policy_name: Option<String>,
    pub policy_sha256: Option<String>,
    pub policy_error: Option<String>,
    pub store_revision: i64,
    pub hosts: Vec<HostLine>,
    pub invalid: Vec<(String, String)>,
}

impl FleetStatus {
    pub fn compute(records: &FleetRecords, now: u64) -> Self {
        let view = &records.view;
        let inventory = membership::inventory(view, now);
        let current_membership = membership::membership_hash(&inventory);
        let (grants, policy_error): (Vec<Membership>, Option<String>) = match &view.policy {
            Some(doc) => match membership::evaluate(doc, &inventory) {
                Ok(p) => (p.membership, None),
                Err(e) => (Vec::new(), Some(e.summary())),
            },
            None => (Vec::new(), view.policy_error.clone()),
        };
        let revision = view.policy.as_ref().map(|p| p.mod_revision);
        let names: BTreeSet<&str> = view
            .hosts
            .keys()
            .map(|k| &**k)
            .chain(records.statuses.keys().map(String::as_str))
            .collect();
        let now_ms = now.saturating_mul(1000);
        let hosts = names
            .into_iter()
            .map(|name| {
                let e = view.hosts.get(name).map(|h| &h.value);
                let st = records.statuses.get(name).map(|s| &s.value);
                let mine = grants.iter().filter(|m| m.device == name);
                let granted_tags = mine
                    .clone()
                    .filter(|m| m.granted)
                    .map(|m| m.tag.clone())
                    .collect();
                let refused_tags = mine
                    .filter(|m| !m.granted)
                    .map(|m| Refused {
                        tag: m.tag.clone(),
                        reason: m.reason.clone(),
                    })
                    .collect();
                let membership_current = st.map(|s| s.membership_sha256 == current_membership);
                let behind = match (st, revision) {
                    (None, _) => true,
                    (Some(s), Some(r)) => {
                        s.applied_revision != r || membership_current != Some(true)
                    }
                    (Some(_), None) => false,
                };
                HostLine {
                    name: name.to_owned(),
                    enrolled: e.is_some(),
                    expired: e.is_some_and(|e| e.expired(now)),
                    addresses: e.map(|e| e.addresses.clone()).unwrap_or_default(),
                    claimed_tags: e.map(|e| e.tags.clone()).unwrap_or_default(),
                    granted_tags,
                    refused_tags,
                    applied_revision: st.map(|s| s.applied_revision),
                    generation: st.map(|s| s.generation),
                    policy_sha256: st.map(|s| s.policy_sha256.clone()),
                    membership_current,
                    last_error: st.and_then(|s| s.last_error.clone()),
                    reported_at_ms: st.map(|s| s.reported_at_ms),
                    report_age_secs: st
                        .map(|s| now_ms.saturating_sub(s.reported_at_ms) as f64 / 1e3),
                    agent_version: st.map(|s| s.agent_version.clone()),
                    counters: st.and_then(|s| s.counters),
                    counters_age_secs: st
                        .and_then(|s| s.counters)
                        .map(|c| now_ms.saturating_sub(c.read_at_ms) as f64 / 1e3),
                    behind,
                }
            })
            .collect();
        Self {
            revision,
            policy_name: view.policy.as_ref().map(|p| p.value.name.clone()),
            policy_sha256: view.policy.as_ref().map(|p| p.value.sha256.clone()),
            policy_error,
            store_revision: view.revision,
            hosts,
            invalid: records.invalid.clone(),
        }
    }

    pub fn on_revision(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.enrolled && !h.behind)
            .count()
    }

    pub fn enrolled(&self) -> usize {
        self.hosts.iter().filter(|h| h.enrolled).count()
    }

    pub fn summary(&self) -> String {
        match self.revision {
            Some(r) => format!(
                "{} of {} hosts on revision {r}",
                self.on_revision(),
                self.enrolled()
            ),
            None => format!("no policy published; {} hosts enrolled", self.enrolled()),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "revision": self.revision,
            "policy": {"name": self.policy_name, "sha256": self.policy_sha256, "error": self.policy_error},
            "store_revision": self.store_revision,
            "hosts": self.hosts,
            "on_revision": self.on_revision(),
            "enrolled": self.enrolled(),
            "summary": self.summary(),
            "invalid_records": self.invalid.iter().map(|(k, e)| json!({"key": k, "error": e})).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        match (&self.revision, &self.policy_name) {
            (Some(r), Some(n)) => println!(
                "policy {n} at revision {r} (sha256 {})",
                self.policy_sha256
                    .as_deref()
                    .map(|h| &h[..12])
                    .unwrap_or("?")
            ),
            _ => println!("no policy published"),
        }
        if let Some(e) = &self.policy_error {
            println!("  the current policy does not validate with the fleet: {e}");
        }
        for h in &self.hosts {
            let addrs: Vec<String> = h.addresses.iter().map(|a| a.to_string()).collect();
            let state = if !h.enrolled {
                " (not enrolled: removed, still reporting)"
            } else if h.expired {
                " (enrollment expired: not a member)"
            } else {
                ""
            };
            println!("{}{state}", h.name);
            println!(
                "  addresses  {}",
                if addrs.is_empty() {
                    "-".into()
                } else {
                    addrs.join(", ")
                }
            );
            println!(
                "  tags       claimed {}; granted {}",
                list(&h.claimed_tags),
                list(&h.granted_tags)
            );
            for r in &h.refused_tags {
                println!("  refused    {}: {}", r.tag, r.reason);
            }
            match h.applied_revision {
                Some(rev) => println!(
                    "  applied    revision {rev}, generation {}, policy {}, membership {}; reported {:.1} s ago{}",
                    h.generation.unwrap_or_default(),
                    h.policy_sha256
                        .as_deref()
                        .map(|s| s.get(..12).unwrap_or(s))
                        .unwrap_or("-"),
                    if h.membership_current == Some(true) {
                        "current"
                    } else {
                        "outdated"
                    },
                    h.report_age_secs.unwrap_or_default(),
                    if h.behind { " — BEHIND" } else { "" }
                ),
                None => println!("  applied    no report (agent not running?) — BEHIND"),
            }
            if let Some(c) = &h.counters {
                println!(
                    "  packets    {} passed, {} dropped, {} would drop (audit); read {:.0} s ago",
                    c.passed_packets,
                    c.dropped_packets,
                    c.would_drop_packets,
                    h.counters_age_secs.unwrap_or_default()
                );
            }
            if let Some(e) = &h.last_error {
                println!("  error      {e}");
            }
        }
        for (k, e) in &self.invalid {
            println!("invalid record {k}: {e}");
        }
        println!("{}", self.summary());
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(", ")
    }
}

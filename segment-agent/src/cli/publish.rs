//! `segment-agent publish POLICY --store URL`: validate, compile and run the
//! policy's `tests:` — first on its own, then with the membership the fleet
//! has now (the enrolled hosts, as `tagOwners` grants their claims) — and
//! only if all of that holds, write it to the store in one transaction.
//!
//! Exit codes: 0 published (the store revision is printed); 1 invalid or a
//! test fails (nothing written); 2 the store is unreachable (or another
//! operational error); 3 `--if-revision N` and someone published after N
//! (nothing written).

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::{
    Outcome,
    output::{load_and_compile, print_json, print_warnings},
};
use crate::{
    compile,
    policy::{self, Diagnostic},
    store::{PolicyDocument, Store, StoreArgs, StoreError, membership},
    verify,
};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The policy file: segment's YAML or a Tailscale policy file
    /// (HuJSON); its hosts are the enrolled ones.
    pub policy: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Publish only if the policy in the store is still the one published
    /// at revision N (0: only if none was ever published). Exit 3 if not.
    #[arg(long, value_name = "N")]
    pub if_revision: Option<i64>,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PublishArgs) -> anyhow::Result<Outcome> {
    let cfg = args.store.config()?;
    // 1. On its own, offline: a broken policy never needs the store.
    let Some((policy, compiled)) = load_and_compile(&args.policy, None, args.json) else {
        return Ok(Outcome::Rejected);
    };
    let text = policy.source.text.clone();
    let name = args
        .policy
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.policy.display().to_string());
    if let Some(outcome) = report_failing_tests(&policy, &compiled, args.json, "") {
        return Ok(outcome);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::connect(&cfg).await?;
        // 2. With the fleet's membership as it is now.
        let view = store.read_view().await?;
        let inventory = membership::inventory(&view, crate::datapath::state::unix_now());
        let with_fleet = match policy::parse_with(&args.policy.display().to_string(), &text, &inventory)
        {
            Ok(p) => p,
            Err(e) => {
                if args.json {
                    print_json(&json!({"published": false, "valid": false, "file": e.source.name, "errors": e.diagnostics, "with_enrolled_hosts": inventory.devices.len()}));
                } else {
                    eprint!("{e}");
                    eprintln!("(with the {} enrolled hosts of the fleet)", inventory.devices.len());
                }
                return Ok(Outcome::Rejected);
            }
        };
        let compiled_fleet = match compile::compile(&with_fleet) {
            Ok(c) => c,
            Err(e) => {
                let d = Diagnostic::error(None, e.to_string());
                if args.json {
                    print_json(&json!({"published": false, "valid": false, "file": with_fleet.source.name, "errors": [d]}));
                } else {
                    eprint!("{}", d.render(&with_fleet.source));
                }
                return Ok(Outcome::Rejected);
            }
        };
        let results = verify::run(&with_fleet, &compiled_fleet);
        if let Some(outcome) = report_failing_tests(
            &with_fleet,
            &compiled_fleet,
            args.json,
            " with the fleet's enrolled hosts",
        ) {
            return Ok(outcome);
        }
        // 3. Written in one transaction.
        let doc = PolicyDocument::new(&name, &text);
        match store.publish(&doc, args.if_revision).await {
            Ok(revision) => {
                if args.json {
                    print_json(&json!({
                        "published": true,
                        "revision": revision,
                        "name": doc.name,
                        "sha256": doc.sha256,
                        "rules": compiled_fleet.sizes.rules,
                        "assertions": results.len(),
                        "enrolled_hosts": inventory.devices.len(),
                    }));
                } else {
                    print_warnings(&with_fleet);
                    println!(
                        "published {} at store revision {revision} ({} rules, {} assertions hold, {} enrolled hosts; sha256 {})",
                        doc.name,
                        compiled_fleet.sizes.rules,
                        results.len(),
                        inventory.devices.len(),
                        &doc.sha256[..12]
                    );
                }
                Ok(Outcome::Success)
            }
            Err(StoreError::Conflict { expected, current }) => {
                let e = StoreError::Conflict { expected, current };
                if args.json {
                    print_json(&json!({"published": false, "conflict": true, "expected": expected, "current_revision": current, "error": e.to_string()}));
                } else {
                    eprintln!("error: {e}");
                }
                Ok(Outcome::Conflict)
            }
            Err(e) => Err(e).context("publishing"),
        }
    })
}

/// Prints the failing assertions and returns `Rejected` if any fails.
fn report_failing_tests(
    policy: &policy::Policy,
    compiled: &compile::Compiled,
    json_out: bool,
    context: &str,
) -> Option<Outcome> {
    let results = verify::run(policy, compiled);
    let failed: Vec<_> = results.iter().filter(|r| !r.holds).collect();
    if failed.is_empty() {
        return None;
    }
    if json_out {
        print_json(&json!({
            "published": false,
            "valid": true,
            "file": policy.source.name,
            "failed": failed.len(),
            "assertions": results,
            "context": context.trim(),
        }));
    } else {
        eprintln!(
            "{}: {} of {} assertions fail{context}; nothing published",
            policy.source.name,
            failed.len(),
            results.len()
        );
        for r in failed {
            let line = r.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            let verb = match r.expect {
                policy::Expect::Accept => "accept",
                policy::Expect::Deny => "deny",
            };
            match &r.counterexample {
                Some(x) => eprintln!(
                    "  FAIL test {}: {} {verb} {} {}{line}: {} → {} port {} {}",
                    r.test,
                    r.src,
                    r.dst,
                    r.proto,
                    x.src,
                    x.dst,
                    x.port,
                    match &x.rule {
                        Some(rule) => format!("allowed by {rule}"),
                        None => "denied: no rule allows it".to_owned(),
                    }
                ),
                None => eprintln!(
                    "  FAIL test {}: {} {verb} {} {}{line}: {}",
                    r.test,
                    r.src,
                    r.dst,
                    r.proto,
                    r.note.as_deref().unwrap_or("does not hold")
                ),
            }
        }
    }
    Some(Outcome::Rejected)
}

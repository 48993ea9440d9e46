//! `segment-agent test`: run the policy's `tests:` section.

use std::path::Path;

use serde_json::json;

use super::{
    Outcome,
    output::{load_and_compile, print_json, print_warnings},
};
use crate::{policy::Expect, verify};

pub fn run(path: &Path, inventory: Option<&Path>, json_out: bool) -> anyhow::Result<Outcome> {
    let Some((policy, compiled)) = load_and_compile(path, inventory, json_out) else {
        return Ok(Outcome::Rejected);
    };
    let results = match verify::run_policy_tests(&policy, &compiled) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the tests' policy does not compile: {e}");
            return Ok(Outcome::Rejected);
        }
    };
    let passed = results.iter().filter(|r| r.holds).count();
    let all_hold = passed == results.len();
    if json_out {
        print_json(&json!({
            "file": policy.source.name,
            "passed": passed,
            "failed": results.len().saturating_sub(passed),
            "ok": all_hold,
            "assertions": results,
        }));
    } else {
        print_warnings(&policy);
        if results.is_empty() {
            println!("{}: no tests", policy.source.name);
        }
        let mut last_test = 0;
        for r in &results {
            if r.test != last_test {
                println!("test {} (src {}):", r.test, r.src);
                last_test = r.test;
            }
            let verb = match r.expect {
                Expect::Accept => "accept",
                Expect::Deny => "deny  ",
            };
            let status = if r.holds { "ok  " } else { "FAIL" };
            let line = r.line.map(|l| format!(" (line {l})")).unwrap_or_default();
            print!("  {status} {verb} {} {}{line}", r.dst, r.proto);
            if r.holds {
                println!(
                    "  [{} case{}]",
                    r.cases,
                    if r.cases == 1 { "" } else { "s" }
                );
            } else if let Some(x) = &r.counterexample {
                let how = match &x.rule {
                    Some(rule) => format!("allowed by {rule}"),
                    None => "denied: no rule allows it".to_owned(),
                };
                println!("\n         {} → {} port {}: {how}", x.src, x.dst, x.port);
            } else if let Some(note) = &r.note {
                println!("\n         {note}");
            } else {
                println!();
            }
        }
        println!(
            "{} of {} assertion{} hold",
            passed,
            results.len(),
            if results.len() == 1 { "" } else { "s" }
        );
    }
    Ok(if all_hold {
        Outcome::Success
    } else {
        Outcome::Rejected
    })
}

//! Shared helpers: load and compile a policy, reporting problems the same
//! way in every command (text with snippets, or a JSON object).

use std::path::Path;

use serde_json::json;

use crate::{
    compile::{self, Compiled},
    policy::{self, Diagnostic, Policy, Severity},
};

/// Loads and compiles `path`. On failure, prints the errors (as JSON when
/// asked) and returns `None`: the caller exits 1.
pub fn load_and_compile(path: &Path, json_out: bool) -> Option<(Policy, Compiled)> {
    let policy = match policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            if json_out {
                print_json(&json!({
                    "valid": false,
                    "file": e.source.name,
                    "errors": e.diagnostics,
                }));
            } else {
                eprint!("{e}");
            }
            return None;
        }
    };
    match compile::compile(&policy) {
        Ok(c) => Some((policy, c)),
        Err(e) => {
            let d = Diagnostic::error(None, e.to_string());
            if json_out {
                print_json(&json!({
                    "valid": false,
                    "file": policy.source.name,
                    "errors": [d],
                }));
            } else {
                eprint!("{}", d.render(&policy.source));
            }
            None
        }
    }
}

/// Prints warnings to stderr (text mode only; JSON carries them inline).
pub fn print_warnings(policy: &Policy) {
    for w in policy
        .warnings
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        eprint!("{}", w.render(&policy.source));
    }
}

pub fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

//! Shared helpers: load and compile a policy, reporting problems the same
//! way in every command (text with snippets, or a JSON object).

use std::path::Path;

use serde_json::json;

use crate::{
    compile::{self, Compiled},
    policy::{self, Diagnostic, Inventory, Policy, Severity},
};

/// Loads and compiles `path` (YAML or a Tailscale policy file, by extension
/// or content), with the devices of `inventory` if given. On failure, prints
/// the errors (as JSON when asked) and returns `None`: the caller exits 1.
pub fn load_and_compile(
    path: &Path,
    inventory: Option<&Path>,
    json_out: bool,
) -> Option<(Policy, Compiled)> {
    let inv = match inventory.map(Inventory::load).transpose() {
        Ok(i) => i.unwrap_or_default(),
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
    let policy = match policy::load_with(path, &inv) {
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
    // A `Value` always serializes; print nothing rather than panic if not.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

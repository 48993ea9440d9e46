//! The policy language: YAML text → validated [`Policy`].
//!
//! Two stages, kept apart: [`raw`] is the file as written (with positions),
//! [`validate`] checks and resolves it into [`model`]. Errors, at either
//! stage, come back as one [`PolicyError`] listing every problem with its
//! file, line and column.

pub mod convert;
pub mod diagnostic;
pub mod fast_yaml;
pub mod hujson;
pub mod inventory;
pub mod membership;
pub mod model;
pub mod raw;
pub mod syntax;
pub mod tailscale;
pub mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, PolicyError, Pos, Severity, Source};
pub use inventory::{Device, Inventory, InventoryUser};
pub use model::*;

/// The example policy shipped inside the binary (`policies/example.yaml`).
pub const EXAMPLE_POLICY: &str = include_str!("../../../policies/example.yaml");

/// Reads and validates a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    load_with(path, &Inventory::default())
}

/// A file's text, or the error saying why it cannot be read.
pub fn read_text(path: &Path) -> Result<String, PolicyError> {
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(e) => Err(PolicyError::new(
                Source::new(name, ""),
                vec![Diagnostic::error(
                    None,
                    format!(
                        "the file is not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )],
            )),
        },
        Err(e) => Err(PolicyError::new(
            Source::new(name, ""),
            vec![Diagnostic::error(
                None,
                format!("cannot read the policy: {e}"),
            )],
        )),
    }
}

/// Reads and validates a policy file, resolving device tags and owners from
/// `inventory`.
pub fn load_with(path: &Path, inventory: &Inventory) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let text = read_text(path)?;
    parse_with(&name, &text, inventory)
}

/// Parses and validates policy text with an inventory; `name` is used in
/// messages.
///
/// The format is chosen by `name`'s extension (`.hujson`/`.json`: a
/// Tailscale policy file; `.yaml`/`.yml`: segment's YAML) or, failing that,
/// by content (see [`tailscale::detect`]).
pub fn parse_with(name: &str, text: &str, inventory: &Inventory) -> Result<Policy, PolicyError> {
    match tailscale::detect(name, text) {
        tailscale::Format::Tailscale => tailscale::parse(name, text, inventory),
        tailscale::Format::Yaml => parse_yaml(name, text, inventory),
    }
}

/// Parses and validates policy text; `name` is used in messages.
pub fn parse(name: &str, text: &str) -> Result<Policy, PolicyError> {
    parse_with(name, text, &Inventory::default())
}

fn parse_yaml(name: &str, text: &str, inventory: &Inventory) -> Result<Policy, PolicyError> {
    let source = Source::new(name, text);
    if text.trim().lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        // Not "deny everything": an empty file is far more often a file
        // caught mid-write (or truncated by mistake) than a wish.
        return Err(PolicyError::new(
            source,
            vec![Diagnostic::error(None, "the policy file is empty").help(
                "an empty policy would deny everything, failsafe entries included; \
                 to deny everything on purpose, write `acls: []`",
            )],
        ));
    }
    let raw = match read_yaml(text) {
        Ok(raw) => raw,
        Err(e) => return Err(PolicyError::new(source.clone(), vec![yaml_error(&e)])),
    };
    validate::validate(&source, raw, inventory).map_err(|d| PolicyError::new(source, d))
}

/// The policy as written: the fast reader when it can vouch for the text,
/// else serde-saphyr, which also gives every YAML error.
fn read_yaml(text: &str) -> Result<raw::RawPolicy, serde_saphyr::Error> {
    match fast_yaml::read(text) {
        Some(raw) => Ok(raw),
        None => read_yaml_full(text),
    }
}

/// The full YAML reader: the reference the fast reader is tested against.
pub(crate) fn read_yaml_full(text: &str) -> Result<raw::RawPolicy, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_options())
}

/// YAML limits: the defaults (250,000 nodes) would refuse policies of a few
/// tens of thousands of rules. The limits against alias bombs and deep
/// nesting stay as they are.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 50_000_000;
    budget.max_nodes = 25_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Turns a YAML-layer error into a diagnostic, adding a "did you mean" to
/// unknown keys.
fn yaml_error(e: &serde_saphyr::Error) -> Diagnostic {
    let pos = e.location().and_then(|l| Pos::from_location(&l));
    let full = e.without_snippet().to_string();
    // "line 3 column 5: unknown field ..." → "unknown field ..."
    let msg = match full.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") || head.starts_with("error") => {
            match rest.split_once(": ") {
                Some((h2, r2)) if h2.starts_with("line ") => r2.to_owned(),
                _ => rest.to_owned(),
            }
        }
        _ => full.clone(),
    };
    let msg = strip_location(msg.lines().next().unwrap_or_default().trim());
    let mut d = Diagnostic::error(pos, msg.clone());
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let options: Vec<&str> = expected
            .trim_start_matches(", expected one of ")
            .trim_start_matches(", expected ")
            .split(", ")
            .map(|s| s.trim_matches('`'))
            .filter(|s| !s.is_empty())
            .collect();
        d.message = format!("unknown key `{field}`");
        d.help = Some(match diagnostic::closest(field, options.iter().copied()) {
            Some(c) => format!(
                "did you mean `{c}`? (valid keys here: {})",
                options.join(", ")
            ),
            None => format!("valid keys here: {}", options.join(", ")),
        });
    } else if msg.contains("duplicate mapping key") {
        let key = msg
            .trim_start_matches("duplicate mapping key: ")
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned();
        d.message = format!("`{key}` is defined twice");
        d.help = Some("each name may appear once in a section; merge the two entries".to_owned());
    } else if let Some(field) = msg.strip_prefix("missing field `") {
        let field = field.trim_end_matches('`');
        d.message = format!("missing key `{field}`");
        d.help = Some(format!("add `{field}:` to this entry"));
    } else if msg.contains("expected sequence start") {
        d.message = "expected a list here".to_owned();
        d.help = Some("write a list: `[a, b]`, or one `- item` per line".to_owned());
    } else if msg.contains("expected mapping start") {
        d.message = "expected a mapping here".to_owned();
        d.help = Some(
            "write `key: value` lines (see docs/policy.md for the keys of each section)".to_owned(),
        );
    } else if msg.contains("budget breached") {
        d.message = "the policy file is too large for the YAML reader".to_owned();
        d.help = Some(format!(
            "({msg}) split it, or use tags and groups so that fewer entries are needed"
        ));
    } else if msg.contains("invalid type") {
        d.help = Some("check the shape of this value against docs/policy.md".to_owned());
    }
    d
}

/// Removes " at line N, column M" that the YAML layer puts inside messages:
/// the position is shown separately.
fn strip_location(msg: &str) -> String {
    let mut out = msg.to_owned();
    while let Some(at) = out.find(" at line ") {
        let rest = &out[at + " at line ".len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let rest2 = &rest[digits..];
        let Some(after) = rest2.strip_prefix(", column ") else {
            break;
        };
        let digits2 = after.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || digits2 == 0 {
            break;
        }
        let end = at + " at line ".len() + digits + ", column ".len() + digits2;
        out.replace_range(at..end, "");
    }
    out
}

/// The built-in example policy, validated.
pub fn example() -> Result<Policy, PolicyError> {
    parse("<built-in example policy>", EXAMPLE_POLICY)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod inventory_tests;

#[cfg(test)]
mod fast_yaml_tests;

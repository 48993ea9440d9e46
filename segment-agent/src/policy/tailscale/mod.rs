//! Tailscale's tailnet policy file (HuJSON), read as it is and turned into
//! segment's validated [`Policy`](super::Policy).
//!
//! [`hujson`](super::hujson) reads the text with positions; [`validate`]
//! checks every section as Tailscale's documentation describes it and
//! resolves targets to addresses with an [`Inventory`]: users' devices,
//! tagged devices (tags granted as `tagOwners` allows), host aliases, IP
//! sets and autogroups. Parts a packet filter cannot enforce (Tailscale
//! SSH, app capabilities, `via`, postures, node attributes...) are accepted
//! and listed in `Policy::not_enforced`.

pub mod validate;

use super::{Inventory, Policy, PolicyError, Source, hujson};

/// The two policy languages segment reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Tailscale,
}

/// The format of a policy file: by extension (`.hujson`, `.json` →
/// Tailscale; `.yaml`, `.yml` → YAML), else by content (a file whose first
/// non-comment character is `{` is Tailscale's; YAML comments start with
/// `#`, HuJSON's with `//` or `/*`).
pub fn detect(name: &str, text: &str) -> Format {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".hujson") || lower.ends_with(".json") {
        return Format::Tailscale;
    }
    if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        return Format::Yaml;
    }
    let mut rest = text.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    if rest.starts_with('{') {
        Format::Tailscale
    } else {
        Format::Yaml
    }
}

/// Parses and validates a Tailscale policy file with an inventory.
pub fn parse(name: &str, text: &str, inventory: &Inventory) -> Result<Policy, PolicyError> {
    let source = Source::new(name, text);
    let root = hujson::parse(text).map_err(|d| PolicyError::new(source.clone(), vec![d]))?;
    validate::validate(&source, &root, inventory).map_err(|d| PolicyError::new(source, d))
}

#[cfg(test)]
mod tests;

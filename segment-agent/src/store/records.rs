//! What the store's keys hold: JSON objects, one per key.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// The `format` of a policy document this agent understands.
pub const POLICY_FORMAT: &str = "segment-policy/v1";

/// The policy, as published. `text` is the YAML exactly as validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    pub format: String,
    /// The file name it was published from (for messages).
    pub name: String,
    pub text: String,
    /// Hex SHA-256 of `text`.
    pub sha256: String,
    /// Unix seconds.
    pub published_at: u64,
}

impl PolicyDocument {
    pub fn new(name: &str, text: &str) -> Self {
        Self {
            format: POLICY_FORMAT.to_owned(),
            name: name.to_owned(),
            text: text.to_owned(),
            sha256: sha256_hex(text.as_bytes()),
            published_at: crate::datapath::state::unix_now(),
        }
    }

    /// Checks what a reader must not take on trust: the format and the hash.
    pub fn check(&self) -> Result<(), String> {
        if self.format != POLICY_FORMAT {
            return Err(format!(
                "the policy document has format `{}`; this agent understands `{POLICY_FORMAT}` (upgrade the agent)",
                self.format
            ));
        }
        let h = sha256_hex(self.text.as_bytes());
        if h != self.sha256 {
            return Err(format!(
                "the policy document's sha256 is {} but its text hashes to {h}: it was altered",
                self.sha256
            ));
        }
        Ok(())
    }
}

/// One host's enrollment: who it is, where it is, which tags it claims.
/// Not leased: it outlives the agent (liveness is not membership). It ends
/// by `fleet remove`, or when `refreshed_at + expires_after_secs` passes
/// (the agent refreshes it while it runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Claimed tags, `tag:NAME`. Granted only as the policy's `tagOwners`
    /// allows; every agent decides that itself.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Unix seconds of the first enrollment.
    pub enrolled_at: u64,
    /// Unix seconds of the last refresh by the agent.
    pub refreshed_at: u64,
    /// Membership lasts this long after the last refresh.
    pub expires_after_secs: u64,
}

impl Enrollment {
    pub fn expires_at(&self) -> u64 {
        self.refreshed_at.saturating_add(self.expires_after_secs)
    }

    pub fn expired(&self, now: u64) -> bool {
        now >= self.expires_at()
    }
}

/// What a host's agent last did, on a lease (it vanishes when the agent
/// stops renewing it, which says nothing about membership).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    /// The policy document's store revision in force on the host (0: none yet).
    pub applied_revision: i64,
    /// The store revision of the view (document and enrollments) in force.
    pub view_revision: i64,
    /// The datapath generation in force.
    pub generation: u64,
    /// SHA-256 of the policy text in force.
    pub policy_sha256: String,
    /// Hash of the membership (the enrolled devices) in force.
    pub membership_sha256: String,
    /// The last failure to apply, if the newest view could not be applied.
    pub last_error: Option<String>,
    /// The policy revision the error is about.
    pub error_revision: Option<i64>,
    /// Unix milliseconds.
    pub reported_at_ms: u64,
    pub agent_version: String,
    /// The datapath's packet totals, read by the same reader as `stats`
    /// and `/metrics` every `--report-counters-every` (absent from agents
    /// that have not read them yet, and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<HostCounters>,
}

/// Packet totals of a host's datapath since its maps were created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCounters {
    pub passed_packets: u64,
    pub dropped_packets: u64,
    /// Packets audit mode let through that the policy would drop.
    pub would_drop_packets: u64,
    /// When they were read (Unix milliseconds).
    pub read_at_ms: u64,
}

/// A record with the store revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored<T> {
    pub value: T,
    pub mod_revision: i64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::BadRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_check_their_hash_and_format() {
        let d = PolicyDocument::new("p.yaml", "acls: []\n");
        assert!(d.check().is_ok());
        let mut bad = d.clone();
        bad.text.push('x');
        assert!(bad.check().unwrap_err().contains("altered"));
        let mut other = d;
        other.format = "segment-policy/v9".into();
        assert!(other.check().unwrap_err().contains("upgrade"));
    }

    #[test]
    fn enrollment_expiry() {
        let e = Enrollment {
            name: "a".into(),
            addresses: vec![],
            tags: vec![],
            enrolled_at: 100,
            refreshed_at: 200,
            expires_after_secs: 50,
        };
        assert!(!e.expired(249));
        assert!(e.expired(250));
    }
}

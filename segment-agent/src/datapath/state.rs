//! The agent's state file: identity numbers (so counters keep their meaning
//! across reloads and restarts), and what each policy slot holds (so that
//! `stats` can name rules, and a restarted agent can adopt the slots).
//! Written atomically (temporary file + rename) before the datapath is
//! switched to a new slot.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    io::Write,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{compile::IdentityAllocator, policy::Policy};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleMeta {
    pub label: String,
    pub text: String,
    pub failsafe: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentMeta {
    pub reference: String,
    pub kind: String,
}

/// What one policy slot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotMeta {
    pub generation: u64,
    /// Name of the policy file (as given to `run`).
    pub policy_name: String,
    pub applied_unix: u64,
    pub rules: Vec<RuleMeta>,
    pub segments: Vec<SegmentMeta>,
    /// What the compiled policy occupies in the maps.
    #[serde(default)]
    pub sizes: Option<crate::compile::Sizes>,
}

impl SlotMeta {
    pub fn describe(policy: &Policy, generation: u64) -> Self {
        Self {
            generation,
            policy_name: policy.source.name.clone(),
            applied_unix: unix_now(),
            rules: policy
                .rules
                .iter()
                .map(|r| RuleMeta {
                    label: r.label(),
                    text: r.text.clone(),
                    failsafe: r.is_failsafe(),
                })
                .collect(),
            segments: policy
                .segments
                .iter()
                .map(|s| SegmentMeta {
                    reference: s.reference(),
                    kind: s.kind.as_str().to_owned(),
                })
                .collect(),
            sizes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// `native` or `generic`.
    pub xdp_mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Generation of the newest policy written.
    pub generation: u64,
    pub identities: IdentityAllocator,
    pub slots: [Option<SlotMeta>; 2],
    pub interfaces: Vec<Interface>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            generation: 0,
            identities: IdentityAllocator::default(),
            slots: [None, None],
            interfaces: Vec::new(),
        }
    }
}

impl State {
    /// Reads the state file; a missing file is a fresh state.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: corrupt state file: {e}", path.display()))?;
                if state.version != STATE_VERSION {
                    anyhow::bail!(
                        "{}: state version {} is not {}; run `segment-agent detach` to start over",
                        path.display(),
                        state.version,
                        STATE_VERSION
                    );
                }
                Ok(state)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Compact JSON: with 100,000 rules the pretty form doubles the bytes
    /// written (and fsynced) on every load. `jq . state.json` reads it.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_atomic_mode(path, &serde_json::to_vec(self)?, PRIVATE)
    }

    /// Segment references of a counter identity.
    pub fn identity_segments(&self, id: u32) -> Option<&[String]> {
        self.identities
            .ids
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_slice())
    }
}

/// Mode of files only root (the agent) reads: the state file, observations.
pub const PRIVATE: u32 = 0o600;
/// Mode of policy files and their copies.
pub const READABLE: u32 = 0o644;

/// Writes a policy-readable file (mode 0644) atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_mode(path, bytes, READABLE)
}

/// Writes `path` atomically (temporary file + fsync + rename) with exactly
/// `mode`, whatever the umask.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask can only take bits away; set exactly `mode`.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

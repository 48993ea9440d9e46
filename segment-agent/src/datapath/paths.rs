//! Where segment keeps its state: pinned BPF objects under a bpffs
//! directory, and a small state file (identity numbers, what each policy
//! slot holds) under a runtime directory. Both outlive the agent process.

#![warn(clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/segment";
pub const DEFAULT_STATE_DIR: &str = "/run/segment";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Paths {
    /// Explicit directories win, then `SEGMENT_PIN_DIR` / `SEGMENT_STATE_DIR`,
    /// then the defaults.
    pub fn resolve(pin_dir: Option<PathBuf>, state_dir: Option<PathBuf>) -> Self {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            pin_dir: pin_dir
                .or_else(|| env("SEGMENT_PIN_DIR"))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            state_dir: state_dir
                .or_else(|| env("SEGMENT_STATE_DIR"))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.pin_dir.join(name)
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.pin_dir.join(format!("prog_{name}"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    pub fn link(&self, hook: Hook, iface: &str) -> PathBuf {
        let kind = match hook {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc_egress",
        };
        self.links_dir().join(format!("{kind}_{iface}"))
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("agent.lock")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }

    /// Where the policy of a slot is kept (for rollback and adoption).
    pub fn slot_policy(&self, slot: u32) -> PathBuf {
        self.state_dir.join(format!("slot-{slot}.yaml"))
    }
}

/// Whether `dir` (or its closest existing ancestor) is on a bpffs mount.
pub fn on_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let mut p = dir;
    loop {
        if p.exists() {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: statfs writes into the zeroed struct we pass; the path
            // is a valid NUL-terminated string.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
            return rc == 0 && st.f_type as i64 == BPF_FS_MAGIC;
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return false,
        }
    }
}

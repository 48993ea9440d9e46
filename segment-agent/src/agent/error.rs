//! Why applying a policy failed, and whether anything was applied: the
//! kind decides the client's exit code (1: invalid input, nothing applied;
//! 2: operational, and the message says whether the policy is in force).

use super::source::SourceError;
use crate::{
    compile::CompileError,
    control::{DurationError, ErrorKind, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The document is not a valid policy; nothing applied.
    #[error("{0}")]
    Invalid(#[from] SourceError),
    /// Valid, but it does not fit the datapath; nothing applied.
    #[error("{policy}: {source}")]
    DoesNotCompile {
        policy: String,
        #[source]
        source: CompileError,
    },
    /// `--confirm-within` out of range; nothing applied.
    #[error("--confirm-within: {0}; nothing applied")]
    Duration(#[from] DurationError),
    /// The reload would remove failsafe entries the running policy has.
    #[error(
        "{policy} drops failsafe entries the running policy has: {}; nothing applied (apply it with --force if that is intended)",
        dropped.join("; ")
    )]
    DropsFailsafe {
        policy: String,
        dropped: Vec<String>,
    },
    /// The kernel refused the write (or the state could not be saved)
    /// before the switch: the running policy stays.
    #[error("applying failed, generation {running} stays in force: {source:#}")]
    Datapath {
        running: u64,
        #[source]
        source: anyhow::Error,
    },
    /// An `apply` came in while this reload was being read: the later
    /// request won; nothing from this reload was applied.
    #[error("superseded by an apply that came in while it was read; nothing applied")]
    Superseded,
    /// In force, but not committed to the source (e.g. a read-only policy
    /// file): it will not survive a restart.
    #[error("applied as generation {generation} (in force), but not saved: {source}")]
    NotSaved {
        generation: u64,
        #[source]
        source: SourceError,
    },
}

impl ApplyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(
                SourceError::Invalid(_)
                | SourceError::TooLarge { .. }
                | SourceError::NotRegular { .. },
            )
            | Self::DoesNotCompile { .. }
            | Self::Duration(_)
            | Self::DropsFailsafe { .. } => ErrorKind::Invalid,
            Self::Invalid(_) | Self::Datapath { .. } | Self::NotSaved { .. } | Self::Superseded => {
                ErrorKind::Operational
            }
        }
    }

    /// Whether the policy is in force despite the error.
    pub fn applied(&self) -> bool {
        matches!(self, Self::NotSaved { .. })
    }

    pub fn response(&self) -> Response {
        Response::failed(self.kind(), self.applied(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_whether_anything_was_applied() {
        let not_saved = ApplyError::NotSaved {
            generation: 3,
            source: SourceError::Write {
                path: "/etc/segment/policy.yaml".into(),
                source: anyhow::anyhow!("Read-only file system"),
            },
        };
        assert_eq!(not_saved.kind(), ErrorKind::Operational);
        assert!(not_saved.applied());
        let r = not_saved.response();
        assert!(r.applied && !r.ok);
        assert!(
            r.message.contains("applied as generation 3") && r.message.contains("not saved"),
            "{}",
            r.message
        );
        let bad = ApplyError::Duration(DurationError::TooLong(1e19));
        assert_eq!(bad.kind(), ErrorKind::Invalid);
        assert!(!bad.applied());
        let kernel = ApplyError::Datapath {
            running: 2,
            source: anyhow::anyhow!("map update failed"),
        };
        assert_eq!(kernel.kind(), ErrorKind::Operational);
        assert!(!kernel.applied());
    }
}

//! The fleet's policy store: one policy document, one enrollment record per
//! host and one leased status record per host, in etcd, under one versioned
//! key prefix.
//!
//! * [`keys`]: the key layout (`/segment/v1/policy`, `/segment/v1/hosts/NAME`,
//!   `/segment/v1/status/NAME`).
//! * [`records`]: what each key holds (JSON).
//! * [`config`]: endpoints, TLS and authentication, from flags or a file.
//! * [`client`]: the operations (publish in a transaction, enroll, remove,
//!   read everything at one revision, leased status writes).
//! * [`watch`]: a watch over the policy and the enrollments that resumes
//!   from the last revision it saw and re-reads everything after a
//!   compaction, handing out complete views only.
//! * [`status`]: lease keep-alive on a timer, debounced and jittered status
//!   writes.
//! * [`membership`]: from a view to an [`crate::policy::Inventory`] and the
//!   hash that identifies what an agent must enforce.
//! * [`snapshot`]: the last applied view, persisted in the state directory so
//!   that an agent restarted while the store is down enforces it.
//!
//! Nothing here knows about the datapath or the daemon: another store (the
//! Kubernetes API, Consul) could sit beside this module.

pub mod client;
pub mod config;
pub mod enroll;
pub mod keys;
pub mod membership;
pub mod records;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod watch;

use std::path::PathBuf;

pub use client::Store;
pub use config::{StoreArgs, StoreConfig};
pub use keys::Keys;
pub use records::{Enrollment, HostCounters, HostStatus, PolicyDocument, Stored};
pub use watch::FleetView;

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no store endpoint given (use --store http://HOST:2379, or `endpoints:` in --store-config)"
    )]
    NoEndpoints,
    #[error(
        "`{url}` is not a store endpoint: {reason} (write http://HOST:PORT or https://HOST:PORT)"
    )]
    BadEndpoint { url: String, reason: &'static str },
    #[error("reading the {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store configuration {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{message}")]
    Usage { message: String },
    #[error("cannot reach the store at {endpoints}")]
    Unreachable {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the store at {endpoints} did not answer {op} within {secs} s")]
    Timeout {
        endpoints: String,
        op: &'static str,
        secs: u64,
    },
    #[error("store request `{op}` failed")]
    Request {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "the policy was published again since revision {expected} (it is now at revision {current}): nothing written; look at the current policy and publish again with --if-revision {current}"
    )]
    Conflict { expected: i64, current: i64 },
    #[error("the record at {key} is not valid")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{name}` cannot be a host name: {reason}")]
    BadHostName { name: String, reason: &'static str },
    #[error("lease {id} expired or was revoked")]
    LeaseGone { id: i64 },
    #[error("saving {}", path.display())]
    Persist {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
}

impl StoreError {
    /// True when the store could not be reached or did not answer (as
    /// opposed to answering "no").
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Request { source, .. } => is_unavailable(source),
            _ => false,
        }
    }
}

/// Whether an etcd-client error means "the store is not there" (transport
/// failure, `Unavailable`, no leader, deadline).
pub fn is_unavailable(e: &etcd_client::Error) -> bool {
    // gRPC status codes (as numbers, so that we need not depend on tonic):
    // 2 Unknown (a connection torn down mid-call), 4 DeadlineExceeded,
    // 14 Unavailable.
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code() as i32, 2 | 4 | 14) || s.message().contains("no leader")
        }
        _ => false,
    }
}

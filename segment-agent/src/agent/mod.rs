//! The running agent (`segment-agent run`), below the command line.
//!
//! * [`startup`]: load the programs, adopt what is pinned, apply the first
//!   policy, attach;
//! * [`daemon`]: the loop that keeps the policy current (source changes,
//!   SIGHUP, `commit confirmed` rollbacks, `observe`);
//! * [`control`]: the control socket's server (the client is
//!   [`crate::control`]);
//! * [`metrics`]: the Prometheus endpoint (counters from [`crate::stats`]);
//! * [`limits`]: what connections to those two may cost, so that the
//!   operator always gets through;
//! * [`source`]: where the policy comes from — the daemon asks a
//!   [`PolicySource`] for validated documents and reports what it applied;
//! * [`store_source`]: the fleet's source, the policy and the enrolled
//!   hosts from the store (etcd).
//!
//! The command line (`crate::cli`) only turns flags into a [`Config`] and a
//! source, and [`Ended`] into an exit code.

#![warn(clippy::arithmetic_side_effects)]

pub mod control;
pub mod daemon;
pub mod error;
mod inotify;
pub mod limits;
mod metrics;
pub mod source;
pub mod startup;
pub mod store_source;

pub use error::ApplyError;
pub use source::{Document, PolicySource, WatchedFile};
pub use startup::{Config, Ended, run};
pub use store_source::StoreSource;

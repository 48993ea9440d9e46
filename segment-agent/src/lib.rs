//! segment: network microsegmentation enforced by XDP and TC.
//!
//! The pure part (no kernel access, tested anywhere): [`policy`] (YAML →
//! validated model), [`compile`] (model → the datapath's tables), [`eval`]
//! (the reference evaluator) and [`verify`] (the `tests:` runner). The
//! kernel-facing part, [`datapath`], loads, attaches, pins and fills maps.
//! [`agent`] is the running agent (startup, daemon, control and metrics
//! servers, policy sources); [`stats`] reads the counters; [`cli`] is the
//! command line on top, parsing arguments and printing.

pub mod agent;
pub mod cli;
pub mod compile;
pub mod control;
pub mod datapath;
pub mod diff;
pub mod eval;
pub mod flows;
pub mod metrics;
pub mod observe;
pub mod packet;
pub mod policy;
pub mod report;
pub mod stats;
pub mod store;
pub mod verify;

//! segment: network microsegmentation enforced by XDP and TC.
//!
//! The pure part (no kernel access, tested anywhere): [`policy`] (YAML →
//! validated model), [`compile`] (model → the datapath's tables), [`eval`]
//! (the reference evaluator) and [`verify`] (the `tests:` runner). The
//! kernel-facing part, [`datapath`], loads, attaches, pins and fills maps.
//! [`cli`] is the command line on top of both.

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
pub mod verify;

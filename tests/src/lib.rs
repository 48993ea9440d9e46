//! Test harness for segment's root-only tests: namespaces ([`netns`]), a lab
//! network ([`lab`]), real traffic ([`traffic`]), hand-built frames
//! ([`frames`]) and the agent binary under test ([`agent`]).
//!
//! The tests themselves are in `tests/`; run them with `cargo xtask test`
//! (root, one thread: they share the kernel).

pub mod agent;
pub mod bpfasm;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod policies;
pub mod traffic;
pub mod vlan;

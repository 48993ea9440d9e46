//! Test harness for segment's root-only tests: namespaces ([`netns`]), a lab
//! network ([`lab`]), real traffic ([`traffic`]), hand-built frames
//! ([`frames`]), links without an Ethernet header ([`tun`]), the agent
//! binary under test ([`agent`]), its control socket ([`control`]), facts
//! about processes ([`process`]) and deadlines instead of sleeps ([`wait`]).
//!
//! The tests themselves are in `tests/`; run them with `cargo xtask test`
//! (root, one thread: they share the kernel).

pub mod agent;
pub mod bpfasm;
pub mod control;
pub mod etcd;
pub mod fleet;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod policies;
pub mod process;
pub mod refpolicy;
pub mod traffic;
pub mod tun;
pub mod vlan;
pub mod wait;

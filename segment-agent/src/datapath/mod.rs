//! The kernel-facing side: load and attach the programs, write policies into
//! their maps, read counters. Kept thin; every decision about what to write
//! is made by the pure modules ([`crate::compile`]).

pub mod batch;
pub mod counters;
pub mod ct_filter;
pub mod flowlog;
pub mod flush;
pub mod grace;
pub mod iface;
pub mod live;
pub mod loader;
pub mod local_addrs;
pub mod mmap;
pub mod paths;
pub mod state;
pub mod tables;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use segment_common::SlotConfig;

use crate::{
    compile::{self, Compiled},
    policy::Policy,
};
pub use paths::Paths;
use state::{SlotMeta, State};
use tables::{PolicyMaps, SlotContents};

/// Applies policies to pinned maps, one atomic switch at a time.
pub struct Enforcer {
    pub paths: Paths,
    pub state: State,
    maps: PolicyMaps,
    /// What each slot holds, once known (read back lazily from the kernel).
    contents: [Option<SlotContents>; 2],
}

#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub generation: u64,
    pub slot: u32,
    pub compile_time: Duration,
    /// From the start of the write to the switch (what a reload costs
    /// before the new policy is in force). The grace period after the
    /// switch and the conntrack flush are not part of it.
    pub write_time: Duration,
    pub entries_written: usize,
    pub entries_removed: usize,
    pub sizes: compile::Sizes,
    /// Tracked flows the new policy no longer admits, removed.
    pub flows_flushed: usize,
    pub flows_scanned: usize,
    /// What the flush could not do (empty when it was complete). The
    /// policy is in force either way.
    pub flush_failures: Vec<flush::FlushFailure>,
}

// The runtime lints of the agent (flush.rs and tables.rs follow their owners).
#[warn(clippy::arithmetic_side_effects)]
impl Enforcer {
    /// Opens the pinned maps and the state file.
    pub fn open(paths: &Paths) -> Result<Self> {
        let state = State::load(&paths.state_file())?;
        let maps = PolicyMaps::open(paths)?;
        counters::reserve_overflow_pair(paths)?;
        Ok(Self {
            paths: paths.clone(),
            state,
            maps,
            contents: [None, None],
        })
    }

    /// Compiles a policy with this enforcer's identity numbers (without
    /// touching anything).
    pub fn compile(
        &self,
        policy: &Policy,
    ) -> Result<(Compiled, compile::IdentityAllocator), compile::CompileError> {
        let mut ids = self.state.identities.clone();
        let c = compile::compile_with(policy, &mut ids)?;
        Ok((c, ids))
    }

    /// The slot the datapath reads, if a policy was ever applied.
    pub fn active_slot(&self) -> Result<Option<u32>> {
        let g = self.maps.global()?;
        Ok((g.initialized != 0).then_some(g.active_slot & 1))
    }

    /// Writes a compiled policy into the inactive slot and switches to it.
    /// Nothing the datapath reads changes until the final switch; an error
    /// before it leaves the running policy in force.
    pub fn apply(
        &mut self,
        policy: &Policy,
        compiled: Compiled,
        ids: compile::IdentityAllocator,
        compile_time: Duration,
    ) -> Result<ApplyReport> {
        let started = Instant::now();
        local_addrs::sync_or_warn(&self.paths);
        let slot = match self.active_slot()? {
            Some(active) => active ^ 1,
            None => 0,
        };
        let generation = self
            .state
            .generation
            .checked_add(1)
            .context("the policy generation counter is exhausted")?;
        let config = SlotConfig {
            generation,
            enforce_egress: u32::from(policy.enforce.egress),
            enforce_ingress: u32::from(policy.enforce.ingress),
            world_flags: compiled.world.flags,
            ..SlotConfig::default()
        };
        let new = SlotContents::from_compiled(&compiled, config);
        let config = new.config;
        let old = match self.contents[slot as usize].take() {
            Some(c) => c,
            None => self
                .maps
                .read_slot(slot)
                .context("reading back the inactive slot")?,
        };
        let written = self.maps.write_slot(slot, &old, &new);
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                // The slot is now partly written: forget what it holds so
                // the next attempt reads it back from the kernel.
                self.contents[slot as usize] = None;
                return Err(e);
            }
        };
        // Record what the slot means before the datapath starts reading it.
        // In place rather than in a copy of the state (which holds both
        // slots' rule texts: a copy per reload of 100,000 rules cost tens
        // of milliseconds); put back if the switch does not happen.
        let mut meta = SlotMeta::describe(policy, generation);
        meta.sizes = Some(compiled.sizes.clone());
        let before = (
            std::mem::replace(&mut self.state.generation, generation),
            std::mem::replace(&mut self.state.identities, ids),
            self.state.slots[slot as usize].replace(meta),
        );
        if let Err(e) = self.save_and_switch(policy, slot) {
            (
                self.state.generation,
                self.state.identities,
                self.state.slots[slot as usize],
            ) = before;
            return Err(e);
        }
        let switched = started.elapsed();
        self.contents[slot as usize] = Some(new);
        // Not after the grace period: a run still on the old slot may
        // create or refresh an entry behind the flush, but that entry
        // carries the old generation, and the datapath re-judges such an
        // entry by the policy in force at its next packet.
        let flushed = flush::flush(&self.paths, &compiled, &config);
        for f in &flushed.failed {
            log::warn!(
                "conntrack flush incomplete: {:#} (the datapath re-judges such flows at their next packet)",
                anyhow::Error::new(f.clone())
            );
        }
        Ok(ApplyReport {
            generation,
            slot,
            compile_time,
            write_time: switched,
            entries_written: written.written,
            entries_removed: written.removed,
            sizes: compiled.sizes.clone(),
            flows_flushed: flushed.removed,
            flows_scanned: flushed.scanned,
            flush_failures: flushed.failed,
        })
    }

    /// Saves the state (already describing `slot`) and the slot's policy
    /// text, then switches the datapath to `slot`.
    fn save_and_switch(&mut self, policy: &Policy, slot: u32) -> Result<()> {
        self.state.save(&self.paths.state_file())?;
        state::write_atomic(&self.paths.slot_policy(slot), policy.source.text.as_bytes())
            .with_context(|| format!("saving {}", self.paths.slot_policy(slot).display()))?;
        self.maps.activate(slot)
    }

    /// Records the attached interfaces in the state file.
    pub fn set_interfaces(&mut self, interfaces: Vec<state::Interface>) -> Result<()> {
        self.state.interfaces = interfaces;
        self.state.save(&self.paths.state_file())
    }

    pub fn maps(&mut self) -> &mut PolicyMaps {
        &mut self.maps
    }
}

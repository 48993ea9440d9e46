//! `explain --live`: asks the loaded datapath itself. A synthetic packet
//! runs through a *dry instance* of the XDP program: the same object,
//! loaded again over the same pinned maps (so it reads the policy in force),
//! with the load-time global `DRY_RUN` set, and never attached to anything.
//! It decides exactly as the attached program does for a real packet but
//! writes no conntrack entry, no counter and no flow log record — only the
//! record of its decision, read back here. The attached instances are loaded
//! with the global 0: the verifier removes the dry path from them, so no
//! packet (whatever its metadata) can make its own run dry.

#![warn(clippy::arithmetic_side_effects)]

use anyhow::{Context, Result};
use aya::{
    EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use segment_common::{CT_RULE_NONE, DRY_RUN_GLOBAL, ExplainRecord, Reason, map_names};

use super::{loader, paths::Paths, tables::open_map};

#[derive(Debug, Clone)]
pub struct LiveVerdict {
    pub pass: bool,
    pub reason: Reason,
    /// Rule index (of the slot in force), if a rule decided.
    pub rule: Option<u32>,
    pub src_id: u32,
    pub dst_id: u32,
    pub slot: u32,
}

/// XDP return codes.
const XDP_PASS: u32 = 2;

pub fn judge(paths: &Paths, frame: &[u8]) -> Result<LiveVerdict> {
    let config = paths.map(map_names::CONFIG);
    if !config.exists() {
        anyhow::bail!(
            "no segment datapath is pinned under {} (is segment running?)",
            paths.pin_dir.display()
        );
    }
    // Every pinned map is taken as it is (the conntrack size included: an
    // existing pin is opened, not re-created); nothing new is pinned,
    // because every map of the object already is.
    let one: u32 = 1;
    let mut loader = EbpfLoader::new();
    loader::pin_outer_maps(&mut loader, paths);
    let mut ebpf = loader
        .default_map_pin_directory(&paths.pin_dir)
        .override_global(DRY_RUN_GLOBAL, &one, true)
        .load(loader::object()?)
        .context("loading a dry instance of the datapath")?;
    let prog: &mut Xdp = ebpf
        .program_mut(map_names::PROG_INGRESS)
        .context("ingress program missing from the object")?
        .try_into()?;
    prog.load()
        .context("the kernel refused the dry instance of the XDP program")?;
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .context("running the packet through the dry instance")?;
    let records: PerCpuArray<MapData, ExplainRecord> = open_map(paths, map_names::EXPLAIN)?;
    let newest = records
        .get(&0, 0)?
        .iter()
        .max_by_key(|r| r.ts_ns)
        .copied()
        .unwrap_or_default();
    let reason = Reason::from_u32(newest.reason).unwrap_or(Reason::DropInternal);
    Ok(LiveVerdict {
        pass: result.return_value == XDP_PASS,
        reason,
        rule: (newest.rule != CT_RULE_NONE).then_some(newest.rule),
        src_id: newest.src_id,
        dst_id: newest.dst_id,
        slot: newest.slot,
    })
}

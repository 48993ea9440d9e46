//! `explain --live`: asks the loaded program itself. A synthetic packet runs
//! through the pinned XDP program with BPF_PROG_TEST_RUN, marked as a dry
//! run (metadata `DRY_RUN_MAGIC`), so the program decides exactly as for a
//! real packet but writes no conntrack entry, no counter and no flow log
//! record — only the record of its decision, read back here.

use anyhow::{Context, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use segment_common::{DRY_RUN_MAGIC, ExplainRecord, Reason, map_names};

use super::{paths::Paths, tables::open_map};

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

pub fn judge(paths: &Paths, frame: &[u8]) -> Result<LiveVerdict> {
    let path = paths.program(map_names::PROG_INGRESS);
    let prog = Xdp::from_pin(&path, XdpAttachType::Interface).with_context(|| {
        format!(
            "opening the pinned program {} (is segment running?)",
            path.display()
        )
    })?;
    let mut data = DRY_RUN_MAGIC.to_ne_bytes().to_vec();
    data.extend_from_slice(frame);
    // struct xdp_md: data (= metadata length), data_end, data_meta,
    // ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [4, data.len() as u32, 0, 0, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(&data),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .context("running the packet through the loaded program")?;
    let records: PerCpuArray<MapData, ExplainRecord> = open_map(paths, map_names::EXPLAIN)?;
    let newest = records
        .get(&0, 0)?
        .iter()
        .max_by_key(|r| r.ts_ns)
        .copied()
        .unwrap_or_default();
    let reason = Reason::from_u32(newest.reason).unwrap_or(Reason::DropMalformed);
    Ok(LiveVerdict {
        pass: result.return_value == 2,
        reason,
        rule: (newest.rule != segment_common::CT_RULE_NONE).then_some(newest.rule),
        src_id: newest.src_id,
        dst_id: newest.dst_id,
        slot: newest.slot,
    })
}

//! Reading counters from the pinned maps. Works whether or not an agent is
//! running: the maps live in bpffs.

use std::collections::HashMap;

use anyhow::Result;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use segment_common::{
    CtKey, CtValue, GlobalConfig, PairCounters, PairKey, REASON_COUNT, Reason, ReasonCounters,
    SlotConfig, TrafficCounters, map_names,
};

use super::{paths::Paths, tables::open_map};

/// Counters summed over CPUs, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub config: GlobalConfig,
    pub slot_config: Option<SlotConfig>,
    pub pairs: Vec<(PairKey, PairCounters)>,
    /// By reason, per hook.
    pub reasons: Vec<(Reason, [ReasonCounters; 2])>,
    /// Hits of the active slot's rules, by rule index.
    pub hits: HashMap<u32, u64>,
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
}

pub fn read(paths: &Paths) -> Result<Snapshot> {
    let config_map: Array<MapData, GlobalConfig> = open_map(paths, map_names::CONFIG)?;
    let config = config_map.get(&0, 0)?;
    let slot = config.active_slot & 1;
    let slot_config = if config.initialized != 0 {
        let slots: Array<MapData, SlotConfig> = open_map(paths, map_names::SLOT_CONFIG)?;
        Some(slots.get(&slot, 0)?)
    } else {
        None
    };

    let pairs_map: PerCpuHashMap<MapData, PairKey, PairCounters> =
        open_map(paths, map_names::PAIRS)?;
    let mut pairs = Vec::new();
    for kv in pairs_map.iter() {
        let (k, per_cpu) = kv?;
        let mut sum = PairCounters::default();
        for v in per_cpu.iter() {
            for h in 0..2 {
                sum.hooks[h].add(&v.hooks[h]);
            }
        }
        pairs.push((k, sum));
    }
    pairs.sort_by_key(|(k, _)| *k);

    let reasons_map: PerCpuArray<MapData, ReasonCounters> = open_map(paths, map_names::REASONS)?;
    let mut reasons = Vec::new();
    for reason in Reason::ALL {
        let mut per_hook = [ReasonCounters::default(); 2];
        for (h, slot) in per_hook.iter_mut().enumerate() {
            let index = reason as u32 * 2 + h as u32;
            if index >= REASON_COUNT * 2 {
                continue;
            }
            for v in reasons_map.get(&index, 0)?.iter() {
                slot.packets += v.packets;
                slot.bytes += v.bytes;
            }
        }
        reasons.push((reason, per_hook));
    }

    let mut hits = HashMap::new();
    if config.initialized != 0 {
        let hits_map: PerCpuHashMap<MapData, u32, u64> =
            open_map(paths, map_names::RULE_HITS[slot as usize])?;
        for kv in hits_map.iter() {
            let (k, per_cpu) = kv?;
            hits.insert(k, per_cpu.iter().sum());
        }
    }

    let ct_data = MapData::from_pin(paths.map(map_names::CONNTRACK))?;
    let conntrack_capacity = ct_data.info()?.max_entries();
    let ct: BpfHashMap<MapData, CtKey, CtValue> =
        BpfHashMap::try_from(aya::maps::Map::from_map_data(ct_data)?)?;
    let conntrack_entries = ct.keys().filter(Result::is_ok).count();

    Ok(Snapshot {
        config,
        slot_config,
        pairs,
        reasons,
        hits,
        conntrack_entries,
        conntrack_capacity,
    })
}

/// Sum of both hooks.
pub fn both_hooks(c: &PairCounters) -> TrafficCounters {
    let mut t = c.hooks[0];
    t.add(&c.hooks[1]);
    t
}

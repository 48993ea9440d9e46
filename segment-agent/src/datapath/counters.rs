//! Reading counters from the pinned maps. Works whether or not an agent is
//! running: the maps live in bpffs.

#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashMap;

use anyhow::Result;
use aya::maps::{
    Array, ArrayOfMaps, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use segment_common::{
    CtKey, CtValue, GlobalConfig, PAIR_OVERFLOW, PairCounters, PairKey, REASON_COUNT, Reason,
    ReasonCounters, SlotConfig, TrafficCounters, map_names,
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
    /// Tracked flows, confirmed and unconfirmed.
    pub conntrack_entries: usize,
    /// Capacity of the confirmed-flow table (`--conntrack-entries`).
    pub conntrack_capacity: u32,
    /// Flows not confirmed yet, in their own smaller table.
    pub conntrack_unconfirmed: usize,
    pub conntrack_unconfirmed_capacity: u32,
}

pub fn read(paths: &Paths) -> Result<Snapshot> {
    let config = super::tables::read_config(&super::tables::open_config(paths)?)?;
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

    let reasons = reasons(paths)?;

    let hits = if config.initialized != 0 {
        rule_hits(paths, slot)?
    } else {
        HashMap::new()
    };

    let (confirmed, conntrack_capacity) = table_size(paths, map_names::CONNTRACK)?;
    let (conntrack_unconfirmed, conntrack_unconfirmed_capacity) =
        table_size(paths, map_names::CONNTRACK_PENDING)?;
    let conntrack_entries = confirmed.saturating_add(conntrack_unconfirmed);

    Ok(Snapshot {
        config,
        slot_config,
        pairs,
        reasons,
        hits,
        conntrack_entries,
        conntrack_capacity,
        conntrack_unconfirmed,
        conntrack_unconfirmed_capacity,
    })
}

/// Packets and bytes per datapath reason and hook (ingress, egress),
/// summed over CPUs: one read of one small array, cheap enough to repeat.
pub fn reasons(paths: &Paths) -> Result<Vec<(Reason, [ReasonCounters; 2])>> {
    let reasons_map: PerCpuArray<MapData, ReasonCounters> = open_map(paths, map_names::REASONS)?;
    let mut reasons = Vec::new();
    for reason in Reason::ALL {
        let mut per_hook = [ReasonCounters::default(); 2];
        for (h, slot) in (0u32..).zip(per_hook.iter_mut()) {
            // Reason codes are small (below REASON_COUNT): the index cannot overflow.
            let Some(index) = (reason as u32)
                .checked_mul(2)
                .and_then(|i| i.checked_add(h))
                .filter(|i| *i < REASON_COUNT.saturating_mul(2))
            else {
                continue;
            };
            for v in reasons_map.get(&index, 0)?.iter() {
                slot.packets = slot.packets.saturating_add(v.packets);
                slot.bytes = slot.bytes.saturating_add(v.bytes);
            }
        }
        reasons.push((reason, per_hook));
    }
    Ok(reasons)
}

/// Packets each rule of slot `slot`'s policy admitted, by rule index
/// (summed over CPUs), for the rules hit at least once.
fn rule_hits(paths: &Paths, slot: u32) -> Result<HashMap<u32, u64>> {
    let outer: ArrayOfMaps<MapData, PerCpuHashMap<MapData, u32, u64>> =
        open_map(paths, map_names::RULE_HITS)?;
    let hits = match outer.get(&slot, 0) {
        Ok(h) => h,
        Err(aya::maps::MapError::KeyNotFound) => return Ok(HashMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = HashMap::new();
    for kv in hits.iter() {
        let (k, per_cpu) = kv?;
        out.insert(k, per_cpu.iter().fold(0u64, |a, v| a.saturating_add(*v)));
    }
    Ok(out)
}

/// Entries and capacity of one conntrack table.
fn table_size(paths: &Paths, name: &str) -> Result<(usize, u32)> {
    let data = MapData::from_pin(paths.map(name))?;
    let capacity = data.info()?.max_entries();
    let ct: BpfHashMap<MapData, CtKey, CtValue> =
        BpfHashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
    Ok((ct.keys().filter(Result::is_ok).count(), capacity))
}

/// Creates the overflow pair's counters (`PAIR_OVERFLOW`) if they are not
/// there. The datapath counts a pair beyond the map's capacity under that
/// key; created by the datapath itself it would need a free slot exactly
/// when there is none, and such packets would go uncounted.
pub fn reserve_overflow_pair(paths: &Paths) -> Result<()> {
    const BPF_NOEXIST: u64 = 1;
    let mut pairs: PerCpuHashMap<MapData, PairKey, PairCounters> =
        open_map(paths, map_names::PAIRS)?;
    let key = PairKey {
        src_id: PAIR_OVERFLOW,
        dst_id: PAIR_OVERFLOW,
    };
    if pairs.get(&key, 0).is_ok() {
        return Ok(());
    }
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let zero = PerCpuValues::try_from(vec![PairCounters::default(); cpus])?;
    match pairs.insert(key, zero, BPF_NOEXIST) {
        Ok(()) => Ok(()),
        // Created meanwhile (by the datapath): just as good.
        Err(_) if pairs.get(&key, 0).is_ok() => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("reserving the overflow pair counters")),
    }
}

/// Sum of both hooks.
pub fn both_hooks(c: &PairCounters) -> TrafficCounters {
    let mut t = c.hooks[0];
    t.add(&c.hooks[1]);
    t
}

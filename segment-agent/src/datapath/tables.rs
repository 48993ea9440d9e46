//! Writing a compiled policy into the datapath, atomically.
//!
//! The datapath reads one of two slots of policy tables, chosen by the
//! config entry `CFG_ACTIVE`. A new policy is written, completely, into the
//! slot nobody reads; then one 4-byte store switches every CPU to it. An
//! RCU grace period (see `grace`) then runs out on a thread of its own, and
//! the next write into the old slot waits for it, so that no packet still
//! reading the old slot meets that write. The switch is not delayed by the
//! wait, and, with reloads a file-watcher debounce (200 ms) apart and a
//! grace period of milliseconds, the next reload rarely is. A packet
//! therefore sees the old policy or the new one, never a mix, and a policy
//! that fails half-way through being written is never seen at all.
//!
//! The hash tables of a slot (rule entries, exact-match identities) and its
//! rule hit counters are inner maps of maps of maps (one outer array per
//! kind, indexed by slot), sized by the policy each time it is written: a
//! small policy gets small, cache-resident tables, a huge one the capacity
//! it needs. A table whose size still suits the new policy
//! (`table_fits`) is kept and written as a diff: the slot's previous
//! contents (known to the agent, or read back from the kernel when a new
//! agent adopts the maps) are compared with the new tables, and only
//! changed entries are written, many per syscall (see `batch`). Otherwise a
//! fresh table of the right size is filled and then put in the outer map;
//! the kernel frees the replaced one once no program run can still hold it.

use std::{os::fd::AsFd, sync::Arc, thread::JoinHandle};

use anyhow::{Context, Result, bail};
use aya::{
    Pod,
    maps::{
        Array, ArrayOfMaps, HashMap as BpfHashMap, IterableMap, Map, MapData, MapError,
        PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
};
// The slot contents are diffed key by key on every reload; SipHash was a
// quarter of that at 100,000 rules, and the keys are the policy's own.
use foldhash::{HashMap, HashMapExt};
use segment_common::{
    CFG_ACTIVE, CFG_FLOW_LOG, CFG_OVERRIDE, ExactKey4, ExactKey6, GlobalConfig, Identity, Ipv4Addr,
    Ipv6Addr, LENS_USE_LPM, MAX_EXACT_LENS, MAX_EXACT_PREFIXES, POLICY_HASH_FLAGS,
    PORT_CLASS_ENTRIES, RULE_HITS_FLAGS, RuleKey, RuleValue, SlotConfig, map_names, table_capacity,
    table_fits,
};

use super::{
    batch::{self, BatchError},
    grace::GracePeriod,
    mmap::Mapping,
    paths::Paths,
};
use crate::compile::{Compiled, Prefix};

/// Everything one slot holds, in a form that can be compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotContents {
    /// The LPM tries: filled only for a family the datapath looks up in
    /// the trie (`SlotConfig::lens_v4_count == LENS_USE_LPM`); writing
    /// them otherwise would double the cost of a load for nothing.
    pub v4: HashMap<(u32, Ipv4Addr), Identity>,
    pub v6: HashMap<(u32, Ipv6Addr), Identity>,
    /// The exact-match tables, for a family that uses them (empty
    /// otherwise).
    pub ex4: HashMap<ExactKey4, Identity>,
    pub ex6: HashMap<ExactKey6, Identity>,
    pub rules: HashMap<RuleKey, RuleValue>,
    /// Port class by `block * 65536 + port`.
    pub ports: Vec<u16>,
    pub config: SlotConfig,
}

/// The prefix lengths of one family, longest first, or `LENS_USE_LPM`
/// when the exact-match tables would not be the faster (or would not fit).
fn lens<K>(table: &HashMap<(u32, K), Identity>) -> (u8, [u8; MAX_EXACT_LENS]) {
    let mut lens: Vec<u32> = table.keys().map(|(len, _)| *len).collect();
    lens.sort_unstable_by(|a, b| b.cmp(a));
    lens.dedup();
    let mut out = [0u8; MAX_EXACT_LENS];
    if lens.len() > MAX_EXACT_LENS || table.len() > MAX_EXACT_PREFIXES as usize {
        return (LENS_USE_LPM, out);
    }
    for (i, l) in lens.iter().enumerate() {
        out[i] = *l as u8;
    }
    (lens.len() as u8, out)
}

impl SlotContents {
    /// What a slot holds for a compiled policy. `config` gets the prefix
    /// lengths of the exact-match tables.
    pub fn from_compiled(c: &Compiled, mut config: SlotConfig) -> Self {
        let mut v4 = HashMap::new();
        let mut v6 = HashMap::new();
        for (p, id) in c.prefixes.entries() {
            insert_prefix(&mut v4, &mut v6, p, *id);
        }
        (config.lens_v4_count, config.lens_v4) = lens(&v4);
        (config.lens_v6_count, config.lens_v6) = lens(&v6);
        let ex4 = if config.lens_v4_count == LENS_USE_LPM {
            HashMap::new()
        } else {
            std::mem::take(&mut v4)
                .into_iter()
                .map(|((len, addr), id)| (ExactKey4 { len, addr }, id))
                .collect()
        };
        let ex6 = if config.lens_v6_count == LENS_USE_LPM {
            HashMap::new()
        } else {
            std::mem::take(&mut v6)
                .into_iter()
                .map(|((len, addr), id)| (ExactKey6 { len, addr }, id))
                .collect()
        };
        let mut ports = vec![0u16; PORT_CLASS_ENTRIES as usize];
        for (block, table) in c.ports.iter().enumerate() {
            for &(lo, hi, class) in &table.intervals {
                let base = block * 65_536;
                ports[base + lo as usize..=base + hi as usize].fill(class);
            }
        }
        Self {
            v4,
            v6,
            ex4,
            ex6,
            rules: c.rules.iter().map(|(k, v)| (*k, *v)).collect(),
            ports,
            config,
        }
    }
}

fn insert_prefix(
    v4: &mut HashMap<(u32, Ipv4Addr), Identity>,
    v6: &mut HashMap<(u32, Ipv6Addr), Identity>,
    p: &Prefix,
    id: Identity,
) {
    if p.bits == 32 {
        v4.insert((u32::from(p.len), (p.network as u32).to_be_bytes()), id);
    } else {
        v6.insert((u32::from(p.len), p.network.to_be_bytes()), id);
    }
}

/// A pinned map opened by name.
pub fn open_map<T>(paths: &Paths, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = paths.map(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is segment running or attached? see `segment-agent run`)",
            path.display()
        )
    })?;
    let map = Map::from_map_data(data).with_context(|| format!("map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// A BPF array mapped into our memory, for writing 196,608 port classes
/// with a memcpy instead of as many syscalls.
struct MappedArray {
    mapping: Mapping,
    /// Bytes per element in the mapping (values are padded to 8 bytes).
    stride: usize,
    entries: usize,
}

impl MappedArray {
    fn open(paths: &Paths, name: &str) -> Result<Self> {
        let path = paths.map(name);
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = map.info()?;
        let entries = info.max_entries() as usize;
        let stride = (info.value_size() as usize).next_multiple_of(8);
        let mapping = Mapping::new(map, entries.saturating_mul(stride)).with_context(|| {
            format!("mmap of {name} (the map must be created with BPF_F_MMAPABLE)")
        })?;
        Ok(Self {
            mapping,
            stride,
            entries,
        })
    }

    fn read_u16(&self, i: usize) -> u16 {
        assert!(i < self.entries);
        // SAFETY: in bounds of the mapping; u16 at an 8-byte aligned offset.
        unsafe { std::ptr::read_volatile(self.mapping.base().add(i * self.stride).cast::<u16>()) }
    }

    fn write_u16(&mut self, i: usize, v: u16) {
        assert!(i < self.entries);
        // SAFETY: in bounds of the mapping; u16 at an 8-byte aligned offset.
        unsafe {
            std::ptr::write_volatile(self.mapping.base().add(i * self.stride).cast::<u16>(), v)
        }
    }
}

/// The policy maps of both slots, opened from their pins.
pub struct PolicyMaps {
    id4: [LpmTrie<MapData, Ipv4Addr, Identity>; 2],
    id6: [LpmTrie<MapData, Ipv6Addr, Identity>; 2],
    ex4: SlotTables<ExactKey4, Identity>,
    ex6: SlotTables<ExactKey6, Identity>,
    rules: SlotTables<RuleKey, RuleValue>,
    hits: ArrayOfMaps<MapData, PerCpuHashMap<MapData, u32, u64>>,
    ports: [MappedArray; 2],
    slot_config: Array<MapData, SlotConfig>,
    config: Array<MapData, u32>,
    grace: Arc<GracePeriod>,
    /// The grace period the last switch began, while it may still run.
    settling: Option<JoinHandle<std::io::Result<()>>>,
    /// A grace period failed: until one succeeds, the slot left by the
    /// last switch may still be read and must not be written.
    unsettled: bool,
}

/// A process that exits leaves no grace period behind it: the next agent
/// on these pins knows nothing of one still running here.
impl Drop for PolicyMaps {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            log::warn!("{e:#}");
        }
    }
}

/// The config array, decoded.
pub fn read_config(config: &Array<MapData, u32>) -> Result<GlobalConfig> {
    Ok(GlobalConfig::decode(
        config.get(&CFG_ACTIVE, 0)?,
        config.get(&CFG_OVERRIDE, 0)?,
        config.get(&CFG_FLOW_LOG, 0)?,
    ))
}

/// Opens the pinned config array.
pub fn open_config(paths: &Paths) -> Result<Array<MapData, u32>> {
    open_map(paths, map_names::CONFIG)
}

impl PolicyMaps {
    pub fn open(paths: &Paths) -> Result<Self> {
        Ok(Self {
            id4: [
                open_map(paths, map_names::IDENTITY_V4[0])?,
                open_map(paths, map_names::IDENTITY_V4[1])?,
            ],
            id6: [
                open_map(paths, map_names::IDENTITY_V6[0])?,
                open_map(paths, map_names::IDENTITY_V6[1])?,
            ],
            ex4: SlotTables::open(paths, map_names::EXACT_V4, "exact IPv4 prefixes")?,
            ex6: SlotTables::open(paths, map_names::EXACT_V6, "exact IPv6 prefixes")?,
            rules: SlotTables::open(paths, map_names::RULES, "rule entries")?,
            hits: open_map(paths, map_names::RULE_HITS)?,
            ports: [
                MappedArray::open(paths, map_names::PORT_CLASSES[0])?,
                MappedArray::open(paths, map_names::PORT_CLASSES[1])?,
            ],
            slot_config: open_map(paths, map_names::SLOT_CONFIG)?,
            config: open_config(paths)?,
            grace: Arc::new(GracePeriod::new().context("creating the grace-period map")?),
            settling: None,
            unsettled: false,
        })
    }

    pub fn global(&self) -> Result<GlobalConfig> {
        read_config(&self.config)
    }

    /// Reads back what a slot holds (used when adopting pinned maps).
    pub fn read_slot(&self, slot: u32) -> Result<SlotContents> {
        let s = slot as usize;
        let mut c = SlotContents {
            ports: vec![0; PORT_CLASS_ENTRIES as usize],
            config: self.slot_config.get(&slot, 0)?,
            ..SlotContents::default()
        };
        for kv in self.id4[s].iter() {
            let (k, v) = kv?;
            c.v4.insert((k.prefix_len(), k.data()), v);
        }
        for kv in self.id6[s].iter() {
            let (k, v) = kv?;
            c.v6.insert((k.prefix_len(), k.data()), v);
        }
        c.ex4 = self.ex4.read(slot)?;
        c.ex6 = self.ex6.read(slot)?;
        c.rules = self.rules.read(slot)?;
        for (i, p) in c.ports.iter_mut().enumerate() {
            *p = self.ports[s].read_u16(i);
        }
        Ok(c)
    }

    /// Makes slot `slot` hold `new`, given that it holds `old`. The slot must
    /// not be the active one.
    pub fn write_slot(
        &mut self,
        slot: u32,
        old: &SlotContents,
        new: &SlotContents,
    ) -> Result<WriteStats> {
        let s = slot as usize;
        let active = self.global()?;
        if active.initialized != 0 && active.active_slot == slot {
            bail!("refusing to write slot {slot}: the datapath is reading it");
        }
        self.settle()?;
        let mut stats = WriteStats::default();
        let st = &mut stats;
        let v4_key = |k: &(u32, Ipv4Addr)| Key::new(k.0, k.1);
        let v6_key = |k: &(u32, Ipv6Addr)| Key::new(k.0, k.1);
        sync(
            &mut self.id4[s],
            &old.v4,
            &new.v4,
            v4_key,
            "IPv4 prefixes",
            st,
        )?;
        sync(
            &mut self.id6[s],
            &old.v6,
            &new.v6,
            v6_key,
            "IPv6 prefixes",
            st,
        )?;
        self.ex4.write(slot, &old.ex4, &new.ex4, st)?;
        self.ex6.write(slot, &old.ex6, &new.ex6, st)?;
        self.rules.write(slot, &old.rules, &new.rules, st)?;
        // Port classes, straight into the mapped array.
        for (i, (&o, &n)) in old.ports.iter().zip(&new.ports).enumerate() {
            if o != n {
                self.ports[s].write_u16(i, n);
                stats.written += 1;
            }
        }
        self.reset_hits(slot, new)?;
        self.slot_config.set(slot, new.config, 0)?;
        Ok(stats)
    }

    /// Rule numbers change meaning with the policy: slot `slot` starts its
    /// hit counts afresh, in a table with room for every rule of `new`.
    /// The table the slot has is emptied and kept when its size suits the
    /// policy; only otherwise is a new one created and installed, because
    /// installing an inner map waits for an RCU grace period (several
    /// milliseconds, on every reload). No program run reads the inactive
    /// slot's counters, so emptying them in place races with nothing.
    fn reset_hits(&mut self, slot: u32, new: &SlotContents) -> Result<()> {
        let rules = new
            .rules
            .values()
            .map(|v| v.rule)
            .max()
            .map_or(0, |r| r.saturating_add(1));
        if let Ok(mut hits) = self.hits.get(&slot, 0) {
            let capacity = IterableMap::map(&hits).info()?.max_entries();
            if table_fits(capacity, rules as usize) {
                let keys: Vec<u32> = hits
                    .keys()
                    .collect::<Result<_, _>>()
                    .context("listing the rule hit counters")?;
                match batch::delete(IterableMap::map(&hits).fd().as_fd(), &keys) {
                    Ok(()) => {}
                    Err(BatchError::Unsupported) => {
                        for k in &keys {
                            hits.remove(k).context("clearing the rule hit counters")?;
                        }
                    }
                    Err(e) => return Err(e).context("clearing the rule hit counters"),
                }
                return Ok(());
            }
        }
        let capacity = table_capacity(rules as usize);
        let hits = PerCpuHashMap::<MapData, u32, u64>::create(capacity, RULE_HITS_FLAGS)
            .with_context(|| format!("creating the rule hit counters ({rules} rules)"))?;
        self.hits
            .set(slot, &hits, 0)
            .context("installing the rule hit counters")
    }

    /// Switches the datapath to `slot`: one store of the one config entry
    /// that says which slot is in force (the override and flow-log entries
    /// are not touched, so an admin's bpftool change of them is never
    /// undone). The policy is in force when this returns; the grace period
    /// after which the slot that was in force may be written again runs on
    /// a thread, which [`Self::settle`] (and so the next `write_slot`)
    /// waits for.
    pub fn activate(&mut self, slot: u32) -> Result<()> {
        // Joined first so that its outcome is not lost with its handle.
        self.settle()?;
        self.config.set(CFG_ACTIVE, (slot & 1) + 1, 0)?;
        // The switch has happened: from here on nothing fails the switch.
        // A grace period that cannot be waited for is owed, and the next
        // write into the slot left behind waits for it first.
        let grace = Arc::clone(&self.grace);
        match std::thread::Builder::new()
            .name("segment-grace".into())
            .spawn(move || grace.wait())
        {
            Ok(h) => self.settling = Some(h),
            Err(_) => self.unsettled = true,
        }
        Ok(())
    }

    /// Returns once no program run can still be reading the slot that was
    /// in force before the last switch. An error means that could not be
    /// established: the caller must not write that slot.
    pub fn settle(&mut self) -> Result<()> {
        let waited = match self.settling.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the thread panicked"))),
            // A period that failed before is not over: wait again, here.
            None if self.unsettled => self.grace.wait(),
            None => Ok(()),
        };
        self.unsettled = waited.is_err();
        waited.context("waiting for the datapath to leave the previous slot")
    }
}

/// One kind of per-slot hash table: an outer array of maps (index = slot)
/// whose inner maps the agent creates, sized by the policy.
struct SlotTables<K, V> {
    outer: ArrayOfMaps<MapData, BpfHashMap<MapData, K, V>>,
    what: &'static str,
}

impl<K: Pod + Eq + std::hash::Hash, V: Pod + PartialEq> SlotTables<K, V> {
    fn open(paths: &Paths, name: &str, what: &'static str) -> Result<Self> {
        Ok(Self {
            outer: open_map(paths, name)?,
            what,
        })
    }

    /// The table slot `slot` holds, if one was ever put there.
    fn table(&self, slot: u32) -> Result<Option<BpfHashMap<MapData, K, V>>> {
        match self.outer.get(&slot, 0) {
            Ok(t) => Ok(Some(t)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening the {} of slot {slot}", self.what)),
        }
    }

    fn read(&self, slot: u32) -> Result<HashMap<K, V>> {
        let mut out = HashMap::new();
        if let Some(t) = self.table(slot)? {
            for kv in t.iter() {
                let (k, v) = kv?;
                out.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Makes slot `slot`'s table hold `new`, given that it holds `old`:
    /// in place when its size suits `new`, else in a fresh table of the
    /// right size that then replaces it.
    fn write(
        &mut self,
        slot: u32,
        old: &HashMap<K, V>,
        new: &HashMap<K, V>,
        stats: &mut WriteStats,
    ) -> Result<()> {
        if let Some(mut t) = self.table(slot)? {
            let capacity = IterableMap::map(&t).info()?.max_entries();
            if table_fits(capacity, new.len()) {
                return sync(&mut t, old, new, |k| *k, self.what, stats);
            }
        }
        let capacity = table_capacity(new.len());
        let mut t = BpfHashMap::<MapData, K, V>::create(capacity, POLICY_HASH_FLAGS)
            .with_context(|| format!("creating a table of {capacity} {}", self.what))?;
        sync(&mut t, &HashMap::new(), new, |k| *k, self.what, stats)?;
        self.outer
            .set(slot, &t, 0)
            .with_context(|| format!("installing the {} of slot {slot}", self.what))
    }
}

/// One policy table as `sync` needs it: batches where the kernel has
/// them, one-element calls where it does not.
trait Table<K: Pod, V: Pod> {
    fn put_batch(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError>;
    fn del_batch(&mut self, keys: &[K]) -> Result<(), BatchError>;
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    fn del(&mut self, key: &K) -> Result<(), MapError>;
}

impl<K: Pod, V: Pod> Table<K, V> for BpfHashMap<MapData, K, V> {
    fn put_batch(&mut self, keys: &[K], values: &[V]) -> Result<(), BatchError> {
        batch::update(IterableMap::map(self).fd().as_fd(), keys, values)
    }
    fn del_batch(&mut self, keys: &[K]) -> Result<(), BatchError> {
        batch::delete(IterableMap::map(self).fd().as_fd(), keys)
    }
    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }
    fn del(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
}

impl<K: Pod, V: Pod> Table<Key<K>, V> for LpmTrie<MapData, K, V> {
    fn put_batch(&mut self, keys: &[Key<K>], values: &[V]) -> Result<(), BatchError> {
        batch::update(IterableMap::map(self).fd().as_fd(), keys, values)
    }
    fn del_batch(&mut self, keys: &[Key<K>]) -> Result<(), BatchError> {
        batch::delete(IterableMap::map(self).fd().as_fd(), keys)
    }
    fn put(&mut self, key: &Key<K>, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }
    fn del(&mut self, key: &Key<K>) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// Makes `table` go from `old` to `new`: removals first (so a full table
/// has room), then writes of what changed.
fn sync<K, V, MK, T>(
    table: &mut T,
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
    map_key: impl Fn(&K) -> MK,
    what: &str,
    stats: &mut WriteStats,
) -> Result<()>
where
    K: Eq + std::hash::Hash,
    V: Pod + PartialEq,
    MK: Pod,
    T: Table<MK, V>,
{
    let gone: Vec<MK> = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .map(&map_key)
        .collect();
    match table.del_batch(&gone) {
        Ok(()) => {}
        Err(BatchError::Unsupported) => {
            log::debug!("no batch deletes for the {what}: one call per element");
            for k in &gone {
                table
                    .del(k)
                    .with_context(|| format!("removing from the {what}"))?;
            }
        }
        Err(e) => return Err(e).with_context(|| format!("removing from the {what}")),
    }
    stats.removed += gone.len();
    let (keys, values): (Vec<MK>, Vec<V>) = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (map_key(k), *v))
        .unzip();
    match table.put_batch(&keys, &values) {
        Ok(()) => {}
        Err(BatchError::Unsupported) => {
            log::debug!("no batch updates for the {what}: one call per element");
            for (k, v) in keys.iter().zip(&values) {
                table
                    .put(k, v)
                    .with_context(|| format!("writing the {what}"))?;
            }
        }
        Err(e) => return Err(e).with_context(|| format!("writing the {what}")),
    }
    stats.written += keys.len();
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    pub written: usize,
    pub removed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table in memory that may refuse batches, as an old kernel does.
    struct Fake {
        batches: bool,
        held: HashMap<u32, u64>,
        calls: usize,
    }

    impl Table<u32, u64> for Fake {
        fn put_batch(&mut self, keys: &[u32], values: &[u64]) -> Result<(), BatchError> {
            if !self.batches {
                return Err(BatchError::Unsupported);
            }
            self.calls += 1;
            self.held
                .extend(keys.iter().copied().zip(values.iter().copied()));
            Ok(())
        }
        fn del_batch(&mut self, keys: &[u32]) -> Result<(), BatchError> {
            if !self.batches {
                return Err(BatchError::Unsupported);
            }
            self.calls += 1;
            for k in keys {
                if self.held.remove(k).is_none() {
                    return Err(BatchError::Failed {
                        done: 0,
                        error: std::io::Error::from_raw_os_error(libc::ENOENT),
                    });
                }
            }
            Ok(())
        }
        fn put(&mut self, key: &u32, value: &u64) -> Result<(), MapError> {
            self.calls += 1;
            self.held.insert(*key, *value);
            Ok(())
        }
        fn del(&mut self, key: &u32) -> Result<(), MapError> {
            self.calls += 1;
            match self.held.remove(key) {
                Some(_) => Ok(()),
                None => Err(MapError::KeyNotFound),
            }
        }
    }

    fn contents(pairs: &[(u32, u64)]) -> HashMap<u32, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn sync_turns_old_into_new_with_and_without_batches() {
        let old = contents(&[(1, 10), (2, 20), (3, 30)]);
        let new = contents(&[(2, 20), (3, 31), (4, 40), (5, 50)]);
        for batches in [true, false] {
            let mut t = Fake {
                batches,
                held: old.clone(),
                calls: 0,
            };
            let mut stats = WriteStats::default();
            sync(&mut t, &old, &new, |k| *k, "test table", &mut stats).unwrap();
            assert_eq!(t.held, new, "batches: {batches}");
            // 1 removed; 3 changed or new; the unchanged entry is not rewritten.
            assert_eq!((stats.removed, stats.written), (1, 3));
            let expected_calls = if batches { 2 } else { 4 };
            assert_eq!(t.calls, expected_calls, "batches: {batches}");
        }
    }

    #[test]
    fn sync_reports_which_table_failed() {
        let old = contents(&[(1, 10)]);
        let new = contents(&[]);
        for batches in [true, false] {
            // The kernel lost the entry we think it holds.
            let mut t = Fake {
                batches,
                held: HashMap::new(),
                calls: 0,
            };
            let err = sync(
                &mut t,
                &old,
                &new,
                |k| *k,
                "rule entries",
                &mut Default::default(),
            )
            .unwrap_err();
            assert!(
                format!("{err:#}").contains("removing from the rule entries"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn capacities_have_headroom_a_floor_and_are_powers_of_two() {
        use segment_common::MIN_TABLE_ENTRIES;
        assert_eq!(table_capacity(0), MIN_TABLE_ENTRIES);
        assert_eq!(table_capacity(10), MIN_TABLE_ENTRIES);
        assert_eq!(table_capacity(1000), 2048);
        assert_eq!(table_capacity(1_000_000), 1 << 21);
        for n in [1usize, 63, 64, 100, 4096, 100_000, 1_000_000] {
            let c = table_capacity(n) as usize;
            assert!(c.is_power_of_two() && c >= n + n / 4, "{n} -> {c}");
        }
    }

    #[test]
    fn a_table_is_kept_only_when_neither_short_nor_far_too_big() {
        assert!(table_fits(table_capacity(1000), 1000));
        assert!(table_fits(4096, 1000));
        assert!(!table_fits(8192, 1000));
        assert!(!table_fits(1024, 1000));
        assert!(table_fits(segment_common::MIN_TABLE_ENTRIES, 3));
    }
}

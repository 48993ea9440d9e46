//! Writing a compiled policy into the datapath, atomically.
//!
//! The datapath reads one of two slots of policy tables, chosen by
//! `GlobalConfig::active_slot`. A new policy is written, completely, into the
//! slot nobody reads; then one 4-byte store switches every CPU to it. A
//! packet therefore sees the old policy or the new one, never a mix, and a
//! policy that fails half-way through being written is never seen at all.
//!
//! Writes are diffs: the slot's previous contents (known to the agent, or
//! read back from the kernel when a new agent adopts the maps) are compared
//! with the new tables, and only changed entries cost a syscall.

use std::{collections::HashMap, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, HashMap as BpfHashMap, Map, MapData, PerCpuHashMap,
    lpm_trie::{Key, LpmTrie},
};
use segment_common::{
    ExactKey4, ExactKey6, GlobalConfig, Identity, Ipv4Addr, Ipv6Addr, LENS_USE_LPM, MAX_EXACT_LENS,
    MAX_EXACT_PREFIXES, PORT_CLASS_ENTRIES, RuleKey, RuleValue, SlotConfig, map_names,
};

use super::paths::Paths;
use crate::compile::{Compiled, Prefix};

/// Everything one slot holds, in a form that can be compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotContents {
    pub v4: HashMap<(u32, Ipv4Addr), Identity>,
    pub v6: HashMap<(u32, Ipv6Addr), Identity>,
    /// The same prefixes for the exact-match tables (empty for a family
    /// that uses the trie, see `SlotConfig::lens_v4_count`).
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
            v4.iter()
                .map(|((len, addr), id)| {
                    (
                        ExactKey4 {
                            len: *len,
                            addr: *addr,
                        },
                        *id,
                    )
                })
                .collect()
        };
        let ex6 = if config.lens_v6_count == LENS_USE_LPM {
            HashMap::new()
        } else {
            v6.iter()
                .map(|((len, addr), id)| {
                    (
                        ExactKey6 {
                            len: *len,
                            addr: *addr,
                        },
                        *id,
                    )
                })
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
    ptr: *mut u8,
    len: usize,
    /// Bytes per element in the mapping (values are padded to 8 bytes).
    stride: usize,
    entries: usize,
    _map: MapData,
}

impl MappedArray {
    fn open(paths: &Paths, name: &str) -> Result<Self> {
        let path = paths.map(name);
        let map =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let info = map.info()?;
        let entries = info.max_entries() as usize;
        let stride = (info.value_size() as usize).next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (entries * stride).next_multiple_of(page);
        // SAFETY: mapping a BPF array fd created with BPF_F_MMAPABLE; the
        // kernel checks the flags and the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {name} failed: {} (the map must be created with BPF_F_MMAPABLE)",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            stride,
            entries,
            _map: map,
        })
    }

    fn read_u16(&self, i: usize) -> u16 {
        assert!(i < self.entries);
        // SAFETY: in bounds of the mapping; u16 at an 8-byte aligned offset.
        unsafe { std::ptr::read_volatile(self.ptr.add(i * self.stride).cast::<u16>()) }
    }

    fn write_u16(&mut self, i: usize, v: u16) {
        assert!(i < self.entries);
        // SAFETY: in bounds of the mapping; u16 at an 8-byte aligned offset.
        unsafe { std::ptr::write_volatile(self.ptr.add(i * self.stride).cast::<u16>(), v) }
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

use std::os::fd::AsFd;

/// The policy maps of both slots, opened from their pins.
pub struct PolicyMaps {
    id4: [LpmTrie<MapData, Ipv4Addr, Identity>; 2],
    id6: [LpmTrie<MapData, Ipv6Addr, Identity>; 2],
    ex4: [BpfHashMap<MapData, ExactKey4, Identity>; 2],
    ex6: [BpfHashMap<MapData, ExactKey6, Identity>; 2],
    rules: [BpfHashMap<MapData, RuleKey, RuleValue>; 2],
    hits: [PerCpuHashMap<MapData, u32, u64>; 2],
    ports: [MappedArray; 2],
    slot_config: Array<MapData, SlotConfig>,
    config: Array<MapData, GlobalConfig>,
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
            ex4: [
                open_map(paths, map_names::EXACT_V4[0])?,
                open_map(paths, map_names::EXACT_V4[1])?,
            ],
            ex6: [
                open_map(paths, map_names::EXACT_V6[0])?,
                open_map(paths, map_names::EXACT_V6[1])?,
            ],
            rules: [
                open_map(paths, map_names::RULES[0])?,
                open_map(paths, map_names::RULES[1])?,
            ],
            hits: [
                open_map(paths, map_names::RULE_HITS[0])?,
                open_map(paths, map_names::RULE_HITS[1])?,
            ],
            ports: [
                MappedArray::open(paths, map_names::PORT_CLASSES[0])?,
                MappedArray::open(paths, map_names::PORT_CLASSES[1])?,
            ],
            slot_config: open_map(paths, map_names::SLOT_CONFIG)?,
            config: open_map(paths, map_names::CONFIG)?,
        })
    }

    pub fn global(&self) -> Result<GlobalConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_global(&mut self, g: GlobalConfig) -> Result<()> {
        self.config.set(0, g, 0)?;
        Ok(())
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
        for kv in self.ex4[s].iter() {
            let (k, v) = kv?;
            c.ex4.insert(k, v);
        }
        for kv in self.ex6[s].iter() {
            let (k, v) = kv?;
            c.ex6.insert(k, v);
        }
        for kv in self.rules[s].iter() {
            let (k, v) = kv?;
            c.rules.insert(k, v);
        }
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
        let mut stats = WriteStats::default();
        // Identities.
        for (k, _) in old.v4.iter().filter(|(k, _)| !new.v4.contains_key(k)) {
            self.id4[s]
                .remove(&Key::new(k.0, k.1))
                .context("removing an IPv4 prefix")?;
            stats.removed += 1;
        }
        for (k, v) in new.v4.iter().filter(|(k, v)| old.v4.get(k) != Some(v)) {
            self.id4[s]
                .insert(&Key::new(k.0, k.1), v, 0)
                .context("writing an IPv4 prefix")?;
            stats.written += 1;
        }
        for (k, _) in old.v6.iter().filter(|(k, _)| !new.v6.contains_key(k)) {
            self.id6[s]
                .remove(&Key::new(k.0, k.1))
                .context("removing an IPv6 prefix")?;
            stats.removed += 1;
        }
        for (k, v) in new.v6.iter().filter(|(k, v)| old.v6.get(k) != Some(v)) {
            self.id6[s]
                .insert(&Key::new(k.0, k.1), v, 0)
                .context("writing an IPv6 prefix")?;
            stats.written += 1;
        }
        for k in old.ex4.keys().filter(|k| !new.ex4.contains_key(k)) {
            self.ex4[s]
                .remove(k)
                .context("removing an exact IPv4 prefix")?;
            stats.removed += 1;
        }
        for (k, v) in new.ex4.iter().filter(|(k, v)| old.ex4.get(k) != Some(v)) {
            self.ex4[s]
                .insert(k, v, 0)
                .context("writing an exact IPv4 prefix")?;
            stats.written += 1;
        }
        for k in old.ex6.keys().filter(|k| !new.ex6.contains_key(k)) {
            self.ex6[s]
                .remove(k)
                .context("removing an exact IPv6 prefix")?;
            stats.removed += 1;
        }
        for (k, v) in new.ex6.iter().filter(|(k, v)| old.ex6.get(k) != Some(v)) {
            self.ex6[s]
                .insert(k, v, 0)
                .context("writing an exact IPv6 prefix")?;
            stats.written += 1;
        }
        // Rules.
        for k in old.rules.keys().filter(|k| !new.rules.contains_key(k)) {
            self.rules[s].remove(k).context("removing a rule entry")?;
            stats.removed += 1;
        }
        for (k, v) in new
            .rules
            .iter()
            .filter(|(k, v)| old.rules.get(k) != Some(v))
        {
            self.rules[s]
                .insert(k, v, 0)
                .context("writing a rule entry")?;
            stats.written += 1;
        }
        // Port classes, straight into the mapped array.
        for (i, (&o, &n)) in old.ports.iter().zip(&new.ports).enumerate() {
            if o != n {
                self.ports[s].write_u16(i, n);
                stats.written += 1;
            }
        }
        // Rule numbers change meaning with the policy: start hit counts afresh.
        let stale: Vec<u32> = self.hits[s].keys().collect::<Result<_, _>>()?;
        for k in stale {
            let _ = self.hits[s].remove(&k);
        }
        self.slot_config.set(slot, new.config, 0)?;
        Ok(stats)
    }

    /// Switches the datapath to `slot`: one store of the config entry.
    pub fn activate(&mut self, slot: u32) -> Result<()> {
        let mut g = self.global()?;
        g.active_slot = slot;
        g.initialized = 1;
        self.set_global(g)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct WriteStats {
    pub written: usize,
    pub removed: usize,
}

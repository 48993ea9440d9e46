//! Map definitions. Every map is pinned by name (the agent points the loader
//! at its pin directory), so enforcement state, conntrack and counters survive
//! the agent and are adopted by the next one. Names and layouts are the
//! contract in `segment_common::map_names`.

use aya_ebpf::{
    btf_maps::{self, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use segment_common::{
    CFG_ENTRIES, CT_REVOKED_ENTRIES, CtKey, CtValue, DEFAULT_CT_ENTRIES, ExactKey4, ExactKey6,
    ExplainRecord, FLOW_LOG_BYTES, FRAG_ENTRIES, FragKey, FragValue, Identity, Ipv4Addr, Ipv6Addr,
    LocalAddrKey, MAX_COUNTER_PAIRS, MAX_LOCAL_ADDRS, MAX_PREFIXES, MIN_TABLE_ENTRIES,
    POLICY_HASH_FLAGS, PORT_CLASS_ENTRIES, PairCounters, PairKey, REASON_COUNT, RULE_HITS_FLAGS,
    ReasonCounters, RuleKey, RuleValue, SLOT_COUNT, SlotConfig, TokenBucket,
    ct_filter::CTF_ENTRIES, pending_ct_entries,
};

const BPF_F_NO_PREALLOC: u32 = 1;
const SLOTS: usize = SLOT_COUNT as usize;
const MIN: usize = MIN_TABLE_ENTRIES as usize;
const HASH_FLAGS: usize = POLICY_HASH_FLAGS as usize;
const HITS_FLAGS: usize = RULE_HITS_FLAGS as usize;

/// A per-slot policy hash: the type in the object is only the template
/// the kernel checks inner maps against; the agent creates each slot's
/// table sized by its policy (`segment_common::table_capacity`), so a
/// small policy's table is small and dense, and a huge one fits.
pub type PolicyHash<K, V> = btf_maps::HashMap<K, V, MIN, HASH_FLAGS>;
/// Lets the agent write a whole port class table with one memcpy.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One `u32` setting per entry (`CFG_*`).
#[map(name = "SEG_CFG_V2")]
pub static CONFIG: Array<u32> = Array::pinned(CFG_ENTRIES, 0);

#[map(name = "SEG_SLOT_V2")]
pub static SLOT_CONFIG: Array<SlotConfig> = Array::pinned(SLOT_COUNT, 0);

#[map(name = "SEG_ID4_A_V1")]
pub static ID4_A: LpmTrie<Ipv4Addr, Identity> = LpmTrie::pinned(MAX_PREFIXES, 0);
#[map(name = "SEG_ID4_B_V1")]
pub static ID4_B: LpmTrie<Ipv4Addr, Identity> = LpmTrie::pinned(MAX_PREFIXES, 0);
#[map(name = "SEG_ID6_A_V1")]
pub static ID6_A: LpmTrie<Ipv6Addr, Identity> = LpmTrie::pinned(MAX_PREFIXES, 0);
#[map(name = "SEG_ID6_B_V1")]
pub static ID6_B: LpmTrie<Ipv6Addr, Identity> = LpmTrie::pinned(MAX_PREFIXES, 0);

/// Exact-match identity tables, one inner map per slot (outer index =
/// slot). Not pinned by the object (BTF maps carry no pinning): the loader
/// pins them by name.
#[btf_map(name = "SEG_EX4_V2")]
pub static EX4: ArrayOfMaps<PolicyHash<ExactKey4, Identity>, SLOTS> = ArrayOfMaps::new();
#[btf_map(name = "SEG_EX6_V2")]
pub static EX6: ArrayOfMaps<PolicyHash<ExactKey6, Identity>, SLOTS> = ArrayOfMaps::new();

#[map(name = "SEG_PORT_A_V1")]
pub static PORTS_A: Array<u16> = Array::pinned(PORT_CLASS_ENTRIES, BPF_F_MMAPABLE);
#[map(name = "SEG_PORT_B_V1")]
pub static PORTS_B: Array<u16> = Array::pinned(PORT_CLASS_ENTRIES, BPF_F_MMAPABLE);

/// Rule entries, one inner map per slot, sized by its policy.
#[btf_map(name = "SEG_RULE_V2")]
pub static RULES: ArrayOfMaps<PolicyHash<RuleKey, RuleValue>, SLOTS> = ArrayOfMaps::new();

/// Packets admitted per rule, keyed by the rule index the rule entry
/// carries: one per-CPU hash per slot, created afresh with each policy (so
/// counts start at zero) with room for every rule of it. Preallocated, so a
/// rule's first hit on a CPU takes a free element instead of allocating
/// per-CPU memory (a per-CPU array would need no insert at all, but the
/// kernel lets only plain arrays differ in size from their template).
#[btf_map(name = "SEG_HITS_V2")]
pub static HITS: ArrayOfMaps<btf_maps::PerCpuHashMap<u32, u64, MIN, HITS_FLAGS>, SLOTS> =
    ArrayOfMaps::new();

/// Confirmed flows. Only a confirmation moves a flow here, so new flows
/// (however many) never evict these.
#[map(name = "SEG_CT_V2")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

/// Flows a policy change revoked (by the datapath's re-judge or the
/// agent's flush): egress pick-up must not bring them back.
#[map(name = "SEG_CTGONE_V1")]
pub static CT_REVOKED: LruHashMap<CtKey, u64> = LruHashMap::pinned(CT_REVOKED_ENTRIES, 0);

/// The filter in front of the three conntrack tables (see
/// `segment_common::ct_filter`): mapped by the agent, which rebuilds it.
#[map(name = "SEG_CTF_V1")]
pub static CT_FILTER: Array<u64> = Array::pinned(CTF_ENTRIES, BPF_F_MMAPABLE);

/// Flows not confirmed yet: where every new flow starts.
#[map(name = "SEG_CTPEND_V1")]
pub static CT_PENDING: LruHashMap<CtKey, CtValue> =
    LruHashMap::pinned(pending_ct_entries(DEFAULT_CT_ENTRIES), 0);

/// This host's own addresses, written by the agent (martian check). Not
/// preallocated: a host has a handful.
#[map(name = "SEG_LOCAL_V1")]
pub static LOCAL_ADDRS: HashMap<LocalAddrKey, u32> =
    HashMap::pinned(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

#[map(name = "SEG_FRAG_V1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_ENTRIES, 0);

#[map(name = "SEG_PAIRS_V1")]
pub static PAIRS: PerCpuHashMap<PairKey, PairCounters> =
    PerCpuHashMap::pinned(MAX_COUNTER_PAIRS, BPF_F_NO_PREALLOC);

#[map(name = "SEG_REASON_V3")]
pub static REASONS: PerCpuArray<ReasonCounters> = PerCpuArray::pinned(REASON_COUNT * 2, 0);

#[map(name = "SEG_EVENTS_V1")]
pub static EVENTS: RingBuf = RingBuf::pinned(FLOW_LOG_BYTES, 0);

#[map(name = "SEG_RATE_V1")]
pub static RATE: PerCpuArray<TokenBucket> = PerCpuArray::pinned(1, 0);

#[map(name = "SEG_LOGSTAT_V1")]
pub static LOGSTAT: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

#[map(name = "SEG_EXPLAIN_V1")]
pub static EXPLAIN: PerCpuArray<ExplainRecord> = PerCpuArray::pinned(1, 0);

/// Per-CPU scratch space for the parsed packet: the BPF stack (512 bytes)
/// is too small to hold it next to everything else.
#[map(name = "SEG_SCRATCH_V1")]
pub static SCRATCH: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for a conntrack entry being created: 72 bytes the
/// BPF stack cannot spare next to the identity lookups.
#[map(name = "SEG_CTNEW_V1")]
pub static CT_NEW: PerCpuArray<CtValue> = PerCpuArray::with_max_entries(1, 0);

//! Map definitions. Every map is pinned by name (the agent points the loader
//! at its pin directory), so enforcement state, conntrack and counters survive
//! the agent and are adopted by the next one. Names and layouts are the
//! contract in `segment_common::map_names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use segment_common::{
    CtKey, CtValue, DEFAULT_CT_ENTRIES, ExactKey4, ExactKey6, ExplainRecord, FLOW_LOG_BYTES,
    FRAG_ENTRIES, FragKey, FragValue, GlobalConfig, Identity, Ipv4Addr, Ipv6Addr,
    MAX_COUNTER_PAIRS, MAX_EXACT_PREFIXES, MAX_PREFIXES, MAX_RULE_ENTRIES, MAX_RULES,
    PORT_CLASS_ENTRIES, PairCounters, PairKey, REASON_COUNT, ReasonCounters, RuleKey, RuleValue,
    SLOT_COUNT, SlotConfig, TokenBucket,
};

const BPF_F_NO_PREALLOC: u32 = 1;
/// Lets the agent write a whole port class table with one memcpy.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "SEG_CFG_V1")]
pub static CONFIG: Array<GlobalConfig> = Array::pinned(1, 0);

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

#[map(name = "SEG_EX4_A_V1")]
pub static EX4_A: HashMap<ExactKey4, Identity> =
    HashMap::pinned(MAX_EXACT_PREFIXES, BPF_F_NO_PREALLOC);
#[map(name = "SEG_EX4_B_V1")]
pub static EX4_B: HashMap<ExactKey4, Identity> =
    HashMap::pinned(MAX_EXACT_PREFIXES, BPF_F_NO_PREALLOC);
#[map(name = "SEG_EX6_A_V1")]
pub static EX6_A: HashMap<ExactKey6, Identity> =
    HashMap::pinned(MAX_EXACT_PREFIXES, BPF_F_NO_PREALLOC);
#[map(name = "SEG_EX6_B_V1")]
pub static EX6_B: HashMap<ExactKey6, Identity> =
    HashMap::pinned(MAX_EXACT_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "SEG_PORT_A_V1")]
pub static PORTS_A: Array<u16> = Array::pinned(PORT_CLASS_ENTRIES, BPF_F_MMAPABLE);
#[map(name = "SEG_PORT_B_V1")]
pub static PORTS_B: Array<u16> = Array::pinned(PORT_CLASS_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "SEG_RULE_A_V1")]
pub static RULES_A: HashMap<RuleKey, RuleValue> =
    HashMap::pinned(MAX_RULE_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "SEG_RULE_B_V1")]
pub static RULES_B: HashMap<RuleKey, RuleValue> =
    HashMap::pinned(MAX_RULE_ENTRIES, BPF_F_NO_PREALLOC);

/// Keyed by rule index. A hash rather than an array so that memory (per CPU)
/// is spent only on rules that are actually hit.
#[map(name = "SEG_HITS_A_V1")]
pub static HITS_A: PerCpuHashMap<u32, u64> = PerCpuHashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);
#[map(name = "SEG_HITS_B_V1")]
pub static HITS_B: PerCpuHashMap<u32, u64> = PerCpuHashMap::pinned(MAX_RULES, BPF_F_NO_PREALLOC);

#[map(name = "SEG_CT_V1")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(DEFAULT_CT_ENTRIES, 0);

#[map(name = "SEG_FRAG_V1")]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_ENTRIES, 0);

#[map(name = "SEG_PAIRS_V1")]
pub static PAIRS: PerCpuHashMap<PairKey, PairCounters> =
    PerCpuHashMap::pinned(MAX_COUNTER_PAIRS, BPF_F_NO_PREALLOC);

#[map(name = "SEG_REASON_V1")]
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

//! Names of the BPF maps, which are also their pin file names under the pin
//! directory. The `_V1` suffix is the layout version: bump it whenever a key or
//! value type changes, so that a new object never adopts an old pinned map.
//! (The kernel limits map names to 15 characters.)

/// `Array<GlobalConfig>`, one entry.
pub const CONFIG: &str = "SEG_CFG_V1";
/// `Array<SlotConfig>`, one entry per slot.
pub const SLOT_CONFIG: &str = "SEG_SLOT_V2";
/// `LpmTrie<Ipv4Addr, Identity>` per slot.
pub const IDENTITY_V4: [&str; 2] = ["SEG_ID4_A_V1", "SEG_ID4_B_V1"];
/// `LpmTrie<Ipv6Addr, Identity>` per slot.
pub const IDENTITY_V6: [&str; 2] = ["SEG_ID6_A_V1", "SEG_ID6_B_V1"];
/// `HashMap<ExactKey4, Identity>` per slot: the same prefixes as the trie,
/// looked up by exact match for each prefix length present.
pub const EXACT_V4: [&str; 2] = ["SEG_EX4_A_V1", "SEG_EX4_B_V1"];
/// `HashMap<ExactKey6, Identity>` per slot.
pub const EXACT_V6: [&str; 2] = ["SEG_EX6_A_V1", "SEG_EX6_B_V1"];
/// `Array<u16>` of `PORT_CLASS_ENTRIES` per slot: port class by protocol block
/// and destination port.
pub const PORT_CLASSES: [&str; 2] = ["SEG_PORT_A_V1", "SEG_PORT_B_V1"];
/// `HashMap<RuleKey, RuleValue>` per slot.
pub const RULES: [&str; 2] = ["SEG_RULE_A_V1", "SEG_RULE_B_V1"];
/// `PerCpuHashMap<u32, u64>` per slot: packets each rule (by index) admitted.
pub const RULE_HITS: [&str; 2] = ["SEG_HITS_A_V1", "SEG_HITS_B_V1"];
/// `LruHashMap<CtKey, CtValue>`.
pub const CONNTRACK: &str = "SEG_CT_V1";
/// `LruHashMap<FragKey, FragValue>`.
pub const FRAGMENTS: &str = "SEG_FRAG_V1";
/// `PerCpuHashMap<PairKey, PairCounters>`.
pub const PAIRS: &str = "SEG_PAIRS_V1";
/// `PerCpuArray<ReasonCounters>` of `REASON_COUNT * 2`.
pub const REASONS: &str = "SEG_REASON_V1";

/// `RingBuf` of `FlowEvent`s.
pub const EVENTS: &str = "SEG_EVENTS_V1";
/// `PerCpuArray<TokenBucket>`, one entry: the flow log rate limit.
pub const RATE: &str = "SEG_RATE_V1";
/// `PerCpuArray<u64>` of 2: flow log records written / suppressed.
pub const LOGSTAT: &str = "SEG_LOGSTAT_V1";
/// `PerCpuArray<ExplainRecord>`, one entry: the last dry run's decision.
pub const EXPLAIN: &str = "SEG_EXPLAIN_V1";

/// Every map, for pinning, adoption and removal.
pub const ALL: [&str; 24] = [
    CONFIG,
    SLOT_CONFIG,
    IDENTITY_V4[0],
    IDENTITY_V4[1],
    IDENTITY_V6[0],
    IDENTITY_V6[1],
    EXACT_V4[0],
    EXACT_V4[1],
    EXACT_V6[0],
    EXACT_V6[1],
    PORT_CLASSES[0],
    PORT_CLASSES[1],
    RULES[0],
    RULES[1],
    RULE_HITS[0],
    RULE_HITS[1],
    CONNTRACK,
    FRAGMENTS,
    PAIRS,
    REASONS,
    EVENTS,
    RATE,
    LOGSTAT,
    EXPLAIN,
];

/// Program names as they appear in the object and under the pin directory.
pub const PROG_INGRESS: &str = "segment_ingress";
pub const PROG_EGRESS: &str = "segment_egress";

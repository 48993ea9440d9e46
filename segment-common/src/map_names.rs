//! Names of the BPF maps, which are also their pin file names under the pin
//! directory. The `_V1` suffix is the layout version: bump it whenever a key or
//! value type changes, so that a new object never adopts an old pinned map.
//! (The kernel limits map names to 15 characters.)

/// `Array<u32>` of `CFG_ENTRIES`: active slot, override, flow log mode
/// (`CFG_*`), one setting per entry.
pub const CONFIG: &str = "SEG_CFG_V2";
/// `Array<SlotConfig>`, one entry per slot.
pub const SLOT_CONFIG: &str = "SEG_SLOT_V2";
/// `LpmTrie<Ipv4Addr, Identity>` per slot.
pub const IDENTITY_V4: [&str; 2] = ["SEG_ID4_A_V1", "SEG_ID4_B_V1"];
/// `LpmTrie<Ipv6Addr, Identity>` per slot.
pub const IDENTITY_V6: [&str; 2] = ["SEG_ID6_A_V1", "SEG_ID6_B_V1"];
/// `ArrayOfMaps` of 2 (one entry per slot) of `HashMap<ExactKey4, Identity>`
/// (`BPF_F_NO_PREALLOC`), each sized by its policy: the same prefixes as the
/// trie, looked up by exact match for each prefix length present.
pub const EXACT_V4: &str = "SEG_EX4_V2";
/// `ArrayOfMaps` of 2 of `HashMap<ExactKey6, Identity>`, as [`EXACT_V4`].
pub const EXACT_V6: &str = "SEG_EX6_V2";
/// `Array<u16>` of `PORT_CLASS_ENTRIES` per slot: port class by protocol block
/// and destination port.
pub const PORT_CLASSES: [&str; 2] = ["SEG_PORT_A_V1", "SEG_PORT_B_V1"];
/// `ArrayOfMaps` of 2 of `HashMap<RuleKey, RuleValue>` (`BPF_F_NO_PREALLOC`),
/// each sized by its policy ([`crate::table_capacity`]).
pub const RULES: &str = "SEG_RULE_V2";
/// `ArrayOfMaps` of 2 of `PerCpuHashMap<u32, u64>` (preallocated), each
/// with room for every rule of its policy: packets each rule (by index)
/// admitted.
pub const RULE_HITS: &str = "SEG_HITS_V2";
/// The maps of maps: their inner maps are created by the agent, unpinned,
/// and live as long as the outer map holds them.
pub const OUTER: [&str; 4] = [EXACT_V4, EXACT_V6, RULES, RULE_HITS];
/// `LruHashMap<CtKey, CtValue>`: confirmed flows (`--conntrack-entries`).
pub const CONNTRACK: &str = "SEG_CT_V2";
/// `LruHashMap<CtKey, CtValue>`: flows not confirmed yet
/// ([`crate::pending_ct_entries`]).
pub const CONNTRACK_PENDING: &str = "SEG_CTPEND_V1";
/// `LruHashMap<CtKey, u64>`: flows a policy change revoked (value: when),
/// so that egress pick-up never brings one back.
pub const CONNTRACK_REVOKED: &str = "SEG_CTGONE_V1";
/// `Array<u64>` of [`crate::ct_filter::CTF_ENTRIES`] (`BPF_F_MMAPABLE`):
/// the filter in front of the three conntrack tables ([`crate::ct_filter`]).
pub const CONNTRACK_FILTER: &str = "SEG_CTF_V1";
/// `LruHashMap<FragKey, FragValue>`.
pub const FRAGMENTS: &str = "SEG_FRAG_V1";
/// `PerCpuHashMap<PairKey, PairCounters>`.
pub const PAIRS: &str = "SEG_PAIRS_V1";
/// `PerCpuArray<ReasonCounters>` of `REASON_COUNT * 2`.
pub const REASONS: &str = "SEG_REASON_V3";

/// `RingBuf` of `FlowEvent`s.
pub const EVENTS: &str = "SEG_EVENTS_V1";
/// `PerCpuArray<TokenBucket>`, one entry: the flow log rate limit.
pub const RATE: &str = "SEG_RATE_V1";
/// `PerCpuArray<u64>` of 2: flow log records written / suppressed.
pub const LOGSTAT: &str = "SEG_LOGSTAT_V1";
/// `PerCpuArray<ExplainRecord>`, one entry: the last dry run's decision.
pub const EXPLAIN: &str = "SEG_EXPLAIN_V1";
/// `HashMap<LocalAddrKey, u32>`: this host's own addresses (martian check).
pub const LOCAL_ADDRS: &str = "SEG_LOCAL_V1";

/// Every map, for pinning, adoption and removal.
pub const ALL: [&str; 24] = [
    CONFIG,
    SLOT_CONFIG,
    IDENTITY_V4[0],
    IDENTITY_V4[1],
    IDENTITY_V6[0],
    IDENTITY_V6[1],
    EXACT_V4,
    EXACT_V6,
    PORT_CLASSES[0],
    PORT_CLASSES[1],
    RULES,
    RULE_HITS,
    CONNTRACK,
    CONNTRACK_PENDING,
    CONNTRACK_REVOKED,
    CONNTRACK_FILTER,
    FRAGMENTS,
    PAIRS,
    REASONS,
    EVENTS,
    RATE,
    LOGSTAT,
    EXPLAIN,
    LOCAL_ADDRS,
];

/// Program names as they appear in the object and under the pin directory.
pub const PROG_INGRESS: &str = "segment_ingress";
pub const PROG_EGRESS: &str = "segment_egress";
/// The same programs for interfaces without a link-layer header (tun,
/// WireGuard): they parse from the IP header.
pub const PROG_INGRESS_L3: &str = "segment_ingress_l3";
pub const PROG_EGRESS_L3: &str = "segment_egress_l3";
/// Every program the object carries, for pinning and unpinning.
pub const PROGRAMS: [&str; 4] = [PROG_INGRESS, PROG_EGRESS, PROG_INGRESS_L3, PROG_EGRESS_L3];

//! The contract between segment's kernel programs and its agent.
//!
//! Every type here crosses the user/kernel boundary as raw bytes, so each one
//! is `#[repr(C)]`, has explicit padding (never a `bool`, never implicit holes)
//! and a size checked at compile time. Changing a layout means changing the
//! map's versioned name in [`map_names`], so that a new agent never reads an old
//! pinned map with the wrong layout.
#![no_std]

pub mod ct_filter;
pub mod map_names;

/// Which of the two policy table sets the datapath reads. The agent fills the
/// inactive slot completely, then flips the active slot: one
/// aligned `u32` store (entry `CFG_ACTIVE`), so every packet sees either the
/// old or the new policy.
pub const SLOT_COUNT: u32 = 2;

/// Identity of addresses that belong to no segment and no address selector.
/// They still match `*`.
pub const IDENTITY_WORLD: u32 = 0;
/// Class of an identity that no `src` (or `dst`) selector other than `*` names.
pub const CLASS_NONE: u32 = 0;

/// `RuleKey::port_class` for entries that match every port, and for protocols
/// that carry no ports (ICMP, ICMPv6, others).
pub const PORT_CLASS_ANY: u16 = u16::MAX;

/// Protocols whose destination port takes part in rule matching. The port
/// class array holds `PORT_PROTOS.len()` blocks of 65,536 entries.
pub const PORT_PROTOS: [u8; 3] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP];
pub const PORT_CLASS_ENTRIES: u32 = 3 * 65_536;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// Index of `proto`'s block in the port class array, if its ports matter.
#[inline(always)]
pub const fn port_proto_block(proto: u8) -> Option<u32> {
    match proto {
        IPPROTO_TCP => Some(0),
        IPPROTO_UDP => Some(1),
        IPPROTO_SCTP => Some(2),
        _ => None,
    }
}

/// Default capacities. Maps that are not preallocated (LPM tries, the rule
/// hash) only cost memory for the entries in use, so their bounds are high;
/// the agent refuses a policy that does not fit before it touches any map.
pub const MAX_PREFIXES: u32 = 1 << 21;
/// The rule tables are sized by each policy (see [`table_capacity`]), so
/// this bound only stops a policy that would not be worth building.
pub const MAX_RULE_ENTRIES: u32 = 1 << 23;
/// Rules (acls plus failsafe entries) of one policy; the per-slot rule hit
/// array is sized by the policy's own count.
pub const MAX_RULES: u32 = 1 << 21;
/// The smallest capacity of a per-slot policy table: small enough to stay
/// in cache, large enough that tiny edits do not resize it.
pub const MIN_TABLE_ENTRIES: u32 = 64;

/// Capacity of a per-slot policy hash for `n` entries: a quarter more (the
/// kernel sizes its bucket array by `max_entries`, so this is the load
/// factor), at least [`MIN_TABLE_ENTRIES`], rounded up to a power of two
/// (the bucket count the kernel would round to anyway). Saturates at
/// `1 << 31`.
pub const fn table_capacity(n: usize) -> u32 {
    let want = n.saturating_add(n / 4);
    let want = if want < MIN_TABLE_ENTRIES as usize {
        MIN_TABLE_ENTRIES as usize
    } else {
        want
    };
    if want >= 1 << 31 {
        1 << 31
    } else {
        want.next_power_of_two() as u32
    }
}

/// Map flags of the per-slot policy tables; the agent's inner maps must
/// carry exactly those of the templates in the object.
pub const POLICY_HASH_FLAGS: u32 = 1; // BPF_F_NO_PREALLOC
/// Map flags of the per-slot rule hit tables: preallocated.
pub const RULE_HITS_FLAGS: u32 = 0;

/// Whether a table of `capacity` created for an earlier policy can take a
/// policy of `n` entries as it is: it has the headroom, and it is not so
/// oversized that lookups would scatter over a needlessly large bucket
/// array.
pub const fn table_fits(capacity: u32, n: usize) -> bool {
    let want = table_capacity(n);
    capacity >= want && capacity / 2 <= want
}
pub const DEFAULT_CT_ENTRIES: u32 = 1 << 18;

/// Size of the table of unconfirmed flows (`SEG_CTPEND_V1`) next to a
/// confirmed-flow table of `confirmed` entries: a quarter of it, at least
/// 1,024. New flows live there until confirmed (TCP: a handshake with the
/// right acknowledgement numbers; others: the responder answered), so a
/// flood of openers evicts only other unconfirmed flows, never confirmed
/// ones.
pub const fn pending_ct_entries(confirmed: u32) -> u32 {
    let quarter = confirmed / 4;
    if quarter < 1024 { 1024 } else { quarter }
}
pub const FRAG_ENTRIES: u32 = 1 << 13;
/// Distinct (source identity, destination identity) pairs with counters.
/// Traffic of pairs beyond this is counted under [`PAIR_OVERFLOW`].
pub const MAX_COUNTER_PAIRS: u32 = 1 << 16;
pub const PAIR_OVERFLOW: u32 = u32::MAX;

/// Value of the identity LPM tries (`SEG_ID4_*`, `SEG_ID6_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Counter identity: the exact set of segments the address belongs to.
    /// Stable across policy reloads for the same set of segments.
    pub id: u32,
    /// Equivalence class among `src` selectors (see the compiler).
    pub src_class: u32,
    /// Equivalence class among `dst` selectors.
    pub dst_class: u32,
    /// `IDENTITY_F_*`.
    pub flags: u32,
}

/// Denied packets *to* this identity pass and are counted as would-drop.
pub const IDENTITY_F_AUDIT: u32 = 1;
/// No rule entry has this identity's `src_class`: nothing from it matches a
/// rule, and the datapath skips the port class and rule lookups (the
/// cheapest test that decides first, for floods from addresses no rule
/// names). Absent, the lookups are made: an entry without it (written by
/// an older agent) is judged as before.
pub const IDENTITY_F_NO_RULE_FROM: u32 = 1 << 1;
/// No rule entry has this identity's `dst_class`.
pub const IDENTITY_F_NO_RULE_TO: u32 = 1 << 2;

/// LPM key data for IPv4: the address in network byte order.
pub type Ipv4Addr = [u8; 4];
/// LPM key data for IPv6: the address in network byte order.
pub type Ipv6Addr = [u8; 16];

/// Key of the rule hash (`SEG_RULE_*`).
///
/// Lookup order in the datapath, first hit wins:
/// 1. `(src_class, dst_class, port_class(proto, dport), proto)` for TCP, UDP
///    and SCTP when the port falls in a class;
/// 2. `(src_class, dst_class, PORT_CLASS_ANY, proto)`.
///
/// The compiler stores in every specific entry the lowest rule index of
/// either lookup, so the rule reported is always the first matching rule of
/// the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub src_class: u32,
    pub dst_class: u32,
    pub port_class: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    /// Index of the rule in the compiled policy (failsafe entries first).
    pub rule: u32,
    /// `RULE_F_*`.
    pub flags: u32,
}

/// The rule comes from the `failsafe:` section.
pub const RULE_F_FAILSAFE: u32 = 1;

/// Entries of the config array (`SEG_CFG_V2`, `u32` values): what every
/// packet reads first. Each setting is its own entry, written alone with one
/// aligned 4-byte store, so the agent switching slots never rewrites (or
/// races) an admin's emergency override made with bpftool, and vice versa.
///
/// `CFG_ACTIVE`: 0 while no policy has been written (nothing to enforce
/// yet), otherwise 1 + the slot in force.
pub const CFG_ACTIVE: u32 = 0;
/// `CFG_OVERRIDE`: one of `OVERRIDE_*`.
pub const CFG_OVERRIDE: u32 = 1;
/// `CFG_FLOW_LOG`: one of `FLOW_LOG_*`.
pub const CFG_FLOW_LOG: u32 = 2;
pub const CFG_ENTRIES: u32 = 4;
/// `CFG_ACTIVE` before the first policy.
pub const ACTIVE_NONE: u32 = 0;

/// The config array decoded, as the agent reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalConfig {
    /// Slot (0 or 1) of the tables in force (meaningless until `initialized`).
    pub active_slot: u32,
    /// `OVERRIDE_*`: an emergency switch an admin can flip with bpftool
    /// alone, whatever the policy says.
    pub override_mode: u32,
    /// Set once a policy has been written; until then the datapath passes
    /// everything (there is nothing to enforce yet).
    pub initialized: u32,
    /// `FLOW_LOG_*`: what the flow log reports.
    pub flow_log: u32,
}

impl GlobalConfig {
    /// Decodes the entries `CFG_ACTIVE`, `CFG_OVERRIDE`, `CFG_FLOW_LOG`.
    pub const fn decode(active: u32, override_mode: u32, flow_log: u32) -> Self {
        Self {
            active_slot: if active == ACTIVE_NONE {
                0
            } else {
                (active - 1) & 1
            },
            override_mode,
            initialized: (active != ACTIVE_NONE) as u32,
            flow_log,
        }
    }
}

/// The flow log reports drops, would-drops and failsafe passes.
pub const FLOW_LOG_DENIED: u32 = 0;
/// ... and every new flow (what `observe` uses to take inventory).
pub const FLOW_LOG_ALL_NEW: u32 = 1;

/// One flow log record (`SEG_EVENTS_V1` ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_id: u32,
    pub dst_id: u32,
    /// Rule index, `CT_RULE_NONE` when no rule was involved.
    pub rule: u32,
    /// Packet length.
    pub len: u32,
    pub ifindex: u32,
    /// Ports in host order (for ICMP echo: identifiers, as in `CtKey`).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 4, 6, or 0 when the headers could not be read.
    pub family: u8,
    /// `Reason` code.
    pub reason: u8,
    pub hook: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// `GENERATION` of the policy that judged the packet, low 16 bits.
    pub generation: u16,
}

/// Flow log records per second and CPU, and the burst allowed. Beyond
/// that, records are counted as suppressed instead of written: a flood
/// cannot make the datapath spend its time logging.
pub const FLOW_LOG_RATE: u64 = 2_000;
pub const FLOW_LOG_BURST: u64 = 2_000;
/// Bytes of the flow log ring buffer.
pub const FLOW_LOG_BYTES: u32 = 1 << 20;

/// Per-CPU token bucket of the flow log rate limit (`SEG_RATE_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// `SEG_LOGSTAT_V1` slots (per CPU): records written, records suppressed.
pub const LOGSTAT_WRITTEN: u32 = 0;
pub const LOGSTAT_SUPPRESSED: u32 = 1;

/// Name of the load-time global that makes every run of a program instance
/// *dry* (`explain --live`). The instances attached to interfaces are loaded
/// with it 0, so the verifier prunes the dry path from them: nothing a packet
/// carries can make a real packet's run dry. `explain --live` loads a second,
/// never attached instance with it 1 and runs synthetic packets through it.
pub const DRY_RUN_GLOBAL: &str = "DRY_RUN";

/// Name of the load-time global that cuts the program short after a stage
/// (the benchmark's ablation table). 0 (every attached instance) runs the
/// whole program, and the verifier, which sees the frozen 0, prunes every
/// ablation branch. A benchmark loads never-attached instances with one of
/// the `ABLATE_*` levels: each runs the stages up to and including its own
/// (cumulative, in this order) and skips the rest.
pub const ABLATE_GLOBAL: &str = "ABLATE";
/// Parse the headers, then drop: no map read at all.
pub const ABLATE_PARSE: u32 = 1;
/// + the settings, the martian check and both identity lookups, then drop.
pub const ABLATE_IDENTITIES: u32 = 2;
/// + the rule lookup: the verdict of the policy alone (no conntrack, so a
///   reply is judged like any other packet); nothing is counted.
pub const ABLATE_RULE: u32 = 3;
/// + conntrack: the lookup (still before the identities, as in the full
///   program) and the entry an allowed opener creates; nothing is counted.
pub const ABLATE_CONNTRACK: u32 = 4;
/// + the counters (reason, identity pair, rule hits): all but the flow log.
pub const ABLATE_COUNTERS: u32 = 5;
/// The levels, in order; the full program (+ the flow log) is level 0.
pub const ABLATE_LEVELS: [u32; 5] = [
    ABLATE_PARSE,
    ABLATE_IDENTITIES,
    ABLATE_RULE,
    ABLATE_CONNTRACK,
    ABLATE_COUNTERS,
];

/// What a dry run (BPF_PROG_TEST_RUN of an instance loaded with
/// [`DRY_RUN_GLOBAL`] set, as `explain --live` does) decided. Nothing else is written
/// in a dry run: no conntrack, no counters, no flow log.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExplainRecord {
    /// `bpf_ktime_get_ns` of the run, to find the newest record among CPUs.
    pub ts_ns: u64,
    pub reason: u32,
    pub rule: u32,
    pub src_id: u32,
    pub dst_id: u32,
    pub slot: u32,
    pub _pad: u32,
}

/// Enforce the policy in the active slot.
pub const OVERRIDE_NONE: u32 = 0;
/// Pass every packet (still counted and conntracked). For a broken agent.
pub const OVERRIDE_PASS_ALL: u32 = 1;
/// Judge every packet, but let denied ones pass as would-drop.
pub const OVERRIDE_AUDIT_ALL: u32 = 2;

/// Per-slot settings that come with the policy (`SEG_SLOT`, index = slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    /// Monotonic generation of the policy loaded in this slot.
    pub generation: u64,
    /// 1 when the egress program enforces the policy (not only tracks).
    pub enforce_egress: u32,
    /// 1 when the ingress program enforces the policy.
    pub enforce_ingress: u32,
    /// `IDENTITY_F_*` of addresses outside every prefix (identity 0).
    pub world_flags: u32,
    /// How many prefix lengths the exact-match identity tables hold, per
    /// family, or [`LENS_USE_LPM`] when there are too many (or too many
    /// prefixes) and the LPM trie answers instead.
    pub lens_v4_count: u8,
    pub lens_v6_count: u8,
    pub _pad: [u8; 2],
    /// Those prefix lengths, longest first.
    pub lens_v4: [u8; MAX_EXACT_LENS],
    pub lens_v6: [u8; MAX_EXACT_LENS],
}

/// Prefix lengths the exact-match identity lookup tries at most (one hash
/// lookup each, longest first). A policy of hosts and a few networks needs
/// one to three; beyond this the LPM trie is cheaper.
pub const MAX_EXACT_LENS: usize = 8;
pub const LENS_USE_LPM: u8 = u8::MAX;
/// Prefixes per family and slot the exact-match tables take (they are
/// sized by the policy; beyond this the LPM trie answers).
pub const MAX_EXACT_PREFIXES: u32 = 1 << 21;

/// Key of the exact-match identity tables: a prefix length and the address
/// masked to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExactKey4 {
    pub len: u32,
    pub addr: Ipv4Addr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExactKey6 {
    pub len: u32,
    pub addr: Ipv6Addr,
}

/// Hook a packet was judged at; also the index of per-hook counter blocks.
pub const HOOK_INGRESS: u32 = 0;
pub const HOOK_EGRESS: u32 = 1;

/// Packets and bytes, per outcome, for one hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub allowed_packets: u64,
    pub allowed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub would_drop_packets: u64,
    pub would_drop_bytes: u64,
}

impl TrafficCounters {
    pub fn add(&mut self, other: &Self) {
        self.allowed_packets = self.allowed_packets.wrapping_add(other.allowed_packets);
        self.allowed_bytes = self.allowed_bytes.wrapping_add(other.allowed_bytes);
        self.dropped_packets = self.dropped_packets.wrapping_add(other.dropped_packets);
        self.dropped_bytes = self.dropped_bytes.wrapping_add(other.dropped_bytes);
        self.would_drop_packets = self
            .would_drop_packets
            .wrapping_add(other.would_drop_packets);
        self.would_drop_bytes = self.would_drop_bytes.wrapping_add(other.would_drop_bytes);
    }
}

/// Key of the per-CPU pair counters (`SEG_PAIRS`): who talked to whom, by
/// counter identity. Counting pairs (not single identities) lets the agent
/// count a packet once per segment even when both ends share a segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub src_id: u32,
    pub dst_id: u32,
}

/// Value of `SEG_PAIRS`: one block per hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairCounters {
    pub hooks: [TrafficCounters; 2],
}

/// Why a packet passed or was dropped. Index into `SEG_REASONS` is
/// `reason * 2 + hook`. Codes are never renumbered; new ones are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// IPv6 neighbour discovery / router solicitation and advertisement.
    PassNeighbor = 1,
    /// Part of a tracked connection.
    PassConntrack = 2,
    /// Allowed by an acl.
    PassRule = 3,
    /// Allowed by a failsafe entry.
    PassFailsafe = 4,
    /// Egress with egress enforcement off: tracked, not judged.
    PassNotEnforced = 5,
    /// Denied, but the destination is in audit mode.
    PassAudit = 6,
    /// The override switch says pass-all.
    PassOverride = 7,
    /// Non-first fragment of a datagram whose first fragment passed.
    PassFragment = 8,
    /// ICMP error quoting a tracked connection.
    PassRelated = 9,
    /// No policy loaded yet.
    PassNoPolicy = 10,
    /// No rule allows it.
    DropNoRule = 11,
    /// Truncated or inconsistent headers.
    DropMalformed = 12,
    /// Non-first fragment with no passed first fragment.
    DropFragment = 13,
    /// IPv6 extension header chain longer than the datapath walks.
    DropExtHeaders = 14,
    /// Arrived from outside with one of this host's own addresses as source.
    DropMartian = 15,
    /// A map lookup that cannot fail did (the datapath is broken): dropped,
    /// never passed unjudged.
    DropInternal = 16,
    /// IPv4 source route option or IPv6 routing header with segments left.
    DropSourceRoute = 17,
}

pub const REASON_COUNT: u32 = 18;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassNeighbor,
        Reason::PassConntrack,
        Reason::PassRule,
        Reason::PassFailsafe,
        Reason::PassNotEnforced,
        Reason::PassAudit,
        Reason::PassOverride,
        Reason::PassFragment,
        Reason::PassRelated,
        Reason::PassNoPolicy,
        Reason::DropNoRule,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropExtHeaders,
        Reason::DropMartian,
        Reason::DropInternal,
        Reason::DropSourceRoute,
    ];

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropNoRule
                | Reason::DropMalformed
                | Reason::DropFragment
                | Reason::DropExtHeaders
                | Reason::DropMartian
                | Reason::DropInternal
                | Reason::DropSourceRoute
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNeighbor => "pass_neighbor_discovery",
            Reason::PassConntrack => "pass_conntrack",
            Reason::PassRule => "pass_rule",
            Reason::PassFailsafe => "pass_failsafe",
            Reason::PassNotEnforced => "pass_not_enforced",
            Reason::PassAudit => "pass_audit",
            Reason::PassOverride => "pass_override",
            Reason::PassFragment => "pass_fragment",
            Reason::PassRelated => "pass_icmp_related",
            Reason::PassNoPolicy => "pass_no_policy",
            Reason::DropNoRule => "drop_no_rule",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropExtHeaders => "drop_ext_headers",
            Reason::DropMartian => "drop_martian",
            Reason::DropInternal => "drop_internal",
            Reason::DropSourceRoute => "drop_source_route",
        }
    }

    pub const fn from_u32(v: u32) -> Option<Reason> {
        if v < REASON_COUNT {
            Some(Reason::ALL[v as usize])
        } else {
            None
        }
    }
}

/// Value of `SEG_REASONS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Connection tracking key. The two endpoints are stored in a canonical order
/// (endpoint `a` is the smaller one) so both directions of a flow find the
/// same entry with one lookup.
///
/// Addresses are IPv6-sized; IPv4 uses the first word. Ports are in host
/// byte order; for ICMP echo, the echo identifier stands in for the port of the
/// side that sent the request and 0 for the other side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub addr_a: [u32; 4],
    pub addr_b: [u32; 4],
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    pub created_ns: u64,
    /// Counter identities of initiator and responder when the flow was created.
    pub src_id: u32,
    pub dst_id: u32,
    /// `CT_F_*`.
    pub flags: u32,
    /// Rule that admitted the flow, `CT_RULE_NONE` when egress was not enforced.
    pub rule: u32,
    /// Interface the flow was created on (`I`): with the creating hook
    /// (`CT_F_EGRESS`) and the initiator (`CT_F_INITIATOR_A`) it says
    /// through which side each direction may enter at ingress (see the
    /// datapath's `conntrack::enters_on_its_side`).
    pub ifindex: u32,
    /// For a flow created at ingress: the interface its initiator's packets
    /// were seen leaving by at egress (routed through this host), 0 until
    /// then. Once known, the responder's packets must enter through it.
    pub ifindex_out: u32,
    /// Low 32 bits of `SlotConfig::generation` of the policy that admitted
    /// the flow, or last re-admitted it: a packet of a flow whose
    /// generation is not the active one has the flow re-judged first.
    pub generation: u32,
    pub _pad: u32,
    /// TCP, per side (index 0 the initiator, 1 the responder): `end`, the
    /// highest sequence number the side has sent plus its data length (+1
    /// for SYN and FIN), and `maxwin`, the largest window it advertised,
    /// scaled by its window scale. A RST or FIN from side s changes the
    /// flow's state only if its sequence number lies within
    /// `[end[s] - maxwin[r] - 1, end[s] + maxwin[r]]` (r the other side).
    /// `end` is rewritten lazily (when it moves by more than half the
    /// other side's window), so it may lag by that much.
    pub end: [u32; 2],
    pub maxwin: [u32; 2],
    /// Window scale shift per side (RFC 7323), `CT_WSCALE_UNKNOWN` until
    /// the handshake says.
    pub wscale: [u8; 2],
    /// `CT_SEEN_*`: which sides' `end`/`maxwin` are known.
    pub seen: u8,
    pub _pad2: [u8; 5],
}

pub const CT_WSCALE_UNKNOWN: u8 = 0xff;
/// `CtValue::seen`: the initiator's / responder's sequence space is known.
pub const CT_SEEN_INITIATOR: u8 = 1;
pub const CT_SEEN_RESPONDER: u8 = 2;

pub const CT_RULE_NONE: u32 = u32::MAX;
/// Endpoint `a` opened the flow (else `b` did).
pub const CT_F_INITIATOR_A: u32 = 1 << 0;
/// A packet has been seen from the responder.
pub const CT_F_REPLIED: u32 = 1 << 1;
pub const CT_F_FIN_A: u32 = 1 << 2;
pub const CT_F_FIN_B: u32 = 1 << 3;
pub const CT_F_RST: u32 = 1 << 4;
/// Created by the egress program (an outgoing flow).
pub const CT_F_EGRESS: u32 = 1 << 5;
/// Created by a denied opener that passed because its destination is in
/// audit mode: the rest of the flow passes without being counted again.
pub const CT_F_AUDIT: u32 = 1 << 6;
/// Created while the hook did not enforce (egress by default).
pub const CT_F_UNENFORCED: u32 = 1 << 7;
/// A TCP flow picked up in the middle at egress (no SYN seen): its
/// window scales are unknown, so windows are taken unscaled (narrower:
/// a RST is honoured less readily, never more).
pub const CT_F_MIDSTREAM: u32 = 1 << 8;
/// The responder's SYN-ACK acknowledged exactly the initiator's SYN: the
/// initiator's ACK of the responder's SYN then confirms the flow.
pub const CT_F_SYNACK_OK: u32 = 1 << 9;

/// Idle timeouts, in nanoseconds.
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 2 * 3600 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const CT_TIMEOUT_UDP_REPLIED_NS: u64 = 180 * 1_000_000_000;
pub const CT_TIMEOUT_OTHER_NS: u64 = 30 * 1_000_000_000;
/// A flow's timestamp is rewritten at most this often, to keep the
/// established fast path free of writes.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Entries of the revoked-flows table (`SEG_CTGONE`): enough to outlast
/// the retransmissions of the connections a reload cuts.
pub const CT_REVOKED_ENTRIES: u32 = 1 << 14;

/// Fragment tracking key: a datagram is identified by its addresses, protocol
/// and IP identification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub seen_ns: u64,
    /// `Reason` the first fragment passed with, reused for the others.
    pub reason: u32,
    /// Counter identities of the datagram's source and destination.
    pub src_id: u32,
    pub dst_id: u32,
    pub _pad: u32,
}

/// How long non-first fragments are accepted after their first fragment.
pub const FRAG_TIMEOUT_NS: u64 = 30 * 1_000_000_000;

/// Key of `SEG_LOCAL`: one of this host's own addresses. A packet arriving
/// at ingress with such a source is a martian (`Reason::DropMartian`).
///
/// The address is laid out as in `CtKey` (network-order bytes packed in
/// words; IPv4 in the first word, the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalAddrKey {
    pub addr: [u32; 4],
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Own addresses the martian table holds (every address of every interface
/// of the agent's network namespace). Beyond this, the agent logs that the
/// set is incomplete.
pub const MAX_LOCAL_ADDRS: u32 = 4096;

macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
assert_size!(Identity, 16);
assert_size!(RuleKey, 12);
assert_size!(RuleValue, 8);
assert_size!(FlowEvent, 72);
assert_size!(TokenBucket, 16);
assert_size!(ExplainRecord, 32);
assert_size!(SlotConfig, 40);
assert_size!(ExactKey4, 8);
assert_size!(ExactKey6, 20);
assert_size!(TrafficCounters, 48);
assert_size!(PairKey, 8);
assert_size!(PairCounters, 96);
assert_size!(ReasonCounters, 16);
assert_size!(CtKey, 40);
assert_size!(CtValue, 72);
assert_size!(FragKey, 40);
assert_size!(FragValue, 24);
assert_size!(LocalAddrKey, 20);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, made of integers and integer
    // arrays only, with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for Identity {}
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for SlotConfig {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for PairKey {}
    unsafe impl aya::Pod for PairCounters {}
    unsafe impl aya::Pod for ReasonCounters {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for ExactKey4 {}
    unsafe impl aya::Pod for ExactKey6 {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for ExplainRecord {}
    unsafe impl aya::Pod for LocalAddrKey {}
}

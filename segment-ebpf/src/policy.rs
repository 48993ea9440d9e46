//! Policy lookups against the tables of one slot: the identity of an address
//! (LPM trie), the port class of a destination port (array), and the rule
//! entry for (source class, destination class, port class, protocol) (hash).
//! No loop over rules: the cost does not grow with the policy.

use aya_ebpf::maps::lpm_trie::Key;
use segment_common::{
    ExactKey4, ExactKey6, IDENTITY_F_NO_RULE_FROM, IDENTITY_F_NO_RULE_TO, Identity, LENS_USE_LPM,
    MAX_EXACT_LENS, PORT_CLASS_ANY, RuleKey, RuleValue, SlotConfig, port_proto_block,
};

use crate::maps::{
    EX4, EX6, HITS, ID4_A, ID4_B, ID6_A, ID6_B, PORTS_A, PORTS_B, RULES, SLOT_CONFIG,
};

/// The settings of a slot, read in place (not copied: the BPF stack is
/// small).
#[inline(always)]
pub fn slot_config(slot: u32) -> Option<&'static SlotConfig> {
    SLOT_CONFIG.get(slot)
}

/// Whether slot `slot` has every table of maps a lookup of it reads.
#[inline(always)]
pub fn slot_tables_present(slot: u32) -> bool {
    EX4.get(slot).is_some() && EX6.get(slot).is_some() && RULES.get(slot).is_some()
}

/// Identity of an address; addresses outside every prefix are identity 0
/// with the policy's default flags.
///
/// Longest-prefix match, done one of two ways. When the policy uses few
/// prefix lengths (the usual case: hosts, and a handful of networks), one
/// exact-match hash lookup per length present, longest first, answers it:
/// a hash lookup costs about a third of an LPM trie walk, and it does not
/// grow with the number of prefixes. Otherwise the LPM trie answers.
///
/// One function per family, neither inlined: each gets its own stack
/// frame, sized for its own keys only, which keeps the deepest call chain
/// (program, then an identity lookup) within the BPF stack limit.
#[inline(always)]
pub fn identity(slot: u32, family: u8, addr: &[u32; 4], cfg: &SlotConfig) -> Identity {
    let found = if family == 4 {
        identity4(slot, addr[0], cfg)
    } else {
        identity6(slot, addr, cfg)
    };
    match found {
        Some(id) => id,
        None => Identity {
            flags: cfg.world_flags,
            ..Identity::default()
        },
    }
}

#[inline(never)]
fn identity4(slot: u32, word: u32, cfg: &SlotConfig) -> Option<Identity> {
    if cfg.lens_v4_count != LENS_USE_LPM {
        return exact4(slot, word, cfg);
    }
    let key = Key::new(32, word.to_ne_bytes());
    let v = if slot == 0 {
        ID4_A.get(&key)
    } else {
        ID4_B.get(&key)
    };
    v.copied()
}

#[inline(never)]
fn identity6(slot: u32, addr: &[u32; 4], cfg: &SlotConfig) -> Option<Identity> {
    if cfg.lens_v6_count != LENS_USE_LPM {
        return exact6(slot, addr, cfg);
    }
    let key = Key::new(128, v6_bytes(addr, 128));
    let v = if slot == 0 {
        ID6_A.get(&key)
    } else {
        ID6_B.get(&key)
    };
    v.copied()
}

/// The address (network-order bytes packed in words) masked to `len` bits.
#[inline(always)]
fn v6_bytes(addr: &[u32; 4], len: u32) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let host = u32::from_be_bytes(addr[i].to_ne_bytes());
        let covered = len.saturating_sub(i as u32 * 32);
        let masked = if covered == 0 {
            0
        } else if covered >= 32 {
            host
        } else {
            host & (u32::MAX << (32 - covered))
        };
        let w = masked.to_be_bytes();
        bytes[i * 4] = w[0];
        bytes[i * 4 + 1] = w[1];
        bytes[i * 4 + 2] = w[2];
        bytes[i * 4 + 3] = w[3];
        i += 1;
    }
    bytes
}

#[inline(always)]
fn exact4(slot: u32, word: u32, cfg: &SlotConfig) -> Option<Identity> {
    // Present: the program checked the slot's tables before judging.
    let table = EX4.get(slot)?;
    let host = u32::from_be_bytes(word.to_ne_bytes());
    let n = cfg.lens_v4_count as usize;
    let mut i = 0;
    while i < MAX_EXACT_LENS && i < n {
        let len = cfg.lens_v4[i] as u32;
        let masked = if len == 0 {
            0
        } else if len >= 32 {
            host
        } else {
            host & (u32::MAX << (32 - len))
        };
        let key = ExactKey4 {
            len,
            addr: masked.to_be_bytes(),
        };
        // SAFETY: hash values are plain data; copied out at once.
        if let Some(id) = unsafe { table.get(&key) } {
            return Some(*id);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn exact6(slot: u32, addr: &[u32; 4], cfg: &SlotConfig) -> Option<Identity> {
    let table = EX6.get(slot)?;
    let n = cfg.lens_v6_count as usize;
    let mut i = 0;
    while i < MAX_EXACT_LENS && i < n {
        let len = cfg.lens_v6[i] as u32;
        let key = ExactKey6 {
            len,
            addr: v6_bytes(addr, len),
        };
        // SAFETY: hash values are plain data; copied out at once.
        if let Some(id) = unsafe { table.get(&key) } {
            return Some(*id);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn port_class(slot: u32, proto: u8, port: u16) -> u16 {
    let Some(block) = port_proto_block(proto) else {
        return 0;
    };
    let index = block * 65_536 + port as u32;
    let found = if slot == 0 {
        PORTS_A.get(index)
    } else {
        PORTS_B.get(index)
    };
    found.copied().unwrap_or(0)
}

#[inline(always)]
fn rule_at(slot: u32, key: &RuleKey) -> Option<RuleValue> {
    // No table: no rule admits anything (fails closed).
    let table = RULES.get(slot)?;
    // SAFETY: hash map values are plain data; copied out at once.
    unsafe { table.get(key) }.copied()
}

/// Whether a rule can admit a packet from an identity with `src_flags` to
/// one with `dst_flags`: not when either's class is in no rule entry (the
/// compiler's `IDENTITY_F_NO_RULE_*`), for then every lookup of
/// [`matching_rule`] would miss. The cheapest test first: a flood from
/// addresses no rule names costs no port class or rule lookup.
#[inline(always)]
pub fn rule_possible(src_flags: u32, dst_flags: u32) -> bool {
    src_flags & IDENTITY_F_NO_RULE_FROM == 0 && dst_flags & IDENTITY_F_NO_RULE_TO == 0
}

/// The first rule (lowest index) that admits this packet, if any.
#[inline(always)]
pub fn matching_rule(
    slot: u32,
    src_class: u32,
    dst_class: u32,
    proto: u8,
    dport: u16,
) -> Option<RuleValue> {
    let mut key = RuleKey {
        src_class,
        dst_class,
        port_class: PORT_CLASS_ANY,
        proto,
        _pad: 0,
    };
    let class = port_class(slot, proto, dport);
    if class != 0 {
        key.port_class = class;
        if let Some(v) = rule_at(slot, &key) {
            return Some(v);
        }
        key.port_class = PORT_CLASS_ANY;
    }
    rule_at(slot, &key)
}

#[inline(always)]
pub fn count_rule_hit(slot: u32, rule: u32) {
    let Some(hits) = HITS.get(slot) else {
        return;
    };
    if let Some(hit) = hits.get_ptr_mut(rule) {
        // SAFETY: this CPU's value, from a successful lookup; the agent
        // never deletes from a hit table (it replaces the whole table).
        unsafe { *hit += 1 };
        return;
    }
    // First hit of this rule on any CPU (or a race with another CPU's
    // insert, which leaves the other CPUs' values untouched). The table
    // has an element for every rule, preallocated: no allocation here.
    let _ = hits.insert(rule, 1u64, 0);
}

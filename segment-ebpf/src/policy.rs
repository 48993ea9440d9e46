//! Policy lookups against the tables of one slot: the identity of an address
//! (LPM trie), the port class of a destination port (array), and the rule
//! entry for (source class, destination class, port class, protocol) (hash).
//! No loop over rules: the cost does not grow with the policy.

use aya_ebpf::maps::lpm_trie::Key;
use segment_common::{
    ExactKey4, ExactKey6, Identity, LENS_USE_LPM, MAX_EXACT_LENS, PORT_CLASS_ANY, RuleKey,
    RuleValue, SlotConfig, port_proto_block,
};

use crate::maps::{
    EX4_A, EX4_B, EX6_A, EX6_B, HITS_A, HITS_B, ID4_A, ID4_B, ID6_A, ID6_B, PORTS_A, PORTS_B,
    RULES_A, RULES_B, SLOT_CONFIG,
};

/// The settings of a slot, read in place (not copied: the BPF stack is
/// small).
#[inline(always)]
pub fn slot_config(slot: u32) -> Option<&'static SlotConfig> {
    SLOT_CONFIG.get(slot)
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
/// Not inlined: as a function of its own it gets its own stack frame, which
/// keeps the caller's within the BPF stack limit.
#[inline(never)]
pub fn identity(slot: u32, family: u8, addr: &[u32; 4], cfg: &SlotConfig) -> Identity {
    let found = if family == 4 {
        if cfg.lens_v4_count != LENS_USE_LPM {
            exact4(slot, addr[0], cfg)
        } else {
            let key = Key::new(32, addr[0].to_ne_bytes());
            let v = if slot == 0 {
                ID4_A.get(&key)
            } else {
                ID4_B.get(&key)
            };
            v.copied()
        }
    } else if cfg.lens_v6_count != LENS_USE_LPM {
        exact6(slot, addr, cfg)
    } else {
        let key = Key::new(128, v6_bytes(addr, 128));
        let v = if slot == 0 {
            ID6_A.get(&key)
        } else {
            ID6_B.get(&key)
        };
        v.copied()
    };
    match found {
        Some(id) => id,
        None => Identity {
            flags: cfg.world_flags,
            ..Identity::default()
        },
    }
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
        let v = unsafe {
            if slot == 0 {
                EX4_A.get(&key)
            } else {
                EX4_B.get(&key)
            }
        };
        if let Some(id) = v {
            return Some(*id);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn exact6(slot: u32, addr: &[u32; 4], cfg: &SlotConfig) -> Option<Identity> {
    let n = cfg.lens_v6_count as usize;
    let mut i = 0;
    while i < MAX_EXACT_LENS && i < n {
        let len = cfg.lens_v6[i] as u32;
        let key = ExactKey6 {
            len,
            addr: v6_bytes(addr, len),
        };
        // SAFETY: hash values are plain data; copied out at once.
        let v = unsafe {
            if slot == 0 {
                EX6_A.get(&key)
            } else {
                EX6_B.get(&key)
            }
        };
        if let Some(id) = v {
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
    // SAFETY: hash map values are plain data; copied out at once.
    let v = unsafe {
        if slot == 0 {
            RULES_A.get(key)
        } else {
            RULES_B.get(key)
        }
    };
    v.copied()
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
    let map = if slot == 0 { &HITS_A } else { &HITS_B };
    if let Some(hit) = map.get_ptr_mut(&rule) {
        // SAFETY: this CPU's slot, from a successful lookup.
        unsafe { *hit += 1 };
        return;
    }
    // First hit of this rule on this CPU (or a race with another CPU's
    // insert, which leaves the other CPUs' values untouched).
    let _ = map.insert(&rule, &1u64, 0);
}

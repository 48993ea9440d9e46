//! Policy lookups against the tables of one slot: the identity of an address
//! (LPM trie), the port class of a destination port (array), and the rule
//! entry for (source class, destination class, port class, protocol) (hash).
//! No loop over rules: the cost does not grow with the policy.

use aya_ebpf::maps::lpm_trie::Key;
use segment_common::{Identity, PORT_CLASS_ANY, RuleKey, RuleValue, SlotConfig, port_proto_block};

use crate::maps::{
    HITS_A, HITS_B, ID4_A, ID4_B, ID6_A, ID6_B, PORTS_A, PORTS_B, RULES_A, RULES_B, SLOT_CONFIG,
};

#[inline(always)]
pub fn slot_config(slot: u32) -> Option<SlotConfig> {
    // SAFETY: pointer from a successful lookup; copied out at once.
    SLOT_CONFIG.get_ptr(slot).map(|p| unsafe { *p })
}

/// Identity of an address; addresses outside every prefix are identity 0
/// with the policy's default flags.
#[inline(always)]
pub fn identity(slot: u32, family: u8, addr: &[u32; 4], world_flags: u32) -> Identity {
    let found = if family == 4 {
        let key = Key::new(32, addr[0].to_ne_bytes());
        if slot == 0 {
            ID4_A.get(&key)
        } else {
            ID4_B.get(&key)
        }
    } else {
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = addr[i].to_ne_bytes();
            bytes[i * 4] = w[0];
            bytes[i * 4 + 1] = w[1];
            bytes[i * 4 + 2] = w[2];
            bytes[i * 4 + 3] = w[3];
            i += 1;
        }
        let key = Key::new(128, bytes);
        if slot == 0 {
            ID6_A.get(&key)
        } else {
            ID6_B.get(&key)
        }
    };
    match found {
        Some(id) => *id,
        None => Identity {
            flags: world_flags,
            ..Identity::default()
        },
    }
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

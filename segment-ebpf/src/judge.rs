//! The decision for one packet, the same for both hooks. In order:
//!
//! 1. Not IP → pass. IPv6 neighbour discovery / MLD → pass. Malformed → drop.
//! 2. The admin override `pass-all` → pass. No policy written yet → pass.
//! 3. A later fragment passes only if its first fragment passed.
//! 4. A packet of a tracked flow passes (conntrack fast path: no policy lookup).
//! 5. An ICMP error quoting a tracked flow passes.
//! 6. The policy: identities, then the first rule for (source class,
//!    destination class, protocol, port). Hooks that do not enforce (egress by
//!    default) pass everything here and only track openers.
//! 7. Denied packets to a destination in audit mode (or under the `audit-all`
//!    override) pass as would-drop; all others are dropped. Such a packet
//!    opens a flow marked audit, so that replies pass; every later packet
//!    from the flow's initiator still counts as would-drop (the policy
//!    would drop each of them), replies count as allowed.

use aya_ebpf::EbpfContext;
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_UNENFORCED, CT_RULE_NONE, HOOK_EGRESS, IDENTITY_F_AUDIT,
    OVERRIDE_AUDIT_ALL, OVERRIDE_PASS_ALL, RULE_F_FAILSAFE, Reason,
};

use crate::{
    account::{Pair, finish},
    conntrack::{
        first_fragment, is_opener, is_related, now_ns, open, remember_first_fragment, track,
    },
    maps::CONFIG,
    parse::{Cursor, Frag, Packet, Parsed, parse},
    policy::{count_rule_hit, identity, matching_rule, slot_config},
};

/// Judges the packet between `data` and `data_end`; true means pass.
#[inline(always)]
pub fn judge<C: EbpfContext>(ctx: &C, data: usize, data_end: usize, len: u64, hook: u32) -> bool {
    let cursor = Cursor::new(data, data_end);
    match parse(&cursor) {
        Parsed::NotIp => finish(ctx, Reason::PassNotIp, None, hook, len),
        Parsed::Neighbor => finish(ctx, Reason::PassNeighbor, None, hook, len),
        Parsed::Malformed => finish(
            ctx,
            malformed_or_override(Reason::DropMalformed),
            None,
            hook,
            len,
        ),
        Parsed::ExtHeaders => finish(
            ctx,
            malformed_or_override(Reason::DropExtHeaders),
            None,
            hook,
            len,
        ),
        Parsed::Ip(pkt) => judge_ip(ctx, &pkt, hook, len),
    }
}

#[inline(always)]
fn override_mode() -> u32 {
    match CONFIG.get(0) {
        Some(cfg) => cfg.override_mode,
        None => 0,
    }
}

#[inline(always)]
fn malformed_or_override(reason: Reason) -> Reason {
    if override_mode() == OVERRIDE_PASS_ALL {
        Reason::PassOverride
    } else {
        reason
    }
}

#[inline(always)]
fn judge_ip<C: EbpfContext>(ctx: &C, pkt: &Packet, hook: u32, len: u64) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return finish(ctx, Reason::PassNoPolicy, None, hook, len);
    };
    if cfg.override_mode == OVERRIDE_PASS_ALL {
        return finish(ctx, Reason::PassOverride, None, hook, len);
    }
    if cfg.initialized == 0 {
        return finish(ctx, Reason::PassNoPolicy, None, hook, len);
    }
    let slot = cfg.active_slot & 1;
    let audit_all = cfg.override_mode == OVERRIDE_AUDIT_ALL;
    let Some(slot_cfg) = slot_config(slot) else {
        return finish(ctx, Reason::PassNoPolicy, None, hook, len);
    };
    let now = now_ns();

    if pkt.frag == Frag::Later {
        if let Some(first) = first_fragment(pkt, now) {
            let pair = Pair {
                src_id: first.src_id,
                dst_id: first.dst_id,
            };
            let reason = if first.reason == Reason::PassAudit as u32 {
                Reason::PassAudit
            } else {
                Reason::PassFragment
            };
            return finish(ctx, reason, Some(pair), hook, len);
        }
        let src = identity(slot, pkt.family, &pkt.src, slot_cfg.world_flags);
        let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg.world_flags);
        let pair = Pair {
            src_id: src.id,
            dst_id: dst.id,
        };
        let reason = if dst.flags & IDENTITY_F_AUDIT != 0 || audit_all {
            Reason::PassAudit
        } else {
            Reason::DropFragment
        };
        return finish(ctx, reason, Some(pair), hook, len);
    }

    if let Some(flow) = track(pkt, now, hook) {
        let reason = if flow.audited {
            Reason::PassAudit
        } else {
            Reason::PassConntrack
        };
        remember_first_fragment(pkt, now, reason as u32, flow.src_id, flow.dst_id);
        let pair = Pair {
            src_id: flow.src_id,
            dst_id: flow.dst_id,
        };
        return finish(ctx, reason, Some(pair), hook, len);
    }

    let src = identity(slot, pkt.family, &pkt.src, slot_cfg.world_flags);
    let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg.world_flags);
    let pair = Pair {
        src_id: src.id,
        dst_id: dst.id,
    };

    if let Some(q) = &pkt.quoted {
        if is_related(pkt.family, q, now) {
            return finish(ctx, Reason::PassRelated, Some(pair), hook, len);
        }
    }

    let enforced = if hook == HOOK_EGRESS {
        slot_cfg.enforce_egress != 0
    } else {
        slot_cfg.enforce_ingress != 0
    };
    let hook_flag = if hook == HOOK_EGRESS { CT_F_EGRESS } else { 0 };
    if !enforced {
        if is_opener(pkt) {
            open(
                pkt,
                now,
                src.id,
                dst.id,
                CT_RULE_NONE,
                hook_flag | CT_F_UNENFORCED,
            );
        }
        remember_first_fragment(pkt, now, Reason::PassNotEnforced as u32, src.id, dst.id);
        return finish(ctx, Reason::PassNotEnforced, Some(pair), hook, len);
    }

    if let Some(rule) = matching_rule(slot, src.src_class, dst.dst_class, pkt.proto, pkt.dport) {
        count_rule_hit(slot, rule.rule);
        if is_opener(pkt) {
            open(pkt, now, src.id, dst.id, rule.rule, hook_flag);
        }
        let reason = if rule.flags & RULE_F_FAILSAFE != 0 {
            Reason::PassFailsafe
        } else {
            Reason::PassRule
        };
        remember_first_fragment(pkt, now, reason as u32, src.id, dst.id);
        return finish(ctx, reason, Some(pair), hook, len);
    }

    if dst.flags & IDENTITY_F_AUDIT != 0 || audit_all {
        if is_opener(pkt) {
            open(
                pkt,
                now,
                src.id,
                dst.id,
                CT_RULE_NONE,
                hook_flag | CT_F_AUDIT,
            );
        }
        remember_first_fragment(pkt, now, Reason::PassAudit as u32, src.id, dst.id);
        return finish(ctx, Reason::PassAudit, Some(pair), hook, len);
    }
    finish(ctx, Reason::DropNoRule, Some(pair), hook, len)
}

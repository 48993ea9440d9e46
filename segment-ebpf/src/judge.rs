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
//!
//! Every decision leaves through [`Run::exit`]. A *dry run* (`explain
//! --live`: an XDP test run with `DRY_RUN_MAGIC` as metadata) decides the
//! same way but writes nothing except the record of its decision.

use aya_ebpf::EbpfContext;
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_UNENFORCED, CT_RULE_NONE, FLOW_LOG_ALL_NEW, HOOK_EGRESS,
    IDENTITY_F_AUDIT, OVERRIDE_AUDIT_ALL, OVERRIDE_PASS_ALL, RULE_F_FAILSAFE, Reason,
};

use crate::{
    account::{Pair, finish},
    conntrack::{
        first_fragment, is_opener, is_related, now_ns, open, remember_first_fragment, track,
    },
    flowlog,
    maps::{CONFIG, EXPLAIN, SCRATCH},
    parse::{Cursor, Frag, Packet, Parsed, parse},
    policy::{count_rule_hit, identity, matching_rule, slot_config},
};

/// What to put in the flow log for a decision.
#[derive(Clone, Copy)]
enum Log<'p> {
    No,
    Packet(&'p Packet),
    /// Headers that could not be read: no addresses to report.
    Unparsed,
}

/// One run of the program over one packet.
pub struct Run<'c, C> {
    ctx: &'c C,
    hook: u32,
    len: u64,
    ifindex: u32,
    dry: bool,
    slot: u32,
    generation: u16,
    now: u64,
}

impl<C: EbpfContext> Run<'_, C> {
    /// The one exit: counts (or, in a dry run, records) the decision and
    /// says whether the packet passes.
    #[inline(always)]
    fn exit(&self, reason: Reason, pair: Option<Pair>, rule: u32, log: Log<'_>) -> bool {
        if self.dry {
            if let Some(rec) = EXPLAIN.get_ptr_mut(0) {
                // SAFETY: this CPU's record, from a successful lookup.
                unsafe {
                    (*rec).ts_ns = aya_ebpf::helpers::bpf_ktime_get_ns();
                    (*rec).reason = reason as u32;
                    (*rec).rule = rule;
                    (*rec).src_id = pair.map(|p| p.src_id).unwrap_or(u32::MAX);
                    (*rec).dst_id = pair.map(|p| p.dst_id).unwrap_or(u32::MAX);
                    (*rec).slot = self.slot;
                }
            }
            return !reason.is_drop();
        }
        let pass = finish(self.ctx, reason, pair, self.hook, self.len);
        let pkt = match log {
            Log::No => return pass,
            Log::Packet(pkt) => Some(pkt),
            Log::Unparsed => None,
        };
        let now = self.now;
        flowlog::report(now, |ev| {
            // SAFETY: `ev` points at a reserved ring buffer record; every
            // field is written before it is submitted.
            unsafe {
                (*ev).ts_ns = now;
                (*ev).src_id = pair.map(|p| p.src_id).unwrap_or(u32::MAX);
                (*ev).dst_id = pair.map(|p| p.dst_id).unwrap_or(u32::MAX);
                (*ev).rule = rule;
                (*ev).len = self.len as u32;
                (*ev).ifindex = self.ifindex;
                (*ev).reason = reason as u8;
                (*ev).hook = self.hook as u8;
                (*ev).generation = self.generation;
                match pkt {
                    Some(p) => {
                        (*ev).src = p.src;
                        (*ev).dst = p.dst;
                        (*ev).sport = p.sport;
                        (*ev).dport = p.dport;
                        (*ev).proto = p.proto;
                        (*ev).family = p.family;
                        (*ev).tcp_flags = p.tcp_flags;
                        (*ev).icmp_type = p.icmp_type;
                    }
                    None => {
                        (*ev).src = [0; 4];
                        (*ev).dst = [0; 4];
                        (*ev).sport = 0;
                        (*ev).dport = 0;
                        (*ev).proto = 0;
                        (*ev).family = 0;
                        (*ev).tcp_flags = 0;
                        (*ev).icmp_type = 0;
                    }
                }
            }
        });
        pass
    }
}

/// Judges the packet between `data` and `data_end`; true means pass.
#[inline(always)]
pub fn judge<C: EbpfContext>(
    ctx: &C,
    data: usize,
    data_end: usize,
    len: u64,
    hook: u32,
    ifindex: u32,
    dry: bool,
) -> bool {
    let mut run = Run {
        ctx,
        hook,
        len,
        ifindex,
        dry,
        slot: 0,
        generation: 0,
        now: now_ns(),
    };
    let cursor = Cursor::new(data, data_end);
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return run.exit(Reason::PassNoPolicy, None, CT_RULE_NONE, Log::No);
    };
    // SAFETY: this CPU's scratch slot, from a successful lookup; a program
    // run is not preempted on its CPU, so nothing else uses it meanwhile.
    let pkt = unsafe { &mut *pkt };
    match parse(&cursor, pkt) {
        Parsed::NotIp => run.exit(Reason::PassNotIp, None, CT_RULE_NONE, Log::No),
        Parsed::Neighbor => run.exit(Reason::PassNeighbor, None, CT_RULE_NONE, Log::No),
        Parsed::Malformed => {
            let reason = malformed_or_override(Reason::DropMalformed);
            run.exit(reason, None, CT_RULE_NONE, Log::Unparsed)
        }
        Parsed::ExtHeaders => {
            let reason = malformed_or_override(Reason::DropExtHeaders);
            run.exit(reason, None, CT_RULE_NONE, Log::Unparsed)
        }
        Parsed::Ip => judge_ip(&mut run, pkt),
    }
}

#[inline(always)]
fn malformed_or_override(reason: Reason) -> Reason {
    match CONFIG.get(0) {
        Some(cfg) if cfg.override_mode == OVERRIDE_PASS_ALL => Reason::PassOverride,
        _ => reason,
    }
}

#[inline(always)]
fn judge_ip<C: EbpfContext>(run: &mut Run<'_, C>, pkt: &Packet) -> bool {
    const NONE: u32 = CT_RULE_NONE;
    let Some(cfg) = CONFIG.get(0) else {
        return run.exit(Reason::PassNoPolicy, None, NONE, Log::No);
    };
    if cfg.override_mode == OVERRIDE_PASS_ALL {
        return run.exit(Reason::PassOverride, None, NONE, Log::No);
    }
    if cfg.initialized == 0 {
        return run.exit(Reason::PassNoPolicy, None, NONE, Log::No);
    }
    let slot = cfg.active_slot & 1;
    let audit_all = cfg.override_mode == OVERRIDE_AUDIT_ALL;
    let log_all_new = cfg.flow_log == FLOW_LOG_ALL_NEW;
    let Some(slot_cfg) = slot_config(slot) else {
        return run.exit(Reason::PassNoPolicy, None, NONE, Log::No);
    };
    run.slot = slot;
    run.generation = slot_cfg.generation as u16;
    let dry = run.dry;
    let hook = run.hook;
    let now = run.now;

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
            return run.exit(reason, Some(pair), NONE, Log::No);
        }
        let src = identity(slot, pkt.family, &pkt.src, slot_cfg);
        let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg);
        let pair = Pair {
            src_id: src.id,
            dst_id: dst.id,
        };
        let reason = if dst.flags & IDENTITY_F_AUDIT != 0 || audit_all {
            Reason::PassAudit
        } else {
            Reason::DropFragment
        };
        return run.exit(reason, Some(pair), NONE, Log::Packet(pkt));
    }

    if let Some(flow) = track(pkt, now, hook, dry) {
        let reason = if flow.audited {
            Reason::PassAudit
        } else {
            Reason::PassConntrack
        };
        if !dry {
            remember_first_fragment(pkt, now, reason as u32, flow.src_id, flow.dst_id);
        }
        let pair = Pair {
            src_id: flow.src_id,
            dst_id: flow.dst_id,
        };
        return run.exit(reason, Some(pair), NONE, Log::No);
    }

    let src = identity(slot, pkt.family, &pkt.src, slot_cfg);
    let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg);
    let pair = Pair {
        src_id: src.id,
        dst_id: dst.id,
    };

    if let Some(q) = &pkt.quoted {
        if is_related(pkt.family, q, now) {
            return run.exit(Reason::PassRelated, Some(pair), NONE, Log::No);
        }
    }

    let enforced = if hook == HOOK_EGRESS {
        slot_cfg.enforce_egress != 0
    } else {
        slot_cfg.enforce_ingress != 0
    };
    let hook_flag = if hook == HOOK_EGRESS { CT_F_EGRESS } else { 0 };
    let opener = is_opener(pkt);
    let log_new = if log_all_new && opener {
        Log::Packet(pkt)
    } else {
        Log::No
    };
    if !enforced {
        if !dry {
            if opener {
                open(pkt, now, src.id, dst.id, NONE, hook_flag | CT_F_UNENFORCED);
            }
            remember_first_fragment(pkt, now, Reason::PassNotEnforced as u32, src.id, dst.id);
        }
        return run.exit(Reason::PassNotEnforced, Some(pair), NONE, log_new);
    }

    if let Some(rule) = matching_rule(slot, src.src_class, dst.dst_class, pkt.proto, pkt.dport) {
        let failsafe = rule.flags & RULE_F_FAILSAFE != 0;
        let reason = if failsafe {
            Reason::PassFailsafe
        } else {
            Reason::PassRule
        };
        if !dry {
            count_rule_hit(slot, rule.rule);
            if opener {
                open(pkt, now, src.id, dst.id, rule.rule, hook_flag);
            }
            remember_first_fragment(pkt, now, reason as u32, src.id, dst.id);
        }
        let log = if failsafe { Log::Packet(pkt) } else { log_new };
        return run.exit(reason, Some(pair), rule.rule, log);
    }

    if dst.flags & IDENTITY_F_AUDIT != 0 || audit_all {
        if !dry {
            if opener {
                open(pkt, now, src.id, dst.id, NONE, hook_flag | CT_F_AUDIT);
            }
            remember_first_fragment(pkt, now, Reason::PassAudit as u32, src.id, dst.id);
        }
        return run.exit(Reason::PassAudit, Some(pair), NONE, Log::Packet(pkt));
    }
    run.exit(Reason::DropNoRule, Some(pair), NONE, Log::Packet(pkt))
}

//! The decision for one packet, the same for both hooks. In order:
//!
//! 1. Not IP → pass. IPv6 neighbour discovery / MLD in the form the link
//!    needs (see `icmp`) → pass. Malformed → drop.
//! 2. The admin override `pass-all` → pass. No policy written yet → pass.
//!    A map lookup that cannot fail and did → `drop_internal` (never pass).
//! 3. At ingress, a packet whose source is one of this host's own
//!    addresses is a martian → drop (whatever the policy or audit mode say:
//!    it is a spoof, not a flow the policy could admit).
//! 4. A later fragment passes only if its first fragment passed.
//! 5. A packet of a tracked flow passes (conntrack fast path: no policy
//!    lookup) — unless the flow was admitted by an earlier policy, which is
//!    re-judged once by the active one (kept, or removed and the packet
//!    judged as untracked).
//! 6. An ICMP error that could come from the tracked flow it quotes passes
//!    (the parser sets `quoted` only for those, see `icmp`).
//! 7. The policy: identities, then the first rule for (source class,
//!    destination class, protocol, port). Hooks that do not enforce (egress by
//!    default) pass everything here and only track openers.
//! 8. Denied packets to a destination in audit mode (or under the `audit-all`
//!    override) pass as would-drop; all others are dropped. Such a packet
//!    opens a flow marked audit, so that replies pass; every later packet
//!    from the flow's initiator still counts as would-drop (the policy
//!    would drop each of them), replies count as allowed.
//!
//! Every decision leaves through [`Run::exit`]. In a *dry* instance (loaded
//! with the `DRY_RUN` global set, never attached: `explain --live` test-runs
//! it) every run decides the same way but writes nothing except the record
//! of its decision. Attached instances have the global 0, so the verifier
//! removes the dry path from them: no packet can ask for it.
//!
//! The `ABLATE` global works the same way for the benchmark's ablation
//! table: an instance loaded with level *n* (never attached) runs the stages
//! up to *n* and skips the rest — parse; + identities (with the settings and
//! the martian check); + rule; + conntrack; + counters; the full program adds
//! the flow log. Conntrack comes fourth in the table but is looked up before
//! the identities in the program: the levels below it skip the lookup (and
//! the entry an allowed opener creates), so a reply is then judged by the
//! policy like any packet, and from the conntrack level on the lookup sits
//! where it always does. The first two levels leave with a fixed drop, the
//! next two with the verdict decided so far; below the counters level no
//! exit counts anything (`Run::exit`), at it every exit counts but none logs.

use aya_ebpf::EbpfContext;
use segment_common::{
    ABLATE_CONNTRACK, ABLATE_COUNTERS, ABLATE_IDENTITIES, ABLATE_RULE, ACTIVE_NONE, CFG_ACTIVE,
    CFG_FLOW_LOG, CFG_OVERRIDE, CT_F_AUDIT, CT_F_EGRESS, CT_F_UNENFORCED, CT_RULE_NONE,
    FLOW_LOG_ALL_NEW, HOOK_EGRESS, IDENTITY_F_AUDIT, OVERRIDE_AUDIT_ALL, OVERRIDE_PASS_ALL,
    RULE_F_FAILSAFE, Reason, SlotConfig,
};

use crate::{
    account::{Pair, finish},
    conntrack::{
        Track, Tracked, first_fragment, is_opener, is_related, now_ns, open, picks_up, readmit,
        remember_first_fragment, syn_window_scale, track,
    },
    flowlog,
    maps::{CONFIG, EXPLAIN, SCRATCH},
    martian::{is_martian, neighbor_for_this_link},
    parse::{Cursor, Frag, Link, Packet, Parsed, parse},
    policy::{
        count_rule_hit, identity, matching_rule, rule_possible, slot_config, slot_tables_present,
    },
};

/// Set to 1 by the loader for the dry instance only (see the module doc).
/// Read with `read_volatile` so that the compiler keeps the load and the
/// verifier, which sees the frozen value, prunes the branch instead.
#[unsafe(no_mangle)]
static DRY_RUN: u32 = 0;

#[inline(always)]
fn dry_instance() -> bool {
    // SAFETY: a plain read of a static the loader may have overridden.
    unsafe { core::ptr::read_volatile(&DRY_RUN) != 0 }
}

/// The ablation level (see the module doc); 0 in every attached instance,
/// which the verifier sees, so that it prunes every ablation branch.
#[unsafe(no_mangle)]
static ABLATE: u32 = 0;

#[inline(always)]
fn ablation_level() -> u32 {
    // SAFETY: a plain read of a static the loader may have overridden.
    unsafe { core::ptr::read_volatile(&ABLATE) }
}

/// What the hook does with the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// The datapath itself failed (`drop_internal`): dropped, and reported
    /// as an exception where the hook has one (XDP_ABORTED).
    Abort,
}

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
    /// The ablation level, 0 for the full program.
    level: u32,
    slot: u32,
    generation: u16,
    now: u64,
}

impl<C: EbpfContext> Run<'_, C> {
    /// Whether this instance runs `stage` (an `ABLATE_*` level).
    #[inline(always)]
    fn runs(&self, stage: u32) -> bool {
        self.level == 0 || stage <= self.level
    }

    /// The one exit: counts (or, in a dry run, records) the decision and
    /// says what the hook does with the packet.
    #[inline(always)]
    fn exit(&self, reason: Reason, pair: Option<Pair>, rule: u32, log: Log<'_>) -> Action {
        let pass = self.account(reason, pair, rule, log);
        if pass {
            Action::Pass
        } else if matches!(reason, Reason::DropInternal) {
            Action::Abort
        } else {
            Action::Drop
        }
    }

    #[inline(always)]
    fn account(&self, reason: Reason, pair: Option<Pair>, rule: u32, log: Log<'_>) -> bool {
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
        // An ablated instance counts from the counters level on, and never
        // logs (only the full program does).
        if self.level != 0 {
            if self.level < ABLATE_COUNTERS {
                return !reason.is_drop();
            }
            return finish(self.ctx, reason, pair, self.hook, self.len);
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

/// Judges the packet between `data` and `data_end`, which starts with the
/// `link` header.
#[inline(always)]
pub fn judge<C: EbpfContext>(
    ctx: &C,
    data: usize,
    data_end: usize,
    len: u64,
    hook: u32,
    ifindex: u32,
    link: Link,
) -> Action {
    let mut run = Run {
        ctx,
        hook,
        len,
        ifindex,
        dry: dry_instance(),
        level: ablation_level(),
        slot: 0,
        generation: 0,
        now: now_ns(),
    };
    let cursor = Cursor::new(data, data_end);
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return run.exit(Reason::DropInternal, None, CT_RULE_NONE, Log::No);
    };
    // SAFETY: this CPU's scratch slot, from a successful lookup; a program
    // run is not preempted on its CPU, so nothing else uses it meanwhile.
    let pkt = unsafe { &mut *pkt };
    match parse(&cursor, link, pkt) {
        Parsed::NotIp => run.exit(Reason::PassNotIp, None, CT_RULE_NONE, Log::No),
        // At egress a message with the ND/MLD hop limit can only come from
        // this host; at ingress it must also be addressed to this link.
        Parsed::Neighbor if hook == HOOK_EGRESS || neighbor_for_this_link(pkt) => {
            run.exit(Reason::PassNeighbor, None, CT_RULE_NONE, Log::No)
        }
        Parsed::Neighbor => judge_ip(&mut run, pkt),
        Parsed::Malformed => {
            let reason = malformed_or_override(Reason::DropMalformed);
            run.exit(reason, None, CT_RULE_NONE, Log::Unparsed)
        }
        Parsed::ExtHeaders => {
            let reason = malformed_or_override(Reason::DropExtHeaders);
            run.exit(reason, None, CT_RULE_NONE, Log::Unparsed)
        }
        Parsed::SourceRoute => {
            let reason = malformed_or_override(Reason::DropSourceRoute);
            run.exit(reason, None, CT_RULE_NONE, Log::Unparsed)
        }
        Parsed::Ip => {
            // Conntrack's window tracking needs a SYN's window scale.
            pkt.tcp.wscale = syn_window_scale(&cursor, pkt);
            if !run.runs(ABLATE_IDENTITIES) {
                return Action::Drop;
            }
            judge_ip(&mut run, pkt)
        }
    }
}

/// One entry of the config array; `None` only if the map is broken.
#[inline(always)]
fn setting(index: u32) -> Option<u32> {
    CONFIG.get(index).copied()
}

#[inline(always)]
fn malformed_or_override(reason: Reason) -> Reason {
    match setting(CFG_OVERRIDE) {
        Some(OVERRIDE_PASS_ALL) => Reason::PassOverride,
        Some(_) => reason,
        None => Reason::DropInternal,
    }
}

/// The exit of a packet of a tracked flow.
#[inline(always)]
fn tracked<C: EbpfContext>(run: &mut Run<'_, C>, pkt: &Packet, flow: &Tracked) -> Action {
    let reason = if flow.audited {
        Reason::PassAudit
    } else {
        Reason::PassConntrack
    };
    if !run.dry {
        remember_first_fragment(pkt, run.now, reason as u32, flow.src_id, flow.dst_id);
    }
    let pair = Pair {
        src_id: flow.src_id,
        dst_id: flow.dst_id,
    };
    run.exit(reason, Some(pair), CT_RULE_NONE, Log::No)
}

#[inline(always)]
fn judge_ip<C: EbpfContext>(run: &mut Run<'_, C>, pkt: &Packet) -> Action {
    const NONE: u32 = CT_RULE_NONE;
    let (Some(override_mode), Some(active), Some(flow_log)) = (
        setting(CFG_OVERRIDE),
        setting(CFG_ACTIVE),
        setting(CFG_FLOW_LOG),
    ) else {
        return run.exit(Reason::DropInternal, None, NONE, Log::No);
    };
    if override_mode == OVERRIDE_PASS_ALL {
        return run.exit(Reason::PassOverride, None, NONE, Log::No);
    }
    if active == ACTIVE_NONE {
        return run.exit(Reason::PassNoPolicy, None, NONE, Log::No);
    }
    let slot = (active - 1) & 1;
    let audit_all = override_mode == OVERRIDE_AUDIT_ALL;
    let log_all_new = flow_log == FLOW_LOG_ALL_NEW;
    let Some(slot_cfg) = slot_config(slot) else {
        return run.exit(Reason::DropInternal, None, NONE, Log::No);
    };
    // The agent installs all of a slot's tables before its config says to
    // use them, so a missing one is a broken datapath; judged without it,
    // a known host would take the world's identity (which a rule toward
    // `autogroup:internet` admits).
    if !slot_tables_present(slot) {
        return run.exit(Reason::DropInternal, None, NONE, Log::No);
    }
    run.slot = slot;
    run.generation = slot_cfg.generation as u16;
    let generation = slot_cfg.generation as u32;
    let dry = run.dry;
    let hook = run.hook;
    let now = run.now;
    // Rule hits are counters: the conntrack level writes none.
    let counts = !dry && run.runs(ABLATE_COUNTERS);

    if hook != HOOK_EGRESS && is_martian(pkt) {
        return run.exit(Reason::DropMartian, None, NONE, Log::Packet(pkt));
    }

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

    // The levels without conntrack leave here, before the lookup, so that
    // the path below stays as it is in the full program.
    if !run.runs(ABLATE_CONNTRACK) {
        return policy_only(run, pkt, slot, slot_cfg, audit_all);
    }

    let stale = match track(pkt, now, hook, run.ifindex, dry, Some(generation)) {
        Track::Hit(flow) => return tracked(run, pkt, &flow),
        Track::Miss => None,
        Track::Stale(stale) => Some(stale),
    };

    let src = identity(slot, pkt.family, &pkt.src, slot_cfg);
    let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg);
    // A flow an earlier policy admitted: re-judged by this one (with the
    // identities the policy path needs anyway). Kept, it is tracked again;
    // revoked, its entry is gone and the packet is judged as untracked.
    if let Some(stale) = stale
        && readmit(pkt, &stale, slot, slot_cfg, &src, &dst, dry)
        && let Track::Hit(flow) = track(pkt, now, hook, run.ifindex, dry, None)
    {
        return tracked(run, pkt, &flow);
    }
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
    // At egress, a TCP segment of an untracked established flow (its entry
    // expired or was evicted) may re-create it, as the policy decides.
    let opener = is_opener(pkt) || picks_up(pkt, hook);
    let log_new = if log_all_new && opener {
        Log::Packet(pkt)
    } else {
        Log::No
    };
    if !enforced {
        if !dry {
            if opener {
                open(
                    pkt,
                    now,
                    run.ifindex,
                    generation,
                    src.id,
                    dst.id,
                    NONE,
                    hook_flag | CT_F_UNENFORCED,
                );
            }
            remember_first_fragment(pkt, now, Reason::PassNotEnforced as u32, src.id, dst.id);
        }
        return run.exit(Reason::PassNotEnforced, Some(pair), NONE, log_new);
    }

    if rule_possible(src.flags, dst.flags)
        && let Some(rule) = matching_rule(slot, src.src_class, dst.dst_class, pkt.proto, pkt.dport)
    {
        let failsafe = rule.flags & RULE_F_FAILSAFE != 0;
        let reason = if failsafe {
            Reason::PassFailsafe
        } else {
            Reason::PassRule
        };
        if counts {
            count_rule_hit(slot, rule.rule);
        }
        if !dry {
            if opener {
                open(
                    pkt,
                    now,
                    run.ifindex,
                    generation,
                    src.id,
                    dst.id,
                    rule.rule,
                    hook_flag,
                );
            }
            remember_first_fragment(pkt, now, reason as u32, src.id, dst.id);
        }
        let log = if failsafe { Log::Packet(pkt) } else { log_new };
        return run.exit(reason, Some(pair), rule.rule, log);
    }

    if dst.flags & IDENTITY_F_AUDIT != 0 || audit_all {
        if !dry {
            // Audit mode opens flows for openers only: a picked-up segment
            // the policy denies is not re-admitted (each such packet passes
            // as would-drop on its own).
            if is_opener(pkt) {
                open(
                    pkt,
                    now,
                    run.ifindex,
                    generation,
                    src.id,
                    dst.id,
                    NONE,
                    hook_flag | CT_F_AUDIT,
                );
            }
            remember_first_fragment(pkt, now, Reason::PassAudit as u32, src.id, dst.id);
        }
        return run.exit(Reason::PassAudit, Some(pair), NONE, Log::Packet(pkt));
    }
    run.exit(Reason::DropNoRule, Some(pair), NONE, Log::Packet(pkt))
}

/// The ablation levels below conntrack (identities; + rule): the lookups
/// of the full program's policy path, and its verdict (audit and unenforced
/// hooks pass), with nothing written or counted. Kept apart from
/// [`judge_ip`] so that its own path is the same in every instance.
#[inline(always)]
fn policy_only<C: EbpfContext>(
    run: &Run<'_, C>,
    pkt: &Packet,
    slot: u32,
    slot_cfg: &SlotConfig,
    audit_all: bool,
) -> Action {
    let src = identity(slot, pkt.family, &pkt.src, slot_cfg);
    let dst = identity(slot, pkt.family, &pkt.dst, slot_cfg);
    if !run.runs(ABLATE_RULE) {
        return Action::Drop;
    }
    let enforced = if run.hook == HOOK_EGRESS {
        slot_cfg.enforce_egress != 0
    } else {
        slot_cfg.enforce_ingress != 0
    };
    let admitted = !enforced
        || (rule_possible(src.flags, dst.flags)
            && matching_rule(slot, src.src_class, dst.dst_class, pkt.proto, pkt.dport).is_some())
        || dst.flags & IDENTITY_F_AUDIT != 0
        || audit_all;
    if admitted { Action::Pass } else { Action::Drop }
}

//! The kernel datapath against an independent reference.
//!
//! Random policies are built as the test's own data
//! ([`segment_tests::refpolicy`]), rendered to YAML for segment (so its
//! parser, validator and compiler are under test too) and loaded into the
//! real maps. Random frames — well-formed, tagged, fragmented, with IP
//! options and IPv6 extension header chains, truncated, replies to earlier
//! flows, genuine and forged ICMP errors, valid and invalid neighbour
//! discovery, IPv4-mapped addresses, spoofed own addresses, TCP segments
//! with real sequence numbers, frames without an Ethernet header, on several
//! interfaces — run through the loaded XDP and TC programs with
//! BPF_PROG_TEST_RUN. Every verdict must equal the reference: the test's own
//! evaluation of its policy description (no `segment::policy` or `eval`),
//! plus a model of connection tracking and fragment tracking written from the
//! README and from the datapath spec of the hardening round (S1–S8 of
//! `notes/spec-hardening.md`), not from the kernel code.
//!
//! Conntrack and fragment state are kept across policy changes (in epochs of
//! a few seconds, well under the shortest timeout the model does not model),
//! and in some reloads the agent's post-switch flush is undone, so that only
//! the datapath's generation re-judge (S7) stands between an old flow and the
//! new policy.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use segment::{
    datapath::{
        Enforcer, Paths, loader,
        tables::{SlotContents, open_map},
    },
    policy,
};
use segment_common::{
    CT_F_AUDIT, CT_F_EGRESS, CT_F_FIN_A, CT_F_FIN_B, CT_F_INITIATOR_A, CT_F_RST, CtKey, CtValue,
    FragKey, FragValue, LENS_USE_LPM, Reason, ReasonCounters, SlotConfig, map_names,
};
use segment_tests::{
    agent::Dirs,
    frames::{ACK, FIN, L4, PSH, Packet, RST, SYN, TPID_8021AD, TPID_8021Q, ethernet},
    netns::{Netns, require_root},
    refpolicy::{MAPPED_BASE, PolicyDesc, Rng, V4_BASE, V6_BASE, random_policy},
};

/// L3 entry points (S3), run when the object has them.
const PROG_INGRESS_L3: &str = "segment_ingress_l3";
const PROG_EGRESS_L3: &str = "segment_egress_l3";

fn v4(host: u32) -> Ipv4Addr {
    Ipv4Addr::from(V4_BASE | host)
}

fn v6(host: u128) -> Ipv6Addr {
    Ipv6Addr::from(V6_BASE | host)
}

fn mapped(host: u32) -> Ipv6Addr {
    Ipv6Addr::from(MAPPED_BASE | u128::from(V4_BASE | host))
}

fn compat(host: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(V4_BASE | host))
}

/// The addresses the test gives its namespace's interfaces (S5's "own
/// addresses", with lo's), outside the random traffic's universe so that only
/// the spoof kinds use them as sources.
fn own_addresses() -> Vec<IpAddr> {
    vec![
        IpAddr::V4(v4(50)),
        IpAddr::V6(v6(0x50)),
        IpAddr::V6("fe80::50".parse().unwrap()),
    ]
}

// ---------------------------------------------------------------------------
// The reference model of the datapath.

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
enum Hook {
    Ingress,
    Egress,
}

fn words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
        IpAddr::V6(v) => {
            let o = v.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    }
}

/// Both endpoints (family, address words, port), smaller first, and the
/// protocol. The family is part of the key: `::ffff:10.0.0.5` is not
/// 10.0.0.5.
type End = (u8, [u32; 4], u16);
type FlowKey = (End, End, u8);

/// README "Conntrack": "keyed by the sorted endpoints so both directions find
/// it in one lookup". Returns the key and whether `src` is endpoint a.
fn flow(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> (FlowKey, bool) {
    let fam = |a: IpAddr| if a.is_ipv6() { 6 } else { 4 };
    let s = (fam(src), words(src), sport);
    let d = (fam(dst), words(dst), dport);
    if s <= d {
        ((s, d, proto), true)
    } else {
        ((d, s, proto), false)
    }
}

/// S8: per direction, the sequence space end and the largest window.
#[derive(Clone, Copy, Debug, Default)]
struct TcpSide {
    seen: bool,
    end: u32,
    maxwin: u32,
    /// The window scale option of this side's SYN / SYN-ACK.
    wscale: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Ct {
    initiator_a: bool,
    /// S6: the hook and interface that created the entry, and (amendment)
    /// the first egress interface the initiator's packets of an
    /// ingress-created flow met.
    hook: Hook,
    ifindex: u32,
    egress_if: Option<u32>,
    /// S7: the generation that admitted or last re-admitted it.
    generation: u64,
    /// README "Audit mode": admitted only because the destination audits.
    audit: bool,
    fin_a: bool,
    fin_b: bool,
    rst: bool,
    /// Indexed by endpoint: [a, b].
    tcp: [TcpSide; 2],
    /// README "Capacity": moved to the confirmed table (`SEG_CT`) once
    /// confirmed; until then in the unconfirmed one (`SEG_CTPEND`).
    confirmed: bool,
    /// README "Capacity": the responder's SYN-ACK acknowledged exactly the
    /// initiator's SYN (the first half of a confirming handshake).
    synack_ok: bool,
    /// README "Conntrack": created by egress pick-up (no SYN seen), which
    /// the responder confirms.
    picked_up: bool,
    /// For the report only: what created it, and whether S8 ignored an
    /// out-of-window RST/FIN on it, S6 refused one of its packets or S7
    /// promoted it (the old datapath would have done otherwise).
    origin: Origin,
    diverged: bool,
    /// The first matching rule, when a rule admitted it on an enforcing
    /// hook (the datapath records it in the entry).
    rule: Option<u32>,
    /// When a packet last matched it (for [`Model::sweep`] only).
    touched: Instant,
}

/// For the report only: which rule created an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Origin {
    /// README "Conntrack": an admitted opener.
    Opener,
    /// An opener with 8 extension headers, which S4 admits.
    S4EightHeaders,
    /// A packet S6 or S7 made untracked (the old datapath would have kept
    /// the earlier entry instead).
    S6S7Recreated,
    /// S8's egress pickup.
    S8Pickup,
}

impl Ct {
    /// README "Conntrack": "FIN/RST shorten the entry's life": a flow reset,
    /// or finished both ways, is closing (a new SYN may open it again).
    fn closing(&self) -> bool {
        self.rst || (self.fin_a && self.fin_b)
    }
}

#[derive(Default)]
struct Model {
    ct: HashMap<FlowKey, Ct>,
    /// First fragments that passed, and when.
    frags: HashMap<(IpAddr, IpAddr, u32, u8), Instant>,
    own: Vec<IpAddr>,
    /// Responder packets at ingress judged by S6's amendment (J == O).
    s6_amendment_checks: u64,
    /// For the report only: flows S7 deleted, or that the flush removed
    /// after a new rule (S4, S6, S7, S8) created them.
    new_rule_deleted: std::collections::HashSet<FlowKey>,
    /// README "Conntrack": flows a policy change revoked (the flush, or
    /// S7's re-judge) that egress pick-up (S8) must not bring back.
    revoked: std::collections::HashSet<FlowKey>,
}

/// The quote of an ICMP error, as the generator built it.
#[derive(Clone, Debug)]
struct Quote {
    /// The quoted header is of the outer packet's family (S1b).
    same_family: bool,
    /// The quote holds the 4 port bytes / the echo identifier (S1b).
    complete: bool,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
}

/// What a generated frame is, for the model.
#[derive(Clone, Debug)]
struct Case {
    kind: &'static str,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Ports as the datapath sees them (echo identifiers for ICMP echo).
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    wscale: Option<u8>,
    /// Transport payload bytes (TCP sequence space).
    payload_len: u32,
    icmp_type: Option<u8>,
    icmp_code: u8,
    /// 0: not a fragment, 1: first fragment, 2: later fragment.
    frag: u8,
    ident: u32,
    /// The IP packet's length (IPv4 total length, IPv6 40 + payload length).
    ip_len: usize,
    hop_limit: u8,
    /// IPv6 extension headers in the chain, the fragment header included.
    ext_headers: usize,
    /// ICMPv6 message length (payload length minus extension headers).
    icmp_len: usize,
    quote: Option<Quote>,
    /// Cut short inside the headers.
    malformed: bool,
    /// No Ethernet header (S3), and a version nibble that is neither 4 nor 6.
    l3: bool,
    bad_version: bool,
}

fn is_icmp(p: u8) -> bool {
    p == 1 || p == 58
}

/// README "Conntrack": "A TCP SYN (or the first UDP/SCTP/other packet, or an
/// ICMP echo request) that the policy allows creates an LRU entry".
fn is_opener(c: &Case) -> bool {
    match c.proto {
        6 => c.tcp_flags & (SYN | ACK | RST | FIN) == SYN,
        1 => c.icmp_type == Some(8),
        58 => c.icmp_type == Some(128),
        _ => true,
    }
}

/// S1: the ICMP error types.
fn is_icmp_error(c: &Case) -> bool {
    match (c.proto, c.icmp_type) {
        (1, Some(t)) => matches!(t, 3 | 4 | 11 | 12),
        (58, Some(t)) => matches!(t, 1..=4),
        _ => false,
    }
}

/// S1d: the code fits the type.
fn icmp_error_code_fits(proto: u8, ty: u8, code: u8) -> bool {
    match (proto, ty) {
        (1, 3) => code <= 15,
        (1, 4) => code == 0,
        (1, 11) => code <= 1,
        (1, 12) => code <= 2,
        (58, 1) => code <= 7,
        (58, 2) => code == 0,
        (58, 3) => code <= 1,
        (58, 4) => code <= 3,
        _ => false,
    }
}

/// S2: "ICMPv6 types 133-137 (RS, RA, NS, NA, Redirect) and MLD 130, 131,
/// 132, 143".
fn is_nd_or_mld(c: &Case) -> bool {
    c.proto == 58 && matches!(c.icmp_type, Some(130..=137) | Some(143))
}

fn v6_of(a: IpAddr) -> Option<u128> {
    match a {
        IpAddr::V6(v) => Some(u128::from(v)),
        IpAddr::V4(_) => None,
    }
}

/// S2e: multicast is ff00::/8 (RFC 4291 2.7).
fn is_multicast6(a: u128) -> bool {
    a >> 120 == 0xff
}

/// S2e: "link-local unicast (fe80::/10)".
fn is_link_local6(a: u128) -> bool {
    a >> 118 == 0xfe80 >> 6
}

/// S2e: "ff02::1:ffXX:XXXX".
fn is_solicited_node(a: u128) -> bool {
    a >> 24 == 0xff02_0000_0000_0000_0000_0001_ff00_0000_u128 >> 24
}

/// Sequence number arithmetic (RFC 9293 3.4): `a` after `b`.
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What decided a verdict (for the mismatch report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Decided {
    Malformed,
    ExtHeaders,
    NeighborDiscovery,
    Martian,
    LaterFragment,
    /// Related to a tracked flow created by this origin.
    IcmpRelated(Origin),
    /// A tracked flow created by this origin.
    Conntrack(Origin),
    /// A packet of an audited flow from its initiator, on the hook that
    /// judged the flow.
    ConntrackAudited,
    /// A flow on which S8 ignored an out-of-window RST/FIN, or S6 refused a
    /// packet.
    ConntrackDiverged,
    /// An ICMP error whose own addresses match a tracked flow, which S1 says
    /// conntrack does not match.
    IcmpErrorNotTracked,
    /// A packet S5 dropped as a martian.
    AfterMartian,
    /// A tracked flow whose packet S6 says enters through the wrong side.
    Conntrack6Rejected,
    /// A tracked flow of an older generation that S7 deleted.
    Conntrack7Deleted,
    NotEnforced,
    Rule,
    /// Admitted by a failsafe entry.
    Failsafe,
    Audit,
    Denied,
    /// Denied, of a flow (or quoting a flow) that S7 deleted, or that the
    /// flush removed after a new rule created it.
    DeniedAfterNewRuleState,
}

impl Model {
    /// README "Hostile packets": "Truncated or inconsistent headers are
    /// dropped." S3: "any other value [of the version nibble] is
    /// `drop_malformed`".
    fn s3_malformed(c: &Case) -> bool {
        c.malformed || (c.l3 && c.bad_version)
    }

    /// S4: "a packet whose upper-layer header is not reached within 8 headers
    /// gets `drop_ext_headers`" (8 pass; 9 are dropped).
    fn s4_too_many_ext_headers(c: &Case) -> bool {
        c.dst.is_ipv6() && c.ext_headers > 8
    }

    /// S2: ND and MLD pass without a policy check only when all of a–e hold.
    fn s2_nd_passes(c: &Case) -> bool {
        if !is_nd_or_mld(c) {
            return false;
        }
        let ty = c.icmp_type.unwrap_or(0);
        // a. no fragment header anywhere in the chain.
        if c.frag != 0 {
            return false;
        }
        // b. code == 0.
        if c.icmp_code != 0 {
            return false;
        }
        // c. hop limit 255 for 133-137, 1 for MLD.
        let want_hl = if (133..=137).contains(&ty) { 255 } else { 1 };
        if c.hop_limit != want_hl {
            return false;
        }
        // d. message length at least the type's minimum, packet <= 1280.
        let min = match ty {
            133 => 8,
            134 => 16,
            135 | 136 => 24,
            137 => 40,
            130..=132 => 24,
            _ => 8,
        };
        if c.icmp_len < min || c.ip_len > 1280 {
            return false;
        }
        // e. the source address.
        let (Some(s), Some(d)) = (v6_of(c.src), v6_of(c.dst)) else {
            return false;
        };
        if is_multicast6(s) {
            return false;
        }
        match ty {
            134 | 137 | 130 => is_link_local6(s),
            131 | 132 | 143 => is_link_local6(s) || s == 0,
            135 => s != 0 || is_solicited_node(d),
            136 => s != 0,
            _ => true, // 133: any unicast or ::
        }
    }

    /// S5: at ingress, a source that is one of this host's own addresses is
    /// a martian (the unspecified addresses never are).
    /// S2f (amendment, 02:40): at ingress the destination must be on this
    /// link — link-local unicast, link-scope multicast (ffX2::/16) — or one
    /// of this host's own addresses; ND addressed to a host on another link
    /// is judged by the policy (the red team saw it routed on). At egress
    /// a message with the S2 hop limit can only come from this host.
    fn s2_on_this_link(&self, c: &Case, hook: Hook) -> bool {
        if hook == Hook::Egress {
            return true;
        }
        let Some(d) = v6_of(c.dst) else {
            return false;
        };
        is_link_local6(d)
            || (is_multicast6(d) && (d >> 112) & 0xf == 2)
            || self.own.contains(&c.dst)
    }

    fn s5_martian(&self, c: &Case, hook: Hook) -> bool {
        hook == Hook::Ingress && !c.src.is_unspecified() && self.own.contains(&c.src)
    }

    /// S1: an ICMP error passes as related only if a–f all hold.
    /// Returns the related entry.
    fn s1_icmp_related(&self, c: &Case) -> Option<&Ct> {
        let q = c.quote.as_ref()?;
        let ty = c.icmp_type.unwrap_or(0);
        // a. not a fragment.
        (c.frag == 0
            // b. the quote parses, same family.
            && q.same_family
            && q.complete
            // c. outer destination == quoted source.
            && c.dst == q.src
            // d. the code fits the type.
            && icmp_error_code_fits(c.proto, ty, c.icmp_code)
            // e. bounded length.
            && c.ip_len <= if c.dst.is_ipv6() { 1280 } else { 576 })
        .then_some(())?;
        // f. the quoted flow is tracked (a plain lookup: no direction rule,
        // and — my reading — no generation re-judge either).
        self.ct
            .get(&flow(q.src, q.sport, q.dst, q.dport, q.proto).0)
    }

    /// S6: at ingress on ifindex J, a packet matches its flow only if it
    /// enters through the side it belongs to; at egress always.
    fn s6_side_ok(e: &Ct, from_initiator: bool, hook: Hook, j: u32) -> bool {
        if hook == Hook::Egress {
            return true;
        }
        match (e.hook, from_initiator) {
            (Hook::Ingress, true) => j == e.ifindex,
            // Amendment (01:05 UTC): once the initiator's packets met the
            // egress hook on O, the responder must come in on O.
            (Hook::Ingress, false) => match e.egress_if {
                Some(o) => j == o,
                None => j != e.ifindex,
            },
            (Hook::Egress, false) => j == e.ifindex,
            (Hook::Egress, true) => j != e.ifindex,
        }
    }

    /// The flow as its initiator opened it (S7): initiator -> responder,
    /// protocol, responder port (0 for ICMP).
    fn opened_as(key: &FlowKey, e: &Ct) -> (IpAddr, IpAddr, u8, u16) {
        let addr = |end: &End| -> IpAddr {
            if end.0 == 4 {
                IpAddr::V4(Ipv4Addr::from(end.1[0].to_ne_bytes()))
            } else {
                let mut b = [0u8; 16];
                for (i, w) in end.1.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
        };
        let (a, b) = (&key.0, &key.1);
        let (s, d) = if e.initiator_a { (a, b) } else { (b, a) };
        let port = if is_icmp(key.2) { 0 } else { d.2 };
        (addr(s), addr(d), key.2, port)
    }

    /// S7 / README "Hot reload": whether the policy in force admits a tracked
    /// flow — "a rule, the creating hook not enforced, or the destination in
    /// audit mode". Returns (admitted, by a rule).
    fn s7_admits(p: &PolicyDesc, key: &FlowKey, e: &Ct) -> (bool, bool) {
        let (s, d, proto, port) = Self::opened_as(key, e);
        let rule = p.first_match(s, d, proto, port).is_some();
        let ok = !p.enforced(e.hook == Hook::Egress) || rule || p.audit_dst(d);
        (ok, rule)
    }

    /// The model has no clock. So that the kernel's timeouts (README
    /// "Conntrack": closing TCP 10 s, other 30 s, UDP and unanswered SYN 60
    /// s; README "Fragments": 30 s) never decide a verdict, flows and first
    /// fragments well on their way to a timeout are forgotten on both sides
    /// before a policy's packets (the kernel refreshes its clock once a
    /// second; a policy's packets take well under 3 s). Returns how many.
    fn sweep(
        &mut self,
        ct: &mut Conntrack,
        frags: &mut BpfHashMap<MapData, FragKey, FragValue>,
    ) -> usize {
        let now = Instant::now();
        let old: Vec<FlowKey> = self
            .ct
            .iter()
            .filter(|(k, e)| {
                let limit = if k.2 == 6 && e.closing() { 6.0 } else { 25.0 };
                now.duration_since(e.touched).as_secs_f64() > limit
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.ct.remove(k);
            ct.remove(&ct_key(k));
        }
        let old_frags: Vec<(IpAddr, IpAddr, u32, u8)> = self
            .frags
            .iter()
            .filter(|(_, t)| now.duration_since(**t).as_secs_f64() > 25.0)
            .map(|(k, _)| *k)
            .collect();
        for k in &old_frags {
            self.frags.remove(k);
            let fam = |a: IpAddr| if a.is_ipv6() { 6 } else { 4 };
            let _ = frags.remove(&FragKey {
                src: words(k.0),
                dst: words(k.1),
                id: k.2,
                proto: k.3,
                family: fam(k.0),
                _pad: [0; 2],
            });
        }
        old.len() + old_frags.len()
    }

    /// README "Hot reload": "tracked connections the new policy would not
    /// admit are flushed right after the switch"; audited flows a rule now
    /// admits lose their audit flag (S7's last sentence, and the flush).
    fn flush(&mut self, p: &PolicyDesc) {
        let mut gone = Vec::new();
        let mut revoked = Vec::new();
        self.ct.retain(|k, e| {
            let (ok, rule) = Self::s7_admits(p, k, e);
            if ok && rule {
                e.audit = false;
            }
            if !ok {
                revoked.push(*k);
            }
            if !ok && (e.origin != Origin::Opener || e.diverged) {
                gone.push(*k);
            }
            ok
        });
        self.new_rule_deleted.extend(gone);
        self.revoked.extend(revoked);
    }

    /// S8: a RST or FIN from side s changes state only when its sequence
    /// number lies in [end_s - maxwin_r - 1, end_s + maxwin_r] (mod 2^32).
    /// A side that has sent nothing has no end: I read that as out of window.
    fn s8_in_window(e: &Ct, s: usize, c: &Case) -> bool {
        let (me, peer, seq) = (e.tcp[s], e.tcp[1 - s], c.seq);
        if !me.seen {
            // README "Conntrack" (S8, a side that has sent nothing yet): only
            // a RST that acknowledges exactly what the other side sent — the
            // answer to its SYN when the port is closed (RFC 9293 3.10.7.3)
            // — is taken; its sequence number cannot be checked.
            return c.tcp_flags & (RST | ACK) == RST | ACK && peer.seen && c.ack == peer.end;
        }
        let lo = me.end.wrapping_sub(peer.maxwin).wrapping_sub(1);
        u64::from(seq.wrapping_sub(lo)) <= 2 * u64::from(peer.maxwin) + 1
    }

    /// S8: the window a side advertises, scaled by its window scale option
    /// (RFC 7323: only when both SYNs carried the option; never in a SYN).
    /// README "Conntrack": windows are "taken unscaled for a flow picked up
    /// at egress" (its SYNs were never seen).
    fn s8_scaled_window(e: &Ct, s: usize, c: &Case) -> u32 {
        let shift = match (e.tcp[s].wscale, e.tcp[1 - s].wscale) {
            _ if e.picked_up => 0,
            (Some(a), Some(_)) if c.tcp_flags & SYN == 0 => a.min(14),
            _ => 0,
        };
        u32::from(c.window) << shift
    }

    /// S8: what a packet of side s adds to that side's sequence space.
    fn s8_advance(e: &mut Ct, s: usize, c: &Case) {
        if c.tcp_flags & SYN != 0 {
            e.tcp[s].wscale = c.wscale;
        }
        let win = Self::s8_scaled_window(e, s, c);
        let mut end = c.seq.wrapping_add(c.payload_len);
        if c.tcp_flags & SYN != 0 {
            end = end.wrapping_add(1);
        }
        if c.tcp_flags & FIN != 0 {
            end = end.wrapping_add(1);
        }
        // README "Conntrack": "The sequence state is rewritten only when it
        // moves by more than half a window" (half the receiver's largest
        // window: the one a RST or FIN of this side is checked against).
        let half = e.tcp[1 - s].maxwin / 2;
        let side = &mut e.tcp[s];
        if !side.seen || (seq_after(end, side.end) && end.wrapping_sub(side.end) > half) {
            side.end = end;
        }
        side.maxwin = side.maxwin.max(win);
        side.seen = true;
    }

    /// README "Conntrack": the entry an admitted opener creates; S6: with its
    /// initiator, hook and interface; S7: with the active generation; S8:
    /// with the opener's sequence space and window.
    fn new_entry(
        c: &Case,
        from_a: bool,
        hook: Hook,
        ifindex: u32,
        active_gen: u64,
        audit: bool,
    ) -> Ct {
        let mut e = Ct {
            initiator_a: from_a,
            hook,
            ifindex,
            egress_if: None,
            generation: active_gen,
            audit,
            fin_a: false,
            fin_b: false,
            rst: false,
            tcp: [TcpSide::default(); 2],
            confirmed: false,
            synack_ok: false,
            picked_up: false,
            origin: if c.ext_headers == 8 {
                Origin::S4EightHeaders
            } else {
                Origin::Opener
            },
            diverged: false,
            rule: None,
            touched: Instant::now(),
        };
        if c.proto == 6 {
            // README "Conntrack": a FIN changes state only in the receiver's
            // window, which the opener's receiver has not shown yet: the
            // FIN of a segment picked up at egress is not taken.
            Self::s8_advance(&mut e, usize::from(!from_a), c);
        }
        e
    }

    #[allow(clippy::too_many_arguments)]
    /// The verdict for one packet, in the order the spec gives: malformed
    /// (README, S3), the extension-header limit (S4), ND/MLD (S2), martians
    /// (S5), later fragments (README "Fragments"), then the rest
    /// ([`Model::judge_first`]).
    fn judge(
        &mut self,
        p: &PolicyDesc,
        c: &Case,
        hook: Hook,
        ifindex: u32,
        active_gen: u64,
    ) -> (bool, Decided) {
        if Self::s3_malformed(c) {
            return (false, Decided::Malformed);
        }
        if Self::s4_too_many_ext_headers(c) {
            return (false, Decided::ExtHeaders);
        }
        // S2: ND/MLD that pass are exempt from the martian check (S5).
        if Self::s2_nd_passes(c) && self.s2_on_this_link(c, hook) {
            return (true, Decided::NeighborDiscovery);
        }
        if self.s5_martian(c, hook) {
            // (For the report: the old datapath may have tracked it.)
            self.new_rule_deleted
                .insert(flow(c.src, c.sport, c.dst, c.dport, c.proto).0);
            return (false, Decided::Martian);
        }
        // README "Fragments": "later fragments pass only behind a first
        // fragment that passed, and are dropped otherwise"; README "Audit
        // mode": what the policy would drop passes when the destination
        // audits.
        if c.frag == 2 {
            if self.frags.contains_key(&(c.src, c.dst, c.ident, c.proto)) {
                return (true, Decided::LaterFragment);
            }
            return (p.audit_dst(c.dst), Decided::LaterFragment);
        }
        let verdict = self.judge_first(p, c, hook, ifindex, active_gen);
        // README "Fragments": "a first fragment ... if it passes, remembered".
        if verdict.0 && c.frag == 1 {
            self.frags
                .insert((c.src, c.dst, c.ident, c.proto), Instant::now());
        }
        verdict
    }

    /// A packet that is not a later fragment: ICMP errors (S1), conntrack
    /// (README "Conntrack", S6, S7, S8), then the policy (README, policy.md
    /// "Enforcement and modes"), and the state an admitted packet creates.
    fn judge_first(
        &mut self,
        p: &PolicyDesc,
        c: &Case,
        hook: Hook,
        ifindex: u32,
        active_gen: u64,
    ) -> (bool, Decided) {
        let icmp_error = is_icmp_error(c);
        // S1: an ICMP error passes as related only under S1 a–f.
        if icmp_error && let Some(e) = self.s1_icmp_related(c) {
            return (true, Decided::IcmpRelated(e.origin));
        }
        let (key, from_a) = flow(c.src, c.sport, c.dst, c.dport, c.proto);
        let mut tracked_rejected = None;
        // README "Conntrack": "A SYN (or echo request) is judged by the
        // policy without a conntrack lookup". S1: an ICMP error that is not
        // related is not matched by conntrack.
        let skip_lookup = is_opener(c) && (c.proto == 6 || is_icmp(c.proto)) || icmp_error;
        if icmp_error && self.ct.contains_key(&key) {
            tracked_rejected = Some(Decided::IcmpErrorNotTracked);
        }
        if !skip_lookup && let Some(e) = self.ct.get(&key).copied() {
            let from_initiator = e.initiator_a == from_a;
            // S6: a packet finds its flow only through the side it belongs
            // to; through another it is judged as untracked.
            let mut found = Self::s6_side_ok(&e, from_initiator, hook, ifindex);
            if !found {
                self.ct.get_mut(&key).unwrap().diverged = true;
                tracked_rejected = Some(Decided::Conntrack6Rejected);
            }
            if found && e.generation != active_gen {
                // S7 / README "Hot reload": re-judged by the active policy
                // as its initiator opened it, at the next packet that finds
                // it (whether or not that packet then proves part of the
                // flow); kept (generation updated) or deleted, and the
                // packet judged as untracked.
                let (ok, rule) = Self::s7_admits(p, &key, &e);
                if ok {
                    let e = self.ct.get_mut(&key).unwrap();
                    e.generation = active_gen;
                    if rule && e.audit {
                        e.audit = false;
                        // (For the report: only S7 promotes here.)
                        e.diverged = true;
                    }
                } else {
                    self.ct.remove(&key);
                    self.new_rule_deleted.insert(key);
                    self.revoked.insert(key);
                    found = false;
                    tracked_rejected = Some(Decided::Conntrack7Deleted);
                }
            }
            // S6 amendment / README "Conntrack": the way out O of an
            // ingress-created flow is the interface its initiator's packets
            // were first seen leaving by: recorded by the first packet from
            // the initiator that finds the flow at the egress hook, and
            // never changed.
            if found
                && hook == Hook::Egress
                && from_initiator
                && let Some(e) = self.ct.get_mut(&key)
                && e.hook == Hook::Ingress
                && e.egress_if.is_none()
            {
                e.egress_if = Some(ifindex);
            }
            // README "Conntrack": replies pass; a SYN from the responder, or
            // a new SYN on a closing flow, is no part of it; an ICMP packet
            // from the responder matches only as an echo reply.
            let mut matched = found;
            if c.proto == 6 {
                let syn_only = c.tcp_flags & (SYN | ACK) == SYN;
                if syn_only && (!from_initiator || e.closing()) {
                    matched = false;
                }
            } else if !from_initiator && is_icmp(c.proto) {
                matched &= matches!((c.proto, c.icmp_type), (1, Some(0)) | (58, Some(129)));
            }
            if matched && hook == Hook::Ingress && !from_initiator && e.egress_if.is_some() {
                self.s6_amendment_checks += 1;
            }
            if matched {
                // (As S7 left it.)
                let e = self.ct.get(&key).copied().unwrap_or(e);
                self.ct.get_mut(&key).unwrap().touched = Instant::now();
                let counted = c.proto != 6 || self.s8_track(&key, from_a, from_initiator, c);
                let now = self.ct.get_mut(&key).unwrap();
                if counted && !now.confirmed && Self::confirms(now, c, from_initiator) {
                    now.confirmed = true;
                }
                // README "Audit mode": every packet from an audited flow's
                // initiator on the hook that judged it counts as would-drop,
                // whatever created the entry or happened to it since.
                let d = if e.audit && from_initiator && hook == e.hook {
                    Decided::ConntrackAudited
                } else if e.diverged && e.origin == Origin::Opener {
                    Decided::ConntrackDiverged
                } else {
                    Decided::Conntrack(e.origin)
                };
                return (true, d);
            }
        }
        let enforced = p.enforced(hook == Hook::Egress);
        let port = if refpolicy_has_ports(c.proto) {
            c.dport
        } else {
            0
        };
        let first = p.first_match(c.src, c.dst, c.proto, port);
        let rule = first.is_some();
        let audit = p.audit_dst(c.dst);
        let decided = if !enforced {
            Decided::NotEnforced
        } else if first.is_some_and(|i| i < p.failsafe.len()) {
            Decided::Failsafe
        } else if rule {
            Decided::Rule
        } else if audit {
            Decided::Audit
        } else {
            let quoted = c
                .quote
                .as_ref()
                .map(|q| flow(q.src, q.sport, q.dst, q.dport, q.proto).0);
            let after_new = self.new_rule_deleted.contains(&key)
                || quoted.is_some_and(|k| self.new_rule_deleted.contains(&k));
            let d = if after_new && self.own.iter().any(|o| *o == c.src || *o == c.dst) {
                Decided::AfterMartian
            } else if after_new {
                Decided::DeniedAfterNewRuleState
            } else {
                Decided::Denied
            };
            return (false, tracked_rejected.unwrap_or(d));
        };
        if is_opener(c) && !icmp_error {
            // README "Conntrack": "a SYN the policy admits that belongs to a
            // live flow of the same initiator ... leaves that flow's entry as
            // it is".
            let live = self
                .ct
                .get(&key)
                .is_some_and(|e| e.initiator_a == from_a && !(c.proto == 6 && e.closing()));
            // README "Conntrack" (S6): a datagram opener that did not match
            // the flow's live entry (it came in through the wrong side)
            // passes by policy but never takes the entry over; a SYN or
            // echo request starts a new flow unless it belongs to a live
            // one of its sender.
            let keep = if skip_lookup {
                live
            } else {
                self.ct.contains_key(&key)
            };
            // A SYN or echo request looks its flow up only once the policy
            // admitted it: then it finds the live flow it belongs to, and
            // may be the initiator's first packet seen leaving (S6
            // amendment, as above).
            if skip_lookup
                && live
                && let Some(e) = self.ct.get_mut(&key)
            {
                e.touched = Instant::now();
                if hook == Hook::Egress && e.hook == Hook::Ingress && e.egress_if.is_none() {
                    e.egress_if = Some(ifindex);
                }
            }
            if !keep {
                let audited = enforced && !rule;
                let mut e = Self::new_entry(c, from_a, hook, ifindex, active_gen, audited);
                if tracked_rejected.is_some() || self.new_rule_deleted.contains(&key) {
                    e.origin = Origin::S6S7Recreated;
                }
                if enforced {
                    e.rule = first.map(|i| i as u32);
                }
                self.ct.insert(key, e);
            }
        } else if c.proto == 6
            && hook == Hook::Egress
            && c.tcp_flags & (SYN | RST) == 0
            && !self.ct.contains_key(&key)
            && !self.revoked.contains(&key)
            && (!enforced || rule)
        {
            // S8: at egress, a TCP packet without SYN and RST of an untracked
            // flow creates an entry (initiator = its source, hook egress)
            // when egress is not enforced or the policy admits it.
            let mut e = Self::new_entry(c, from_a, hook, ifindex, active_gen, false);
            e.origin = Origin::S8Pickup;
            e.picked_up = true;
            self.ct.insert(key, e);
        }
        (true, tracked_rejected.unwrap_or(decided))
    }

    /// README "Conntrack": "FIN/RST shorten the entry's life"; S8: only in
    /// window. Other segments extend the side's sequence space and window.
    /// Returns false for a RST or FIN out of window, which "changes
    /// nothing".
    fn s8_track(&mut self, key: &FlowKey, from_a: bool, from_initiator: bool, c: &Case) -> bool {
        let e = self.ct.get_mut(key).unwrap();
        let s = usize::from(!from_a);
        if c.tcp_flags & (RST | FIN) != 0 {
            if !Self::s8_in_window(e, s, c) {
                e.diverged = true;
                return false;
            }
            if c.tcp_flags & RST != 0 {
                e.rst = true;
            }
            if c.tcp_flags & FIN != 0 {
                if from_a {
                    e.fin_a = true
                } else {
                    e.fin_b = true
                }
            }
        }
        if c.tcp_flags & RST != 0 {
            // README "Conntrack": a RST is never learnt from — it ends the
            // flow, and its side stays one "that never sent anything else".
            return true;
        }
        // README "Capacity": "the SYN-ACK acknowledges the SYN": the
        // responder's first segment is a SYN-ACK whose acknowledgement
        // number is exactly the initiator's end.
        let i = usize::from(!e.initiator_a);
        if !from_initiator
            && !e.confirmed
            && c.tcp_flags & (SYN | ACK) == SYN | ACK
            && !e.tcp[s].seen
            && e.tcp[i].seen
            && c.ack == e.tcp[i].end
        {
            e.synack_ok = true;
        }
        Self::s8_advance(e, s, c);
        true
    }

    /// README "Capacity": whether this packet of a tracked, unconfirmed
    /// flow confirms it (after the packet's own state was learnt). TCP
    /// opened with a SYN: "the ACK [acknowledges] the SYN-ACK" — an ACK
    /// from the initiator, after the SYN-ACK that acknowledged the SYN,
    /// whose acknowledgement number lies between the responder's recorded
    /// end and that plus the initiator's largest window (the recorded end
    /// lags by up to half of it); picked up at egress: "when the responder
    /// answers acknowledging within the window" — an ACK from the
    /// responder within the initiator's window (at least 65,535) around
    /// the initiator's end; anything else: "when the responder answers".
    fn confirms(e: &Ct, c: &Case, from_initiator: bool) -> bool {
        if c.proto != 6 {
            return !from_initiator;
        }
        if c.tcp_flags & (ACK | RST | SYN) != ACK {
            return false;
        }
        let (i, r) = if e.initiator_a { (0, 1) } else { (1, 0) };
        if e.picked_up {
            let win = e.tcp[i].maxwin.max(65_535);
            let lo = e.tcp[i].end.wrapping_sub(win).wrapping_sub(1);
            return !from_initiator && u64::from(c.ack.wrapping_sub(lo)) <= 2 * u64::from(win) + 1;
        }
        from_initiator
            && e.synack_ok
            && e.tcp[r].seen
            && c.ack.wrapping_sub(e.tcp[r].end) <= e.tcp[i].maxwin
    }
}

fn refpolicy_has_ports(p: u8) -> bool {
    segment_tests::refpolicy::has_ports(p)
}

// ---------------------------------------------------------------------------
// Random frames.

fn addr(r: &mut Rng, family6: bool) -> IpAddr {
    if family6 {
        IpAddr::V6(v6(r.below(40) as u128))
    } else {
        IpAddr::V4(v4(r.below(40) as u32))
    }
}

const PORTS: [u16; 13] = [0, 1, 2, 3, 5, 8, 9, 10, 1000, 1001, 40000, 65534, 65535];

/// A flow the generator opened, with what it knows of both sides.
#[derive(Clone, Debug)]
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    /// 0 TCP, 1 UDP, 2 SCTP, 3 ICMP echo, 4 GRE, 5 ESP.
    l4: u8,
    hook: Hook,
    ifindex: u32,
    /// [initiator, responder]: initial and next sequence numbers, window,
    /// window scale option.
    isn: [u32; 2],
    next: [u32; 2],
    window: [u16; 2],
    wscale: [Option<u8>; 2],
    /// Where a routed flow leaves (and its replies come back in).
    out_if: u32,
}

struct Out {
    frame: Vec<u8>,
    case: Case,
    hook: Hook,
    ifindex: u32,
}

struct Gen {
    flows: Vec<Flow>,
    ifindexes: Vec<u32>,
    l3: bool,
    /// The next packet: a SYN|FIN probe of this flow (after an S8 RST/FIN).
    probe: Option<Flow>,
    /// The next packet: the responder's reply to a routed flow's packet that
    /// left on `out_if` (S6 amendment).
    routed_reply: Option<(usize, Flow)>,
}

fn base_case(kind: &'static str, src: IpAddr, dst: IpAddr) -> Case {
    Case {
        kind,
        src,
        dst,
        proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 1,
        ack: 0,
        window: 64240,
        wscale: None,
        payload_len: 0,
        icmp_type: None,
        icmp_code: 0,
        frag: 0,
        ident: 0,
        ip_len: 0,
        hop_limit: 64,
        ext_headers: 0,
        icmp_len: 0,
        quote: None,
        malformed: false,
        l3: false,
        bad_version: false,
    }
}

/// How to put a packet on the wire.
#[derive(Default, Clone, Copy)]
struct Wire {
    /// 0 whole, 1 first fragment (24 transport bytes, or all of them when
    /// `whole_first`), 2 a later fragment.
    frag: u8,
    whole_first: bool,
    l3: bool,
    vlans: u8,
    truncate: bool,
}

/// Serialises `p` and fills in what the model reads from the bytes.
fn finish(r: &mut Rng, p: &Packet, c: &mut Case, w: Wire) -> Vec<u8> {
    let six = p.v6();
    c.proto = p.l4.proto(six);
    c.ident = p.ident;
    c.hop_limit = p.hop_limit;
    c.payload_len = p.payload.len() as u32;
    c.seq = p.tcp_seq;
    c.ack = p.tcp_ack;
    c.window = p.tcp_window;
    c.wscale = p.tcp_wscale;
    let transport_len = p.transport().len();
    c.icmp_len = transport_len;
    let ip = match w.frag {
        1 => {
            c.frag = 1;
            let len = if w.whole_first { transport_len } else { 24 };
            // A first fragment shows only the data it carries: the segment's
            // end as far as anyone on the path can tell.
            let header = transport_len - p.payload.len();
            c.payload_len = len.saturating_sub(header) as u32;
            p.fragment(0, len, true)
        }
        2 => {
            c.frag = 2;
            p.fragment(3, transport_len, false)
        }
        _ => p.ip(),
    };
    c.ext_headers = if six {
        p.ipv6_ext.len() + usize::from(w.frag != 0)
    } else {
        0
    };
    c.ip_len = if six {
        40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
    } else {
        usize::from(u16::from_be_bytes([ip[2], ip[3]]))
    };
    let vlans: Vec<(u16, u16)> = match w.vlans {
        1 => vec![(TPID_8021Q, 10)],
        2 => vec![(TPID_8021AD, 10), (TPID_8021Q, 20)],
        _ => vec![],
    };
    let (mut frame, l2) = if w.l3 {
        c.l3 = true;
        (ip, 0)
    } else {
        (
            ethernet([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], &vlans, &ip),
            14 + 4 * vlans.len(),
        )
    };
    if w.truncate && w.frag != 2 {
        // Cut inside the headers: (Ethernet + tags +) IP + transport minimum.
        let ip_hdr = if six {
            40 + p
                .ipv6_ext
                .iter()
                .map(|(_, b)| (b.len() + 2).next_multiple_of(8))
                .sum::<usize>()
                + if w.frag != 0 { 8 } else { 0 }
        } else {
            20 + p.ipv4_options.len()
        };
        let l4_min = match c.proto {
            6 => 20,
            17 | 1 | 58 => 8,
            132 => 12,
            _ => 0,
        };
        let headers = l2 + ip_hdr + l4_min;
        let cut = l2 + r.below((headers - l2) as u64) as usize;
        frame.truncate(cut);
        c.malformed = true;
        // A cut inside an ICMP error's quote is not inside the headers.
        c.quote = None;
    }
    frame
}

impl Gen {
    fn any_ifindex(&self, r: &mut Rng) -> u32 {
        *r.pick(&self.ifindexes)
    }

    fn other_ifindex(&self, r: &mut Rng, not: u32) -> u32 {
        let others: Vec<u32> = self
            .ifindexes
            .iter()
            .copied()
            .filter(|&i| i != not)
            .collect();
        *r.pick(&others)
    }

    fn fresh_hook(&self, r: &mut Rng) -> (Hook, u32) {
        let hook = if r.chance(80) {
            Hook::Ingress
        } else {
            Hook::Egress
        };
        (hook, self.any_ifindex(r))
    }

    fn remember(&mut self, f: Flow) {
        self.flows.push(f);
        if self.flows.len() > 64 {
            self.flows.remove(0);
        }
    }

    /// The hook and interface a packet of `f` from the initiator (or the
    /// responder) takes on a host that runs the enforcer: mostly the natural
    /// one (S6), sometimes any.
    fn side_hook(&self, r: &mut Rng, f: &Flow, from_initiator: bool) -> (Hook, u32) {
        if r.chance(30) {
            return self.fresh_hook(r);
        }
        match (f.hook, from_initiator) {
            // Routed through this host: in on I, out on O, replies in on O.
            (Hook::Ingress, true) if r.chance(45) => (Hook::Egress, f.out_if),
            (h, true) => (h, f.ifindex),
            (Hook::Egress, false) => (Hook::Ingress, f.ifindex),
            (Hook::Ingress, false) => {
                if r.chance(50) {
                    (Hook::Egress, f.ifindex)
                } else {
                    (Hook::Ingress, f.out_if)
                }
            }
        }
    }

    fn next(&mut self, r: &mut Rng) -> Out {
        if let Some((i, f)) = self.routed_reply.take() {
            // Mostly in on O, as a routed reply does; sometimes on the
            // interface the flow came in on, which S6's amendment refuses.
            let mut out = self.flow_packet(r, &f, false, None, "S6 routed reply");
            out.hook = Hook::Ingress;
            out.ifindex = if r.chance(75) { f.out_if } else { f.ifindex };
            if i < self.flows.len() {
                self.flows[i] = self.advanced(&f, &out.case, false);
            }
            return out;
        }
        if let Some(f) = self.probe.take() {
            return self.flow_packet(
                r,
                &f,
                true,
                Some(SYN | FIN),
                "S8 probe SYN|FIN after RST/FIN",
            );
        }
        let mut out = match r.below(1000) {
            0..=399 => self.fresh(r),
            400..=649 => {
                if self.flows.is_empty() {
                    self.fresh(r)
                } else {
                    // Mostly a recent flow, so that flows see several packets
                    // (routed ones both hooks) while they live.
                    let n = self.flows.len();
                    let i = if r.chance(60) {
                        n - 1 - r.below(n.min(12) as u64) as usize
                    } else {
                        r.below(n as u64) as usize
                    };
                    let f = self.flows[i].clone();
                    let from_initiator = r.chance(45);
                    let out = self.flow_packet(r, &f, from_initiator, None, "");
                    self.flows[i] = self.advanced(&f, &out.case, from_initiator);
                    if from_initiator
                        && f.hook == Hook::Ingress
                        && out.hook == Hook::Egress
                        && r.chance(70)
                    {
                        self.routed_reply = Some((i, self.flows[i].clone()));
                    }
                    out
                }
            }
            650..=729 => self.icmp_error(r),
            730..=789 => self.neighbor(r),
            790..=819 => self.ext_chain(r),
            820..=859 => self.mapped(r),
            860..=889 => self.own_source(r),
            890..=969 => self.rst_fin(r),
            _ => self.egress_pickup(r),
        };
        if self.l3 && r.chance(12) && !out.case.malformed && out.frame.len() == 14 + out.case.ip_len
        {
            // S3: the same IP packet without an Ethernet header, through the
            // L3 programs; sometimes with a version nibble that is neither 4
            // nor 6, or cut inside the IP header.
            out.frame.drain(..14);
            out.case.l3 = true;
            match r.below(12) {
                0 => {
                    let v = *r.pick(&[0u8, 1, 5, 7, 15]);
                    out.frame[0] = (v << 4) | (out.frame[0] & 0x0f);
                    out.case.bad_version = true;
                    out.case.kind = "S3 L3 bad version";
                }
                1 => {
                    let hdr = if out.case.dst.is_ipv6() { 40 } else { 20 };
                    // At least 14 bytes: the kernel runs nothing shorter.
                    out.frame.truncate(14 + r.below(hdr - 14) as usize);
                    out.case.malformed = true;
                    out.case.quote = None;
                    out.case.kind = "S3 L3 truncated";
                }
                _ => {}
            }
        }
        out
    }

    /// A packet of a flow the generator opened earlier.
    fn flow_packet(
        &mut self,
        r: &mut Rng,
        f: &Flow,
        from_initiator: bool,
        flags: Option<u8>,
        kind: &'static str,
    ) -> Out {
        let (src, dst, sport, dport) = if from_initiator {
            (f.src, f.dst, f.sport, f.dport)
        } else {
            (f.dst, f.src, f.dport, f.sport)
        };
        let (hook, ifindex) = self.side_hook(r, f, from_initiator);
        let s = usize::from(!from_initiator);
        let kind = if !kind.is_empty() {
            kind
        } else {
            match f.l4 {
                0 => "flow: tcp",
                3 => "flow: icmp echo",
                _ => "flow: udp/sctp/other",
            }
        };
        let mut c = base_case(kind, src, dst);
        let six = dst.is_ipv6();
        let l4 = match f.l4 {
            0 => {
                let flags = flags.unwrap_or_else(|| {
                    *r.pick(&[
                        SYN,
                        SYN | ACK,
                        ACK,
                        ACK,
                        ACK | PSH,
                        ACK | PSH,
                        FIN | ACK,
                        RST,
                        RST | ACK,
                        SYN | FIN,
                        0,
                    ])
                });
                c.tcp_flags = flags;
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                }
            }
            1 => L4::Udp { sport, dport },
            2 => L4::Sctp { sport, dport },
            3 => {
                let (req, rep) = if six { (128, 129) } else { (8, 0) };
                let ty = if from_initiator { req } else { rep };
                c.icmp_type = Some(ty);
                L4::Icmp {
                    ty,
                    code: 0,
                    id: f.sport,
                    seq: 1,
                }
            }
            4 => L4::Other(47),
            _ => L4::Other(50),
        };
        (c.sport, c.dport) = match l4 {
            L4::Icmp { id, .. } if from_initiator => (id, 0),
            L4::Icmp { id, .. } => (0, id),
            L4::Other(_) => (0, 0),
            _ => (sport, dport),
        };
        let mut p = Packet::new(src, dst, l4);
        p.payload = vec![0x5a; r.below(80) as usize];
        if f.l4 == 0 {
            let syn = c.tcp_flags & SYN != 0;
            p.tcp_seq = if syn {
                f.isn[s]
            } else if r.chance(85) {
                f.next[s]
            } else {
                f.next[s].wrapping_add(r.below(3000) as u32)
            };
            p.tcp_ack = f.next[1 - s];
            p.tcp_window = f.window[s];
            if syn {
                p.tcp_wscale = f.wscale[s];
            }
        }
        let wire = Wire {
            vlans: if r.chance(10) { 1 } else { 0 },
            ..Wire::default()
        };
        let frame = finish(r, &p, &mut c, wire);
        Out {
            frame,
            case: c,
            hook,
            ifindex,
        }
    }

    /// The generator's view of `f` after it sent `c`.
    fn advanced(&self, f: &Flow, c: &Case, from_initiator: bool) -> Flow {
        let mut f = f.clone();
        if f.l4 == 0 {
            let s = usize::from(!from_initiator);
            let mut end = c.seq.wrapping_add(c.payload_len);
            if c.tcp_flags & SYN != 0 {
                end = end.wrapping_add(1);
            }
            if c.tcp_flags & FIN != 0 {
                end = end.wrapping_add(1);
            }
            if seq_after(end, f.next[s]) {
                f.next[s] = end;
            }
        }
        f
    }

    /// New traffic: random addresses, ports and protocols, with the hostile
    /// shapes of README "Hostile packets".
    fn fresh(&mut self, r: &mut Rng) -> Out {
        let six = r.chance(25);
        let (src, dst) = (addr(r, six), addr(r, six));
        let (sport, dport) = (*r.pick(&PORTS), *r.pick(&PORTS));
        let kind = r.below(7) as u8;
        let (hook, ifindex) = self.fresh_hook(r);
        self.new_flow_packet(r, src, dst, sport, dport, kind, hook, ifindex, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_flow_packet(
        &mut self,
        r: &mut Rng,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        kind: u8,
        hook: Hook,
        ifindex: u32,
        label: Option<&'static str>,
    ) -> Out {
        let six = dst.is_ipv6();
        let mut c = base_case("", src, dst);
        let (mut sport, mut dport) = (sport, dport);
        let l4 = match kind {
            0 | 1 => {
                let flags = *r.pick(&[
                    SYN,
                    SYN,
                    SYN | ACK,
                    ACK,
                    ACK | PSH,
                    FIN | ACK,
                    RST,
                    RST | ACK,
                    SYN | FIN,
                    0,
                ]);
                c.tcp_flags = flags;
                c.kind = "tcp";
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                }
            }
            2 => {
                c.kind = "udp";
                L4::Udp { sport, dport }
            }
            3 => {
                c.kind = "sctp";
                L4::Sctp { sport, dport }
            }
            4 => {
                // Echo request / reply with the "port" trick, or another type.
                let id = sport;
                let (req, rep) = if six { (128, 129) } else { (8, 0) };
                let ty = match r.below(10) {
                    0..=4 => req,
                    5..=7 => rep,
                    _ => {
                        if six {
                            139
                        } else {
                            13
                        }
                    }
                };
                (sport, dport) = if ty == req {
                    (id, 0)
                } else if ty == rep {
                    (0, id)
                } else {
                    (0, 0)
                };
                c.kind = if ty == req || ty == rep {
                    "icmp echo"
                } else {
                    "icmp other"
                };
                c.icmp_type = Some(ty);
                L4::Icmp {
                    ty,
                    code: 0,
                    id,
                    seq: 1,
                }
            }
            5 => {
                (sport, dport) = (0, 0);
                c.kind = "other proto";
                L4::Other(47)
            }
            _ => {
                (sport, dport) = (0, 0);
                c.kind = "other proto";
                L4::Other(50)
            }
        };
        if let Some(l) = label {
            c.kind = l;
        }
        (c.sport, c.dport) = (sport, dport);
        let mut p = Packet::new(src, dst, l4);
        p.ident = r.below(1 << 16) as u32;
        p.payload = vec![0x5a; r.below(80) as usize];
        let mut isn = [r.next_u64() as u32, r.next_u64() as u32];
        let window = [1000 + r.below(64536) as u16, 1000 + r.below(64536) as u16];
        let wscale = if r.chance(50) {
            let a = r.below(9) as u8;
            [
                Some(a),
                if r.chance(90) {
                    Some(r.below(9) as u8)
                } else {
                    None
                },
            ]
        } else {
            [None, None]
        };
        if let L4::Tcp { flags, .. } = l4 {
            if flags & (SYN | ACK) == SYN | ACK {
                // A SYN-ACK without a SYN: seq is the responder's.
                isn.swap(0, 1);
            }
            p.tcp_seq = if flags & SYN != 0 {
                isn[0]
            } else {
                isn[0].wrapping_add(1)
            };
            p.tcp_window = window[0];
            if flags & SYN != 0 {
                p.tcp_wscale = wscale[0];
            }
        }
        let is_echo_req = matches!(c.icmp_type, Some(8) | Some(128));
        if (c.icmp_type.is_none() || is_echo_req) && label != Some("S5 own source ingress") {
            let l4k = match kind {
                0 | 1 => 0,
                2 => 1,
                3 => 2,
                4 => 3,
                5 => 4,
                _ => 5,
            };
            let mut f = Flow {
                src,
                dst,
                sport,
                dport,
                l4: l4k,
                hook,
                ifindex,
                isn,
                next: [isn[0].wrapping_add(1), isn[1].wrapping_add(1)],
                window,
                wscale,
                out_if: self.other_ifindex(r, ifindex),
            };
            if is_echo_req {
                f.sport = sport;
            }
            let adv = self.advanced(&f, &c, true);
            self.remember(adv);
        }
        if !six && r.chance(10) {
            p.ipv4_options = vec![1; 4 * (1 + r.below(3) as usize)];
        }
        if six && r.chance(15) {
            p.ipv6_ext = (0..1 + r.below(3))
                .map(|_| (60u8, vec![1, 4, 0, 0, 0, 0]))
                .collect();
        }
        let transport_len = p.transport().len();
        let mut wire = Wire {
            vlans: match r.below(10) {
                0 => 1,
                1 => 2,
                _ => 0,
            },
            ..Wire::default()
        };
        if label.is_none() && r.chance(8) && transport_len > 24 {
            // Fragments: the first carries 24 transport bytes, a later one the
            // rest.
            wire.frag = if r.chance(50) { 1 } else { 2 };
            c.kind = if wire.frag == 1 {
                "fragment first"
            } else {
                "fragment later"
            };
        } else if label.is_none() && r.chance(4) {
            wire.truncate = true;
            c.kind = "truncated";
        }
        let frame = finish(r, &p, &mut c, wire);
        Out {
            frame,
            case: c,
            hook,
            ifindex,
        }
    }

    /// S1: ICMP errors quoting a flow, genuine and forged.
    fn icmp_error(&mut self, r: &mut Rng) -> Out {
        let quotable: Vec<Flow> = self.flows.iter().filter(|f| f.l4 <= 3).cloned().collect();
        if quotable.is_empty() {
            return self.fresh(r);
        }
        let f = r.pick(&quotable).clone();
        let six = f.src.is_ipv6();
        // The quoted packet was sent by the error's receiver: the initiator,
        // or (not for echo) the responder.
        let by_initiator = f.l4 == 3 || r.chance(60);
        let (qs, qd, qsp, qdp) = if by_initiator {
            (f.src, f.dst, f.sport, f.dport)
        } else {
            (f.dst, f.src, f.dport, f.sport)
        };
        let variant = r.below(9);
        let kind = match variant {
            0..=2 => "S1 error genuine",
            3 => "S1 error forged: outer dst",
            4 => "S1 error forged: code",
            5 => "S1 error forged: too long",
            6 => "S1 error forged: fragment",
            7 => "S1 error forged: untracked",
            _ => {
                if r.chance(50) {
                    "S1 error forged: family"
                } else {
                    "S1 error forged: short quote"
                }
            }
        };
        // The quoted 5-tuple, as the datapath's key sees it.
        let (qsp, qdp) = if kind == "S1 error forged: untracked" {
            (7777, 7778)
        } else {
            (qsp, qdp)
        };
        let (qproto, inner_l4) = match f.l4 {
            0 => (
                6,
                L4::Tcp {
                    sport: qsp,
                    dport: qdp,
                    flags: SYN,
                },
            ),
            1 => (
                17,
                L4::Udp {
                    sport: qsp,
                    dport: qdp,
                },
            ),
            2 => (
                132,
                L4::Sctp {
                    sport: qsp,
                    dport: qdp,
                },
            ),
            _ => (
                if six { 58 } else { 1 },
                L4::Icmp {
                    ty: if six { 128 } else { 8 },
                    code: 0,
                    id: qsp,
                    seq: 1,
                },
            ),
        };
        let (key_sport, key_dport) = if f.l4 == 3 { (qsp, 0) } else { (qsp, qdp) };
        let family_forged = kind == "S1 error forged: family";
        let inner = if family_forged {
            // The other family's header inside.
            let (a, b) = if six {
                (IpAddr::V4(v4(1)), IpAddr::V4(v4(2)))
            } else {
                (IpAddr::V6(v6(1)), IpAddr::V6(v6(2)))
            };
            let l4 = match inner_l4 {
                L4::Icmp { id, .. } => L4::Udp {
                    sport: id,
                    dport: 0,
                },
                other => other,
            };
            Packet::new(a, b, l4).ip()
        } else {
            Packet::new(qs, qd, inner_l4).ip()
        };
        let inner_hdr = if inner[0] >> 4 == 6 { 40 } else { 20 };
        let quote_len = if kind == "S1 error forged: short quote" {
            inner_hdr + 2
        } else {
            inner.len().min(inner_hdr + 8)
        };
        let mut payload = inner[..quote_len].to_vec();
        let (ty, code) = {
            let v4types: [(u8, u8); 4] = [(3, 15), (4, 0), (11, 1), (12, 2)];
            let v6types: [(u8, u8); 4] = [(1, 7), (2, 0), (3, 1), (4, 3)];
            let (ty, max) = *r.pick(if six { &v6types } else { &v4types });
            let code = if kind == "S1 error forged: code" {
                max + 1 + r.below(3) as u8
            } else {
                r.below(u64::from(max) + 1) as u8
            };
            (ty, code)
        };
        // A router on the path or the quoted destination sends it.
        let outer_src = if r.chance(70) { qd } else { addr(r, six) };
        let outer_dst = if kind == "S1 error forged: outer dst" {
            let mut d = addr(r, six);
            if d == qs {
                d = if six {
                    IpAddr::V6(v6(41))
                } else {
                    IpAddr::V4(v4(41))
                };
            }
            d
        } else {
            qs
        };
        let limit = if six { 1280 } else { 576 };
        let hdr = if six { 48 } else { 28 };
        if kind == "S1 error forged: too long" {
            payload.resize(limit - hdr + 1 + r.below(200) as usize, 0);
        } else if kind != "S1 error forged: short quote" && r.chance(30) {
            // Genuine errors quote as much as fits (a short quote must end
            // the packet: padding after it would be read as its ports).
            payload.resize(limit - hdr - r.below(100) as usize, 0);
        }
        let mut c = base_case(kind, outer_src, outer_dst);
        c.icmp_type = Some(ty);
        c.icmp_code = code;
        c.quote = Some(Quote {
            same_family: !family_forged,
            complete: kind != "S1 error forged: short quote",
            src: qs,
            sport: key_sport,
            dst: qd,
            dport: key_dport,
            proto: qproto,
        });
        let mut p = Packet::new(
            outer_src,
            outer_dst,
            L4::Icmp {
                ty,
                code,
                id: 0,
                seq: 0,
            },
        );
        p.payload = payload;
        p.ident = r.below(1 << 16) as u32;
        let wire = Wire {
            frag: if kind == "S1 error forged: fragment" {
                if r.chance(50) { 1 } else { 2 }
            } else {
                0
            },
            whole_first: true,
            ..Wire::default()
        };
        let (hook, ifindex) = self.fresh_hook(r);
        let frame = finish(r, &p, &mut c, wire);
        Out {
            frame,
            case: c,
            hook,
            ifindex,
        }
    }

    /// S2: neighbour discovery and MLD, valid and not.
    fn neighbor(&mut self, r: &mut Rng) -> Out {
        let ty = *r.pick(&[133u8, 134, 135, 136, 137, 130, 131, 132, 143]);
        let min = match ty {
            133 | 143 => 8,
            134 => 16,
            135 | 136 | 130..=132 => 24,
            _ => 40,
        };
        let variant = r.below(10);
        let kind = match variant {
            0..=3 => "S2 ND/MLD valid",
            4 => "S2 ND/MLD bad hop limit",
            5 => "S2 ND/MLD bad source",
            6 => "S2 ND/MLD fragment header",
            7 => "S2 ND/MLD short",
            8 => "S2 ND/MLD too long",
            _ => "S2 ND/MLD bad code",
        };
        let ll = |r: &mut Rng| -> u128 { (0xfe80u128 << 112) | u128::from(r.below(0x60) as u32) };
        let global = |r: &mut Rng| -> u128 { V6_BASE | u128::from(r.below(40) as u32) };
        let solicited = |r: &mut Rng| -> u128 {
            (0xff02u128 << 112)
                | (1u128 << 32)
                | (0xffu128 << 24)
                | u128::from(r.below(1 << 24) as u32)
        };
        let nd = (133..=137).contains(&ty);
        // A valid source for the type (S2e).
        let mut src: u128 = match ty {
            134 | 137 | 130 => ll(r),
            131 | 132 | 143 => {
                if r.chance(25) {
                    0
                } else {
                    ll(r)
                }
            }
            135 | 133 => match r.below(4) {
                0 => 0,
                1 => global(r),
                _ => ll(r),
            },
            _ => {
                if r.chance(50) {
                    global(r)
                } else {
                    ll(r)
                }
            }
        };
        let mut dst: u128 = match r.below(4) {
            0 => 0xff02u128 << 112 | 1,
            1 => solicited(r),
            2 => 0xff02u128 << 112 | 2,
            _ => global(r),
        };
        if ty == 135 && src == 0 {
            dst = solicited(r);
        }
        if kind == "S2 ND/MLD bad source" {
            match ty {
                134 | 137 | 130 => src = global(r),
                135 if r.chance(50) => {
                    src = 0;
                    dst = global(r);
                }
                136 => src = 0,
                131 | 132 | 143 => src = global(r),
                _ => src = 0xff02u128 << 112 | 1,
            }
            if r.chance(25) {
                src = 0xff02u128 << 112 | 1;
            }
        }
        let mut hop_limit = if nd { 255 } else { 1 };
        if kind == "S2 ND/MLD bad hop limit" {
            hop_limit = *r.pick(&[64u8, 254, 0, if nd { 1 } else { 255 }]);
        }
        let code = if kind == "S2 ND/MLD bad code" {
            1 + r.below(200) as u8
        } else {
            0
        };
        let mut msg_len = min + 8 * r.below(4) as usize;
        if kind == "S2 ND/MLD short" {
            // The 8-byte ICMPv6 header is always there.
            msg_len = 8.max(min.saturating_sub(8 * (1 + r.below(2) as usize)));
        }
        if kind == "S2 ND/MLD too long" {
            msg_len = 1400 + r.below(300) as usize;
        }
        let (s, d) = (
            IpAddr::V6(Ipv6Addr::from(src)),
            IpAddr::V6(Ipv6Addr::from(dst)),
        );
        let mut c = base_case(kind, s, d);
        c.icmp_type = Some(ty);
        c.icmp_code = code;
        let mut p = Packet::new(
            s,
            d,
            L4::Icmp {
                ty,
                code,
                id: 0,
                seq: 0,
            },
        );
        p.payload = vec![0; msg_len - 8];
        p.hop_limit = hop_limit;
        p.ident = r.below(1 << 16) as u32;
        if !nd && r.chance(50) {
            // MLD usually carries a router alert in a hop-by-hop header.
            p.ipv6_ext = vec![(0, vec![5, 2, 0, 0, 1, 0])];
        } else if r.chance(10) {
            p.ipv6_ext = vec![(60, vec![1, 4, 0, 0, 0, 0])];
        }
        let wire = Wire {
            frag: if kind == "S2 ND/MLD fragment header" {
                1
            } else {
                0
            },
            whole_first: true,
            ..Wire::default()
        };
        let (hook, ifindex) = self.fresh_hook(r);
        let frame = finish(r, &p, &mut c, wire);
        Out {
            frame,
            case: c,
            hook,
            ifindex,
        }
    }

    /// S4: IPv6 extension-header chains of 7, 8 and 9 headers.
    fn ext_chain(&mut self, r: &mut Rng) -> Out {
        let n = 7 + r.below(3) as usize;
        let (src, dst) = (addr(r, true), addr(r, true));
        let kind = match n {
            7 => "S4 ext chain 7",
            8 => "S4 ext chain 8",
            _ => "S4 ext chain 9",
        };
        let (hook, ifindex) = self.fresh_hook(r);
        let proto = *r.pick(&[0u8, 2, 4]);
        let (sp, dp) = (*r.pick(&PORTS), *r.pick(&PORTS));
        let mut out = self.new_flow_packet(r, src, dst, sp, dp, proto, hook, ifindex, Some(kind));
        // Rebuild with the chain: hop-by-hop first (sometimes), then
        // destination options and routing headers.
        let mut p = Packet::new(
            src,
            dst,
            match out.case.proto {
                6 => L4::Tcp {
                    sport: out.case.sport,
                    dport: out.case.dport,
                    flags: out.case.tcp_flags,
                },
                17 => L4::Udp {
                    sport: out.case.sport,
                    dport: out.case.dport,
                },
                _ => L4::Icmp {
                    ty: out.case.icmp_type.unwrap_or(128),
                    code: 0,
                    id: out.case.sport.max(out.case.dport),
                    seq: 1,
                },
            },
        );
        p.tcp_seq = out.case.seq;
        p.tcp_window = out.case.window;
        p.tcp_wscale = out.case.wscale;
        p.payload = vec![0x5a; out.case.payload_len as usize];
        p.ipv6_ext = (0..n)
            .map(|i| {
                if i == 0 && r.chance(50) {
                    (0u8, vec![1, 4, 0, 0, 0, 0])
                } else if r.chance(20) {
                    // Routing header type 4, no segments left.
                    (43u8, vec![4, 0, 0, 0, 0, 0])
                } else {
                    (60u8, vec![1, 4, 0, 0, 0, 0])
                }
            })
            .collect();
        let mut c = out.case.clone();
        out.frame = finish(r, &p, &mut c, Wire::default());
        out.case = c;
        out
    }

    /// IPv4-mapped (`::ffff:10.0.0.x`) and -compatible (`::10.0.0.x`) IPv6
    /// addresses: IPv6, distinct from 10.0.0.x.
    fn mapped(&mut self, r: &mut Rng) -> Out {
        let pick = |r: &mut Rng| -> IpAddr {
            match r.below(4) {
                0 | 1 => IpAddr::V6(mapped(r.below(40) as u32)),
                2 => IpAddr::V6(compat(r.below(40) as u32)),
                _ => addr(r, true),
            }
        };
        let src = pick(r);
        let mut dst = pick(r);
        if !src.to_string().contains('.') && !dst.to_string().contains('.') {
            dst = IpAddr::V6(mapped(r.below(40) as u32));
        }
        let (hook, ifindex) = self.fresh_hook(r);
        let proto = *r.pick(&[0u8, 2, 3, 4]);
        let (sp, dp) = (*r.pick(&PORTS), *r.pick(&PORTS));
        self.new_flow_packet(
            r,
            src,
            dst,
            sp,
            dp,
            proto,
            hook,
            ifindex,
            Some("mapped/compat IPv6"),
        )
    }

    /// S5: this host's own addresses as the source.
    fn own_source(&mut self, r: &mut Rng) -> Out {
        let own = own_addresses();
        let variant = r.below(3);
        let six = r.chance(50);
        let src = match (variant, six) {
            (2, _) => IpAddr::V6(mapped(50)),
            (_, false) => own[0],
            (_, true) => *r.pick(&own[1..]),
        };
        let dst = addr(r, src.is_ipv6());
        let (hook, kind) = if variant == 1 {
            (Hook::Egress, "S5 own source egress")
        } else if variant == 2 {
            (Hook::Ingress, "S5 mapped own source ingress")
        } else {
            (Hook::Ingress, "S5 own source ingress")
        };
        let ifindex = self.any_ifindex(r);
        let proto = r.below(7) as u8;
        let (sp, dp) = (*r.pick(&PORTS), *r.pick(&PORTS));
        self.new_flow_packet(r, src, dst, sp, dp, proto, hook, ifindex, Some(kind))
    }

    /// S8: RST and FIN in and out of window on a live TCP flow.
    fn rst_fin(&mut self, r: &mut Rng) -> Out {
        let tcp: Vec<usize> = (0..self.flows.len())
            .filter(|&i| self.flows[i].l4 == 0)
            .collect();
        if tcp.is_empty() {
            return self.fresh(r);
        }
        let i = *r.pick(&tcp);
        let f = self.flows[i].clone();
        let from_initiator = r.chance(50);
        let flags = *r.pick(&[RST, RST | ACK, FIN | ACK]);
        let in_window = r.chance(50);
        let kind = if in_window {
            "S8 RST/FIN in window"
        } else {
            "S8 RST/FIN out of window"
        };
        let mut out = self.flow_packet(r, &f, from_initiator, Some(flags), kind);
        let s = usize::from(!from_initiator);
        let seq = if in_window {
            f.next[s].wrapping_add(r.below(64) as u32)
        } else {
            f.next[s].wrapping_add(0x1000_0000 + r.below(0x6000_0000) as u32)
        };
        let mut p = Packet::new(
            out.case.src,
            out.case.dst,
            L4::Tcp {
                sport: out.case.sport,
                dport: out.case.dport,
                flags,
            },
        );
        p.tcp_seq = seq;
        p.tcp_ack = f.next[1 - s];
        p.tcp_window = f.window[s];
        p.payload = Vec::new();
        let mut c = out.case.clone();
        out.frame = finish(r, &p, &mut c, Wire::default());
        out.case = c;
        if in_window {
            self.flows[i] = self.advanced(&f, &out.case, from_initiator);
        }
        if r.chance(60) {
            self.probe = Some(self.flows[i].clone());
        }
        out
    }

    /// S8: at egress, a TCP segment (no SYN, no RST) of an untracked flow.
    fn egress_pickup(&mut self, r: &mut Rng) -> Out {
        let six = r.chance(25);
        let (src, dst) = (addr(r, six), addr(r, six));
        let (sport, dport) = (40000 + r.below(20) as u16, *r.pick(&PORTS));
        let ifindex = self.any_ifindex(r);
        let flags = *r.pick(&[ACK, ACK | PSH, FIN | ACK, 0]);
        let isn = [r.next_u64() as u32, r.next_u64() as u32];
        let window = [1000 + r.below(64536) as u16, 1000 + r.below(64536) as u16];
        let f = Flow {
            src,
            dst,
            sport,
            dport,
            l4: 0,
            hook: Hook::Egress,
            ifindex,
            isn,
            next: isn,
            window,
            wscale: [None, None],
            out_if: self.other_ifindex(r, ifindex),
        };
        let mut out = self.flow_packet(r, &f, true, Some(flags), "S8 egress pickup");
        out.hook = Hook::Egress;
        out.ifindex = ifindex;
        let adv = self.advanced(&f, &out.case, true);
        self.remember(adv);
        out
    }
}

// ---------------------------------------------------------------------------

fn ct_key(k: &FlowKey) -> CtKey {
    CtKey {
        addr_a: k.0.1,
        addr_b: k.1.1,
        port_a: k.0.2,
        port_b: k.1.2,
        proto: k.2,
        family: k.0.0,
        _pad: [0; 2],
    }
}

/// The model's tracked flows against the kernel's, labelled by the rule that
/// created the model's entry (so that, against a datapath without the new
/// rules, the differences they explain are told apart).
fn compare_conntrack(
    model: &Model,
    ct: &Conntrack,
    round: usize,
    diffs: &mut BTreeMap<String, u64>,
    examples: &mut Vec<String>,
) {
    let flow_of = |k: &CtKey| -> FlowKey {
        (
            (k.family, k.addr_a, k.port_a),
            (k.family, k.addr_b, k.port_b),
            k.proto,
        )
    };
    let kernel: HashMap<FlowKey, (usize, CtValue)> = ct
        .entries()
        .into_iter()
        .map(|(t, k, v)| (flow_of(&k), (t, v)))
        .collect();
    let mut note = |what: String, detail: String| {
        let n = diffs.entry(what.clone()).or_default();
        *n += 1;
        // A few examples of each kind of difference.
        if *n <= 3 && examples.len() < 40 {
            examples.push(format!("round {round}: {what}: {detail}"));
        }
    };
    for (k, e) in &model.ct {
        let label = if e.diverged && e.origin == Origin::Opener {
            "diverged (S6/S7/S8)".to_owned()
        } else {
            format!("{:?}", e.origin)
        };
        match kernel.get(k) {
            None => note(
                format!("only in the model ({label})"),
                format!("{:?} {e:?}", Model::opened_as(k, e)),
            ),
            Some((table, v)) => {
                let initiator_a = v.flags & CT_F_INITIATOR_A != 0;
                let egress = v.flags & CT_F_EGRESS != 0;
                let audit = v.flags & CT_F_AUDIT != 0;
                // README "Capacity": table 0 is SEG_CT (confirmed), 1
                // SEG_CTPEND (unconfirmed).
                let confirmed = *table == 0;
                for (what, differs) in [
                    ("initiator", initiator_a != e.initiator_a),
                    ("hook", egress != (e.hook == Hook::Egress)),
                    ("audit flag", audit != e.audit),
                    ("table (confirmed or not)", confirmed != e.confirmed),
                    (
                        "way out (S6 amendment)",
                        (v.ifindex_out != 0).then_some(v.ifindex_out) != e.egress_if,
                    ),
                    (
                        "closing state (RST, FINs)",
                        k.2 == 6
                            && (
                                v.flags & CT_F_RST != 0,
                                v.flags & CT_F_FIN_A != 0,
                                v.flags & CT_F_FIN_B != 0,
                            ) != (e.rst, e.fin_a, e.fin_b),
                    ),
                    (
                        "sequence state (S8)",
                        k.2 == 6 && {
                            let (i, r) = if e.initiator_a { (0, 1) } else { (1, 0) };
                            let side = |s: &TcpSide| (s.seen, s.end, s.maxwin);
                            let kern = |n: usize, bit: u8| {
                                let seen = v.seen & bit != 0;
                                (seen, v.end[n], v.maxwin[n])
                            };
                            (side(&e.tcp[i]), side(&e.tcp[r])) != (kern(0, 1), kern(1, 2))
                        },
                    ),
                ] {
                    if differs {
                        note(
                            format!("{what} differs ({label})"),
                            format!("{:?} model {e:?} kernel {v:?}", Model::opened_as(k, e)),
                        );
                    }
                }
            }
        }
    }
    // README "Conntrack": flows a policy change revoked are remembered
    // (SEG_CTGONE) so that egress pick-up cannot re-create them.
    let revoked: std::collections::HashSet<FlowKey> = ct
        .revoked
        .keys()
        .filter_map(Result::ok)
        .map(|k| flow_of(&k))
        .collect();
    for k in model.revoked.difference(&revoked) {
        note("revoked only in the model".into(), format!("{k:?}"));
    }
    for k in revoked.difference(&model.revoked) {
        note("revoked only in the kernel".into(), format!("{k:?}"));
    }
    for (k, (_, v)) in &kernel {
        if !model.ct.contains_key(k) {
            let label = if model.new_rule_deleted.contains(k) {
                "after a new rule"
            } else {
                "unexplained"
            };
            note(
                format!("only in the kernel ({label})"),
                format!("{k:?} {v:?}"),
            );
        }
    }
}

/// The datapath reason the spec or README names for a decision, where it
/// names one.
fn named_reason(d: Decided) -> Option<Reason> {
    match d {
        // README "Truncated or inconsistent headers are dropped"; S3: "any
        // other value is `drop_malformed`".
        Decided::Malformed => Some(Reason::DropMalformed),
        // S4: "gets `drop_ext_headers`".
        Decided::ExtHeaders => Some(Reason::DropExtHeaders),
        // S2: "pass as `pass_neighbor_discovery`".
        Decided::NeighborDiscovery => Some(Reason::PassNeighbor),
        // S5: "dropped with `drop_martian`".
        Decided::Martian => Some(Reason::DropMartian),
        // S1: "passes as `pass_icmp_related`".
        Decided::IcmpRelated(_) => Some(Reason::PassRelated),
        // S8: "still matches the flow (passes as `pass_conntrack`)"; README
        // Reason "Part of a tracked connection".
        Decided::Conntrack(_) | Decided::ConntrackDiverged => Some(Reason::PassConntrack),
        // README "Audit mode": "a TCP connection counts each packet its
        // initiator sends" as would-drop, "once, on the hook that judged its
        // flow".
        Decided::ConntrackAudited => Some(Reason::PassAudit),
        // Reason: "Egress with egress enforcement off: tracked, not judged".
        Decided::NotEnforced => Some(Reason::PassNotEnforced),
        // Reason: "Allowed by an acl" / "Allowed by a failsafe entry".
        Decided::Rule => Some(Reason::PassRule),
        Decided::Failsafe => Some(Reason::PassFailsafe),
        // Reason: "Denied, but the destination is in audit mode".
        Decided::Audit => Some(Reason::PassAudit),
        // Reason: "No rule allows it" (these three label only drops).
        Decided::Denied | Decided::DeniedAfterNewRuleState | Decided::AfterMartian => {
            Some(Reason::DropNoRule)
        }
        // Passed or dropped by whatever judged it after conntrack refused
        // it (named by the verdict's own decision), or a later fragment
        // (pass_fragment, or pass_audit behind an audited first fragment).
        Decided::IcmpErrorNotTracked
        | Decided::Conntrack6Rejected
        | Decided::Conntrack7Deleted
        | Decided::LaterFragment => None,
    }
}

/// Packets counted for a reason on a hook, over all CPUs.
fn reason_count(map: &PerCpuArray<MapData, ReasonCounters>, r: Reason, hook: Hook) -> u64 {
    let index = r as u32 * 2 + u32::from(hook == Hook::Egress);
    map.get(&index, 0)
        .map(|v| v.iter().map(|c| c.packets).sum())
        .unwrap_or(0)
}

fn clear<K: aya::Pod, V: aya::Pod>(map: &mut BpfHashMap<MapData, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}

/// The kernel's tracked flows: confirmed ones in `SEG_CT`, unconfirmed ones
/// in `SEG_CTPEND` until promoted (README "Conntrack": capacity). The model
/// has one table; where a flow sits in the kernel is not a verdict, so the
/// harness reads, removes and restores the union.
struct Conntrack {
    tables: [BpfHashMap<MapData, CtKey, CtValue>; 2],
    /// `SEG_CTGONE`: flows a policy change revoked.
    revoked: BpfHashMap<MapData, CtKey, u64>,
}

impl Conntrack {
    fn open(paths: &Paths) -> Self {
        Self {
            tables: [
                open_map(paths, map_names::CONNTRACK).unwrap(),
                open_map(paths, map_names::CONNTRACK_PENDING).unwrap(),
            ],
            revoked: open_map(paths, map_names::CONNTRACK_REVOKED).unwrap(),
        }
    }

    /// Every entry, with the index of its table.
    fn entries(&self) -> Vec<(usize, CtKey, CtValue)> {
        self.tables
            .iter()
            .enumerate()
            .flat_map(|(t, m)| m.iter().filter_map(Result::ok).map(move |(k, v)| (t, k, v)))
            .collect()
    }

    fn get(&self, key: &CtKey) -> Option<CtValue> {
        self.tables.iter().find_map(|m| m.get(key, 0).ok())
    }

    fn remove(&mut self, key: &CtKey) {
        for m in &mut self.tables {
            let _ = m.remove(key);
        }
    }

    /// Puts an entry back into the table it was read from; true if that
    /// changed anything.
    fn restore(&mut self, table: usize, key: CtKey, value: CtValue) -> bool {
        if self.tables[table].get(&key, 0).ok() == Some(value) {
            return false;
        }
        // A flow promoted (or demoted) meanwhile is in the other table.
        let _ = self.tables[1 - table].remove(&key);
        self.tables[table].insert(key, value, 0).is_ok()
    }

    fn revoked_keys(&self) -> Vec<CtKey> {
        self.revoked.keys().filter_map(Result::ok).collect()
    }

    /// Removes the tombstones that are not in `before`: as if the flush had
    /// not run at all, it marked no flow as revoked either (tombstones of
    /// earlier revocations stay, as they do in the model).
    fn restore_revoked(&mut self, before: &[CtKey]) {
        for k in self.revoked_keys() {
            if !before.contains(&k) {
                let _ = self.revoked.remove(&k);
            }
        }
    }

    fn clear(&mut self) {
        for m in &mut self.tables {
            clear(m);
        }
        clear(&mut self.revoked);
    }
}

/// `struct xdp_md` for BPF_PROG_TEST_RUN: data, data_end, data_meta,
/// ingress_ifindex, rx_queue_index, egress_ifindex.
fn xdp_ctx(len: usize, ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

/// `struct __sk_buff` for BPF_PROG_TEST_RUN: all zero but `ifindex`
/// (offset 40), which the kernel accepts from user space.
fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut c = vec![0u8; 192];
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

#[derive(Default, Clone, Copy)]
struct Tally {
    packets: u64,
    passed: u64,
    dropped: u64,
    mismatched: u64,
}

/// Minimum packets per kind (about a third of what the generator's shares
/// give over the run), so that a kind that silently disappears fails.
const MIN_PER_KIND: [(&str, u64); 39] = [
    ("tcp", 5000),
    ("udp", 2500),
    ("sctp", 2500),
    ("icmp echo", 2000),
    ("icmp other", 400),
    ("other proto", 4000),
    ("fragment first", 400),
    ("fragment later", 400),
    ("truncated", 400),
    ("flow: tcp", 2000),
    ("flow: udp/sctp/other", 4000),
    ("flow: icmp echo", 300),
    ("S1 error genuine", 1000),
    ("S1 error forged: outer dst", 300),
    ("S1 error forged: code", 300),
    ("S1 error forged: too long", 300),
    ("S1 error forged: fragment", 300),
    ("S1 error forged: untracked", 300),
    ("S1 error forged: family", 150),
    ("S1 error forged: short quote", 150),
    ("S2 ND/MLD valid", 700),
    ("S2 ND/MLD bad hop limit", 200),
    ("S2 ND/MLD bad source", 200),
    ("S2 ND/MLD fragment header", 200),
    ("S2 ND/MLD short", 200),
    ("S2 ND/MLD too long", 200),
    ("S2 ND/MLD bad code", 200),
    ("S4 ext chain 7", 300),
    ("S4 ext chain 8", 300),
    ("S4 ext chain 9", 300),
    ("mapped/compat IPv6", 1200),
    ("S5 own source ingress", 300),
    ("S5 own source egress", 300),
    ("S5 mapped own source ingress", 300),
    ("S8 RST/FIN in window", 1000),
    ("S8 RST/FIN out of window", 1000),
    ("S8 egress pickup", 800),
    ("S6 routed reply", 800),
    ("S8 probe SYN|FIN after RST/FIN", 1500),
];

/// Kinds sent only through the L3 programs, when the object has them.
const L3_KINDS: [&str; 2] = ["S3 L3 bad version", "S3 L3 truncated"];

fn run_prog(
    ebpf: &mut Ebpf,
    name: &str,
    hook: Hook,
    frame: &[u8],
    ifindex: u32,
) -> Result<bool, ProgramError> {
    match hook {
        Hook::Ingress => {
            let ctx = xdp_ctx(frame.len(), ifindex);
            let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map(|r| r.return_value == 2)
        }
        Hook::Egress => {
            let ctx = skb_ctx(ifindex);
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .map(|r| r.return_value != 2)
        }
    }
}

#[test]
fn differential_datapath_agrees_with_the_reference_on_100k_random_packets() {
    require_root();
    // Interfaces to vary the test run's ifindex over (S6): lo and a veth
    // pair, in a namespace of the test's own.
    let ns = Netns::new("diff");
    ns.ip(&["link", "add", "dv0", "type", "veth", "peer", "name", "dv1"]);
    let ifindexes = vec![1, ns.ifindex("dv0"), ns.ifindex("dv1")];
    // S5: this host's own addresses are every address of every interface of
    // the namespace; read them back as the system reports them.
    for (addr, dev) in [
        ("10.0.0.50/32", "lo"),
        ("fd00::50/128", "lo"),
        ("fe80::50/64", "dv0"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
    }
    let own = namespace_addresses(&ns);
    for a in own_addresses() {
        assert!(own.contains(&a), "{a} is not among {own:?}");
    }
    ns.run(move || run_differential(ifindexes, own));
}

/// Every address of every interface in `ns` (`ip -o addr show`).
fn namespace_addresses(ns: &Netns) -> Vec<IpAddr> {
    let out = ns.ip(&["-o", "addr", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l
                .split_whitespace()
                .skip_while(|w| *w != "inet" && *w != "inet6");
            w.next()?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn run_differential(ifindexes: Vec<u32>, own: Vec<IpAddr>) {
    let dirs = Dirs::new();
    let paths = Paths::resolve(Some(dirs.pin.clone()), Some(dirs.state.clone()));
    std::fs::create_dir_all(&dirs.state).unwrap();
    struct Cleanup(Dirs);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0.pin);
            let _ = std::fs::remove_dir_all(&self.0.state);
        }
    }
    let _cleanup = Cleanup(dirs.clone());
    let mut ebpf = loader::load(&paths, 0, 1 << 18).expect("load datapath");
    let mut enforcer = Enforcer::open(&paths).expect("open maps");
    let mut ct = Conntrack::open(&paths);
    let mut frags: BpfHashMap<MapData, FragKey, FragValue> =
        open_map(&paths, map_names::FRAGMENTS).unwrap();
    let has_l3 = ebpf.program(PROG_INGRESS_L3).is_some() && ebpf.program(PROG_EGRESS_L3).is_some();

    let seed = std::env::var("SEGMENT_DIFF_SEED")
        .ok()
        .and_then(|s| {
            s.strip_prefix("0x")
                .map_or(s.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(0x5e67_2026u64);
    eprintln!("differential: seed {seed:#x} (set SEGMENT_DIFF_SEED to replay)");
    eprintln!("S5: the namespace's own addresses: {own:?}");
    let started = Instant::now();
    let mut r = Rng(seed);
    let mut tally: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut by_decision: BTreeMap<(Decided, bool), Tally> = BTreeMap::new();
    let mut examples: BTreeMap<(&'static str, Decided), Vec<String>> = BTreeMap::new();
    let mut cross: BTreeMap<(&'static str, Decided, bool), u64> = BTreeMap::new();
    let (mut total, mut mismatches, mut not_run) = (0u64, 0u64, 0u64);
    let mut l3_run = [0u64; 2];
    let mut ct_diffs: BTreeMap<String, u64> = BTreeMap::new();
    let mut ct_examples: Vec<String> = Vec::new();
    let mut ct_compared = 0u64;
    let (mut rule_checks, mut rule_mismatches) = (0u64, 0u64);
    let reasons: PerCpuArray<MapData, ReasonCounters> =
        open_map(&paths, map_names::REASONS).unwrap();
    let mut reason_checks: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut reason_examples: Vec<String> = Vec::new();
    let mut rule_examples: Vec<String> = Vec::new();
    let (mut unflushed_rounds, mut restored_entries, mut epochs) = (0usize, 0usize, 0usize);
    // Policies whose IPv4 / IPv6 identities the datapath reads from the LPM
    // trie rather than the exact-match tables.
    let mut lpm_rounds = [0usize; 2];
    let policies = 250;
    let per_policy = 440;
    let mut model = Model {
        own,
        ..Model::default()
    };
    let mut generator = Gen {
        flows: Vec::new(),
        ifindexes,
        l3: has_l3,
        probe: None,
        routed_reply: None,
    };
    let mut epoch_started = Instant::now();
    let (mut longest_epoch, mut swept) = (0f64, 0usize);
    for round in 0..policies {
        // Conntrack and fragments live across policy changes, in epochs of
        // 10 policies (a second or two, more on a loaded machine).
        if round % 10 == 0 {
            longest_epoch = longest_epoch.max(epoch_started.elapsed().as_secs_f64());
            ct.clear();
            clear(&mut frags);
            model.ct.clear();
            model.frags.clear();
            model.new_rule_deleted.clear();
            model.revoked.clear();
            generator.flows.clear();
            generator.probe = None;
            generator.routed_reply = None;
            epoch_started = Instant::now();
            epochs += 1;
        }
        let (desc, _wide) = random_policy(&mut r);
        let yaml = desc.yaml();
        let policy = policy::parse("random.yaml", &yaml)
            .unwrap_or_else(|e| panic!("generated an invalid policy:\n{yaml}\n{e}"));
        let (compiled, ids) = enforcer.compile(&policy).expect("compile");
        let layout = SlotContents::from_compiled(&compiled, SlotConfig::default()).config;
        for (family, count) in [layout.lens_v4_count, layout.lens_v6_count]
            .into_iter()
            .enumerate()
        {
            if count == LENS_USE_LPM {
                lpm_rounds[family] += 1;
            }
        }
        // In one reload of five the agent's flush is undone (as if it had
        // failed): then only S7 keeps old flows from outliving the policy.
        let undo_flush = round % 5 == 4;
        let before: Vec<(usize, CtKey, CtValue)> =
            if undo_flush { ct.entries() } else { Vec::new() };
        let revoked_before = if undo_flush {
            ct.revoked_keys()
        } else {
            Vec::new()
        };
        enforcer
            .apply(&policy, compiled, ids, Default::default())
            .expect("apply");
        let generation = round as u64 + 1;
        if undo_flush {
            unflushed_rounds += 1;
            // Every entry as it was before the switch: what the flush
            // removed, and what it promoted from audit.
            for (t, k, v) in before {
                if ct.restore(t, k, v) {
                    restored_entries += 1;
                }
            }
            ct.restore_revoked(&revoked_before);
        } else {
            model.flush(&desc);
        }
        swept += model.sweep(&mut ct, &mut frags);
        for _ in 0..per_policy {
            let out = generator.next(&mut r);
            let (hook, ifindex, case) = (out.hook, out.ifindex, &out.case);
            let prog = match (hook, case.l3) {
                (Hook::Ingress, false) => map_names::PROG_INGRESS,
                (Hook::Egress, false) => map_names::PROG_EGRESS,
                (Hook::Ingress, true) => PROG_INGRESS_L3,
                (Hook::Egress, true) => PROG_EGRESS_L3,
            };
            let fk = flow(case.src, case.sport, case.dst, case.dport, case.proto).0;
            let had = model
                .ct
                .get(&fk)
                .map(|e| (e.generation, e.initiator_a, e.hook));
            let (expected, decided) = model.judge(&desc, case, hook, ifindex, generation);
            let want_reason = named_reason(decided);
            let reason_before = want_reason.map(|w| reason_count(&reasons, w, hook));
            let result = run_prog(&mut ebpf, prog, hook, &out.frame, ifindex);
            let actual = match result {
                Ok(v) => v,
                Err(ProgramError::SyscallError(_)) if case.malformed || out.frame.len() < 14 => {
                    // The kernel will not run a program on a frame cut this
                    // short (no skb, or less than an Ethernet header).
                    not_run += 1;
                    continue;
                }
                Err(e) => panic!("test run ({hook:?}, {} bytes): {e:?}", out.frame.len()),
            };
            // The reason the spec names for this decision was counted once.
            if let (Some(w), Some(before)) = (want_reason, reason_before)
                && actual == expected
            {
                let t = reason_checks
                    .entry(format!("{w:?} for {decided:?}"))
                    .or_default();
                t.0 += 1;
                if reason_count(&reasons, w, hook) != before + 1 {
                    t.1 += 1;
                    if t.1 == 1 && reason_examples.len() < 8 {
                        reason_examples.push(format!(
                            "round {round} {hook:?}: {decided:?}, not counted as {w:?}: {case:?}"
                        ));
                    }
                }
            }
            // policy.md "Order": the rule reported is the first that
            // matches, failsafe first; the datapath records it in the entry
            // it creates for an admitted opener.
            if matches!(decided, Decided::Rule | Decided::Failsafe)
                && let Some(e) = model.ct.get(&fk)
                && Some((e.generation, e.initiator_a, e.hook)) != had
                && e.origin == Origin::Opener
                && let Some(want) = e.rule
            {
                rule_checks += 1;
                let got = ct.get(&ct_key(&fk)).map(|v| v.rule);
                if got != Some(want) {
                    rule_mismatches += 1;
                    if rule_examples.len() < 3 {
                        rule_examples.push(format!(
                            "round {round}: rule {got:?} in the datapath's entry, first match {want}: \
                             {case:?}\npolicy:\n{yaml}"
                        ));
                    }
                }
            }
            total += 1;
            if case.l3 {
                l3_run[usize::from(hook == Hook::Egress)] += 1;
            }
            let miss = actual != expected;
            for t in [
                tally.entry(case.kind).or_default(),
                by_decision.entry((decided, expected)).or_default(),
            ] {
                t.packets += 1;
                if actual {
                    t.passed += 1;
                } else {
                    t.dropped += 1;
                }
                t.mismatched += u64::from(miss);
            }
            if case.l3 {
                let t = tally
                    .entry(if hook == Hook::Ingress {
                        "(S3 L3 frames at ingress)"
                    } else {
                        "(S3 L3 frames at egress)"
                    })
                    .or_default();
                t.packets += 1;
                t.passed += u64::from(actual);
                t.dropped += u64::from(!actual);
                t.mismatched += u64::from(miss);
            }
            if miss {
                mismatches += 1;
                *cross.entry((case.kind, decided, expected)).or_default() += 1;
                let ex = examples.entry((case.kind, decided)).or_default();
                if ex.is_empty() {
                    ex.push(format!(
                        "round {round} {hook:?} ifindex {ifindex}: datapath {} but reference {} \
                         ({decided:?}): {case:?}\npolicy:\n{yaml}",
                        if actual { "passed" } else { "dropped" },
                        if expected { "passes" } else { "drops" },
                    ));
                }
            }
        }
        // After each policy's packets, the tracked flows themselves: the
        // same flows, opened by the same side on the same hook, audited or
        // not (README "Audit mode", S7's promotion), in the model and in the
        // kernel — this is where the flush and S7 show.
        compare_conntrack(&model, &ct, round, &mut ct_diffs, &mut ct_examples);
        ct_compared += model.ct.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "differential: {total} packets over {policies} random policies in {secs:.1} s \
         (seed {seed:#x}); {epochs} conntrack epochs; {unflushed_rounds} reloads with the flush \
         undone ({restored_entries} entries restored); {} / {} policies used the IPv4 / IPv6 LPM \
         trie; {not_run} frames too short for the kernel to run; longest epoch {longest_epoch:.1} s, \
         {swept} flows/fragments forgotten on both sides before a timeout",
        lpm_rounds[0], lpm_rounds[1]
    );
    if has_l3 {
        eprintln!(
            "S3: {} L3 frames through {PROG_INGRESS_L3}, {} through {PROG_EGRESS_L3}",
            l3_run[0], l3_run[1]
        );
    } else {
        eprintln!(
            "S3: the object has no {PROG_INGRESS_L3}/{PROG_EGRESS_L3}: 0 L3 frames run (skipped)"
        );
    }
    eprintln!(
        "{:<36} {:>8} {:>8} {:>8} {:>10}",
        "kind", "packets", "passed", "dropped", "mismatched"
    );
    for (k, t) in &tally {
        eprintln!(
            "{k:<36} {:>8} {:>8} {:>8} {:>10}",
            t.packets, t.passed, t.dropped, t.mismatched
        );
    }
    eprintln!(
        "{:<36} {:>8} {:>8} {:>8} {:>10}",
        "model decision (expected)", "packets", "passed", "dropped", "mismatched"
    );
    for ((d, e), t) in &by_decision {
        let label = format!("{d:?} ({})", if *e { "pass" } else { "drop" });
        eprintln!(
            "{label:<36} {:>8} {:>8} {:>8} {:>10}",
            t.packets, t.passed, t.dropped, t.mismatched
        );
    }
    eprintln!(
        "S6 amendment: {} responder packets at ingress of flows seen at egress",
        model.s6_amendment_checks
    );
    eprintln!(
        "first-match rule index: {rule_checks} entries checked, {rule_mismatches} differ{}",
        rule_examples
            .iter()
            .map(|e| format!("\n{e}"))
            .collect::<String>()
    );
    eprintln!(
        "{:<52} {:>8} {:>12}",
        "reason named by the spec", "packets", "not counted"
    );
    for (w, (n, bad)) in &reason_checks {
        eprintln!("{w:<52} {n:>8} {bad:>12}");
    }
    for e in &reason_examples {
        eprintln!("  e.g. {e}");
    }
    let reason_bad: u64 = reason_checks.values().map(|t| t.1).sum();
    let ct_differ: u64 = ct_diffs.values().sum();
    eprintln!(
        "conntrack tables after each policy: {ct_compared} model entries compared, {ct_differ} \
         differences"
    );
    for (what, n) in &ct_diffs {
        eprintln!("  {what:<60} {n:>6}");
    }
    for e in &ct_examples {
        eprintln!("  e.g. {e}");
    }
    eprintln!("mismatches by kind and model decision:");
    for ((k, d, e), n) in &cross {
        let e = if *e { "pass" } else { "drop" };
        eprintln!("  {k:<36} {:<40} {n:>6}", format!("{d:?} ({e})"));
    }
    assert!(total >= 100_000, "ran {total} packets");
    // Verdicts, the rule recorded in each new entry, the conntrack tables
    // (which flows are confirmed, unconfirmed or revoked, with their
    // initiator, hook, audit mark and way out) and the reason each packet
    // was counted under must all agree exactly. Nothing here depends on the
    // kernel's nondeterminism: the tables are far from full (no LRU
    // eviction: an epoch creates a few thousand entries, the smallest table
    // holds 16,384), and flows near a timeout are forgotten on both sides
    // before each policy's packets (`Model::sweep`).
    assert!(
        mismatches == 0 && rule_mismatches == 0 && ct_differ == 0 && reason_bad == 0,
        "{mismatches} mismatches, {rule_mismatches} rule indices, {ct_differ} conntrack \
         entries and {reason_bad} reasons differ (seed {seed:#x}); \
         examples per kind and decision:\n{}",
        examples
            .values()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // Both lookups, in both families, and reloads between them, were tried.
    for (family, n) in ["IPv4", "IPv6"].iter().zip(lpm_rounds) {
        assert!(
            n >= 10 && n <= policies - 10,
            "{family}: {n} of {policies} policies used the LPM trie"
        );
    }
    // Every kind ran, and the model's new branches were taken; and every
    // kind the generator sent is one of those (a new kind needs its floor).
    for (kind, min) in MIN_PER_KIND {
        let n = tally.get(kind).map_or(0, |t| t.packets);
        assert!(n >= min, "kind `{kind}`: {n} packets, fewer than {min}");
    }
    for kind in tally.keys() {
        assert!(
            kind.starts_with('(')
                || L3_KINDS.contains(kind)
                || MIN_PER_KIND.iter().any(|(k, _)| k == kind),
            "kind `{kind}` was sent but has no minimum in MIN_PER_KIND"
        );
    }
    if has_l3 {
        assert!(
            l3_run[0] >= 3000 && l3_run[1] >= 600,
            "L3 frames: {l3_run:?}"
        );
        for kind in L3_KINDS {
            let n = tally.get(kind).map_or(0, |t| t.packets);
            assert!(n >= 300, "kind `{kind}`: {n} packets, fewer than 300");
        }
    }
    for (d, min) in [
        (Decided::Conntrack6Rejected, 500),
        (Decided::Conntrack7Deleted, 50),
        (Decided::IcmpRelated(Origin::Opener), 500),
        (Decided::NeighborDiscovery, 500),
        (Decided::Martian, 300),
        (Decided::ExtHeaders, 300),
    ] {
        let n: u64 = by_decision
            .iter()
            .filter(|((x, _), _)| *x == d)
            .map(|(_, t)| t.packets)
            .sum();
        assert!(
            n >= min,
            "model decision {d:?}: {n} packets, fewer than {min}"
        );
    }
    assert!(
        rule_checks >= 1000,
        "only {rule_checks} rule indices checked"
    );
    assert!(
        model.s6_amendment_checks >= 200,
        "only {} responder packets were judged by S6's egress-interface amendment",
        model.s6_amendment_checks
    );
}

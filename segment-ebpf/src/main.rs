//! segment's kernel programs: `segment_ingress` (XDP) and `segment_egress`
//! (TC clsact egress) for Ethernet interfaces, and `segment_ingress_l3` /
//! `segment_egress_l3` for interfaces without a link-layer header (tun,
//! WireGuard), where the IP header is at offset 0. All are thin: they hand
//! the packet to [`judge::judge`] and turn its answer into the hook's
//! return code.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_or` for the conntrack filter's bits (the object is built with
// RUSTC_BOOTSTRAP=1, see segment-agent/build.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod account;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod ct_filter;
#[cfg(target_arch = "bpf")]
mod flowlog;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod judge;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod martian;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use segment_common::{HOOK_EGRESS, HOOK_INGRESS};

    use crate::{
        judge::{Action, judge},
        parse::Link,
    };

    /// Bytes of the frame the egress program wants in the linear area: enough
    /// for tags, IPv6 with extension headers, and a transport header.
    const EGRESS_PULL: u32 = 256;

    #[xdp]
    pub fn segment_ingress(ctx: XdpContext) -> u32 {
        ingress(&ctx, Link::Ethernet)
    }

    /// XDP on a device without a link-layer header. Such devices only get
    /// generic XDP, where the data starts at the IP header.
    #[xdp]
    pub fn segment_ingress_l3(ctx: XdpContext) -> u32 {
        ingress(&ctx, Link::L3)
    }

    #[classifier]
    pub fn segment_egress(ctx: TcContext) -> i32 {
        egress(&ctx, Link::Ethernet)
    }

    /// TC egress on a device without a link-layer header: the skb's data
    /// starts at the IP header.
    #[classifier]
    pub fn segment_egress_l3(ctx: TcContext) -> i32 {
        egress(&ctx, Link::L3)
    }

    #[inline(always)]
    fn ingress(ctx: &XdpContext, link: Link) -> u32 {
        let (data, end) = (ctx.data(), ctx.data_end());
        let len = end.saturating_sub(data) as u64;
        // SAFETY: reading a field of the context the kernel passed us.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        match judge(ctx, data, end, len, HOOK_INGRESS, ifindex, link) {
            Action::Pass => xdp_action::XDP_PASS,
            Action::Drop => xdp_action::XDP_DROP,
            // Like xdp-tools: a broken datapath drops, and says so on the
            // xdp:xdp_exception tracepoint.
            Action::Abort => xdp_action::XDP_ABORTED,
        }
    }

    #[inline(always)]
    fn egress(ctx: &TcContext, link: Link) -> i32 {
        let len = ctx.len();
        // Headers of locally built packets may sit in paged fragments; pull
        // them into the linear area so the parser can see them.
        let linear = ctx.data_end().saturating_sub(ctx.data()) as u32;
        let want = if len < EGRESS_PULL { len } else { EGRESS_PULL };
        if linear < want {
            let _ = ctx.skb.pull_data(want);
        }
        // SAFETY: reading a field of the context the kernel passed us.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        match judge(
            ctx,
            ctx.data(),
            ctx.data_end(),
            len as u64,
            HOOK_EGRESS,
            ifindex,
            link,
        ) {
            // Let any later program on the hook have its say.
            Action::Pass => TC_ACT_UNSPEC,
            Action::Drop | Action::Abort => TC_ACT_SHOT as i32,
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only so that workspace-wide commands work; the real
    // object is built for bpfel-unknown-none by segment-agent's build script.
}

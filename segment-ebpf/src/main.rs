//! segment's kernel programs: `segment_ingress` (XDP) and `segment_egress`
//! (TC clsact egress). Both are thin: they hand the packet to
//! [`judge::judge`] and turn its answer into the hook's return code.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod account;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod flowlog;
#[cfg(target_arch = "bpf")]
mod judge;
#[cfg(target_arch = "bpf")]
mod maps;
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
    use segment_common::{DRY_RUN_MAGIC, HOOK_EGRESS, HOOK_INGRESS};

    use crate::judge::judge;

    /// Bytes of the frame the egress program wants in the linear area: enough
    /// for tags, IPv6 with extension headers, and a transport header.
    const EGRESS_PULL: u32 = 256;

    /// Metadata carrying `DRY_RUN_MAGIC` marks a synthetic packet from
    /// `explain --live`.
    #[inline(always)]
    fn is_dry_run(ctx: &XdpContext) -> bool {
        let (meta, end) = (ctx.metadata(), ctx.metadata_end());
        if meta + 4 > end {
            return false;
        }
        // SAFETY: the four bytes lie inside the metadata area.
        unsafe { core::ptr::read_unaligned(meta as *const u32) == DRY_RUN_MAGIC }
    }

    #[xdp]
    pub fn segment_ingress(ctx: XdpContext) -> u32 {
        let (data, end) = (ctx.data(), ctx.data_end());
        let len = end.saturating_sub(data) as u64;
        // SAFETY: reading a field of the context the kernel passed us.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        if judge(
            &ctx,
            data,
            end,
            len,
            HOOK_INGRESS,
            ifindex,
            is_dry_run(&ctx),
        ) {
            xdp_action::XDP_PASS
        } else {
            xdp_action::XDP_DROP
        }
    }

    #[classifier]
    pub fn segment_egress(ctx: TcContext) -> i32 {
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
        if judge(
            &ctx,
            ctx.data(),
            ctx.data_end(),
            len as u64,
            HOOK_EGRESS,
            ifindex,
            false,
        ) {
            // Let any later program on the hook have its say.
            TC_ACT_UNSPEC
        } else {
            TC_ACT_SHOT as i32
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

//! VLAN tagging for the lab without the kernel's 802.1Q driver (this
//! machine's kernel is built without CONFIG_VLAN_8021Q): tiny TC programs,
//! written as raw BPF instructions, push tags on a link's egress and pop
//! them on the other end's ingress. With TX VLAN offload turned off the
//! tags travel inside the frames, so segment's XDP program sees real 802.1Q
//! and QinQ frames from real sockets.

use std::os::fd::OwnedFd;

use crate::{
    bpfasm::{
        BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_EGRESS, BPF_TCX_INGRESS, FUNC_SKB_VLAN_POP,
        FUNC_SKB_VLAN_PUSH, Insn, call, exit, link, load, mov_imm, mov_reg,
    },
    netns::Netns,
};

/// `(TPID, VID)` pairs, innermost first, as a program that pushes them.
fn push_program(tags: &[(u16, u16)]) -> Vec<Insn> {
    let mut p = vec![mov_reg(6, 1)];
    for (tpid, vid) in tags {
        p.push(mov_reg(1, 6));
        // The helper takes the TPID in network byte order.
        p.push(mov_imm(2, i32::from(tpid.to_be())));
        p.push(mov_imm(3, i32::from(*vid)));
        p.push(call(FUNC_SKB_VLAN_PUSH));
    }
    // TCX_NEXT: let the other programs on the hook run.
    p.push(mov_imm(0, -1));
    p.push(exit());
    p
}

fn pop_program(levels: usize) -> Vec<Insn> {
    let mut p = vec![mov_reg(6, 1)];
    for _ in 0..levels {
        p.push(mov_reg(1, 6));
        p.push(call(FUNC_SKB_VLAN_POP));
    }
    p.push(mov_imm(0, -1));
    p.push(exit());
    p
}

/// Tags pushed on one side of a link and popped on the other, in both
/// directions. Dropping it detaches the helpers.
pub struct Trunk {
    _links: Vec<OwnedFd>,
}

impl Trunk {
    /// Tags every frame between `a_ns/a_if` and `b_ns/b_if` with `tags`
    /// (innermost first): `[(0x8100, 100)]` for 802.1Q, `[(0x8100, 200),
    /// (0x88a8, 300)]` for QinQ.
    pub fn new(a_ns: &Netns, a_if: &str, b_ns: &Netns, b_if: &str, tags: &[(u16, u16)]) -> Self {
        let mut links = Vec::new();
        for (ns, iface) in [(a_ns, a_if), (b_ns, b_if)] {
            // Tags must be written into the frames, not kept as metadata.
            let _ = std::process::Command::new("nsenter")
                .arg(format!("--net={}", ns.path().display()))
                .args([
                    "ethtool",
                    "-K",
                    iface,
                    "txvlan",
                    "off",
                    "tx-vlan-stag-hw-insert",
                    "off",
                ])
                .output();
            // veth accepts frames of MTU + 14 + one tag: with more tags,
            // send smaller packets through route MTUs (the device MTU
            // stays, so the receiving side still accepts the larger frame).
            let mtu = (1504 - 4 * tags.len()).to_string();
            for family in ["-4", "-6"] {
                let out = ns.ip(&[family, "-o", "route", "show", "dev", iface]);
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let mut args: Vec<&str> = vec![family, "route", "change"];
                    args.extend(line.split_whitespace());
                    args.extend(["dev", iface, "mtu", &mtu]);
                    ns.ip(&args);
                }
            }
            let ifindex = ns.ifindex(iface);
            let push = push_program(tags);
            let pop = pop_program(tags.len());
            links.extend(ns.run(move || {
                let push_fd = load(BPF_PROG_TYPE_SCHED_CLS, &push);
                let pop_fd = load(BPF_PROG_TYPE_SCHED_CLS, &pop);
                vec![
                    link(&push_fd, ifindex, BPF_TCX_EGRESS, 0),
                    link(&pop_fd, ifindex, BPF_TCX_INGRESS, 0),
                ]
            }));
        }
        Self { _links: links }
    }
}

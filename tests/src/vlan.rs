//! VLAN tagging for the lab without the kernel's 802.1Q driver (this
//! machine's kernel is built without CONFIG_VLAN_8021Q): tiny TC programs,
//! written as raw BPF instructions, push tags on a link's egress and pop
//! them on the other end's ingress. With TX VLAN offload turned off the
//! tags travel inside the frames, so segment's XDP program sees real 802.1Q
//! and QinQ frames from real sockets.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::netns::Netns;

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const FUNC_SKB_VLAN_PUSH: i32 = 18;
const FUNC_SKB_VLAN_POP: i32 = 19;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn mov_reg(dst: u8, src: u8) -> Insn {
    Insn {
        code: 0xbf,
        regs: (src << 4) | dst,
        off: 0,
        imm: 0,
    }
}

fn mov_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0xb7,
        regs: dst,
        off: 0,
        imm,
    }
}

fn call(func: i32) -> Insn {
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: func,
    }
}

fn exit() -> Insn {
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    }
}

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

fn bpf(cmd: i64, attr: &mut [u8]) -> std::io::Result<i32> {
    // SAFETY: the attr buffer is zero-initialized and as large as the
    // kernel reads for these commands.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

fn load(insns: &[Insn]) -> OwnedFd {
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr)
        .unwrap_or_else(|e| panic!("loading the VLAN helper program: {e}"));
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn link(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> OwnedFd {
    use std::os::fd::AsRawFd;
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    let fd = bpf(BPF_LINK_CREATE, &mut attr)
        .unwrap_or_else(|e| panic!("attaching the VLAN helper: {e}"));
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
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
                let push_fd = load(&push);
                let pop_fd = load(&pop);
                vec![
                    link(&push_fd, ifindex, BPF_TCX_EGRESS),
                    link(&pop_fd, ifindex, BPF_TCX_INGRESS),
                ]
            }));
        }
        Self { _links: links }
    }
}

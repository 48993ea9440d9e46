//! Tiny BPF programs written as instructions, loaded with the raw `bpf(2)`
//! syscall: VLAN taggers for the lab, and the benchmark's baselines and
//! traffic generator. No compiler involved, so they exist on any machine
//! that can load BPF at all.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const BPF_MAP_CREATE: i64 = 0;
pub const BPF_MAP_LOOKUP_ELEM: i64 = 1;
pub const BPF_PROG_LOAD: i64 = 5;
pub const BPF_PROG_TEST_RUN: i64 = 10;
pub const BPF_LINK_CREATE: i64 = 28;

pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;
pub const BPF_XDP: u32 = 37;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

pub const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const FUNC_GET_PRANDOM_U32: i32 = 7;
pub const FUNC_SKB_VLAN_PUSH: i32 = 18;
pub const FUNC_SKB_VLAN_POP: i32 = 19;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `dst = src` (64-bit).
pub const fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}
/// `dst = imm` (64-bit, sign-extended).
pub const fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
pub const fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}
pub const fn add_reg(dst: u8, src: u8) -> Insn {
    insn(0x0f, dst, src, 0, 0)
}
pub const fn sub_reg(dst: u8, src: u8) -> Insn {
    insn(0x1f, dst, src, 0, 0)
}
pub const fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(0x57, dst, 0, 0, imm)
}
pub const fn rsh_imm(dst: u8, imm: i32) -> Insn {
    insn(0x77, dst, 0, 0, imm)
}
/// Byte-swap the low `bits` of `dst` to big endian.
pub const fn to_be(dst: u8, bits: i32) -> Insn {
    insn(0xdc, dst, 0, 0, bits)
}
/// `dst = *(u32 *)(src + off)`
pub const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// `dst = *(u64 *)(src + off)`
pub const fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}
/// `*(u16 *)(dst + off) = src`
pub const fn stx_h(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x6b, dst, src, off, 0)
}
/// `*(u64 *)(dst + off) = src`
pub const fn stx_dw(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x7b, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = imm`
pub const fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm)
}
/// `if dst > src goto +off` (unsigned)
pub const fn jgt_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x2d, dst, src, off, 0)
}
/// `if dst == imm goto +off`
pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
pub const fn call(func: i32) -> Insn {
    insn(0x85, 0, 0, 0, func)
}
pub const fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `dst = map` (two instructions: a 64-bit load of a map fd).
pub fn ld_map(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, map.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

pub fn bpf(cmd: i64, attr: &mut [u8]) -> std::io::Result<i32> {
    // SAFETY: `attr` is a zero-initialized buffer at least as large as the
    // part of `union bpf_attr` the command reads.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as i32)
    }
}

fn put32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: a new fd returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A per-CPU array of `entries` u64 counters.
pub fn percpu_counters(entries: u32) -> OwnedFd {
    let mut attr = [0u8; 72];
    put32(&mut attr, 0, BPF_MAP_TYPE_PERCPU_ARRAY);
    put32(&mut attr, 4, 4);
    put32(&mut attr, 8, 8);
    put32(&mut attr, 12, entries);
    owned(bpf(BPF_MAP_CREATE, &mut attr).unwrap_or_else(|e| panic!("creating a counter map: {e}")))
}

/// Number of possible CPUs (the width of per-CPU values).
pub fn possible_cpus() -> usize {
    let text =
        std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_else(|_| "0".into());
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1,
            None => 1,
        })
        .sum()
}

/// Sum over CPUs of counter `index`.
pub fn read_counter(map: &OwnedFd, index: u32) -> u64 {
    let mut values = vec![0u64; possible_cpus()];
    let key = index;
    let mut attr = [0u8; 32];
    put32(&mut attr, 0, map.as_raw_fd() as u32);
    put64(&mut attr, 8, &key as *const u32 as u64);
    put64(&mut attr, 16, values.as_mut_ptr() as u64);
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).unwrap_or_else(|e| panic!("reading a counter: {e}"));
    values.iter().sum()
}

pub fn load(prog_type: u32, insns: &[Insn]) -> OwnedFd {
    let license = b"GPL\0";
    let mut log = vec![0u8; 65536];
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, prog_type);
    put32(&mut attr, 4, insns.len() as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1);
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => owned(fd),
        Err(e) => panic!(
            "loading a helper program: {e}\n{}",
            String::from_utf8_lossy(&log).trim_end_matches('\0')
        ),
    }
}

/// Attaches `prog` to `ifindex` (in the calling thread's namespace).
pub fn link(prog: &OwnedFd, ifindex: u32, attach_type: u32, flags: u32) -> OwnedFd {
    let mut attr = [0u8; 64];
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 4, ifindex);
    put32(&mut attr, 8, attach_type);
    put32(&mut attr, 12, flags);
    owned(
        bpf(BPF_LINK_CREATE, &mut attr)
            .unwrap_or_else(|e| panic!("attaching a helper program: {e}")),
    )
}

/// BPF_PROG_TEST_RUN: returns (return value, average ns per run).
pub fn test_run(
    prog: &OwnedFd,
    data: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
    flags: u32,
    batch: u32,
) -> std::io::Result<(u32, u32)> {
    let mut attr = [0u8; 80];
    put32(&mut attr, 0, prog.as_raw_fd() as u32);
    put32(&mut attr, 8, data.len() as u32);
    put64(&mut attr, 16, data.as_ptr() as u64);
    put32(&mut attr, 32, repeat);
    if let Some(ctx) = ctx {
        put32(&mut attr, 40, ctx.len() as u32);
        put64(&mut attr, 48, ctx.as_ptr() as u64);
    }
    put32(&mut attr, 64, flags);
    put32(&mut attr, 72, batch);
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    let retval = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
    let duration = u32::from_ne_bytes(attr[36..40].try_into().expect("4 bytes"));
    Ok((retval, duration))
}

/// An XDP program that counts every packet in counter 0 and returns `action`.
pub fn counting_xdp(counters: &OwnedFd, action: i32) -> OwnedFd {
    let mut p = Vec::new();
    p.push(st_w(10, -4, 0));
    p.push(mov_reg(2, 10));
    p.push(add_imm(2, -4));
    p.extend(ld_map(1, counters));
    p.push(call(FUNC_MAP_LOOKUP_ELEM));
    p.push(jeq_imm(0, 0, 3));
    p.push(ldx_dw(1, 0, 0));
    p.push(add_imm(1, 1));
    p.push(stx_dw(0, 1, 0));
    p.push(mov_imm(0, action));
    p.push(exit());
    load(BPF_PROG_TYPE_XDP, &p)
}

/// The benchmark's traffic generator, for BPF_F_TEST_XDP_LIVE_FRAMES: takes
/// an Ethernet/IPv4/UDP frame, gives it a random source port and one of
/// 16,384 source addresses (the low 16 bits of the address move up by r and
/// the IP identification down by r, so the header checksum stays right),
/// and transmits it.
pub fn udp_generator() -> OwnedFd {
    let p = [
        mov_reg(6, 1),
        ldx_w(7, 6, 0),
        ldx_w(8, 6, 4),
        mov_reg(2, 7),
        add_imm(2, 42),
        jgt_reg(2, 8, 17),
        call(FUNC_GET_PRANDOM_U32),
        mov_reg(9, 0),
        mov_reg(1, 9),
        and_imm(1, 0x3fff),
        mov_imm(2, 0x0100),
        add_reg(2, 1),
        mov_imm(3, 0x8000),
        sub_reg(3, 1),
        to_be(2, 16),
        stx_h(7, 2, 28),
        to_be(3, 16),
        stx_h(7, 3, 18),
        mov_reg(4, 9),
        rsh_imm(4, 16),
        stx_h(7, 4, 34),
        mov_imm(0, XDP_TX),
        exit(),
        mov_imm(0, XDP_DROP),
        exit(),
    ];
    load(BPF_PROG_TYPE_XDP, &p)
}

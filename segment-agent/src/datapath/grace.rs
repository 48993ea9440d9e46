//! Waiting for the datapath to stop reading a slot.
//!
//! After the switch, packets that read the active slot just before it may
//! still be inside the program, looking up the old slot's maps. The next
//! policy is written into exactly that slot; starting before those runs end
//! would show them a half-written policy. XDP and TC programs run under
//! RCU, so one RCU grace period after the switch is enough — but user space
//! has no `synchronize_rcu()`. The kernel does call it, though, when a map
//! of maps is updated from user space (`maybe_wait_bpf_programs` in
//! kernel/bpf/syscall.c: "wait for any running non-sleepable BPF programs to
//! complete so that userspace, when we return to it, knows that all
//! non-sleepable programs that could be running use the new map value").
//! So a tiny, private ARRAY_OF_MAPS whose one entry we rewrite is a grace
//! period on demand. aya has no way to create one standalone, hence the
//! raw bpf(2) calls.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr`, the map-create member (the fields we use).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// `union bpf_attr`, the element member.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a properly laid out, zero-padded bpf_attr member of
    // the size we pass; the kernel reads at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create(map_type: u32, inner: Option<&OwnedFd>, name: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = CreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd: inner.map_or(0, |f| f.as_raw_fd() as u32),
        ..CreateAttr::default()
    };
    let n = name.len().min(15);
    attr.map_name[..n].copy_from_slice(&name[..n]);
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a successful BPF_MAP_CREATE returns a new file descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A grace period on demand (see the module doc).
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl GracePeriod {
    pub fn new() -> io::Result<Self> {
        let inner = create(BPF_MAP_TYPE_ARRAY, None, b"seg_grace_in")?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(&inner), b"seg_grace")?;
        Ok(Self { outer, inner })
    }

    /// Returns once every BPF program run that started before the call has
    /// finished.
    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = ElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..ElemAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }
}

//! Many map writes in one bpf(2) call.
//!
//! Writing a large policy one element per syscall spends most of its time
//! entering and leaving the kernel: about 2 µs per element, a second for
//! 100,000 rules. `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` (Linux
//! 5.6+) take arrays of keys and values instead. aya does not wrap them, so
//! this module issues the syscall itself. Where a kernel or map type does
//! not support them the caller falls back to one call per element.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel-internal "operation not supported" some map types return.
const ENOTSUPP: i32 = 524;

/// Elements per call: big enough that the syscall cost vanishes, small
/// enough that the kernel's copy of them stays modest.
const CHUNK: usize = 16_384;

/// `union bpf_attr`, the `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a failed batch left behind.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel or this map type has no batch operations; nothing was done.
    Unsupported,
    /// Element `done` (0-based, over the whole call) failed; those before it
    /// were written.
    Failed { done: usize, error: io::Error },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported => f.write_str("batch map operations are not supported"),
            Self::Failed { done, error } => {
                write!(f, "batch map operation failed at element {done}: {error}")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// Writes `keys[i] → values[i]` for every i (flags `BPF_ANY`).
///
/// `K` and `V` must be the map's exact key and value layouts (the `Pod`
/// types its aya wrapper was opened with).
pub fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len());
    let mut done = 0;
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        call(BPF_MAP_UPDATE_BATCH, &mut attr, done)?;
        done = done.saturating_add(k.len());
    }
    Ok(())
}

/// Deletes every key in `keys`. A key that is absent is an error.
pub fn delete<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let mut done = 0;
    for k in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        call(BPF_MAP_DELETE_BATCH, &mut attr, done)?;
        done = done.saturating_add(k.len());
    }
    Ok(())
}

fn call(cmd: libc::c_long, attr: &mut BatchAttr, done: usize) -> Result<(), BatchError> {
    let wanted = attr.count as usize;
    // SAFETY: `attr` is a valid `bpf_attr.batch`; `keys`/`values` point at
    // `count` elements of the map's key and value sizes (the caller's Pod
    // types), alive for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    let code = error.raw_os_error().unwrap_or(0);
    // Unsupported: the kernel refused before touching any element and left
    // `count` as it was (it writes back the processed count otherwise).
    if done == 0
        && attr.count as usize == wanted
        && (code == libc::EINVAL || code == libc::EOPNOTSUPP || code == ENOTSUPP)
    {
        return Err(BatchError::Unsupported);
    }
    Err(BatchError::Failed {
        done: done.saturating_add((attr.count as usize).min(wanted)),
        error,
    })
}

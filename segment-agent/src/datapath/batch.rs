//! Many map elements in one bpf(2) call.
//!
//! Writing a large policy one element per syscall spends most of its time
//! entering and leaving the kernel: about 2 µs per element, a second for
//! 100,000 rules; reading a full conntrack table by iteration costs two
//! calls per flow. `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` /
//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+) take arrays of keys and values
//! instead. aya does not wrap them, so this module issues the syscall
//! itself. Where a kernel or map type does not support them the caller
//! falls back to one call per element.

#![warn(clippy::arithmetic_side_effects)]

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel-internal "operation not supported" some map types return.
const ENOTSUPP: i32 = 524;

/// Elements per call: big enough that the syscall cost vanishes, small
/// enough that the kernel's copy of them stays modest.
const CHUNK: usize = 16_384;

/// Elements per lookup call (the buffers are allocated per scan).
const LOOKUP_CHUNK: usize = 4_096;

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

/// Runs a batch operation over elements `0..len` and goes on past the
/// elements it fails on: `op(from)` must do the elements from `from` on.
/// Returns each failed element's index with its error, and the index from
/// which nothing was done because batches are not supported (the caller
/// does those one by one).
pub fn past_failures(
    len: usize,
    mut op: impl FnMut(usize) -> Result<(), BatchError>,
) -> (Vec<(usize, io::Error)>, Option<usize>) {
    let mut failed = Vec::new();
    let mut from = 0;
    while from < len {
        match op(from) {
            Ok(()) => break,
            Err(BatchError::Failed { done, error }) => {
                // Those before `done` were done; the one at `done` was not.
                let at = from.saturating_add(done).min(len);
                if at < len {
                    failed.push((at, error));
                }
                from = at.saturating_add(1);
            }
            Err(BatchError::Unsupported) => return (failed, Some(from)),
        }
    }
    (failed, None)
}

/// Every element of a hash map (not a per-CPU one), `LOOKUP_CHUNK` per
/// call. Like an iteration by `get_next_key` it is not a snapshot: an
/// element written or removed during the scan may or may not be in it.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> Result<Vec<(K, V)>, BatchError> {
    // SAFETY: Pod types are plain data, for which all-zero bytes are a
    // value; the kernel overwrites the elements it reports.
    let (mut keys, mut values) = unsafe {
        (
            vec![std::mem::zeroed::<K>(); LOOKUP_CHUNK],
            vec![std::mem::zeroed::<V>(); LOOKUP_CHUNK],
        )
    };
    let mut out = Vec::new();
    // The hash map's cursor is a bucket index (a u32 in the kernel).
    let mut cursor_in: u32 = 0;
    let mut cursor_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &cursor_in as *const u32 as u64
            },
            out_batch: &mut cursor_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch`; `keys`/`values` hold
        // LOOKUP_CHUNK elements of the map's key and value sizes (the
        // caller's Pod types), the cursors are u32s; all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (rc != 0).then(io::Error::last_os_error);
        let code = error.as_ref().and_then(io::Error::raw_os_error);
        // ENOENT: the last buckets were read (`count` says how many
        // elements came with them).
        if rc == 0 || code == Some(libc::ENOENT) {
            let got = (attr.count as usize).min(LOOKUP_CHUNK);
            out.extend(
                keys[..got]
                    .iter()
                    .copied()
                    .zip(values[..got].iter().copied()),
            );
            if rc != 0 {
                return Ok(out);
            }
            cursor_in = cursor_out;
            first = false;
            continue;
        }
        let error = error.unwrap_or_else(io::Error::last_os_error);
        if first && matches!(code, Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) {
            return Err(BatchError::Unsupported);
        }
        return Err(BatchError::Failed {
            done: out.len(),
            error,
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in batch that fails at the elements in `bad` (indices over
    /// the whole run) and does every element before the first of them.
    fn fake(bad: &[usize], calls: &mut Vec<usize>, from: usize) -> Result<(), BatchError> {
        calls.push(from);
        match bad.iter().find(|&&b| b >= from) {
            None => Ok(()),
            Some(&b) => Err(BatchError::Failed {
                done: b.saturating_sub(from),
                error: io::Error::from_raw_os_error(libc::ENOENT),
            }),
        }
    }

    #[test]
    fn a_batch_goes_on_past_each_failed_element_and_reports_it() {
        let mut calls = Vec::new();
        let (failed, unbatched) = past_failures(10, |from| fake(&[0, 4, 9], &mut calls, from));
        let at: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        assert_eq!(at, [0, 4, 9]);
        assert_eq!(unbatched, None);
        assert_eq!(calls, [0, 1, 5], "each retry starts past the failed one");

        let (failed, unbatched) = past_failures(0, |_| unreachable!("nothing to do"));
        assert!(failed.is_empty() && unbatched.is_none());
    }

    #[test]
    fn unsupported_batches_leave_the_rest_to_the_caller() {
        let mut first = true;
        let (failed, unbatched) = past_failures(8, |from| {
            if std::mem::take(&mut first) {
                fake(&[2], &mut Vec::new(), from)
            } else {
                Err(BatchError::Unsupported)
            }
        });
        assert_eq!(failed.len(), 1);
        assert_eq!(unbatched, Some(3));
    }
}

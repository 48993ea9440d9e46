//! A BPF array mapped into the agent's memory (maps created with
//! `BPF_F_MMAPABLE`): the port class tables, written whole with plain
//! stores, and the conntrack filter's bitmaps, updated with atomics beside
//! the datapath.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;

/// The mapping of one map's values, unmapped on drop. Values are laid out
/// at 8-byte strides from a page-aligned base.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    _map: MapData,
}

impl Mapping {
    /// Maps the first `bytes` of `map`'s values (rounded up to whole pages).
    pub fn new(map: MapData, bytes: usize) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = bytes.next_multiple_of(page);
        // SAFETY: mapping a BPF array fd; the kernel checks that the map
        // was created with BPF_F_MMAPABLE and that `len` fits.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            _map: map,
        })
    }

    /// The base of the mapping (page-aligned).
    pub fn base(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

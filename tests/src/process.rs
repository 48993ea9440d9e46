//! Facts about processes the tests start (from /proc), and the process-wide
//! umask, which socket-permission tests change.

/// Resident memory of `pid` in KiB; `None` if the process is gone or
/// /proc does not say.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Whether `pid` still runs (exists, and is neither a zombie nor dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// The process umask set to a value for this guard's lifetime: the agent
/// under test inherits it, which is what permission tests need.
pub struct Umask(libc::mode_t);

impl Umask {
    pub fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask only swaps the process file mode mask.
        Self(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

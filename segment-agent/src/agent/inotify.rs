//! A minimal inotify watch on one directory, for the watched policy file:
//! which names were written and closed, moved in, created or removed, and
//! which are still being written to.

use std::{
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::Path,
};

use tokio::io::unix::AsyncFd;

/// What happened to a name in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Written and closed, moved in, created, removed, or its attributes
    /// changed: a complete new version may be there.
    Settled(OsString),
    /// Being written to (not yet closed).
    Modified(OsString),
    /// The kernel dropped events (queue overflow): anything may have changed.
    Overflow,
}

pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

const SETTLED: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB;

impl DirWatch {
    /// Watches `dir` (needs a tokio runtime).
    pub fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                c.as_ptr(),
                SETTLED | libc::IN_MODIFY | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open inotify descriptor, owned by the AsyncFd
        // for its whole life (OwnedFd's raw fd never changes).
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits for the next batch of events. Cancel-safe (events stay queued
    /// in the kernel until read).
    pub async fn next(&mut self) -> io::Result<Vec<Event>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = self.fd.readable().await?;
            let n = guard.try_io(|fd| {
                // SAFETY: reading into a buffer we own, of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n.unsigned_abs())
                }
            });
            match n {
                Ok(Ok(n)) => return Ok(parse(buf.get(..n).unwrap_or_default())),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Parses `struct inotify_event` records.
fn parse(mut bytes: &[u8]) -> Vec<Event> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while bytes.len() >= HEADER {
        let word = |at: usize| {
            bytes
                .get(at..at.saturating_add(4))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_ne_bytes)
        };
        // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
        let mask = word(4);
        let len = usize::try_from(word(12)).unwrap_or(usize::MAX);
        let end = HEADER.saturating_add(len);
        let name = bytes.get(HEADER..end).unwrap_or_default();
        let name = OsString::from_vec(name.iter().copied().take_while(|b| *b != 0).collect());
        if mask & libc::IN_Q_OVERFLOW != 0
            || mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0
        {
            out.push(Event::Overflow);
        } else if mask & SETTLED != 0 {
            out.push(Event::Settled(name));
        } else if mask & libc::IN_MODIFY != 0 {
            out.push(Event::Modified(name));
        }
        bytes = bytes.get(end..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_place_writes_are_modified_until_closed() {
        let dir = std::env::temp_dir().join(format!("segment-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = DirWatch::new(&dir).unwrap();
        let path = dir.join("policy.yaml");
        let mut f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut f, b"hosts: {}\n").unwrap();
        let mut seen = Vec::new();
        while !seen.contains(&Event::Modified("policy.yaml".into())) {
            seen.extend(w.next().await.unwrap());
        }
        // Written but not closed: only "modified" since the create.
        assert_eq!(
            seen.iter()
                .filter(|e| matches!(e, Event::Settled(_)))
                .count(),
            1,
            "{seen:?}"
        );
        drop(f);
        let mut closed = false;
        while !closed {
            closed = w
                .next()
                .await
                .unwrap()
                .contains(&Event::Settled("policy.yaml".into()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

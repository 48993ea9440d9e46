//! Where the running agent's policy comes from.
//!
//! The daemon does not know files: it asks a [`PolicySource`] for the next
//! validated [`Document`], applies it, and tells the source what it applied
//! (or refused). The watched file ([`WatchedFile`]) is the single-host
//! source; a store (etcd) source hands over the same `Document`, with the
//! membership records it resolved the policy with and the store revision it
//! came from, and reports back through [`PolicySource::applied`].

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::inotify::{DirWatch, Event};
use crate::{
    datapath::state::{READABLE, write_atomic_mode},
    policy::{self, Policy, PolicyError},
};

/// A policy document the source has parsed and validated.
#[derive(Debug, Clone)]
pub struct Document {
    /// The validated policy; `policy.source` holds its name and text.
    pub policy: Policy,
    /// The source's version of this document (a store revision). `None` for
    /// a file.
    pub revision: Option<u64>,
}

impl Document {
    /// A document that is only a policy (no store behind it).
    pub fn local(policy: Policy) -> Self {
        Self {
            policy,
            revision: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The document is not a valid policy (nothing is applied). Displays
    /// every diagnostic with file, line and column.
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    /// The policy file is larger than [`MAX_POLICY_BYTES`]; not read.
    #[error(
        "{} is {size} bytes, more than the {} MiB a policy may have; not read",
        path.display(),
        MAX_POLICY_BYTES >> 20
    )]
    TooLarge { path: PathBuf, size: u64 },
    /// The path names a FIFO, a device or a directory; not read.
    #[error("{} is not a regular file; not read", path.display())]
    NotRegular { path: PathBuf },
    /// The file kept changing while it was read; nothing applied.
    #[error(
        "{} kept changing while it was read; not applied (it is read again when written)",
        path.display()
    )]
    Unsettled { path: PathBuf },
    /// The committed document could not be stored.
    #[error("writing {}: {source:#}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: anyhow::Error,
    },
}

impl SourceError {
    /// One line for logs.
    pub fn summary(&self) -> String {
        match self {
            Self::Invalid(e) => e.summary(),
            other => other.to_string(),
        }
    }
}

/// Reads and validates the source's current document. Runs wherever the
/// daemon chooses (a blocking thread for a big policy).
pub type Reader = Box<dyn FnOnce() -> Result<Document, SourceError> + Send>;

/// What the daemon did with a document, for the source to report.
#[derive(Debug, Clone, Copy)]
pub enum Applied<'a> {
    /// In force as this generation.
    InForce {
        generation: u64,
        revision: Option<u64>,
    },
    /// Refused; the running policy stays.
    Refused {
        revision: Option<u64>,
        error: &'a str,
    },
}

/// A source of policy documents for the daemon.
pub trait PolicySource: Send {
    /// Where the documents come from, for logs and `status`.
    fn describe(&self) -> String;

    /// Resolves when the source may hold a document the daemon has not read.
    /// Cancel-safe: dropping the future loses no change.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;

    /// A reader of the current (committed) document. Marks it as read, so
    /// [`changed`](Self::changed) waits for the next change.
    fn reader(&mut self) -> Reader;

    /// Makes `policy` (validated, applied) the committed document: what the
    /// source hands out from now on, also after a restart. Returns where it
    /// was stored, for messages.
    fn commit(&mut self, policy: &Policy) -> Result<String, SourceError>;

    /// The daemon's answer to the document it last read.
    fn applied(&mut self, outcome: Applied<'_>);

    /// How often the daemon hands the datapath's totals to
    /// [`counters`](Self::counters); `None`: never (nobody reads them).
    fn counters_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// The datapath's totals, as `stats` reads them.
    fn counters(&mut self, _totals: &crate::stats::Totals) {}

    /// Validates a policy handed to the agent directly (`apply`), with
    /// whatever membership the source resolves its own documents with.
    fn resolve(&self, name: &str, text: &str) -> Result<Policy, PolicyError> {
        policy::parse(name, text)
    }
}

fn load_inventory(path: Option<&Path>) -> Result<policy::Inventory, PolicyError> {
    match path {
        Some(p) => policy::Inventory::load(p),
        None => Ok(policy::Inventory::default()),
    }
}

/// Policy files larger than this are refused (a reload must not take the
/// agent's memory with it).
pub const MAX_POLICY_BYTES: u64 = 64 << 20;

/// How long the policy file must stay quiet after a write before it is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The single-host source: a policy file, watched for changes.
///
/// A change is noticed when the file is closed after writing, or a new file
/// is renamed over it (also through a symlink, as Kubernetes ConfigMaps
/// do), through inotify on its directory; it is read once the file has been
/// quiet for [`DEBOUNCE`] — a file still open for writing is never read.
/// Where inotify is not available, the file is polled every 2 s and read
/// once two polls agree. The read itself re-checks size, modification time
/// and inode afterwards and retries if the file changed meanwhile.
pub struct WatchedFile {
    path: PathBuf,
    /// `run --inventory`: the devices and users whose addresses the policy's
    /// tags, users and groups resolve to (read afresh with every document).
    inventory: Option<PathBuf>,
    name: Option<std::ffi::OsString>,
    /// What the daemon last read (shared with the readers, which record the
    /// stamp of the bytes they actually parsed).
    seen: Arc<Mutex<Option<FileStamp>>>,
    watch: Option<Watch>,
}

enum Watch {
    Inotify {
        dir: DirWatch,
        /// Something settled: read when quiet.
        dirty: bool,
        quiet_at: tokio::time::Instant,
    },
    Poll {
        interval: tokio::time::Interval,
        last: Option<FileStamp>,
    },
}

impl WatchedFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            inventory: None,
            name: path.file_name().map(ToOwned::to_owned),
            seen: Arc::new(Mutex::new(FileStamp::of(path))),
            watch: None,
        }
    }

    /// Resolves the policy with the inventory file at `path` (re-read with
    /// every reload).
    pub fn with_inventory(mut self, path: Option<&Path>) -> Self {
        self.inventory = path.map(Path::to_path_buf);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seen(&self) -> Option<FileStamp> {
        self.seen.lock().map(|s| *s).unwrap_or(None)
    }

    fn set_seen(&self, stamp: Option<FileStamp>) {
        if let Ok(mut s) = self.seen.lock() {
            *s = stamp;
        }
    }

    fn start_watch(&self) -> Watch {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match DirWatch::new(dir) {
            Ok(watch) => {
                log::info!("watching {} for changes", self.path.display());
                // Dirty from the start: a change between the first read and
                // this watch is found by the stamp check once quiet.
                Watch::Inotify {
                    dir: watch,
                    dirty: true,
                    quiet_at: quiet_deadline(),
                }
            }
            Err(e) => {
                log::warn!(
                    "cannot watch {} with inotify ({e}); polling it every 2 s",
                    dir.display()
                );
                Watch::Poll {
                    interval: tokio::time::interval(Duration::from_secs(2)),
                    last: None,
                }
            }
        }
    }
}

impl PolicySource for WatchedFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    async fn changed(&mut self) {
        if self.watch.is_none() {
            self.watch = Some(self.start_watch());
        }
        loop {
            let Some(watch) = self.watch.as_mut() else {
                return;
            };
            match watch {
                Watch::Inotify {
                    dir,
                    dirty,
                    quiet_at,
                } => {
                    let quiet = async {
                        if *dirty {
                            tokio::time::sleep_until(*quiet_at).await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        events = dir.next() => match events {
                            Ok(events) => {
                                for e in events {
                                    let ours = match &e {
                                        Event::Settled(n) | Event::Modified(n) => {
                                            self.name.as_ref() == Some(n)
                                        }
                                        Event::Overflow => true,
                                    };
                                    match e {
                                        // Any settled name may be ours through a
                                        // symlink (ConfigMaps swap `..data`).
                                        Event::Settled(_) | Event::Overflow => {
                                            *dirty = true;
                                            *quiet_at = quiet_deadline();
                                        }
                                        Event::Modified(_) if ours => {
                                            *quiet_at = quiet_deadline();
                                        }
                                        Event::Modified(_) => {}
                                    }
                                }
                            }
                            Err(e) => {
                                log::warn!("inotify on {}: {e}; polling instead", self.path.display());
                                self.watch = Some(Watch::Poll {
                                    interval: tokio::time::interval(Duration::from_secs(2)),
                                    last: None,
                                });
                            }
                        },
                        () = quiet => {
                            *dirty = false;
                            if FileStamp::of(&self.path) != self.seen() {
                                return;
                            }
                        }
                    }
                }
                Watch::Poll { interval, last } => {
                    interval.tick().await;
                    let now = FileStamp::of(&self.path);
                    let stable = now == *last;
                    *last = now;
                    if stable && now != self.seen() {
                        return;
                    }
                }
            }
        }
    }

    fn reader(&mut self) -> Reader {
        let path = self.path.clone();
        let inventory = self.inventory.clone();
        let seen = self.seen.clone();
        Box::new(move || {
            let (text, stamp) = read_settled(&path)?;
            if let Ok(mut s) = seen.lock() {
                *s = Some(stamp);
            }
            let inv = load_inventory(inventory.as_deref())?;
            Ok(Document::local(policy::parse_with(
                &path.display().to_string(),
                &text,
                &inv,
            )?))
        })
    }

    fn resolve(&self, name: &str, text: &str) -> Result<Policy, PolicyError> {
        policy::parse_with(name, text, &load_inventory(self.inventory.as_deref())?)
    }

    fn commit(&mut self, policy: &Policy) -> Result<String, SourceError> {
        // Keep the mode the operator gave the file (0644 for a new one).
        let mode = std::fs::metadata(&self.path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(READABLE);
        write_atomic_mode(&self.path, policy.source.text.as_bytes(), mode).map_err(|source| {
            SourceError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        self.set_seen(FileStamp::of(&self.path));
        Ok(self.path.display().to_string())
    }

    fn applied(&mut self, _outcome: Applied<'_>) {
        // The daemon's log and the control answers are the file's report.
    }
}

fn quiet_deadline() -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(DEBOUNCE).unwrap_or(now)
}

/// Reads the file whole, refusing one above [`MAX_POLICY_BYTES`], and only
/// returns bytes that did not change while being read: the size,
/// modification time and inode before and after must agree (and the path
/// must still name the file that was read). Retries a few times.
fn read_settled(path: &Path) -> Result<(String, FileStamp), SourceError> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let name = path.display().to_string();
    let cannot = |e: std::io::Error| {
        SourceError::Invalid(PolicyError::new(
            policy::Source::new(name.clone(), ""),
            vec![policy::Diagnostic::error(
                None,
                format!("cannot read the policy: {e}"),
            )],
        ))
    };
    for _ in 0..10 {
        // Non-blocking, so that a FIFO put in its place cannot hang the
        // reader in open(); then only a regular file is read.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(cannot)?;
        if !f.metadata().map_err(cannot)?.is_file() {
            return Err(SourceError::NotRegular {
                path: path.to_path_buf(),
            });
        }
        let before = FileStamp::of_file(&f).map_err(cannot)?;
        if before.len > MAX_POLICY_BYTES {
            return Err(SourceError::TooLarge {
                path: path.to_path_buf(),
                size: before.len,
            });
        }
        let mut bytes = Vec::new();
        (&mut f)
            .take(MAX_POLICY_BYTES.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        let after = FileStamp::of_file(&f).map_err(cannot)?;
        let now = FileStamp::of(path);
        if before == after
            && now == Some(after)
            && u64::try_from(bytes.len()).ok() == Some(after.len)
        {
            let text = String::from_utf8(bytes).map_err(|e| {
                SourceError::Invalid(PolicyError::new(
                    policy::Source::new(name.clone(), ""),
                    vec![policy::Diagnostic::error(
                        None,
                        format!(
                            "the file is not UTF-8 text (invalid byte at offset {})",
                            e.utf8_error().valid_up_to()
                        ),
                    )],
                ))
            })?;
            return Ok((text, after));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(SourceError::Unsettled {
        path: path.to_path_buf(),
    })
}

/// Size, modification time and inode: changes when the file is saved, also
/// by editors that write a new file and rename it over the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: SystemTime,
    inode: u64,
}

impl FileStamp {
    fn of_file(f: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata()?;
        Ok(Self {
            len: m.len(),
            modified: m.modified()?,
            inode: m.ino(),
        })
    }

    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            len: m.len(),
            modified: m.modified().ok()?,
            inode: m.ino(),
        })
    }
}

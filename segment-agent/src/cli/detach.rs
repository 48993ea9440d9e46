//! `segment-agent detach`: remove enforcement. With `--iface`, only from
//! those interfaces; without, everything: links, programs, maps (conntrack
//! and counters included) and the state directory. Afterwards traffic flows
//! as if segment had never been there.

use anyhow::{Context, Result};
use log::info;
use segment_common::map_names;

use super::{Outcome, run::DirArgs};
use crate::agent::startup::pin_lock_file;
use crate::datapath::{
    loader::{detach_iface, pinned_interfaces, remove_pin},
    state::State,
};

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Detach even though an agent is running (it will keep running without
    /// a datapath until stopped).
    #[arg(long)]
    pub force: bool,
    /// Only detach from this interface (repeat for several); pinned maps and
    /// the other interfaces stay.
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    #[command(flatten)]
    pub dirs: DirArgs,
}

pub fn run(args: DetachArgs) -> Result<Outcome> {
    let paths = args.dirs.paths();
    if !args.ifaces.is_empty() {
        let mut state = State::load(&paths.state_file()).unwrap_or_default();
        for iface in &args.ifaces {
            if detach_iface(&paths, iface)? {
                println!("detached from {iface}");
            } else {
                println!("{iface}: nothing attached");
            }
            state.interfaces.retain(|i| i.name != *iface);
        }
        if paths.state_file().exists() {
            state.save(&paths.state_file())?;
        }
        return Ok(Outcome::Success);
    }
    if !args.force
        && let Some(pid) = running_agent(&paths)
    {
        anyhow::bail!(
            "an agent (pid {pid}) is running with this state or pin directory; stop it first, or pass --force"
        );
    }
    let pin_lock = pin_lock_file(&paths.pin_dir);
    let ifaces = pinned_interfaces(&paths);
    for iface in &ifaces {
        detach_iface(&paths, iface)?;
        println!("detached from {iface}");
    }
    for name in map_names::PROGRAMS {
        remove_pin(&paths.program(name))?;
    }
    for name in map_names::ALL {
        remove_pin(&paths.map(name))?;
    }
    // Maps of older layouts (other `_Vn` suffixes) are ours too; anything
    // else in the directory is left alone.
    if let Ok(entries) = std::fs::read_dir(&paths.pin_dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("SEG_"))
            {
                remove_pin(&e.path())?;
            }
        }
    }
    let _ = std::fs::remove_dir(paths.links_dir());
    let _ = std::fs::remove_dir(&paths.pin_dir);
    remove_pin_lock(&pin_lock);
    for f in [
        paths.state_file(),
        paths.slot_policy(0),
        paths.slot_policy(1),
    ] {
        remove_pin(&f).context("removing state")?;
    }
    info!("removed {}", paths.pin_dir.display());
    if ifaces.is_empty() {
        println!("no interface was attached; pinned state removed");
    } else {
        println!("segment removed: programs, links, maps and state");
    }
    Ok(Outcome::Success)
}

/// The pid of an agent holding the state directory's or the pin
/// directory's lock, if any.
pub fn running_agent(paths: &crate::datapath::Paths) -> Option<String> {
    holder(&paths.lock_file()).or_else(|| holder(&pin_lock_file(&paths.pin_dir)))
}

/// The pid written in a lock file that someone holds.
fn holder(lock: &std::path::Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(lock).ok()?;
    // SAFETY: flock on a file descriptor we own; released when it closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return None;
    }
    Some(
        std::fs::read_to_string(lock)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    )
}

/// Removes a pin directory's lock file, only while holding the lock (so an
/// agent starting right now cannot be left holding an unlinked one).
fn remove_pin_lock(lock: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(lock) else {
        return;
    };
    // SAFETY: flock on a file descriptor we own; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        let _ = std::fs::remove_file(lock);
    }
}

//! Talking to a running agent's control socket directly (not through the
//! CLI), the way a misbehaving or hostile client would: one request line per
//! connection, with a deadline so that a stuck agent fails the test instead
//! of hanging it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use crate::{agent::Agent, process};

/// The agent's control socket.
pub fn socket_path(agent: &Agent) -> PathBuf {
    agent.dirs.state.join("agent.sock")
}

/// Sends one request line on a fresh connection and waits (in a helper
/// thread, so that a stuck agent cannot hang the test) up to `timeout` for
/// the answer line. `None` when nothing came back in time.
pub fn request(sock: &Path, line: &str, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let sock = sock.to_path_buf();
    let line = line.to_owned();
    std::thread::spawn(move || {
        let r = (|| {
            let mut s = UnixStream::connect(&sock).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            s.write_all(line.as_bytes()).ok()?;
            s.write_all(b"\n").ok()?;
            let mut answer = String::new();
            BufReader::new(s).read_line(&mut answer).ok()?;
            Some(answer)
        })();
        let _ = tx.send(r);
    });
    rx.recv_timeout(timeout).ok().flatten()
}

/// The agent's answer to `status` within `timeout`, parsed.
pub fn answers_status(agent: &Agent, timeout: Duration) -> Option<serde_json::Value> {
    let answer = request(&socket_path(agent), r#"{"cmd":"status"}"#, timeout)?;
    serde_json::from_str(&answer).ok()
}

/// Whether the agent process still runs.
pub fn agent_alive(agent: &Agent) -> bool {
    process::alive(agent.pid())
}

//! The running agent's control socket (`$STATE_DIR/agent.sock`): one JSON
//! request per connection, one JSON response. `reload`, `apply`, `confirm`,
//! `status` and `flows` are clients of it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::datapath::Paths;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// What the agent enforces.
    Status,
    /// Re-read the watched policy file.
    Reload,
    /// Apply this policy. With `confirm_within_secs`, it is a candidate:
    /// rolled back unless confirmed in time. Without, it is committed (also
    /// written to the watched policy file).
    Apply {
        name: String,
        policy: String,
        #[serde(default)]
        confirm_within_secs: Option<f64>,
    },
    /// Commit the pending candidate.
    Confirm,
    /// Report every new flow for `seconds`, then answer with what was seen
    /// (also added to `observed.json` in the state directory).
    Observe { seconds: f64 },
    /// Recent flow log records after sequence number `after`.
    Flows {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            ok: true,
            message: message.into(),
            data,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// Sends one request to the running agent and waits for its answer.
pub fn request(paths: &Paths, req: &Request, timeout: Duration) -> Result<Response> {
    let sock = paths.control_socket();
    let mut stream = UnixStream::connect(&sock).with_context(|| {
        format!(
            "no running agent answers on {} (start one with `segment-agent run`)",
            sock.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .context("waiting for the agent's answer")?;
    serde_json::from_str(&answer).with_context(|| format!("bad answer from the agent: {answer:?}"))
}

/// Parses `90`, `90s`, `2m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (write e.g. 60s, 2m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("`{s}` must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::Apply {
            name: "p.yaml".into(),
            policy: "acls: []".into(),
            confirm_within_secs: Some(60.0),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"cmd\":\"apply\""), "{s}");
        let back: Request = serde_json::from_str(&s).unwrap();
        assert!(matches!(
            back,
            Request::Apply {
                confirm_within_secs: Some(_),
                ..
            }
        ));
    }
}

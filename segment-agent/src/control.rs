//! The running agent's control socket (`$STATE_DIR/agent.sock`): one JSON
//! request per connection, one JSON response. `reload`, `apply`, `confirm`,
//! `status` and `flows` are clients of it.

#![warn(clippy::arithmetic_side_effects)]

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
    /// Re-read the watched policy file. `force`: apply it even if it drops
    /// failsafe entries the running policy has.
    Reload {
        #[serde(default)]
        force: bool,
    },
    /// Apply this policy. With `confirm_within_secs`, it is a candidate:
    /// rolled back unless confirmed in time. Without, it is committed (also
    /// written to the watched policy file).
    Apply {
        name: String,
        policy: String,
        #[serde(default)]
        confirm_within_secs: Option<f64>,
        /// Apply it even if it drops failsafe entries the running policy has.
        #[serde(default)]
        force: bool,
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

impl Request {
    /// Whether the request changes what the agent enforces or records
    /// (only root and the agent's own user may send these).
    pub fn changes_state(&self) -> bool {
        match self {
            Self::Status | Self::Flows { .. } => false,
            Self::Reload { .. } | Self::Apply { .. } | Self::Confirm | Self::Observe { .. } => true,
        }
    }
}

/// Why a request failed, and so the client's exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is wrong (invalid policy, bad duration, nothing to
    /// confirm): nothing was applied. Exit 1.
    #[default]
    Invalid,
    /// Something failed that is not the input's fault (the kernel refused a
    /// map write, the policy file could not be written). Exit 2;
    /// [`Response::applied`] says whether the policy is in force anyway.
    Operational,
    /// The peer may not send this request (it is neither root nor the
    /// agent's user). Nothing was applied. Exit 2.
    NotPermitted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
    /// Set when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    /// Whether a policy was applied (is in force), also when `ok` is false
    /// ("applied as generation N, but not saved").
    #[serde(default)]
    pub applied: bool,
}

impl Response {
    pub fn ok(message: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            ok: true,
            message: message.into(),
            data,
            kind: None,
            applied: false,
        }
    }

    /// A successful answer that applied a policy.
    pub fn applied(message: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            applied: true,
            ..Self::ok(message, data)
        }
    }

    /// The input was refused; nothing was applied.
    pub fn error(message: impl Into<String>) -> Self {
        Self::failed(ErrorKind::Invalid, false, message)
    }

    pub fn failed(kind: ErrorKind, applied: bool, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
            kind: Some(kind),
            applied,
        }
    }

    /// The failure's kind (an answer without one is an invalid request).
    pub fn error_kind(&self) -> Option<ErrorKind> {
        (!self.ok).then(|| self.kind.unwrap_or_default())
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

/// The longest duration any command or request takes (`--confirm-within`,
/// `observe --duration`, `stats --watch`): a week. Longer ones are refused,
/// so that no deadline computed from them can overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration that is not a positive number of seconds of at most
/// [`MAX_DURATION`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("{0} s is not a positive duration")]
    NotPositive(f64),
    #[error("{0} s is too long: at most {max} s (one week)", max = MAX_DURATION.as_secs())]
    TooLong(f64),
}

/// Checks a duration given in seconds (as the control requests carry them).
pub fn duration_from_secs(secs: f64) -> Result<Duration, DurationError> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(DurationError::NotPositive(secs));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(DurationError::TooLong(secs)),
    }
}

/// `now + d`, or an error when the clock cannot represent it.
pub fn deadline_after(d: Duration) -> Result<std::time::Instant, DurationError> {
    std::time::Instant::now()
        .checked_add(d)
        .ok_or(DurationError::TooLong(d.as_secs_f64()))
}

/// Parses `90`, `90s`, `2m`, `1h`, `500ms`: positive, at most a week.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
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
    duration_from_secs(secs).map_err(|e| match e {
        DurationError::NotPositive(_) => format!("`{s}` must be a positive duration"),
        DurationError::TooLong(_) => format!(
            "`{s}` is too long: at most {}s (one week)",
            MAX_DURATION.as_secs()
        ),
    })
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
    fn durations_that_would_overflow_a_deadline_are_refused() {
        for s in [
            "10000000000000000000s",
            "18446744073709551616s",
            "999999999999999999999999h",
            "169h",
            "604801",
        ] {
            let e = parse_duration(s).expect_err(s);
            assert!(
                e.contains("too long") || e.contains("not a duration"),
                "{s}: {e}"
            );
        }
        assert_eq!(parse_duration("168h"), Ok(MAX_DURATION));
        for secs in [f64::NAN, f64::INFINITY, -1.0, 0.0, 1e19, 1e300, 604_800.5] {
            assert!(duration_from_secs(secs).is_err(), "{secs}");
        }
        assert_eq!(duration_from_secs(1.5), Ok(Duration::from_millis(1500)));
        assert!(deadline_after(MAX_DURATION).is_ok());
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::Apply {
            name: "p.yaml".into(),
            policy: "acls: []".into(),
            confirm_within_secs: Some(60.0),
            force: false,
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

    #[test]
    fn older_clients_requests_still_parse() {
        let r: Request = serde_json::from_str(r#"{"cmd":"reload"}"#).unwrap();
        assert!(matches!(r, Request::Reload { force: false }));
        let r: Request =
            serde_json::from_str(r#"{"cmd":"apply","name":"p","policy":"acls: []"}"#).unwrap();
        assert!(matches!(r, Request::Apply { force: false, .. }));
    }

    #[test]
    fn answers_say_what_kind_of_failure_and_whether_anything_was_applied() {
        let r = Response::failed(ErrorKind::Operational, true, "applied, not saved");
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"kind\":\"operational\""), "{s}");
        let back: Response = serde_json::from_str(&s).unwrap();
        assert_eq!(back.error_kind(), Some(ErrorKind::Operational));
        assert!(back.applied);
        // An answer from an agent that sends no kind is an invalid request.
        let old: Response = serde_json::from_str(r#"{"ok":false,"message":"x"}"#).unwrap();
        assert_eq!(old.error_kind(), Some(ErrorKind::Invalid));
        assert!(!old.applied);
        assert_eq!(
            Response::ok("fine", serde_json::Value::Null).error_kind(),
            None
        );
    }
}

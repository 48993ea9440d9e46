//! Waiting for a condition under a deadline, instead of sleeping for a
//! guessed time.

use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it returns `Some`, or panics with `what` after
/// `timeout`.
pub fn until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `cond` until it holds, or panics with `what` after `timeout`.
pub fn until_true(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    until(what, timeout, || cond().then_some(()))
}

/// Checks that `cond` holds at every poll for `period` (a property that
/// must *stay* true: nothing else would show that it does), panicking with
/// `what` the first time it does not.
pub fn holds_for(what: &str, period: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(cond(), "{what}");
        std::thread::sleep(POLL);
    }
}

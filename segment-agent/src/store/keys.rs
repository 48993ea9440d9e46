//! The key layout, all under one versioned prefix (default `/segment/v1/`):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `PREFIX policy` | [`PolicyDocument`](super::PolicyDocument) | `publish`, in a transaction |
//! | `PREFIX hosts/NAME` | [`Enrollment`](super::Enrollment) | the agent on NAME; `fleet remove` deletes it |
//! | `PREFIX status/NAME` | [`HostStatus`](super::HostStatus), on a lease | the agent on NAME |
//!
//! `hosts/` < `policy` < `status/` in byte order, so an agent watches one
//! range, `[PREFIX hosts/, PREFIX policy\0)`: the document and every
//! enrollment, but not the status records (which change with every report
//! of every host and which no agent needs).

/// The default prefix; the `v1` changes if a record's meaning ever does.
pub const DEFAULT_PREFIX: &str = "/segment/v1/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Policy,
    Host(String),
    Status(String),
    Other,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// `prefix` gets a trailing `/` if it lacks one.
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn policy(&self) -> String {
        format!("{}policy", self.prefix)
    }

    pub fn hosts_prefix(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.prefix)
    }

    pub fn status_prefix(&self) -> String {
        format!("{}status/", self.prefix)
    }

    pub fn status(&self, name: &str) -> String {
        format!("{}status/{name}", self.prefix)
    }

    /// The range an agent reads and watches: `[start, end)` covering the
    /// enrollments and the policy document, not the status records.
    pub fn agent_range(&self) -> (String, Vec<u8>) {
        let mut end = self.policy().into_bytes();
        end.push(0);
        (self.hosts_prefix(), end)
    }

    pub fn classify(&self, key: &[u8]) -> KeyKind {
        let Ok(key) = std::str::from_utf8(key) else {
            return KeyKind::Other;
        };
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return KeyKind::Other;
        };
        if rest == "policy" {
            KeyKind::Policy
        } else if let Some(name) = rest.strip_prefix("hosts/") {
            if check_host_name(name).is_ok() {
                KeyKind::Host(name.to_owned())
            } else {
                KeyKind::Other
            }
        } else if let Some(name) = rest.strip_prefix("status/") {
            if check_host_name(name).is_ok() {
                KeyKind::Status(name.to_owned())
            } else {
                KeyKind::Other
            }
        } else {
            KeyKind::Other
        }
    }
}

/// A host name as used in keys and in `tagOwners`: 1 to 253 characters of
/// letters, digits, `-`, `_` and `.`, not starting with `.` or `-`.
pub fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("it starts with `.` or `-`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("only letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_classification() {
        let k = Keys::new("/segment/v1");
        assert_eq!(k.policy(), "/segment/v1/policy");
        assert_eq!(k.host("web-1"), "/segment/v1/hosts/web-1");
        assert_eq!(k.status("web-1"), "/segment/v1/status/web-1");
        assert_eq!(k.classify(b"/segment/v1/policy"), KeyKind::Policy);
        assert_eq!(
            k.classify(b"/segment/v1/hosts/web-1"),
            KeyKind::Host("web-1".into())
        );
        assert_eq!(
            k.classify(b"/segment/v1/status/db"),
            KeyKind::Status("db".into())
        );
        assert_eq!(k.classify(b"/segment/v1/hosts/a/b"), KeyKind::Other);
        assert_eq!(k.classify(b"/other/policy"), KeyKind::Other);
    }

    #[test]
    fn the_agent_range_holds_hosts_and_policy_but_not_status() {
        let k = Keys::default();
        let (start, end) = k.agent_range();
        let inside = |key: &str| key.as_bytes() >= start.as_bytes() && key.as_bytes() < &end[..];
        assert!(inside(&k.host("a")));
        assert!(inside(&k.host("zzz")));
        assert!(inside(&k.policy()));
        assert!(!inside(&k.status("a")));
        assert!(!inside("/segment/v1/policy-old"));
    }

    #[test]
    fn host_names() {
        assert!(check_host_name("db-1.example").is_ok());
        assert!(check_host_name("").is_err());
        assert!(check_host_name("a/b").is_err());
        assert!(check_host_name("-x").is_err());
        assert!(check_host_name(&"a".repeat(254)).is_err());
    }
}

//! The small languages inside policy strings: selectors (`tag:web`,
//! `group:admins`, `alice`, `10.0.0.0/8`, `*`), destinations with ports
//! (`tag:db:5432`, `[fd00::1]:22`, `host:8000-8100`), and protocols.
//!
//! Functions here only look at one string. Errors carry the character range
//! of the offending part so the caller can point at it in the file.

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{PROTOCOL_NAMES, PortRange, PortSet};

/// What is wrong with a string, and where inside it (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub len: usize,
    pub message: String,
    pub help: Option<String>,
}

impl SyntaxError {
    fn new(offset: usize, len: usize, message: impl Into<String>) -> Self {
        Self {
            offset,
            len: len.max(1),
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Moves the error right by `by` characters (for a part of a larger string).
    pub fn shifted(mut self, by: usize) -> Self {
        self.offset += by;
        self
    }
}

/// A selector before names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorText<'a> {
    Any,
    Tag(&'a str),
    Group(&'a str),
    /// A bare name: a user or a host.
    Name(&'a str),
    Net(IpNet),
}

/// Whether `s` is a valid tag, group, user or host name: a letter first, then
/// letters, digits, `.`, `_`, `-`, `@`, `+`.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'))
}

pub fn name_help() -> &'static str {
    "names start with a letter and use letters, digits, `.`, `_`, `-`, `@` and `+`"
}

/// Parses an IP address (as a single-address prefix) or a CIDR. A CIDR with
/// bits set below its prefix length is refused: `10.0.0.5/24` is most
/// likely a typo for `10.0.0.0/24` or `10.0.0.5/32`.
pub fn parse_net(s: &str) -> Result<IpNet, SyntaxError> {
    let whole = s.chars().count();
    if let Some((addr, len)) = s.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| {
            SyntaxError::new(
                0,
                addr.chars().count(),
                format!("`{addr}` is not an IP address"),
            )
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
            SyntaxError::new(
                addr.chars().count() + 1,
                len.chars().count(),
                format!(
                    "`/{len}` is not a prefix length for an IPv{} address",
                    if ip.is_ipv4() { 4 } else { 6 }
                ),
            )
            .help(format!("prefix lengths go from 0 to {max}"))
        })?;
        let net = IpNet::new(ip, prefix).map_err(|_| SyntaxError::new(0, whole, "invalid CIDR"))?;
        if net.network() != ip {
            return Err(
                SyntaxError::new(0, whole, format!("`{s}` has host bits set")).help(format!(
                    "write `{}` for the whole network, or `{ip}` for the single address",
                    net.trunc()
                )),
            );
        }
        Ok(net)
    } else {
        let ip: IpAddr = s.parse().map_err(|_| {
            SyntaxError::new(0, whole, format!("`{s}` is not an IP address or CIDR"))
        })?;
        Ok(IpNet::from(ip))
    }
}

fn looks_like_address(s: &str) -> bool {
    s.contains(':') || s.starts_with(|c: char| c.is_ascii_digit())
}

/// Parses a selector (no ports).
pub fn parse_selector(s: &str) -> Result<SelectorText<'_>, SyntaxError> {
    let whole = s.chars().count();
    if s.is_empty() {
        return Err(SyntaxError::new(0, 1, "empty selector")
            .help("write `*`, `tag:NAME`, `group:NAME`, a user, a host, an IP or a CIDR"));
    }
    if s == "*" {
        return Ok(SelectorText::Any);
    }
    if let Some(name) = s.strip_prefix("tag:") {
        return check_name(name, 4, "tag").map(SelectorText::Tag);
    }
    if let Some(name) = s.strip_prefix("group:") {
        return check_name(name, 6, "group").map(SelectorText::Group);
    }
    if let Some((prefix, _)) = s.split_once(':')
        && is_valid_name(prefix)
        && !s.contains("::")
    {
        let hint = match prefix {
            "tags" | "tg" | "tagg" => Some("tag:"),
            "groups" | "grp" | "grup" | "gruop" => Some("group:"),
            _ => None,
        };
        let mut err = SyntaxError::new(
            0,
            prefix.chars().count() + 1,
            format!("unknown selector kind `{prefix}:`"),
        );
        err = match hint {
            Some(h) => err.help(format!("did you mean `{h}`?")),
            None => err.help(
                "selectors are `*`, `tag:NAME`, `group:NAME`, a user, a host, an IP or a CIDR",
            ),
        };
        return Err(err);
    }
    if looks_like_address(s) {
        return parse_net(s).map(SelectorText::Net);
    }
    if is_valid_name(s) {
        return Ok(SelectorText::Name(s));
    }
    Err(SyntaxError::new(0, whole, format!("`{s}` is not a valid selector")).help(name_help()))
}

fn check_name<'a>(name: &'a str, offset: usize, kind: &str) -> Result<&'a str, SyntaxError> {
    if is_valid_name(name) {
        Ok(name)
    } else if name.is_empty() {
        Err(SyntaxError::new(
            offset,
            1,
            format!("missing {kind} name after `{kind}:`"),
        ))
    } else {
        Err(SyntaxError::new(
            offset,
            name.chars().count(),
            format!("`{name}` is not a valid {kind} name"),
        )
        .help(name_help()))
    }
}

/// A destination split into its selector and its port list, with the
/// character offset where the ports start.
#[derive(Debug, PartialEq, Eq)]
pub struct DestText<'a> {
    pub selector: SelectorText<'a>,
    pub ports: PortSet,
}

/// True for a list item that is only ports, as YAML makes of
/// `[tag:web:80,443]`: the items `tag:web:80` and `443`. The caller appends
/// such items to the previous destination.
pub fn is_port_continuation(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '-' || c == ' ')
}

/// Parses `selector:ports`. IPv6 addresses take brackets (`[fd00::1]:22`),
/// except CIDRs, whose `/len` makes the last colon unambiguous.
pub fn parse_dest(s: &str) -> Result<DestText<'_>, SyntaxError> {
    let whole = s.chars().count();
    let missing_ports = || {
        SyntaxError::new(0, whole, format!("destination `{s}` has no ports"))
            .help(format!("add the ports after a colon: `{s}:22`, `{s}:80,443`, `{s}:8000-8100`, or `{s}:*` for all"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(SyntaxError::new(
                0,
                whole,
                "missing `]` after the IPv6 address",
            ));
        };
        let inside = &rest[..close];
        let after = &rest[close + 1..];
        let net = parse_net(inside).map_err(|e| e.shifted(1))?;
        let Some(ports) = after.strip_prefix(':') else {
            return Err(missing_ports());
        };
        let port_offset = s.chars().count() - ports.chars().count();
        let ports = parse_ports(ports).map_err(|e| e.shifted(port_offset))?;
        return Ok(DestText {
            selector: SelectorText::Net(net),
            ports,
        });
    }
    let Some((sel, ports)) = s.rsplit_once(':') else {
        return Err(missing_ports());
    };
    if !(ports == "*" || ports.starts_with(|c: char| c.is_ascii_digit())) {
        return Err(missing_ports());
    }
    if sel.contains(':')
        && !sel.contains('/')
        && !sel.starts_with("tag:")
        && !sel.starts_with("group:")
        && sel.parse::<std::net::Ipv6Addr>().is_ok()
    {
        return Err(SyntaxError::new(
            0,
            whole,
            format!("`{s}` is ambiguous: is `{ports}` a port or part of the address?"),
        )
        .help(format!(
            "write IPv6 destinations in brackets: `[{sel}]:{ports}` (quote it inside a flow list)"
        )));
    }
    let selector = parse_selector(sel)?;
    let port_offset = sel.chars().count() + 1;
    let ports = parse_ports(ports).map_err(|e| e.shifted(port_offset))?;
    Ok(DestText { selector, ports })
}

/// Parses `*`, `22`, `80,443`, `8000-8100` or a mix.
pub fn parse_ports(s: &str) -> Result<PortSet, SyntaxError> {
    if s == "*" {
        return Ok(PortSet::Any);
    }
    let mut ranges = Vec::new();
    let mut offset = 0;
    for part in s.split(',') {
        let len = part.chars().count();
        let trimmed = part.trim();
        let lead = part.len() - part.trim_start().len();
        let at = offset + lead;
        if trimmed.is_empty() {
            return Err(SyntaxError::new(offset, 1, "empty port in list")
                .help("separate ports with single commas: `80,443`"));
        }
        if trimmed == "*" {
            return Err(
                SyntaxError::new(at, 1, "`*` cannot be mixed with other ports")
                    .help("`*` already means every port"),
            );
        }
        let range = if let Some((lo, hi)) = trimmed.split_once('-') {
            let lo_n = parse_port(lo, at)?;
            let hi_n = parse_port(hi, at + lo.chars().count() + 1)?;
            if lo_n > hi_n {
                return Err(SyntaxError::new(
                    at,
                    trimmed.chars().count(),
                    format!("port range `{trimmed}` is reversed"),
                )
                .help(format!("write `{hi_n}-{lo_n}`")));
            }
            PortRange { lo: lo_n, hi: hi_n }
        } else {
            let p = parse_port(trimmed, at)?;
            PortRange { lo: p, hi: p }
        };
        ranges.push(range);
        offset += len + 1;
    }
    Ok(PortSet::normalized(ranges))
}

fn parse_port(s: &str, offset: usize) -> Result<u16, SyntaxError> {
    let len = s.chars().count();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return Err(
            SyntaxError::new(offset, len, format!("`{s}` is not a port number"))
                .help("ports are numbers from 0 to 65535, ranges `a-b`, or `*`"),
        );
    }
    s.parse::<u16>().map_err(|_| {
        SyntaxError::new(offset, len, format!("port `{s}` is out of range"))
            .help("ports go from 0 to 65535")
    })
}

/// Parses a protocol name or number.
pub fn parse_proto(s: &str) -> Result<u8, SyntaxError> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    let mut err = SyntaxError::new(0, s.chars().count(), format!("unknown protocol `{s}`"));
    let names = PROTOCOL_NAMES.iter().map(|(n, _)| *n);
    err = match super::diagnostic::closest(&lower, names) {
        Some(c) => err.help(format!("did you mean `{c}`?")),
        None if s.parse::<u64>().is_ok() => err.help("protocol numbers go from 0 to 255"),
        None => err.help("use tcp, udp, icmp, icmpv6, sctp, another IANA name, or a number 0-255"),
    };
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn selectors() {
        assert_eq!(parse_selector("*"), Ok(SelectorText::Any));
        assert_eq!(
            parse_selector("tag:web-server"),
            Ok(SelectorText::Tag("web-server"))
        );
        assert_eq!(
            parse_selector("group:admins"),
            Ok(SelectorText::Group("admins"))
        );
        assert_eq!(
            parse_selector("alice@example.com"),
            Ok(SelectorText::Name("alice@example.com"))
        );
        assert_eq!(
            parse_selector("10.0.0.1"),
            Ok(SelectorText::Net(net("10.0.0.1/32")))
        );
        assert_eq!(
            parse_selector("fd00::/64"),
            Ok(SelectorText::Net(net("fd00::/64")))
        );
        assert_eq!(
            parse_selector("fd00::1"),
            Ok(SelectorText::Net(net("fd00::1/128")))
        );
    }

    #[test]
    fn selector_errors_point_and_help() {
        let e = parse_selector("tags:web").unwrap_err();
        assert_eq!((e.offset, e.len), (0, 5));
        assert_eq!(e.help.as_deref(), Some("did you mean `tag:`?"));
        let e = parse_selector("tag:").unwrap_err();
        assert!(e.message.contains("missing tag name"), "{e:?}");
        let e = parse_selector("10.0.0.5/24").unwrap_err();
        assert!(e.message.contains("host bits"), "{e:?}");
        assert!(e.help.unwrap().contains("10.0.0.0/24"));
        let e = parse_selector("10.0.0.300").unwrap_err();
        assert!(e.message.contains("not an IP address"), "{e:?}");
        let e = parse_selector("10.0.0.0/33").unwrap_err();
        assert_eq!(e.offset, 9);
    }

    #[test]
    fn destinations() {
        let d = parse_dest("tag:db-server:5432").unwrap();
        assert_eq!(d.selector, SelectorText::Tag("db-server"));
        assert_eq!(
            d.ports,
            PortSet::Ranges(vec![PortRange { lo: 5432, hi: 5432 }])
        );
        let d = parse_dest("tag:web:80,443").unwrap();
        assert_eq!(d.ports.to_string(), "80,443");
        let d = parse_dest("*:*").unwrap();
        assert_eq!((d.selector, d.ports), (SelectorText::Any, PortSet::Any));
        let d = parse_dest("[fd00::1]:22").unwrap();
        assert_eq!(d.selector, SelectorText::Net(net("fd00::1/128")));
        let d = parse_dest("fd00:10::/64:8000-8100").unwrap();
        assert_eq!(d.selector, SelectorText::Net(net("fd00:10::/64")));
        assert_eq!(d.ports.to_string(), "8000-8100");
        let d = parse_dest("10.1.2.0/24:0-65535").unwrap();
        assert_eq!(d.ports, PortSet::Any);
    }

    #[test]
    fn destination_errors() {
        let e = parse_dest("tag:db").unwrap_err();
        assert!(e.message.contains("has no ports"), "{e:?}");
        assert!(e.help.unwrap().contains("tag:db:*"));
        let e = parse_dest("fd00::1:22").unwrap_err();
        assert!(e.message.contains("ambiguous"), "{e:?}");
        assert!(e.help.unwrap().contains("[fd00::1]:22"));
        let e = parse_dest("tag:db:443-80").unwrap_err();
        assert!(e.message.contains("reversed"), "{e:?}");
        assert_eq!(e.offset, 7);
        let e = parse_dest("tag:db:70000").unwrap_err();
        assert!(e.message.contains("out of range"), "{e:?}");
        assert_eq!((e.offset, e.len), (7, 5));
        let e = parse_dest("tag:db:80,,443").unwrap_err();
        assert!(e.message.contains("empty port"), "{e:?}");
    }

    #[test]
    fn port_lists_merge() {
        assert_eq!(
            parse_ports("443,80,81,82-90").unwrap().to_string(),
            "80-90,443"
        );
        assert_eq!(parse_ports("0-100,101-65535").unwrap(), PortSet::Any);
    }

    #[test]
    fn continuation_items() {
        assert!(is_port_continuation("139"));
        assert!(is_port_continuation("139,445"));
        assert!(is_port_continuation("8000-8100"));
        assert!(!is_port_continuation("alice"));
        assert!(!is_port_continuation("10.0.0.1:22"));
        assert!(!is_port_continuation("10.0.0.0/8"));
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_proto("tcp"), Ok(6));
        assert_eq!(parse_proto("UDP"), Ok(17));
        assert_eq!(parse_proto("icmpv6"), Ok(58));
        assert_eq!(parse_proto("47"), Ok(47));
        let e = parse_proto("tpc").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `tcp`?"));
        let e = parse_proto("300").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("protocol numbers go from 0 to 255"));
    }
}

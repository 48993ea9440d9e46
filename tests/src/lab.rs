//! A small network in namespaces: hosts, each wired by a veth pair to one
//! gateway namespace that routes between them. segment enforces on the
//! gateway's veth ends (native XDP), like a host-based firewall sitting on
//! the path between machines.
//!
//! Neighbour entries are permanent and IPv6 duplicate address detection is
//! off, so the only packets on the wires are the ones a test sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::netns::Netns;

pub struct HostSpec {
    pub name: &'static str,
    /// Addresses on the host (the first is the primary), with prefix length.
    pub v4: Vec<(&'static str, u8)>,
    pub v6: Vec<(&'static str, u8)>,
    /// Gateway addresses on the link (IPv4, IPv6).
    pub gw4: &'static str,
    pub gw6: Option<&'static str>,
}

pub struct Host {
    pub name: &'static str,
    pub ns: Netns,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// The gateway's interface facing this host (where segment attaches).
    pub gw_iface: String,
    pub mac: [u8; 6],
    pub gw_mac: [u8; 6],
}

impl Host {
    pub fn ip4(&self) -> IpAddr {
        IpAddr::V4(self.v4[0])
    }

    pub fn ip6(&self) -> IpAddr {
        IpAddr::V6(self.v6[0])
    }
}

pub struct Lab {
    pub gw: Netns,
    pub hosts: Vec<Host>,
}

impl Lab {
    pub fn new(specs: Vec<HostSpec>) -> Self {
        crate::netns::sweep_stale();
        let gw = Netns::new("gw");
        gw.sysctl("net.ipv4.ip_forward", "1");
        gw.sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut hosts = Vec::new();
        for spec in specs {
            let ns = Netns::new(spec.name);
            let gw_iface = format!("to-{}", spec.name);
            crate::netns::sh(&[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &gw_iface,
                "netns",
                gw.name(),
            ]);
            for (a, len) in &spec.v4 {
                ns.ip(&["addr", "add", &format!("{a}/{len}"), "dev", "eth0"]);
            }
            for (a, len) in &spec.v6 {
                ns.ip(&["addr", "add", &format!("{a}/{len}"), "dev", "eth0", "nodad"]);
            }
            let (gw_len4, gw_len6) = (spec.v4[0].1, spec.v6.first().map(|v| v.1).unwrap_or(64));
            gw.ip(&[
                "addr",
                "add",
                &format!("{}/{gw_len4}", spec.gw4),
                "dev",
                &gw_iface,
            ]);
            if let Some(g6) = spec.gw6 {
                gw.ip(&[
                    "addr",
                    "add",
                    &format!("{g6}/{gw_len6}"),
                    "dev",
                    &gw_iface,
                    "nodad",
                ]);
            }
            ns.ip(&["link", "set", "eth0", "up"]);
            gw.ip(&["link", "set", &gw_iface, "up"]);
            ns.ip(&["route", "add", "default", "via", spec.gw4]);
            if let Some(g6) = spec.gw6 {
                ns.ip(&["-6", "route", "add", "default", "via", g6]);
            }
            let mac = ns.mac("eth0");
            let gw_mac = gw.mac(&gw_iface);
            let fmt = |m: [u8; 6]| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            };
            ns.ip(&[
                "neigh",
                "replace",
                spec.gw4,
                "lladdr",
                &fmt(gw_mac),
                "nud",
                "permanent",
                "dev",
                "eth0",
            ]);
            if let Some(g6) = spec.gw6 {
                ns.ip(&[
                    "neigh",
                    "replace",
                    g6,
                    "lladdr",
                    &fmt(gw_mac),
                    "nud",
                    "permanent",
                    "dev",
                    "eth0",
                ]);
            }
            for (a, _) in spec.v4.iter().chain(spec.v6.iter()) {
                gw.ip(&[
                    "neigh",
                    "replace",
                    a,
                    "lladdr",
                    &fmt(mac),
                    "nud",
                    "permanent",
                    "dev",
                    &gw_iface,
                ]);
            }
            hosts.push(Host {
                name: spec.name,
                ns,
                v4: spec
                    .v4
                    .iter()
                    .map(|(a, _)| a.parse().expect("IPv4"))
                    .collect(),
                v6: spec
                    .v6
                    .iter()
                    .map(|(a, _)| a.parse().expect("IPv6"))
                    .collect(),
                gw_iface,
                mac,
                gw_mac,
            });
        }
        Self { gw, hosts }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn gw_ifaces(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.gw_iface.clone()).collect()
    }

    /// The standard lab: web, db and laptop, with IPv4 and IPv6.
    pub fn standard() -> Self {
        Self::new(vec![
            HostSpec {
                name: "web",
                v4: vec![("10.10.0.2", 24)],
                v6: vec![("fd00:10::2", 64)],
                gw4: "10.10.0.254",
                gw6: Some("fd00:10::fe"),
            },
            HostSpec {
                name: "db",
                v4: vec![("10.10.1.10", 24)],
                v6: vec![("fd00:1::10", 64)],
                gw4: "10.10.1.254",
                gw6: Some("fd00:1::fe"),
            },
            HostSpec {
                name: "laptop",
                // alice, carol
                v4: vec![("10.10.9.5", 24), ("10.10.9.7", 24)],
                v6: vec![("fd00:9::5", 64)],
                gw4: "10.10.9.254",
                gw6: Some("fd00:9::fe"),
            },
        ])
    }
}

//! A fleet in namespaces: hosts wired to one gateway (the lab), each with
//! its own `segment-agent run --store` enforcing on the host's own `eth0`,
//! and an etcd inside the gateway namespace on a management address
//! (`10.99.0.1` on the gateway's loopback), which the hosts reach through
//! their default route — so every agent's store traffic crosses the
//! interface it enforces on. Everything is removed on drop.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    agent::{Agent, Dirs, agent_bin, outcome},
    etcd::{Certs, Etcd, TempDir},
    lab::{HostSpec, Lab},
    netns::Netns,
};

/// The store's address inside the gateway namespace.
pub const STORE_IP: &str = "10.99.0.1";

/// The fleet policy of the tests: web-* hosts may own tag:web, db-* hosts
/// tag:db; web may reach db on 5432 (and 5433 in the "wide" variant). The
/// failsafe keeps the store's own traffic flowing whatever the rules say.
/// The static members make the `tests:` meaningful before anyone enrolls.
pub fn fleet_policy(extra_port: Option<u16>) -> String {
    let ports = match extra_port {
        Some(p) => format!("tag:db:5432, tag:db:{p}"),
        None => "tag:db:5432".to_owned(),
    };
    format!(
        "tags:
  web: [10.10.0.100]
  db: [10.10.1.100]
tagOwners:
  tag:web: [web-*]
  tag:db: [db-*]
failsafe:
  - {{src: [{STORE_IP}], dst: ['*:*'], proto: tcp}}
acls:
  - {{action: accept, src: [tag:web], dst: [{ports}], proto: tcp}}
tests:
  - src: tag:web
    accept: [tag:db:5432]
    deny: [tag:db:22]
"
    )
}

pub struct Fleet {
    pub lab: Lab,
    pub etcd: Etcd,
    pub certs: Option<Certs>,
    pub files: TempDir,
}

impl Fleet {
    /// web-1 (10.10.0.2), db-1 (10.10.1.10) and laptop (10.10.9.5), and an
    /// etcd in the gateway (with TLS and client certificates if `tls`).
    pub fn new(tls: bool) -> Self {
        let lab = Lab::new(vec![
            HostSpec {
                name: "web",
                v4: vec![("10.10.0.2", 24)],
                v6: vec![],
                gw4: "10.10.0.254",
                gw6: None,
            },
            HostSpec {
                name: "db",
                v4: vec![("10.10.1.10", 24)],
                v6: vec![],
                gw4: "10.10.1.254",
                gw6: None,
            },
            HostSpec {
                name: "laptop",
                v4: vec![("10.10.9.5", 24)],
                v6: vec![],
                gw4: "10.10.9.254",
                gw6: None,
            },
        ]);
        lab.gw
            .ip(&["addr", "add", &format!("{STORE_IP}/32"), "dev", "lo"]);
        let ip: IpAddr = STORE_IP.parse().expect("IPv4");
        let certs = tls.then(|| Certs::generate(ip, "segment-agent"));
        let etcd = Etcd::start_in(Some(&lab.gw.path()), ip, certs.as_ref());
        Self {
            lab,
            etcd,
            certs,
            files: TempDir::new("fleet"),
        }
    }

    /// The store flags: `--store URL` (and the TLS files).
    pub fn store_args(&self) -> Vec<String> {
        let mut a = vec!["--store".to_owned(), self.etcd.url()];
        if let Some(c) = &self.certs {
            for (flag, path) in [
                ("--store-ca", &c.ca),
                ("--store-cert", &c.client_cert),
                ("--store-key", &c.client_key),
            ] {
                a.push(flag.to_owned());
                a.push(path.display().to_string());
            }
        }
        a
    }

    /// `segment-agent ARGS... <store flags>` run inside `ns` (the gateway:
    /// the operator's seat). Returns (exit code, stdout, stderr).
    pub fn cli(&self, ns: &Netns, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(agent_bin())
            .args(args)
            .args(self.store_args())
            .output()
            .expect("running segment-agent");
        outcome(&out)
    }

    /// Publishes `text`; returns the store revision (panics unless exit 0).
    pub fn publish(&self, text: &str) -> i64 {
        let path = self.files.path.join(format!(
            "policy-{}.yaml",
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::write(&path, text).expect("writing the policy");
        let (code, out, err) =
            self.cli(&self.lab.gw, &["publish", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "publish failed: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("publish --json");
        v["revision"].as_i64().expect("a revision")
    }

    /// `fleet status --json`.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&self.lab.gw, &["fleet", "status", "--json"]);
        assert_eq!(code, 0, "fleet status failed: {out}{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("fleet status JSON: {e}\n{out}"))
    }

    /// Waits until `pred` holds for `fleet status --json`; panics with the
    /// last status after `timeout`.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "fleet status never showed {what} within {timeout:?}:\n{}",
                serde_json::to_string_pretty(&s).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every host in `hosts` is enrolled, reports, and is not
    /// behind the current policy revision and membership.
    pub fn wait_converged(&self, hosts: &[&str], timeout: Duration) -> serde_json::Value {
        self.wait_status(&format!("{hosts:?} converged"), timeout, |s| {
            hosts.iter().all(|h| {
                host(s, h).is_some_and(|x| {
                    x["enrolled"] == true
                        && x["behind"] == false
                        && x["applied_revision"] == s["revision"]
                })
            })
        })
    }

    /// Starts the agent of host `name` (namespace `ns`) enrolling with `tags`.
    pub fn agent(&self, ns: &Netns, name: &str, tags: &[&str], dirs: Dirs) -> Agent {
        let mut args = vec![
            "--iface".to_owned(),
            "eth0".to_owned(),
            "--host".to_owned(),
            name.to_owned(),
            // Counters in the status every second, not every 30 s.
            "--report-counters-every".to_owned(),
            "1s".to_owned(),
        ];
        if !tags.is_empty() {
            args.push("--tags".to_owned());
            args.push(tags.join(","));
        }
        args.extend(self.store_args());
        Agent::start_run(ns, dirs, &args)
    }
}

/// A host's entry in `fleet status --json`.
pub fn host<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
}

/// The tags of `fleet status --json` host `name` under `key`.
pub fn tags(status: &serde_json::Value, name: &str, key: &str) -> Vec<String> {
    host(status, name)
        .and_then(|h| h[key].as_array())
        .map(|a| {
            a.iter()
                .map(|t| {
                    t.as_str()
                        .or_else(|| t["tag"].as_str())
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

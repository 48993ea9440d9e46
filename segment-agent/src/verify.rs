//! Runs a policy's `tests:` section against the compiled tables.
//!
//! An assertion holds only if it holds for every address of its `src` to
//! every address of its `dst` (of the same IP family) on every listed port.
//! That is decided exactly, not by sampling: the verdict depends only on the
//! source class, destination class and port class, so one address per region
//! and one port per port class cover every case.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{
    compile::Compiled,
    policy::{Expect, Policy, Pos, protocol_name},
};

#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    /// The rule that allowed it (for a failed `deny`).
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// 1-based index of the test entry.
    pub test: usize,
    pub src: String,
    pub expect: Expect,
    pub dst: String,
    pub proto: String,
    pub holds: bool,
    /// (source, destination, port) combinations decided.
    pub cases: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<Example>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// Runs a policy's tests: on its test bed when it has one (a Tailscale
/// policy, whose tests are decided for hypothetical devices of the
/// principals they name), else on the policy itself.
pub fn run_policy_tests(
    policy: &Policy,
    compiled: &Compiled,
) -> Result<Vec<Outcome>, crate::compile::CompileError> {
    match &policy.test_bed {
        Some(bed) => {
            let c = crate::compile::compile(bed)?;
            Ok(run(bed, &c))
        }
        None => Ok(run(policy, compiled)),
    }
}

pub fn run(policy: &Policy, compiled: &Compiled) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (ti, tc) in policy.tests.iter().enumerate() {
        let srcs = distinct(compiled.regions(policy, &tc.src), |i| i.src_class);
        for a in &tc.assertions {
            let dsts = distinct(compiled.regions(policy, &a.dst), |i| i.dst_class);
            let ports = compiled.representative_ports(tc.proto, &a.ports);
            let mut cases = 0;
            let mut counterexample = None;
            'search: for &(s_family, s_class, s_addr) in &srcs {
                for &(d_family, d_class, d_addr) in &dsts {
                    if s_family != d_family {
                        continue;
                    }
                    for &port in &ports {
                        cases += 1;
                        let allowed = compiled.rule_for(s_class, d_class, tc.proto, port);
                        let bad = match a.expect {
                            Expect::Accept => allowed.is_none(),
                            Expect::Deny => allowed.is_some(),
                        };
                        if bad {
                            counterexample = Some(Example {
                                src: s_addr,
                                dst: d_addr,
                                port,
                                rule: allowed.map(|v| policy.rules[v.rule as usize].label()),
                            });
                            break 'search;
                        }
                    }
                }
            }
            let note = (cases == 0).then(|| {
                "no source and destination addresses of the same IP family: nothing can be checked".to_owned()
            });
            out.push(Outcome {
                test: ti + 1,
                src: tc.src_text.clone(),
                expect: a.expect,
                dst: a.dst_text.clone(),
                proto: protocol_name(tc.proto),
                holds: cases > 0 && counterexample.is_none(),
                cases,
                counterexample,
                note,
                line: a.pos.map(|p: Pos| p.line),
            });
        }
    }
    out
}

/// One sample address per (family, class).
fn distinct(
    regions: Vec<(segment_common::Identity, IpAddr)>,
    class: impl Fn(&segment_common::Identity) -> u32,
) -> Vec<(bool, u32, IpAddr)> {
    let mut seen = BTreeMap::new();
    for (identity, addr) in regions {
        seen.entry((addr.is_ipv4(), class(&identity)))
            .or_insert(addr);
    }
    seen.into_iter().map(|((v4, c), a)| (v4, c, a)).collect()
}

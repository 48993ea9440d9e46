//! The command-line contract: exit codes, text and JSON output of `check`,
//! `test` and `explain`, and every example policy in `policies/`.

use std::{path::PathBuf, process::Command};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_segment-agent"))
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("run segment-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_policy(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segment-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_example_policy_checks_and_passes_its_tests() {
    let mut n = 0;
    for entry in std::fs::read_dir(policies_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        n += 1;
        let p = path.to_str().unwrap();
        let (code, out, err) = run(&["check", p]);
        assert_eq!(code, 0, "check {p}: {out}{err}");
        let (code, out, err) = run(&["test", p, "--json"]);
        assert_eq!(code, 0, "test {p}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ok"], true, "{p}: {v}");
        assert!(v["passed"].as_u64().unwrap() > 0, "{p} has tests");
    }
    assert!(n >= 6, "the seed scenarios are all there ({n} files)");
}

#[test]
fn check_reports_sizes_and_rejects_bad_policies() {
    let example = policies_dir().join("example.yaml");
    let (code, out, _) = run(&["check", example.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    for key in [
        "segments",
        "identities",
        "rule_entries",
        "prefixes_v4",
        "map_bytes",
    ] {
        assert!(v["summary"][key].as_u64().unwrap() > 0, "{key}: {v}");
    }

    let bad = temp_policy(
        "bad.yaml",
        "tags:\n  web: [10.0.0.0/24]\nacls:\n  - action: accept\n    src: [tag:wbe]\n    dst: [tag:web:80]\n",
    );
    let (code, out, err) = run(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(err.contains("bad.yaml:5:11"), "{err}");
    assert!(err.contains("undefined tag `wbe`"), "{err}");
    assert!(err.contains("did you mean `tag:web`?"), "{err}");
    let (code, out, _) = run(&["check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["line"], 5);
    assert_eq!(v["errors"][0]["column"], 11);

    let (code, _, err) = run(&["check", "/nonexistent/policy.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the policy"), "{err}");
}

#[test]
fn test_exits_1_on_a_failing_assertion() {
    let p = temp_policy(
        "failing.yaml",
        "tags:\n  a: [10.0.0.1]\n  b: [10.0.0.2]\nacls:\n  - action: accept\n    src: [tag:a]\n    dst: [tag:b:*]\ntests:\n  - src: tag:a\n    deny: [tag:b:22]\n",
    );
    let (code, out, _) = run(&["test", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(
        out.contains("10.0.0.1 → 10.0.0.2 port 22: allowed by acl #1"),
        "{out}"
    );
    assert!(out.contains("0 of 1 assertion hold"), "{out}");
}

#[test]
fn explain_gives_verdict_rule_and_segments() {
    let example = policies_dir().join("example.yaml");
    let e = example.to_str().unwrap();
    let (code, out, _) = run(&[
        "explain",
        e,
        "--src",
        "10.10.0.2",
        "--dst",
        "10.10.1.10",
        "--dport",
        "5432",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["rule"]["label"], "acl #1 \"web-to-db\" (line 41)");
    assert_eq!(v["src"]["segments"], serde_json::json!(["tag:web-server"]));
    let (_, out, _) = run(&[
        "explain",
        e,
        "--src",
        "10.10.1.10",
        "--dst",
        "10.10.0.2",
        "--dport",
        "22",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "drop");
    assert!(v["rule"].is_null());
    let (_, out, _) = run(&[
        "explain",
        e,
        "--src",
        "10.10.1.10",
        "--dst",
        "10.10.0.2",
        "--dport",
        "22",
    ]);
    assert!(out.starts_with("verdict: drop"), "{out}");
    let (code, _, err) = run(&[
        "explain",
        e,
        "--src",
        "10.10.1.10",
        "--dst",
        "10.10.0.2",
        "--proto",
        "tpc",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `tcp`?"), "{err}");
}

#[test]
fn example_prints_the_built_in_policy() {
    let (code, out, _) = run(&["example"]);
    assert_eq!(code, 0);
    let p = temp_policy("example.yaml", &out);
    let (code, _, _) = run(&["test", p.to_str().unwrap()]);
    assert_eq!(code, 0);
}

#[test]
fn diff_lists_newly_allowed_and_newly_denied() {
    let defs = "tags:\n  web: [10.0.0.0/24]\n  db: [10.0.1.0/24]\nusers:\n  alice: [10.0.9.5]\n";
    let old = temp_policy(
        "old.yaml",
        &format!(
            "{defs}acls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432]\n    proto: tcp\n  - action: accept\n    src: [alice]\n    dst: [tag:db:22]\n    proto: tcp\n"
        ),
    );
    let new = temp_policy(
        "new.yaml",
        &format!(
            "{defs}acls:\n  - action: accept\n    src: [tag:web]\n    dst: [tag:db:5432,5433]\n    proto: tcp\n"
        ),
    );
    let (code, out, err) = run(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "+ allow tag:web → tag:db  tcp port 5433",
            "- deny  alice → tag:db  tcp port 22"
        ],
        "{out}"
    );
    let (_, out, _) = run(&[
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["newly_allowed"], 1);
    assert_eq!(v["newly_denied"], 1);
    let (_, out, _) = run(&["diff", old.to_str().unwrap(), old.to_str().unwrap()]);
    assert!(out.starts_with("no change"), "{out}");
}

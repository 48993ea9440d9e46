//! The example tailnet policies of `policies/tailscale/`: each loads with its
//! inventory, every test holds (decided, not vacuous), and converting it to
//! segment's YAML and back to a Tailscale file changes no verdict (`diff`
//! finds nothing).

use std::path::{Path, PathBuf};

use segment::{
    compile,
    policy::{self, Inventory, Policy, convert},
    verify,
};

fn examples() -> Vec<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tailscale");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "hujson") {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let inv = ["yaml", "json"]
                .iter()
                .map(|x| dir.join(format!("{stem}.inventory.{x}")))
                .find(|i| i.exists())
                .unwrap_or_else(|| panic!("{stem} has no inventory"));
            out.push((p, inv));
        }
    }
    out.sort();
    out
}

fn same_verdicts(a: &Policy, b: &Policy) -> Vec<String> {
    let ac = compile::compile(a).unwrap();
    let bc = compile::compile(b).unwrap();
    segment::diff::diff((a, &ac), (b, &bc))
        .iter()
        .map(|c| c.line())
        .collect()
}

#[test]
fn examples_load_pass_their_tests_and_convert_faithfully() {
    let list = examples();
    assert!(list.len() >= 5, "{list:?}");
    for (path, inv_path) in list {
        let inv = Inventory::load(&inv_path).unwrap_or_else(|e| panic!("{e}"));
        let p = policy::load_with(&path, &inv).unwrap_or_else(|e| panic!("{e}"));
        assert!(!p.rules.is_empty(), "{}", path.display());
        let bed = p.test_bed.as_deref().expect("examples have tests");
        let outcomes = verify::run(bed, &compile::compile(bed).unwrap());
        assert!(!outcomes.is_empty());
        for o in &outcomes {
            assert!(o.holds && o.cases > 0, "{}: {o:?}", path.display());
        }
        let yaml = convert::to_yaml(&p);
        let y = policy::parse("converted.yaml", &yaml).unwrap_or_else(|e| {
            panic!(
                "{}: the YAML conversion does not load:\n{e}\n{yaml}",
                path.display()
            )
        });
        let d = same_verdicts(&p, &y);
        assert!(
            d.is_empty(),
            "{}: YAML conversion differs:\n{}",
            path.display(),
            d.join("\n")
        );
        let back = convert::to_tailscale(&y);
        let t = policy::parse("back.hujson", &back).unwrap_or_else(|e| {
            panic!(
                "{}: the conversion back does not load:\n{e}\n{back}",
                path.display()
            )
        });
        let d = same_verdicts(&y, &t);
        assert!(
            d.is_empty(),
            "{}: conversion back differs:\n{}",
            path.display(),
            d.join("\n")
        );
    }
}

#[test]
fn yaml_example_converts_to_tailscale_and_back() {
    let p = policy::example().unwrap();
    let hu = convert::to_tailscale(&p);
    let t = policy::parse("example.hujson", &hu).unwrap_or_else(|e| panic!("{e}\n{hu}"));
    assert!(same_verdicts(&p, &t).is_empty());
    let y = policy::parse("again.yaml", &convert::to_yaml(&t)).unwrap();
    assert!(same_verdicts(&t, &y).is_empty());
}

/// Runs the agent: exit code, and stdout followed by stderr.
fn agent(args: &[&str]) -> (i32, String) {
    let (code, out, err) = agent3(args);
    (code, out + &err)
}

fn agent3(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segment-agent"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the agent runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_commands_take_tailscale_files_and_inventories() {
    let (p, i) = (
        "policies/tailscale/startup.hujson",
        "policies/tailscale/startup.inventory.yaml",
    );
    let (code, out) = agent(&["check", p, "--inventory", i]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("REFUSED rogue tag:prod"), "{out}");
    assert!(out.contains("startup.inventory.yaml:13:5"), "{out}");
    assert!(
        out.contains("\"ssh\""),
        "ssh is listed as not enforced: {out}"
    );
    let (code, out) = agent(&["test", p, "--inventory", i]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12 of 12 assertions hold"), "{out}");
    let (code, out) = agent(&[
        "explain",
        p,
        "--inventory",
        i,
        "--src",
        "100.64.1.1",
        "--dst",
        "100.64.2.1",
        "--dport",
        "443",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: allow"), "{out}");
    assert!(
        out.contains("inventory device web-1 (policies/tailscale/startup.inventory.yaml:8:5)"),
        "{out}"
    );
    assert!(out.contains("granted tag:prod"), "{out}");
    // Without the inventory the tags are empty: the same packet is dropped.
    let (_, out) = agent(&[
        "explain",
        p,
        "--src",
        "100.64.1.1",
        "--dst",
        "100.64.2.1",
        "--dport",
        "443",
    ]);
    assert!(out.contains("verdict: drop"), "{out}");
    let (code, yaml, _) = agent3(&["convert", p, "--inventory", i]);
    assert_eq!(code, 0, "{yaml}");
    let tmp = std::env::temp_dir().join(format!("segment-convert-{}.yaml", std::process::id()));
    std::fs::write(&tmp, &yaml).unwrap();
    let (code, out) = agent(&["diff", p, tmp.to_str().unwrap(), "--inventory", i]);
    let _ = std::fs::remove_file(&tmp);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no change"), "{out}");
    // A syntax error in the HuJSON names the place.
    let bad = std::env::temp_dir().join(format!("segment-bad-{}.hujson", std::process::id()));
    std::fs::write(
        &bad,
        "{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": [\"*\"]}\n  ]\n}\n",
    )
    .unwrap();
    let (code, out) = agent(&["check", bad.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":3:25"), "{out}");
    assert!(out.contains("separate object members with commas"), "{out}");
}

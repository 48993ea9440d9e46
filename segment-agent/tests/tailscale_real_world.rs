//! Every tailnet policy file of `../shared/tailscale/real-world/` (kept in
//! git by their authors, most applied by GitOps, which refuses a file whose
//! `tests` fail) must load, and every entry of its `tests` must hold.
//!
//! These files come without an inventory: a test about a user, group or
//! tag is decided for a hypothetical device of that principal, as Tailscale
//! decides it (not vacuously); what Tailscale knew and the file does not say
//! (a user's role, who owns a Tailscale address) is assumed, and reported.

use std::path::Path;

use segment::policy::{self, Inventory};

#[test]
fn every_real_world_file_loads_and_its_tests_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tailscale/real-world");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 26,
        "expected the 26 files, found {}",
        files.len()
    );
    let mut assertions = 0;
    let mut failures = Vec::new();
    for f in &files {
        let p = match policy::load_with(f, &Inventory::default()) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: does not load:\n{e}", f.display()));
                continue;
            }
        };
        segment::compile::compile(&p).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let bed_tests = p.test_bed.as_ref().map_or(0, |b| b.tests.len());
        let results = match &p.test_bed {
            Some(bed) => {
                let c = segment::compile::compile(bed).unwrap();
                segment::verify::run(bed, &c)
            }
            None => Vec::new(),
        };
        let held = results.iter().filter(|r| r.holds).count();
        println!(
            "{}: {bed_tests} tests, {held}/{} assertions hold, {} not enforced",
            f.file_name().unwrap().to_string_lossy(),
            results.len(),
            p.not_enforced.len()
        );
        for r in &results {
            assert!(
                r.cases > 0,
                "{}: test {} decided vacuously",
                f.display(),
                r.test
            );
            if !r.holds {
                failures.push(format!(
                    "{}: test {} (src {}) {:?} {} fails: {:?}",
                    f.display(),
                    r.test,
                    r.src,
                    r.expect,
                    r.dst,
                    r.counterexample
                ));
            }
        }
        assertions += results.len();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{assertions} assertions decided, all hold");
    assert!(assertions > 0, "no assertion decided");
}

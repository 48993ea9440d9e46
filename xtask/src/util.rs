//! Running cargo and friends.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(root()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the agent and returns the binary's path.
pub fn build_agent(release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "segment-agent"];
    if release {
        args.push("--release");
    }
    cargo(&args)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("segment-agent"))
}

/// Clippy over the eBPF crate, built for the BPF target like the real
/// object, with the same toolchain choice as segment-agent's build script.
/// Debian's compiler has no clippy: then the crate is compiled and any
/// warning of its own fails the lint.
pub fn bpf_clippy() -> Result<()> {
    let target_dir = root().join("target/bpf-lint");
    let common = [
        "-p",
        "segment-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        target_dir.to_str().unwrap_or_default(),
    ];
    let mut cmd;
    if crate::setup::nightly_has_sources() {
        cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo", "clippy"])
            .args(common)
            .args(["--", "-D", "warnings"]);
    } else {
        cmd = Command::new("/usr/bin/cargo");
        cmd.arg("build").args(common).env("RUSTC", "/usr/bin/rustc");
    }
    cmd.current_dir(root())
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        )
        .env_remove("RUSTUP_TOOLCHAIN");
    let out = cmd
        .output()
        .context("building segment-ebpf for the BPF target")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("segment-ebpf does not build for the BPF target:\n{stderr}");
    }
    let own_warnings: Vec<&str> = stderr
        .split("\n\n")
        .filter(|block| block.starts_with("warning") && block.contains("segment-ebpf/"))
        .collect();
    if !own_warnings.is_empty() {
        bail!("segment-ebpf has warnings:\n{}", own_warnings.join("\n\n"));
    }
    Ok(())
}

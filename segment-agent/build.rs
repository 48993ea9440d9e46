//! Builds `segment-ebpf` for the BPF target and leaves the object in
//! `$OUT_DIR/segment.bpf.o`, which the agent embeds: operators deploy one file.
//!
//! Building for `bpfel-unknown-none` needs `-Z build-std=core`, that is a
//! compiler that accepts unstable flags and the library sources. In order of
//! preference this uses: `$SEGMENT_BPF_TOOLCHAIN` (a rustup toolchain name);
//! rustup's `nightly` if it has the `rust-src` component; Debian's
//! `rustc-web`/`cargo-web` with `rust-web-src` (what `cargo xtask setup`
//! installs when nightly has no sources). `SEGMENT_SKIP_EBPF=1` skips the build
//! (for `cargo check`/`clippy` on machines without bpf-linker); such a binary
//! refuses to load a datapath and says why.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const OBJECT: &str = "segment.bpf.o";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=SEGMENT_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=SEGMENT_BPF_TOOLCHAIN");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("workspace root")?
        .to_path_buf();
    for dir in [
        "segment-ebpf/src",
        "segment-ebpf/Cargo.toml",
        "segment-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR")?).join(OBJECT);

    if env::var("SEGMENT_SKIP_EBPF").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=SEGMENT_SKIP_EBPF is set: this binary carries no eBPF object");
        std::fs::write(&out, b"")?;
        return Ok(());
    }

    let target_dir = env::var_os("SEGMENT_BPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("bpf"));
    let mut cmd = bpf_cargo()?;
    cmd.current_dir(&root)
        .args([
            "build",
            "--package",
            "segment-ebpf",
            "--bins",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building the eBPF object failed ({status}). If the toolchain is missing, run `cargo xtask setup`."
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/segment");
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    Ok(())
}

/// A `cargo` command able to build for the BPF target, with the variables of
/// the outer build removed so that they do not leak into the inner one.
fn bpf_cargo() -> Result<Command> {
    let mut cmd = if let Ok(toolchain) = env::var("SEGMENT_BPF_TOOLCHAIN") {
        rustup_cargo(&toolchain)
    } else if rustup_has_sources("nightly") {
        rustup_cargo("nightly")
    } else if Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").exists()
    {
        let mut cmd = Command::new("/usr/bin/cargo");
        clean_env(&mut cmd);
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("RUSTUP_TOOLCHAIN");
        return Ok(cmd);
    } else {
        bail!(
            "no Rust toolchain with library sources for `-Z build-std=core` was found \
             (rustup nightly with rust-src, or Debian's rustc-web + rust-web-src). \
             Run `cargo xtask setup`, or set SEGMENT_SKIP_EBPF=1 to build without the datapath."
        );
    };
    cmd.env("RUSTC_BOOTSTRAP", "1");
    Ok(cmd)
}

fn rustup_cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    clean_env(&mut cmd);
    cmd.args(["run", toolchain, "cargo"]);
    cmd
}

fn rustup_has_sources(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = key == "CARGO_HOME"
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_HTTP_")
            || key.starts_with("CARGO_REGISTRIES_");
        if (key.starts_with("CARGO") && !keep) || key.starts_with("RUSTC") || key == "RUSTFLAGS" {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUSTUP_TOOLCHAIN");
}

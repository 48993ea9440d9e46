//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and
//! run segment. Idempotent: every step checks first, so a machine that has
//! everything is done in a second or two.
//!
//! * System packages: bpftool, iproute2, ethtool and util-linux (nsenter)
//!   for the datapath and tests; nftables, iptables and ipset for the
//!   benchmark's comparisons; LLVM 22 development files for bpf-linker;
//!   etcd-server, protobuf-compiler and libprotobuf-dev for the fleet (the
//!   policy store and the etcd client's build).
//! * A compiler able to build `-Z build-std=core` for `bpfel-unknown-none`:
//!   rustup's nightly if it has the `rust-src` component, otherwise
//!   Debian's `rustc-web`/`cargo-web` with their sources `rust-web-src`.
//! * bpf-linker 0.13 built against LLVM 22.
//! * A bpffs at /sys/fs/bpf.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

const PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "ethtool",
    "util-linux",
    "nftables",
    "iptables",
    "ipset",
    "llvm-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // The fleet: etcd for `run --store`, the store tests and the demo;
    // protoc and the well-known .proto files for etcd-client's build script
    // (it ships no generated code, and protoc alone lacks descriptor.proto).
    "etcd-server",
    // etcdctl: the store test runs README's RBAC commands with it.
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
];
const DEBIAN_RUST: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let nightly = nightly_has_sources();
    if !nightly {
        missing.extend(
            DEBIAN_RUST
                .iter()
                .copied()
                .filter(|p| !installed(p) || !debian_rust_recent()),
        );
    }
    if !missing.is_empty() {
        require_root("install packages")?;
        println!("setup: installing {}", missing.join(" "));
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !nightly && !Path::new("/usr/lib/rustlib/src/rust/library/core/Cargo.toml").exists() {
        bail!(
            "Debian's rust-web-src did not provide /usr/lib/rustlib/src/rust/library; cannot build the eBPF object"
        );
    }
    if !has_bpf_linker() {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        run_cmd(
            Command::new(crate::util::cargo_bin())
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                ])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    if !on_bpffs("/sys/fs/bpf") {
        require_root("mount bpffs")?;
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    println!(
        "setup: ready ({} for the BPF object, bpf-linker, bpffs at /sys/fs/bpf)",
        if nightly {
            "rustup nightly with rust-src"
        } else {
            "Debian rustc-web with rust-web-src"
        }
    );
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// aya-ebpf 0.2 needs rustc ≥ 1.87; bookworm's main archive has 1.85,
/// bookworm-security 1.96. An old install is upgraded.
fn debian_rust_recent() -> bool {
    let Ok(out) = Command::new("/usr/bin/rustc").arg("--version").output() else {
        return false;
    };
    let v = String::from_utf8_lossy(&out.stdout);
    let minor = v
        .split_whitespace()
        .nth(1)
        .and_then(|ver| ver.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    minor >= 87
}

/// Whether rustup's nightly has the library sources `-Z build-std` needs.
pub fn nightly_has_sources() -> bool {
    let Ok(out) = Command::new("rustup")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn has_bpf_linker() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn on_bpffs(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == 0xcafe_4a11
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root to {what}: run it as root (e.g. `sudo -E cargo xtask setup`)");
    }
    Ok(())
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

//! Builds the eBPF object (`nettools-ebpf` for `bpfel-unknown-none`) and hands it to the binary.
//!
//! The object is built in one target directory shared by every profile and by clippy/test, so
//! cargo's own fingerprinting makes it a no-op when the kernel code has not changed: it is built
//! once per change, not once per profile. `NETTOOLS_EBPF_OBJECT=PATH` uses a prebuilt object
//! instead (container builds, cross builds).
//!
//! Two toolchains are accepted, picked in this order (or forced with
//! `NETTOOLS_EBPF_TOOLCHAIN=debian|nightly`):
//! - Debian's `rustc-web` with its prebuilt `core` for bpfel (`libstd-rust-web-dev-bpf`): stable,
//!   so aya-ebpf's one unstable feature is allowed for that crate only (`RUSTC_BOOTSTRAP=aya_ebpf`);
//! - rustup's nightly with `rust-src`, using `-Z build-std=core` (the standard aya path).
//!
//! `cargo xtask setup` installs whichever is missing.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Cargo shows a failing build script's stderr.
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let dest = out_dir.join("nettools.bpf.o");
    println!("cargo:rerun-if-env-changed=NETTOOLS_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=NETTOOLS_EBPF_TOOLCHAIN");
    if let Some(prebuilt) = env::var_os("NETTOOLS_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        std::fs::copy(&prebuilt, &dest).map_err(|e| {
            format!(
                "cannot copy NETTOOLS_EBPF_OBJECT={}: {e}",
                prebuilt.display()
            )
        })?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no manifest dir")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("nettools/ has no parent directory")?
        .to_path_buf();
    for watched in ["nettools-ebpf", "nettools-common", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("ebpf");

    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("bpf-linker is not installed (or not on PATH): run `cargo xtask setup`".into());
    }
    let mut cmd = ebpf_cargo(&workspace)?;
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--package",
            "nettools-ebpf",
            "--release",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let mut flags = OsString::new();
    for (i, flag) in [
        // Only aya's pt_regs accessors (kprobe arguments) read it; no nettools program uses
        // them (tracepoints and tc only), so this one object serves x86_64 and arm64 kernels
        // alike (`cargo xtask vmtest --arch arm64` runs it there).
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // Keep the kernel side warning-free: its warnings are otherwise hidden in this script.
        "-Dwarnings",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\x1f");
        }
        flags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);

    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build the eBPF object: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the eBPF object (nettools-ebpf) failed ({status}); the compiler's messages \
             are above"
        ));
    }
    let object = target_dir.join(TARGET).join("release").join("nettools");
    std::fs::copy(&object, &dest)
        .map_err(|e| format!("cannot copy the eBPF object {}: {e}", object.display()))?;
    Ok(())
}

/// A `cargo` command set up for the first BPF-capable toolchain found.
fn ebpf_cargo(workspace: &Path) -> Result<Command, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let clean = |mut cmd: Command| {
        // The outer build's compiler, wrappers (clippy) and flags are not for the BPF target.
        for var in [
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTC_BOOTSTRAP",
        ] {
            cmd.env_remove(var);
        }
        cmd
    };
    let forced = env::var("NETTOOLS_EBPF_TOOLCHAIN").ok();
    let debian_ok = Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_BPF_CORE).exists();
    let use_debian = match forced.as_deref() {
        Some("debian") => true,
        Some("nightly") => false,
        Some(other) => {
            return Err(format!(
                "NETTOOLS_EBPF_TOOLCHAIN={other} is not known; use `debian` or `nightly`"
            ));
        }
        None => debian_ok || !nightly_has_rust_src(workspace),
    };
    if use_debian {
        if !debian_ok {
            return Err(format!(
                "no BPF-capable Rust compiler: {DEBIAN_RUSTC} with {DEBIAN_BPF_CORE} is missing \
                 and rustup's nightly has no rust-src; run `cargo xtask setup`"
            ));
        }
        let mut cmd = clean(Command::new(cargo));
        cmd.env("RUSTC", DEBIAN_RUSTC)
            .env("RUSTC_BOOTSTRAP", "aya_ebpf");
        Ok(cmd)
    } else {
        let mut cmd = clean(Command::new("rustup"));
        cmd.args(["run", "nightly", "cargo"]);
        cmd.args(["-Z", "build-std=core"]);
        Ok(cmd)
    }
}

/// Whether rustup's nightly toolchain has the `rust-src` component (needed for build-std).
fn nightly_has_rust_src(workspace: &Path) -> bool {
    let Ok(out) = Command::new("rustup")
        .current_dir(workspace)
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core")
            .exists()
}

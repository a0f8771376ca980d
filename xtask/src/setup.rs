//! `cargo xtask setup`: make a fresh Debian machine of this project's kind able to build and test
//! nettools, installing only what is missing (a no-op when everything is present).
//!
//! Two ways to compile Rust for BPF are accepted (see ../shared/NOTES.md):
//! - the standard aya path, rustup's nightly with `rust-src` (`-Z build-std=core`), used when the
//!   machine has it;
//! - otherwise Debian's `rustc-web` with its prebuilt `core` for bpfel (`libstd-rust-web-dev-bpf`),
//!   which needs no download from rustup.
//!
//! Either way bpf-linker is needed; it is built from the crate registry against Debian's LLVM 22
//! (bookworm has no LLVM 23, bpf-linker's default).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::process::status;

/// Packages the tests and the lab run (network tools), the TLS client and certificate
/// maker the agent's TLS tests use, libpcap's headers (`nettools capture` links libpcap), the
/// capture tests' oracles (tcpdump, tshark; tshark's debconf question is answered by default),
/// bpftool (the kernel's own account of the maps' memory) and nft (native nftables rules,
/// whose counters `check` and `trace --rules` read).
const LAB_PACKAGES: &[&str] = &[
    "libpcap-dev",
    "tcpdump",
    "tshark",
    "bpftool",
    "nftables",
    "iproute2",
    "iptables",
    "iputils-ping",
    "procps",
    "util-linux",
    "curl",
    "openssl",
];
/// From PyPI: the Kubernetes API's schemas, offline, for the manifests in deploy/.
const PYPI_TOOLS: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate")];
/// What `cargo xtask vmtest` needs: QEMU (installed without its recommends: no GUI), a static
/// busybox for the guest, kmod (modinfo) and xz for kernel modules, dpkg-deb for the kernel
/// packages, binutils (strip) and the Debian archive keys for the private apt sources.
const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "binutils",
    "dpkg",
    "debian-archive-keyring",
];
/// Container runtimes the runtime tests start offline (Podman with runc and netavark;
/// containerd with its CRI plugin and the CNI plugins), what their images are built from
/// (busybox-static, a static C pause program), and `protoc`, which the CRI bindings (k8s-cri)
/// need at build time.
const RUNTIME_PACKAGES: &[&str] = &[
    "podman",
    "runc",
    "conmon",
    "netavark",
    "containerd",
    "containernetworking-plugins",
    "busybox-static",
    "gcc",
    "libc6-dev",
    "protobuf-compiler",
];
/// What the container image is built with (`cargo xtask image`, which the tests use), and
/// `promtool`, which checks the agent's Prometheus exposition (Debian's `prometheus`).
const IMAGE_PACKAGES: &[&str] = &["debootstrap", "prometheus"];
/// Debian's BPF-capable Rust compiler and the LLVM bpf-linker builds against.
const DEBIAN_BPF_PACKAGES: &[&str] = &["rustc-web", "libstd-rust-web-dev-bpf"];
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Whether a Debian package is installed.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Whether rustup's nightly has rust-src (the standard aya build path).
fn nightly_with_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
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

/// The bpf-linker on PATH and its version, if any.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "these packages are missing and installing them needs root: {} (run `sudo cargo xtask setup` \
             or `sudo apt-get install {}`)",
            packages.join(" "),
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        status(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)
}

/// Installs those of `packages` that are missing (a no-op when all are there).
pub fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs whatever is missing.
pub fn run() -> Result<()> {
    let standard = nightly_with_rust_src();
    let mut wanted: Vec<&str> = LAB_PACKAGES.to_vec();
    wanted.extend_from_slice(VM_PACKAGES);
    wanted.extend_from_slice(RUNTIME_PACKAGES);
    wanted.extend_from_slice(IMAGE_PACKAGES);
    if !standard {
        wanted.extend_from_slice(DEBIAN_BPF_PACKAGES);
    }
    let linker = bpf_linker_version();
    if linker.is_none() {
        wanted.extend_from_slice(LLVM_PACKAGES);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    if linker.is_none() {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        // Build it with rustup's compiler, not whatever RUSTC the caller had set.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER");
        status(&mut cmd).context("installing bpf-linker failed")?;
        if bpf_linker_version().is_none() {
            bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
        }
    }
    for (command, package) in PYPI_TOOLS {
        let present = Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            eprintln!("xtask: installing {package} from PyPI");
            status(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                package,
            ]))
            .with_context(|| format!("installing {package} with pip failed"))?;
        }
    }
    if !standard && !Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").exists() {
        bail!(
            "libstd-rust-web-dev-bpf is installed but /usr/lib/rustlib/bpfel-unknown-none/lib is missing"
        );
    }
    Ok(())
}

/// What building for arm64 needs (`setup --arch arm64`, `build --target …`): dpkg's arm64
/// architecture (for the `:arm64` library packages) and crate::cross::PACKAGES.
pub fn arm64() -> Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("cannot run dpkg")?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .split_whitespace()
        .any(|a| a == "arm64")
    {
        if !is_root() {
            bail!(
                "building for arm64 needs dpkg's arm64 architecture, and adding it needs root \
                 (sudo dpkg --add-architecture arm64, then sudo cargo xtask setup --arch arm64)"
            );
        }
        eprintln!("xtask: adding the arm64 architecture to dpkg (for the :arm64 libraries)");
        status(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    }
    install(crate::cross::PACKAGES)
}

//! `cargo xtask build --target aarch64-unknown-linux-gnu`: nettools for arm64 nodes, from this
//! x86_64 machine.
//!
//! rustup cannot download the arm64 standard library here, so the compiler is Debian's
//! `rustc-web` (already installed for the eBPF build) with `libstd-rust-web-dev:arm64`, linked by
//! `gcc-aarch64-linux-gnu`. The binary is static (`+crt-static`), libpcap and its D-Bus
//! dependency included (`libpcap0.8-dev:arm64` ships `libpcap.a`, `libdbus-1-dev:arm64`
//! `libdbus-1.a`), so it runs on any arm64 Linux, in the vmtest guest's busybox as on a node.
//! The eBPF object is the same `bpfel` object as on x86_64: it is built once by the host build
//! and handed over with `NETTOOLS_EBPF_OBJECT`.
//!
//! Everything lands in `target/aarch64/`, apart from the host's own build (another compiler:
//! sharing a target directory would make each build invalidate the other's dependencies).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{cargo, output, status, workspace};

pub const ARM64: &str = "aarch64-unknown-linux-gnu";
/// Debian's compiler (see setup.rs): the one with an arm64 standard library here.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const LINKER: &str = "aarch64-linux-gnu-gcc";
const LIBDIR: &str = "/usr/lib/aarch64-linux-gnu";

/// Debian packages the arm64 build needs (`:arm64` ones need the architecture added to dpkg).
pub const PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    // The cross C library the static link takes (only a recommendation of the compiler, which
    // setup does not install).
    "libc6-dev-arm64-cross",
    "rustc-web",
    "libstd-rust-web-dev:arm64",
    "libpcap0.8-dev:arm64",
    "libdbus-1-dev:arm64",
];

/// The target directory of cross builds.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("aarch64")
}

/// The targets `--target` accepts.
pub fn check_target(target: &str) -> Result<()> {
    if target != ARM64 {
        bail!("--target {target:?} is not supported: the one other target is {ARM64}");
    }
    Ok(())
}

/// The libpcap version the arm64 package ships (the pcap crate's build script cannot ask the
/// library itself: it is not for this machine).
fn libpcap_version() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "libpcap0.8-dev:arm64"])
        .output()
        .context("cannot run dpkg-query")?;
    let v = String::from_utf8_lossy(&out.stdout);
    // "1.10.3-1" → "1.10.3"
    let v = v.split(['-', '+', '~']).next().unwrap_or("").trim();
    if !out.status.success() || v.split('.').count() != 3 {
        bail!("libpcap0.8-dev:arm64 is not installed (cargo xtask setup --arch arm64)");
    }
    Ok(v.to_string())
}

/// The C library the cross linker links statically.
const CROSS_LIBC: &str = "/usr/aarch64-linux-gnu/lib/libc.a";

/// libdbus calls two libsystemd functions, only in its server code (a bus daemon started by
/// socket activation), and Debian ships no static libsystemd. libpcap is a D-Bus client, so
/// these answer what systemd says to a process it passed no sockets: none.
const SYSTEMD_STUBS: &str = "\
/* Built by cargo xtask for the static arm64 nettools: see xtask/src/cross.rs. */
int sd_listen_fds(int unset_environment) { (void)unset_environment; return 0; }
int sd_is_socket(int fd, int family, int type, int listening) {
    (void)fd; (void)family; (void)type; (void)listening; return 0;
}
";

/// A directory searched first by the linker, holding libpcap's archive and, as
/// `libdbus-1.a`, an implicit linker script (ld reads a library that is not an archive as a
/// script). The script takes D-Bus's archive, the systemd stubs, libgcc (outline atomics) and
/// the C library again: `-ldbus-1` comes last on the command line, after `-lc`. The shared
/// libraries beside the archives in /usr/lib are never seen.
fn static_libs() -> Result<PathBuf> {
    let dir = target_dir().join("static-libs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pcap = Path::new(LIBDIR).join("libpcap.a");
    let dbus = Path::new(LIBDIR).join("libdbus-1.a");
    for needed in [&pcap, &dbus, Path::new(CROSS_LIBC)] {
        if !needed.is_file() {
            bail!(
                "{} is missing (cargo xtask setup --arch arm64 installs it)",
                needed.display()
            );
        }
    }
    let link = dir.join("libpcap.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&pcap, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    let source = dir.join("systemd-stubs.c");
    let object = dir.join("systemd-stubs.o");
    std::fs::write(&source, SYSTEMD_STUBS)
        .with_context(|| format!("cannot write {}", source.display()))?;
    status(
        Command::new(LINKER)
            .args(["-c", "-O2", "-o"])
            .arg(&object)
            .arg(&source),
    )?;
    let libgcc = output(Command::new(LINKER).arg("-print-libgcc-file-name"))?;
    let script = format!(
        "GROUP ( {} {} {} {CROSS_LIBC} )\n",
        dbus.display(),
        object.display(),
        libgcc.trim()
    );
    let at = dir.join("libdbus-1.a");
    let _ = std::fs::remove_file(&at);
    std::fs::write(&at, script).with_context(|| format!("cannot write {}", at.display()))?;
    Ok(dir)
}

/// A cargo command that builds for arm64 with Debian's compiler.
pub fn cargo_arm64(ebpf_object: &Path) -> Result<Command> {
    let mut cmd = cargo();
    cmd.env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("NETTOOLS_EBPF_OBJECT", ebpf_object)
        // The pcap crate's build script puts this first on the linker's search path.
        .env("LIBPCAP_LIBDIR", static_libs()?)
        .env("LIBPCAP_VER", libpcap_version()?)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
        // Static (libc included); libpcap.a needs libdbus-1.a after it.
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C link-arg=-ldbus-1",
        );
    Ok(cmd)
}

/// The eBPF object of the host's build (built if needed): the same object serves both
/// architectures.
pub fn ebpf_object(release: bool) -> Result<PathBuf> {
    crate::process::build_nettools(release)?;
    let object = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("ebpf/bpfel-unknown-none/release/nettools");
    if !object.is_file() {
        bail!("the host build left no eBPF object at {}", object.display());
    }
    Ok(object)
}

/// Builds nettools for arm64 and returns the binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    let object = ebpf_object(release)?;
    let mut cmd = cargo_arm64(&object)?;
    cmd.args(["build", "--package", "nettools", "--target", ARM64]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    Ok(target_dir()
        .join(ARM64)
        .join(if release { "release" } else { "debug" })
        .join("nettools"))
}

//! `cargo xtask image`: the nettools container image, built offline (no registry is reachable):
//! a Debian root filesystem made with debootstrap from the machine's apt mirror (minbase, plus
//! the toolbox listed in `image/packages.txt`), the release `nettools` binary added at
//! `/usr/local/bin/nettools`, packed as one tar and imported into Podman as
//! `localhost/nettools:latest`. The top-level `Containerfile` builds the same image with
//! docker or podman where a registry is reachable.
//!
//! The root filesystem is the slow part (about 80 s from an empty apt cache): it is cached under
//! `target/image/`, keyed by the suite, the mirror, the package list and this recipe's version,
//! so changing any of them builds a new one (and removes the old). The binary is added on every
//! run, so a code change costs only the release build and the tar (a few seconds).
//!
//! `--arch arm64` makes the same image for arm64 nodes: debootstrap `--foreign` unpacks Debian's
//! arm64 packages, and its second stage (the packages' maintainer scripts) and the upgrade run
//! in the root under `qemu-user-static`, which binfmt_misc hands arm64 programs to; the binary
//! is the static arm64 build (cross.rs). `--arch all` builds both and a manifest list naming
//! them, which `podman manifest push --all` sends to a registry as one multi-arch image.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    process::{build_nettools, status, workspace},
    vmtest::arch::Arch,
};

/// The tag `cargo xtask image` imports the image as.
pub const TAG: &str = "localhost/nettools:latest";
/// The tag of the arm64 image.
pub const TAG_ARM64: &str = "localhost/nettools:latest-arm64";
/// The manifest list naming both (`--arch all`).
pub const MANIFEST: &str = "localhost/nettools:multiarch";
/// Bump when the way the root filesystem is made changes (the cache key includes it).
const RECIPE: u32 = 2;
/// What `podman import` sets besides the filesystem: the same as the Containerfile's.
pub const CHANGES: &[&str] = &[
    "CMD [\"/bin/bash\"]",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "WORKDIR /root",
    "LABEL org.opencontainers.image.title=nettools",
    "LABEL org.opencontainers.image.description=Per-container network tracing with eBPF, and a network toolbox",
];
/// Left out of the image, as Debian's slim images leave them out: documentation, manuals,
/// translations, apt's package lists and downloaded packages, and the build machine's own
/// resolver and host name.
const TRIM: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/log",
    "etc/resolv.conf",
    "etc/hostname",
];

/// Where the image is built and cached.
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("image")
}

/// The image as one tar (what `podman import` reads).
pub fn tar_path(arch: Arch) -> PathBuf {
    match arch {
        Arch::X86_64 => dir().join("nettools-image.tar"),
        Arch::Arm64 => dir().join("nettools-image-arm64.tar"),
    }
}

/// The tag the image of `arch` is imported as.
pub fn tag(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => TAG,
        Arch::Arm64 => TAG_ARM64,
    }
}

/// `cargo xtask image [--arch x86_64|arm64|all] [--no-import]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut import = true;
    let mut arches = vec![Arch::X86_64];
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--no-import" => import = false,
            "--arch" => {
                arches = Arch::parse(it.next().context("--arch needs x86_64, arm64 or all")?)?
            }
            other => bail!("image: unknown option {other:?} (see cargo xtask --help)"),
        }
    }
    for arch in &arches {
        let started = Instant::now();
        let tar = build(*arch)?;
        if import {
            import_tar(*arch, &tar)?;
            eprintln!(
                "xtask: image {} ({}) ready in {:.0} s",
                tag(*arch),
                arch.debian(),
                started.elapsed().as_secs_f64()
            );
        } else {
            eprintln!(
                "xtask: image tar {} ready in {:.0} s (not imported)",
                tar.display(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    if import && arches.len() > 1 {
        manifest(&arches)?;
    }
    if import {
        let (tag, where_) = if arches.contains(&Arch::X86_64) {
            (TAG, "")
        } else {
            (TAG_ARM64, " (on an arm64 node)")
        };
        eprintln!(
            "xtask: try{where_}:\n  podman run --rm -it --privileged --pid host --net host \
             -v /sys/fs/bpf:/sys/fs/bpf -v /run:/run:ro {tag} nettools list"
        );
    }
    Ok(())
}

/// Imports the tar as `tag(arch)`, marked with its architecture; the image the tag named
/// before is removed once the tag moves (unless something else still uses it), so rebuilding
/// does not pile up untagged images.
fn import_tar(arch: Arch, tar: &Path) -> Result<()> {
    let tag = tag(arch);
    let previous = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mut cmd = Command::new("podman");
    cmd.args(["import", "--os", "linux", "--arch", arch.debian()]);
    for change in CHANGES {
        cmd.arg("--change").arg(change);
    }
    cmd.arg(tar).arg(tag);
    status(&mut cmd).context("importing the image into Podman failed")?;
    if let Some(id) = previous.filter(|id| !id.is_empty()) {
        let _ = Command::new("podman")
            .args(["rmi", &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

/// The manifest list `MANIFEST`, made anew with the images just imported.
fn manifest(arches: &[Arch]) -> Result<()> {
    let _ = Command::new("podman")
        .args(["manifest", "rm", MANIFEST])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    status(Command::new("podman").args(["manifest", "create", MANIFEST]))
        .context("podman cannot make a manifest list")?;
    for arch in arches {
        status(Command::new("podman").args([
            "manifest",
            "add",
            MANIFEST,
            &format!("containers-storage:{}", tag(*arch)),
        ]))
        .with_context(|| format!("podman cannot add {} to {MANIFEST}", tag(*arch)))?;
    }
    eprintln!(
        "xtask: manifest list {MANIFEST} names {} (podman manifest inspect {MANIFEST}; \
         podman manifest push --all {MANIFEST} REGISTRY/nettools:TAG)",
        arches
            .iter()
            .map(|a| tag(*a))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    Ok(())
}

/// Builds the release binary of `arch` and the cached root filesystem, and writes the image
/// tar. Returns its path.
pub fn build(arch: Arch) -> Result<PathBuf> {
    let bin = match arch {
        Arch::X86_64 => build_nettools(true)?,
        Arch::Arm64 => {
            crate::setup::arm64()?;
            crate::cross::build(true)?
        }
    };
    let rootfs = rootfs(arch)?;
    let overlay = dir().join(format!("overlay-{}", arch.debian()));
    let _ = std::fs::remove_dir_all(&overlay);
    let target = overlay.join("usr/local/bin");
    std::fs::create_dir_all(&target)?;
    std::fs::copy(&bin, target.join("nettools"))
        .with_context(|| format!("cannot copy {}", bin.display()))?;
    let tar = tar_path(arch);
    let partial = tar.with_extension("tar.partial");
    let started = Instant::now();
    status(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&partial)
            .arg(".")
            .arg("-C")
            .arg(&overlay)
            .arg("./usr/local/bin/nettools"),
    )?;
    std::fs::rename(&partial, &tar)?;
    let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "xtask: wrote {} ({} MiB) in {:.1} s",
        tar.display(),
        size >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(tar)
}

/// The toolbox packages (comments and blank lines left out).
fn packages() -> Result<Vec<String>> {
    let path = workspace().join("image/packages.txt");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The Debian suite of this machine (`bookworm`), which the image follows.
fn suite() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: is this Debian?")
}

/// The apt mirror this machine installs from (the same one CI reaches), or
/// `NETTOOLS_IMAGE_MIRROR`.
fn mirror() -> String {
    std::env::var("NETTOOLS_IMAGE_MIRROR")
        .unwrap_or_else(|_| apt_uri("/debian", "http://deb.debian.org/debian"))
}

/// Where this machine gets Debian's security updates.
fn security_mirror() -> String {
    apt_uri("/debian-security", "http://deb.debian.org/debian-security")
}

/// The first http(s) URI in this machine's apt sources whose path ends with `suffix`.
fn apt_uri(suffix: &str, default: &str) -> String {
    let mut texts: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    texts.extend(std::fs::read_to_string("/etc/apt/sources.list").ok());
    let is_debian =
        |uri: &str| uri.starts_with("http") && uri.trim_end_matches('/').ends_with(suffix);
    for text in &texts {
        for line in text.lines() {
            let line = line.trim();
            // deb822 (`URIs: http://…/debian`) or one-line (`deb http://…/debian bookworm main`).
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .take(1)
                    .collect()
            } else {
                Vec::new()
            };
            if let Some(uri) = uris.into_iter().find(|u| is_debian(u)) {
                return uri.to_string();
            }
        }
    }
    default.to_string()
}

/// FNV-1a of the recipe's inputs: the cache key.
fn key(parts: &[&str]) -> String {
    let hash = parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, part| {
        part.bytes()
            .chain(std::iter::once(0))
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    });
    format!("{hash:016x}")
}

/// The cache names of `arch`'s root filesystems begin with this (x86_64 keeps the names it had
/// before there was an arm64 image).
fn prefix(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "rootfs-",
        Arch::Arm64 => "rootfs-arm64-",
    }
}

/// Whether the cached root filesystem `name` is one of `arch`'s.
fn is_of(name: &str, arch: Arch) -> bool {
    match arch {
        Arch::X86_64 => name.starts_with("rootfs-") && !name.starts_with(prefix(Arch::Arm64)),
        Arch::Arm64 => name.starts_with(prefix(Arch::Arm64)),
    }
}

/// The cached root filesystem, made with debootstrap when it is missing or its inputs changed.
fn rootfs(arch: Arch) -> Result<PathBuf> {
    let suite = suite()?;
    let mirror = mirror();
    let packages = packages()?;
    let recipe = RECIPE.to_string();
    let security = security_mirror();
    let mut parts: Vec<&str> = vec![&recipe, &suite, &mirror, &security];
    parts.extend(packages.iter().map(String::as_str));
    let name = format!("{}{suite}-{}", prefix(arch), key(&parts));
    let base = dir();
    let root = base.join(&name);
    if root.join(".complete").exists() {
        eprintln!("xtask: using the cached root filesystem {}", root.display());
        return Ok(root);
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        bail!("debootstrap is not installed: run `cargo xtask setup`");
    }
    std::fs::create_dir_all(&base)?;
    let partial = base.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    eprintln!(
        "xtask: making the {} image's root filesystem: debootstrap {suite} from {mirror} with {} \
         toolbox packages ({}, cached afterwards)",
        arch.debian(),
        packages.len(),
        match arch {
            Arch::X86_64 => "about 1.5 minutes",
            Arch::Arm64 => "about 10 minutes: its programs run under emulation",
        }
    );
    let started = Instant::now();
    // Another architecture's root: its programs run under emulation.
    let foreign = arch != Arch::X86_64;
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")));
    if foreign {
        crate::emulation::enable(arch)?;
        debootstrap
            .arg(format!("--arch={}", arch.debian()))
            .arg("--foreign");
    }
    status(debootstrap.arg(&suite).arg(&partial).arg(&mirror)).context(
        "debootstrap failed (its log is in the root filesystem's debootstrap/debootstrap.log)",
    )?;
    if foreign {
        // The packages' maintainer scripts, run by the root's own (arm64) programs.
        status(
            Command::new("chroot")
                .arg(&partial)
                .args(["/debootstrap/debootstrap", "--second-stage"]),
        )
        .context(
            "debootstrap's second stage failed (its log is in the root filesystem's \
             debootstrap/debootstrap.log)",
        )?;
    }
    // debootstrap installs from one suite; the image follows the updates and security suites
    // too, as Debian's own images do.
    let _ = std::fs::remove_file(partial.join("etc/apt/sources.list"));
    std::fs::write(
        partial.join("etc/apt/sources.list.d/debian.sources"),
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    upgrade(&partial)?;
    for path in TRIM {
        let p = partial.join(path);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
            std::fs::create_dir_all(&p)?;
        } else if p.exists() || p.is_symlink() {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::write(
        partial.join(".complete"),
        format!("{suite} {mirror}\n{}\n", packages.join(" ")),
    )?;
    // Older root filesystems (other keys) are of no more use.
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if is_of(&n, arch) && n != name && !n.ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    std::fs::rename(&partial, &root)?;
    eprintln!(
        "xtask: root filesystem made in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(root)
}

/// `apt-get update && apt-get upgrade` inside the new root filesystem (with /proc mounted for
/// the packages' scripts, unmounted again whatever happens).
fn upgrade(root: &Path) -> Result<()> {
    struct ProcMount(PathBuf);
    impl Drop for ProcMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let proc = root.join("proc");
    status(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc),
    )?;
    let _mounted = ProcMount(proc);
    let apt = |args: &[&str]| {
        status(
            Command::new("chroot")
                .arg(root)
                .arg("apt-get")
                .args(["-q", "-y", "-o", "Dpkg::Options::=--force-confold"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update"])?;
    apt(&["upgrade", "--no-install-recommends"])?;
    apt(&["clean"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_follows_every_input() {
        let a = key(&["1", "bookworm", "http://m/debian", "curl"]);
        assert_eq!(a, key(&["1", "bookworm", "http://m/debian", "curl"]));
        assert_ne!(a, key(&["2", "bookworm", "http://m/debian", "curl"]));
        assert_ne!(
            a,
            key(&["1", "bookworm", "http://m/debian", "curl", "nmap"])
        );
        // Parts are separated: moving a boundary changes the key.
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
    }

    #[test]
    fn each_architecture_replaces_only_its_own_cached_roots() {
        let x86 = format!("{}bookworm-0123", prefix(Arch::X86_64));
        let arm = format!("{}bookworm-0123", prefix(Arch::Arm64));
        assert!(is_of(&x86, Arch::X86_64) && !is_of(&x86, Arch::Arm64));
        assert!(is_of(&arm, Arch::Arm64) && !is_of(&arm, Arch::X86_64));
        assert!(!is_of("overlay-amd64", Arch::X86_64) && !is_of("overlay-arm64", Arch::Arm64));
    }

    #[test]
    fn the_toolbox_list_is_read() -> Result<()> {
        let p = packages()?;
        assert!(p.iter().any(|p| p == "tcpdump"), "{p:?}");
        assert!(p.iter().all(|p| !p.contains('#') && !p.contains(' ')));
        Ok(())
    }
}

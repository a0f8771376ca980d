//! A foreign architecture's tools for its guests: a Debian root filesystem of that architecture
//! whose packages are unpacked, never run (the guests need only their files).
//!
//! `debootstrap --foreign` downloads the base system and the packages the guests need
//! (`PACKAGES`: iproute2, iptables, ping, …), and unpacks only the essential ones; every
//! downloaded package is then unpacked here with `dpkg-deb`, keeping the root's `/bin -> usr/bin`
//! links. What maintainer scripts would have made is made by hand: the `iptables` alternatives
//! (Debian's default, the nft backend). Cached under `target/vmtest/<arch>/root`, keyed by the
//! package list.
//!
//! ELF files of the root cannot be asked for their libraries with `ldd`: their `DT_NEEDED`
//! entries are read with `readelf` and looked up in the root's library directories.

use std::{
    collections::BTreeSet,
    path::{Component, Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::arch::Arch;
use crate::process::{output, status};

/// The packages with the tools of image.rs's TOOLS, and busybox for the rest.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "iputils-ping",
    "procps",
    "util-linux",
    "bsdutils",
    "bpftool",
    // nft: the tests read native nftables rules (x86_64 guests copy this machine's, which setup
    // installs).
    "nftables",
    "busybox-static",
    // tc's ATM qdisc plugin (q_atm.so, in iproute2's plugin directory) links it.
    "libatm1",
];
/// Debian's suite the root is made from.
const SUITE: &str = "bookworm";
/// The alternatives iptables' maintainer script sets up (nft backend, Debian's default).
const ALTERNATIVES: &[(&str, &str)] = &[
    ("iptables", "xtables-nft-multi"),
    ("iptables-save", "xtables-nft-multi"),
    ("iptables-restore", "xtables-nft-multi"),
    ("ip6tables", "xtables-nft-multi"),
    ("ip6tables-save", "xtables-nft-multi"),
    ("ip6tables-restore", "xtables-nft-multi"),
];

/// The cached root of `arch` under `dir`, made when missing.
pub fn make(arch: Arch, dir: &Path, mirror: &str) -> Result<PathBuf> {
    let key = format!("{SUITE}-{}", PACKAGES.join(","));
    let root = dir.join("root");
    let stamp = root.join(".vmtest-root");
    if std::fs::read_to_string(&stamp).is_ok_and(|k| k == key) {
        return Ok(root);
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        bail!("debootstrap is not installed: run `cargo xtask setup`");
    }
    let partial = dir.join("root.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "xtask: vmtest: making the {} guests' tools: debootstrap --foreign {SUITE} from {mirror}",
        arch.debian()
    );
    let started = Instant::now();
    status(
        Command::new("debootstrap")
            .arg("--foreign")
            .arg(format!("--arch={}", arch.debian()))
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .arg(format!("{mirror}/debian")),
    )
    .context("debootstrap failed (its log is in debootstrap/debootstrap.log of the root)")?;
    let archives = partial.join("var/cache/apt/archives");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&archives)
        .with_context(|| format!("cannot read {}", archives.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    for deb in &debs {
        // tar keeps the root's /bin -> usr/bin links instead of replacing them with directories.
        let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -x --keep-directory-symlink -C \"$2\"";
        status(
            Command::new("sh")
                .args(["-c", script, "unpack"])
                .arg(deb)
                .arg(&partial),
        )
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    }
    for (name, target) in ALTERNATIVES {
        let link = partial.join("usr/sbin").join(name);
        if !link.exists() && partial.join("usr/sbin").join(target).exists() {
            std::os::unix::fs::symlink(target, &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(&archives);
    std::fs::write(partial.join(".vmtest-root"), &key)?;
    std::fs::rename(&partial, &root)
        .with_context(|| format!("cannot move the root to {}", root.display()))?;
    eprintln!(
        "xtask: vmtest: {} packages unpacked in {:.0} s",
        debs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(root)
}

/// `path` (absolute, as the guest sees it) with every symlink followed inside `root`: absolute
/// link targets are the root's, not this machine's. Returns the path as the guest sees it.
pub fn resolve(root: &Path, path: &str) -> Result<String> {
    let mut done: Vec<String> = Vec::new();
    let mut todo: Vec<String> = components(path);
    todo.reverse();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(done.join("/")).join(&part);
        match std::fs::read_link(&here) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    bail!("too many symbolic links under {path} in {}", root.display());
                }
                let target = target.display().to_string();
                if target.starts_with('/') {
                    done.clear();
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
            }
            Err(_) => done.push(part),
        }
    }
    Ok(format!("/{}", done.join("/")))
}

/// `path` with its directory resolved inside `root` and its last component kept (a link stays
/// a link, in the directory it really is in).
pub fn resolve_dir(root: &Path, path: &str) -> Result<String> {
    let p = Path::new(path);
    let dir = p.parent().and_then(Path::to_str).unwrap_or("/");
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let dir = resolve(root, dir)?;
    Ok(format!("{}/{name}", dir.trim_end_matches('/')))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// The libraries (guest paths, resolved) an ELF file of the root needs, recursively.
pub fn libraries(root: &Path, arch: Arch, elf: &Path) -> Result<Vec<String>> {
    let dirs = [
        format!("/usr/lib/{}", arch.triplet()),
        format!("/lib/{}", arch.triplet()),
        "/usr/lib".to_string(),
        "/lib".to_string(),
    ];
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut todo = vec![elf.to_path_buf()];
    while let Some(file) = todo.pop() {
        let (interpreter, needed) = dynamic(&file)?;
        for name in interpreter.into_iter().chain(needed.into_iter().map(|n| {
            dirs.iter()
                .map(|d| format!("{d}/{n}"))
                .find(|p| root.join(p.trim_start_matches('/')).exists())
                .unwrap_or_else(|| format!("(missing) {n}"))
        })) {
            if let Some(missing) = name.strip_prefix("(missing) ") {
                bail!(
                    "{} needs {missing}, which the {} root lacks",
                    file.display(),
                    arch.debian()
                );
            }
            let real = resolve(root, &name)?;
            // The name as asked for (a link, e.g. /lib/ld-linux-aarch64.so.1) in its real
            // directory (the image's entries never go through a link such as /lib), and its
            // target.
            for p in [resolve_dir(root, &name)?, real.clone()] {
                found.insert(p);
            }
            let host = root.join(real.trim_start_matches('/'));
            if !todo.contains(&host) && found.len() < 1000 {
                todo.push(host);
            }
        }
        todo.dedup();
    }
    Ok(found.into_iter().collect())
}

/// The interpreter and `DT_NEEDED` names of an ELF file (none for static ones).
fn dynamic(elf: &Path) -> Result<(Option<String>, Vec<String>)> {
    let text = output(Command::new("readelf").args(["-d", "-l", "-W"]).arg(elf))
        .with_context(|| format!("readelf cannot read {}", elf.display()))?;
    let mut interpreter = None;
    let mut needed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("[Requesting program interpreter: ").nth(1) {
            interpreter = rest.strip_suffix(']').map(str::to_string);
        }
        if line.contains("(NEEDED)")
            && let Some(name) = line.split("Shared library: [").nth(1)
        {
            needed.push(name.trim_end_matches(']').to_string());
        }
    }
    Ok((interpreter, needed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_inside_the_root() -> Result<()> {
        let root = std::env::temp_dir().join(format!("xtask-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib/aarch64-linux-gnu"))?;
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        std::os::unix::fs::symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            root.join("usr/lib/ld-linux-aarch64.so.1"),
        )?;
        // An absolute target is the root's, not this machine's.
        std::os::unix::fs::symlink("/usr/lib/aarch64-linux-gnu", root.join("usr/lib/arch"))?;
        assert_eq!(
            resolve(&root, "/lib/ld-linux-aarch64.so.1")?,
            "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
        );
        assert_eq!(
            resolve(&root, "/usr/lib/arch/libc.so.6")?,
            "/usr/lib/aarch64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            resolve_dir(&root, "/lib/ld-linux-aarch64.so.1")?,
            "/usr/lib/ld-linux-aarch64.so.1"
        );
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}

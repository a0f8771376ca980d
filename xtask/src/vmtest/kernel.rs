//! Debian cloud kernels, fetched with apt through a private configuration (its own sources,
//! package lists and download cache under `target/vmtest/apt`, nothing of the system's apt state
//! touched) and unpacked once into `target/vmtest/kernels/<release>/`.
//!
//! A kernel is asked for by series (`5.10`, `6.12`), by exact release
//! (`6.12.117+deb13-cloud-amd64`) or as `newest`; the newest package of that series in the
//! suites below is used. From 6.19 Debian splits a kernel into `linux-binary-<release>` (image)
//! and `linux-modules-<release>`, with `linux-image-<release>` only depending on both.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::arch::Arch;
use crate::process::output;

/// Suites searched, as (archive, suite): every Debian kernel series people run in production.
const SUITES: &[(&str, &str)] = &[
    ("debian", "bullseye"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm"),
    ("debian-security", "bookworm-security"),
    ("debian", "trixie"),
    ("debian-security", "trixie-security"),
    ("debian", "trixie-backports"),
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists older than this are refreshed (a failed refresh keeps the old ones).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Marker of a completely unpacked kernel.
const COMPLETE: &str = ".vmtest-complete";

/// An unpacked kernel, ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `5.10.0-46-cloud-amd64`.
    pub release: String,
    /// Debian package version, e.g. `5.10.262-1` (empty when only the cache was used).
    pub package_version: String,
    pub vmlinuz: PathBuf,
    /// `…/lib/modules/<release>`.
    pub modules: PathBuf,
}

/// apt with its own sources, lists and cache.
pub struct Apt {
    dir: PathBuf,
    arch: Arch,
}

/// Turns the numbers of a Debian version into a sortable key (`6.1.192-2` → [6, 1, 192, 2, 1]).
/// Enough to order kernel packages, which differ in their numbers only, with Debian's rule that
/// `~` sorts before everything: `6.12.117-1~deb12u1` (a backport) < `6.12.117-1`.
pub fn version_key(version: &str) -> Vec<u64> {
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let (main, tilde) = match version.split_once('~') {
        Some((main, rest)) => (main, Some(rest)),
        None => (version, None),
    };
    let mut key = numbers(main);
    key.push(u64::from(tilde.is_none()));
    key.extend(tilde.map(numbers).unwrap_or_default());
    key
}

/// The release of a `linux-image-<release>` package of `flavour` (`-cloud-amd64`), if the name
/// is one (meta packages such as `linux-image-6.1-cloud-amd64` and debug/unsigned packages are
/// not).
pub fn image_release<'a>(package: &'a str, flavour: &str) -> Option<&'a str> {
    let release = package.strip_prefix("linux-image-")?;
    let base = release.strip_suffix(flavour)?;
    // A real kernel: "5.10.0-46", "6.12.117+deb13"; a meta package: "6.1", "6.12".
    let mut numbers = base.split(['.', '-', '+']);
    let (major, minor, rest) = (numbers.next()?, numbers.next()?, numbers.next());
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor) && rest.is_some()).then_some(release)
}

/// Whether `release` is what `spec` asks for (`newest` matches every release).
pub fn matches(spec: &str, release: &str) -> bool {
    if spec == "newest" || spec == release {
        return true;
    }
    // A series: "6.1" matches "6.1.0-56-…" but not "6.12.117+…".
    release
        .strip_prefix(spec)
        .is_some_and(|rest| rest.starts_with(['.', '-', '+']))
        && spec.split('.').count() == 2
}

/// The mirror the system's apt uses for Debian, so a machine behind its own mirror keeps using
/// it; `http://deb.debian.org` otherwise.
pub fn mirror() -> String {
    std::env::var("NETTOOLS_VMTEST_MIRROR").unwrap_or_else(|_| system_mirror())
}

fn system_mirror() -> String {
    let mut texts: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("list" | "sources")
            ) {
                texts.extend(std::fs::read_to_string(path).ok());
            }
        }
    }
    for text in texts {
        for line in text.lines() {
            let line = line.trim();
            // "deb [opts] URI suite…" or deb822 "URIs: URI".
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(base) = uri.and_then(|u| u.trim_end_matches('/').strip_suffix("/debian")) {
                return base.to_string();
            }
        }
    }
    "http://deb.debian.org".to_string()
}

impl Apt {
    /// Prepares the private configuration under `dir`.
    pub fn new(dir: &Path, arch: Arch) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let mirror = mirror();
        let sources: String = SUITES
            .iter()
            .map(|(archive, suite)| {
                format!("deb [signed-by={KEYRING}] {mirror}/{archive} {suite} main\n")
            })
            .collect();
        std::fs::write(dir.join("sources.list"), sources)
            .with_context(|| format!("cannot write {}", dir.join("sources.list").display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            arch,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::Etc::sourcelist", d("sources.list")),
            ("Dir::Etc::sourceparts", d("sources.list.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", self.arch.debian().to_string()),
            ("APT::Architectures", self.arch.debian().to_string()),
            // Downloads land in our own directory, which the _apt user may not be able to write.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    fn run(&self, mut cmd: Command) -> Result<String> {
        let shown = format!("{cmd:?}");
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {shown}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("E:") || l.starts_with("W:"))
                .unwrap_or_else(|| stderr.trim());
            bail!("{last}");
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists-updated")
    }

    fn lists_present(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
    }

    /// Downloads the package lists unless they are fresh. A failed refresh with lists already
    /// present is a warning, not an error, so cached kernels keep working offline.
    pub fn update(&self) -> Result<()> {
        let fresh = std::fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && self.lists_present() {
            return Ok(());
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-q"]);
        match self.run(cmd) {
            Ok(_) => {
                std::fs::write(self.stamp(), b"")
                    .with_context(|| format!("cannot write {}", self.stamp().display()))?;
                Ok(())
            }
            Err(e) if self.lists_present() => {
                eprintln!(
                    "xtask: vmtest: cannot refresh the kernel package lists ({e}); using the old ones"
                );
                Ok(())
            }
            Err(e) => Err(e.context("cannot download the Debian package lists")),
        }
    }

    /// Every package name starting with `prefix`.
    fn names(&self, prefix: &str) -> Result<Vec<String>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["pkgnames", prefix]);
        Ok(self
            .run(cmd)?
            .lines()
            .map(|l| l.trim().to_string())
            .collect())
    }

    /// The candidate version of each package.
    fn versions(&self, packages: &[String]) -> Result<HashMap<String, String>> {
        let mut cmd = self.command("apt-cache");
        cmd.args(["show", "--no-all-versions"]).args(packages);
        let mut out = HashMap::new();
        let mut package = None;
        for line in self.run(cmd)?.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                package = Some(p.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ")
                && let Some(p) = package.take()
            {
                out.insert(p, v.trim().to_string());
            }
        }
        Ok(out)
    }

    /// The newest kernel release matching `spec`, with its package version.
    pub fn resolve(&self, spec: &str) -> Result<(String, String)> {
        let candidates: Vec<String> = self
            .names("linux-image-")?
            .into_iter()
            .filter(|p| image_release(p, self.arch.flavour()).is_some_and(|r| matches(spec, r)))
            .collect();
        if candidates.is_empty() {
            bail!(
                "Debian has no {} kernel package for {spec:?} in {}",
                self.arch.flavour().trim_start_matches('-'),
                SUITES
                    .iter()
                    .map(|s| s.1)
                    .filter(|s| !s.contains("security"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let versions = self.versions(&candidates)?;
        candidates
            .iter()
            .filter_map(|p| Some((image_release(p, self.arch.flavour())?, versions.get(p)?)))
            .max_by_key(|(_, v)| version_key(v))
            .map(|(r, v)| (r.to_string(), v.clone()))
            .with_context(|| format!("apt knows no version of the {spec} kernel packages"))
    }

    /// Downloads the packages that make up `release` into `dir`.
    fn download(&self, release: &str, dir: &Path) -> Result<()> {
        // From 6.19: image and modules in their own packages.
        let split = self
            .names(&format!("linux-binary-{release}"))?
            .iter()
            .any(|p| p == &format!("linux-binary-{release}"));
        let packages = if split {
            vec![
                format!("linux-binary-{release}"),
                format!("linux-modules-{release}"),
            ]
        } else {
            vec![format!("linux-image-{release}")]
        };
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir)
            .args(["download", "-q"])
            .args(&packages);
        self.run(cmd)
            .with_context(|| format!("cannot download {}", packages.join(" ")))?;
        Ok(())
    }
}

/// Finds the image and module directory in an unpacked kernel.
fn locate(root: &Path, release: &str) -> Option<(PathBuf, PathBuf)> {
    let vmlinuz = [
        root.join(format!("boot/vmlinuz-{release}")),
        root.join(format!("usr/lib/modules/{release}/vmlinuz")),
        root.join(format!("lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())?;
    let modules = [
        root.join(format!("lib/modules/{release}")),
        root.join(format!("usr/lib/modules/{release}")),
    ]
    .into_iter()
    .find(|p| p.join("kernel").is_dir())?;
    Some((vmlinuz, modules))
}

/// An already unpacked kernel.
fn cached(kernels: &Path, release: &str) -> Option<Kernel> {
    let root = kernels.join(release);
    if !root.join(COMPLETE).exists() {
        return None;
    }
    let (vmlinuz, modules) = locate(&root, release)?;
    Some(Kernel {
        release: release.to_string(),
        package_version: std::fs::read_to_string(root.join(COMPLETE)).unwrap_or_default(),
        vmlinuz,
        modules,
    })
}

/// Releases unpacked in the cache, for working offline.
fn cached_releases(kernels: &Path) -> Vec<String> {
    std::fs::read_dir(kernels)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join(COMPLETE).exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The series of a release: `6.12` of `6.12.117+deb13-cloud-amd64`.
fn series(release: &str) -> String {
    release
        .split(['.', '-', '+'])
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// Removes cached kernels of the same series as `release` that Debian has since replaced, so
/// the cache holds one kernel per series.
fn prune_superseded(kernels: &Path, release: &str) {
    for old in cached_releases(kernels) {
        if old != release && series(&old) == series(release) {
            eprintln!("xtask: vmtest: removing {old} from the cache (superseded by {release})");
            let _ = std::fs::remove_dir_all(kernels.join(&old));
        }
    }
}

/// The kernel `spec` asks for, from the cache or downloaded and unpacked into it.
/// `apt` is `Err` when the package lists could not be had: then only the cache is used.
pub fn fetch(spec: &str, apt: &Result<Apt>, kernels: &Path) -> Result<Kernel> {
    let resolved = match apt {
        Ok(apt) => apt.resolve(spec),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let (release, version) = match resolved {
        Ok(found) => found,
        Err(e) => {
            // Offline: the newest cached kernel of that series.
            let best = cached_releases(kernels)
                .into_iter()
                .filter(|r| matches(spec, r))
                .max_by_key(|r| version_key(r));
            return match best.and_then(|r| cached(kernels, &r)) {
                Some(k) => {
                    eprintln!(
                        "xtask: vmtest: {spec}: {e:#}; using the cached kernel {}",
                        k.release
                    );
                    Ok(k)
                }
                None => Err(e),
            };
        }
    };
    prune_superseded(kernels, &release);
    if let Some(k) = cached(kernels, &release) {
        return Ok(k);
    }
    let Ok(apt) = apt else {
        bail!("kernel {release} is not cached and apt is unavailable");
    };
    eprintln!("xtask: vmtest: downloading kernel {release} ({version})");
    let work = kernels.join(format!(".download-{release}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    apt.download(&release, &work)?;
    let unpacked = work.join("root");
    let debs: Vec<PathBuf> = std::fs::read_dir(&work)
        .with_context(|| format!("cannot read {}", work.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    for deb in &debs {
        output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))
            .with_context(|| format!("cannot unpack {}", deb.display()))?;
    }
    if locate(&unpacked, &release).is_none() {
        bail!("the packages of kernel {release} hold no vmlinuz and module tree where expected");
    }
    std::fs::write(unpacked.join(COMPLETE), &version)?;
    let root = kernels.join(&release);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&unpacked, &root)
        .with_context(|| format!("cannot move the kernel to {}", root.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    cached(kernels, &release).with_context(|| format!("kernel {release} vanished from the cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_real_kernels_of_the_cloud_flavour() {
        assert_eq!(
            image_release("linux-image-5.10.0-46-cloud-amd64", "-cloud-amd64"),
            Some("5.10.0-46-cloud-amd64")
        );
        assert_eq!(
            image_release("linux-image-6.12.117+deb13-cloud-amd64", "-cloud-amd64"),
            Some("6.12.117+deb13-cloud-amd64")
        );
        assert_eq!(
            image_release("linux-image-6.1-cloud-amd64", "-cloud-amd64"),
            None
        );
        assert_eq!(
            image_release("linux-image-cloud-amd64", "-cloud-amd64"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.1.0-56-amd64", "-cloud-amd64"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.1.0-56-cloud-amd64-dbg", "-cloud-amd64"),
            None
        );
        assert_eq!(
            image_release("linux-image-6.1.0-56-cloud-amd64-unsigned", "-cloud-amd64"),
            None
        );
    }

    #[test]
    fn series_match_exactly() {
        assert!(matches("6.1", "6.1.0-56-cloud-amd64"));
        assert!(!matches("6.1", "6.12.117+deb13-cloud-amd64"));
        assert!(matches("6.12", "6.12.117+deb13-cloud-amd64"));
        assert!(matches("7.3", "7.3.4+deb13-cloud-amd64"));
        assert!(matches("newest", "5.10.0-46-cloud-amd64"));
        assert!(matches(
            "6.12.117+deb13-cloud-amd64",
            "6.12.117+deb13-cloud-amd64"
        ));
        assert!(!matches("6", "6.1.0-56-cloud-amd64"));
        assert!(!matches("6.1.0", "6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn series_of_releases() {
        assert_eq!(series("6.12.117+deb13-cloud-amd64"), "6.12");
        assert_eq!(series("5.10.0-46-cloud-amd64"), "5.10");
        assert_eq!(series("7.3.4+deb13-cloud-amd64"), "7.3");
    }

    #[test]
    fn versions_sort_by_their_numbers() {
        let mut v = vec!["6.1.176-1", "6.1.192-2", "6.1.170-1~deb11u1", "6.1.99-1"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(
            v,
            ["6.1.99-1", "6.1.170-1~deb11u1", "6.1.176-1", "6.1.192-2"]
        );
        assert!(version_key("7.3.4-1~bpo13+1") > version_key("6.19.14-1~bpo13+1"));
        assert!(version_key("6.12.117-1") > version_key("6.12.117-1~deb12u1"));
        assert!(version_key("6.12.118-1~deb12u1") > version_key("6.12.117-1"));
    }
}

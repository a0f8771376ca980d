//! The guest's initramfs, in two cpio archives that the kernel unpacks one after the other:
//!
//! - **userspace** (one for every kernel): busybox, the tools the tests call (ip, iptables,
//!   setpriv, …) with their shared libraries and plugin directories, the nettools binary, the
//!   integration test binaries and the guest's `/init`;
//! - **modules** (one per kernel, cached): the kernel modules the labs need, with their
//!   dependencies, decompressed and listed in load order.
//!
//! Files keep the paths they have on this machine, so the dynamic loader, iptables' extension
//! directory and the like are found where the binaries expect them.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{arch::Arch, cpio::Archive, kernel::Kernel, root};
use crate::process::{output, output_bytes};

/// The guest's init script.
const INIT: &str = include_str!("init.sh");

/// Tools the tests and labs call, looked up on this machine's PATH. Missing ones are left out
/// (a test that needs one then fails saying the tool is not installed).
const TOOLS: &[&str] = &[
    "ip",
    "tc",
    "ss",
    "bridge",
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy",
    "iptables-nft",
    "nft",
    "setpriv",
    "nsenter",
    "unshare",
    "ping",
    "nstat",
    "sysctl",
    "script",
    "bpftool",
];

/// Directories of plugins and data that copied tools load at run time (not visible to ldd); a
/// foreign guest takes its own architecture's (x86_64-linux-gnu replaced).
const DATA_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/usr/lib/x86_64-linux-gnu/tc",
    "/etc/iproute2",
    "/usr/share/iproute2",
];

/// Kernel modules the labs and probes need; each must exist as a module or be built in.
/// Dependencies (llc, stp, nfnetlink, libcrc32c, …) are added automatically.
const MODULES: &[&str] = &[
    "veth",
    "bridge",
    // tc: clsact qdisc (sch_ingress), BPF classifier and action.
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    // iptables through nf_tables (Debian's default iptables).
    "nf_tables",
];

/// Modules loaded where the kernel has them: netfilter pieces iptables may use (nft or legacy
/// backend, the matches and targets the labs inject faults with) and qdiscs for delay labs.
const OPTIONAL_MODULES: &[&str] = &[
    "nft_counter",
    "nft_compat",
    "x_tables",
    "xt_tcpudp",
    "xt_statistic",
    "xt_length",
    "xt_multiport",
    "xt_comment",
    "xt_mark",
    "xt_limit",
    "xt_NFQUEUE",
    "nfnetlink_queue",
    "nft_queue",
    "ip_tables",
    "iptable_filter",
    "ip6_tables",
    "ip6table_filter",
    "nf_reject_ipv4",
    "nft_reject",
    "nft_reject_ipv4",
    "ipt_REJECT",
    // The connections test's IPv6 ICMP errors (ip6tables -j REJECT).
    "nf_reject_ipv6",
    "nft_reject_ipv6",
    "ip6t_REJECT",
    "sch_tbf",
    "sch_netem",
    "dummy",
];

/// Text that changes whenever what goes into the userspace archive changes (for its cache key).
pub fn userspace_key() -> String {
    format!("{INIT}{TOOLS:?}{DATA_DIRS:?}")
}

/// Text that changes whenever the module lists change (for the modules archives' cache key).
pub fn modules_key() -> String {
    format!("{MODULES:?}{OPTIONAL_MODULES:?}")
}

/// Where a system tool is on this machine (system directories only: the guest gets the
/// distribution's tools, not whatever a developer's PATH puts first).
fn which(name: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

/// Where `path` lives in the guest: its directory with symlinks resolved (so `/lib/x` and
/// `/usr/lib/x` are one place, as on this machine), and its own name.
fn guest_path(path: &Path) -> Result<String> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    Ok(dir.join(name).display().to_string())
}

/// The shared libraries an ELF file needs (`ldd`), as the paths the loader will look for.
fn libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(elf)
        .output()
        .context("cannot run ldd")?;
    // Static executables and non-ELF files: ldd fails, nothing to copy.
    if !out.status.success() {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
        if line.contains("not found") {
            bail!(
                "{} needs a library this machine lacks: {}",
                elf.display(),
                line.trim()
            );
        }
    }
    Ok(libs)
}

/// Builds the userspace archive step by step.
struct Userspace {
    archive: Archive,
    /// ELF files whose libraries must be copied (host paths).
    elves: Vec<PathBuf>,
}

impl Userspace {
    fn new() -> Result<Self> {
        Ok(Self {
            archive: skeleton(Path::new("/"))?,
            elves: Vec::new(),
        })
    }

    /// Copies a file of this machine to the same place in the guest.
    fn copy(&mut self, host: &Path) -> Result<()> {
        let real = host
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", host.display()))?;
        let data =
            std::fs::read(&real).with_context(|| format!("cannot read {}", real.display()))?;
        let executable = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&real)
                .with_context(|| format!("cannot stat {}", real.display()))?
                .permissions(),
        ) & 0o111
            != 0;
        let at = guest_path(&real)?;
        self.archive.file(&at, data, executable)?;
        let named = guest_path(host)?;
        if named != at {
            self.archive.symlink(&named, &at)?;
        }
        if data_is_elf(&real) {
            self.elves.push(real);
        }
        Ok(())
    }

    fn copy_tree(&mut self, dir: &Path) -> Result<()> {
        for file in files_under(dir)? {
            self.copy(&file)?;
        }
        Ok(())
    }

    /// Copies an executable of ours without its debug information (smaller image, same code).
    fn copy_stripped(&mut self, host: &Path, at: &str, scratch: &Path) -> Result<()> {
        let data = strip_debug("strip", host, at, scratch)
            .context("is binutils installed? (cargo xtask setup)")?;
        self.archive.file(at, data, true)?;
        self.elves.push(host.to_path_buf());
        Ok(())
    }

    /// Copies the shared libraries of every ELF file copied so far.
    fn libraries(&mut self) -> Result<()> {
        let mut done = BTreeSet::new();
        for elf in std::mem::take(&mut self.elves) {
            for lib in libraries(&elf)? {
                let at = guest_path(&lib)?;
                if !done.insert(at.clone()) {
                    continue;
                }
                let data = std::fs::read(&lib)
                    .with_context(|| format!("cannot read {}", lib.display()))?;
                self.archive.file(&at, data, true)?;
            }
        }
        Ok(())
    }

    /// busybox and a link for each of its applets that no real tool already provides.
    fn busybox(&mut self) -> Result<()> {
        let busybox = which("busybox").context(
            "busybox is not installed (apt-get install busybox-static, or run cargo xtask setup)",
        )?;
        self.copy(&busybox)?;
        let at = guest_path(&busybox.canonicalize()?)?;
        let list = output(Command::new(&busybox).arg("--list-full"))?;
        for applet in list.lines() {
            let (dir, name) = applet.rsplit_once('/').unwrap_or(("bin", applet));
            let provided = ["bin", "sbin", "usr/bin", "usr/sbin"]
                .iter()
                .any(|d| self.archive.contains(&resolve_top(d, name)));
            if !provided && !name.is_empty() {
                self.archive.symlink(&resolve_top(dir, name), &at)?;
            }
        }
        Ok(())
    }
}

/// `bin/x` as it lands in the guest: under `usr/bin` when `/bin` is a link to it here.
fn resolve_top(dir: &str, name: &str) -> String {
    let host = Path::new("/").join(dir);
    match host.canonicalize() {
        Ok(real) => format!("{}/{name}", real.display()),
        Err(_) => format!("/{dir}/{name}"),
    }
}

fn data_is_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The test binaries to run in the guest: (name, host path).
pub type TestBinaries = Vec<(String, PathBuf)>;

/// The userspace archive of a foreign architecture's guest: the same layout as `userspace`,
/// with the tools, their libraries and busybox taken from that architecture's Debian root
/// (root.rs) and nettools and the tests built static for it (cross.rs).
pub fn userspace_foreign(
    arch: Arch,
    guest_root: &Path,
    nettools: &Path,
    tests: &TestBinaries,
    scratch: &Path,
) -> Result<Vec<u8>> {
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut archive = skeleton(guest_root)?;
    let mut elves: Vec<PathBuf> = Vec::new();
    // Copies the root's file at guest path `named` (links followed inside the root).
    let mut copy = |archive: &mut Archive, named: &str| -> Result<()> {
        let real = root::resolve(guest_root, named)?;
        let host = guest_root.join(real.trim_start_matches('/'));
        let data =
            std::fs::read(&host).with_context(|| format!("cannot read {}", host.display()))?;
        let executable =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&host)?.permissions())
                & 0o111
                != 0;
        archive.file(&real, data, executable)?;
        let named = root::resolve_dir(guest_root, named)?;
        if named != real {
            archive.symlink(&named, &real)?;
        }
        if data_is_elf(&host) {
            elves.push(host);
        }
        Ok(())
    };
    let dirs = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    for tool in TOOLS {
        if let Some(named) = dirs
            .iter()
            .map(|d| format!("{d}/{tool}"))
            .find(|p| guest_root.join(p.trim_start_matches('/')).exists())
        {
            copy(&mut archive, &named)?;
        }
    }
    for dir in DATA_DIRS {
        let dir = dir.replace("x86_64-linux-gnu", arch.triplet());
        let host = guest_root.join(dir.trim_start_matches('/'));
        if host.is_dir() {
            for file in files_under(&host)? {
                let rel = file.strip_prefix(guest_root).unwrap_or(&file);
                copy(&mut archive, &format!("/{}", rel.display()))?;
            }
        }
    }
    // busybox: the root's static one, with the applets this machine's busybox lists.
    let busybox = root::resolve(guest_root, "/bin/busybox")?;
    copy(&mut archive, "/bin/busybox")?;
    let host_busybox = which("busybox").context(
        "busybox is not installed here (its applet list names the guest's links): cargo xtask setup",
    )?;
    for applet in output(Command::new(&host_busybox).arg("--list-full"))?.lines() {
        let (dir, name) = applet.rsplit_once('/').unwrap_or(("bin", applet));
        let at = root::resolve(guest_root, &format!("/{dir}"))? + "/" + name;
        let provided = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"].iter().any(|d| {
            root::resolve(guest_root, d).is_ok_and(|d| archive.contains(&format!("{d}/{name}")))
        });
        if !provided && !name.is_empty() {
            archive.symlink(&at, &busybox)?;
        }
    }
    let strip = format!("{}-strip", arch.triplet());
    let stripped = |archive: &mut Archive, host: &Path, at: &str| -> Result<()> {
        let data = strip_debug(&strip, host, at, scratch)
            .context("cargo xtask setup --arch arm64 installs it")?;
        archive.file(at, data, true)
    };
    stripped(&mut archive, nettools, "vmtest/bin/nettools")?;
    let mut list = String::new();
    for (name, path) in tests {
        stripped(&mut archive, path, &format!("vmtest/tests/{name}"))?;
        list.push_str(name);
        list.push('\n');
    }
    archive.file("vmtest/tests.list", list.into_bytes(), false)?;
    let mut done = BTreeSet::new();
    for elf in elves {
        for lib in root::libraries(guest_root, arch, &elf)? {
            if !done.insert(lib.clone()) || archive.contains(&lib) {
                continue;
            }
            let host = guest_root.join(lib.trim_start_matches('/'));
            match std::fs::read_link(&host) {
                Ok(target) => archive.symlink(&lib, &target.display().to_string())?,
                Err(_) => archive.file(
                    &lib,
                    std::fs::read(&host)
                        .with_context(|| format!("cannot read {}", host.display()))?,
                    true,
                )?,
            }
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
    archive.to_bytes()
}

/// The guest's top level, taken from `root` (this machine's `/`, or a foreign architecture's
/// root): its merged-/usr links (bin -> usr/bin) or directories, the directories every guest
/// has, minimal /etc files and `/init`.
fn skeleton(root: &Path) -> Result<Archive> {
    let mut archive = Archive::new();
    for top in ["bin", "sbin", "lib", "lib64"] {
        let at = root.join(top);
        match std::fs::read_link(&at) {
            Ok(target) => archive.symlink(top, &target.display().to_string())?,
            Err(_) if at.is_dir() => archive.dir(top)?,
            Err(_) => {}
        }
    }
    for dir in [
        "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "root", "etc",
    ] {
        archive.dir(dir)?;
    }
    archive.file("etc/hostname", b"vmtest\n".to_vec(), false)?;
    archive.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        false,
    )?;
    archive.file("etc/group", b"root:x:0:\n".to_vec(), false)?;
    archive.file("init", INIT.as_bytes().to_vec(), true)?;
    Ok(archive)
}

/// An executable of ours without its debug information (smaller image, same code), by `strip`
/// (this machine's, or a cross binutils'), through a file in `scratch`.
fn strip_debug(strip: &str, host: &Path, at: &str, scratch: &Path) -> Result<Vec<u8>> {
    let out = scratch.join(at.replace('/', "_"));
    output(
        Command::new(strip)
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(host),
    )
    .with_context(|| format!("{strip} cannot strip {}", host.display()))?;
    std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))
}

/// Every file under `dir` (links to files included).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

/// Builds the userspace archive: tools, libraries, nettools at `/vmtest/bin/nettools`, the test
/// binaries in `/vmtest/tests/` (listed in `/vmtest/tests.list`, run in that order) and `/init`.
pub fn userspace(nettools: &Path, tests: &TestBinaries, scratch: &Path) -> Result<Vec<u8>> {
    std::fs::create_dir_all(scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut u = Userspace::new()?;
    for tool in TOOLS {
        if let Some(path) = which(tool) {
            u.copy(&path)?;
        }
    }
    for dir in DATA_DIRS {
        if Path::new(dir).is_dir() {
            u.copy_tree(Path::new(dir))?;
        }
    }
    u.busybox()?;
    u.copy_stripped(nettools, "vmtest/bin/nettools", scratch)?;
    let mut list = String::new();
    for (name, path) in tests {
        u.copy_stripped(path, &format!("vmtest/tests/{name}"), scratch)?;
        list.push_str(name);
        list.push('\n');
    }
    u.archive
        .file("vmtest/tests.list", list.into_bytes(), false)?;
    u.libraries()?;
    let _ = std::fs::remove_dir_all(scratch);
    u.archive.to_bytes()
}

/// A module's name as the kernel knows it (`-` and `_` are the same).
fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = name.split(".ko").next()?;
    (name.contains(".ko")).then(|| stem.replace('-', "_"))
}

/// Every module file of a kernel, by name.
fn module_index(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            module_index(&path, index)?;
        } else if let Some(name) = module_name(&path) {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// Names of the modules built into the kernel (`modules.builtin`).
fn builtins(kernel: &Kernel) -> BTreeSet<String> {
    std::fs::read_to_string(kernel.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l.trim())))
        .collect()
}

/// A module's contents, decompressed (`.ko.xz` from Debian's 6.12 on).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("cannot read {name}")),
        Some(tool) => output_bytes(Command::new(tool).args(["-d", "-c"]).arg(path))
            .with_context(|| format!("{tool} cannot decompress {name}")),
    }
}

/// Adds `name` and, first, its dependencies to `order` (depth first, each once).
fn add_module(
    name: &str,
    index: &HashMap<String, PathBuf>,
    order: &mut Vec<String>,
    visiting: &mut BTreeSet<String>,
) -> Result<()> {
    if order.iter().any(|m| m == name) || !visiting.insert(name.to_string()) {
        return Ok(());
    }
    let path = index
        .get(name)
        .with_context(|| format!("module {name} is not in the kernel's module tree"))?;
    let deps = output(Command::new("modinfo").args(["-F", "depends"]).arg(path))
        .context("reading module dependencies failed (is kmod installed?)")?;
    for dep in deps.trim().split(',').filter(|d| !d.is_empty()) {
        add_module(&dep.replace('-', "_"), index, order, visiting)?;
    }
    order.push(name.to_string());
    Ok(())
}

/// Builds a kernel's modules archive: `/vmtest/modules/<name>.ko` and `/vmtest/modules.list`
/// in load order. Returns the archive and the modules it holds.
pub fn modules(kernel: &Kernel) -> Result<(Vec<u8>, Vec<String>)> {
    let mut index = HashMap::new();
    module_index(&kernel.modules.join("kernel"), &mut index)?;
    let builtin = builtins(kernel);
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for (list, required) in [(MODULES, true), (OPTIONAL_MODULES, false)] {
        for name in list.iter().copied() {
            if builtin.contains(name) {
                continue;
            }
            if !index.contains_key(name) {
                if required {
                    bail!(
                        "kernel {} has {name} neither built in nor as a module",
                        kernel.release
                    );
                }
                continue;
            }
            add_module(name, &index, &mut order, &mut visiting)?;
        }
    }
    let mut archive = Archive::new();
    for name in &order {
        let path = index
            .get(name)
            .with_context(|| format!("module {name} vanished"))?;
        archive.file(
            &format!("vmtest/modules/{name}.ko"),
            module_bytes(path)?,
            false,
        )?;
    }
    let mut list = order.join("\n");
    list.push('\n');
    archive.file("vmtest/modules.list", list.into_bytes(), false)?;
    Ok((archive.to_bytes()?, order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name(Path::new("kernel/net/sched/act_bpf.ko.xz")).as_deref(),
            Some("act_bpf")
        );
        assert_eq!(
            module_name(Path::new("a/crc32c-intel.ko")).as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name(Path::new("modules.builtin")), None);
    }

    #[test]
    fn guest_paths_follow_this_machines_links() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-vmtest-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real"))?;
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("real"), &link)?;
        let got = guest_path(&link.join("libx.so.1"));
        let real = dir.canonicalize()?.join("real/libx.so.1");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got?, real.display().to_string());
        Ok(())
    }
}

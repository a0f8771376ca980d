//! Real container runtimes for the integration tests, started offline from Debian's packages
//! (`cargo xtask setup` installs them): Podman with `podman system service` (the
//! Docker-compatible API), and containerd with its CRI plugin and the CNI bridge plugin, which
//! makes Kubernetes-style pod sandboxes. Images are built here from busybox-static and a tiny
//! static pause program (no registry). Each runtime keeps its state in its own directory and
//! uses its own socket, network and subnet; everything it made — containers, pods, sandboxes,
//! networks, netavark's iptables chains, cgroup directories, CNI state, mounts — is removed when
//! it is dropped, also when a test fails. Only processes started here are stopped, by PID.
//!
//! Runtimes that misbehave: [`FaultSocket`] is a Docker-API socket that accepts and then
//! never answers, dribbles, or floods; [`Containerd::freeze`] stops the real containerd with
//! SIGSTOP (SIGCONT when dropped).

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read as _, Write as _},
    os::unix::{
        net::{UnixListener, UnixStream},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_cri::v1 as cri;
use nettools::lab::sh;

use crate::{Scratch, nsexec::DroppingPod, unique};

/// The programs a containerd test needs: containerd, its shim, runc and ctr to run it, gcc
/// for the pause image, nsenter and iptables to stage a drop inside a pod.
pub const CONTAINERD_PROGRAMS: &[&str] = &[
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "ctr",
    "gcc",
    "nsenter",
    "iptables",
];

/// Why a runtime cannot be tested here (a missing program), or `None` when all are present.
pub fn missing(programs: &[&str]) -> Option<String> {
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| {
            !std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
                .unwrap_or(false)
                && !Path::new("/usr/sbin").join(p).is_file()
                && !Path::new("/sbin").join(p).is_file()
        })
        .collect();
    // The guest has the network tools (a test needing only those runs there), not the runtimes.
    (!absent.is_empty()).then(|| {
        if crate::in_vmtest_guest() {
            "the vmtest guest is a busybox initramfs without container runtimes and their \
             tools; this test runs on the host"
                .to_string()
        } else {
            format!(
                "{} not installed (cargo xtask setup installs them)",
                absent.join(", ")
            )
        }
    })
}

/// Runs a command with extra environment variables; fails with its stderr.
fn run_env(args: &[&str], env: &[(&str, &Path)]) -> Result<String> {
    let (program, rest) = args.split_first().context("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Directories of earlier test runs of `kind` whose process is gone (killed before its
/// clean-up ran: SIGKILL, a CI timeout).
fn stale_dirs(kind: &str) -> Vec<PathBuf> {
    let prefix = format!("nettools-{kind}-");
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(&prefix)?.split('-').next()?.to_string();
            let alive = Path::new("/proc").join(&pid).exists();
            (!alive && pid != std::process::id().to_string()).then(|| e.path())
        })
        .collect()
}

/// Stops a daemon an earlier, killed test run started: by the PID it wrote, and only when
/// that process's command line still names the run's directory (not a reused PID).
fn stop_stale_daemon(pid_file: &Path, dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&dir.display().to_string()) {
        return;
    }
    // SAFETY: a process of an earlier test run of ours, identified by PID and command line.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let started = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A busybox-static root filesystem (`/bin/sh`, `sleep`, … as links to busybox).
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("busybox-rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox is not installed (busybox-static)")?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "sleep", "cat", "ip", "nc", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    Ok(root)
}

/// The pause program of a pod sandbox: sleeps until SIGTERM or SIGINT.
const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
static void stop(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
"#;

/// A root filesystem holding only a static `/pause`, compiled here.
pub fn pause_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("pause-rootfs");
    std::fs::create_dir_all(&root)?;
    let source = dir.join("pause.c");
    std::fs::write(&source, PAUSE_C)?;
    let out = root.join("pause");
    sh(&[
        "gcc",
        "-static",
        "-Os",
        "-o",
        &out.display().to_string(),
        &source.display().to_string(),
    ])
    .context("cannot build the pause program (needs gcc and libc6-dev)")?;
    Ok(root)
}

/// Packs the contents of `dir` into the tar file `out`.
fn tar(dir: &Path, out: &Path) -> Result<()> {
    sh(&[
        "tar",
        "-C",
        &dir.display().to_string(),
        "-cf",
        &out.display().to_string(),
        ".",
    ])
    .map(|_| ())
}

/// Packs a root filesystem as a `docker save` archive (`ctr images import` reads it).
pub fn docker_archive(rootfs: &Path, tag: &str, entrypoint: &[&str], out: &Path) -> Result<()> {
    let work = out.with_extension("d");
    std::fs::create_dir_all(&work)?;
    let layer = work.join("layer.tar");
    tar(rootfs, &layer)?;
    let digest = sh(&["sha256sum", &layer.display().to_string()])?;
    let digest = digest.split_whitespace().next().context("no sha256sum")?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    std::fs::write(work.join("config.json"), config.to_string())?;
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": ["layer.tar"],
    }]);
    std::fs::write(work.join("manifest.json"), manifest.to_string())?;
    sh(&[
        "tar",
        "-C",
        &work.display().to_string(),
        "-cf",
        &out.display().to_string(),
        "config.json",
        "manifest.json",
        "layer.tar",
    ])?;
    Ok(())
}

/// Waits until a unix socket exists, or the process that should create it died.
fn wait_for_socket(socket: &Path, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let started = Instant::now();
    while !socket.exists() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "{what} did not listen on {} within 20 s: {}",
                socket.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops a daemon this test started: SIGTERM by its PID, then SIGKILL after 10 s.
fn stop_daemon(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling a child this test started, by its PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// cgroup directories a runtime creates under every hierarchy (`/libpod_parent`, `/kubepods`):
/// the ones that did not exist before are removed again, deepest first.
struct CgroupDirs {
    created: Vec<PathBuf>,
}

impl CgroupDirs {
    fn hierarchies() -> Vec<PathBuf> {
        let mut out = vec![PathBuf::from("/sys/fs/cgroup")];
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        out
    }

    /// After a killed run: `names` in every hierarchy. Only empty cgroups can be removed (the
    /// kernel refuses the others), so a directory still in use by anyone stays.
    fn stale(names: &[&str]) -> Self {
        let created = Self::hierarchies()
            .iter()
            .flat_map(|h| names.iter().map(move |n| h.join(n)))
            .collect();
        Self { created }
    }

    /// Notes which of `names` (top-level cgroup names) do not exist yet in any hierarchy.
    fn before(names: &[&str]) -> Self {
        let mut created = Vec::new();
        for h in Self::hierarchies() {
            for n in names {
                let p = h.join(n);
                if !p.exists() {
                    created.push(p);
                }
            }
        }
        Self { created }
    }
}

impl Drop for CgroupDirs {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for p in &self.created {
            if p.exists() {
                remove(p);
            }
        }
    }
}

/// Paths a runtime may create outside its own directory: removed again only when they did
/// not exist before.
struct NewPaths(Vec<PathBuf>);

impl NewPaths {
    fn before(paths: &[&str]) -> Self {
        Self(
            paths
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
        )
    }
}

impl Drop for NewPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// netavark's iptables chains (NETAVARK_*): removed after the test when no Podman network
/// uses them any more (netavark removes a network's own rules and chains with its last
/// container, and leaves these shells behind; it makes them again when needed).
struct NetavarkChains;

impl NetavarkChains {
    fn rules(table: &str) -> Vec<String> {
        sh(&["iptables", "-t", table, "-S"])
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Whether any network still has rules in netavark's chains.
    fn in_use() -> bool {
        let forward = Self::rules("filter")
            .iter()
            .any(|r| r.starts_with("-A NETAVARK_FORWARD"));
        let per_network = Self::rules("nat").iter().any(|r| {
            r.strip_prefix("-N NETAVARK-")
                .is_some_and(|c| !c.starts_with("HOSTPORT-"))
        });
        forward || per_network
    }
}

impl Drop for NetavarkChains {
    fn drop(&mut self) {
        if Self::in_use() {
            return;
        }
        for table in ["filter", "nat"] {
            let rules = Self::rules(table);
            // Jumps into netavark's chains from the built-in ones first, then the chains.
            for r in &rules {
                if let Some(rest) = r.strip_prefix("-A ")
                    && r.contains("NETAVARK")
                    && !rest.starts_with("NETAVARK")
                {
                    let mut args = vec!["iptables", "-t", table, "-D"];
                    args.extend(rest.split_whitespace().map(|a| a.trim_matches('"')));
                    // Comments hold spaces: delete by number instead when splitting fails.
                    if sh(&args).is_err() {
                        delete_rule_by_spec(table, rest);
                    }
                }
            }
            let chains: BTreeSet<String> = rules
                .iter()
                .filter_map(|r| r.strip_prefix("-N "))
                .filter(|c| c.starts_with("NETAVARK"))
                .map(String::from)
                .collect();
            for c in &chains {
                let _ = sh(&["iptables", "-t", table, "-F", c]);
            }
            for c in &chains {
                let _ = sh(&["iptables", "-t", table, "-X", c]);
            }
        }
    }
}

/// Deletes the rule `CHAIN …` of `table` by its position (for rules with quoted comments).
fn delete_rule_by_spec(table: &str, spec: &str) {
    let Some(chain) = spec.split_whitespace().next() else {
        return;
    };
    let listed = sh(&["iptables", "-t", table, "-S", chain]).unwrap_or_default();
    let position = listed
        .lines()
        .filter(|l| l.starts_with("-A "))
        .position(|l| l.strip_prefix("-A ") == Some(spec));
    if let Some(i) = position {
        let _ = sh(&["iptables", "-t", table, "-D", chain, &(i + 1).to_string()]);
    }
}

/// Podman as root with its own storage, configuration, network and API service.
pub struct Podman {
    dir: Scratch,
    pub socket: PathBuf,
    /// The bridge network this test's containers use, and its subnet prefix (`10.233.N`).
    pub network: String,
    pub subnet_prefix: String,
    service: Option<Child>,
    _netavark: NetavarkChains,
    _cgroups: CgroupDirs,
    _paths: NewPaths,
}

impl Podman {
    /// Configures Podman (runc, cgroupfs, file-based events), imports the busybox image,
    /// creates a bridge network and starts `podman system service` on a socket of its own.
    pub fn start() -> Result<Self> {
        let mut podman = Self::without_service()?;
        let log = podman.dir.0.join("service.log");
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", podman.socket.display()))
            .envs(podman.env())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Its own process group, so a test's Ctrl-C does not reach it first.
            .process_group(0)
            .spawn()
            .context("cannot start podman system service")?;
        std::fs::write(podman.dir.0.join("service.pid"), child.id().to_string())?;
        let ready = wait_for_socket(&podman.socket, &mut child, "podman system service", &log);
        podman.service = Some(child);
        ready?;
        Ok(podman)
    }

    /// The same without `podman system service`, as on a host where nobody enabled
    /// `podman.socket`: only the `podman` command and Podman's files on disk.
    pub fn without_service() -> Result<Self> {
        Self::remove_stale();
        let netavark = NetavarkChains;
        let cgroups = CgroupDirs::before(&["libpod_parent"]);
        let paths = NewPaths::before(&["/run/containers", "/var/lib/containers"]);
        let dir = Scratch::new("podman")?;
        let d = dir.0.clone();
        let (pid, n) = unique();
        let third = 100 + (pid + n) % 150;
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
[network]
network_backend = "netavark"
network_config_dir = "{d}/networks"
"#,
                d = d.display()
            ),
        )?;
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n",
                d = d.display()
            ),
        )?;
        let podman = Self {
            socket: d.join("docker.sock"),
            network: format!("ntnet{pid}x{n}"),
            subnet_prefix: format!("10.233.{third}"),
            dir,
            service: None,
            _netavark: netavark,
            _cgroups: cgroups,
            _paths: paths,
        };
        let rootfs = busybox_rootfs(&d)?;
        let archive = d.join("busybox.tar");
        tar(&rootfs, &archive)?;
        podman.cmd(&[
            "import",
            &archive.display().to_string(),
            "localhost/ntbusybox",
        ])?;
        let subnet = format!("{}.0/24", podman.subnet_prefix);
        let network = podman.network.clone();
        std::fs::write(d.join("network"), &network)?;
        podman.cmd(&["network", "create", "--subnet", &subnet, &network])?;
        Ok(podman)
    }

    /// Removes what killed test runs left: their service, containers, pods, network, storage.
    fn remove_stale() {
        for dir in stale_dirs("podman") {
            stop_stale_daemon(&dir.join("service.pid"), &dir);
            // Dropping an adopted instance runs the usual clean-up with that run's config.
            drop(Self {
                socket: dir.join("docker.sock"),
                network: std::fs::read_to_string(dir.join("network")).unwrap_or_default(),
                subnet_prefix: String::new(),
                service: None,
                _netavark: NetavarkChains,
                _cgroups: CgroupDirs::stale(&["libpod_parent"]),
                _paths: NewPaths(Vec::new()),
                dir: Scratch(dir),
            });
        }
    }

    /// The environment that points `podman` (and nettools, which reads Podman's
    /// `storage.conf` the same way) at this instance's configuration and storage.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("CONTAINERS_CONF", self.dir.0.join("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", self.dir.0.join("storage.conf")),
        ]
    }

    /// Runs `podman ARGS` with this instance's configuration.
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["podman"];
        full.extend_from_slice(args);
        let env = self.env();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        run_env(&full, &env)
    }

    /// `podman run -d ARGS… localhost/ntbusybox sleep 3600`; returns the container id.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["run", "-d"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["localhost/ntbusybox", "sleep", "3600"]);
        self.cmd(&full)
    }

    /// A pod on this instance's network (its infra container is busybox sleeping).
    pub fn pod(&self, name: &str) -> Result<String> {
        self.cmd(&[
            "pod",
            "create",
            "--name",
            name,
            "--network",
            &self.network,
            "--infra-image",
            "localhost/ntbusybox",
            "--infra-command",
            "sleep 3600",
        ])
    }

    /// A value of `podman inspect --format TEMPLATE NAME`.
    pub fn inspect(&self, name: &str, template: &str) -> Result<String> {
        self.cmd(&["inspect", "--format", template, name])
    }

    /// The main process of a container.
    pub fn pid(&self, name: &str) -> Result<u32> {
        let pid = self.inspect(name, "{{.State.Pid}}")?;
        pid.parse()
            .with_context(|| format!("podman gave no pid for {name}: {pid:?}"))
    }

    /// A pod `PREFIXpod` with a container `PREFIX-web` whose firewall drops UDP to `port`,
    /// and a container `PREFIX-client` on this instance's network: the pod, and the client's
    /// namespace path.
    pub fn dropping_pod_and_client(
        &self,
        prefix: &str,
        port: u16,
    ) -> Result<(DroppingPod, String)> {
        let (pod, web, client) = (
            format!("{prefix}pod"),
            format!("{prefix}-web"),
            format!("{prefix}-client"),
        );
        self.pod(&pod)?;
        self.run(&["--name", &web, "--pod", &pod])?;
        self.run(&["--name", &client, &format!("--network={}", self.network)])?;
        let client_ns = format!("/proc/{}/ns/net", self.pid(&client)?);
        let pod = DroppingPod::stage(format!("/proc/{}/ns/net", self.pid(&web)?), port)?;
        Ok((pod, client_ns))
    }

    /// The container's address on this instance's network.
    pub fn ip(&self, name: &str) -> Result<std::net::Ipv4Addr> {
        let all = self.inspect(
            name,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        )?;
        all.split_whitespace()
            .find(|a| a.starts_with(&self.subnet_prefix))
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!(
                    "{name} has no address in {}.0/24: {all:?}",
                    self.subnet_prefix
                )
            })
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            stop_daemon(&mut s);
        }
        let _ = self.cmd(&["pod", "rm", "--all", "--force", "--time", "0"]);
        // Containers joined to others (`--net container:X`) go first.
        for _ in 0..3 {
            let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        }
        let network = self.network.clone();
        let _ = self.cmd(&["network", "rm", "--force", &network]);
        let _ = self.cmd(&["rmi", "--all", "--force"]);
        // The rest (storage, its mounts) goes with the directory.
    }
}

/// containerd with its CRI plugin and a CNI bridge network of its own: Kubernetes pod
/// sandboxes without a kubelet.
pub struct Containerd {
    pub socket: PathBuf,
    /// The CNI bridge on the host and the subnet prefix (`10.234.N`) of its pods.
    pub bridge: String,
    pub subnet_prefix: String,
    pub rt: tokio::runtime::Runtime,
    sandboxes: Vec<String>,
    daemon: Option<Child>,
    network_name: String,
    // Dropped after the daemon is stopped (fields drop in declaration order).
    _cgroups: CgroupDirs,
    _paths: NewPaths,
    dir: Scratch,
}

impl Containerd {
    /// Writes containerd's and CNI's configuration, starts containerd and imports the pause and
    /// busybox images.
    pub fn start() -> Result<Self> {
        Self::remove_stale();
        let cgroups = CgroupDirs::before(&["kubepods", "k8s.io"]);
        let paths = NewPaths::before(&["/run/containerd", "/var/lib/cni"]);
        let dir = Scratch::new("containerd")?;
        let d = dir.0.clone();
        let (pid, n) = unique();
        let third = 100 + (pid + n) % 150;
        let bridge = format!("ntcni{}", (pid * 10 + n) % 100_000);
        let network_name = format!("ntcni-{pid}-{n}");
        let subnet_prefix = format!("10.234.{third}");
        std::fs::create_dir_all(d.join("net.d"))?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network_name,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{subnet_prefix}.0/24")}]],
                    "dataDir": d.join("ipam"),
                },
            }],
        });
        std::fs::write(d.join("net.d/10-nettools.conflist"), conflist.to_string())?;
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/ntpause:latest"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
"#,
            d = d.display(),
            socket = socket.display()
        );
        std::fs::write(d.join("config.toml"), config)?;
        let (mut child, log) = Self::launch(&d)?;
        let ready = wait_for_socket(&socket, &mut child, "containerd", &log);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ctd = Self {
            socket,
            bridge,
            subnet_prefix,
            rt,
            sandboxes: Vec::new(),
            daemon: Some(child),
            network_name,
            _cgroups: cgroups,
            _paths: paths,
            dir,
        };
        ready?;
        let pause = pause_rootfs(&d)?;
        docker_archive(
            &pause,
            "localhost/ntpause:latest",
            &["/pause"],
            &d.join("pause.tar"),
        )?;
        let busybox = busybox_rootfs(&d)?;
        docker_archive(
            &busybox,
            "localhost/ntbusybox:latest",
            &["/bin/sh"],
            &d.join("busybox.tar"),
        )?;
        for image in ["pause.tar", "busybox.tar"] {
            ctd.ctr(&["images", "import", &d.join(image).display().to_string()])?;
        }
        ctd.all_sandboxes()?;
        Ok(ctd)
    }

    /// Starts containerd with the configuration in `dir`.
    fn launch(dir: &Path) -> Result<(Child, PathBuf)> {
        let log = dir.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .process_group(0)
            .spawn()
            .context("cannot start containerd")?;
        std::fs::write(dir.join("containerd.pid"), child.id().to_string())?;
        Ok((child, log))
    }

    /// Removes what killed test runs left: containerd is started again on their state so
    /// that their sandboxes are stopped and removed through CRI, then stopped.
    fn remove_stale() {
        for dir in stale_dirs("containerd") {
            stop_stale_daemon(&dir.join("containerd.pid"), &dir);
            let _ = std::fs::remove_file(dir.join("containerd.sock"));
            let conflist: serde_json::Value = std::fs::read(dir.join("net.d/10-nettools.conflist"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                continue;
            };
            let mut stale = Self {
                socket: dir.join("containerd.sock"),
                bridge: conflist["plugins"][0]["bridge"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                subnet_prefix: String::new(),
                rt,
                sandboxes: Vec::new(),
                daemon: None,
                network_name: conflist["name"].as_str().unwrap_or("").to_string(),
                _cgroups: CgroupDirs::stale(&["kubepods", "k8s.io"]),
                _paths: NewPaths(Vec::new()),
                dir: Scratch(dir.clone()),
            };
            if let Ok((mut child, log)) = Self::launch(&dir) {
                let ready = wait_for_socket(&stale.socket, &mut child, "containerd", &log);
                stale.daemon = Some(child);
                if ready.is_ok() {
                    stale.sandboxes = stale.all_sandboxes().unwrap_or_default();
                }
                if let Err(e) = ready {
                    eprintln!("cleanup of {}: {e:#}", dir.display());
                }
            }
            // Dropping it removes the sandboxes, stops containerd, removes the bridge and dir.
            drop(stale);
        }
    }

    /// Every sandbox this containerd knows. Waits for the CRI plugin, which answers "not
    /// initialized" for a moment after containerd starts listening.
    fn all_sandboxes(&self) -> Result<Vec<String>> {
        let started = Instant::now();
        loop {
            let mut client = self.client()?;
            match self
                .rt
                .block_on(client.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }))
            {
                Ok(r) => return Ok(r.into_inner().items.into_iter().map(|s| s.id).collect()),
                Err(s) if started.elapsed() > Duration::from_secs(10) => {
                    bail!("containerd's CRI plugin did not answer: {}", s.message())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `ctr -a SOCKET -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket.display().to_string();
        let mut full = vec!["ctr", "-a", socket.as_str(), "-n", "k8s.io"];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn client(
        &self,
    ) -> Result<cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>> {
        self.rt
            .block_on(nettools::discover::cri::connect(&self.socket))
    }

    /// The sandbox configuration a kubelet would send for pod `namespace/name`.
    pub fn sandbox_config(
        &self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
    ) -> cri::PodSandboxConfig {
        let logs = self
            .dir
            .0
            .join("logs")
            .join(format!("{namespace}_{name}_{uid}"));
        let _ = std::fs::create_dir_all(&logs);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt,
            }),
            hostname: name.into(),
            log_directory: logs.display().to_string(),
            labels: HashMap::from([
                ("io.kubernetes.pod.name".to_string(), name.to_string()),
                (
                    "io.kubernetes.pod.namespace".to_string(),
                    namespace.to_string(),
                ),
                ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
            ]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Pod as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a pod sandbox through CRI (as a kubelet does) and returns its id.
    pub fn run_pod(
        &mut self,
        name: &str,
        namespace: &str,
        uid: &str,
        attempt: u32,
    ) -> Result<String> {
        let mut client = self.client()?;
        let config = self.sandbox_config(name, namespace, uid, attempt);
        let id = self
            .rt
            .block_on(client.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))
            .map_err(|s| anyhow!("RunPodSandbox {namespace}/{name} failed: {}", s.message()))?
            .into_inner()
            .pod_sandbox_id;
        self.sandboxes.push(id.clone());
        Ok(id)
    }

    /// Creates and starts a busybox container (`sleep 3600`) in a sandbox.
    pub fn run_container(
        &mut self,
        sandbox: &str,
        pod: (&str, &str, &str, u32),
        name: &str,
    ) -> Result<String> {
        let mut client = self.client()?;
        let sandbox_config = self.sandbox_config(pod.0, pod.1, pod.2, pod.3);
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "localhost/ntbusybox:latest".into(),
                ..Default::default()
            }),
            command: vec!["/bin/sleep".into(), "3600".into()],
            log_path: format!("{name}.log"),
            labels: HashMap::from([("io.kubernetes.container.name".to_string(), name.to_string())]),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let id = self
            .rt
            .block_on(client.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))
            .map_err(|s| anyhow!("CreateContainer {name} failed: {}", s.message()))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|s| anyhow!("StartContainer {name} failed: {}", s.message()))?;
        Ok(id)
    }

    /// Stops and removes a sandbox (and its containers), as a kubelet does when a pod is
    /// deleted.
    pub fn remove_pod(&mut self, id: &str) -> Result<()> {
        let mut client = self.client()?;
        self.rt
            .block_on(client.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| anyhow!("StopPodSandbox failed: {}", s.message()))?;
        self.rt
            .block_on(client.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .map_err(|s| anyhow!("RemovePodSandbox failed: {}", s.message()))?;
        self.sandboxes.retain(|s| s != id);
        Ok(())
    }

    /// The sandbox's (pause) process, found through its cgroup — the kernel's view, not CRI's.
    pub fn sandbox_pid(&self, uid: &str, sandbox: &str) -> Result<u32> {
        let procs =
            format!("/sys/fs/cgroup/memory/kubepods/besteffort/pod{uid}/{sandbox}/cgroup.procs");
        let text =
            std::fs::read_to_string(&procs).with_context(|| format!("cannot read {procs}"))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no process in {procs}"))
    }
}

/// containerd stopped with SIGSTOP: its socket still accepts connections (the kernel queues
/// them) but nothing answers, as with a runtime that hangs. SIGCONT when dropped.
pub struct Frozen {
    pid: i32,
}

impl Frozen {
    /// Lets containerd run again.
    pub fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: signalling the containerd this test started, by its PID.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl Containerd {
    /// Stops containerd (only the daemon, not the shims that hold the pods) with SIGSTOP.
    pub fn freeze(&mut self) -> Result<Frozen> {
        let daemon = self.daemon.as_mut().context("containerd is not running")?;
        if daemon.try_wait()?.is_some() {
            bail!("containerd exited");
        }
        let pid = i32::try_from(daemon.id())?;
        // SAFETY: signalling the containerd this test started, by its PID.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!(
                "cannot stop containerd: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Frozen { pid })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.sandboxes.clone() {
            if let Err(e) = self.remove_pod(&id) {
                eprintln!("cleanup: {e:#}");
            }
        }
        if let Some(mut d) = self.daemon.take() {
            stop_daemon(&mut d);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
        // libcni caches each attachment's result under /var/lib/cni/results.
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&self.network_name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// How a [`FaultSocket`] misbehaves once it has read a request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Accepts, reads the request, never answers.
    Silent,
    /// Answers a valid `GET /version` one byte every so often.
    Dribble(Duration),
    /// Answers `/version` as Podman does, and anything else with a chunked JSON document of
    /// this many bytes, as fast as it is read.
    Flood(usize),
}

/// A unix socket that speaks (or fails to speak) the Docker API the way a broken runtime
/// does. The server runs on threads of its own; dropping it stops them and removes the
/// socket's directory.
pub struct FaultSocket {
    pub path: PathBuf,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    _dir: Scratch,
}

/// A Podman 4.3.1 `GET /version` answer body.
const PODMAN_VERSION: &str = r#"{"Components":[{"Name":"Podman Engine","Version":"4.3.1"}],"Version":"4.3.1","ApiVersion":"1.41"}"#;

impl FaultSocket {
    pub fn start(fault: Fault) -> Result<Self> {
        let dir = Scratch::new("fault")?;
        let path = dir.0.join("docker.sock");
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let stopping = stopping.clone();
                std::thread::spawn(move || serve_fault(conn, fault, &stopping));
            }
        });
        Ok(Self {
            path,
            stop,
            acceptor: Some(acceptor),
            _dir: dir,
        })
    }

    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for FaultSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the acceptor, which then sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// One connection to a [`FaultSocket`].
fn serve_fault(mut conn: UnixStream, fault: Fault, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(_) => {}
        }
    }
    let path = String::from_utf8_lossy(&request)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let version = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{PODMAN_VERSION}",
        PODMAN_VERSION.len()
    );
    match fault {
        // Held open until the client gives up (end of file) or the test ends.
        Fault::Silent => {
            while !stop.load(Ordering::Relaxed) {
                if matches!(conn.read(&mut buf), Ok(0)) {
                    return;
                }
            }
        }
        Fault::Dribble(gap) => {
            for b in version.bytes() {
                if stop.load(Ordering::Relaxed) || conn.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(gap);
            }
        }
        Fault::Flood(_) if path == "/version" => {
            let _ = conn.write_all(version.as_bytes());
        }
        Fault::Flood(total) => {
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .is_err()
            {
                return;
            }
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < total && !stop.load(Ordering::Relaxed) {
                let head = format!("{:x}\r\n", chunk.len());
                if conn.write_all(head.as_bytes()).is_err()
                    || conn.write_all(&chunk).is_err()
                    || conn.write_all(b"\r\n").is_err()
                {
                    return;
                }
                sent += chunk.len();
            }
            let _ = conn.write_all(b"2\r\n[]\r\n0\r\n\r\n");
        }
    }
}

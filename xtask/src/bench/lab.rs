//! The bench's lab: two namespaces on a bridge, like two pods on a node.
//!
//! xtask cannot use `nettools::lab` (xtask must build before `cargo xtask setup` has installed
//! what the nettools crate needs to compile), so this is a small copy with the same naming: the
//! namespaces are `ntlab-<pid>-bench-{a,b}` and the bridge and veths carry `ntlab-<pid>-bench` as
//! their alias, so a bench that was killed is cleaned up by the next bench or by any nettools lab
//! (`nettools::lab::remove_stale`). Everything is removed on drop.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow};

use crate::process::output;

/// Runs a command and returns its stdout; fails with the command and its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let (program, rest) = args.split_first().context("empty command")?;
    output(Command::new(program).args(rest))
}

/// One namespace of the lab.
#[derive(Clone, Debug)]
pub struct Node {
    /// `ip netns` name.
    pub netns: String,
    /// Host side of its veth pair, on the bridge.
    pub host_veth: String,
    pub ipv4: Ipv4Addr,
}

impl Node {
    /// `ip netns exec NETNS ARGS…` as a command to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).args(args);
        cmd
    }

    /// Runs a command inside the namespace to completion.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread inside this namespace (sockets it makes belong there).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = PathBuf::from("/run/netns").join(&self.netns);
        let ns = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(anyhow!(
                            "cannot enter {}: {}",
                            path.display(),
                            std::io::Error::last_os_error()
                        ));
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow!("a lab thread panicked"))?
        })
    }
}

/// Two namespaces, `a` (the client, 10.241.0.1) and `b` (the server, 10.241.0.2), on a bridge.
pub struct Lab {
    pub a: Node,
    pub b: Node,
    bridge: String,
}

impl Lab {
    /// The lab's name, on its namespaces and as the alias of its links (for the stale sweep).
    pub fn id(&self) -> String {
        format!("{PREFIX}{}-bench", std::process::id())
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Namespace and host-side veth of the `i`-th extra pod (the scale section's).
    pub fn pod_names(&self, i: usize) -> (String, String) {
        let short = self.bridge.trim_end_matches("br");
        (format!("{}-p{i}", self.id()), format!("{short}p{i}"))
    }
}

const PREFIX: &str = "ntlab-";

/// The inode of the named network namespace (`/run/netns/NAME`): its id in nettools' reports.
pub fn netns_inode(name: &str) -> Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let path = format!("/run/netns/{name}");
    Ok(std::fs::metadata(&path)
        .with_context(|| format!("cannot stat {path}"))?
        .ino() as u32)
}

impl Lab {
    pub fn new() -> Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let id = format!("{PREFIX}{pid}-bench");
        let short = format!("nb{}", pid % 1_000_000);
        let bridge = format!("{short}br");
        sh(&[
            "ip",
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        let mut lab = Self {
            a: Node {
                netns: format!("{id}-a"),
                host_veth: format!("{short}a"),
                ipv4: Ipv4Addr::new(10, 241, 0, 1),
            },
            b: Node {
                netns: format!("{id}-b"),
                host_veth: format!("{short}b"),
                ipv4: Ipv4Addr::new(10, 241, 0, 2),
            },
            bridge,
        };
        sh(&["ip", "link", "set", &lab.bridge, "alias", &id])?;
        quiet_ipv6(&lab.bridge);
        sh(&["ip", "link", "set", &lab.bridge, "up"])?;
        for node in [lab.a.clone(), lab.b.clone()] {
            lab.wire(&node, &id)?;
        }
        // Both ends know each other from the start: no ARP in the middle of a measurement.
        lab.a
            .run(&["ping", "-c", "1", "-W", "2", &lab.b.ipv4.to_string()])?;
        Ok(lab)
    }

    fn wire(&mut self, node: &Node, id: &str) -> Result<()> {
        sh(&["ip", "netns", "add", &node.netns])?;
        sh(&[
            "ip",
            "link",
            "add",
            &node.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &node.netns,
        ])?;
        sh(&["ip", "link", "set", &node.host_veth, "alias", id])?;
        sh(&["ip", "link", "set", &node.host_veth, "master", &self.bridge])?;
        quiet_ipv6(&node.host_veth);
        sh(&["ip", "link", "set", &node.host_veth, "up"])?;
        node.run(&["ip", "link", "set", "lo", "up"])?;
        node.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", node.ipv4),
            "dev",
            "eth0",
        ])?;
        node.run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"])?;
        node.run(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"])?;
        node.run(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in [&self.a, &self.b] {
            let _ = sh(&["ip", "link", "del", &node.host_veth]);
            let _ = sh(&["ip", "netns", "del", &node.netns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

fn quiet_ipv6(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
}

/// Removes namespaces and links of benches whose process is gone.
fn remove_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let dead_bench = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once("-bench"))
            .is_some_and(|(pid, _)| !alive(pid))
    };
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead_bench(&name) {
                let _ = sh(&["ip", "netns", "del", &name]);
            }
        }
    }
    if let Ok(out) = sh(&["ip", "-o", "link", "show"]) {
        for line in out.lines() {
            let Some(alias) = line.split(" alias ").nth(1) else {
                continue;
            };
            if !dead_bench(alias.split_whitespace().next().unwrap_or("")) {
                continue;
            }
            if let Some(ifname) = line.split(": ").nth(1) {
                let ifname = ifname.split('@').next().unwrap_or(ifname);
                let _ = sh(&["ip", "link", "del", ifname]);
            }
        }
    }
}

//! Throwaway network labs: network namespaces wired to a bridge by veth pairs, like pods on a
//! node. Everything a [`Lab`] creates is removed when it is dropped, also when a test fails, and
//! labs left behind by a killed process are removed the next time a lab starts.
//!
//! Used by `nettools lab` (the demo) and by the integration tests.

pub mod delay;
pub mod demo;
pub mod dns;

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Prefix of every lab's names, so stale labs can be found and removed.
const TAG: &str = "ntlab";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a command and returns its stdout; fails with the command and its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let (program, rest) = args.split_first().context("empty command")?;
    let out = Command::new(program).args(rest).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("`{program}` is not installed (the lab needs iproute2 and iptables)")
        } else {
            anyhow!("cannot run {program}: {e}")
        }
    })?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a thread that has entered the network namespace at `path`. Sockets created in `f`
/// belong to that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
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

/// A namespace in the lab, wired to the bridge.
#[derive(Clone, Debug)]
pub struct Node {
    /// Name of the namespace (`ip netns`).
    pub netns: String,
    /// `/run/netns/NAME`.
    pub path: PathBuf,
    /// Host side of its veth pair (on the bridge).
    pub host_veth: String,
    /// Its IPv4 address.
    pub ipv4: std::net::Ipv4Addr,
    /// Its IPv6 address, when given one.
    pub ipv6: Option<std::net::Ipv6Addr>,
}

impl Node {
    /// Runs a command inside this namespace (`ip netns exec`).
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Stages a firewall drop: iptables in this namespace drops incoming `proto` (`udp`, `tcp`)
    /// packets to `port`.
    pub fn drop_input(&self, proto: &str, port: u16) -> Result<()> {
        let port = port.to_string();
        self.run(&[
            "iptables", "-A", "INPUT", "-p", proto, "--dport", &port, "-j", "DROP",
        ])
        .map(|_| ())
        .context("cannot stage a firewall drop (is iptables installed?)")
    }

    /// Sets a sysctl inside this namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` in this namespace (see [`in_netns`]).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.path, f)
    }

    /// The inode of this namespace.
    pub fn inode(&self) -> Result<u32> {
        crate::discover::netns::inode_of(&self.path)
            .with_context(|| format!("{} has no namespace inode", self.path.display()))
    }
}

/// A lab: its namespaces and bridge live as long as this value.
pub struct Lab {
    /// Unique to this lab: `ntlab-<pid>-<n>`.
    pub id: String,
    /// Short prefix for interface names (15 bytes at most in Linux).
    ifprefix: String,
    bridge: Option<String>,
    nodes: Vec<Node>,
    keep: bool,
}

impl Lab {
    /// Starts an empty lab, first removing labs whose process is gone.
    pub fn new() -> Result<Self> {
        remove_stale();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            id: format!("{TAG}-{pid}-{n}"),
            ifprefix: format!("n{}{}", pid % 100_000, n % 10),
            bridge: None,
            nodes: Vec::new(),
            keep: false,
        })
    }

    /// Creates the lab's bridge (the "node" the namespaces hang off).
    pub fn bridge(&mut self) -> Result<String> {
        if let Some(b) = &self.bridge {
            return Ok(b.clone());
        }
        let name = format!("{}br", self.ifprefix);
        // No multicast snooping: a snooping bridge joins the all-snoopers group and sends IGMP
        // reports to every port a second or two after coming up, at random times.
        sh(&[
            "ip",
            "link",
            "add",
            &name,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        self.bridge = Some(name.clone());
        sh(&["ip", "link", "set", &name, "alias", &self.id])?;
        // Keep the lab quiet: no IPv6 router solicitations or MLD from the bridge itself.
        quiet_ipv6(&name);
        sh(&["ip", "link", "set", &name, "up"])?;
        Ok(name)
    }

    /// Adds a namespace `short` with a veth to the bridge and the given addresses
    /// (`10.231.0.1/24`, optionally `fd00:231::1/64`).
    pub fn node(&mut self, short: &str, ipv4: &str, ipv6: Option<&str>) -> Result<Node> {
        let bridge = self.bridge()?;
        let netns = format!("{}-{short}", self.id);
        // Interface names have 15 bytes at most: keep as much of the short name as fits, and
        // number it when that would clash with another node's.
        let mut host_veth: String = format!("{}{short}", self.ifprefix)
            .chars()
            .take(15)
            .collect();
        if self.nodes.iter().any(|n| n.host_veth == host_veth) {
            let idx = self.nodes.len().to_string();
            host_veth = format!("{}{short}", self.ifprefix)
                .chars()
                .take(15 - idx.len())
                .collect::<String>()
                + &idx;
        }
        let ip4: std::net::Ipv4Addr = ipv4
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .with_context(|| format!("{ipv4} is not an IPv4 address with prefix"))?;
        let ip6: Option<std::net::Ipv6Addr> = match ipv6 {
            Some(a) => Some(
                a.split('/')
                    .next()
                    .unwrap_or("")
                    .parse()
                    .with_context(|| format!("{a} is not an IPv6 address with prefix"))?,
            ),
            None => None,
        };
        sh(&["ip", "netns", "add", &netns])?;
        let node = Node {
            path: PathBuf::from("/run/netns").join(&netns),
            netns: netns.clone(),
            host_veth: host_veth.clone(),
            ipv4: ip4,
            ipv6: ip6,
        };
        self.nodes.push(node.clone());
        sh(&[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ])?;
        sh(&["ip", "link", "set", &host_veth, "alias", &self.id])?;
        sh(&["ip", "link", "set", &host_veth, "master", &bridge])?;
        quiet_ipv6(&host_veth);
        sh(&["ip", "link", "set", &host_veth, "up"])?;
        node.run(&["ip", "link", "set", "lo", "up"])?;
        node.run(&["ip", "addr", "add", ipv4, "dev", "eth0"])?;
        if let Some(v6) = ipv6 {
            // nodad: usable at once, no 1-2 s of duplicate address detection.
            node.run(&["ip", "addr", "add", v6, "dev", "eth0", "nodad"])?;
        } else {
            // An IPv4-only node sends nothing the test did not ask for (no RS, MLD, DAD).
            node.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            node.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        node.run(&["ip", "link", "set", "eth0", "up"])?;
        Ok(node)
    }

    /// The lab's namespaces.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Leaves everything in place when dropped (`nettools lab --keep`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes everything now; errors are collected, not fatal, so all removals are tried.
    pub fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for node in self.nodes.drain(..) {
            // Deleting the host end removes the pair at once; the namespace itself is
            // destroyed asynchronously by the kernel once its last user is gone.
            let _ = sh(&["ip", "link", "del", &node.host_veth]);
            if let Err(e) = sh(&["ip", "netns", "del", &node.netns]) {
                errors.push(e.to_string());
            }
        }
        if let Some(bridge) = self.bridge.take()
            && let Err(e) = sh(&["ip", "link", "del", &bridge])
        {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!(
                "removing lab {} was incomplete: {}",
                self.id,
                errors.join("; ")
            )
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("nettools: {e}");
        }
    }
}

/// Turns IPv6 off on a host-side lab interface, so it sends nothing of its own (router
/// solicitations, MLD reports) into the lab. Best effort: a kernel without IPv6 is quiet anyway.
fn quiet_ipv6(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
}

/// Removes namespaces and bridges of labs whose process no longer exists.
pub fn remove_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    let prefix = format!("{TAG}-");
    for (name, _) in crate::discover::netns::named() {
        if let Some(rest) = name.strip_prefix(&prefix)
            && let Some(pid) = rest.split('-').next()
            && !alive(pid)
        {
            let _ = sh(&["ip", "netns", "del", &name]);
        }
    }
    // Bridges and veths carry the lab id as their alias.
    if let Ok(out) = sh(&["ip", "-o", "link", "show"]) {
        for line in out.lines() {
            let Some(alias) = line.split(" alias ").nth(1) else {
                continue;
            };
            let alias = alias.split_whitespace().next().unwrap_or("");
            let Some(rest) = alias.strip_prefix(&prefix) else {
                continue;
            };
            let Some(pid) = rest.split('-').next() else {
                continue;
            };
            if alive(pid) {
                continue;
            }
            // "7: nt12br: <…>": the name is the second field, without any "@peer".
            if let Some(ifname) = line.split(": ").nth(1) {
                let ifname = ifname.split('@').next().unwrap_or(ifname);
                let _ = sh(&["ip", "link", "del", ifname]);
            }
        }
    }
}

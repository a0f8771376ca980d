//! Throwaway network labs: network namespaces wired to a bridge by veth pairs, like pods on a
//! node. Everything a [`Lab`] creates is removed when it is dropped, also when a test fails, and
//! labs left behind by a killed process are removed the next time a lab starts: every name
//! carries its owner, the PID and the process's start time ([`Owner`]), so a PID the kernel
//! has given to another process since does not keep a dead lab alive.
//!
//! Used by `nettools lab` (the demo) and by the integration tests.

pub mod delay;
pub mod demo;
pub mod dns;

use std::{
    path::PathBuf,
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

pub use crate::discover::enter::in_netns;

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

    /// Gives the namespace its own resolver configuration, `/etc/netns/NAME/resolv.conf` (as
    /// `ip netns exec` and `nettools check` read it), naming `servers`; removed with the lab.
    pub fn resolv_conf(&self, servers: &[std::net::IpAddr]) -> Result<()> {
        let dir = std::path::Path::new(NETNS_ETC).join(&self.netns);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let text: String = servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        let file = dir.join("resolv.conf");
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))
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
    /// Unique to this lab: `ntlab-<pid>.<start time>-<n>` ([`Owner`]).
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
            id: format!("{TAG}-{}-{n}", Owner::me().token()),
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
        // Interface names have 15 bytes at most: keep as much of the short name as fits (whole
        // characters: a short name may be é…), and number it when that would clash with
        // another node's.
        let mut host_veth = bytes_prefix(&format!("{}{short}", self.ifprefix), IFNAME_MAX);
        if self.nodes.iter().any(|n| n.host_veth == host_veth) {
            let idx = self.nodes.len().to_string();
            host_veth =
                bytes_prefix(&format!("{}{short}", self.ifprefix), IFNAME_MAX - idx.len()) + &idx;
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
            remove_netns_etc(&node.netns);
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

/// Where `ip netns exec NAME` finds a namespace's own files (its resolv.conf).
const NETNS_ETC: &str = "/etc/netns";

/// Removes a lab namespace's `/etc/netns/NAME` (made by [`Node::resolv_conf`]); only lab
/// names come here, so nothing else is touched.
fn remove_netns_etc(name: &str) {
    if name.starts_with(TAG) && !name.contains('/') && !name.contains("..") {
        let _ = std::fs::remove_dir_all(std::path::Path::new(NETNS_ETC).join(name));
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

/// Bytes in an interface name (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

/// The longest prefix of `s` with at most `max` bytes that ends on a character boundary.
fn bytes_prefix(s: &str, max: usize) -> String {
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if i + c.len_utf8() > max {
            break;
        }
        end = i + c.len_utf8();
    }
    s[..end].to_string()
}

/// The process that owns a lab: its PID and its start time (clock ticks after boot, field 22
/// of `/proc/PID/stat`). A PID alone is not enough: once the owner is gone the kernel may give
/// its PID to any new process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `None` for names without one (`ntlab-<pid>-bench`, the bench's labs).
    pub start: Option<u64>,
}

impl Owner {
    /// This process.
    pub fn me() -> Self {
        let pid = std::process::id();
        Self {
            pid,
            start: start_time(pid),
        }
    }

    /// `16173.4829371`: how a lab's names carry their owner.
    pub fn token(&self) -> String {
        match self.start {
            Some(start) => format!("{}.{start}", self.pid),
            None => self.pid.to_string(),
        }
    }

    /// The owner in a lab name's token (`16173.4829371`, or `16173` without start time).
    pub fn parse(token: &str) -> Option<Self> {
        let (pid, start) = match token.split_once('.') {
            Some((pid, start)) => (pid, Some(start.parse().ok()?)),
            None => (token, None),
        };
        Some(Self {
            pid: pid.parse().ok()?,
            start,
        })
    }

    /// The owner of a lab name (`ntlab-<token>-…`), when it is one.
    pub fn of_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(TAG)?.strip_prefix('-')?;
        Self::parse(rest.split('-').next()?)
    }

    /// Whether the owner still runs, given the start time of the process that has its PID
    /// now (`None`: no such process).
    pub fn alive(&self, now: Option<u64>) -> bool {
        match (now, self.start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            // A name without start time: the PID is all there is to go by.
            (Some(_), None) => true,
        }
    }

    /// Whether the owner still runs on this machine.
    pub fn running(&self) -> bool {
        self.alive(start_time(self.pid))
    }
}

/// The start time of process `pid` (clock ticks after boot), `None` when there is none.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_start_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2, in parentheses) may hold
/// spaces and parentheses itself, so fields are counted after its last `)`.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a lab name belongs to a lab whose owner is gone.
fn stale(name: &str) -> bool {
    Owner::of_name(name).is_some_and(|o| !o.running())
}

/// Removes namespaces and bridges of labs whose process no longer exists.
pub fn remove_stale() {
    for (name, _) in crate::discover::netns::named() {
        if stale(&name) {
            remove_netns_etc(&name);
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
            if !stale(alias) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_does_not_keep_a_dead_lab_alive() {
        let owner = Owner::of_name("ntlab-16173.4829371-0-firewall");
        assert_eq!(
            owner,
            Some(Owner {
                pid: 16173,
                start: Some(4829371)
            })
        );
        let Some(owner) = owner else { return };
        // Its process: alive. Another process with its PID now, started later: dead. None: dead.
        assert!(owner.alive(Some(4829371)));
        assert!(!owner.alive(Some(9000000)));
        assert!(!owner.alive(None));
        // The bench's labs carry no start time: the PID decides.
        let bench = Owner::of_name("ntlab-812-bench-a");
        assert_eq!(
            bench,
            Some(Owner {
                pid: 812,
                start: None
            })
        );
        assert!(bench.is_some_and(|b| b.alive(Some(1)) && !b.alive(None)));
        for other in ["ntlabx-1-0", "ntlab-", "ntlab-abc-0", "ntlab-1.x-0", "web"] {
            assert_eq!(Owner::of_name(other), None, "{other}");
        }
        assert_eq!(Owner::parse(&owner.token()), Some(owner));
    }

    #[test]
    fn start_time_is_field_22_even_after_an_odd_command_name() {
        let stat = "4242 (a) b (c) R 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(stat_start_time(stat), Some(987654));
        assert_eq!(stat_start_time("garbage"), None);
        // This process: what a lab it makes carries.
        let me = Owner::me();
        assert!(me.start.is_some() && me.running());
        assert!(
            !Owner {
                start: me.start.map(|s| s + 1),
                ..me
            }
            .running()
        );
    }

    #[test]
    fn interface_names_are_cut_on_character_boundaries() {
        assert_eq!(bytes_prefix("n123450éééééééééé", 15), "n123450éééé");
        assert_eq!(bytes_prefix("abc", 15), "abc");
        assert_eq!(bytes_prefix("ab東京", 4), "ab");
    }
}

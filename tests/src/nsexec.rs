//! Working inside a network namespace given by path (a container's `/proc/PID/ns/net`), from
//! the host: commands with `nsenter`, a UDP firewall drop and its iptables rule counter (the
//! kernel's own count, the oracle), UDP senders, and the host-side peer of `eth0` with its name.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};
use nettools::lab::sh;
use serde_json::Value;

/// The inode of the network namespace at `path`.
pub fn inode(path: &str) -> Result<u32> {
    nettools::discover::netns::inode_of(Path::new(path))
        .with_context(|| format!("{path} is no namespace"))
}

/// Runs a command inside the network namespace at `path` (`nsenter --net`).
pub fn in_ns(path: &str, args: &[&str]) -> Result<String> {
    let net = format!("--net={path}");
    let mut full = vec!["nsenter", net.as_str()];
    full.extend_from_slice(args);
    sh(&full)
}

/// The host-side ifindex of `eth0` in a namespace, as the kernel links them (`eth0@ifN`).
pub fn eth0_peer_index(path: &str) -> Result<u32> {
    let out = in_ns(path, &["ip", "-j", "-d", "link", "show", "eth0"])?;
    let v: Value = serde_json::from_str(&out)?;
    v[0]["link_index"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .with_context(|| format!("eth0 has no peer index: {out}"))
}

/// The host's name for an interface index.
pub fn host_ifname(index: u32) -> Result<String> {
    let out = sh(&["ip", "-j", "link", "show"])?;
    let v: Value = serde_json::from_str(&out)?;
    v.as_array()
        .and_then(|links| links.iter().find(|l| l["ifindex"] == index))
        .and_then(|l| l["ifname"].as_str())
        .map(String::from)
        .with_context(|| format!("no host interface with index {index}"))
}

/// Drops UDP to `port` inside a namespace with iptables (appended to INPUT).
pub fn drop_udp(path: &str, port: u16) -> Result<()> {
    in_ns(
        path,
        &[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ],
    )
    .map(|_| ())
}

/// The IPv4 address of `eth0` in a namespace.
pub fn eth0_ipv4(path: &str) -> Result<Ipv4Addr> {
    let out = in_ns(path, &["ip", "-j", "-4", "addr", "show", "eth0"])?;
    let addr: Value = serde_json::from_str(&out)?;
    addr[0]["addr_info"][0]["local"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("eth0 has no IPv4 address in {path}: {out}"))
}

/// A pod whose firewall drops UDP to one port (rule 1 of INPUT in its namespace, whose counter
/// is the kernel's count of the drops).
pub struct DroppingPod {
    /// The namespace's path (`/proc/PID/ns/net`) and inode.
    pub path: String,
    pub netns: u32,
    /// The address of its `eth0`.
    pub ip: Ipv4Addr,
}

impl DroppingPod {
    /// Stages the drop of UDP to `port` in the namespace at `path`.
    pub fn stage(path: String, port: u16) -> Result<Self> {
        drop_udp(&path, port)?;
        Ok(Self {
            netns: inode(&path)?,
            ip: eth0_ipv4(&path)?,
            path,
        })
    }
}

/// The packet counter of rule `n` (1-based) of INPUT inside a namespace.
pub fn input_rule_packets(path: &str, n: usize) -> Result<u64> {
    let out = in_ns(path, &["iptables", "-L", "INPUT", "-v", "-x", "-n"])?;
    out.lines()
        .nth(1 + n)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rule {n} in INPUT:\n{out}"))
}

/// Sends `count` UDP datagrams to `dst`, `gap` apart, from inside the namespace at `path`
/// (from the host when `None`).
pub fn udp_from(path: Option<&str>, dst: SocketAddr, count: u32, gap: Duration) -> Result<()> {
    let send = move || -> Result<()> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..count {
            socket.send_to(b"nettools test", dst)?;
            std::thread::sleep(gap);
        }
        Ok(())
    };
    match path {
        Some(p) => nettools::lab::in_netns(Path::new(p), send)?,
        None => send(),
    }
}

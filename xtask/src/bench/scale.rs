//! Section 5: a node's worth of pods. `nettools serve` over 250 pod-like namespaces on one
//! bridge: how long until every veth is attached, what the collector and the kernel maps weigh,
//! what a packet between two pods costs while the other 248 are attached, and whether pods
//! coming and going for minutes leave anything behind (kernel map entries counted before and
//! after, RSS).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Plan, check_interrupted,
    empty::{self, Empty},
    kernel::{self, RunTimeStats},
    lab::{Lab, Node, netns_inode},
    load,
    proc::Proc,
    progress,
};

/// Where the agent listens during the bench (loopback only).
const LISTEN: &str = "127.0.0.1:19977";

pub struct Scale {
    pods: usize,
    /// Seconds from spawning `nettools serve` to every veth attached.
    attach_s: f64,
    rss_attached_kib: u64,
    maps_bytes: u64,
    /// (program, ns per run) for the two pods' traffic, nettools' and the floor's.
    per_packet: Vec<(String, f64)>,
    churn: Duration,
    churned: usize,
    entries_before: Vec<(String, u64)>,
    entries_after: Vec<(String, u64)>,
    /// Entries, by map, that belong to a churned pod that no longer exists: leaks.
    leaked: Vec<(String, u64)>,
    rss_before_churn_kib: u64,
    rss_after_churn_kib: u64,
    peak_kib: u64,
}

/// One GET on the agent: the body, or an error.
fn get(path: &str) -> Result<String> {
    let mut s = TcpStream::connect(LISTEN)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A gauge without labels from an exposition.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

pub fn scale(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Scale> {
    let pods = plan.scale_pods;
    progress(&format!("  building {pods} more pods on the bridge"));
    let t = Instant::now();
    lab.add_pods(0..pods)?;
    progress(&format!("  built in {:.1} s", t.elapsed().as_secs_f64()));
    let want = pods + 2;

    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        LISTEN,
        "--refresh",
        "1s",
        "--timeout",
        "2s",
    ])
    .stdout(Stdio::null());
    let spawned = Instant::now();
    let mut agent = Proc::spawn("nettools serve", &mut cmd)?;
    let attach_s = loop {
        check_interrupted()?;
        if spawned.elapsed() > Duration::from_secs(120) {
            bail!(
                "nettools serve did not attach to {want} veths within 120 s: {}",
                agent.stderr_text()
            );
        }
        if let Ok(m) = get("/metrics")
            && gauge(&m, "nettools_tc_interfaces").is_some_and(|n| n >= want as f64)
        {
            break spawned.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    progress(&format!("  {want} veths attached after {attach_s:.2} s"));
    std::thread::sleep(Duration::from_secs(2));
    let rss_attached_kib = agent.status_kib("VmRSS").unwrap_or(0);
    let maps_bytes = kernel::map_bytes(agent.pid)
        .unwrap_or_default()
        .iter()
        .map(|(_, b)| b)
        .sum();

    // A packet between two pods while every other pod's veth is attached too.
    let per_packet = {
        let stats = RunTimeStats::enable()?;
        let mut floor = Empty::default();
        floor.attach_tc(&[&lab.a.host_veth, &lab.b.host_veth])?;
        let snapshot = || -> Result<_> {
            let mut s = kernel::prog_stats(agent.pid)?;
            s.extend(floor.stats());
            Ok(s)
        };
        let before = snapshot()?;
        load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true)?;
        let after = snapshot()?;
        drop(floor);
        drop(stats);
        [
            "nettools_ingress",
            empty::TC_INGRESS,
            "nettools_egress",
            empty::TC_EGRESS,
        ]
        .iter()
        .filter_map(|p| {
            let (a, b) = (after.get(*p)?, before.get(*p).copied().unwrap_or_default());
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            (runs > 0).then(|| {
                (
                    p.to_string(),
                    a.run_time_ns.saturating_sub(b.run_time_ns) as f64 / runs as f64,
                )
            })
        })
        .collect::<Vec<_>>()
    };

    // Churn: pods created, busy for a moment, deleted, continuously.
    let entries_before = counts(&kernel::map_entries(agent.pid)?);
    let rss_before_churn_kib = agent.status_kib("VmRSS").unwrap_or(0);
    progress(&format!(
        "  churn for {:.0} s (kernel map entries before: {})",
        plan.churn.as_secs_f64(),
        entries_before.iter().map(|(_, n)| n).sum::<u64>()
    ));
    let (churned, gone) = churn(lab, pods, plan.churn)?;
    // Let the agent notice the last deletions and expire what they left waiting.
    std::thread::sleep(Duration::from_secs(6));
    let after = kernel::map_entries(agent.pid)?;
    let entries_after = counts(&after);
    let leaked = leaks(&after, &gone);
    let rss_after_churn_kib = agent.status_kib("VmRSS").unwrap_or(0);
    let usage = agent.stop(libc::SIGTERM, Duration::from_secs(30))?;
    lab.remove_pods(0..pods);
    Ok(Scale {
        pods: want,
        attach_s,
        rss_attached_kib,
        maps_bytes,
        per_packet,
        churn: plan.churn,
        churned,
        entries_before,
        entries_after,
        leaked,
        rss_before_churn_kib,
        rss_after_churn_kib,
        peak_kib: usage.max_rss_kib,
    })
}

/// Creates and deletes pods for `duration`, keeping a few alive: each one, while it lives,
/// sends a UDP datagram to a closed port (a drop), a datagram to an address nobody owns (ARP
/// requests, then a neighbour failure), a SYN to the previous pod's closed port (a refused
/// handshake) and a DNS query to it (never answered). Returns how many pods came and went.
fn churn(lab: &Lab, first: usize, duration: Duration) -> Result<(usize, Gone)> {
    let mut gone = Gone::default();
    let started = Instant::now();
    let mut alive: std::collections::VecDeque<(usize, Instant)> = Default::default();
    let mut next = first;
    let mut churned = 0;
    while started.elapsed() < duration || !alive.is_empty() {
        check_interrupted()?;
        if started.elapsed() < duration && alive.len() < 8 {
            lab.add_pods(next..next + 1)?;
            let node = lab.pod(next);
            gone.inodes.insert(netns_inode(&node.netns)?);
            gone.ifindexes.insert(empty::ifindex(&node.host_veth)?);
            let peer = lab.pod(next.saturating_sub(1));
            let _ = node.enter(|| busy(peer.ipv4));
            alive.push_back((next, Instant::now()));
            next += 1;
        }
        if let Some(&(oldest, born)) = alive.front()
            && (born.elapsed() > Duration::from_secs(4) || started.elapsed() >= duration)
        {
            lab.remove_pods(oldest..oldest + 1);
            alive.pop_front();
            churned += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The kernel gives a new namespace a freed inode at once: an inode that lives again is not
    // a dead pod's.
    gone.inodes.retain(|i| !live_inodes().contains(i));
    Ok((churned, gone))
}

/// The churned pods that no longer exist: their namespaces' inodes and their host veths'
/// ifindexes (never reused by the host).
#[derive(Default)]
struct Gone {
    inodes: std::collections::BTreeSet<u32>,
    ifindexes: std::collections::BTreeSet<u32>,
}

/// Inodes of every network namespace that exists now (named ones and processes').
fn live_inodes() -> std::collections::BTreeSet<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let mut live = std::collections::BTreeSet::new();
    for dir in ["/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(m) = std::fs::metadata(e.path()) {
                live.insert(m.ino() as u32);
            }
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(m) = std::fs::metadata(e.path().join("ns/net")) {
            live.insert(m.ino() as u32);
        }
    }
    live
}

fn counts(maps: &kernel::MapEntries) -> Vec<(String, u64)> {
    maps.iter()
        .map(|(n, e)| (n.clone(), e.len() as u64))
        .collect()
}

/// Entries that belong to a churned pod that is gone, by map: keyed by its namespace (the
/// first four bytes of the key), by its veth's ifindex (likewise), or holding that ifindex in
/// the value (the slot table, the transit map).
fn leaks(maps: &kernel::MapEntries, gone: &Gone) -> Vec<(String, u64)> {
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    };
    maps.iter()
        .map(|(name, entries)| {
            let owner_gone = |(k, v): &(Vec<u8>, Vec<u8>)| -> bool {
                let netns_key = [
                    "DROP_COUNTS",
                    "DROP_STACKS",
                    "RETRANSMIT_FLOW",
                    "RETRANSMIT_TOTA",
                    "RETRANSMIT_STAC",
                    "NEIGH_FAILURES",
                    "NEIGH_FAILURE_T",
                    "TRACED_NETNS",
                ];
                let ifindex_key = [
                    "TRAFFIC_OVERFLO",
                    "NEIGH_PROBES",
                    "HANDSHAKES",
                    "ICMP_PENDING",
                    "DNS_PENDING",
                ];
                let n = name.as_str();
                if netns_key.contains(&n) {
                    word(k, 0).is_some_and(|i| gone.inodes.contains(&i))
                } else if n == "TRACED_NETNS_DI" {
                    word(v, 0).is_some_and(|i| gone.inodes.contains(&i))
                } else if ifindex_key.contains(&n) {
                    word(k, 0).is_some_and(|i| gone.ifindexes.contains(&i))
                } else if n == "IF_SLOTS" {
                    word(v, 0).is_some_and(|i| gone.ifindexes.contains(&i))
                } else if n == "TRANSIT" {
                    word(v, 8).is_some_and(|i| gone.ifindexes.contains(&i))
                } else {
                    false
                }
            };
            (
                name.clone(),
                entries.iter().filter(|e| owner_gone(e)).count() as u64,
            )
        })
        .collect()
}

/// What a churned pod does while it lives (inside its namespace).
fn busy(peer: Ipv4Addr) {
    if let Ok(u) = UdpSocket::bind("0.0.0.0:0") {
        let _ = u.send_to(b"drop me", "127.0.0.1:9");
        let _ = u.send_to(
            b"nobody",
            SocketAddrV4::new(Ipv4Addr::new(10, 242, 255, 254), 9),
        );
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'l', b'a', b'b', 0, 0, 1, 0, 1,
        ];
        let _ = u.send_to(&query, SocketAddrV4::new(peer, 53));
    }
    let _ = TcpStream::connect_timeout(
        &SocketAddrV4::new(peer, 7).into(),
        Duration::from_millis(200),
    );
}

pub fn write_scale(out: &mut String, s: &Scale) {
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(
        out,
        "## 5. A node's worth of pods\n\n\
         {} pod-like namespaces on one bridge (each a network namespace with a veth, like a \
         pod's), and `nettools serve` (default probes, `--refresh 1s`, `--timeout 2s`) over the \
         whole node.\n",
        s.pods
    );
    let _ = writeln!(out, "| figure | value |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(
        out,
        "| from start to every veth attached (`nettools_tc_interfaces` = {}) | {:.2} s |",
        s.pods, s.attach_s
    );
    let _ = writeln!(
        out,
        "| collector RSS, attached | {:.1} MiB |",
        mib(s.rss_attached_kib)
    );
    let _ = writeln!(
        out,
        "| kernel memory of the maps | {:.1} MiB |",
        s.maps_bytes as f64 / 1024.0 / 1024.0
    );
    for (p, ns) in &s.per_packet {
        let _ = writeln!(
            out,
            "| `{p}` per packet, UDP 64 B between two pods, {} others attached | {ns:.0} ns |",
            s.pods - 2
        );
    }
    let _ = writeln!(
        out,
        "| pods created and deleted over {:.0} s of churn | {} |",
        s.churn.as_secs_f64(),
        s.churned
    );
    let _ = writeln!(
        out,
        "| collector RSS before / after the churn | {:.1} / {:.1} MiB |",
        mib(s.rss_before_churn_kib),
        mib(s.rss_after_churn_kib)
    );
    let _ = writeln!(
        out,
        "| peak RSS over the whole run (`ru_maxrss`) | {:.1} MiB |",
        mib(s.peak_kib)
    );
    let _ = writeln!(
        out,
        "\nKernel map entries before and after the churn (every hash map of the agent, and the \
         used entries of its slot tables; the churned pods made drops, neighbour failures, \
         ARP requests, handshakes and DNS queries). The agent traces every namespace of the \
         machine, so before and after also move with whatever else runs on it; **leaked** counts \
         the entries that belong to a churned pod that is gone (keyed by its namespace's inode or \
         its veth's ifindex): they must be none.\n"
    );
    let _ = writeln!(out, "| map | before | after | leaked |");
    let _ = writeln!(out, "|---|---|---|---|");
    let mut names: Vec<&String> = s
        .entries_before
        .iter()
        .chain(&s.entries_after)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names.dedup();
    let find =
        |v: &[(String, u64)], n: &str| v.iter().find(|(m, _)| m == n).map(|(_, c)| *c).unwrap_or(0);
    for n in names {
        let (b, a) = (find(&s.entries_before, n), find(&s.entries_after, n));
        let _ = writeln!(out, "| `{n}` | {b} | {a} | {} |", find(&s.leaked, n));
    }
    let _ = writeln!(out);
}

impl Lab {
    /// The `i`-th extra pod.
    pub fn pod(&self, i: usize) -> Node {
        let (netns, host_veth) = self.pod_names(i);
        Node {
            netns,
            host_veth,
            ipv4: Ipv4Addr::new(10, 242, (i / 250) as u8, (i % 250 + 1) as u8),
        }
    }

    /// Creates pods `range` (namespace, veth on the bridge, an address in 10.242.0.0/16) with one
    /// `ip -batch` for the links and one per pod for its inside.
    pub fn add_pods(&self, range: std::ops::Range<usize>) -> Result<()> {
        let mut batch = String::new();
        for i in range.clone() {
            let p = self.pod(i);
            let _ = writeln!(batch, "netns add {}", p.netns);
            let _ = writeln!(
                batch,
                "link add {} type veth peer name eth0 netns {}",
                p.host_veth, p.netns
            );
            let _ = writeln!(
                batch,
                "link set {} alias {} master {} up",
                p.host_veth,
                self.id(),
                self.bridge()
            );
        }
        ip_batch(None, &batch)?;
        for i in range {
            let p = self.pod(i);
            ip_batch(
                Some(&p.netns),
                &format!(
                    "link set lo up\naddr add {}/16 dev eth0\nlink set eth0 up\n",
                    p.ipv4
                ),
            )?;
        }
        Ok(())
    }

    /// Removes pods `range` (best effort: used on the way out too).
    pub fn remove_pods(&self, range: std::ops::Range<usize>) {
        let mut batch = String::new();
        for i in range {
            let p = self.pod(i);
            let _ = writeln!(batch, "link del {}", p.host_veth);
            let _ = writeln!(batch, "netns del {}", p.netns);
        }
        let _ = ip_batch(None, &batch);
    }
}

/// Runs `ip [-n NETNS] -force -batch -` with these commands.
fn ip_batch(netns: Option<&str>, commands: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip -batch")?;
    child
        .stdin
        .take()
        .context("no stdin for ip -batch")?
        .write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

//! `nettools lab`: a throwaway lab with a staged firewall drop, traced and explained.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{Lab, Node};
use crate::{
    cli::LabArgs,
    discover::Workload,
    preflight,
    probe::ProbeKind,
    trace::{self, TraceSpec},
};

/// The UDP port the server's firewall drops.
pub const BLOCKED_PORT: u16 = 7777;
/// The UDP port the peer answers on (healthy traffic).
pub const OPEN_PORT: u16 = 7000;

/// Sends UDP datagrams from `from` to each target every `every` until `stop` is set.
fn traffic(
    from: Node,
    targets: Vec<SocketAddr>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let result = from.enter(|| -> Result<()> {
            let socket = UdpSocket::bind("0.0.0.0:0").context("cannot open a UDP socket")?;
            while !stop.load(Ordering::Relaxed) {
                for t in &targets {
                    let _ = socket.send_to(b"nettools lab", t);
                }
                std::thread::sleep(every);
            }
            Ok(())
        });
        if let Err(e) = result.and_then(|r| r) {
            eprintln!("nettools: lab traffic stopped: {e:#}");
        }
    })
}

/// Receives and discards UDP on `port` in `node` until `stop` is set.
fn sink(node: Node, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = node.enter(|| -> Result<()> {
            let socket = UdpSocket::bind(("0.0.0.0", port))?;
            socket.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
            Ok(())
        });
    })
}

/// Packets counted by the first rule of the INPUT chain in `node`.
pub fn input_drop_counter(node: &Node) -> Result<u64> {
    let out = node.run(&["iptables", "-L", "INPUT", "-v", "-x", "-n"])?;
    out.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("cannot read the iptables rule counter")
}

pub async fn run(args: &LabArgs, verbose: bool) -> Result<()> {
    preflight::require_privileges()?;
    let mut lab = Lab::new()?;
    eprintln!(
        "nettools: building lab {} (3 namespaces on a bridge)",
        lab.id
    );
    let server = lab.node("server", "10.231.0.1/24", None)?;
    let client = lab.node("client", "10.231.0.2/24", None)?;
    let peer = lab.node("peer", "10.231.0.3/24", None)?;
    server
        .run(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "--dport",
            &BLOCKED_PORT.to_string(),
            "-j",
            "DROP",
        ])
        .context("cannot stage the firewall drop (is iptables installed?)")?;

    let stop = Arc::new(AtomicBool::new(false));
    let threads = vec![
        sink(peer.clone(), OPEN_PORT, stop.clone()),
        traffic(
            client.clone(),
            vec![
                SocketAddr::from((server.ipv4, BLOCKED_PORT)),
                SocketAddr::from((peer.ipv4, OPEN_PORT)),
            ],
            Duration::from_millis(100),
            stop.clone(),
        ),
    ];
    let workloads = [&server, &client, &peer]
        .iter()
        .map(|n| -> Result<Workload> {
            Ok(Workload {
                name: n.netns.clone(),
                netns: n.inode()?,
                netns_path: Some(n.path.clone()),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let traced = trace::run(TraceSpec {
        workloads,
        all: false,
        duration: Some(args.duration),
        probes: ProbeKind::ALL.to_vec(),
        output: args.output,
        out: None,
        ring_buffer_bytes: 1 << 22,
        tc_mode: crate::probe::tc::Mode::Auto,
        verbose,
        runtime: Default::default(),
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    traced?;

    if args.output == crate::report::Output::Table {
        let counted = input_drop_counter(&server)?;
        println!(
            "\ncross-check: the firewall rule in {} counted {counted} dropped packets in all \
             (including those sent before the probes were attached)",
            server.netns
        );
    }
    if args.keep {
        lab.keep();
        println!(
            "\nthe lab is still up. Trace it:   nettools trace --netns {} --netns {} --netns {}\n\
             remove it:                    ip netns del {0}; ip netns del {1}; ip netns del {2}; ip link del {}",
            server.netns,
            client.netns,
            peer.netns,
            lab.bridge()?
        );
    }
    Ok(())
}

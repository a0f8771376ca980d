//! Section: `nettools capture` next to tcpdump on the same traffic.
//!
//! Both capture with libpcap on pod a's host-side veth (an AF_PACKET socket, a TPACKET_V3 ring,
//! the filter in the kernel): the per-packet work in the kernel is the same mechanism, what
//! differs is the userspace side (and nettools' drop probe on `kfree_skb`, which costs only per
//! drop). Measured as tcpdump users would run it, `-w /dev/null`, with a filter that matches
//! nothing on the traffic and with none (everything captured), while iperf3 sends 64-byte UDP
//! datagrams from a to b as fast as it can: CPU per datagram of the two iperf3 processes (which
//! includes the kernel's packet path run on their behalf) plus the capturing process's own CPU,
//! next to the same traffic uncaptured in the same round. Rounds interleave the tools so drift
//! of a shared machine spreads over all of them.

use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::Result;

use super::{
    Plan, check_interrupted,
    lab::Lab,
    load,
    proc::Proc,
    progress,
    stats::{fmt_spread, median},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Uncaptured,
    Tcpdump,
    Nettools,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Uncaptured => "uncaptured",
            Tool::Tcpdump => "tcpdump -w /dev/null",
            Tool::Nettools => "nettools capture -w /dev/null",
        }
    }
}

/// (label, pcap filter): iperf3 sends to port 5201, so `udp port 9` matches none of it.
const FILTERS: [(&str, &str); 2] = [
    ("filter matching nothing (`udp port 9`)", "udp port 9"),
    ("no filter (every packet)", ""),
];

pub struct CaptureRun {
    tool: Tool,
    filter: usize,
    round: usize,
    /// CPU per datagram sent: iperf3's (with the kernel's packet path) plus the capturer's, s.
    cpu_per_datagram: f64,
    /// The capturing process's own CPU per datagram, s.
    tool_per_datagram: f64,
}

fn start(tool: Tool, bin: &Path, lab: &Lab, filter: &str) -> Result<Option<Proc>> {
    let words: Vec<&str> = filter.split_whitespace().collect();
    let veth = lab.a.host_veth.as_str();
    let (mut cmd, ready) = match tool {
        Tool::Uncaptured => return Ok(None),
        Tool::Tcpdump => {
            let mut c = Command::new("tcpdump");
            c.args(["-i", veth, "-n", "-w", "/dev/null"]).args(&words);
            (c, "listening on")
        }
        Tool::Nettools => {
            let mut c = Command::new(bin);
            c.args(["capture", "--iface", veth, "-w", "/dev/null"])
                .args(&words);
            (c, "nettools: capturing on")
        }
    };
    cmd.stdout(std::process::Stdio::null());
    let mut proc = Proc::spawn(tool.label(), &mut cmd)?;
    proc.wait_for(ready, Duration::from_secs(30))?;
    Ok(Some(proc))
}

pub fn capture(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Vec<CaptureRun>> {
    let mut configs: Vec<(Tool, usize)> = vec![(Tool::Uncaptured, 0)];
    for f in 0..FILTERS.len() {
        configs.push((Tool::Tcpdump, f));
        configs.push((Tool::Nettools, f));
    }
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        for i in 0..configs.len() {
            check_interrupted()?;
            let (tool, filter) = configs[(i + round) % configs.len()];
            let mut proc = start(tool, bin, lab, FILTERS[filter].1)?;
            let cpu0 = proc.as_ref().map_or(Ok(0.0), |p| p.cpu_s())?;
            let udp = load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true)?;
            let cpu1 = proc.as_ref().map_or(Ok(0.0), |p| p.cpu_s())?;
            if let Some(p) = proc.as_mut() {
                p.stop(libc::SIGINT, Duration::from_secs(20))?;
            }
            let sent = udp.packets_sent.max(1.0);
            let run = CaptureRun {
                tool,
                filter,
                round,
                cpu_per_datagram: (udp.cpu_s + cpu1 - cpu0) / sent,
                tool_per_datagram: (cpu1 - cpu0) / sent,
            };
            progress(&format!(
                "  round {} {:<30} {:<40} {:5.2} us CPU/datagram ({:5.2} us in the capturer)",
                round + 1,
                tool.label(),
                if tool == Tool::Uncaptured {
                    ""
                } else {
                    FILTERS[filter].0
                },
                run.cpu_per_datagram * 1e6,
                run.tool_per_datagram * 1e6,
            ));
            runs.push(run);
        }
    }
    Ok(runs)
}

pub fn write_capture(out: &mut String, runs: &[CaptureRun]) {
    let _ = writeln!(
        out,
        "## `nettools capture` next to tcpdump\n\n\
         Both on pod a's host-side veth through libpcap (AF_PACKET, TPACKET_V3 ring, the filter \
         in the kernel), `-w /dev/null`, while iperf3 sends 64-byte UDP datagrams a → b as fast \
         as it can. CPU per datagram sent: both iperf3 processes (the kernel's packet path on \
         their behalf included) plus the capturing process; the ratio is to the uncaptured run \
         of the same round (median and range over the rounds). nettools captures with its \
         default, the dropped packets too (its `kfree_skb` program runs only on drops; there \
         are none here).\n"
    );
    let _ = writeln!(
        out,
        "| tool | filter | CPU per datagram (µs) | × uncaptured | in the capturer (µs) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let base = |round: usize| {
        runs.iter()
            .find(|r| r.tool == Tool::Uncaptured && r.round == round)
            .map(|r| r.cpu_per_datagram)
    };
    let mut rows: Vec<(Tool, Option<usize>)> = vec![(Tool::Uncaptured, None)];
    for f in 0..FILTERS.len() {
        rows.push((Tool::Tcpdump, Some(f)));
        rows.push((Tool::Nettools, Some(f)));
    }
    for (tool, filter) in rows {
        let mine: Vec<&CaptureRun> = runs
            .iter()
            .filter(|r| r.tool == tool && filter.is_none_or(|f| r.filter == f))
            .collect();
        let us: Vec<f64> = mine.iter().map(|r| r.cpu_per_datagram * 1e6).collect();
        let ratio: Vec<f64> = mine
            .iter()
            .filter_map(|r| base(r.round).map(|b| r.cpu_per_datagram / b))
            .collect();
        let own: Vec<f64> = mine.iter().map(|r| r.tool_per_datagram * 1e6).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            tool.label(),
            filter.map_or("–", |f| FILTERS[f].0),
            fmt_spread(&us, 2),
            fmt_spread(&ratio, 3),
            if tool == Tool::Uncaptured {
                "–".to_string()
            } else {
                fmt_spread(&own, 3)
            },
        );
    }
    let m = |tool: Tool, f: usize| {
        median(
            &runs
                .iter()
                .filter(|r| r.tool == tool && r.filter == f)
                .filter_map(|r| base(r.round).map(|b| r.cpu_per_datagram / b))
                .collect::<Vec<_>>(),
        )
    };
    for (f, (label, _)) in FILTERS.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n{label}: nettools capture ×{:.3}, tcpdump ×{:.3} of uncaptured.",
            m(Tool::Nettools, f),
            m(Tool::Tcpdump, f)
        );
    }
    let _ = writeln!(out);
}

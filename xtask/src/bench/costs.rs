//! Section 2: what each nettools program costs, from the kernel's own run-time statistics, next
//! to the floor: an empty program attached the same way to the same hooks in the same run
//! ([`super::empty`]), so the same packets and drops run both.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddrV4, path::Path};

use anyhow::Result;

use super::{
    CONN_PORT, DROP_PORT, Plan, check_interrupted,
    empty::{self, Empty},
    kernel::{self, ProgStats, RunTimeStats},
    lab::Lab,
    load, progress, tracers,
};

/// The tc programs, as the kernel names them.
const INGRESS: &str = "nettools_ingress";
const EGRESS: &str = "nettools_egress";
const KFREE_SKB: &str = "kfree_skb";

/// Per-program statistics over one piece of work (nettools' programs and the empty ones).
type Delta = BTreeMap<String, ProgStats>;

pub struct Costs {
    /// Default probes on both pods: (workload, program) → delta.
    by_workload: Vec<(String, Delta)>,
    maps: Vec<(String, u64)>,
    /// (probe set, workload) → delta of the tc programs and the empty tc program.
    by_probes: Vec<(String, String, Delta)>,
    /// (where the drop happens) → delta of `kfree_skb` and the empty tracepoint program.
    drops: Vec<(String, Delta)>,
}

/// Probe sets whose tc cost per packet is compared with the empty program.
const PROBE_SETS: [(&str, &[&str]); 3] = [
    ("traffic counters only", &["--probes", "traffic"]),
    ("default probes", &[]),
    (
        "every probe (transit too)",
        &[
            "--probes",
            "drops,retransmits,neighbours,traffic,handshake,dns,icmp,transit",
        ],
    ),
];

fn delta(a: &Delta, b: &Delta) -> Delta {
    b.iter()
        .map(|(name, s1)| {
            let s0 = a.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                ProgStats {
                    run_cnt: s1.run_cnt.saturating_sub(s0.run_cnt),
                    run_time_ns: s1.run_time_ns.saturating_sub(s0.run_time_ns),
                },
            )
        })
        .collect()
}

/// nettools' programs (process `pid`) and the empty ones, by name.
fn snapshot(pid: i32, floor: &Empty) -> Result<Delta> {
    let mut s = kernel::prog_stats(pid)?;
    s.extend(floor.stats());
    Ok(s)
}

/// Runs `work` and returns what every program did meanwhile.
fn measure(pid: i32, floor: &Empty, work: &dyn Fn() -> Result<()>) -> Result<Delta> {
    let before = snapshot(pid, floor)?;
    work()?;
    Ok(delta(&before, &snapshot(pid, floor)?))
}

/// Nanoseconds per run of `program` in `d` (None when it did not run).
fn per_run(d: &Delta, program: &str) -> Option<f64> {
    let s = d.get(program)?;
    (s.run_cnt > 0).then(|| s.run_time_ns as f64 / s.run_cnt as f64)
}

pub fn program_costs(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Costs> {
    let stats = RunTimeStats::enable()?;
    let mut floor = Empty::default();
    floor.attach_tc(&[&lab.a.host_veth, &lab.b.host_veth])?;
    floor.attach_kfree_skb()?;
    floor.attach_raw_kfree_skb()?;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let udp = || load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true).map(|_| ());
    let tcp = || load::iperf(&lab.a, lab.b.ipv4, plan.tcp_s, false).map(|_| ());
    let storm = || {
        load::flood(
            &lab.a,
            SocketAddrV4::new(lab.b.ipv4, DROP_PORT),
            100_000,
            plan.storm,
            1,
        )
        .map(|_| ())
    };
    let connections =
        || load::connections(&lab.a, &lab.b, CONN_PORT, plan.connections / 5, &stop).map(|_| ());

    // Every program under four kinds of traffic, default probes on both pods.
    let running = tracers::start_nettools(bin, lab, &[], "costs")?;
    let pid = running.proc.pid;
    let maps = kernel::map_bytes(pid).unwrap_or_default();
    let workloads: [(&str, &dyn Fn() -> Result<()>); 4] = [
        ("TCP stream (iperf3)", &tcp),
        ("UDP 64 B at full speed", &udp),
        ("drop storm 100k/s (egress DROP)", &storm),
        ("short TCP connections", &connections),
    ];
    let mut by_workload = Vec::new();
    for (name, work) in workloads {
        check_interrupted()?;
        by_workload.push((name.to_string(), measure(pid, &floor, work)?));
    }
    running.stop()?;

    // The tc programs per packet by probe set, each above the empty program on the same packets.
    let mut by_probes = Vec::new();
    for (label, args) in PROBE_SETS {
        let running = tracers::start_nettools(bin, lab, args, "costs")?;
        let pid = running.proc.pid;
        for (workload, work) in [
            ("UDP 64 B", &udp as &dyn Fn() -> Result<()>),
            ("short TCP connections", &connections),
        ] {
            check_interrupted()?;
            let d = measure(pid, &floor, work)?;
            progress(&format!(
                "  {label:<26} {workload:<22} ingress {:>4.0} ns (empty {:>3.0}), egress {:>4.0} ns (empty {:>3.0})",
                per_run(&d, INGRESS).unwrap_or(f64::NAN),
                per_run(&d, empty::TC_INGRESS).unwrap_or(f64::NAN),
                per_run(&d, EGRESS).unwrap_or(f64::NAN),
                per_run(&d, empty::TC_EGRESS).unwrap_or(f64::NAN),
            ));
            by_probes.push((label.to_string(), workload.to_string(), d));
        }
        running.stop()?;
    }

    // A drop in a traced namespace, and one in a namespace nobody traces.
    let mut drops = Vec::new();
    for (label, namespaces) in [
        ("in a traced namespace", vec![&lab.a.netns, &lab.b.netns]),
        ("in an untraced namespace", vec![&lab.b.netns]),
    ] {
        check_interrupted()?;
        let running =
            tracers::start_nettools_on(bin, &namespaces, &["--probes", "drops"], "costs-drops")?;
        let d = measure(running.proc.pid, &floor, &storm)?;
        progress(&format!(
            "  drop {label:<26} kfree_skb {:>4.0} ns; empty raw tracepoint {:>4.0} ns, empty tracepoint {:>4.0} ns",
            per_run(&d, KFREE_SKB).unwrap_or(f64::NAN),
            per_run(&d, empty::RAW_TP_NAME).unwrap_or(f64::NAN),
            per_run(&d, empty::TP_NAME).unwrap_or(f64::NAN),
        ));
        drops.push((label.to_string(), d));
        running.stop()?;
    }
    drop(floor);
    drop(stats);
    Ok(Costs {
        by_workload,
        maps,
        by_probes,
        drops,
    })
}

/// "N ns × runs", or "not run".
fn cell(d: &Delta, program: &str) -> String {
    let s = d.get(program).copied().unwrap_or_default();
    match per_run(d, program) {
        Some(ns) => format!("{ns:.0} ns × {}", s.run_cnt),
        None => "not run".into(),
    }
}

/// "+N ns" of `program` above `floor` in the same run.
fn above(d: &Delta, program: &str, floor: &str) -> String {
    match (per_run(d, program), per_run(d, floor)) {
        (Some(p), Some(f)) => format!("{:+.0} ns", p - f),
        _ => "–".into(),
    }
}

pub fn write_costs(out: &mut String, c: &Costs) {
    let _ = writeln!(
        out,
        "## 2. Cost of each nettools program, from the kernel's own statistics\n\n\
         Run-time statistics switched on with `BPF_ENABLE_STATS` only for this phase (the kernel \
         turns them off when the bench's file descriptor closes, even if it is killed); each \
         figure is `run_time_ns / run_cnt` of one program over one piece of work. The kernel \
         times each run with two clock reads, which are included: that is why every figure is \
         shown next to the **floor**, `{tci}`, `{tce}` and `{tp}`, programs that return at once, attached \
         by the bench to the same hooks (tcx on both veths, `skb:kfree_skb`) for the whole phase, \
         so they run on exactly the same packets and drops. \"Above empty\" is what nettools' \
         work costs.\n",
        tci = empty::TC_INGRESS,
        tce = empty::TC_EGRESS,
        tp = empty::TP_NAME,
    );
    let _ = writeln!(
        out,
        "### Per packet on a veth, by probe set\n\n\
         One nettools run per probe set, both pods traced; per packet and direction. The goal \
         (issue 13): the default probes at most 60 ns above empty, the traffic counters at most \
         25 ns.\n"
    );
    let _ = writeln!(
        out,
        "| probes | traffic | `{INGRESS}` | floor | above empty | `{EGRESS}` | floor | above empty |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for (label, workload, d) in &c.by_probes {
        let _ = writeln!(
            out,
            "| {label} | {workload} | {} | {} | **{}** | {} | {} | **{}** |",
            cell(d, INGRESS),
            cell(d, empty::TC_INGRESS),
            above(d, INGRESS, empty::TC_INGRESS),
            cell(d, EGRESS),
            cell(d, empty::TC_EGRESS),
            above(d, EGRESS, empty::TC_EGRESS),
        );
    }
    let _ = writeln!(
        out,
        "\n### Per drop (`skb:kfree_skb`)\n\n\
         A storm of 100 k drops/s in pod a (UDP into a DROP rule in its OUTPUT chain), with \
         `nettools trace --probes drops` tracing a and b (a drop in a traced namespace: counted, \
         located, one event) and then tracing b only (a's drops are in a namespace nobody traces: \
         the program must leave them at once). nettools' drop probe is a raw tracepoint on \
         `kfree_skb`; its floor is an empty raw tracepoint program there. An empty program on the \
         plain tracepoint `skb:kfree_skb` (which first copies the arguments into a trace record) is \
         shown too: that is what a program on the tracepoint costs before it does anything. The \
         goal: at most 300 ns above empty traced, 50 ns untraced.\n"
    );
    let _ = writeln!(
        out,
        "| drop | `{KFREE_SKB}` (raw tracepoint) | `{}` (floor) | above empty | `{}` (`skb:kfree_skb`) | above it |",
        empty::RAW_TP_NAME,
        empty::TP_NAME
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (label, d) in &c.drops {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | **{}** | {} | {} |",
            cell(d, KFREE_SKB),
            cell(d, empty::RAW_TP_NAME),
            above(d, KFREE_SKB, empty::RAW_TP_NAME),
            cell(d, empty::TP_NAME),
            above(d, KFREE_SKB, empty::TP_NAME),
        );
    }
    let _ = writeln!(
        out,
        "\n### Every program under four kinds of traffic\n\n\
         Default probes, both pods traced. The tracepoint programs run for every event on the \
         host and filter by namespace in the kernel.\n"
    );
    let mut programs: Vec<String> = c
        .by_workload
        .iter()
        .flat_map(|(_, m)| m.keys().cloned())
        .collect();
    programs.sort();
    programs.dedup();
    let _ = write!(out, "| program |");
    for (w, _) in &c.by_workload {
        let _ = write!(out, " {w} |");
    }
    let _ = writeln!(out);
    let _ = write!(out, "|---|");
    for _ in &c.by_workload {
        let _ = write!(out, "---|");
    }
    let _ = writeln!(out);
    for p in &programs {
        let _ = write!(out, "| `{p}` |");
        for (_, m) in &c.by_workload {
            let _ = write!(out, " {} |", cell(m, p));
        }
        let _ = writeln!(out);
    }
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    let total: u64 = c.maps.iter().map(|(_, b)| b).sum();
    let largest: Vec<String> = c
        .maps
        .iter()
        .take(6)
        .map(|(n, b)| format!("`{n}` {:.1}", mib(*b)))
        .collect();
    let _ = writeln!(
        out,
        "\nKernel memory charged for nettools' maps (`memlock` of each, preallocated at load, fixed \
         size): {:.1} MiB in {} maps; the largest (MiB): {}.\n",
        mib(total),
        c.maps.len(),
        largest.join(", ")
    );
}

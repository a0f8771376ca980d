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
    /// Short TCP connections with the `connections` probe set: connections made, delta.
    per_connection: Option<(u32, Delta)>,
    /// A TCP stream with the `connections` probe set: its RTT sampler per received segment.
    per_segment: Option<Delta>,
}

/// The connections probe set's programs (per connection, per reset, per error, RTT samples).
const CONNECTION_PROGRAMS: &[&str] = &[
    "connections_set_state",
    "connections_tcp_probe",
    "connections_retransmit",
    "tcp_send_reset",
    "tcp_receive_reset",
    "inet_sk_error_report",
];

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
    d.get(program).and_then(ns_per_run)
}

/// ns per run of one program's statistics, None when it never ran.
fn ns_per_run(s: &ProgStats) -> Option<f64> {
    (s.run_cnt > 0).then(|| s.run_time_ns as f64 / s.run_cnt as f64)
}

pub fn program_costs(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Costs> {
    let stats = RunTimeStats::enable()?;
    let mut floor = Empty::default();
    floor.attach_tc(&[&lab.a.host_veth, &lab.b.host_veth])?;
    floor.attach_kfree_skb()?;
    floor.attach_raw_kfree_skb()?;
    // Kernels without the tracepoint only lose the per-connection floor.
    let set_state_floor = floor.attach_set_state();
    let tcp_probe_floor = floor.attach_tcp_probe();

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
    // Per connection: the connections probe set alone, both pods traced, over short TCP
    // connections (each: a handshake, the server's close, the client's; about ten state
    // changes on the two sockets and the listener).
    check_interrupted()?;
    let per_connection = match set_state_floor {
        Err(e) => {
            progress(&format!("  per connection: not measured ({e:#})"));
            None
        }
        Ok(()) => {
            let made = std::cell::Cell::new(0u32);
            let d = with_connections_probe(bin, lab, &floor, &|| {
                made.set(load::connections(
                    &lab.a,
                    &lab.b,
                    CONN_PORT,
                    plan.connections / 5,
                    &stop,
                )?);
                Ok(())
            })?;
            let per = connection_ns(&d, made.get());
            progress(&format!(
                "  per connection: {:.0} ns in the connections programs, {:.0} ns above the empty \
                 set_state program, {} connections",
                per.0,
                per.1,
                made.get()
            ));
            Some((made.get(), d))
        }
    };
    // Per received segment: the RTT sampler on tcp:tcp_probe over a TCP stream.
    check_interrupted()?;
    let per_segment = match tcp_probe_floor {
        Err(e) => {
            progress(&format!("  per segment: not measured ({e:#})"));
            None
        }
        Ok(()) => {
            let d = with_connections_probe(bin, lab, &floor, &tcp)?;
            progress(&format!(
                "  per segment: connections_tcp_probe {:.0} ns, empty tcp_probe {:.0} ns",
                program(&d, "connections_tcp_probe")
                    .and_then(|s| ns_per_run(&s))
                    .unwrap_or(f64::NAN),
                per_run(&d, empty::TCP_PROBE_NAME).unwrap_or(f64::NAN),
            ));
            Some(d)
        }
    };
    drop(floor);
    drop(stats);
    Ok(Costs {
        by_workload,
        maps,
        by_probes,
        drops,
        per_connection,
        per_segment,
    })
}

/// `work` measured under nettools tracing both pods with the connections probe set alone.
fn with_connections_probe(
    bin: &Path,
    lab: &Lab,
    floor: &Empty,
    work: &dyn Fn() -> Result<()>,
) -> Result<Delta> {
    let running =
        tracers::start_nettools(bin, lab, &["--probes", "connections"], "costs-connections")?;
    let d = measure(running.proc.pid, floor, work)?;
    running.stop()?;
    Ok(d)
}

/// A program's statistics by its full name, also where the kernel kept only the first 15
/// characters (BPF_OBJ_NAME_LEN) and bpftool did not restore the rest from BTF.
fn program(d: &Delta, name: &str) -> Option<ProgStats> {
    d.get(name).copied().or_else(|| {
        d.iter()
            .find(|(k, _)| k.len() == 15 && name.starts_with(k.as_str()))
            .map(|(_, s)| *s)
    })
}

/// Per connection: ns in the connections programs, and that above the empty program on
/// `inet_sock_set_state` run as often as nettools' program there.
fn connection_ns(d: &Delta, connections: u32) -> (f64, f64) {
    let n = f64::from(connections.max(1));
    let ours: u64 = CONNECTION_PROGRAMS
        .iter()
        .filter_map(|p| program(d, p))
        .map(|s| s.run_time_ns)
        .sum();
    let floor = d.get(empty::SET_STATE_NAME).copied().unwrap_or_default();
    (
        ours as f64 / n,
        (ours.saturating_sub(floor.run_time_ns)) as f64 / n,
    )
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
    if let Some((made, d)) = &c.per_connection {
        let (ns, above) = connection_ns(d, *made);
        let _ = writeln!(
            out,
            "\n### Per connection (`--probes connections`)\n\n\
             {made} short TCP connections from pod a to pod b (the server closes first), the \
             connections probe set alone tracing both pods. Its programs are on tracepoints, \
             none on the veths; their whole run time divided by the connections, and that above \
             `{floor}`, an empty program on `sock:inet_sock_set_state` that runs on the same \
             state changes. The issue's bound: under 1 % of a core, i.e. at most 10 ms of \
             programs a second.\n",
            floor = empty::SET_STATE_NAME,
        );
        let _ = writeln!(out, "| program | runs | per run |");
        let _ = writeln!(out, "|---|---|---|");
        for p in CONNECTION_PROGRAMS.iter().chain([&empty::SET_STATE_NAME]) {
            let line = match program(d, p).and_then(|s| Some((s.run_cnt, ns_per_run(&s)?))) {
                Some((runs, ns)) => format!("{runs} | {ns:.0} ns"),
                None => "0 | not run".to_string(),
            };
            let _ = writeln!(out, "| `{p}` | {line} |");
        }
        let rate = |per: f64| if per > 0.0 { 10e6 / per } else { f64::INFINITY };
        let _ = writeln!(
            out,
            "\n**{ns:.0} ns per connection** ({above:.0} ns above the empty program): 1 % of a \
             core holds {:.0} connections/s ({:.0} counting only the work above empty).\n",
            rate(ns),
            rate(above)
        );
    }
    if let Some(d) = &c.per_segment {
        let ours = program(d, "connections_tcp_probe").unwrap_or_default();
        let floor = d.get(empty::TCP_PROBE_NAME).copied().unwrap_or_default();
        let per = |s: &ProgStats| ns_per_run(s).unwrap_or(f64::NAN);
        let _ = writeln!(
            out,
            "### Per received TCP segment (the RTT sampler)\n\n\
             `connections_tcp_probe` runs on `tcp:tcp_probe`, i.e. for every TCP segment the \
             host receives (traced or not): the one per-packet part of the connections probe \
             set. Over a TCP stream (iperf3, pod a to b, both traced), next to `{}` on the same \
             tracepoint: {} ns × {} runs against {} ns × {}: **{:+.0} ns per segment**.\n",
            empty::TCP_PROBE_NAME,
            per(&ours).round(),
            ours.run_cnt,
            per(&floor).round(),
            floor.run_cnt,
            per(&ours) - per(&floor),
        );
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

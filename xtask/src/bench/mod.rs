//! `cargo xtask bench`: what tracing costs, measured in one run, side by side with the tools
//! people use today (tcpdump, bpftrace).
//!
//! Everything happens in a throwaway lab of two namespaces on a bridge (like two pods on a node):
//! 1. iperf3 TCP throughput and small-packet UDP between them, untraced, traced by nettools (every
//!    probe, both pods), under `tcpdump -w /dev/null` and under a counting bpftrace script, in
//!    interleaved rounds (the order rotates each round); each tracer's figure is a ratio to the
//!    untraced run of the same round, and the table shows the median and the spread of the rounds;
//! 2. the kernel's own run-time statistics of each nettools program (`BPF_ENABLE_STATS`), per
//!    workload: nanoseconds per invocation;
//! 3. a drop storm (UDP into an iptables DROP) at increasing rates: drops counted, events lost,
//!    events processed per second and the collector's CPU;
//! 4. the collector's memory: idle, after many short TCP connections, and over a longer run with
//!    more distinct dropped flows than nettools keeps;
//! 5. the time from `nettools trace` to probes attached, over every start of the bench.
//!
//! The results are printed as Markdown on stdout (progress on stderr), and kept in
//! `target/bench/results.md`. The machine is shared: the load around each phase is printed too.

mod kernel;
mod lab;
mod load;
mod proc;
mod tracers;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddrV4,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    kernel::{Machine, ProgStats, RunTimeStats},
    lab::Lab,
    proc::Proc,
    tracers::{Running, Tracer},
};

/// Packages the bench runs (beyond the lab's): the load generator, the peers it compares
/// against, and bpftool for the kernel's program statistics.
pub const PACKAGES: &[&str] = &["iperf3", "tcpdump", "bpftrace", "bpftool"];

/// UDP ports the client's firewall drops (the storm's target).
const DROP_PORT: u16 = 9000;
const DROP_PORTS: u16 = 10_000;
/// TCP port of the short-connection listener.
const CONN_PORT: u16 = 7000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// How much to measure.
struct Plan {
    rounds: usize,
    tcp_s: u32,
    udp_s: u32,
    storm_runs: usize,
    storm: Duration,
    /// (datagrams per second, 0 for as fast as possible; sending threads)
    rates: Vec<(u64, usize)>,
    connections: u32,
    dns_names: u32,
    long: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                tcp_s: 1,
                udp_s: 1,
                storm_runs: 1,
                storm: Duration::from_secs(1),
                rates: vec![(20_000, 1), (0, 1)],
                connections: 1_000,
                dns_names: 2_000,
                long: Duration::from_secs(6),
            }
        } else {
            Self {
                rounds: 6,
                tcp_s: 2,
                udp_s: 2,
                storm_runs: 3,
                storm: Duration::from_secs(2),
                rates: vec![(10_000, 1), (30_000, 1), (100_000, 1), (0, 1), (0, 2)],
                connections: 10_000,
                dns_names: 30_000,
                long: Duration::from_secs(60),
            }
        }
    }
}

/// The sections `--only` accepts.
pub const SECTIONS: [&str; 4] = ["throughput", "costs", "storm", "memory"];

pub fn run(nettools: &Path, quick: bool, only: Option<&str>) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let plan = Plan::new(quick);
    std::fs::create_dir_all(tracers::workdir())?;
    let machine = Machine::read();
    let busy_before = machine_busy(Duration::from_secs(2));
    let load_before = kernel::loadavg();
    let started = Instant::now();

    let lab = Lab::new().context("cannot build the bench lab")?;
    // The storm's firewall: the client pod's own egress rule (like a NetworkPolicy), so a drop
    // costs the sender little and the rates can go high enough to load the event pipeline.
    lab.a.run(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        &format!("{DROP_PORT}:{}", DROP_PORT + DROP_PORTS - 1),
        "-j",
        "DROP",
    ])?;
    let mut server_cmd = lab
        .b
        .command(&["iperf3", "-s", "-B", &lab.b.ipv4.to_string()]);
    server_cmd.stdout(Stdio::null());
    let mut iperf_server = Proc::spawn("iperf3 -s", &mut server_cmd)?;
    std::thread::sleep(Duration::from_millis(300));

    let mut out = String::new();
    let mut attach_all: Vec<f64> = Vec::new();

    let wanted = |section: &str| only.is_none_or(|o| o == section);
    let mut attach_drops = Vec::new();
    let mut attach_peers: Vec<(Tracer, f64)> = Vec::new();
    if wanted("throughput") {
        progress("throughput: interleaved rounds");
        let thr = throughput(nettools, &lab, &plan)?;
        write_throughput(&mut out, &thr, &plan);
        for r in &thr {
            if let Some(a) = r.attach_s {
                attach_peers.push((r.tracer, a));
            }
        }
    }
    if wanted("costs") {
        progress("per-program cost (kernel run-time statistics)");
        let costs = program_costs(nettools, &lab, &plan)?;
        write_costs(&mut out, &costs);
    }
    if wanted("storm") {
        progress("drop storm");
        let (storm, attach) = storm(nettools, &lab, &plan)?;
        attach_drops = attach;
        write_storm(&mut out, &storm, &plan);
    }
    if wanted("memory") {
        progress("collector memory");
        let mem = memory(nettools, &lab, &plan, &mut attach_all)?;
        write_memory(&mut out, &mem, &plan);
    }
    attach_all.extend(
        attach_peers
            .iter()
            .filter(|(t, _)| *t == Tracer::Nettools)
            .map(|(_, a)| *a),
    );
    write_attach(&mut out, &attach_all, &attach_drops, &attach_peers);

    drop(iperf_server.stop(libc::SIGTERM, Duration::from_secs(5)));
    drop(lab);
    let load_after = kernel::loadavg();
    let busy_after = machine_busy(Duration::from_secs(2));
    let mut head = String::new();
    let _ = writeln!(head, "## Machine and run\n");
    let _ = writeln!(
        head,
        "- CPU: {} × {} cores, {:.1} GiB memory; kernel {}",
        machine.cpu, machine.cores, machine.memory_gib, machine.kernel
    );
    let _ = writeln!(
        head,
        "- load average (1 min): {load_before:.2} before, {load_after:.2} after; machine busy \
         while the bench was idle: {busy_before:.0}% before, {busy_after:.0}% after (of all cores; \
         other users of this shared machine)"
    );
    let _ = writeln!(
        head,
        "- bench: {}{} in {:.0} s; `kernel.bpf_stats_enabled` after the bench: {}\n",
        if quick { "--quick" } else { "full" },
        only.map(|o| format!(", only {o}")).unwrap_or_default(),
        started.elapsed().as_secs_f64(),
        kernel::stats_sysctl()
    );
    let text = head + &out;
    print!("{text}");
    let saved = tracers::workdir().join("results.md");
    std::fs::write(&saved, &text).with_context(|| format!("cannot write {}", saved.display()))?;
    progress(&format!("results kept in {}", saved.display()));
    Ok(())
}

fn progress(what: &str) {
    eprintln!("xtask bench: {what}");
}

/// How busy the machine's CPUs are over `window` while the bench does nothing (percent).
fn machine_busy(window: Duration) -> f64 {
    let (b0, t0) = kernel::cpu_jiffies();
    std::thread::sleep(window);
    let (b1, t1) = kernel::cpu_jiffies();
    if t1 <= t0 {
        return f64::NAN;
    }
    100.0 * (b1 - b0) as f64 / (t1 - t0) as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// "median (min–max)" with `decimals`, or just the median for one sample.
fn fmt_spread(v: &[f64], decimals: usize) -> String {
    let m = median(v);
    if v.len() < 2 {
        return format!("{m:.decimals$}");
    }
    let (lo, hi) = spread(v);
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput

struct ThroughputRun {
    tracer: Tracer,
    round: usize,
    tcp: load::Iperf,
    udp: load::Iperf,
    /// Tracer's own CPU while the traffic ran, seconds (userspace process, not the BPF programs).
    tracer_cpu_s: f64,
    traffic_s: f64,
    events_lost: Option<u64>,
    load: f64,
    /// From start to attached (None when untraced).
    attach_s: Option<f64>,
}

fn throughput(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Vec<ThroughputRun>> {
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        for i in 0..Tracer::ALL.len() {
            check_interrupted()?;
            let tracer = Tracer::ALL[(i + round) % Tracer::ALL.len()];
            let load = kernel::loadavg();
            let running = tracers::start(tracer, bin, lab)?;
            let attach_s = running.as_ref().map(|r| r.attach.as_secs_f64());
            let cpu0 = running.as_ref().map_or(Ok(0.0), |r| r.proc.cpu_s())?;
            let t0 = Instant::now();
            let tcp = load::iperf(&lab.a, lab.b.ipv4, plan.tcp_s, false)?;
            let udp = load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true)?;
            let traffic_s = t0.elapsed().as_secs_f64();
            let cpu1 = running.as_ref().map_or(Ok(0.0), |r| r.proc.cpu_s())?;
            let mut events_lost = None;
            if let Some(r) = running {
                let stopped = r.stop()?;
                if tracer == Tracer::Nettools {
                    events_lost = tracers::parse_report(&stopped.report).0;
                }
            }
            progress(&format!(
                "  round {} {:<24} TCP {:6.2} Gbit/s {:5.0} ms CPU/GB   UDP {:4.0} kpps received {:5.1} us CPU/datagram",
                round + 1,
                tracer.label(),
                tcp.bits_per_s / 1e9,
                tcp_cpu_per_gb(&tcp) * 1e3,
                udp.bits_per_s / 8.0 / f64::from(load::UDP_LEN) / 1e3,
                udp_cpu_per_datagram(&udp) * 1e6,
            ));
            runs.push(ThroughputRun {
                tracer,
                round,
                tcp,
                udp,
                tracer_cpu_s: cpu1 - cpu0,
                traffic_s,
                events_lost,
                load,
                attach_s,
            });
        }
    }
    Ok(runs)
}

/// CPU seconds of both iperf3 ends per GB received.
fn tcp_cpu_per_gb(r: &load::Iperf) -> f64 {
    r.cpu_s / (r.bytes / 1e9)
}

/// CPU seconds of both iperf3 ends per datagram sent.
fn udp_cpu_per_datagram(r: &load::Iperf) -> f64 {
    r.cpu_s / r.packets_sent
}

/// One figure of a tracer: its values and, per round, its ratio to the untraced run.
fn figure(
    runs: &[ThroughputRun],
    tracer: Tracer,
    value: impl Fn(&ThroughputRun) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let mine: Vec<&ThroughputRun> = runs.iter().filter(|r| r.tracer == tracer).collect();
    let values = mine.iter().map(|r| value(r)).collect();
    let ratios = mine
        .iter()
        .filter_map(|r| {
            runs.iter()
                .find(|b| b.round == r.round && b.tracer == Tracer::Untraced)
                .map(|b| value(r) / value(b))
        })
        .collect();
    (values, ratios)
}

fn write_throughput(out: &mut String, runs: &[ThroughputRun], plan: &Plan) {
    let kpps = |bps: f64| bps / 8.0 / f64::from(load::UDP_LEN) / 1e3;
    let _ = writeln!(
        out,
        "## 1. Throughput and CPU between two pods\n\n\
         iperf3 from namespace a to b across the bridge: TCP for {} s, then UDP with {}-byte \
         datagrams at full speed for {} s, in {} interleaved round(s) (the order of the tracers \
         rotates each round). Each figure is the median over the rounds (min–max in brackets); \
         each ratio is taken against the untraced run of the same round, and the median of \
         those ratios is shown. \"UDP received\" is what reached the server's socket (the sender \
         outruns the receiver).\n",
        plan.tcp_s,
        load::UDP_LEN,
        plan.udp_s,
        plan.rounds
    );
    let _ = writeln!(
        out,
        "| tracer | TCP Gbit/s | ratio | UDP received kpps | ratio | UDP sent kpps | ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let ratio = |tracer: Tracer, r: &[f64]| {
        if tracer == Tracer::Untraced {
            "1".to_string()
        } else {
            fmt_spread(r, 2)
        }
    };
    for tracer in Tracer::ALL {
        let (tcp, tcp_r) = figure(runs, tracer, |r| r.tcp.bits_per_s / 1e9);
        let (udp, udp_r) = figure(runs, tracer, |r| kpps(r.udp.bits_per_s));
        let (sent, sent_r) = figure(runs, tracer, |r| kpps(r.udp.sent_bits_per_s));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            tracer.label(),
            fmt_spread(&tcp, 2),
            ratio(tracer, &tcp_r),
            fmt_spread(&udp, 0),
            ratio(tracer, &udp_r),
            fmt_spread(&sent, 0),
            ratio(tracer, &sent_r),
        );
    }
    let _ = writeln!(
        out,
        "\nThe same runs as CPU per unit of traffic: user + system time of both iperf3 processes \
         (iperf3's own accounting), which includes the kernel's packet path run on their behalf \
         (veth, bridge, netfilter, the tc programs and tracepoints), divided by the bytes \
         received (TCP) or the datagrams sent (UDP). It is less sensitive than throughput to \
         other users of the machine taking a core, since a stolen core slows both the traffic and \
         the CPU time it is charged. \"Tracer process\" is the tracer's own userspace CPU while \
         the traffic ran.\n"
    );
    let _ = writeln!(
        out,
        "| tracer | TCP: CPU ms per GB | ratio | UDP: CPU µs per datagram | ratio | tracer process CPU (% of a core) | events lost (nettools, per round) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for tracer in Tracer::ALL {
        let (tcp, tcp_r) = figure(runs, tracer, |r| tcp_cpu_per_gb(&r.tcp) * 1e3);
        let (udp, udp_r) = figure(runs, tracer, |r| udp_cpu_per_datagram(&r.udp) * 1e6);
        let (cpu, _) = figure(runs, tracer, |r| 100.0 * r.tracer_cpu_s / r.traffic_s);
        let lost: Vec<String> = runs
            .iter()
            .filter(|r| r.tracer == tracer)
            .filter_map(|r| r.events_lost.map(|l| l.to_string()))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            tracer.label(),
            fmt_spread(&tcp, 0),
            ratio(tracer, &tcp_r),
            fmt_spread(&udp, 2),
            ratio(tracer, &udp_r),
            if tracer == Tracer::Untraced {
                "–".into()
            } else {
                fmt_spread(&cpu, 1)
            },
            if lost.is_empty() {
                "–".into()
            } else {
                lost.join(", ")
            },
        );
    }
    let loads: Vec<f64> = runs.iter().map(|r| r.load).collect();
    let _ = writeln!(
        out,
        "\nLoad average (1 min) at the start of each run: {}.\n",
        fmt_spread(&loads, 2)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Per-program cost

struct Costs {
    /// (workload, program) → delta.
    by_workload: Vec<(String, BTreeMap<String, ProgStats>)>,
    maps: Vec<(String, u64)>,
    /// (probe set, program) → delta, for the tc programs under the UDP workload.
    by_probes: Vec<(String, BTreeMap<String, ProgStats>)>,
}

/// Probe sets whose tc cost per packet is compared: what each latency feature adds.
const PROBE_SETS: [(&str, &[&str]); 4] = [
    ("every probe (default)", &[]),
    (
        "every probe, --transit-sample 64",
        &["--transit-sample", "64"],
    ),
    (
        "no latency probes (drops, retransmits, neighbours, traffic)",
        &["--probes", "drops,retransmits,neighbours,traffic"],
    ),
    ("traffic only", &["--probes", "traffic"]),
];

fn delta(
    a: &BTreeMap<String, ProgStats>,
    b: &BTreeMap<String, ProgStats>,
) -> BTreeMap<String, ProgStats> {
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

fn program_costs(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Costs> {
    let running = tracers::start_nettools(bin, lab, &[], "costs")?;
    let pid = running.proc.pid;
    let stats = RunTimeStats::enable()?;
    let maps = kernel::map_bytes(pid).unwrap_or_default();
    let mut by_workload = Vec::new();
    let stop = AtomicBool::new(false);
    let workloads: [(&str, &dyn Fn() -> Result<()>); 4] = [
        ("TCP stream (iperf3)", &|| {
            load::iperf(&lab.a, lab.b.ipv4, plan.tcp_s, false).map(|_| ())
        }),
        ("UDP 64 B at full speed", &|| {
            load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true).map(|_| ())
        }),
        ("drop storm 100k/s (egress DROP)", &|| {
            load::flood(
                &lab.a,
                SocketAddrV4::new(lab.b.ipv4, DROP_PORT),
                100_000,
                plan.storm,
                1,
            )
            .map(|_| ())
        }),
        ("short TCP connections", &|| {
            load::connections(&lab.a, &lab.b, CONN_PORT, plan.connections / 5, &stop).map(|_| ())
        }),
    ];
    for (name, work) in workloads {
        check_interrupted()?;
        let before = kernel::prog_stats(pid)?;
        work()?;
        let after = kernel::prog_stats(pid)?;
        by_workload.push((name.to_string(), delta(&before, &after)));
    }
    running.stop()?;

    // What each part of the tc programs costs per packet, under the same UDP workload.
    let mut by_probes = Vec::new();
    for (label, args) in PROBE_SETS {
        check_interrupted()?;
        let running = tracers::start_nettools(bin, lab, args, "costs")?;
        let before = kernel::prog_stats(running.proc.pid)?;
        load::iperf(&lab.a, lab.b.ipv4, plan.udp_s, true)?;
        let after = kernel::prog_stats(running.proc.pid)?;
        running.stop()?;
        by_probes.push((label.to_string(), delta(&before, &after)));
    }
    drop(stats);
    Ok(Costs {
        by_workload,
        maps,
        by_probes,
    })
}

fn write_costs(out: &mut String, c: &Costs) {
    let _ = writeln!(
        out,
        "## 2. Cost of each nettools program, from the kernel's own statistics\n\n\
         nettools tracing both pods with every probe; run-time statistics switched on with \
         `BPF_ENABLE_STATS` only for this phase (the kernel turns them off when the bench's file \
         descriptor closes, even if it is killed). Per workload: invocations and nanoseconds per \
         invocation (`run_time_ns / run_cnt`, counted by the kernel around each run, so it includes \
         the statistics' own two clock reads). The tc programs are attached to both veths; the \
         tracepoint programs run for every event on the host and filter by namespace in the \
         kernel.\n"
    );
    let programs: Vec<String> = {
        let mut p: Vec<String> = c
            .by_workload
            .iter()
            .flat_map(|(_, m)| m.keys().cloned())
            .collect();
        p.sort();
        p.dedup();
        p
    };
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
            let s = m.get(p).copied().unwrap_or_default();
            if s.run_cnt == 0 {
                let _ = write!(out, " not run |");
            } else {
                let _ = write!(
                    out,
                    " {:.0} ns × {} |",
                    s.run_time_ns as f64 / s.run_cnt as f64,
                    s.run_cnt
                );
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "\nThe tc programs per packet by probe set (UDP 64 B at full speed, one nettools run per \
         set): the latency probes parse each packet's headers and look it up in their pairing \
         maps; transit also inserts every packet leaving a pod into an LRU map and emits one \
         event per packet entering another.\n"
    );
    let _ = writeln!(out, "| probes | `nettools_ingress` | `nettools_egress` |");
    let _ = writeln!(out, "|---|---|---|");
    for (label, m) in &c.by_probes {
        let cell = |p: &str| {
            let s = m.get(p).copied().unwrap_or_default();
            if s.run_cnt == 0 {
                "not run".to_string()
            } else {
                format!(
                    "{:.0} ns × {}",
                    s.run_time_ns as f64 / s.run_cnt as f64,
                    s.run_cnt
                )
            }
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            cell("nettools_ingress"),
            cell("nettools_egress")
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

// ---------------------------------------------------------------------------------------------
// 3. Drop storm

struct StormRun {
    rate: (u64, usize),
    sent_pps: f64,
    drops: u64,
    lost: u64,
    seconds: f64,
    collector_cpu: f64,
}

fn storm(bin: &Path, lab: &Lab, plan: &Plan) -> Result<(Vec<StormRun>, Vec<f64>)> {
    let mut runs = Vec::new();
    let mut attach = Vec::new();
    let dst = SocketAddrV4::new(lab.b.ipv4, DROP_PORT);
    for run in 0..plan.storm_runs {
        for &rate in &plan.rates {
            check_interrupted()?;
            let running = tracers::start_nettools(bin, lab, &["--probes", "drops"], "storm")?;
            attach.push(running.attach.as_secs_f64());
            let cpu0 = running.proc.cpu_s()?;
            let t0 = Instant::now();
            let sent = flood_threads(lab, dst, rate, plan.storm)?;
            let seconds = t0.elapsed().as_secs_f64();
            // Let the collector catch up with what is already in the ring buffer.
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = running.proc.cpu_s()?;
            let stopped = running.stop()?;
            let (lost, drops) = tracers::parse_report(&stopped.report);
            let r = StormRun {
                rate,
                sent_pps: sent as f64 / seconds,
                drops,
                lost: lost.unwrap_or(0),
                seconds,
                collector_cpu: 100.0 * (cpu1 - cpu0) / (seconds + 0.3),
            };
            progress(&format!(
                "  run {} rate {:>22}: sent {:>7.0}/s, drops {}, lost {}, collector {:.0}% of a core",
                run + 1,
                rate_label(rate),
                r.sent_pps,
                r.drops,
                r.lost,
                r.collector_cpu
            ));
            runs.push(r);
        }
    }
    Ok((runs, attach))
}

/// A flood from `threads` sending threads at once.
fn flood_threads(
    lab: &Lab,
    dst: SocketAddrV4,
    (rate, threads): (u64, usize),
    duration: Duration,
) -> Result<u64> {
    let per_thread = rate / threads.max(1) as u64;
    std::thread::scope(|scope| {
        let senders: Vec<_> = (0..threads.max(1))
            .map(|_| scope.spawn(|| load::flood(&lab.a, dst, per_thread, duration, 1)))
            .collect();
        let mut sent = 0;
        for s in senders {
            sent += s
                .join()
                .map_err(|_| anyhow::anyhow!("a sending thread panicked"))??;
        }
        Ok(sent)
    })
}

fn rate_label((rate, threads): (u64, usize)) -> String {
    match (rate, threads) {
        (0, 1) => "max, 1 sending thread".into(),
        (0, t) => format!("max, {t} sending threads"),
        (r, _) => format!("{r}/s"),
    }
}

fn write_storm(out: &mut String, runs: &[StormRun], plan: &Plan) {
    let _ = writeln!(
        out,
        "## 3. Drop storm: the event pipeline\n\n\
         UDP datagrams from a to b into an iptables DROP in a's OUTPUT chain (an egress rule \
         of the pod, so a drop costs the sender little), paced at each rate for {:.0} s \
         (\"max\": unpaced; with two sending threads both cores are busy sending, and the \
         collector has to find time between them), with `nettools trace --probes drops` (one event \
         per drop, default 4 MiB ring buffer, table report); {} run(s) per rate, interleaved, \
         medians shown. Drops are counted exactly in the kernel; an event that does not fit in \
         the ring buffer is counted as lost; events processed = drops − lost. Collector CPU is \
         the nettools process's user + system time over the storm.\n",
        plan.storm.as_secs_f64(),
        plan.storm_runs
    );
    let _ = writeln!(
        out,
        "| offered rate | sent (pkt/s) | drops counted (/s) | events lost | events processed (/s) | collector CPU (% of a core) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &rate in &plan.rates {
        let mine: Vec<&StormRun> = runs.iter().filter(|r| r.rate == rate).collect();
        let sent: Vec<f64> = mine.iter().map(|r| r.sent_pps).collect();
        let drops: Vec<f64> = mine.iter().map(|r| r.drops as f64 / r.seconds).collect();
        let lost_pct: Vec<f64> = mine
            .iter()
            .map(|r| 100.0 * r.lost as f64 / (r.drops.max(1)) as f64)
            .collect();
        let processed: Vec<f64> = mine
            .iter()
            .map(|r| r.drops.saturating_sub(r.lost) as f64 / r.seconds)
            .collect();
        let cpu: Vec<f64> = mine.iter().map(|r| r.collector_cpu).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}% | {} | {} |",
            rate_label(rate),
            fmt_spread(&sent, 0),
            fmt_spread(&drops, 0),
            fmt_spread(&lost_pct, 1),
            fmt_spread(&processed, 0),
            fmt_spread(&cpu, 0),
        );
    }
    let _ = writeln!(out);
}

// ---------------------------------------------------------------------------------------------
// 4. Memory

struct Memory {
    idle_kib: u64,
    after_connections_kib: u64,
    connections: u32,
    connections_s: f64,
    dns_names: u32,
    dns_s: f64,
    after_dns_kib: u64,
    /// (seconds into the long run, RSS KiB)
    long: Vec<(f64, u64)>,
    long_connections: u32,
    long_drops: u64,
    long_names: u32,
    peak_kib: u64,
}

fn memory(bin: &Path, lab: &Lab, plan: &Plan, attach: &mut Vec<f64>) -> Result<Memory> {
    // A DNS server in b answering NXDOMAIN for the whole phase.
    let dns_stop = AtomicBool::new(false);
    let dns_ready = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<Memory> {
        let server = scope.spawn(|| load::nxdomain_server(&lab.b, &dns_stop, &dns_ready));
        while !dns_ready.load(Ordering::SeqCst) && !server.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let result = memory_with_dns(bin, lab, plan, attach);
        dns_stop.store(true, Ordering::SeqCst);
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the DNS server thread panicked"))??;
        result
    })
}

fn memory_with_dns(bin: &Path, lab: &Lab, plan: &Plan, attach: &mut Vec<f64>) -> Result<Memory> {
    let running = tracers::start_nettools(bin, lab, &[], "memory")?;
    attach.push(running.attach.as_secs_f64());
    std::thread::sleep(Duration::from_secs(1));
    let rss = |r: &Running| r.proc.status_kib("VmRSS").unwrap_or(0);
    let idle_kib = rss(&running);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let made = load::connections(&lab.a, &lab.b, CONN_PORT, plan.connections, &stop)?;
    let connections_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after_connections_kib = rss(&running);
    progress(&format!(
        "  {made} connections in {connections_s:.1} s: RSS {idle_kib} KiB idle, {after_connections_kib} KiB after"
    ));

    // Names that fail, each one different, as from a bad search path or a DGA.
    check_interrupted()?;
    let t0 = Instant::now();
    let answered = load::dns_queries(&lab.a, lab.b.ipv4, 0, plan.dns_names)?;
    let dns_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let after_dns_kib = rss(&running);
    progress(&format!(
        "  {answered} failing DNS names in {dns_s:.1} s: RSS {after_dns_kib} KiB"
    ));

    // The long run: connections, drops to ever new ports and new failing names (more distinct
    // flows and names than nettools keeps), sampled at regular moments.
    let mut long = Vec::new();
    let mut long_connections = 0;
    let mut long_drops = 0;
    let mut long_names = 0;
    let samples = 6;
    let slice = plan.long / samples;
    let started = Instant::now();
    for _ in 0..samples {
        check_interrupted()?;
        let t = Instant::now();
        long_drops += load::flood(
            &lab.a,
            SocketAddrV4::new(lab.b.ipv4, DROP_PORT),
            20_000,
            slice / 3,
            DROP_PORTS,
        )?;
        long_names += load::dns_queries(
            &lab.a,
            lab.b.ipv4,
            plan.dns_names + long_names,
            plan.dns_names / 6,
        )?;
        while t.elapsed() < slice {
            long_connections += load::connections(&lab.a, &lab.b, CONN_PORT, 200, &stop)?;
        }
        long.push((started.elapsed().as_secs_f64(), rss(&running)));
    }
    let stopped = running.stop()?;
    progress(&format!(
        "  long run: {long_connections} connections, {long_drops} drops, {long_names} names; peak RSS {} KiB",
        stopped.usage.max_rss_kib
    ));
    Ok(Memory {
        idle_kib,
        after_connections_kib,
        connections: made,
        connections_s,
        dns_names: answered,
        dns_s,
        after_dns_kib,
        long,
        long_connections,
        long_drops,
        long_names,
        peak_kib: stopped.usage.max_rss_kib,
    })
}

fn write_memory(out: &mut String, m: &Memory, plan: &Plan) {
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(
        out,
        "## 4. Collector memory\n\n\
         nettools tracing both pods with every probe (resident set of the nettools process; the \
         BPF maps are kernel memory, see section 2).\n"
    );
    let _ = writeln!(out, "| moment | RSS (MiB) |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(out, "| attached, idle 1 s | {:.1} |", mib(m.idle_kib));
    let _ = writeln!(
        out,
        "| after {} short TCP connections ({:.1} s) | {:.1} |",
        m.connections,
        m.connections_s,
        mib(m.after_connections_kib)
    );
    let _ = writeln!(
        out,
        "| after {} distinct DNS names answered NXDOMAIN ({:.1} s) | {:.1} |",
        m.dns_names,
        m.dns_s,
        mib(m.after_dns_kib)
    );
    for (t, k) in &m.long {
        let _ = writeln!(out, "| long run, {t:.0} s in | {:.1} |", mib(*k));
    }
    let _ = writeln!(
        out,
        "| peak over the whole trace (`ru_maxrss`) | {:.1} |",
        mib(m.peak_kib)
    );
    let _ = writeln!(
        out,
        "\nThe long run ({:.0} s): {} more connections, {} drops at 20k/s to {} different \
         ports and {} more failing names, i.e. more distinct dropped flows and names than \
         nettools keeps.\n",
        plan.long.as_secs_f64(),
        m.long_connections,
        m.long_drops,
        DROP_PORTS,
        m.long_names
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Attach time

fn write_attach(out: &mut String, all: &[f64], drops: &[f64], peers: &[(Tracer, f64)]) {
    let ms = |v: &[f64]| v.iter().map(|s| s * 1000.0).collect::<Vec<f64>>();
    let _ = writeln!(
        out,
        "## 5. From start to probes attached\n\n\
         From spawning the process to the line it prints once its probes are attached: nettools' \
         \"nettools: tracing\", tcpdump's \"listening on\", the bpftrace script's first interval-probe output (it \
         is attached last); \
         over every start in this bench.\n"
    );
    let _ = writeln!(out, "| tracer | starts | ms, median (min–max) |");
    let _ = writeln!(out, "|---|---|---|");
    let peer = |tracer: Tracer| -> Vec<f64> {
        peers
            .iter()
            .filter(|(t, _)| *t == tracer)
            .map(|(_, a)| *a)
            .collect()
    };
    let rows = [
        ("nettools, all probes (2 namespaces, 2 veths)", all.to_vec()),
        ("nettools, drops only", drops.to_vec()),
        (Tracer::Tcpdump.label(), peer(Tracer::Tcpdump)),
        (Tracer::Bpftrace.label(), peer(Tracer::Bpftrace)),
    ];
    for (label, v) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(out, "| {label} | {} | {} |", v.len(), fmt_spread(&ms(v), 0));
    }
    let _ = writeln!(out);
}

/// Fails with one sentence when a tool the bench runs is missing.
pub fn check_tools() -> Result<()> {
    for tool in ["iperf3", "tcpdump", "bpftrace", "bpftool", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            bail!("{tool} is not installed (cargo xtask bench installs it with apt)");
        }
    }
    Ok(())
}

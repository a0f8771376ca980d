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
//!    and `nettools capture` next to tcpdump on the same veth and traffic (capture.rs);
//! 3. a drop storm (UDP into an iptables DROP) at increasing rates: drops counted, events lost,
//!    events processed per second and the collector's CPU;
//! 4. the collector's memory: idle, after many short TCP connections, and over a longer run with
//!    more distinct dropped flows than nettools keeps;
//! 5. the time from `nettools trace` to probes attached, over every start of the bench.
//!
//! The results are printed as Markdown on stdout (progress on stderr), and kept in
//! `target/bench/results.md`. The machine is shared: the load around each phase is printed too.

mod attach;
mod capture;
mod costs;
mod empty;
mod kernel;
mod lab;
mod load;
mod memory;
mod pipeline;
mod proc;
mod scale;
mod stats;
mod storm;
mod throughput;
mod tracers;

use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{kernel::Machine, lab::Lab, proc::Proc, tracers::Tracer};

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
    /// Pods beside a and b in the scale section, and how long they churn.
    scale_pods: usize,
    churn: Duration,
    /// Events per second the synthetic source is paced to (0: as fast as it runs).
    pipeline_rates: Vec<u64>,
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
                scale_pods: 40,
                churn: Duration::from_secs(10),
                pipeline_rates: vec![1_000_000, 0],
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
                scale_pods: 248,
                churn: Duration::from_secs(180),
                pipeline_rates: vec![500_000, 1_000_000, 2_000_000, 4_000_000, 0],
            }
        }
    }
}

/// The sections `--only` accepts.
pub const SECTIONS: [&str; 7] = [
    "throughput",
    "costs",
    "capture",
    "storm",
    "memory",
    "scale",
    "pipeline",
];

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
        let thr = throughput::throughput(nettools, &lab, &plan)?;
        throughput::write_throughput(&mut out, &thr, &plan);
        for r in &thr {
            if let Some(a) = r.attach_s {
                attach_peers.push((r.tracer, a));
            }
        }
    }
    if wanted("costs") {
        progress("per-program cost (kernel run-time statistics)");
        let costs = costs::program_costs(nettools, &lab, &plan)?;
        costs::write_costs(&mut out, &costs);
    }
    if wanted("capture") {
        progress("nettools capture next to tcpdump: interleaved rounds");
        let runs = capture::capture(nettools, &lab, &plan)?;
        capture::write_capture(&mut out, &runs);
    }
    if wanted("storm") {
        progress("drop storm");
        let (storm, attach) = storm::storm(nettools, &lab, &plan)?;
        attach_drops = attach;
        storm::write_storm(&mut out, &storm, &plan);
    }
    if wanted("memory") {
        progress("collector memory");
        let mem = memory::memory(nettools, &lab, &plan, &mut attach_all)?;
        memory::write_memory(&mut out, &mem, &plan);
    }
    if wanted("scale") {
        progress("a node's worth of pods");
        let scale = scale::scale(nettools, &lab, &plan)?;
        scale::write_scale(&mut out, &scale);
    }
    if wanted("pipeline") {
        progress("the event pipeline at the kernel's top speed");
        let p = pipeline::pipeline(nettools, &lab, &plan)?;
        pipeline::write_pipeline(&mut out, &p, &plan);
    }
    attach_all.extend(
        attach_peers
            .iter()
            .filter(|(t, _)| *t == Tracer::Nettools)
            .map(|(_, a)| *a),
    );
    attach::write_attach(&mut out, &attach_all, &attach_drops, &attach_peers);

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

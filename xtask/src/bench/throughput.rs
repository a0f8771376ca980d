//! Section 1: throughput and CPU per unit of traffic between two pods, under each tracer.

use std::{fmt::Write as _, path::Path, time::Instant};

use anyhow::Result;

use super::{
    Plan, check_interrupted, kernel,
    lab::Lab,
    load, progress,
    stats::fmt_spread,
    tracers::{self, Tracer},
};

pub struct ThroughputRun {
    pub tracer: Tracer,
    round: usize,
    tcp: load::Iperf,
    udp: load::Iperf,
    /// Tracer's own CPU while the traffic ran, seconds (userspace process, not the BPF programs).
    tracer_cpu_s: f64,
    traffic_s: f64,
    events_lost: Option<u64>,
    load: f64,
    /// From start to attached (None when untraced).
    pub attach_s: Option<f64>,
}

pub fn throughput(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Vec<ThroughputRun>> {
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

pub fn write_throughput(out: &mut String, runs: &[ThroughputRun], plan: &Plan) {
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

//! Section 3: the drop storm, the event pipeline under real drops.

use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    DROP_PORT, Plan, check_interrupted, lab::Lab, load, progress, stats::fmt_spread, tracers,
};

pub struct StormRun {
    rate: (u64, usize),
    sent_pps: f64,
    drops: u64,
    lost: u64,
    seconds: f64,
    collector_cpu: f64,
}

pub fn storm(bin: &Path, lab: &Lab, plan: &Plan) -> Result<(Vec<StormRun>, Vec<f64>)> {
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

pub fn write_storm(out: &mut String, runs: &[StormRun], plan: &Plan) {
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

//! Section 6: the event pipeline beyond what real drops can reach here. This machine makes at
//! most a few hundred thousand real drops a second; the synthetic source (a tc program in
//! nettools' own object that `nettools trace` loads, never attaches, when
//! `NETTOOLS_BENCH_SYNTHETIC_NETNS` names a namespace) sends drop-shaped events into the same
//! ring buffer at the kernel's top speed, run by `BPF_PROG_TEST_RUN` with `repeat` from a bench
//! thread, paced to each rate. Events that do not fit are counted as lost by the same code a real
//! drop goes through. Then criterion's micro-benchmark of decoding and aggregating, on one core.

use std::{
    fmt::Write as _,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Plan, check_interrupted,
    kernel::{bpf, bpf_call},
    lab::{Lab, netns_inode},
    progress,
    stats::fmt_spread,
    tracers,
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

pub struct PipelineRun {
    /// Events per second asked for (0: as fast as the kernel runs the program).
    rate: u64,
    emitted: u64,
    seconds: f64,
    lost: u64,
    collector_cpu: f64,
    /// Nanoseconds per run of the synthetic program, as the kernel timed it.
    ns_per_event: f64,
}

pub struct Pipeline {
    runs: Vec<PipelineRun>,
    /// criterion's throughput of decode + aggregate (events per second), by benchmark.
    micro: Vec<(String, f64)>,
}

/// A file descriptor for the program with this id.
fn prog_fd(id: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).with_context(|| format!("cannot open BPF program {id}"))
}

/// Runs the program `repeat` times on a dummy frame; returns the kernel's ns per run.
fn test_run(fd: &OwnedFd, frame: &[u8], repeat: u32) -> Result<u32> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    bpf_call(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN failed")?;
    Ok(u32::from_ne_bytes([attr[36], attr[37], attr[38], attr[39]]))
}

pub fn pipeline(bin: &Path, lab: &Lab, plan: &Plan) -> Result<Pipeline> {
    let inode = netns_inode(&lab.a.netns)?.to_string();
    let frame = [0u8; 64];
    let mut runs = Vec::new();
    for run in 0..plan.storm_runs {
        for &rate in &plan.pipeline_rates {
            check_interrupted()?;
            let running = tracers::start_nettools_env(
                bin,
                &[&lab.a.netns],
                &["--probes", "drops"],
                "pipeline",
                &[("NETTOOLS_BENCH_SYNTHETIC_NETNS", &inode)],
            )?;
            let id: Option<u32> = running
                .proc
                .stderr_text()
                .lines()
                .find_map(|l| l.split("BPF program id ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok());
            let Some(id) = id else {
                // A build from before the synthetic source (--nettools PATH).
                running.stop()?;
                progress("  this nettools has no synthetic event source: skipped");
                return Ok(Pipeline {
                    runs: Vec::new(),
                    micro: Vec::new(),
                });
            };
            let fd = prog_fd(id)?;
            let cpu0 = running.proc.cpu_s()?;
            let started = Instant::now();
            let mut emitted: u64 = 0;
            let mut ns_sum = 0.0;
            let mut calls = 0u32;
            // Batches of 1000 runs (100 µs at 10 M/s), paced to the rate.
            let batch: u32 = 1000;
            while started.elapsed() < plan.storm {
                let ns = test_run(&fd, &frame, batch)?;
                ns_sum += f64::from(ns);
                calls += 1;
                emitted += u64::from(batch);
                if rate > 0 {
                    let due = Duration::from_secs_f64(emitted as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = running.proc.cpu_s()?;
            drop(fd);
            let stopped = running.stop()?;
            let (lost, _) = tracers::parse_report(&stopped.report);
            let Some(lost) = lost else {
                bail!("nettools' report has no events-lost line");
            };
            let r = PipelineRun {
                rate,
                emitted,
                seconds,
                lost,
                collector_cpu: 100.0 * (cpu1 - cpu0) / (seconds + 0.3),
                ns_per_event: ns_sum / f64::from(calls.max(1)),
            };
            progress(&format!(
                "  run {} rate {:>10}: emitted {:>9.0}/s, lost {} ({:.2} %), collector {:.0}% of a core",
                run + 1,
                rate_label(rate),
                r.emitted as f64 / r.seconds,
                r.lost,
                100.0 * r.lost as f64 / r.emitted.max(1) as f64,
                r.collector_cpu
            ));
            runs.push(r);
        }
    }
    progress("  decode + aggregate micro-benchmark (criterion)");
    let micro = criterion().unwrap_or_else(|e| {
        progress(&format!("  criterion failed: {e:#}"));
        Vec::new()
    });
    Ok(Pipeline { runs, micro })
}

/// Runs `cargo bench --bench pipeline` and reads criterion's throughput lines.
fn criterion() -> Result<Vec<(String, f64)>> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "bench",
            "--package",
            "nettools",
            "--bench",
            "pipeline",
            "--",
            "--noplot",
        ])
        .current_dir(crate::process::workspace())
        .output()
        .context("cannot run cargo bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_criterion(&text))
}

/// (benchmark, elements per second at the estimate) from criterion's report: a name line, then
/// `thrpt:  [low est high]` with units `elem/s`, `Kelem/s`, `Melem/s` or `Gelem/s`.
fn parse_criterion(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("thrpt:") {
            let parts: Vec<&str> = rest
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .split_whitespace()
                .collect();
            // low unit est unit high unit
            if let (Some(v), Some(unit)) = (parts.get(2), parts.get(3)) {
                let scale = match *unit {
                    "elem/s" => 1.0,
                    "Kelem/s" => 1e3,
                    "Melem/s" => 1e6,
                    "Gelem/s" => 1e9,
                    _ => f64::NAN,
                };
                if let Ok(v) = v.parse::<f64>() {
                    out.push((name.clone(), v * scale));
                }
            }
        } else if !t.is_empty() && !t.starts_with("time:") && !line.starts_with(' ') {
            name = t.split_whitespace().next().unwrap_or(t).to_string();
        }
    }
    out
}

fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".into()
    } else {
        format!("{:.1} M/s", rate as f64 / 1e6)
    }
}

pub fn write_pipeline(out: &mut String, p: &Pipeline, plan: &Plan) {
    let _ = writeln!(
        out,
        "## 6. The event pipeline at the kernel's top speed\n\n\
         A synthetic source (`nettools_synthetic`, a tc program of nettools' own object that \
         `nettools trace --probes drops` loads without attaching when the bench asks) sends one \
         drop-shaped event per run into the same 4 MiB ring buffer through the same `emit` a \
         real drop uses; the bench runs it with `BPF_PROG_TEST_RUN` in batches of 1000 \
         (`repeat`) on one core, paced to each rate, for {:.0} s; the collector runs on the \
         other. Flows cycle through 60 000 source ports. Events that do not fit are counted as \
         lost; events processed = emitted − lost. {} run(s) per rate, medians shown.\n",
        plan.storm.as_secs_f64(),
        plan.storm_runs
    );
    let _ = writeln!(
        out,
        "| offered | emitted (events/s) | lost | processed (events/s) | collector CPU (% of a core) | kernel ns per event |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &rate in &plan.pipeline_rates {
        let mine: Vec<&PipelineRun> = p.runs.iter().filter(|r| r.rate == rate).collect();
        let v = |f: &dyn Fn(&PipelineRun) -> f64| mine.iter().map(|r| f(r)).collect::<Vec<f64>>();
        let _ = writeln!(
            out,
            "| {} | {} | {}% | {} | {} | {} |",
            rate_label(rate),
            fmt_spread(&v(&|r| r.emitted as f64 / r.seconds), 0),
            fmt_spread(&v(&|r| 100.0 * r.lost as f64 / r.emitted.max(1) as f64), 2),
            fmt_spread(
                &v(&|r| r.emitted.saturating_sub(r.lost) as f64 / r.seconds),
                0
            ),
            fmt_spread(&v(&|r| r.collector_cpu), 0),
            fmt_spread(&v(&|r| r.ns_per_event), 0),
        );
    }
    if !p.micro.is_empty() {
        let _ = writeln!(
            out,
            "\nDecoding and aggregating in userspace, one core, no kernel (`cargo bench -p \
             nettools --bench pipeline`, criterion; events per second at criterion's \
             estimate):\n"
        );
        let _ = writeln!(out, "| benchmark | events/s |");
        let _ = writeln!(out, "|---|---|");
        for (name, rate) in &p.micro {
            let _ = writeln!(out, "| `{name}` | {:.2} M |", rate / 1e6);
        }
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::parse_criterion;

    #[test]
    fn reads_criterion_throughput() {
        let text = "decode_aggregate/drops\n                        time:   [1.2 ms 1.3 ms 1.4 ms]\n                        thrpt:  [7.1 Melem/s 7.6 Melem/s 8.0 Melem/s]\n";
        let got = parse_criterion(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "decode_aggregate/drops");
        assert!((got[0].1 - 7.6e6).abs() < 1.0);
    }
}

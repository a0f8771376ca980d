//! `nettools trace`: load the probes, attach them, collect until the duration ends or Ctrl-C,
//! then report. Pods and containers are followed while traced ([`follow`]).

pub mod follow;

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    collect::{self, Clock, Event, aggregate::Aggregate, kallsyms::Kallsyms},
    discover::{Workload, WorkloadKind},
    probe::{self, LoadOptions, ProbeKind},
    report::{self, Health, Output, Summary, json},
};

/// Everything a trace needs to know.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    /// Namespaces to trace (empty with `all`).
    pub workloads: Vec<Workload>,
    /// Trace every namespace on the node.
    pub all: bool,
    /// Stop after this long; `None` runs until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    pub probes: Vec<ProbeKind>,
    pub output: Output,
    /// Write the report here instead of stdout.
    pub out: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    /// How tc programs attach (tcx, clsact or whichever the kernel has).
    pub tc_mode: probe::tc::Mode,
    /// Forward kernel-side debug messages.
    pub verbose: bool,
    /// Pods and containers: names for `--all`, and the ones to follow.
    pub runtime: follow::RuntimeTrace,
}

/// Where the report goes.
fn open_output(out: &Option<PathBuf>) -> Result<Box<dyn Write>> {
    Ok(match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write the report to {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

/// Human description of what is traced, for the status line.
fn describe_targets(spec: &TraceSpec) -> String {
    if spec.all {
        return "every network namespace".to_string();
    }
    let names: Vec<&str> = spec.workloads.iter().map(|w| w.name.as_str()).collect();
    match names.len() {
        1 => names[0].to_string(),
        n => format!("{n} namespaces ({})", names.join(", ")),
    }
}

/// Runs a trace to its end and writes the report.
pub async fn run(mut spec: TraceSpec) -> Result<()> {
    let output = open_output(&spec.out)?;
    let mut loaded = probe::load(&LoadOptions {
        probes: spec.probes.clone(),
        all_namespaces: spec.all,
        kernel_debug: spec.verbose,
        ring_buffer_bytes: spec.ring_buffer_bytes,
    })?;
    for w in &spec.workloads {
        loaded.trace_netns(w.netns)?;
    }
    let mut labels: BTreeMap<u32, Workload> = if spec.all {
        let mut labels = crate::discover::netns::labels();
        labels.extend(spec.runtime.labels.clone());
        labels
    } else {
        BTreeMap::new()
    };
    let mut notes = follow::host_network_notes(&spec.workloads);
    if spec.probes.contains(&ProbeKind::Traffic) {
        let targets = tc_targets(&mut spec.workloads, &mut labels, &mut notes);
        loaded.attach_tc(&targets, spec.tc_mode)?;
    }
    loaded.kernel.notes.extend(notes);
    let kallsyms = Kallsyms::load().unwrap_or_else(|e| {
        log::warn!("{e:#}; kernel locations are shown as addresses");
        Kallsyms::default()
    });
    let mut kernel_log = if spec.verbose {
        match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
            Ok(logger) => Some(collect::pollable(logger).context("cannot poll the kernel log")?),
            Err(e) => {
                log::debug!("no kernel-side log: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut events =
        collect::pollable(loaded.take_events()?).context("cannot poll the ring buffer")?;
    for p in &spec.probes {
        loaded.attach(*p)?;
    }
    let started = Instant::now();
    let probe_names: Vec<&str> = spec.probes.iter().map(|p| p.name()).collect();
    eprintln!(
        "nettools: tracing {} in {}{}",
        probe_names.join(", "),
        describe_targets(&spec),
        match spec.duration {
            Some(d) => format!(
                " for {}; Ctrl-C stops early and prints the report",
                humantime(d)
            ),
            None => "; Ctrl-C stops and prints the report".to_string(),
        }
    );

    let mut collector = Collector {
        agg: Aggregate::default(),
        out: output,
        json: spec.output == Output::Json,
        traced: spec.workloads.clone(),
        labels: &labels,
        kernel: loaded.kernel.clone(),
        kallsyms: &kallsyms,
        clock: Clock::now(),
    };

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let deadline = spec.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                collector.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            Some(guard) = async {
                match kernel_log.as_mut() {
                    Some(l) => l.readable_mut().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                collector.out.flush().context("cannot write the report")?;
                if !follow::tick(&mut spec, &mut loaded, &mut collector.traced, started).await? {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        }
    }

    // Stop the probes first so the counts and the events describe the same packets.
    let attached = loaded.tc.interfaces.clone();
    loaded.detach_all();
    let end_ktime_ns = Clock::monotonic_ns();
    collector.drain(events.get_mut())?;
    let duration_s = started.elapsed().as_secs_f64();
    let Collector {
        mut agg,
        mut out,
        traced,
        ..
    } = collector;
    agg.set_drop_counts(&probe::drops::read_counts(&loaded.ebpf)?);
    let (totals, flows) = probe::retransmits::read_counts(&loaded.ebpf)?;
    agg.set_retransmit_counts(&totals, &flows);
    agg.set_neighbour_counts(&probe::neighbours::read_counts(&loaded.ebpf)?);
    agg.set_interfaces(
        &probe::tc::read_traffic(&loaded.ebpf)?,
        &probe::tc::read_neigh_probes(&loaded.ebpf)?,
    );
    let health = Health::from_counters(&loaded.counters()?, agg.undecodable);
    let summary = Summary::build(&report::Inputs {
        aggregate: &agg,
        traced: &traced,
        labels: &labels,
        kernel: &loaded.kernel,
        kallsyms: &kallsyms,
        health,
        duration_s,
        probes: spec.probes.clone(),
        all_namespaces: spec.all,
        attached: &attached,
        end_ktime_ns,
    });
    match spec.output {
        Output::Table => write!(out, "{}", report::table::render(&summary)),
        Output::Json => writeln!(out, "{}", json::summary(&summary)),
    }
    .and_then(|()| out.flush())
    .context("cannot write the report")?;
    Ok(())
}

/// Finds the host-side veths of every traced workload (or every namespace with `--all`) and
/// returns them as tc targets. Workloads without one get a note instead.
fn tc_targets(
    workloads: &mut [Workload],
    labels: &mut BTreeMap<u32, Workload>,
    notes: &mut Vec<String>,
) -> Vec<probe::tc::Target> {
    let mut targets = Vec::new();
    let all_mode = workloads.is_empty();
    let list: Vec<&mut Workload> = if all_mode {
        labels.values_mut().collect()
    } else {
        workloads.iter_mut().collect()
    };
    for w in list {
        // Its interfaces are the host's (see follow::host_network_notes).
        if w.host_network && !all_mode {
            continue;
        }
        if let Err(e) = w.discover_veths() {
            notes.push(format!("cannot find the veths of {}: {e:#}", w.name));
            continue;
        }
        if w.veths.is_empty() && !all_mode && w.kind != WorkloadKind::Host {
            notes.push(format!(
                "{} has no veth to another namespace: no traffic counters or ARP/NDP tracking on \
                 the wire for it (use --iface to trace an interface directly)",
                w.name
            ));
        }
        for v in &w.veths {
            targets.push(probe::tc::Target {
                ifname: v.name.clone(),
                ifindex: v.ifindex,
            });
        }
    }
    targets
}

/// Decodes events, aggregates them and streams them as JSON when asked.
struct Collector<'a> {
    agg: Aggregate,
    out: Box<dyn Write>,
    json: bool,
    traced: Vec<Workload>,
    labels: &'a BTreeMap<u32, Workload>,
    kernel: probe::KernelInfo,
    kallsyms: &'a Kallsyms,
    clock: Clock,
}

impl Collector<'_> {
    /// Reads every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(record) = ring.next() {
            match collect::decode(&record) {
                Ok(ev) => self.handle(ev)?,
                Err(e) => {
                    self.agg.undecodable += 1;
                    log::debug!("undecodable event: {e:?}");
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Drop(d) => {
                self.agg.add_drop(&d);
                if self.json {
                    let w = report::workload_for(d.key.netns, &self.traced, self.labels);
                    let j = json::drop_event(&d, &w, &self.kernel, self.kallsyms, &self.clock);
                    self.line(&j)?;
                }
            }
            Event::Retransmit(r) => {
                self.agg.add_retransmit(&r);
                if self.json {
                    let w = report::workload_for(r.key.netns, &self.traced, self.labels);
                    self.line(&json::retransmit_event(&r, &w, &self.clock))?;
                }
            }
            Event::NeighbourFailed(n) => {
                self.agg.add_neighbour(&n);
                if self.json {
                    let w = report::workload_for(n.key.netns, &self.traced, self.labels);
                    self.line(&json::neighbour_event(&n, &w, &self.clock))?;
                }
            }
        }
        Ok(())
    }

    fn line<T: serde::Serialize>(&mut self, value: &T) -> Result<()> {
        writeln!(self.out, "{}", json::line(value)).context("cannot write the report")
    }
}

/// `5s`, `1m30s`, `250ms`.
pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1m30s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{text:?} is not a positive duration"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m or h (e.g. 30s)"))?;
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration such as 30s, 500ms or 2m"
            ));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 2m"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?}: use ms, s, m or h"
                ));
            }
        };
        total += Duration::from_secs_f64(secs);
    }
    if total.is_zero() {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(total)
}

/// Parses a size such as `4M`, `256K` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1u64),
    };
    let n: u64 = num
        .trim_end_matches(['i', 'I'])
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4M"))?;
    let bytes = n * mult;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(format!(
            "the ring buffer must be a power of two between 4K and 1G, not {text}"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("lots").is_err());
    }
}

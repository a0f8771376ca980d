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

/// How often the collector reads the ring buffer without being woken: events below a wakeup
/// batch ([`probe::wakeup_bytes`]) wait at most this long.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

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
    /// How long a request (SYN, DNS query, echo request) may wait before it counts as
    /// unanswered.
    pub timeout: Duration,
    /// The transit probe follows one packet in 2^n.
    pub transit_sample_shift: u32,
    /// Write HdrHistogram percentile files (`.hgrm`) here.
    pub hgrm_dir: Option<PathBuf>,
    /// Write the folded stacks of drops and retransmits here.
    pub folded: Option<PathBuf>,
    /// Show the live view while tracing (`None`: when the table goes to stdout).
    pub live: Option<bool>,
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
    let status = Status::new();
    status.say("loading probes into the kernel");
    let mut loaded = probe::load(&LoadOptions {
        probes: spec.probes.clone(),
        all_namespaces: spec.all,
        kernel_debug: spec.verbose,
        ring_buffer_bytes: spec.ring_buffer_bytes,
        transit_sample_shift: spec.transit_sample_shift,
        stacks: spec.output == Output::Flamegraph || spec.folded.is_some(),
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
    if spec.probes.iter().any(|p| p.on_veth()) {
        status.say("finding the workloads' veths");
        let targets = tc_targets(&mut spec.workloads, &mut labels, &mut notes);
        status.say(&format!(
            "attaching tc programs to {} interface(s)",
            targets.len()
        ));
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
    status.say("attaching tracepoints");
    for p in &spec.probes {
        loaded.attach(*p)?;
    }
    status.clear();
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
    // The kernel side wakes the collector once per batch of events (maps::submit), not per
    // event: what waits below a batch is read on this timer.
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let show_live = spec
        .live
        .unwrap_or(spec.output == Output::Table && spec.out.is_none());
    let mut live = show_live.then(report::live::Live::new);
    // The followed pods move out of the spec, so the rest of it can be read while they change.
    let mut runtime = std::mem::take(&mut spec.runtime);
    let context = Context {
        spec: &spec,
        labels: &labels,
        kallsyms: &kallsyms,
    };
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                collector.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = drain.tick() => collector.drain(events.get_mut())?,
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
                let waiting = collector.expire(&mut loaded, spec.timeout)?;
                collector.out.flush().context("cannot write the report")?;
                if !follow::tick(&mut runtime, &spec, &mut loaded, &mut collector.traced, started).await? {
                    break;
                }
                if let Some(live) = live.as_mut() {
                    let elapsed = started.elapsed().as_secs_f64();
                    let summary = context.summarize(&loaded, &mut collector.agg, &collector.traced, elapsed, waiting)?;
                    live.show(&summary, elapsed);
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
    loaded.detach_all();
    collector.drain(events.get_mut())?;
    let waiting = collector.expire(&mut loaded, spec.timeout)?;
    let duration_s = started.elapsed().as_secs_f64();
    let summary = context.summarize(
        &loaded,
        &mut collector.agg,
        &collector.traced,
        duration_s,
        waiting,
    )?;
    let Collector {
        mut out, traced, ..
    } = collector;
    if let Some(live) = live.as_mut() {
        live.finish();
    }
    let folded = if spec.output == Output::Flamegraph || spec.folded.is_some() {
        let names = |netns: u32| report::workload_for(netns, &traced, &labels);
        report::flamegraph::folded(
            &probe::stacks::drop_counts(&loaded.ebpf)?,
            &probe::stacks::retransmit_counts(&loaded.ebpf)?,
            &probe::stacks::read(&loaded.ebpf)?,
            &names,
            &loaded.kernel,
            &kallsyms,
        )
    } else {
        Vec::new()
    };
    match spec.output {
        Output::Table => write!(out, "{}", report::table::render(&summary)),
        Output::Json => writeln!(out, "{}", json::summary(&summary)),
        Output::Histogram => write!(out, "{}", report::histogram::render(&summary)),
        Output::Flamegraph => {
            let svg = report::flamegraph::svg(
                &folded,
                "Where packets die: drops and TCP retransmits by kernel stack",
            )?;
            out.write_all(&svg)
        }
    }
    .and_then(|()| out.flush())
    .context("cannot write the report")?;
    if let Some(path) = &spec.folded {
        let mut text = folded.join("\n");
        text.push('\n');
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the folded stacks to {}", path.display()))?;
    }
    if let Some(dir) = &spec.hgrm_dir {
        let files = report::histogram::write_hgrm(dir, &summary)?;
        eprintln!(
            "nettools: wrote {} histogram file(s) to {}",
            files.len(),
            dir.display()
        );
    }
    Ok(())
}

/// What a summary needs besides the kernel maps and the aggregate.
struct Context<'a> {
    spec: &'a TraceSpec,
    labels: &'a BTreeMap<u32, Workload>,
    kallsyms: &'a Kallsyms,
}

impl Context<'_> {
    /// Reads the kernel's exact counts into the aggregate and builds the summary (used every
    /// second by the live view and once at the end).
    fn summarize(
        &self,
        loaded: &probe::Loaded,
        agg: &mut Aggregate,
        traced: &[Workload],
        duration_s: f64,
        waiting: probe::latency::Waiting,
    ) -> Result<Summary> {
        let end_ktime_ns = Clock::monotonic_ns();
        agg.set_drop_counts(&probe::drops::read_counts(&loaded.ebpf)?);
        let (totals, flows) = probe::retransmits::read_counts(&loaded.ebpf)?;
        agg.set_retransmit_counts(&totals, &flows);
        agg.set_neighbour_counts(&probe::neighbours::read_counts(&loaded.ebpf)?);
        agg.set_interfaces(
            &probe::tc::read_traffic(&loaded.ebpf)?,
            &probe::tc::read_neigh_probes(&loaded.ebpf)?,
        );
        let counters = loaded.counters()?;
        let health = Health::from_counters(&counters, agg.undecodable);
        let pairing = probe::latency::accounts(&loaded.ebpf, &counters, &agg.latency.expired);
        Ok(Summary::build(&report::Inputs {
            aggregate: agg,
            traced,
            labels: self.labels,
            kernel: &loaded.kernel,
            kallsyms: self.kallsyms,
            health,
            duration_s,
            probes: self.spec.probes.clone(),
            all_namespaces: self.spec.all,
            attached: &loaded.tc.interfaces,
            end_ktime_ns,
            pairing,
            waiting,
        }))
    }
}

/// A status line on stderr while probes load and attach (a terminal only; elsewhere the one
/// "tracing …" line says it all).
struct Status {
    tty: bool,
}

impl Status {
    fn new() -> Self {
        use std::io::IsTerminal as _;
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn say(&self, what: &str) {
        if self.tty {
            eprint!("\r\x1b[Knettools: {what}…");
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
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
            Event::Handshake(h) => {
                self.agg.latency.add_handshake(&h);
                if self.json {
                    let w =
                        report::workload_for(self.netns_of(h.ifindex), &self.traced, self.labels);
                    self.line(&json::handshake_event(&h, &w, &self.clock))?;
                }
            }
            Event::Dns(d) => {
                let parsed = self.agg.latency.add_dns(&d);
                if self.json {
                    let w = report::workload_for(
                        self.netns_of(d.key.ifindex),
                        &self.traced,
                        self.labels,
                    );
                    self.line(&json::dns_event(&d, parsed.as_ref().ok(), &w, &self.clock))?;
                }
            }
            Event::Icmp(i) => {
                self.agg.latency.add_icmp(&i);
                if self.json {
                    let w =
                        report::workload_for(self.netns_of(i.ifindex), &self.traced, self.labels);
                    self.line(&json::icmp_event(&i, &w, &self.clock))?;
                }
            }
            // Transit samples can be one per packet: they go into histograms, not JSON lines.
            Event::Transit(t) => self.agg.latency.add_transit(&t),
        }
        Ok(())
    }

    /// Moves requests that waited past the timeout out of the kernel's pairing maps and counts
    /// them as unanswered; returns what is still waiting.
    fn expire(
        &mut self,
        loaded: &mut probe::Loaded,
        timeout: Duration,
    ) -> Result<probe::latency::Waiting> {
        let (swept, waiting) = probe::latency::sweep(
            &mut loaded.ebpf,
            Clock::monotonic_ns(),
            timeout.as_nanos() as u64,
        )?;
        let l = &mut self.agg.latency;
        l.expire_handshakes(&swept.handshakes);
        l.expire_icmp(&swept.icmp);
        l.expire_dns(&swept.dns);
        if self.json {
            for (k, v) in &swept.dns {
                let netns = self.netns_of(k.ifindex);
                let w = report::workload_for(netns, &self.traced, self.labels);
                self.line(&json::dns_unanswered(k, v, &w, &self.clock, timeout))?;
            }
        }
        Ok(waiting)
    }

    /// The namespace of the workload owning a traced interface (0 when unknown).
    fn netns_of(&self, ifindex: u32) -> u32 {
        self.traced
            .iter()
            .chain(self.labels.values())
            .find(|w| w.veths.iter().any(|v| v.ifindex == ifindex))
            .map_or(0, |w| w.netns)
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

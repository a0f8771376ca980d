//! A running set of probes, what `nettools trace` and `nettools serve` share: load the object
//! for this kernel, add the namespaces to the kernel's filter, attach the tc programs to the
//! workloads' veths and the tracepoints, then collect: drain the ring buffer as it fills,
//! expire unanswered requests every second, and build a [`Summary`] whenever asked.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    collect::{self, Clock, Event, aggregate::Aggregate, kallsyms::Kallsyms},
    discover::{Workload, WorkloadKind},
    probe::{self, LoadOptions, ProbeKind},
    report::{self, Health, Summary, json},
};

/// How to run the probes.
#[derive(Clone, Debug)]
pub struct Options {
    pub probes: Vec<ProbeKind>,
    /// Count every network namespace (not only the traced workloads').
    pub all: bool,
    pub ring_buffer_bytes: u32,
    /// How tc programs attach (tcx, clsact or whichever the kernel has).
    pub tc_mode: probe::tc::Mode,
    /// How long a request (SYN, DNS query, echo request) may wait before it counts as
    /// unanswered.
    pub timeout: Duration,
    /// The transit probe follows one packet in 2^n.
    pub transit_sample_shift: u32,
    /// Record kernel stacks of drops and retransmits (for a flame graph); they cost most of
    /// a drop's time in the kernel, so only when asked for.
    pub stacks: bool,
    /// Forward kernel-side debug messages.
    pub verbose: bool,
    /// Read the firewall rules' counters of the namespaces traced from the start just before
    /// the probes load ([`Probes::rules`]), to name the rules that dropped at the end.
    pub rules: bool,
}

/// How often the collector reads the ring buffer without being woken: events below a wakeup
/// batch ([`probe::wakeup_bytes`]) wait at most this long.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// What one [`Session::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Events were read (or kernel log lines forwarded).
    Events,
    /// A second passed: unanswered requests were expired.
    Tick,
}

/// Loaded, attached probes and what they collected so far.
pub struct Session {
    /// The probes, their collector and what waits to be paired.
    pub probes: Probes<Box<dyn Write>>,
    events: AsyncFd<RingBuf<MapData>>,
    kernel_log: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    tick: tokio::time::Interval,
    /// Reads the ring buffer between wakeups (the kernel wakes the collector once per batch).
    drain: tokio::time::Interval,
}

/// Loaded, attached probes whose events nobody reads yet. [`Session`] polls them on the async
/// runtime (`trace`); `serve` drains the ring buffer on a thread of its own and keeps the rest,
/// the [`Probes`], behind a lock.
pub struct Started<W: Write = Box<dyn Write>> {
    pub probes: Probes<W>,
    pub events: RingBuf<MapData>,
    pub kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Whether to read `/proc/kallsyms` (at the first location named) to name the kernel functions
/// that drop packets (reports show them; the agent's metrics never do, so it needs no
/// CAP_SYSLOG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Symbols {
    Load,
    Skip,
}

impl<W: Write> Started<W> {
    /// Loads and attaches the probes for `workloads` (for every namespace with `options.all`,
    /// the ones in `labels` getting their veths attached), saying what it does on `status`.
    /// JSON lines of events go to `out` when `json` is set.
    pub fn load(
        options: Options,
        mut workloads: Vec<Workload>,
        mut labels: BTreeMap<u32, Workload>,
        out: W,
        json: bool,
        status: &Status,
        symbols: Symbols,
    ) -> Result<Self> {
        // Before the probes load: reading runs nft and iptables-save, whose netlink sockets,
        // freed an RCU grace period after they close, drop their unread messages
        // (`QUEUE_PURGE`). Loading takes long enough that the probes never see those.
        let rules = options.rules.then(|| {
            status.say("reading the firewall rules' counters");
            let mut rules = collect::rules::Watched::default();
            rules.read_new(
                workloads
                    .iter()
                    .chain(labels.values())
                    .filter_map(|w| Some((w.netns, w.netns_path.as_deref()?))),
            );
            rules
        });
        status.say("loading probes into the kernel");
        let mut loaded = probe::load(&LoadOptions {
            probes: options.probes.clone(),
            all_namespaces: options.all,
            kernel_debug: options.verbose,
            ring_buffer_bytes: options.ring_buffer_bytes,
            transit_sample_shift: options.transit_sample_shift,
            stacks: options.stacks,
        })?;
        for w in &workloads {
            loaded.trace_netns(w.netns)?;
        }
        let mut notes = host_network_notes(&workloads);
        if options.probes.iter().any(|p| p.on_veth()) {
            status.say("finding the workloads' veths");
            let targets = tc_targets(&mut workloads, &mut labels, &mut notes);
            status.say(&format!(
                "attaching tc programs to {} interface(s)",
                targets.len()
            ));
            loaded.attach_tc(&targets, options.tc_mode)?;
        }
        loaded.kernel.notes.extend(notes);
        let kallsyms = match symbols {
            Symbols::Load => Kallsyms::when_needed(),
            Symbols::Skip => Kallsyms::default(),
        };
        let kernel_log = if options.verbose {
            match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
                Ok(logger) => Some(logger),
                Err(e) => {
                    log::debug!("no kernel-side log: {e}");
                    None
                }
            }
        } else {
            None
        };
        let events = loaded.take_events()?;
        status.say("attaching tracepoints");
        for p in &options.probes {
            loaded.attach(*p)?;
        }
        let collector = Collector {
            agg: Aggregate::default(),
            out,
            json,
            traced: workloads,
            labels,
            kernel: loaded.kernel.clone(),
            kallsyms,
            clock: Clock::now(),
        };
        Ok(Self {
            probes: Probes {
                options,
                loaded,
                collector,
                waiting: probe::latency::Waiting::default(),
                rules,
            },
            events,
            kernel_log,
        })
    }
}

impl Started {
    /// Polls the events on the async runtime, as [`Session::step`] does.
    pub fn into_session(self) -> Result<Session> {
        let Started {
            probes,
            events,
            kernel_log,
        } = self;
        let kernel_log = match kernel_log {
            Some(logger) => Some(collect::pollable(logger).context("cannot poll the kernel log")?),
            None => None,
        };
        let events = collect::pollable(events).context("cannot poll the ring buffer")?;
        Ok(Session {
            probes,
            events,
            kernel_log,
            tick: tokio::time::interval(Duration::from_secs(1)),
            drain: {
                let mut drain = tokio::time::interval(DRAIN_EVERY);
                drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                drain
            },
        })
    }
}

/// Loaded, attached probes and what they collected, without their event stream: what `serve`
/// keeps behind a lock while a thread of its own drains the events into `collector`.
pub struct Probes<W: Write> {
    pub options: Options,
    pub loaded: probe::Loaded,
    pub collector: Collector<W>,
    /// Requests still waiting for an answer at the last expiry.
    pub waiting: probe::latency::Waiting,
    /// With [`Options::rules`]: the rules as they were when the probes started. Read them
    /// again ([`collect::rules::Watched::grown_drops`]) once the probes are detached: the
    /// tools' netlink sockets drop a few messages as they close (`QUEUE_PURGE`), which the
    /// drop probe must not see.
    pub rules: Option<collect::rules::Watched>,
}

impl<W: Write> Probes<W> {
    /// Moves requests that waited past the timeout out of the kernel's pairing maps.
    pub fn expire(&mut self) -> Result<()> {
        self.waiting = self
            .collector
            .expire(&mut self.loaded, self.options.timeout)?;
        Ok(())
    }

    /// Reads the kernel's exact counts into the aggregate and builds the summary (every second
    /// for the live view, at each scrape for `serve`, once at the end of a trace).
    pub fn summarize(&mut self, duration_s: f64) -> Result<Summary> {
        let skipped = self.loaded.skipped_runs();
        // The neighbour tables before the counters (see neighbours::baseline), and the counters
        // read once for the health figures and the comparison both.
        let tables = probe::neighbours::tables_now();
        let counters = self.loaded.counters()?;
        let not_seen = self.loaded.neighbour_failures_not_seen(tables, &counters);
        let loaded = &self.loaded;
        let agg = &mut self.collector.agg;
        let end_ktime_ns = Clock::monotonic_ns();
        agg.set_drop_counts(&probe::drops::read_counts(&loaded.ebpf)?);
        let (totals, flows) = probe::retransmits::read_counts(&loaded.ebpf)?;
        agg.set_retransmit_counts(&totals, &flows);
        let (neighbours, neighbour_totals) = probe::neighbours::read_counts(&loaded.ebpf)?;
        agg.set_neighbour_counts(&neighbours, &neighbour_totals);
        agg.set_connection_counts(&probe::connections::read_counts(&loaded.ebpf)?);
        agg.set_interfaces(
            &probe::tc::read_traffic(&loaded.ebpf, &loaded.tc)?,
            &probe::tc::read_neigh_probes(&loaded.ebpf)?,
            &probe::tc::read_too_big(&loaded.ebpf)?,
        );
        let mut health = Health::from_counters(&counters, agg.undecodable, skipped);
        health.neighbour_failures_not_seen = not_seen;
        // What the LRU map of failing addresses pushed out: inserted, less present, less removed.
        health.neighbour_addresses_pushed_out = counters
            [nettools_common::counters::NEIGH_FAILURES_INSERTED as usize]
            .saturating_sub(neighbours.len() as u64 + loaded.neighbour_entries_forgotten);
        let pairing = probe::latency::accounts(&loaded.ebpf, &counters, &agg.latency.expired)?;
        Ok(Summary::build(&report::Inputs {
            aggregate: agg,
            traced: &self.collector.traced,
            labels: &self.collector.labels,
            kernel: &loaded.kernel,
            kallsyms: &self.collector.kallsyms,
            health,
            duration_s,
            probes: self.options.probes.clone(),
            all_namespaces: self.options.all,
            attached: &loaded.tc.interfaces,
            end_ktime_ns,
            pairing,
            waiting: self.waiting,
        }))
    }
}

impl Session {
    /// Loads and attaches the probes for `workloads` (for every namespace with `options.all`,
    /// the ones in `labels` getting their veths attached), saying what it does on `status`.
    /// JSON lines of events go to `out` when `json` is set.
    pub fn start(
        options: Options,
        workloads: Vec<Workload>,
        labels: BTreeMap<u32, Workload>,
        out: Box<dyn Write>,
        json: bool,
        status: &Status,
    ) -> Result<Self> {
        Started::load(options, workloads, labels, out, json, status, Symbols::Load)?.into_session()
    }

    /// Waits for the next thing to do and does it: events to read, or the one-second tick
    /// (expiring unanswered requests, flushing JSON lines). Cancel-safe: a caller may select
    /// on it with its own signals and deadlines.
    pub async fn step(&mut self) -> Result<Step> {
        tokio::select! {
            guard = self.events.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer failed")?;
                self.probes.collector.drain(guard.get_inner_mut())?;
                guard.clear_ready();
                Ok(Step::Events)
            }
            _ = self.drain.tick() => {
                self.probes.collector.drain(self.events.get_mut())?;
                Ok(Step::Events)
            }
            Some(guard) = async {
                match self.kernel_log.as_mut() {
                    Some(l) => l.readable_mut().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard;
                guard.get_inner_mut().flush();
                guard.clear_ready();
                Ok(Step::Events)
            }
            _ = self.tick.tick() => {
                self.probes.expire()?;
                self.probes.collector.out.flush().context("cannot write the report")?;
                Ok(Step::Tick)
            }
        }
    }

    /// Reads what is waiting in the ring buffer now, without waiting for more.
    pub fn drain(&mut self) -> Result<()> {
        self.probes.collector.drain(self.events.get_mut())
    }

    /// Stops the probes, then reads what they left, so the counts and the events describe the
    /// same packets.
    pub fn finish(&mut self) -> Result<()> {
        self.probes.loaded.detach_all();
        self.drain()?;
        self.probes.expire()
    }

    /// The summary at this moment (see [`Probes::summarize`]).
    pub fn summarize(&mut self, duration_s: f64) -> Result<Summary> {
        self.probes.summarize(duration_s)
    }
}

/// What the report says about host-network pods and containers: their figures are the host's.
pub fn host_network_notes(workloads: &[Workload]) -> Vec<String> {
    workloads
        .iter()
        .filter(|w| w.host_network)
        .map(|w| {
            format!(
                "{} uses the host's network namespace: what is reported for it is the host's \
                 traffic, drops and retransmits, not this workload's alone",
                w.name
            )
        })
        .collect()
}

/// Ctrl-C (SIGINT) and SIGTERM, caught from before the first probe is attached: a signal that
/// arrives while the probes load or attach no longer kills the process half-attached (leaving
/// clsact filters behind); it ends the run once attaching is over, and everything is detached
/// as on any other stop. Install it before [`Session::start`].
pub struct Stop {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Waits for SIGINT or SIGTERM (at once when one came since [`Stop::install`]).
    /// Cancel-safe.
    pub async fn requested(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// A status line on stderr while probes load and attach (a terminal only; elsewhere the one
/// "tracing …" line says it all).
pub struct Status {
    tty: bool,
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    pub fn new() -> Self {
        use std::io::IsTerminal as _;
        Self {
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn say(&self, what: &str) {
        if self.tty {
            eprint!("\r\x1b[Knettools: {what}…");
        }
    }

    pub fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Finds the host-side veths of every traced workload (or every namespace with `--all`) and
/// returns them as tc targets. Workloads without one get a note instead.
pub fn tc_targets(
    workloads: &mut [Workload],
    labels: &mut BTreeMap<u32, Workload>,
    notes: &mut Vec<String>,
) -> Vec<probe::tc::Target> {
    let mut targets = Vec::new();
    let all_mode = workloads.is_empty();
    // The host's links, dumped once for every workload (None: each dumps them, and says why
    // it could not).
    let host = crate::discover::netlink::links().ok();
    let list: Vec<&mut Workload> = if all_mode {
        labels.values_mut().collect()
    } else {
        workloads.iter_mut().collect()
    };
    for w in list {
        // Its interfaces are the host's (see host_network_notes).
        if w.host_network && !all_mode {
            continue;
        }
        if let Err(e) = w.discover_veths_among(host.as_deref()) {
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
                direct: w.kind == WorkloadKind::Interface,
            });
        }
    }
    targets
}

/// Decodes events, aggregates them and streams them as JSON when asked.
pub struct Collector<W: Write = Box<dyn Write>> {
    pub agg: Aggregate,
    /// Where JSON lines go (and, for `trace`, the report).
    pub out: W,
    json: bool,
    /// The workloads traced by name (all of them listed in the report).
    pub traced: Vec<Workload>,
    /// Names for every other namespace (`--all`, `serve`).
    pub labels: BTreeMap<u32, Workload>,
    kernel: probe::KernelInfo,
    pub kallsyms: Kallsyms,
    clock: Clock,
}

impl<W: Write> Collector<W> {
    /// Reads every record waiting in the ring buffer.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(record) = ring.next() {
            match collect::decode(&record) {
                Ok(ev) => self.add(ev)?,
                Err(e) => {
                    self.agg.undecodable += 1;
                    log::debug!("undecodable event: {e:?}");
                }
            }
        }
        Ok(())
    }

    /// Aggregates one decoded event (and writes its JSON line when asked).
    pub fn add(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Drop(d) => {
                self.agg.add_drop(&d);
                if self.json {
                    let w = self.workload(d.key.netns);
                    let j = json::drop_event(&d, &w, &self.kernel, &self.kallsyms, &self.clock);
                    self.line(&j)?;
                }
            }
            Event::Retransmit(r) => {
                self.agg.add_retransmit(&r);
                if self.json {
                    let w = self.workload(r.key.netns);
                    self.line(&json::retransmit_event(&r, &w, &self.clock))?;
                }
            }
            Event::NeighbourFailed(n) => {
                self.agg.add_neighbour(&n);
                if self.json {
                    let w = self.workload(n.key.netns);
                    self.line(&json::neighbour_event(&n, &w, &self.clock))?;
                }
            }
            Event::Handshake(h) => {
                self.agg.latency.add_handshake(&h);
                if self.json {
                    let w = self.workload(self.netns_of(h.ifindex));
                    self.line(&json::handshake_event(&h, &w, &self.clock))?;
                }
            }
            Event::Dns(d) => {
                let parsed = self.agg.latency.add_dns(&d);
                if self.json {
                    let w = self.workload(self.netns_of(d.key.ifindex));
                    self.line(&json::dns_event(&d, parsed.as_ref().ok(), &w, &self.clock))?;
                }
            }
            Event::Icmp(i) => {
                self.agg.latency.add_icmp(&i);
                if self.json {
                    let w = self.workload(self.netns_of(i.ifindex));
                    self.line(&json::icmp_event(&i, &w, &self.clock))?;
                }
            }
            // Transit samples can be one per packet: they go into histograms, not JSON lines.
            Event::Transit(t) => self.agg.latency.add_transit(&t),
            Event::Reset(r) => {
                self.agg.add_reset(&r);
                if self.json {
                    let w = self.workload(r.key.netns);
                    let reasons = &self.kernel.reset_reasons;
                    self.line(&json::reset_event(&r, &w, reasons, &self.clock))?;
                }
            }
            Event::Connection(c) => {
                self.agg.add_connection(&c);
                if self.json {
                    let w = self.workload(c.netns);
                    self.line(&json::connection_event(&c, &w, &self.clock))?;
                }
            }
            // RTT samples are bounded per socket but many: histograms, not JSON lines.
            Event::RttSample(r) => self.agg.add_rtt_sample(&r),
            Event::SocketError(e) => {
                self.agg.add_socket_error(&e);
                if self.json {
                    let w = self.workload(e.key.netns);
                    self.line(&json::socket_error_event(&e, &w, &self.clock))?;
                }
            }
        }
        Ok(())
    }

    /// Moves requests that waited past the timeout out of the kernel's pairing maps and counts
    /// them as unanswered; returns what is still waiting.
    pub fn expire(
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
                let w = self.workload(netns);
                self.line(&json::dns_unanswered(k, v, &w, &self.clock, timeout))?;
            }
        }
        Ok(waiting)
    }

    /// The workload (traced or only labelled) a namespace belongs to, for an event's line.
    fn workload(&self, netns: u32) -> Workload {
        report::workload_for(netns, &self.traced, &self.labels)
    }

    /// The namespace of the workload owning a traced interface (0 when unknown).
    pub fn netns_of(&self, ifindex: u32) -> u32 {
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

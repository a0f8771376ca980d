//! Loading nettools' eBPF object into this kernel: resolve what differs between kernels (struct
//! offsets from BTF, tracepoint layouts from tracefs, drop-reason names), write it into the
//! object's globals, load, and attach the selected probes.
//!
//! One module per probe, named like its kernel program and event type: [`drops`],
//! [`retransmits`], [`neighbours`], [`tc`] (traffic and ARP/NDP on veths).

pub mod btf;
pub mod clsact;
pub mod connections;
pub mod drops;
pub mod latency;
pub mod neighbours;
pub mod offsets;
pub mod retransmits;
pub mod stacks;
pub mod tc;
pub mod tracefs;

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{Program, ProgramError},
};
use nettools_common::{
    config::{
        FILTER_GLOBAL, Filter, KFREE_SKB_GLOBAL, KfreeSkbLayout, OFFSETS_GLOBAL, RETRANSMIT_GLOBAL,
        RetransmitLayout, STACK_MAP_ENTRIES, STACKS_GLOBAL, SYNACK_GLOBAL, SYNTHETIC_NETNS_GLOBAL,
        WAKEUP_BYTES_GLOBAL,
    },
    connections::{
        RECEIVE_RESET_GLOBAL, RTT_GLOBAL, SEND_RESET_GLOBAL, SET_STATE_GLOBAL, SOCK_GLOBAL,
        TCP_SOCK_GLOBAL,
    },
    counters,
    latency::{FEATURES_GLOBAL, TRANSIT_MASK_GLOBAL},
};

use crate::preflight;

/// The eBPF object built from `nettools-ebpf` by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettools.bpf.o"));

/// The probes a trace can run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// Packet drops with reason and kernel location (skb:kfree_skb).
    Drops,
    /// TCP retransmitted segments per flow (tcp:tcp_retransmit_skb, tcp_retransmit_synack).
    Retransmits,
    /// ARP/NDP entries that fail to resolve (neigh_timer_handler).
    Neighbours,
    /// Packets and bytes on each workload's host-side veth, and unanswered ARP/NDP (tc/tcx).
    Traffic,
    /// TCP handshake latency on the veth: SYN -> SYN-ACK, refused and unanswered SYNs.
    Handshake,
    /// DNS latency and answers (rcode, name, type) on the veth, UDP and TCP; unanswered queries.
    Dns,
    /// ICMP/ICMPv6 echo latency on the veth; unanswered echo requests.
    Icmp,
    /// Time through the host from one traced veth to another (bridge forwarding).
    Transit,
    /// TCP resets sent and received, the errors applications saw on their sockets, and a line
    /// per finished connection with its bytes and RTT (tcp:tcp_send_reset, tcp_receive_reset,
    /// inet_sk_error_report, sock:inet_sock_set_state).
    Connections,
}

impl ProbeKind {
    /// Every probe, in report order.
    pub const ALL: [Self; 9] = [
        Self::Drops,
        Self::Retransmits,
        Self::Neighbours,
        Self::Traffic,
        Self::Handshake,
        Self::Dns,
        Self::Icmp,
        Self::Transit,
        Self::Connections,
    ];

    /// What runs without `--probes`: everything but `transit`, which follows every packet
    /// crossing the host and is about half of the per-packet cost on a veth (BENCHMARKS.md).
    pub const DEFAULT: [Self; 7] = [
        Self::Drops,
        Self::Retransmits,
        Self::Neighbours,
        Self::Traffic,
        Self::Handshake,
        Self::Dns,
        Self::Icmp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Drops => "drops",
            Self::Retransmits => "retransmits",
            Self::Neighbours => "neighbours",
            Self::Traffic => "traffic",
            Self::Handshake => "handshake",
            Self::Dns => "dns",
            Self::Icmp => "icmp",
            Self::Transit => "transit",
            Self::Connections => "connections",
        }
    }

    /// Whether this probe runs in the tc programs on veths.
    pub fn on_veth(self) -> bool {
        matches!(
            self,
            Self::Traffic | Self::Handshake | Self::Dns | Self::Icmp | Self::Transit
        )
    }
}

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The probes that will be attached (their kernel layouts are resolved now).
    pub probes: Vec<ProbeKind>,
    /// Report every network namespace instead of those added with [`Loaded::trace_netns`].
    pub all_namespaces: bool,
    /// Forward the kernel programs' debug messages (aya-log) to the log.
    pub kernel_debug: bool,
    /// Size of the event ring buffer in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Follow one packet in 2^n through the host (the transit probe).
    pub transit_sample_shift: u32,
    /// Record the kernel stack of each drop and retransmit (flame graphs, folded stacks). The
    /// stack walk is most of what a drop costs, so it is off unless something will read them.
    pub stacks: bool,
}

/// What was learnt about the running kernel while loading.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    pub release: String,
    pub drop_reasons: drops::DropReasons,
    /// Fields or features this kernel lacks, each a sentence for the report.
    pub notes: Vec<String>,
    /// What the connections probe attaches on this kernel.
    pub connections: nettools_common::connections::ConnectionsConfig,
    /// Names of the reset reasons (`enum sk_rst_reason`, 6.10+).
    pub reset_reasons: Vec<(u32, String)>,
}

/// The loaded object and what it was configured with.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub kernel: KernelInfo,
    /// tc attachments made by [`Loaded::attach_tc`].
    pub tc: tc::Attachments,
    /// Program runs the kernel skipped, as last read (kept when the programs are unloaded).
    skipped_runs: u64,
    /// Entries of the neighbour failure map userspace removed (forgotten namespaces), so that
    /// what the map pushed out on its own can be told.
    pub neighbour_entries_forgotten: u64,
    /// The neighbour tables' failure counts when the neighbour probe was attached, for
    /// [`neighbours::not_seen`].
    neighbour_baseline: Option<neighbours::Baseline>,
    /// The largest [`neighbours::not_seen`] read so far (it only grows).
    neighbour_failures_not_seen: u64,
}

/// Turns a program load failure into an error whose message stays short; the verifier's log is
/// kept as the cause (shown under `--verbose`).
pub(crate) fn load_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("{io_error}").context(format!("the verifier said:\n{verifier_log}")),
        other => anyhow!(other),
    }
}

/// Loads a tracepoint program by name and attaches it to `group:name`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    group: &str,
    name: &str,
) -> Result<()> {
    let p: &mut aya::programs::TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the eBPF object has no {program} program"))?
        .try_into()
        .with_context(|| format!("{program} is not a tracepoint program"))?;
    p.load()
        .map_err(load_error)
        .with_context(|| format!("the kernel refused the probe on {group}:{name}"))?;
    p.attach(group, name)
        .with_context(|| format!("cannot attach a probe to {group}:{name}"))?;
    Ok(())
}

/// Loads a raw tracepoint program by name and attaches it to the tracepoint `name` (the kernel
/// hands such a program the tracepoint's arguments as they are).
pub(crate) fn attach_raw_tracepoint(ebpf: &mut Ebpf, program: &str, name: &str) -> Result<()> {
    let p: &mut aya::programs::RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the eBPF object has no {program} program"))?
        .try_into()
        .with_context(|| format!("{program} is not a raw tracepoint program"))?;
    p.load()
        .map_err(load_error)
        .with_context(|| format!("the kernel refused the probe on the {name} tracepoint"))?;
    p.attach(name)
        .with_context(|| format!("cannot attach a probe to the {name} tracepoint"))?;
    Ok(())
}

/// Reads a per-CPU hash (plain or LRU), merging each key's per-CPU values into one.
pub(crate) fn merge_per_cpu<K: Pod, V: Pod>(
    ebpf: &Ebpf,
    map: &str,
    merge: impl Fn(&PerCpuValues<V>) -> V,
) -> Result<Vec<(K, V)>> {
    let m = ebpf
        .map(map)
        .with_context(|| format!("the eBPF object has no {map} map"))?;
    let values: PerCpuHashMap<&MapData, K, V> =
        PerCpuHashMap::try_from(m).with_context(|| format!("{map} is not a per-CPU hash map"))?;
    let mut out = Vec::new();
    for item in values.iter() {
        let (key, per_cpu) = item.with_context(|| format!("reading {map} failed"))?;
        out.push((key, merge(&per_cpu)));
    }
    Ok(out)
}

/// Sums a per-CPU counting hash (`K` → u64 per CPU) into one figure per key.
pub(crate) fn sum_per_cpu<K: Pod>(ebpf: &Ebpf, map: &str) -> Result<Vec<(K, u64)>> {
    merge_per_cpu(ebpf, map, |per_cpu| per_cpu.iter().sum())
}

/// The latency features the tc programs run for these probes.
pub fn tc_features(probes: &[ProbeKind]) -> u32 {
    use nettools_common::latency::features;
    probes.iter().fold(0, |bits, p| {
        bits | match p {
            ProbeKind::Handshake => features::HANDSHAKE,
            ProbeKind::Dns => features::DNS,
            ProbeKind::Icmp => features::ICMP,
            ProbeKind::Transit => features::TRANSIT,
            _ => 0,
        }
    })
}

/// The maps only one probe's programs write, by probe. Hash maps are preallocated: each costs
/// its full size in locked kernel memory (per CPU for per-CPU maps) and its allocation at every
/// start, whether or not anything writes it.
const PROBE_MAPS: [(ProbeKind, &[&str]); 8] = [
    (ProbeKind::Drops, &["DROP_COUNTS"]),
    (
        ProbeKind::Retransmits,
        &["RETRANSMIT_FLOWS", "RETRANSMIT_TOTALS"],
    ),
    (
        ProbeKind::Neighbours,
        &["NEIGH_FAILURES", "NEIGH_FAILURE_TOTALS"],
    ),
    (ProbeKind::Handshake, &["HANDSHAKES"]),
    (ProbeKind::Dns, &["DNS_PENDING"]),
    (ProbeKind::Icmp, &["ICMP_PENDING"]),
    (ProbeKind::Transit, &["TRANSIT"]),
    (ProbeKind::Connections, &connections::MAPS),
];

/// Maps the tc programs write for every packet once they are attached (any probe on the veth).
const TC_MAPS: [&str; 4] = ["IF_SLOTS", "TRAFFIC_OVERFLOW", "NEIGH_PROBES", "TOO_BIG"];

/// Maps written only with stack traces on (`--stacks`).
const STACK_COUNT_MAPS: [&str; 2] = ["DROP_STACKS", "RETRANSMIT_STACKS"];

/// The maps nothing will write with these options: they get one entry each (a map with none
/// cannot be created). Without this a `--probes drops` run or a capture allocated all 26 MiB
/// of every probe's maps, and every start paid for allocating them.
fn unused_maps(opts: &LoadOptions) -> Vec<&'static str> {
    let wants = |p: ProbeKind| opts.probes.contains(&p);
    let mut unused: Vec<&'static str> = PROBE_MAPS
        .iter()
        .filter(|(probe, _)| !wants(*probe))
        .flat_map(|(_, maps)| maps.iter().copied())
        .collect();
    if !opts.probes.iter().any(|p| p.on_veth()) {
        unused.extend(TC_MAPS);
    }
    if !opts.stacks {
        unused.extend(STACK_COUNT_MAPS);
    }
    unused
}

/// Checks privileges, resolves this kernel's layouts for the selected probes and loads the
/// object (nothing attached yet).
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    load_capturing_drops(opts, 0)
}

/// [`load`], with the drop probe also sending up to `drop_bytes` bytes of each dropped packet
/// (`DropPacketEvent`s, for `nettools capture`; 0: none, and the copy is not even in the
/// program the kernel runs).
pub fn load_capturing_drops(opts: &LoadOptions, drop_bytes: u32) -> Result<Loaded> {
    preflight::require_privileges()?;
    let mut btf = btf::Btf::from_sys_fs()?;
    let (offsets, mut notes) = offsets::for_running_kernel(&mut btf)?;
    let reasons = drops::DropReasons::from_btf(&btf);
    let wants = |p: ProbeKind| opts.probes.contains(&p);
    let mut kfree = KfreeSkbLayout {
        not_drops: [nettools_common::config::ABSENT; 3],
        ..KfreeSkbLayout::default()
    };
    if wants(ProbeKind::Drops) {
        if !reasons.available() {
            notes.push(
                "this kernel does not name drop reasons (Linux < 5.17): drops are reported with \
                 location and stack, reason UNAVAILABLE"
                    .to_string(),
            );
        }
        let format = tracefs::format("skb", "kfree_skb").ok();
        kfree = drops::kfree_skb_layout(&btf, format.as_ref(), &reasons)?;
    }
    let (drop_bytes, drop_capture) = if drop_bytes != 0 && wants(ProbeKind::Drops) {
        let layout = drops::capture_layout(&mut btf, &offsets)
            .context("cannot capture dropped packets on this kernel")?;
        (drop_bytes, layout)
    } else {
        (0, nettools_common::drops::DropCapture::default())
    };
    let (mut retransmit, mut synack) = (RetransmitLayout::UNSET, RetransmitLayout::UNSET);
    if wants(ProbeKind::Retransmits) {
        retransmit = retransmits::layout(&tracefs::format("tcp", "tcp_retransmit_skb")?)?;
        match tracefs::format("tcp", "tcp_retransmit_synack") {
            Ok(f) => synack = retransmits::layout(&f)?,
            Err(e) => notes.push(format!("{e:#}: retransmitted SYN-ACKs are not counted")),
        }
        if offsets.tcp_cb_gso_segs == nettools_common::config::ABSENT {
            notes.push(
                "TCP segments per retransmitted skb are unknown on this kernel: each counts as one"
                    .into(),
            );
        }
    }
    if wants(ProbeKind::Neighbours) {
        notes.extend(neighbours::missing(&offsets));
    }
    let conns = if wants(ProbeKind::Connections) {
        connections::config(&mut btf, &mut notes)
    } else {
        nettools_common::connections::ConnectionsConfig::UNSET
    };
    preflight::raise_memlock();

    let filter = Filter {
        all: u32::from(opts.all_namespaces),
        _pad: 0,
    };
    // aya-log levels: 0 off … 4 debug.
    let log_level: u8 = if opts.kernel_debug { 4 } else { 0 };
    let slots = traffic_slots(opts.all_namespaces);
    let synthetic = synthetic_netns();
    let mut loader = EbpfLoader::new();
    for name in unused_maps(opts) {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(KFREE_SKB_GLOBAL, &kfree, true)
        .override_global(
            nettools_common::drops::DROP_CAPTURE_BYTES_GLOBAL,
            &drop_bytes,
            true,
        )
        .override_global(
            nettools_common::drops::DROP_CAPTURE_GLOBAL,
            &drop_capture,
            true,
        )
        .override_global(RETRANSMIT_GLOBAL, &retransmit, true)
        .override_global(SYNACK_GLOBAL, &synack, true)
        .override_global(SEND_RESET_GLOBAL, &conns.send_reset, true)
        .override_global(RECEIVE_RESET_GLOBAL, &conns.receive_reset, true)
        .override_global(SET_STATE_GLOBAL, &conns.set_state, true)
        .override_global(SOCK_GLOBAL, &conns.sock, true)
        .override_global(TCP_SOCK_GLOBAL, &conns.tcp, true)
        .override_global(RTT_GLOBAL, &conns.rtt, true)
        .override_global(FILTER_GLOBAL, &filter, true)
        .override_global(
            WAKEUP_BYTES_GLOBAL,
            &wakeup_bytes(opts.ring_buffer_bytes),
            true,
        )
        .override_global(FEATURES_GLOBAL, &tc_features(&opts.probes), true)
        .override_global(
            TRANSIT_MASK_GLOBAL,
            &((1u32 << opts.transit_sample_shift.min(16)) - 1),
            true,
        )
        .override_global(STACKS_GLOBAL, &u32::from(opts.stacks), true)
        .override_global(SYNTHETIC_NETNS_GLOBAL, &synthetic.unwrap_or(0), true)
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .map_max_entries("TRAFFIC", slots)
        // Without stacks the 16 MiB stack map is never written: keep one entry.
        .map_max_entries("STACKS", if opts.stacks { STACK_MAP_ENTRIES } else { 1 })
        .load(OBJECT)
        .context("loading nettools' eBPF object into this kernel failed")?;
    if synthetic.is_some() {
        load_synthetic(&mut ebpf)?;
    }
    let (release, _) = preflight::kernel_release();
    Ok(Loaded {
        ebpf,
        kernel: KernelInfo {
            release,
            drop_reasons: reasons,
            notes,
            connections: conns,
            reset_reasons: connections::reset_reasons(&btf),
        },
        tc: tc::Attachments::with_slots(slots),
        skipped_runs: 0,
        neighbour_entries_forgotten: 0,
        neighbour_baseline: None,
        neighbour_failures_not_seen: 0,
    })
}

/// Interfaces that get a counter slot of their own in `TRAFFIC` (the rest are counted in the
/// overflow hash): 1024 when every namespace is traced (the agent), 256 otherwise; fewer on a
/// machine with so many CPUs that the per-CPU array would pass 16 MiB (a slot is 256 bytes per
/// CPU).
pub fn traffic_slots(all_namespaces: bool) -> u32 {
    let wanted: u32 = if all_namespaces { 1024 } else { 256 };
    let cpus = aya::util::nr_cpus().unwrap_or(1).max(1) as u32;
    let fit =
        (16 << 20) / (cpus * std::mem::size_of::<nettools_common::traffic::SlotCounters>() as u32);
    wanted.min(fit.max(64))
}

/// The environment variable that makes nettools load the synthetic event source (for `cargo
/// xtask bench` only): the inode of the namespace its drop-shaped events are attributed to.
pub const SYNTHETIC_ENV: &str = "NETTOOLS_BENCH_SYNTHETIC_NETNS";

fn synthetic_netns() -> Option<u32> {
    std::env::var(SYNTHETIC_ENV).ok()?.parse().ok()
}

/// Loads (never attaches) `nettools_synthetic`, which the bench runs with `BPF_PROG_TEST_RUN` to
/// push events through the ring buffer faster than real drops can, and says its program id.
fn load_synthetic(ebpf: &mut Ebpf) -> Result<()> {
    let id = tc::program(ebpf, "nettools_synthetic")?
        .info()
        .context("cannot read the synthetic event source's program id")?
        .id();
    eprintln!("nettools: synthetic event source loaded as BPF program id {id} (for the bench)");
    Ok(())
}

/// How many bytes of events wait in the ring buffer before the collector is woken: a sixteenth
/// of it, so a burst is read in batches long before the buffer fills, while the collector's
/// short drain timer ([`crate::session::DRAIN_EVERY`]) picks up the rest.
pub fn wakeup_bytes(ring_buffer_bytes: u32) -> u64 {
    u64::from(ring_buffer_bytes / 16).max(1)
}

/// A numeric field of a `/proc/PID/fdinfo/FD` text (`name:\tvalue` lines).
pub(crate) fn fdinfo_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

impl Loaded {
    /// Reports events from this network namespace (by inode): in its entry of the
    /// direct-mapped `TRACED_NETNS_DIRECT` when that is free, in the `TRACED_NETNS` hash when
    /// another namespace holds it (what the kernel side's filter relies on).
    pub fn trace_netns(&mut self, inode: u32) -> Result<()> {
        use nettools_common::config::TRACED_NETNS_DIRECT_ENTRIES;
        let index = inode & (TRACED_NETNS_DIRECT_ENTRIES - 1);
        let mut direct: aya::maps::Array<&mut MapData, u32> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("TRACED_NETNS_DIRECT")
                .context("the eBPF object has no TRACED_NETNS_DIRECT map")?,
        )?;
        let held = direct
            .get(&index, 0)
            .context("cannot read the trace filter")?;
        if held == inode {
            return Ok(());
        }
        if held == 0 {
            return direct.set(index, inode, 0).with_context(|| {
                format!("cannot add network namespace {inode} to the trace filter")
            });
        }
        let mut map: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TRACED_NETNS")
                .context("the eBPF object has no TRACED_NETNS map")?,
        )?;
        map.insert(inode, 1, 0)
            .with_context(|| format!("cannot add network namespace {inode} to the trace filter"))
    }

    /// Attaches one tracepoint-based probe (tc is attached per interface with
    /// [`Loaded::attach_tc`]).
    pub fn attach(&mut self, probe: ProbeKind) -> Result<()> {
        match probe {
            ProbeKind::Drops => drops::attach(&mut self.ebpf),
            ProbeKind::Retransmits => retransmits::attach(&mut self.ebpf),
            ProbeKind::Neighbours => {
                neighbours::attach(&mut self.ebpf)?;
                self.neighbour_baseline = neighbours::baseline(&self.counters()?);
                Ok(())
            }
            ProbeKind::Connections => connections::attach(&mut self.ebpf, &self.kernel.connections),
            ProbeKind::Traffic
            | ProbeKind::Handshake
            | ProbeKind::Dns
            | ProbeKind::Icmp
            | ProbeKind::Transit => Ok(()),
        }
    }

    /// Attaches the tc programs to interfaces.
    pub fn attach_tc(&mut self, targets: &[tc::Target], mode: tc::Mode) -> Result<()> {
        tc::attach(&mut self.ebpf, &mut self.tc, targets, mode)
    }

    /// Loads every program without attaching it (the verifier's verdict, for `doctor`).
    pub fn verify_all(&mut self) -> Result<()> {
        for (name, program) in self.ebpf.programs_mut() {
            let result = match program {
                Program::TracePoint(p) => p.load(),
                Program::RawTracePoint(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                _ => Ok(()),
            };
            result
                .map_err(load_error)
                .with_context(|| format!("the kernel refused the program {name}"))?;
        }
        self.detach_all();
        Ok(())
    }

    /// Runs of nettools' programs the kernel skipped because a BPF program was already running
    /// on that CPU (a tracepoint firing in an interrupt while another program runs in the task
    /// it interrupted): the `recursion_misses` of each program's fdinfo (5.12 and later; 0
    /// where the kernel does not say). What such a run would have counted is missing from the
    /// counts, so the report says how many there were. Read while the programs are loaded; the
    /// last figure stays after [`Loaded::detach_all`].
    pub fn skipped_runs(&mut self) -> u64 {
        let sum: u64 = self
            .ebpf
            .programs()
            .filter_map(|(_, program)| program.fd().ok())
            .filter_map(|fd| {
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                    .ok()
            })
            .filter_map(|text| fdinfo_field(&text, "recursion_misses"))
            .sum();
        // The kernel's counts only grow while a program is loaded; unloaded ones read as 0.
        self.skipped_runs = self.skipped_runs.max(sum);
        self.skipped_runs
    }

    /// Neighbour failures the kernel's tables counted that the probe never saw (0 without the
    /// neighbour probe or where the tables cannot be read); never less than a previous read.
    /// `tables` ([`neighbours::tables_now`]) must have been read before the counters `c`.
    pub fn neighbour_failures_not_seen(
        &mut self,
        tables: Option<[u64; 2]>,
        c: &[u64; counters::COUNT as usize],
    ) -> u64 {
        if let (Some(base), Some(tables)) = (self.neighbour_baseline, tables) {
            self.neighbour_failures_not_seen = self
                .neighbour_failures_not_seen
                .max(neighbours::not_seen(&base, tables, c));
        }
        self.neighbour_failures_not_seen
    }

    /// Detaches and unloads every program, so nothing more is counted; the maps stay readable.
    pub fn detach_all(&mut self) {
        self.skipped_runs();
        // Tracepoints first: they detach at once, so drops, retransmits and resets stop being
        // counted when the trace ends; tc links take an RCU grace period each (about a second
        // for a few dozen veths), during which only traffic is still counted.
        for tc_pass in [false, true] {
            for (name, program) in self.ebpf.programs_mut() {
                let result = match program {
                    Program::TracePoint(p) if !tc_pass => p.unload(),
                    Program::RawTracePoint(p) if !tc_pass => p.unload(),
                    Program::SchedClassifier(p) if tc_pass => p.unload(),
                    _ => Ok(()),
                };
                match result {
                    Ok(()) | Err(ProgramError::NotLoaded) => {}
                    Err(e) => log::warn!("detaching {name} failed: {e}"),
                }
            }
        }
        self.tc.detached();
        tc::remove_created_qdiscs(&mut self.tc);
    }

    /// Takes the event ring buffer for the collector.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("the eBPF object has no EVENTS ring buffer")?;
        RingBuf::try_from(map).context("EVENTS is not a ring buffer")
    }

    /// The health counters, summed over CPUs, indexed by `nettools_common::counters`.
    pub fn counters(&self) -> Result<[u64; counters::COUNT as usize]> {
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("COUNTERS")
                .context("the eBPF object has no COUNTERS map")?,
        )?;
        let mut out = [0u64; counters::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = array
                .get(&(i as u32), 0)
                .context("reading the health counters failed")?
                .iter()
                .sum();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::fdinfo_field;

    #[test]
    fn reads_a_field_of_a_program_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t0\n\
                    run_cnt:\t0\nrecursion_misses:\t17\nverified_insns:\t812\n";
        assert_eq!(fdinfo_field(text, "recursion_misses"), Some(17));
        assert_eq!(fdinfo_field(text, "prog_type"), Some(5));
        assert_eq!(fdinfo_field(text, "missing"), None);
        assert_eq!(
            fdinfo_field("recursion_misses:\tmany\n", "recursion_misses"),
            None
        );
    }
}

//! Loading nettools' eBPF object into this kernel: resolve what differs between kernels (struct
//! offsets from BTF, tracepoint layouts from tracefs, drop-reason names), write it into the
//! object's globals, load, and attach the selected probes.

pub mod btf;
pub mod drops;
pub mod offsets;
pub mod tracefs;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{Program, ProgramError},
};
use nettools_common::{
    config::{FILTER_GLOBAL, Filter, KFREE_SKB_GLOBAL, OFFSETS_GLOBAL},
    counters,
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
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Drops => "drops",
        }
    }
}

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Report every network namespace instead of those added with [`Loaded::trace_netns`].
    pub all_namespaces: bool,
    /// Forward the kernel programs' debug messages (aya-log) to the log.
    pub kernel_debug: bool,
    /// Size of the event ring buffer in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
}

/// What was learnt about the running kernel while loading.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    pub release: String,
    pub drop_reasons: drops::DropReasons,
    /// Fields or features this kernel lacks, each a sentence for the report.
    pub notes: Vec<String>,
}

/// The loaded object and what it was configured with.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub kernel: KernelInfo,
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

/// Checks privileges, resolves this kernel's layouts and loads the object (nothing attached yet).
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    preflight::require_privileges()?;
    let mut btf = btf::Btf::from_sys_fs()?;
    let (offsets, mut notes) = offsets::for_running_kernel(&mut btf)?;
    let reasons = drops::DropReasons::from_btf(&btf);
    if !reasons.available() {
        notes.push(
            "this kernel does not name drop reasons (Linux < 5.17): drops are reported with \
             location and stack, reason UNAVAILABLE"
                .to_string(),
        );
    }
    let kfree = drops::kfree_skb_layout(&tracefs::format("skb", "kfree_skb")?, &reasons)?;
    preflight::raise_memlock();

    let filter = Filter {
        all: u32::from(opts.all_namespaces),
        _pad: 0,
    };
    // aya-log levels: 0 off … 4 debug.
    let log_level: u8 = if opts.kernel_debug { 4 } else { 0 };
    let ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(KFREE_SKB_GLOBAL, &kfree, true)
        .override_global(FILTER_GLOBAL, &filter, true)
        .override_global("AYA_LOG_LEVEL", &log_level, false)
        .map_max_entries("EVENTS", opts.ring_buffer_bytes)
        .load(OBJECT)
        .context("loading nettools' eBPF object into this kernel failed")?;
    let (release, _) = preflight::kernel_release();
    Ok(Loaded {
        ebpf,
        kernel: KernelInfo {
            release,
            drop_reasons: reasons,
            notes,
        },
    })
}

impl Loaded {
    /// Reports events from this network namespace (by inode).
    pub fn trace_netns(&mut self, inode: u32) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TRACED_NETNS")
                .context("the eBPF object has no TRACED_NETNS map")?,
        )?;
        map.insert(inode, 1, 0)
            .with_context(|| format!("cannot add network namespace {inode} to the trace filter"))
    }

    /// Attaches one probe.
    pub fn attach(&mut self, probe: ProbeKind) -> Result<()> {
        match probe {
            ProbeKind::Drops => drops::attach(&mut self.ebpf),
        }
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

    /// Detaches and unloads every program, so nothing more is counted; the maps stay readable.
    pub fn detach_all(&mut self) {
        for (name, program) in self.ebpf.programs_mut() {
            let result = match program {
                Program::TracePoint(p) => p.unload(),
                Program::RawTracePoint(p) => p.unload(),
                Program::SchedClassifier(p) => p.unload(),
                _ => Ok(()),
            };
            match result {
                Ok(()) | Err(ProgramError::NotLoaded) => {}
                Err(e) => log::warn!("detaching {name} failed: {e}"),
            }
        }
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

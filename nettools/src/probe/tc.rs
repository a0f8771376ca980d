//! Attaching the tc programs (`nettools_ingress`, `nettools_egress`) to interfaces: tcx links on
//! kernels that have them (Linux 6.6+; they vanish with the process, even on SIGKILL), netlink
//! clsact filters otherwise (removed on exit, and left-overs from a killed run are removed at the
//! next start). Plus reading what they counted.
//!
//! Each attached interface gets a slot in the per-CPU array `TRAFFIC` (written into the
//! direct-mapped `IF_SLOTS` table the programs look up by ifindex), so counting a packet takes
//! two array lookups; an interface without a slot (all taken, or its ifindex collides with
//! another's in `IF_SLOTS`) is counted in the `TRAFFIC_OVERFLOW` hash instead, as are rare
//! protocols. Reading gives the same figures either way.

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{self as aya_tc, NlOptions, TcAttachOptions},
    },
};
use nettools_common::traffic::{
    BUCKETS, EGRESS, IF_SLOTS_ENTRIES, INGRESS, IfSlot, NeighProbeKey, NeighProbeValue,
    SlotCounters, TooBigKey, TooBigValue, TrafficKey, TrafficValue,
};

use crate::preflight;

/// Program (and clsact filter) names.
pub const INGRESS_PROGRAM: &str = "nettools_ingress";
pub const EGRESS_PROGRAM: &str = "nettools_egress";

/// How tc programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// tcx where the kernel has it (6.6+), clsact otherwise.
    #[default]
    Auto,
    /// tcx links only.
    Tcx,
    /// netlink clsact filters (what kernels before 6.6 use).
    Clsact,
}

/// An interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub ifname: String,
    pub ifindex: u32,
    /// Traced directly (`--iface`): its own ARP/NDP requests leave on egress. A workload's
    /// host-side veth receives the workload's requests on ingress.
    pub direct: bool,
}

/// One interface with nettools' programs on both hooks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attached {
    pub ifname: String,
    pub ifindex: u32,
    /// `tcx` or `clsact`.
    pub mechanism: &'static str,
}

/// What is attached where.
#[derive(Debug, Default)]
pub struct Attachments {
    pub interfaces: Vec<Attached>,
    /// Left-over clsact filters of a previous, killed nettools that were removed.
    pub stale_removed: usize,
    /// The links of each interface (ifindex, program), to detach one interface's.
    links: Vec<(u32, &'static str, aya::programs::tc::SchedClassifierLinkId)>,
    /// Slot in `TRAFFIC` of each interface that has one, by ifindex.
    slots: std::collections::BTreeMap<u32, u32>,
    /// Slots `TRAFFIC` has (its size, set at load time).
    slot_count: u32,
    /// Interfaces whose clsact qdisc this process added (removed on exit when unused).
    created_clsact: std::collections::BTreeSet<u32>,
}

impl Attachments {
    /// No attachment yet; `slot_count` slots in `TRAFFIC`.
    pub fn with_slots(slot_count: u32) -> Self {
        Self {
            slot_count,
            ..Self::default()
        }
    }

    /// Called once the programs are detached. The list stays: it is what the trace covered,
    /// which the report names.
    pub fn detached(&mut self) {
        self.links.clear();
    }
}

/// Detaches the programs from one interface (one that is gone: the kernel already removed its
/// hooks, this closes the links nettools still holds) and forgets it, so the same ifindex is
/// attached again should it come back.
pub fn detach(ebpf: &mut Ebpf, atts: &mut Attachments, ifindex: u32) {
    let (ours, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut atts.links)
        .into_iter()
        .partition(|(i, _, _)| *i == ifindex);
    atts.links = rest;
    for (_, name, link) in ours {
        if let Ok(p) = program(ebpf, name)
            && let Err(e) = p.detach(link)
        {
            log::debug!("detaching {name} from ifindex {ifindex}: {e}");
        }
    }
    atts.interfaces.retain(|a| a.ifindex != ifindex);
    // A gone interface took its qdisc along.
    atts.created_clsact.remove(&ifindex);
    if atts.slots.remove(&ifindex).is_some()
        && let Err(e) = set_if_slot(ebpf, ifindex, IfSlot::default())
    {
        log::debug!("freeing the counter slot of ifindex {ifindex}: {e:#}");
    }
}

/// Index of an interface in `IF_SLOTS`.
fn if_slot_index(ifindex: u32) -> u32 {
    ifindex & (IF_SLOTS_ENTRIES - 1)
}

fn if_slots(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, IfSlot>> {
    Array::try_from(
        ebpf.map_mut("IF_SLOTS")
            .context("the eBPF object has no IF_SLOTS map")?,
    )
    .context("IF_SLOTS is not an array")
}

fn set_if_slot(ebpf: &mut Ebpf, ifindex: u32, entry: IfSlot) -> Result<()> {
    if_slots(ebpf)?
        .set(if_slot_index(ifindex), entry, 0)
        .context("cannot write IF_SLOTS")
}

/// Gives the interface a counter slot when one is free and its `IF_SLOTS` entry is not another
/// interface's; the slot's counters start from zero. Without a slot it is counted in the
/// overflow hash, exactly but at the cost of a hash lookup per packet.
fn assign_slot(ebpf: &mut Ebpf, atts: &mut Attachments, target: &Target) -> Result<()> {
    let ifindex = target.ifindex;
    if atts.slots.contains_key(&ifindex) {
        return Ok(());
    }
    let taken: std::collections::BTreeSet<u32> = atts.slots.values().copied().collect();
    let Some(slot) = (0..atts.slot_count).find(|s| !taken.contains(s)) else {
        log::info!(
            "all {} counter slots are taken: ifindex {ifindex} is counted in the overflow map",
            atts.slot_count
        );
        return Ok(());
    };
    let current = if_slots(ebpf)?
        .get(&if_slot_index(ifindex), 0)
        .context("cannot read IF_SLOTS")?;
    if current.ifindex != 0 && current.ifindex != ifindex {
        log::debug!(
            "ifindex {ifindex} shares its IF_SLOTS entry with ifindex {}: counted in the \
             overflow map",
            current.ifindex
        );
        return Ok(());
    }
    let mut traffic: PerCpuArray<&mut MapData, SlotCounters> = PerCpuArray::try_from(
        ebpf.map_mut("TRAFFIC")
            .context("the eBPF object has no TRAFFIC map")?,
    )
    .context("TRAFFIC is not a per-CPU array")?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let zero = PerCpuValues::try_from(vec![SlotCounters::default(); cpus])
        .context("cannot build per-CPU values")?;
    traffic
        .set(slot, zero, 0)
        .context("cannot reset a TRAFFIC slot")?;
    set_if_slot(
        ebpf,
        ifindex,
        IfSlot {
            ifindex,
            slot,
            own_requests: if target.direct { EGRESS } else { INGRESS },
            _pad: [0; 3],
        },
    )?;
    atts.slots.insert(ifindex, slot);
    Ok(())
}

/// Removes the clsact filters named like ours on an interface whose owner is gone (no process
/// holds their program, see [`super::clsact`]): left by a killed nettools, since a clsact filter,
/// unlike a tcx link, outlives its process. Filters of another running nettools stay. `held` is
/// filled on first need. Returns how many were removed.
pub fn remove_stale(ifindex: u32, held: &mut Option<std::collections::BTreeSet<u32>>) -> usize {
    let Ok(filters) = super::clsact::filters(ifindex) else {
        return 0;
    };
    let names = [INGRESS_PROGRAM, EGRESS_PROGRAM];
    if !filters
        .iter()
        .any(|f| names.iter().any(|n| f.name.starts_with(n)))
    {
        return 0;
    }
    let held = held.get_or_insert_with(super::clsact::held_programs);
    let mut removed = 0;
    for f in filters
        .iter()
        .filter(|f| super::clsact::stale(f, &names, held))
    {
        match super::clsact::remove(ifindex, f) {
            Ok(()) => removed += 1,
            Err(e) => log::warn!("{e:#}"),
        }
    }
    removed
}

/// Removes the clsact qdiscs this process created, where no filter is left on them (another
/// program's filters keep theirs).
pub fn remove_created_qdiscs(atts: &mut Attachments) {
    for ifindex in std::mem::take(&mut atts.created_clsact) {
        match super::clsact::filters(ifindex) {
            Ok(f) if f.is_empty() => {
                if let Err(e) = super::clsact::remove_qdisc(ifindex) {
                    log::debug!("{e:#}");
                }
            }
            Ok(f) => log::debug!(
                "the clsact qdisc nettools added to ifindex {ifindex} stays: {} filter(s) of others \
                 use it",
                f.len()
            ),
            Err(e) => log::debug!("{e:#}"),
        }
    }
}

/// The tc program `name`, loaded into the kernel if it is not yet.
pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not a tc program"))?;
    if p.fd().is_err() {
        p.load()
            .map_err(super::load_error)
            .with_context(|| format!("the kernel refused the tc program {name}"))?;
    }
    Ok(p)
}

/// Attaches both programs to every target.
pub fn attach(
    ebpf: &mut Ebpf,
    atts: &mut Attachments,
    targets: &[Target],
    mode: Mode,
) -> Result<()> {
    let (release, version) = preflight::kernel_release();
    let use_tcx = match mode {
        Mode::Auto => preflight::has_tcx(version),
        Mode::Tcx if !preflight::has_tcx(version) => bail!(
            "--tc-mode tcx needs Linux 6.6 or newer and this kernel is {release}: use \
             --tc-mode clsact (or auto, the default)"
        ),
        Mode::Tcx => true,
        Mode::Clsact => false,
    };
    let mut held = None;
    for t in targets {
        if atts.interfaces.iter().any(|a| a.ifindex == t.ifindex) {
            continue;
        }
        let stale = remove_stale(t.ifindex, &mut held);
        if stale > 0 {
            log::info!(
                "removed {stale} stale nettools clsact filter(s) from {}",
                t.ifname
            );
            atts.stale_removed += stale;
        }
        if !use_tcx && aya_tc::qdisc_add_clsact(&t.ifname).is_ok() {
            // Ours to remove on exit. It fails when the qdisc exists already, which is fine; a
            // real problem shows below.
            atts.created_clsact.insert(t.ifindex);
        }
        for (name, ty) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            let options = if use_tcx {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            } else {
                TcAttachOptions::Netlink(NlOptions::default())
            };
            let link = program(ebpf, name)?
                .attach_with_options(&t.ifname, ty, options)
                .with_context(|| {
                    format!(
                        "cannot attach nettools' tc program to {} ({})",
                        t.ifname,
                        if use_tcx { "tcx" } else { "clsact" }
                    )
                })?;
            atts.links.push((t.ifindex, name, link));
        }
        assign_slot(ebpf, atts, t)?;
        atts.interfaces.push(Attached {
            ifname: t.ifname.clone(),
            ifindex: t.ifindex,
            mechanism: if use_tcx { "tcx" } else { "clsact" },
        });
    }
    Ok(())
}

/// Packets and bytes per (interface, direction, protocol), summed over CPUs: the slots of the
/// attached interfaces and the overflow hash.
pub fn read_traffic(ebpf: &Ebpf, atts: &Attachments) -> Result<Vec<(TrafficKey, TrafficValue)>> {
    let mut out = super::merge_per_cpu(ebpf, "TRAFFIC_OVERFLOW", |per_cpu| -> TrafficValue {
        sum_values(per_cpu.iter())
    })?;
    let traffic: PerCpuArray<&MapData, SlotCounters> = PerCpuArray::try_from(
        ebpf.map("TRAFFIC")
            .context("the eBPF object has no TRAFFIC map")?,
    )
    .context("TRAFFIC is not a per-CPU array")?;
    for (&ifindex, &slot) in &atts.slots {
        let per_cpu = traffic
            .get(&slot, 0)
            .with_context(|| format!("reading the counters of ifindex {ifindex} failed"))?;
        out.extend(slot_figures(ifindex, per_cpu.iter()));
    }
    Ok(out)
}

fn sum_values<'a>(values: impl Iterator<Item = &'a TrafficValue>) -> TrafficValue {
    let mut sum = TrafficValue::default();
    for v in values {
        sum.packets += v.packets;
        sum.bytes += v.bytes;
    }
    sum
}

/// One interface's slot, summed over CPUs, as (key, value) pairs for the buckets it counted.
pub fn slot_figures<'a>(
    ifindex: u32,
    per_cpu: impl Iterator<Item = &'a SlotCounters> + Clone,
) -> Vec<(TrafficKey, TrafficValue)> {
    let mut out = Vec::new();
    for (d, direction) in [INGRESS, EGRESS].into_iter().enumerate() {
        for (b, &(class, l4_proto)) in BUCKETS.iter().enumerate() {
            let v = sum_values(per_cpu.clone().map(|c| &c.by_direction[d][b]));
            if v.packets > 0 {
                out.push((
                    TrafficKey {
                        ifindex,
                        direction,
                        class,
                        l4_proto,
                        _pad: 0,
                    },
                    v,
                ));
            }
        }
    }
    out
}

/// ICMP "fragmentation needed" / ICMPv6 "packet too big" messages per (interface, direction,
/// sender, destination), summed over CPUs, with the smallest MTU any CPU saw named.
pub fn read_too_big(ebpf: &Ebpf) -> Result<Vec<(TooBigKey, TooBigValue)>> {
    super::merge_per_cpu(ebpf, "TOO_BIG", |per_cpu| merge_too_big(per_cpu.iter()))
}

/// Sums the messages over CPUs; the MTU is the smallest named (0: none).
pub fn merge_too_big<'a>(values: impl Iterator<Item = &'a TooBigValue>) -> TooBigValue {
    let mut sum = TooBigValue::default();
    for v in values {
        sum.messages += v.messages;
        if v.mtu != 0 && (sum.mtu == 0 || v.mtu < sum.mtu) {
            sum.mtu = v.mtu;
        }
    }
    sum
}

/// ARP/NDP requests and replies per (interface, address), summed over CPUs.
pub fn read_neigh_probes(ebpf: &Ebpf) -> Result<Vec<(NeighProbeKey, NeighProbeValue)>> {
    super::merge_per_cpu(ebpf, "NEIGH_PROBES", |per_cpu| merge_probes(per_cpu.iter()))
}

/// Sums requests and replies over CPUs; the first request is the earliest, the last the latest.
pub fn merge_probes<'a>(values: impl Iterator<Item = &'a NeighProbeValue>) -> NeighProbeValue {
    let mut sum = NeighProbeValue::default();
    for v in values {
        for d in 0..2 {
            sum.requests[d] += v.requests[d];
            sum.replies[d] += v.replies[d];
        }
        if v.first_request_ns != 0
            && (sum.first_request_ns == 0 || v.first_request_ns < sum.first_request_ns)
        {
            sum.first_request_ns = v.first_request_ns;
        }
        sum.last_request_ns = sum.last_request_ns.max(v.last_request_ns);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_per_cpu_probe_counts() {
        let cpu = |requests: [u64; 2], replies: [u64; 2], first: u64, last: u64| NeighProbeValue {
            requests,
            replies,
            first_request_ns: first,
            last_request_ns: last,
        };
        let cpus = [
            cpu([2, 0], [0, 0], 50, 90),
            cpu([0, 0], [0, 1], 0, 0),
            cpu([1, 4], [0, 0], 20, 20),
        ];
        let m = merge_probes(cpus.iter());
        assert_eq!(
            (m.requests, m.replies, m.first_request_ns, m.last_request_ns),
            ([3, 4], [0, 1], 20, 90)
        );
    }
}

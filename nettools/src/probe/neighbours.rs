//! The neighbour probe's userspace side: attaching the raw tracepoint and reading the exact
//! failure counts.

use anyhow::Result;
use aya::Ebpf;
use nettools_common::{
    config::{ABSENT, KernelOffsets},
    neighbours::NeighbourKey,
};

/// Sentences for the neighbour fields this kernel lacks (the probe then reports nothing).
pub fn missing(o: &KernelOffsets) -> Vec<String> {
    let fields = [
        (o.neigh_dev, "neighbour.dev"),
        (o.neigh_nud_state, "neighbour.nud_state"),
        (o.neigh_primary_key, "neighbour.primary_key"),
        (o.neigh_tbl, "neighbour.tbl"),
        (o.neigh_table_family, "neigh_table.family"),
    ];
    fields
        .iter()
        .filter(|(off, _)| *off == ABSENT)
        .map(|(_, name)| {
            format!("this kernel's BTF lacks {name}: neighbour failures are not reported")
        })
        .collect()
}

/// Loads and attaches the `neigh_timer_handler` raw tracepoint.
pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    super::attach_raw_tracepoint(ebpf, "neigh_timer_handler", "neigh_timer_handler")
}

/// What the kernel counted: failures per (namespace, device, address) still in the LRU address
/// map, and the exact failures per namespace.
pub type Counts = (Vec<(NeighbourKey, u64)>, Vec<(u32, u64)>);

/// Reads [`Counts`].
pub fn read_counts(ebpf: &Ebpf) -> Result<Counts> {
    Ok((
        super::sum_per_cpu(ebpf, "NEIGH_FAILURES")?,
        super::sum_per_cpu(ebpf, "NEIGH_FAILURE_TOTALS")?,
    ))
}

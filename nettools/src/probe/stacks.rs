//! Kernel stacks recorded by the drop and retransmit probes (`STACKS` map), and their exact
//! per-stack counts (`DROP_STACKS`, `RETRANSMIT_STACKS`).

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, StackTraceMap},
};
use nettools_common::{drops::DropStackKey, retransmits::RetransmitStackKey};

/// Stack id → instruction pointers, innermost frame first.
pub type Stacks = HashMap<i32, Vec<u64>>;

/// Reads every stack the probes recorded.
pub fn read(ebpf: &Ebpf) -> Result<Stacks> {
    let map = ebpf
        .map("STACKS")
        .context("the eBPF object has no STACKS map")?;
    let traces: StackTraceMap<&MapData> =
        StackTraceMap::try_from(map).context("STACKS is not a stack trace map")?;
    let mut out = HashMap::new();
    for item in traces.iter() {
        let Ok((id, trace)) = item else {
            continue;
        };
        let frames: Vec<u64> = trace
            .frames()
            .iter()
            .map(|f| f.ip)
            .filter(|&ip| ip != 0)
            .collect();
        out.insert(id as i32, frames);
    }
    Ok(out)
}

/// Exact drops per (namespace, reason, stack).
pub fn drop_counts(ebpf: &Ebpf) -> Result<Vec<(DropStackKey, u64)>> {
    super::sum_per_cpu(ebpf, "DROP_STACKS")
}

/// Exact retransmitted segments per (namespace, stack).
pub fn retransmit_counts(ebpf: &Ebpf) -> Result<Vec<(RetransmitStackKey, u64)>> {
    super::sum_per_cpu(ebpf, "RETRANSMIT_STACKS")
}

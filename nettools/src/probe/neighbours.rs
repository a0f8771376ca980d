//! The neighbour probe's userspace side: attaching the raw tracepoint and reading the exact
//! failure counts.

use anyhow::Result;
use aya::Ebpf;
use nettools_common::{
    config::{ABSENT, KernelOffsets},
    counters,
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

/// Where the kernel's neighbour tables count, per family, the resolutions that ran out of
/// probes (`res_failed`): one table each for ARP and NDP, for every namespace, shown in the
/// host's namespace only.
const TABLE_STATS: [&str; 2] = ["/proc/net/stat/arp_cache", "/proc/net/stat/ndisc_cache"];

/// The kernel's `res_failed` and the probe's own count of failures it saw, per family (ARP,
/// NDP), at one moment: the start of what [`not_seen`] compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    kernel: [u64; 2],
    seen: [u64; 2],
}

/// `res_failed` summed over the CPU lines of a `/proc/net/stat/*_cache` text (hexadecimal
/// columns named by the first line); `None` when the text has no such column.
pub fn res_failed(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let column = lines
        .next()?
        .split_whitespace()
        .position(|c| c == "res_failed")?;
    Some(
        lines
            .filter_map(|l| l.split_whitespace().nth(column))
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .sum(),
    )
}

/// The tables' `res_failed` now, per family; `None` when they cannot be read (nettools runs
/// outside the host's network namespace, or /proc is not mounted).
fn kernel_res_failed() -> Option<[u64; 2]> {
    let mut out = [0; 2];
    for (slot, path) in out.iter_mut().zip(TABLE_STATS) {
        *slot = res_failed(&std::fs::read_to_string(path).ok()?)?;
    }
    Some(out)
}

/// The probe's own counts of failures seen, per family, from the health counters.
fn seen(c: &[u64; counters::COUNT as usize]) -> [u64; 2] {
    [
        c[counters::NEIGH_FAILED_SEEN_ARP as usize],
        c[counters::NEIGH_FAILED_SEEN_NDP as usize],
    ]
}

/// Takes the [`Baseline`] once the probe is attached (`None` where the tables cannot be read:
/// then nothing is compared). `c` is read before the tables, so a failure in between can only
/// make [`not_seen`] smaller, never raise a false alarm.
pub fn baseline(c: &[u64; counters::COUNT as usize]) -> Option<Baseline> {
    Some(Baseline {
        kernel: kernel_res_failed()?,
        seen: seen(c),
    })
}

/// The tables' counts now, for [`not_seen`]: read them before the probe's counters, for the
/// same reason as in [`baseline`].
pub fn tables_now() -> Option<[u64; 2]> {
    kernel_res_failed()
}

/// Neighbour failures the kernel's tables counted since `base` that the probe never saw, in
/// any namespace: the kernel did not run the program for them (on 6.18 whole timer batches
/// were seen to go by without a run or a `recursion_misses`), so the traced namespaces' totals
/// can be short by up to this many. A failure set by hand (`ip neigh change … nud failed`) is
/// counted here as well: it does not pass the timer the probe hooks.
pub fn not_seen(base: &Baseline, kernel: [u64; 2], c: &[u64; counters::COUNT as usize]) -> u64 {
    let seen = seen(c);
    (0..2)
        .map(|i| {
            kernel[i]
                .saturating_sub(base.kernel[i])
                .saturating_sub(seen[i].saturating_sub(base.seen[i]))
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::res_failed;

    #[test]
    fn res_failed_is_summed_over_cpus() {
        let text = "entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast\n\
                    00000002 00007595 0000be95 00000006   000c8215 00000cec 000069e3   00000000\n\
                    00000002 00006af5 000021f3 00000004   000babb8 00000bed 00006082   00000000\n";
        assert_eq!(res_failed(text), Some(0x69e3 + 0x6082));
        assert_eq!(res_failed("entries allocs\n1 2\n"), None);
        assert_eq!(res_failed(""), None);
    }
}

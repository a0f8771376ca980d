//! The neighbour probe: raw tracepoint `neigh_timer_handler(struct neighbour *n, int err)`.
//!
//! The plain tracepoint has no network namespace, so the raw one reads the `struct neighbour`
//! itself through BTF offsets: its state, address, family and device (hence namespace). An entry
//! seen in state FAILED after its timer ran out of probes is one address that never resolved.

use aya_ebpf::{
    EbpfContext as _,
    macros::{map, raw_tracepoint},
    maps::{LruPerCpuHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use nettools_common::{
    counters,
    event::kind,
    flow::{AF_INET, AF_INET6},
    neighbours::{NUD_FAILED, NeighbourEvent, NeighbourKey},
};

use crate::{
    kernel::{self, read},
    maps::{NETTOOLS_OFFSETS, add, bump, emit, header, is_traced},
};

/// Failures per (namespace, device, address): an LRU map, so that no workload can fill it for
/// all (one that probes thousands of addresses pushes out the oldest); exact per address while
/// an address is in it.
#[map]
static NEIGH_FAILURES: LruPerCpuHashMap<NeighbourKey, u64> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Exact failures per namespace (one entry per namespace, whatever it probes).
#[map]
static NEIGH_FAILURE_TOTALS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// `neigh_timer_handler`.
#[raw_tracepoint(tracepoint = "neigh_timer_handler")]
pub fn neigh_timer_handler(ctx: RawTracePointContext) -> i32 {
    let _ = handle(&ctx);
    0
}

fn handle(ctx: &RawTracePointContext) -> Option<()> {
    let o = NETTOOLS_OFFSETS.load();
    // SAFETY: raw tracepoint arguments are an array of u64; the first is the neighbour.
    let n = unsafe { *(ctx.as_ptr() as *const u64) } as *const u8;
    let state = read::<u8>(n, o.neigh_nud_state)?;
    if state != NUD_FAILED {
        return None;
    }
    let tbl = read::<*const u8>(n, o.neigh_tbl).unwrap_or(core::ptr::null());
    let family = read::<i32>(tbl, o.neigh_table_family).unwrap_or(0) as u8;
    // Every failure seen, in any namespace: userspace sets these against the tables' own
    // res_failed, so failures the kernel never ran this program for are counted, not lost.
    if family == AF_INET {
        bump(counters::NEIGH_FAILED_SEEN_ARP);
    } else if family == AF_INET6 {
        bump(counters::NEIGH_FAILED_SEEN_NDP);
    }
    let dev = read::<*const u8>(n, o.neigh_dev)?;
    let (netns, ifindex) = kernel::dev_netns(&o, dev);
    if !is_traced(netns) {
        return None;
    }
    let mut key = NeighbourKey {
        netns,
        ifindex,
        family,
        _pad: [0; 3],
        addr: [0; 16],
    };
    if family == AF_INET {
        let a = read::<[u8; 4]>(n, o.neigh_primary_key)?;
        key.addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        key.addr = read::<[u8; 16]>(n, o.neigh_primary_key)?;
    } else {
        return None;
    }
    if !add(&NEIGH_FAILURE_TOTALS, &netns, 1) {
        bump(counters::NEIGH_MAP_FULL);
    }
    if let Some(v) = NEIGH_FAILURES.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe { *v += 1 };
    } else if NEIGH_FAILURES.insert(&key, 1, 0).is_ok() {
        bump(counters::NEIGH_FAILURES_INSERTED);
    }
    emit(NeighbourEvent {
        header: header(kind::NEIGHBOUR_FAILED),
        key,
        dev: read::<[u8; 16]>(dev, o.dev_name).unwrap_or([0; 16]),
    });
    Some(())
}

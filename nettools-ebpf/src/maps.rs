//! Maps and load-time globals shared by every probe: the event ring buffer, the health counters,
//! the traced-namespace filter and the stack map.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, StackTrace},
};
use nettools_common::{
    config::{Filter, KernelOffsets},
    counters,
};

/// Rare events (drops, …) for userspace. Userspace sizes it at load time (`--ring-buffer`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 21, 0);

/// Health counters, indexed by `nettools_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Network namespace inodes to report on (value unused) unless `Filter::all` is set.
#[map]
pub static TRACED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Kernel stacks of drops, for locations and flame graphs.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Struct offsets for this kernel, written by userspace before load.
#[unsafe(no_mangle)]
pub static NETTOOLS_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::UNSET);

/// Which namespaces to report on, written by userspace before load.
#[unsafe(no_mangle)]
pub static NETTOOLS_FILTER: Global<Filter> = Global::new(Filter { all: 0, _pad: 0 });

/// Adds one to a health counter.
#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, only this CPU writes it, and programs do not preempt each other
        // on one CPU for the same map slot in a way that matters for a counter.
        unsafe { *slot += 1 };
    }
}

/// Adds `n` to this CPU's slot for `key` in a per-CPU counting hash, inserting it when new.
/// Returns false when the map is full.
#[inline(always)]
pub fn add<K>(map: &aya_ebpf::maps::PerCpuHashMap<K, u64>, key: &K, n: u64) -> bool {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe { *v += n };
        return true;
    }
    if map
        .insert(key, n, aya_ebpf::bindings::BPF_NOEXIST as u64)
        .is_ok()
    {
        return true;
    }
    // A racing insert on this CPU (then count into it), or a full map.
    match map.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: as above.
            unsafe { *v += n };
            true
        }
        None => false,
    }
}

/// Whether events in this network namespace are reported.
#[inline(always)]
pub fn is_traced(netns: u32) -> bool {
    NETTOOLS_FILTER.load().all != 0 || TRACED_NETNS.get_ptr(netns).is_some()
}

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
pub static STACKS: StackTrace = StackTrace::with_max_entries(4096, 0);

/// Struct offsets for this kernel, written by userspace before load.
#[unsafe(no_mangle)]
pub static NETTOOLS_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    skb_dev: u32::MAX,
    skb_sk: u32::MAX,
    skb_head: u32::MAX,
    skb_network_header: u32::MAX,
    skb_transport_header: u32::MAX,
    dev_ifindex: u32::MAX,
    dev_net: u32::MAX,
    sk_net: u32::MAX,
    net_inum: u32::MAX,
    _pad: 0,
});

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

/// Whether events in this network namespace are reported.
#[inline(always)]
pub fn is_traced(netns: u32) -> bool {
    NETTOOLS_FILTER.load().all != 0 || TRACED_NETNS.get_ptr(netns).is_some()
}

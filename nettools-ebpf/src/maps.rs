//! Maps and load-time globals shared by every probe: the event ring buffer (and how an event
//! is stamped and sent), the health counters, the traced-namespace filter and the stack map.

use aya_ebpf::{
    Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace, ring_buf::RingBufEntry},
};
use nettools_common::{
    config::{Filter, KernelOffsets, STACK_MAP_ENTRIES, TRACED_NETNS_DIRECT_ENTRIES},
    counters,
    event::EventHeader,
};

/// Rare events (drops, …) for userspace. Userspace sizes it at load time (`--ring-buffer`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 21, 0);

/// Health counters, indexed by `nettools_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Network namespace inodes to report on, unless `Filter::all` is set: each at
/// `inode & (TRACED_NETNS_DIRECT_ENTRIES - 1)`, so the filter that every drop on the host passes
/// through is one array lookup. Userspace keeps the rule that makes that exact: an inode is in
/// the [`TRACED_NETNS`] hash only when its entry here holds another inode.
#[map]
pub static TRACED_NETNS_DIRECT: Array<u32> =
    Array::with_max_entries(TRACED_NETNS_DIRECT_ENTRIES, 0);

/// Traced namespaces whose [`TRACED_NETNS_DIRECT`] entry another one holds (value unused).
#[map]
pub static TRACED_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Kernel stacks of drops and retransmits, for flame graphs and folded stacks (userspace keeps
/// one entry when nothing will read them).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Struct offsets for this kernel, written by userspace before load.
#[unsafe(no_mangle)]
pub static NETTOOLS_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::UNSET);

/// Which namespaces to report on, written by userspace before load.
#[unsafe(no_mangle)]
pub static NETTOOLS_FILTER: Global<Filter> = Global::new(Filter { all: 0, _pad: 0 });

/// The collector is woken when this many bytes of events wait in [`EVENTS`] (written by
/// userspace before load; 0 wakes it for every event). Userspace also drains the ring buffer on a
/// short timer, so a few events never wait long.
#[unsafe(no_mangle)]
pub static NETTOOLS_WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Whether drops and retransmits record their kernel stack (written by userspace before load).
/// Only flame graphs and folded stacks use them, and `cargo xtask bench` measured the stack walk
/// (`bpf_get_stackid`) at about 2.3 µs of the 2.5 µs a counted drop costs with it.
#[unsafe(no_mangle)]
pub static NETTOOLS_STACKS: Global<u32> = Global::new(1);

/// Whether to record kernel stacks.
#[inline(always)]
pub fn want_stacks() -> bool {
    NETTOOLS_STACKS.load() != 0
}

/// The kernel's monotonic clock.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// A header for an event of this kind, stamped now.
#[inline(always)]
pub fn header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now(),
    }
}

/// Sends one event to userspace, counting it in `EVENTS_LOST` when the ring buffer is full.
#[inline(always)]
pub fn emit<T: 'static>(event: T) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        bump(counters::EVENTS_LOST);
        return;
    };
    entry.write(event);
    submit(entry);
}

/// Sends an event that lives in map memory (a per-CPU scratch slot) without copying it onto
/// the stack, with the same wakeup rule as [`submit`].
#[inline(always)]
pub fn emit_ref<T: 'static>(event: &T) {
    let threshold = NETTOOLS_WAKEUP_BYTES.load();
    let flags = if threshold == 0 {
        0
    } else {
        let record = ((core::mem::size_of::<T>() as u64) + 8 + 7) & !7;
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64) + record;
        if waiting / threshold != waiting.saturating_sub(record) / threshold {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    };
    if EVENTS.output::<T>(event, flags).is_err() {
        bump(counters::EVENTS_LOST);
    }
}

/// Submits an event, waking the collector once per batch instead of once per event.
///
/// A wakeup is an irq_work (a self-IPI) and a wake-up of the collector's thread; `cargo xtask
/// bench` measured it at about 4 µs per event on a 2-core virtual machine, more than everything
/// else the tc programs do per packet. So an event wakes the collector only when it makes the
/// waiting bytes cross a multiple of [`NETTOOLS_WAKEUP_BYTES`].
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let threshold = NETTOOLS_WAKEUP_BYTES.load();
    if threshold == 0 {
        entry.submit(0);
        return;
    }
    // This record's share of the ring: an 8-byte header, rounded up to 8 bytes.
    let record = ((core::mem::size_of::<T>() as u64) + 8 + 7) & !7;
    // Bytes between the consumer and the producer, this record included.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if waiting / threshold != waiting.saturating_sub(record) / threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

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
    if NETTOOLS_FILTER.load().all != 0 {
        return true;
    }
    if netns == 0 {
        return false;
    }
    match TRACED_NETNS_DIRECT.get(netns & (TRACED_NETNS_DIRECT_ENTRIES - 1)) {
        Some(&held) if held == netns => true,
        // A free entry: no traced namespace maps here, so none is in the hash either.
        Some(&0) => false,
        _ => TRACED_NETNS.get_ptr(netns).is_some(),
    }
}

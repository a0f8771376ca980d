//! A synthetic source of drop-shaped events, for `cargo xtask bench` only: it measures the event
//! pipeline (ring buffer, decoding, aggregation) beyond the rate this machine can make real drops.
//!
//! A tc program that is never attached: nettools loads it next to the real probes, sharing their
//! ring buffer, when the bench sets `NETTOOLS_BENCH_SYNTHETIC_NETNS`, and the bench runs it with
//! `BPF_PROG_TEST_RUN` and `repeat`, each run sending one `DropEvent` through the same `emit` a
//! real drop uses. The flows cycle through 60 000 source ports and the locations through 16, so
//! the collector's tables fill as they would under a storm of many flows.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use nettools_common::{
    drops::{DropEvent, DropKey},
    event::kind,
    flow::{AF_INET, Flow},
};

use crate::maps::{emit, header};

/// The namespace the synthetic drops are attributed to (the one the bench names), written by
/// userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_SYNTHETIC_NETNS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// Events sent on each CPU, to vary the flows.
#[map]
static SYNTHETIC_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// One drop-shaped event per run.
#[classifier]
pub fn nettools_synthetic(_ctx: TcContext) -> i32 {
    let seq = match SYNTHETIC_SEQ.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe {
                *p = (*p).wrapping_add(1);
                *p
            }
        }
        None => 0,
    };
    let mut flow = Flow {
        family: AF_INET,
        l4_proto: 17,
        sport: 1 + (seq % 60_000) as u16,
        dport: 9000,
        ..Flow::default()
    };
    flow.saddr[..4].copy_from_slice(&[10, 241, 0, 1]);
    flow.daddr[..4].copy_from_slice(&[10, 241, 0, 2]);
    emit(DropEvent {
        header: header(kind::DROP),
        key: DropKey {
            netns: NETTOOLS_SYNTHETIC_NETNS.load(),
            reason: 2,
            location: 0xffff_ffff_8100_0000 + u64::from(seq & 15) * 0x40,
        },
        ifindex: 1,
        protocol: 0x0800,
        _pad: 0,
        stack_id: -1,
        _pad2: 0,
        flow,
    });
    TC_ACT_UNSPEC
}

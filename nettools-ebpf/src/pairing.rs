//! What the latency probes share: reversing a flow to find the request an answer belongs to,
//! the clock, and event headers.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use nettools_common::{event::EventHeader, flow::Flow, latency::role, traffic::INGRESS};

/// The flow of the answer to a request with this flow (source and destination swapped).
#[inline(always)]
pub fn reverse(f: &Flow) -> Flow {
    Flow {
        family: f.family,
        l4_proto: f.l4_proto,
        sport: f.dport,
        dport: f.sport,
        _pad: 0,
        saddr: f.daddr,
        daddr: f.saddr,
    }
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

/// The workload's role for a request seen in this direction: leaving the workload (host-side
/// ingress) means it asked.
#[inline(always)]
pub fn role_of(direction: u8) -> u8 {
    if direction == INGRESS {
        role::CLIENT
    } else {
        role::SERVER
    }
}

//! What the latency probes share: reversing a flow to find the request an answer belongs to,
//! and the pairing maps' request and answer steps.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use nettools_common::{
    flow::Flow,
    latency::{Pending, PendingKey, role},
    traffic::INGRESS,
};

use crate::maps::{bump, now};

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

/// Remembers a request (SYN, echo request) seen in `direction`; a repeat of one already waiting
/// only counts as another request. `inserted` is the counter of new entries.
#[inline(always)]
pub fn request(
    map: &LruHashMap<PendingKey, Pending>,
    key: &PendingKey,
    direction: u8,
    inserted: u32,
) {
    if let Some(pending) = map.get_ptr_mut(key) {
        // SAFETY: a map value; a lost increment under a race only undercounts repeats.
        unsafe { (*pending).requests += 1 };
        return;
    }
    let pending = Pending {
        ts_ns: now(),
        role: role_of(direction),
        _pad: [0; 3],
        requests: 1,
    };
    if map.insert(key, &pending, BPF_NOEXIST as u64).is_ok() {
        bump(inserted);
    }
}

/// Takes the request an answer belongs to out of the map (`None` when there is none, or when
/// someone else — a racing answer, userspace expiring it — took it first). `removed` is the
/// counter of entries the kernel removed.
#[inline(always)]
pub fn answer(
    map: &LruHashMap<PendingKey, Pending>,
    key: &PendingKey,
    removed: u32,
) -> Option<Pending> {
    // SAFETY: copied out at once.
    let pending = (unsafe { map.get(key) }).copied()?;
    map.remove(key).ok()?;
    bump(removed);
    Some(pending)
}

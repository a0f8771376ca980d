//! Transit through the host: a packet seen leaving one traced veth (host-side ingress) and then
//! entering another (host-side egress), keyed by what the bridge does not change (addresses,
//! ports, IP id or flow label, TCP sequence / UDP checksum / ICMP id and sequence), never by
//! skb address (which a clone or copy changes).

use aya_ebpf::{macros::map, maps::LruHashMap};
use nettools_common::{
    counters,
    event::kind,
    latency::{TransitEvent, TransitKey, TransitValue},
    traffic::INGRESS,
};

use crate::{
    maps::{bump, emit, header, now},
    packet::Packet,
};

/// Packets that left a traced workload and have not yet entered another.
#[map]
static TRANSIT: LruHashMap<TransitKey, TransitValue> = LruHashMap::with_max_entries(32768, 0);

/// Sampling: a packet is followed when `hash & mask == 0` (userspace sets the mask).
#[unsafe(no_mangle)]
static NETTOOLS_TRANSIT_MASK: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

#[inline(always)]
fn sampled(k: &TransitKey, mask: u32) -> bool {
    if mask == 0 {
        return true;
    }
    let word = |b: &[u8; 16], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut h = word(&k.flow.saddr, 0) ^ word(&k.flow.daddr, 0) ^ word(&k.flow.saddr, 12);
    h ^= ((k.flow.sport as u32) << 16) | k.flow.dport as u32;
    h ^= k.ip_id.rotate_left(7) ^ k.l4_tag.rotate_left(13);
    h = h.wrapping_mul(0x9e37_79b1);
    (h >> 16) & mask == 0
}

#[inline(always)]
pub fn on_packet(p: &Packet) {
    let key = TransitKey {
        flow: p.flow,
        ip_id: p.ip_id,
        l4_tag: p.l4_tag,
    };
    if !sampled(&key, NETTOOLS_TRANSIT_MASK.load()) {
        return;
    }
    if p.direction == INGRESS {
        let value = TransitValue {
            ts_ns: now(),
            ifindex: p.ifindex,
            _pad: 0,
        };
        if TRANSIT
            .insert(&key, &value, aya_ebpf::bindings::BPF_NOEXIST as u64)
            .is_ok()
        {
            bump(counters::TRANSIT_INSERTED);
        }
        return;
    }
    // SAFETY: copied out at once.
    let Some(seen) = (unsafe { TRANSIT.get(&key) }).copied() else {
        return;
    };
    if seen.ifindex == p.ifindex || TRANSIT.remove(&key).is_err() {
        return;
    }
    bump(counters::TRANSIT_REMOVED);
    emit(TransitEvent {
        header: header(kind::TRANSIT),
        from_ifindex: seen.ifindex,
        to_ifindex: p.ifindex,
        latency_ns: now().saturating_sub(seen.ts_ns),
    });
}

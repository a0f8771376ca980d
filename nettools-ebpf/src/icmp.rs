//! ICMP / ICMPv6 echo latency on the workload's veth: request → reply by id and sequence.

use aya_ebpf::{macros::map, maps::LruHashMap};
use nettools_common::{
    counters,
    event::kind,
    latency::{IcmpEvent, Pending, PendingKey},
};

use crate::{
    maps::{emit, header, now},
    packet::Packet,
    pairing::{self, reverse},
};

const ECHO_REQUEST: u16 = 8;
const ECHO_REPLY: u16 = 0;
const ECHOV6_REQUEST: u16 = 128;
const ECHOV6_REPLY: u16 = 129;

/// Echo requests waiting for their reply.
#[map]
static ICMP_PENDING: LruHashMap<PendingKey, Pending> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn on_packet(p: &Packet) {
    let ty = p.flow.sport;
    let (request, reply) = if p.flow.l4_proto == 1 {
        (ty == ECHO_REQUEST, ty == ECHO_REPLY)
    } else {
        (ty == ECHOV6_REQUEST, ty == ECHOV6_REPLY)
    };
    if !request && !reply {
        return;
    }
    // The key's flow has no ports: id and sequence identify the exchange.
    let mut flow = p.flow;
    flow.sport = 0;
    flow.dport = 0;
    let id = (p.l4_tag >> 16) as u16;
    let seq = p.l4_tag as u16;
    if request {
        let key = PendingKey {
            ifindex: p.ifindex,
            id,
            seq,
            flow,
        };
        pairing::request(&ICMP_PENDING, &key, p.direction, counters::ICMP_INSERTED);
        return;
    }
    let key = PendingKey {
        ifindex: p.ifindex,
        id,
        seq,
        flow: reverse(&flow),
    };
    let Some(pending) = pairing::answer(&ICMP_PENDING, &key, counters::ICMP_REMOVED) else {
        return;
    };
    let mut event_flow = key.flow;
    event_flow.sport = id;
    event_flow.dport = seq;
    emit(IcmpEvent {
        header: header(kind::ICMP),
        ifindex: p.ifindex,
        role: pending.role,
        _pad: [0; 3],
        latency_ns: now().saturating_sub(pending.ts_ns),
        flow: event_flow,
    });
}

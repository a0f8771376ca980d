//! TCP handshake latency on the workload's veth: SYN → SYN-ACK (or RST), paired in the kernel.
//!
//! A SYN leaving the workload is a connect (client role: its connect latency as the veth sees
//! it); a SYN entering it is an accept (server role: the workload's own answer time). The first
//! SYN's time is kept, so retransmitted SYNs show in the latency the application felt.

use aya_ebpf::{macros::map, maps::LruHashMap};
use nettools_common::{
    counters,
    event::kind,
    latency::{HandshakeEvent, Pending, PendingKey, outcome},
};

use crate::{
    maps::{emit, header, now},
    packet::Packet,
    pairing::{self, reverse},
};

const FIN_SYN_RST_ACK: u8 = 0x17;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const SYN_ACK: u8 = 0x12;

/// SYNs waiting for their answer.
#[map]
static HANDSHAKES: LruHashMap<PendingKey, Pending> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn on_tcp(p: &Packet) {
    let flags = p.tcp_flags & FIN_SYN_RST_ACK;
    if flags == SYN {
        let key = PendingKey {
            ifindex: p.ifindex,
            id: 0,
            seq: 0,
            flow: p.flow,
        };
        pairing::request(&HANDSHAKES, &key, p.direction, counters::HANDSHAKE_INSERTED);
    } else if flags == SYN_ACK || p.tcp_flags & RST != 0 {
        let key = PendingKey {
            ifindex: p.ifindex,
            id: 0,
            seq: 0,
            flow: reverse(&p.flow),
        };
        let Some(pending) = pairing::answer(&HANDSHAKES, &key, counters::HANDSHAKE_REMOVED) else {
            return;
        };
        emit(HandshakeEvent {
            header: header(kind::HANDSHAKE),
            ifindex: p.ifindex,
            role: pending.role,
            outcome: if flags == SYN_ACK {
                outcome::ANSWERED
            } else {
                outcome::RESET
            },
            _pad: 0,
            latency_ns: now().saturating_sub(pending.ts_ns),
            flow: key.flow,
            syns: pending.requests,
            _pad2: 0,
        });
    }
}

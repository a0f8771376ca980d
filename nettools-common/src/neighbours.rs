//! The neighbour probe: ARP/NDP entries that fail to resolve (`neigh_timer_handler`, raw
//! tracepoint, INCOMPLETE/PROBE → FAILED), counted exactly per namespace
//! (`NEIGH_FAILURE_TOTALS`) and per device and address (`NEIGH_FAILURES`, an LRU map: one
//! workload probing thousands of addresses pushes out its own oldest addresses, and everyone
//! else's failures still get an entry).

use crate::event::EventHeader;

/// `nud_state` value of a failed entry (`NUD_FAILED`).
pub const NUD_FAILED: u8 = 0x20;

/// Key of the in-kernel `NEIGH_FAILURES` LRU per-CPU hash (value: failures).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighbourKey {
    /// Network namespace of the device.
    pub netns: u32,
    /// Interface index of the device, in that namespace.
    pub ifindex: u32,
    /// `AF_INET` (ARP) or `AF_INET6` (NDP).
    pub family: u8,
    pub _pad: [u8; 3],
    /// The address that did not resolve (4 bytes for IPv4, 16 for IPv6), network byte order.
    pub addr: [u8; 16],
}

/// One neighbour entry that went to FAILED.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighbourEvent {
    pub header: EventHeader,
    pub key: NeighbourKey,
    /// Device name (NUL-padded).
    pub dev: [u8; 16],
}

crate::user_pod!(NeighbourKey, NeighbourEvent);

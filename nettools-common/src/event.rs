//! The header every ring-buffer event starts with, so userspace can tell the kinds apart.

/// Which event follows the header. Stored as a `u32` so the header stays aligned.
pub mod kind {
    /// A packet drop ([`crate::drops::DropEvent`]).
    pub const DROP: u32 = 1;
    /// A retransmitted TCP segment ([`crate::retransmits::RetransmitEvent`]).
    pub const RETRANSMIT: u32 = 2;
    /// A neighbour (ARP/NDP) entry that failed ([`crate::neighbours::NeighbourEvent`]).
    pub const NEIGHBOUR_FAILED: u32 = 3;
    /// A TCP handshake ([`crate::latency::HandshakeEvent`]).
    pub const HANDSHAKE: u32 = 4;
    /// A DNS response matched to its query ([`crate::latency::DnsEvent`]).
    pub const DNS: u32 = 5;
    /// An ICMP echo reply matched to its request ([`crate::latency::IcmpEvent`]).
    pub const ICMP: u32 = 6;
    /// A packet's transit through the host ([`crate::latency::TransitEvent`]).
    pub const TRANSIT: u32 = 7;
    /// A dropped packet's bytes, for `nettools capture` ([`crate::drops::DropPacketEvent`]).
    pub const DROP_PACKET: u32 = 30;
    /// A TCP reset sent or received ([`crate::connections::ResetEvent`]).
    pub const RESET: u32 = 20;
    /// An error reported on a socket ([`crate::connections::SocketErrorEvent`]).
    pub const SOCKET_ERROR: u32 = 21;
    /// A finished TCP connection ([`crate::connections::ConnectionEvent`]).
    pub const CONNECTION: u32 = 22;
    /// An RTT sample of an open TCP connection ([`crate::connections::RttSampleEvent`]).
    pub const RTT_SAMPLE: u32 = 23;
}

/// First field of every event sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was recorded.
    pub ts_ns: u64,
}

crate::user_pod!(EventHeader);

//! The latency probes, paired in the kernel on each workload's veth by the tc programs: TCP
//! handshakes (SYN → SYN-ACK), DNS queries (query → response by client, server and DNS id),
//! ICMP echo (request → reply) and transit through the host (a packet leaving one traced veth →
//! entering another). Only one sample per pair crosses the ring buffer.

use crate::{event::EventHeader, flow::Flow};

/// Bits of the `NETTOOLS_TC_FEATURES` global: which latency probes the tc programs run.
pub mod features {
    pub const HANDSHAKE: u32 = 1;
    pub const DNS: u32 = 2;
    pub const ICMP: u32 = 4;
    pub const TRANSIT: u32 = 8;
}

/// Name of the global holding the enabled [`features`].
pub const FEATURES_GLOBAL: &str = "NETTOOLS_TC_FEATURES";
/// Name of the global holding the transit sampling mask (a packet is sampled when
/// `hash & mask == 0`: 0 samples every packet, 15 one in 16).
pub const TRANSIT_MASK_GLOBAL: &str = "NETTOOLS_TRANSIT_MASK";

/// Who started the exchange, seen from the workload.
pub mod role {
    /// The workload sent the request (SYN, query, echo request) and waits for the answer.
    pub const CLIENT: u8 = 0;
    /// The workload received the request and answers it.
    pub const SERVER: u8 = 1;
}

/// How a handshake ended.
pub mod outcome {
    pub const ANSWERED: u8 = 0;
    /// Answered with a RST: nothing listens on that port (connection refused).
    pub const RESET: u8 = 1;
}

/// A request waiting for its answer, keyed by interface and the request's own flow
/// (source = the requester). Used by the handshake and ICMP pairing maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub ifindex: u32,
    /// ICMP: echo identifier and sequence (else 0).
    pub id: u16,
    pub seq: u16,
    pub flow: Flow,
}

/// When the request passed, and in which role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub ts_ns: u64,
    pub role: u8,
    pub _pad: [u8; 3],
    /// Requests seen for the same key (SYN or echo retransmissions).
    pub requests: u32,
}

/// A TCP handshake (or a refused connection).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeEvent {
    pub header: EventHeader,
    pub ifindex: u32,
    /// [`role::CLIENT`]: the workload connected out (connect latency as seen at its veth);
    /// [`role::SERVER`]: it accepted (its own answer time).
    pub role: u8,
    /// [`outcome::ANSWERED`] or [`outcome::RESET`].
    pub outcome: u8,
    pub _pad: u16,
    /// SYN → SYN-ACK (or RST), nanoseconds, from the first SYN.
    pub latency_ns: u64,
    /// The SYN's flow (source = the connecting side).
    pub flow: Flow,
    /// SYNs sent before the answer (1 unless retransmitted).
    pub syns: u32,
    pub _pad2: u32,
}

/// An ICMP / ICMPv6 echo answered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcmpEvent {
    pub header: EventHeader,
    pub ifindex: u32,
    pub role: u8,
    pub _pad: [u8; 3],
    pub latency_ns: u64,
    /// The request's flow (source = the pinging side); `sport` is the echo id, `dport` the
    /// sequence number.
    pub flow: Flow,
}

/// Bytes of a DNS message kept for userspace (enough for the header and the question).
pub const DNS_CAPTURE: usize = 256;

/// Transport of a DNS exchange.
pub mod dns_transport {
    pub const UDP: u8 = 17;
    pub const TCP: u8 = 6;
}

/// A DNS query waiting for its response.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsKey {
    pub ifindex: u32,
    /// DNS message id.
    pub id: u16,
    pub _pad: u16,
    /// The query's flow (client → server); `l4_proto` is the transport.
    pub flow: Flow,
}

/// The query's time and the start of its message (to name it if it is never answered).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsPending {
    pub ts_ns: u64,
    pub role: u8,
    pub _pad: u8,
    /// Bytes captured in `message`.
    pub len: u16,
    pub _pad2: u32,
    pub message: [u8; DNS_CAPTURE],
}

impl Default for DnsPending {
    fn default() -> Self {
        Self {
            ts_ns: 0,
            role: 0,
            _pad: 0,
            len: 0,
            _pad2: 0,
            message: [0; DNS_CAPTURE],
        }
    }
}

/// A DNS response matched to its query.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub header: EventHeader,
    pub key: DnsKey,
    pub latency_ns: u64,
    pub role: u8,
    pub _pad: u8,
    /// Bytes captured in `message` (the response, from its DNS header on).
    pub len: u16,
    pub _pad2: u32,
    pub message: [u8; DNS_CAPTURE],
}

impl Default for DnsEvent {
    fn default() -> Self {
        Self {
            header: EventHeader::default(),
            key: DnsKey::default(),
            latency_ns: 0,
            role: 0,
            _pad: 0,
            len: 0,
            _pad2: 0,
            message: [0; DNS_CAPTURE],
        }
    }
}

/// A packet seen leaving one traced veth, keyed by what does not change on the way through the
/// host (addresses, ports, IP id or TCP sequence), never by skb address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransitKey {
    pub flow: Flow,
    /// IPv4 id, or IPv6 flow label.
    pub ip_id: u32,
    /// TCP sequence number, or UDP checksum, or ICMP id/sequence.
    pub l4_tag: u32,
}

/// When and where a packet was seen leaving a workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransitValue {
    pub ts_ns: u64,
    pub ifindex: u32,
    pub _pad: u32,
}

/// A packet's time through the host from one traced veth to another.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransitEvent {
    pub header: EventHeader,
    /// Host-side veth it came out of (the sending workload's).
    pub from_ifindex: u32,
    /// Host-side veth it went into (the receiving workload's).
    pub to_ifindex: u32,
    pub latency_ns: u64,
}

crate::user_pod!(
    PendingKey,
    Pending,
    HandshakeEvent,
    IcmpEvent,
    DnsKey,
    DnsPending,
    DnsEvent,
    TransitKey,
    TransitValue,
    TransitEvent,
);

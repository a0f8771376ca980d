//! The tc programs on each workload's host-side veth (or a chosen interface): packets and bytes
//! per direction and protocol, and ARP/NDP requests with their answers.

/// tc hook direction: ingress of the attached interface.
pub const INGRESS: u8 = 0;
/// tc hook direction: egress of the attached interface.
pub const EGRESS: u8 = 1;

/// `TrafficKey::class` for packets that are neither IPv4, IPv6 nor ARP.
pub const CLASS_OTHER: u8 = 0;
/// `TrafficKey::class` for ARP.
pub const CLASS_ARP: u8 = 1;
/// `TrafficKey::class` for IPv4.
pub const CLASS_IPV4: u8 = 4;
/// `TrafficKey::class` for IPv6.
pub const CLASS_IPV6: u8 = 6;

/// Key of the in-kernel `TRAFFIC` per-CPU hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrafficKey {
    /// Interface the program is attached to.
    pub ifindex: u32,
    /// [`INGRESS`] or [`EGRESS`].
    pub direction: u8,
    /// [`CLASS_IPV4`], [`CLASS_IPV6`], [`CLASS_ARP`] or [`CLASS_OTHER`].
    pub class: u8,
    /// IP protocol (TCP 6, UDP 17, ICMP 1, ICMPv6 58, …) for IP packets, else 0.
    pub l4_proto: u8,
    pub _pad: u8,
}

/// Packets and bytes (whole frames, as the interface counts them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of the in-kernel `NEIGH_PROBES` LRU per-CPU hash: an address asked for on an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighProbeKey {
    pub ifindex: u32,
    /// `AF_INET` (ARP) or `AF_INET6` (NDP).
    pub family: u8,
    pub _pad: [u8; 3],
    /// The address asked for, network byte order (4 bytes used for IPv4).
    pub addr: [u8; 16],
}

/// Requests for an address and answers seen, by hook direction ([`INGRESS`], [`EGRESS`]),
/// with when the first and last request passed. Which direction counts depends on what the
/// interface is: on a workload's host-side veth its own requests arrive on ingress and their
/// answers leave on egress (requests flooded to it from others arrive on egress and are not its
/// own); on an interface traced directly it is the other way round.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighProbeValue {
    pub requests: [u64; 2],
    pub replies: [u64; 2],
    /// `bpf_ktime_get_ns()` of the first request seen on this CPU (0 when none).
    pub first_request_ns: u64,
    pub last_request_ns: u64,
}

crate::user_pod!(TrafficKey, TrafficValue, NeighProbeKey, NeighProbeValue);

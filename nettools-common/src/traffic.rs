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

/// Key of the in-kernel `TRAFFIC_OVERFLOW` per-CPU hash (interfaces without a slot, protocols
/// without a bucket), and of what userspace reads from both.
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

/// Protocols counted in an interface's slot without a hash lookup: bucket `i` holds
/// `(class, l4_proto) = BUCKETS[i]`. Other IP protocols (GRE, SCTP, IPv6 extension headers…) are
/// rare and go to the `TRAFFIC_OVERFLOW` hash, keyed by their real protocol number.
pub const BUCKETS: [(u8, u8); 8] = [
    (CLASS_OTHER, 0),
    (CLASS_ARP, 0),
    (CLASS_IPV4, 6),
    (CLASS_IPV4, 17),
    (CLASS_IPV4, 1),
    (CLASS_IPV6, 6),
    (CLASS_IPV6, 17),
    (CLASS_IPV6, 58),
];
/// Bucket of IPv4 TCP; the other IP buckets follow the order of [`BUCKETS`].
pub const BUCKET_IPV4_TCP: u32 = 2;
pub const BUCKET_IPV4_UDP: u32 = 3;
pub const BUCKET_IPV4_ICMP: u32 = 4;
pub const BUCKET_IPV6_TCP: u32 = 5;
pub const BUCKET_IPV6_UDP: u32 = 6;
pub const BUCKET_IPV6_ICMP: u32 = 7;
pub const BUCKET_ARP: u32 = 1;
pub const BUCKET_OTHER: u32 = 0;

/// One interface's counters, in the per-CPU array `TRAFFIC` at the interface's slot: by hook
/// direction ([`INGRESS`], [`EGRESS`]) and bucket ([`BUCKETS`]). One array entry per interface
/// keeps the per-packet path at two array lookups and userspace at one read per interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub by_direction: [[TrafficValue; 8]; 2],
}

/// An entry of `IF_SLOTS`, the direct-mapped table from an interface to its slot, indexed by
/// `ifindex & (IF_SLOTS_ENTRIES - 1)`. The entry holds the whole ifindex, so an interface whose
/// index collides with another's finds it is not its entry and counts into the overflow hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfSlot {
    /// The interface this entry belongs to (0: free).
    pub ifindex: u32,
    /// Its slot in `TRAFFIC`.
    pub slot: u32,
    /// The hook direction its own ARP/NDP requests pass ([`INGRESS`] on a workload's host-side
    /// veth, [`EGRESS`] on an interface traced directly): only those create a `NEIGH_PROBES`
    /// entry, not the requests of others the bridge floods to it.
    pub own_requests: u8,
    pub _pad: [u8; 3],
}

/// Entries of `IF_SLOTS` (a power of two: 512 KiB of kernel memory, shared by all CPUs).
pub const IF_SLOTS_ENTRIES: u32 = 65536;
/// Slots in `TRAFFIC` unless userspace sizes it otherwise at load time.
pub const DEFAULT_SLOTS: u32 = 256;

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

/// Key of the in-kernel `TOO_BIG` LRU per-CPU hash: ICMP "fragmentation needed" (type 3, code
/// 4) and ICMPv6 "packet too big" (type 2) messages that passed an interface, by hook direction,
/// who sent them (the outer source: the router whose next hop is too small) and where the packet
/// they are about was going (the quoted header's destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TooBigKey {
    pub ifindex: u32,
    /// [`INGRESS`] or [`EGRESS`].
    pub direction: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub _pad: [u8; 2],
    /// Network byte order (4 bytes used for IPv4).
    pub from: [u8; 16],
    pub to: [u8; 16],
}

/// How many such messages, and the smallest MTU they named (0: none named one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TooBigValue {
    pub messages: u64,
    pub mtu: u32,
    pub _pad: u32,
}

crate::user_pod!(
    TooBigKey,
    TooBigValue,
    TrafficKey,
    TrafficValue,
    SlotCounters,
    IfSlot,
    NeighProbeKey,
    NeighProbeValue
);

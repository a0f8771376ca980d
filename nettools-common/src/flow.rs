//! Addresses and ports of the packet an event is about.

/// `Flow::family` for IPv4 (`AF_INET`).
pub const AF_INET: u8 = 2;
/// `Flow::family` for IPv6 (`AF_INET6`).
pub const AF_INET6: u8 = 10;

/// The packet's IP addresses and, for TCP/UDP, ports (host byte order). For ICMP, `sport` holds
/// the type and `dport` the code. `family == 0` means the packet had no IP header we could read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    /// [`AF_INET`], [`AF_INET6`], or 0 when unknown.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, …).
    pub l4_proto: u8,
    /// Source port (or ICMP type).
    pub sport: u16,
    /// Destination port (or ICMP code).
    pub dport: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Source address: 4 bytes for IPv4 (rest zero), 16 for IPv6; network byte order.
    pub saddr: [u8; 16],
    /// Destination address, like `saddr`.
    pub daddr: [u8; 16],
}

crate::user_pod!(Flow);

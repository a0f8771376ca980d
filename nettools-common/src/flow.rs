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

/// The address of a flow endpoint (`raw` as in [`Flow::saddr`]); `None` for an unknown family.
pub fn ip(family: u8, raw: &[u8; 16]) -> Option<core::net::IpAddr> {
    match family {
        AF_INET => Some(core::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
        AF_INET6 => Some(core::net::Ipv6Addr::from(*raw).into()),
        _ => None,
    }
}

/// The address family of a TCP tracepoint record without a `family` field (5.10's
/// `tcp:tcp_retransmit_skb` and `tcp_retransmit_synack`), from its `saddr_v6` field: such
/// kernels store an IPv4 socket's addresses there IPv4-mapped (`::ffff:a.b.c.d`) as well as in
/// `saddr`. 0 when the field is empty.
pub fn family_from_v6_field(saddr_v6: &[u8; 16]) -> u8 {
    let mut zero = true;
    let mut prefix_zero = true;
    let mut i = 0;
    while i < 16 {
        if saddr_v6[i] != 0 {
            zero = false;
            if i < 10 {
                prefix_zero = false;
            }
        }
        i += 1;
    }
    if zero {
        0
    } else if prefix_zero && saddr_v6[10] == 0xff && saddr_v6[11] == 0xff {
        AF_INET
    } else {
        AF_INET6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_from_the_v6_address_field() {
        let mut mapped = [0u8; 16];
        mapped[10..].copy_from_slice(&[0xff, 0xff, 10, 233, 0, 2]);
        assert_eq!(family_from_v6_field(&mapped), AF_INET);
        let mut v6 = [0u8; 16];
        v6[..2].copy_from_slice(&[0xfd, 0x00]);
        v6[15] = 2;
        assert_eq!(family_from_v6_field(&v6), AF_INET6);
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        assert_eq!(family_from_v6_field(&loopback), AF_INET6);
        assert_eq!(family_from_v6_field(&[0; 16]), 0);
    }
}

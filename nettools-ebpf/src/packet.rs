//! Reading a packet's headers in the tc programs: direct packet access where the header lies in
//! the skb's linear part (the usual case: bounds checked against `data_end`, which the verifier
//! requires), a copy with `bpf_skb_load_bytes` where it does not. Offsets and sizes come from the
//! typed headers of `network-types`; the IP headers are never read as a whole, since their
//! `IpProto` enum field would be undefined behaviour for an unassigned protocol number: their
//! fields are read one by one at `offset_of!`.

use core::mem::{offset_of, size_of};

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use nettools_common::flow::{AF_INET, AF_INET6, Flow};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
/// Offset of the network header in an Ethernet frame.
pub const L3: usize = EthHdr::LEN;
/// Offset of the TCP flags byte in the TCP header (after the data offset byte).
const TCP_FLAGS: usize = 13;

/// A `T` (plain bytes: any bit pattern is valid) at `offset` from the start of the frame.
///
/// Both outcomes are fully defined values (zeros when the bytes are not there): an `Option`
/// built from an undefined payload lets LLVM spill an uninitialised register, which the verifier
/// refuses ("R4 !read_ok").
#[inline(always)]
pub fn at<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let (ok, value) = read::<T>(ctx, offset);
    ok.then_some(value)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> (bool, T) {
    let start = ctx.data();
    if start + offset + size_of::<T>() <= ctx.data_end() {
        // SAFETY: the bytes lie between data and data_end (checked just above, which is also the
        // check the verifier needs), and T is plain bytes read without alignment.
        return (true, unsafe {
            core::ptr::read_unaligned((start + offset) as *const T)
        });
    }
    // Not in the linear part (or past the end): copy it, if the packet has it at all.
    // SAFETY: T is plain bytes, for which all zeros is a valid value.
    let mut value: T = unsafe { core::mem::zeroed() };
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value`.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            (&raw mut value).cast(),
            size_of::<T>() as u32,
        )
    };
    if ret == 0 {
        (true, value)
    } else {
        // SAFETY: as above.
        (false, unsafe { core::mem::zeroed() })
    }
}

/// The byte at `offset`, of a header that has at least one more byte after it.
///
/// Read as two bytes: for a one-byte window LLVM turns `p + 1 <= data_end` into `p < data_end`,
/// which gives the verifier no range for a pointer with a variable offset ("invalid access to
/// packet"); a two-byte window keeps the `p + 2 <= data_end` form it can use.
#[inline(always)]
pub fn byte(ctx: &TcContext, offset: usize) -> Option<u8> {
    at::<[u8; 2]>(ctx, offset).map(|b| b[0])
}

#[inline(always)]
pub fn be16(ctx: &TcContext, offset: usize) -> Option<u16> {
    at::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

/// The frame's EtherType (0 when the frame is too short to have one).
#[inline(always)]
pub fn ethertype(ctx: &TcContext) -> u16 {
    be16(ctx, offset_of!(EthHdr, ether_type)).unwrap_or(0)
}

/// The L4 protocol of an IP packet and where its header starts; `first` is false for IPv4
/// fragments after the first (they carry no L4 header). Always fully initialised, never behind
/// an `Option`: a `None` leaves its payload undefined, LLVM may then copy those bytes through the
/// stack, and kernels before 5.12 refuse any read of an unwritten stack slot ("invalid read from
/// stack"), even one whose value is never used.
#[derive(Clone, Copy)]
pub struct L4 {
    /// False when the IP header could not be read (or is not the version it claims).
    pub valid: bool,
    pub proto: u8,
    pub offset: usize,
    pub first: bool,
}

impl L4 {
    const NONE: Self = Self {
        valid: false,
        proto: 0,
        offset: 0,
        first: false,
    };
}

/// Protocol and L4 offset of an IPv4 packet (not `valid` when the header is not IPv4).
///
/// Three small reads rather than one of the first ten bytes: with the array, LLVM left a register
/// undefined on the copy path and the verifier refused the program ("R5 !read_ok").
#[inline(always)]
pub fn ipv4_l4(ctx: &TcContext) -> L4 {
    let Some(vihl) = byte(ctx, L3 + offset_of!(Ipv4Hdr, vihl)) else {
        return L4::NONE;
    };
    let (Some(proto), Some(frags)) = (
        byte(ctx, L3 + offset_of!(Ipv4Hdr, proto)),
        be16(ctx, L3 + offset_of!(Ipv4Hdr, frags)),
    ) else {
        return L4::NONE;
    };
    if vihl >> 4 != 4 {
        return L4::NONE;
    }
    L4 {
        valid: true,
        proto,
        offset: L3 + ((vihl & 0xf) as usize) * 4,
        first: frags & 0x1fff == 0,
    }
}

/// Protocol (the next header) and L4 offset of an IPv6 packet.
#[inline(always)]
pub fn ipv6_l4(ctx: &TcContext) -> L4 {
    let (Some(vcf), Some(proto)) = (
        byte(ctx, L3 + offset_of!(Ipv6Hdr, vcf)),
        byte(ctx, L3 + offset_of!(Ipv6Hdr, next_hdr)),
    ) else {
        return L4::NONE;
    };
    if vcf >> 4 != 6 {
        return L4::NONE;
    }
    L4 {
        valid: true,
        proto,
        offset: L3 + Ipv6Hdr::LEN,
        first: true,
    }
}

/// Source and destination port of a TCP or UDP header at `l4` (the same place in both).
#[inline(always)]
pub fn ports(ctx: &TcContext, l4: usize) -> Option<(u16, u16)> {
    let p = at::<[u8; 4]>(ctx, l4 + offset_of!(TcpHdr, source))?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// The TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
#[inline(always)]
pub fn tcp_flags(ctx: &TcContext, l4: usize) -> Option<u8> {
    byte(ctx, l4 + TCP_FLAGS)
}

/// What the latency probes need to know about a packet, parsed once.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    pub ifindex: u32,
    /// [`nettools_common::traffic::INGRESS`] or `EGRESS`.
    pub direction: u8,
    /// Addresses, protocol and ports (ICMP: type and code).
    pub flow: Flow,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// Bytes of L4 payload, from the IP header's length (0 when unknown).
    pub payload_len: u32,
    /// Offset of the L4 payload.
    pub payload_off: usize,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub tcp_flags: u8,
    /// TCP sequence number.
    pub tcp_seq: u32,
    /// IPv4 id or IPv6 flow label.
    pub ip_id: u32,
    /// UDP checksum or ICMP id/sequence: what tells two packets of one flow apart.
    pub l4_tag: u32,
}

/// Parses the IP and L4 headers of a frame whose network header is `ethertype` and whose L4
/// header is `l4` (from [`ipv4_l4`] / [`ipv6_l4`]).
#[inline(always)]
pub fn parse(
    ctx: &TcContext,
    ifindex: u32,
    direction: u8,
    ethertype: u16,
    l4: L4,
) -> Option<Packet> {
    let mut p = Packet {
        ifindex,
        direction,
        ..Packet::default()
    };
    p.flow.l4_proto = l4.proto;
    let total: u32;
    if ethertype == ETH_P_IP {
        p.flow.family = AF_INET;
        let addrs = at::<[u8; 8]>(ctx, L3 + offset_of!(Ipv4Hdr, src_addr))?;
        p.flow.saddr[..4].copy_from_slice(&addrs[..4]);
        p.flow.daddr[..4].copy_from_slice(&addrs[4..]);
        p.ip_id = u32::from(be16(ctx, L3 + offset_of!(Ipv4Hdr, id))?);
        if !l4.first {
            return Some(p);
        }
        let ihl = (l4.offset - L3) as u32;
        total = u32::from(be16(ctx, L3 + offset_of!(Ipv4Hdr, tot_len))?).saturating_sub(ihl);
    } else {
        p.flow.family = AF_INET6;
        p.flow.saddr = at::<[u8; 16]>(ctx, L3 + offset_of!(Ipv6Hdr, src_addr))?;
        p.flow.daddr = at::<[u8; 16]>(ctx, L3 + offset_of!(Ipv6Hdr, dst_addr))?;
        let vcf = at::<[u8; 4]>(ctx, L3 + offset_of!(Ipv6Hdr, vcf))?;
        p.ip_id = u32::from_be_bytes([0, vcf[1] & 0xf, vcf[2], vcf[3]]);
        total = u32::from(be16(ctx, L3 + offset_of!(Ipv6Hdr, payload_len))?);
    }
    p.l4_off = l4.offset;
    match l4.proto {
        IPPROTO_TCP => {
            let t = at::<TcpHdr>(ctx, l4.offset)?;
            p.flow.sport = u16::from_be_bytes(t.source);
            p.flow.dport = u16::from_be_bytes(t.dest);
            p.tcp_seq = u32::from_be_bytes(t.seq);
            p.tcp_flags = tcp_flags(ctx, l4.offset)?;
            let doff = u32::from(t.doff()) * 4;
            p.payload_off = l4.offset + doff as usize;
            p.payload_len = total.saturating_sub(doff);
            p.l4_tag = p.tcp_seq;
        }
        IPPROTO_UDP => {
            let u = at::<UdpHdr>(ctx, l4.offset)?;
            p.flow.sport = u16::from_be_bytes(u.src);
            p.flow.dport = u16::from_be_bytes(u.dst);
            p.payload_off = l4.offset + UdpHdr::LEN;
            p.payload_len = u32::from(u16::from_be_bytes(u.len)).saturating_sub(UdpHdr::LEN as u32);
            p.l4_tag = u32::from(u16::from_be_bytes(u.check));
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type, code, checksum, then the echo id and sequence.
            let i = at::<[u8; 8]>(ctx, l4.offset)?;
            p.flow.sport = u16::from(i[0]);
            p.flow.dport = u16::from(i[1]);
            p.l4_tag = u32::from_be_bytes([i[4], i[5], i[6], i[7]]);
            p.payload_off = l4.offset + 8;
        }
        _ => {}
    }
    Some(p)
}

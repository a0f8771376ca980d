//! Reading kernel structs through offsets that userspace resolved from this kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so every field access goes through
//! `bpf_probe_read_kernel` at `base + offset`, where the offset is a load-time global. A field the
//! kernel lacks has offset `ABSENT` and reads as `None`.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use nettools_common::{
    config::{ABSENT, KernelOffsets},
    flow::{AF_INET, AF_INET6, Flow},
};
use network_types::{ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::maps::NETTOOLS_OFFSETS;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// `skb->transport_header` value meaning "not set".
const HEADER_UNSET: u16 = 0xffff;

/// Reads a `T` at `base + offset`, or `None` when the field is absent or unreadable.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() || offset == ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Reads a field of a tracepoint record at an offset taken from its tracefs format.
#[inline(always)]
pub fn field<T>(ctx: &aya_ebpf::programs::TracePointContext, offset: u32) -> Option<T> {
    use aya_ebpf::EbpfContext as _;
    read::<T>(ctx.as_ptr().cast::<u8>().cast_const(), offset)
}

/// Namespace inode of a `struct net *`.
#[inline(always)]
fn net_inum(o: &KernelOffsets, net: *const u8) -> u32 {
    read::<u32>(net, o.net_inum).unwrap_or(0)
}

/// Namespace inode and ifindex of a `struct net_device *` (zeros when unreadable).
#[inline(always)]
pub fn dev_netns(o: &KernelOffsets, dev: *const u8) -> (u32, u32) {
    let net = read::<*const u8>(dev, o.dev_net).unwrap_or(core::ptr::null());
    (
        net_inum(o, net),
        read::<u32>(dev, o.dev_ifindex).unwrap_or(0),
    )
}

/// Namespace inode of a `struct sock *` (0 when unreadable).
#[inline(always)]
pub fn sk_netns(o: &KernelOffsets, sk: *const u8) -> u32 {
    let net = read::<*const u8>(sk, o.sk_net).unwrap_or(core::ptr::null());
    net_inum(o, net)
}

/// The network namespace a packet belongs to (0 when unreadable), with as few reads as possible:
/// this runs for every drop on the host, traced or not.
///
/// The receiving socket (`rx_sk`, where the tracepoint has it) and the owning socket come first:
/// for packets queued on a UDP socket `skb->dev` is reused as scratch space and is not a device.
/// Otherwise the device's namespace is the packet's.
#[inline(always)]
pub fn skb_netns(o: &KernelOffsets, skb: *const u8, rx_sk: *const u8) -> u32 {
    if !rx_sk.is_null() {
        let ns = sk_netns(o, rx_sk);
        if ns != 0 {
            return ns;
        }
    }
    let sk = read::<*const u8>(skb, o.skb_sk).unwrap_or(core::ptr::null());
    if !sk.is_null() {
        let ns = sk_netns(o, sk);
        if ns != 0 {
            return ns;
        }
    }
    let dev = read::<*const u8>(skb, o.skb_dev).unwrap_or(core::ptr::null());
    dev_netns(o, dev).0
}

/// The ifindex of the packet's device when the device is in the packet's namespace `netns`
/// (0 otherwise: a socket's packet may carry scratch data where the device pointer would be).
#[inline(always)]
pub fn skb_ifindex(o: &KernelOffsets, skb: *const u8, netns: u32) -> u32 {
    let dev = read::<*const u8>(skb, o.skb_dev).unwrap_or(core::ptr::null());
    let (dev_ns, ifindex) = dev_netns(o, dev);
    if dev_ns == netns { ifindex } else { 0 }
}

/// Addresses and ports of the packet, from the headers at `skb->head + skb->network_header`.
/// Returns an empty flow (family 0) when the packet has no IP header we can trust.
#[inline(always)]
pub fn skb_flow(skb: *const u8, ethertype: u16) -> Flow {
    let mut flow = Flow::default();
    let o = NETTOOLS_OFFSETS.load();
    let Some(head) = read::<*const u8>(skb, o.skb_head) else {
        return flow;
    };
    let Some(nh) = read::<u16>(skb, o.skb_network_header) else {
        return flow;
    };
    let th = read::<u16>(skb, o.skb_transport_header).unwrap_or(HEADER_UNSET);
    let l3 = head.wrapping_add(nh as usize);
    let (l4_proto, l4) = match ethertype {
        ETH_P_IP => {
            let Some(ip) = read::<Ipv4Hdr>(l3, 0) else {
                return flow;
            };
            // The byte after the header must really be an IPv4 header (the network header
            // offset is not always set when a packet dies early).
            if ip.vihl >> 4 != 4 || ip.vihl & 0xf < 5 {
                return flow;
            }
            flow.family = AF_INET;
            flow.saddr[..4].copy_from_slice(&ip.src_addr);
            flow.daddr[..4].copy_from_slice(&ip.dst_addr);
            // SAFETY: `proto` is a byte; read it as one so no enum validity is assumed.
            let proto = read::<u8>(l3, 9).unwrap_or(0);
            let frag_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
            if frag_offset != 0 {
                // Not the first fragment: no L4 header here.
                flow.l4_proto = proto;
                return flow;
            }
            let l4 = if th != HEADER_UNSET && th > nh {
                head.wrapping_add(th as usize)
            } else {
                l3.wrapping_add(((ip.vihl & 0xf) as usize) * 4)
            };
            (proto, l4)
        }
        ETH_P_IPV6 => {
            let Some(ip) = read::<Ipv6Hdr>(l3, 0) else {
                return flow;
            };
            if ip.vcf[0] >> 4 != 6 {
                return flow;
            }
            flow.family = AF_INET6;
            flow.saddr = ip.src_addr;
            flow.daddr = ip.dst_addr;
            let proto = read::<u8>(l3, 6).unwrap_or(0);
            (proto, l3.wrapping_add(Ipv6Hdr::LEN))
        }
        _ => return flow,
    };
    flow.l4_proto = l4_proto;
    match l4_proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if let Some(ports) = read::<[u8; 4]>(l4, 0) {
                flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
                flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if let Some(tc) = read::<[u8; 2]>(l4, 0) {
                flow.sport = tc[0] as u16;
                flow.dport = tc[1] as u16;
            }
        }
        _ => {}
    }
    flow
}

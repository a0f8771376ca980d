//! tc programs for each traced workload's host-side veth (or an interface given by name):
//! packets and bytes per direction and protocol, and ARP/NDP requests with their answers, so
//! that addresses nobody answers show up even before the kernel gives up on them; and the
//! packets the latency probes pair.
//!
//! A program runs for every packet of every traced workload, so its common path is short: the
//! headers are read in place ([`crate::packet`]), the counters live in a per-CPU array at the
//! interface's slot (two array lookups, no hash), no clock is read, and a packet no enabled
//! probe needs — a TCP segment without SYN or RST off port 53, a UDP datagram off port 53, an
//! ICMP message that is not an echo — leaves after being counted. They only observe: both
//! always return `TC_ACT_UNSPEC` (tcx: next program; clsact: continue).

use core::mem::offset_of;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use nettools_common::{
    counters,
    flow::{AF_INET, AF_INET6},
    latency::features,
    traffic::{
        BUCKET_ARP, BUCKET_IPV4_ICMP, BUCKET_IPV4_TCP, BUCKET_IPV4_UDP, BUCKET_IPV6_ICMP,
        BUCKET_IPV6_TCP, BUCKET_IPV6_UDP, BUCKET_OTHER, CLASS_ARP, CLASS_IPV4, CLASS_IPV6,
        CLASS_OTHER, DEFAULT_SLOTS, IF_SLOTS_ENTRIES, INGRESS, IfSlot, NeighProbeKey,
        NeighProbeValue, SlotCounters, TooBigKey, TooBigValue, TrafficKey, TrafficValue,
    },
};

use crate::{
    dns, handshake, icmp,
    maps::bump,
    packet::{
        self, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, L3, L4,
    },
    transit,
};
use network_types::{
    arp::ArpHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

/// Which latency probes run ([`features`] bits), written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_TC_FEATURES: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Length of the ICMP and ICMPv6 headers before the quoted packet of an error.
const ICMP_ERROR_HEADER: usize = 8;
const TCP_SYN_RST: u8 = 0x06;
const DNS_PORT: u16 = 53;

/// Packets and bytes of each attached interface, at the slot userspace gave it (userspace sizes
/// the array at load time).
#[map]
static TRAFFIC: PerCpuArray<SlotCounters> = PerCpuArray::with_max_entries(DEFAULT_SLOTS, 0);

/// Interface → slot in [`TRAFFIC`], direct-mapped by `ifindex & (IF_SLOTS_ENTRIES - 1)`.
#[map]
static IF_SLOTS: Array<IfSlot> = Array::with_max_entries(IF_SLOTS_ENTRIES, 0);

/// Packets of interfaces without a slot (their index collides with another's, or every slot is
/// taken) and of IP protocols without a bucket, by (interface, direction, protocol).
#[map]
static TRAFFIC_OVERFLOW: PerCpuHashMap<TrafficKey, TrafficValue> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// ARP/NDP requests and answers per (interface, address asked for).
#[map]
static NEIGH_PROBES: LruPerCpuHashMap<NeighProbeKey, NeighProbeValue> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

/// ICMP "fragmentation needed" and ICMPv6 "packet too big" messages per (interface, direction,
/// sender, destination of the packet too big).
#[map]
static TOO_BIG: LruPerCpuHashMap<TooBigKey, TooBigValue> =
    LruPerCpuHashMap::with_max_entries(1024, 0);

/// Ingress of the attached interface (for a host-side veth: what the workload sends).
#[classifier]
pub fn nettools_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, INGRESS);
    TC_ACT_UNSPEC
}

/// Egress of the attached interface (for a host-side veth: what the workload receives).
#[classifier]
pub fn nettools_egress(ctx: TcContext) -> i32 {
    observe(&ctx, nettools_common::traffic::EGRESS);
    TC_ACT_UNSPEC
}

/// No bucket: the packet is counted in the overflow hash.
const NO_BUCKET: u32 = 8;

/// The counting bucket of an IP packet's protocol ([`NO_BUCKET`]: the overflow hash).
#[inline(always)]
fn ip_bucket(v6: bool, proto: u8) -> u32 {
    match (v6, proto) {
        (false, IPPROTO_TCP) => BUCKET_IPV4_TCP,
        (false, IPPROTO_UDP) => BUCKET_IPV4_UDP,
        (false, IPPROTO_ICMP) => BUCKET_IPV4_ICMP,
        (true, IPPROTO_TCP) => BUCKET_IPV6_TCP,
        (true, IPPROTO_UDP) => BUCKET_IPV6_UDP,
        (true, IPPROTO_ICMPV6) => BUCKET_IPV6_ICMP,
        _ => NO_BUCKET,
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: u8) {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = u64::from(ctx.len());
    let ethertype = packet::ethertype(ctx);
    let (class, v6) = match ethertype {
        ETH_P_IP => (CLASS_IPV4, false),
        ETH_P_IPV6 => (CLASS_IPV6, true),
        ETH_P_ARP => {
            count(ifindex, direction, BUCKET_ARP, CLASS_ARP, 0, len);
            arp(ctx, ifindex, direction);
            return;
        }
        _ => {
            count(ifindex, direction, BUCKET_OTHER, CLASS_OTHER, 0, len);
            return;
        }
    };
    let l4 = if v6 {
        packet::ipv6_l4(ctx)
    } else {
        packet::ipv4_l4(ctx)
    };
    count(
        ifindex,
        direction,
        ip_bucket(v6, l4.proto),
        class,
        l4.proto,
        len,
    );
    if !l4.valid {
        return;
    }
    if v6 && l4.proto == IPPROTO_ICMPV6 {
        ndp(ctx, ifindex, direction, l4.offset);
    }
    if l4.first && (l4.proto == IPPROTO_ICMP || l4.proto == IPPROTO_ICMPV6) {
        too_big(ctx, ifindex, direction, v6, l4.offset);
    }

    let enabled = NETTOOLS_TC_FEATURES.load();
    if enabled == 0 || (enabled & features::TRANSIT == 0 && !wanted(ctx, enabled, l4)) {
        return;
    }
    let Some(p) = packet::parse(ctx, ifindex, direction, ethertype, l4) else {
        return;
    };
    if enabled & features::HANDSHAKE != 0 && p.flow.l4_proto == IPPROTO_TCP {
        handshake::on_tcp(&p);
    }
    if enabled & features::DNS != 0
        && (p.flow.dport == DNS_PORT || p.flow.sport == DNS_PORT)
        && (p.flow.l4_proto == IPPROTO_UDP || p.flow.l4_proto == IPPROTO_TCP)
    {
        dns::on_packet(ctx, &p);
    }
    if enabled & features::ICMP != 0
        && (p.flow.l4_proto == IPPROTO_ICMP || p.flow.l4_proto == IPPROTO_ICMPV6)
    {
        icmp::on_packet(&p);
    }
    if enabled & features::TRANSIT != 0 {
        transit::on_packet(&p);
    }
}

/// Whether an enabled latency probe (other than transit, which wants every packet) needs this
/// packet: a SYN, SYN-ACK or RST for the handshake probe, anything to or from port 53 for DNS,
/// an echo request or reply for ICMP. Everything else has been counted and is done.
#[inline(always)]
fn wanted(ctx: &TcContext, enabled: u32, l4: L4) -> bool {
    if !l4.first {
        return false;
    }
    match l4.proto {
        IPPROTO_TCP => {
            if enabled & features::HANDSHAKE != 0
                && packet::tcp_flags(ctx, l4.offset).is_some_and(|f| f & TCP_SYN_RST != 0)
            {
                return true;
            }
            enabled & features::DNS != 0 && on_dns_port(ctx, l4.offset)
        }
        IPPROTO_UDP => enabled & features::DNS != 0 && on_dns_port(ctx, l4.offset),
        IPPROTO_ICMP => {
            enabled & features::ICMP != 0
                && packet::byte(ctx, l4.offset)
                    .is_some_and(|t| t == ICMP_ECHO || t == ICMP_ECHO_REPLY)
        }
        IPPROTO_ICMPV6 => {
            enabled & features::ICMP != 0
                && packet::byte(ctx, l4.offset)
                    .is_some_and(|t| t == ICMPV6_ECHO || t == ICMPV6_ECHO_REPLY)
        }
        _ => false,
    }
}

#[inline(always)]
fn on_dns_port(ctx: &TcContext, l4: usize) -> bool {
    packet::ports(ctx, l4).is_some_and(|(s, d)| s == DNS_PORT || d == DNS_PORT)
}

/// Counts a packet: in its interface's slot when it has one and the protocol has a bucket, in
/// the overflow hash otherwise.
#[inline(always)]
fn count(ifindex: u32, direction: u8, bucket: u32, class: u8, l4_proto: u8, len: u64) {
    if bucket < NO_BUCKET
        && let Some(entry) = IF_SLOTS.get(ifindex & (IF_SLOTS_ENTRIES - 1))
        && entry.ifindex == ifindex
        && let Some(slot) = TRAFFIC.get_ptr_mut(entry.slot)
    {
        // SAFETY: this CPU's entry of a per-CPU array; both indices are masked into range.
        unsafe {
            let v = &mut (*slot).by_direction[(direction & 1) as usize][(bucket & 7) as usize];
            v.packets += 1;
            v.bytes += len;
        }
        return;
    }
    count_overflow(ifindex, direction, class, l4_proto, len);
}

/// The overflow hash's share of [`count`], rare enough to be a function of its own (a BPF
/// subprogram) rather than inlined into every call site of the per-packet path.
#[inline(never)]
fn count_overflow(ifindex: u32, direction: u8, class: u8, l4_proto: u8, len: u64) {
    let key = TrafficKey {
        ifindex,
        direction,
        class,
        l4_proto,
        _pad: 0,
    };
    if let Some(v) = TRAFFIC_OVERFLOW.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += len;
        }
    } else if TRAFFIC_OVERFLOW
        .insert(
            &key,
            &TrafficValue {
                packets: 1,
                bytes: len,
            },
            0,
        )
        .is_err()
    {
        bump(counters::TC_MAP_FULL);
    }
}

/// ARP: requests for an address (not gratuitous ones) and replies from it.
#[inline(always)]
fn arp(ctx: &TcContext, ifindex: u32, direction: u8) {
    let Some(arp) = packet::at::<ArpHdr>(ctx, L3) else {
        return;
    };
    let op = u16::from_be_bytes(arp.oper);
    let mut addr = [0u8; 16];
    if op == ARPOP_REQUEST && arp.spa != arp.tpa {
        addr[..4].copy_from_slice(&arp.tpa);
        record(ifindex, AF_INET, addr, true, direction);
    } else if op == ARPOP_REPLY {
        addr[..4].copy_from_slice(&arp.spa);
        record(ifindex, AF_INET, addr, false, direction);
    }
}

/// NDP: neighbour solicitations (not duplicate address detection) and advertisements; `icmp`
/// is the ICMPv6 header's offset.
#[inline(always)]
fn ndp(ctx: &TcContext, ifindex: u32, direction: u8, icmp: usize) {
    let Some(ty) = packet::byte(ctx, icmp) else {
        return;
    };
    if ty != ND_NEIGHBOR_SOLICIT && ty != ND_NEIGHBOR_ADVERT {
        return;
    }
    // The target address follows the 4-byte header and 4 reserved bytes.
    let Some(target) = packet::at::<[u8; 16]>(ctx, icmp + 8) else {
        return;
    };
    if ty == ND_NEIGHBOR_SOLICIT {
        // DAD probes come from the unspecified address: not a lookup.
        let Some(src) = packet::at::<[u8; 16]>(ctx, L3 + offset_of!(Ipv6Hdr, src_addr)) else {
            return;
        };
        if src != [0u8; 16] {
            record(ifindex, AF_INET6, target, true, direction);
        }
    } else {
        record(ifindex, AF_INET6, target, false, direction);
    }
}

/// Counts an ICMP "fragmentation needed" or ICMPv6 "packet too big" at `icmp` (the ICMP header's
/// offset), with its sender, the destination of the packet it quotes and the MTU it names.
#[inline(always)]
fn too_big(ctx: &TcContext, ifindex: u32, direction: u8, v6: bool, icmp: usize) {
    let Some(h) = packet::at::<[u8; 8]>(ctx, icmp) else {
        return;
    };
    let mtu = if v6 {
        if h[0] != ICMPV6_PACKET_TOO_BIG {
            return;
        }
        u32::from_be_bytes([h[4], h[5], h[6], h[7]])
    } else {
        if h[0] != ICMP_DEST_UNREACH || h[1] != ICMP_FRAG_NEEDED {
            return;
        }
        u32::from(u16::from_be_bytes([h[6], h[7]]))
    };
    let quoted = icmp + ICMP_ERROR_HEADER;
    let mut key = TooBigKey {
        ifindex,
        direction,
        family: if v6 { AF_INET6 } else { AF_INET },
        ..Default::default()
    };
    if v6 {
        let (Some(from), Some(to)) = (
            packet::at::<[u8; 16]>(ctx, L3 + offset_of!(Ipv6Hdr, src_addr)),
            packet::at::<[u8; 16]>(ctx, quoted + offset_of!(Ipv6Hdr, dst_addr)),
        ) else {
            return;
        };
        key.from = from;
        key.to = to;
    } else {
        let (Some(from), Some(to)) = (
            packet::at::<[u8; 4]>(ctx, L3 + offset_of!(Ipv4Hdr, src_addr)),
            packet::at::<[u8; 4]>(ctx, quoted + offset_of!(Ipv4Hdr, dst_addr)),
        ) else {
            return;
        };
        key.from[..4].copy_from_slice(&from);
        key.to[..4].copy_from_slice(&to);
    }
    if let Some(v) = TOO_BIG.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe {
            (*v).messages += 1;
            if mtu != 0 && ((*v).mtu == 0 || mtu < (*v).mtu) {
                (*v).mtu = mtu;
            }
        }
        return;
    }
    let value = TooBigValue {
        messages: 1,
        mtu,
        _pad: 0,
    };
    if TOO_BIG.insert(&key, &value, 0).is_err() {
        bump(counters::TC_MAP_FULL);
    }
}

/// Counts an ARP/NDP request for `addr` or a reply from it. Only a request in the direction the
/// interface's own requests pass creates an entry (where the interface has a slot and so a known
/// direction): the requests of other workloads that the bridge floods to every veth, and replies,
/// only add to entries that exist. Without that, every flooded lookup left an entry on every
/// veth of the node.
#[inline(always)]
fn record(ifindex: u32, family: u8, addr: [u8; 16], request: bool, direction: u8) {
    let key = NeighProbeKey {
        ifindex,
        family,
        _pad: [0; 3],
        addr,
    };
    let d = if direction == INGRESS { 0 } else { 1 };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = NEIGH_PROBES.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe {
            if request {
                (*v).requests[d] += 1;
                if (*v).first_request_ns == 0 {
                    (*v).first_request_ns = now;
                }
                (*v).last_request_ns = now;
            } else {
                (*v).replies[d] += 1;
            }
        }
        return;
    }
    if !request {
        return;
    }
    if let Some(entry) = IF_SLOTS.get(ifindex & (IF_SLOTS_ENTRIES - 1))
        && entry.ifindex == ifindex
        && entry.own_requests != direction
    {
        return;
    }
    let mut value = NeighProbeValue::default();
    value.requests[d] = 1;
    value.first_request_ns = now;
    value.last_request_ns = now;
    if NEIGH_PROBES.insert(&key, &value, 0).is_ok() {
        bump(counters::NEIGH_PROBES_INSERTED);
    } else {
        bump(counters::TC_MAP_FULL);
    }
}

//! tc programs for each traced workload's host-side veth (or an interface given by name):
//! packets and bytes per direction and protocol, and ARP/NDP requests with their answers, so
//! that addresses nobody answers show up even before the kernel gives up on them.
//!
//! They only observe: both always return `TC_ACT_UNSPEC` (tcx: next program; clsact: continue).

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{LruPerCpuHashMap, PerCpuHashMap},
    programs::TcContext,
};
use nettools_common::{
    counters,
    flow::{AF_INET, AF_INET6, Flow},
    latency::features,
    traffic::{
        CLASS_ARP, CLASS_IPV4, CLASS_IPV6, CLASS_OTHER, EGRESS, INGRESS, NeighProbeKey,
        NeighProbeValue, TrafficKey, TrafficValue,
    },
};

use crate::{dns, handshake, icmp, maps::bump, transit};

/// Which latency probes run ([`features`] bits), written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_TC_FEATURES: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Packets and bytes per (interface, direction, protocol).
#[map]
static TRAFFIC: PerCpuHashMap<TrafficKey, TrafficValue> = PerCpuHashMap::with_max_entries(8192, 0);

/// ARP/NDP requests and answers per (interface, address asked for).
#[map]
static NEIGH_PROBES: LruPerCpuHashMap<NeighProbeKey, NeighProbeValue> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

/// Ingress of the attached interface (for a host-side veth: what the workload sends).
#[classifier]
pub fn nettools_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, INGRESS);
    TC_ACT_UNSPEC
}

/// Egress of the attached interface (for a host-side veth: what the workload receives).
#[classifier]
pub fn nettools_egress(ctx: TcContext) -> i32 {
    observe(&ctx, EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn be16(ctx: &TcContext, offset: usize) -> Option<u16> {
    ctx.load::<[u8; 2]>(offset).ok().map(u16::from_be_bytes)
}

/// What the latency probes need to know about a packet, parsed once.
#[derive(Clone, Copy, Default)]
pub struct Packet {
    pub ifindex: u32,
    /// [`INGRESS`] or [`EGRESS`].
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

/// Parses the IP and L4 headers of an Ethernet frame.
#[inline(always)]
fn parse(ctx: &TcContext, ifindex: u32, direction: u8, ethertype: u16) -> Option<Packet> {
    let mut p = Packet {
        ifindex,
        direction,
        ..Packet::default()
    };
    let l3 = ETH_HLEN;
    let total: u32;
    if ethertype == ETH_P_IP {
        let ip = ctx.load::<[u8; 20]>(l3).ok()?;
        if ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((ip[0] & 0xf) as usize) * 4;
        p.flow.family = AF_INET;
        p.flow.l4_proto = ip[9];
        p.flow.saddr[..4].copy_from_slice(&ip[12..16]);
        p.flow.daddr[..4].copy_from_slice(&ip[16..20]);
        p.ip_id = u16::from_be_bytes([ip[4], ip[5]]) as u32;
        // Fragments after the first carry no L4 header.
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
            return Some(p);
        }
        p.l4_off = l3 + ihl;
        total = (u16::from_be_bytes([ip[2], ip[3]]) as u32).saturating_sub(ihl as u32);
    } else if ethertype == ETH_P_IPV6 {
        let ip = ctx.load::<[u8; 40]>(l3).ok()?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        p.flow.family = AF_INET6;
        p.flow.l4_proto = ip[6];
        p.flow.saddr.copy_from_slice(&ip[8..24]);
        p.flow.daddr.copy_from_slice(&ip[24..40]);
        p.ip_id = u32::from_be_bytes([0, ip[1] & 0xf, ip[2], ip[3]]);
        p.l4_off = l3 + 40;
        total = u16::from_be_bytes([ip[4], ip[5]]) as u32;
    } else {
        return None;
    }
    match p.flow.l4_proto {
        IPPROTO_TCP => {
            let t = ctx.load::<[u8; 20]>(p.l4_off).ok()?;
            p.flow.sport = u16::from_be_bytes([t[0], t[1]]);
            p.flow.dport = u16::from_be_bytes([t[2], t[3]]);
            p.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            p.tcp_flags = t[13];
            let doff = ((t[12] >> 4) as u32) * 4;
            p.payload_off = p.l4_off + doff as usize;
            p.payload_len = total.saturating_sub(doff);
            p.l4_tag = p.tcp_seq;
        }
        IPPROTO_UDP => {
            let u = ctx.load::<[u8; 8]>(p.l4_off).ok()?;
            p.flow.sport = u16::from_be_bytes([u[0], u[1]]);
            p.flow.dport = u16::from_be_bytes([u[2], u[3]]);
            p.payload_off = p.l4_off + 8;
            p.payload_len = (u16::from_be_bytes([u[4], u[5]]) as u32).saturating_sub(8);
            p.l4_tag = u16::from_be_bytes([u[6], u[7]]) as u32;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let i = ctx.load::<[u8; 8]>(p.l4_off).ok()?;
            p.flow.sport = i[0] as u16;
            p.flow.dport = i[1] as u16;
            p.l4_tag = u32::from_be_bytes([i[4], i[5], i[6], i[7]]);
            p.payload_off = p.l4_off + 8;
        }
        _ => {}
    }
    Some(p)
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: u8) {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let mut key = TrafficKey {
        ifindex,
        direction,
        class: CLASS_OTHER,
        l4_proto: 0,
        _pad: 0,
    };
    let ethertype = be16(ctx, 12).unwrap_or(0);
    match ethertype {
        ETH_P_IP => {
            key.class = CLASS_IPV4;
            key.l4_proto = ctx.load::<u8>(ETH_HLEN + 9).unwrap_or(0);
        }
        ETH_P_IPV6 => {
            key.class = CLASS_IPV6;
            key.l4_proto = ctx.load::<u8>(ETH_HLEN + 6).unwrap_or(0);
            if key.l4_proto == IPPROTO_ICMPV6 {
                ndp(ctx, ifindex, direction);
            }
        }
        ETH_P_ARP => {
            key.class = CLASS_ARP;
            arp(ctx, ifindex, direction);
        }
        _ => {}
    }
    let len = ctx.len() as u64;
    if let Some(v) = TRAFFIC.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe {
            (*v).packets += 1;
            (*v).bytes += len;
        }
    } else if TRAFFIC
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

    let enabled = NETTOOLS_TC_FEATURES.load();
    if enabled == 0 || (key.class != CLASS_IPV4 && key.class != CLASS_IPV6) {
        return;
    }
    let Some(p) = parse(ctx, ifindex, direction, ethertype) else {
        return;
    };
    if enabled & features::HANDSHAKE != 0 && p.flow.l4_proto == IPPROTO_TCP {
        handshake::on_tcp(&p);
    }
    if enabled & features::DNS != 0
        && (p.flow.dport == 53 || p.flow.sport == 53)
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

/// ARP: requests for an address (not gratuitous ones) and replies from it.
#[inline(always)]
fn arp(ctx: &TcContext, ifindex: u32, direction: u8) {
    let Some(op) = be16(ctx, ETH_HLEN + 6) else {
        return;
    };
    let (Ok(spa), Ok(tpa)) = (
        ctx.load::<[u8; 4]>(ETH_HLEN + 14),
        ctx.load::<[u8; 4]>(ETH_HLEN + 24),
    ) else {
        return;
    };
    let mut addr = [0u8; 16];
    if op == ARPOP_REQUEST && spa != tpa {
        addr[..4].copy_from_slice(&tpa);
        record(ifindex, AF_INET, addr, true, direction);
    } else if op == ARPOP_REPLY {
        addr[..4].copy_from_slice(&spa);
        record(ifindex, AF_INET, addr, false, direction);
    }
}

/// NDP: neighbour solicitations (not duplicate address detection) and advertisements.
#[inline(always)]
fn ndp(ctx: &TcContext, ifindex: u32, direction: u8) {
    let icmp = ETH_HLEN + 40;
    let Ok(ty) = ctx.load::<u8>(icmp) else {
        return;
    };
    let Ok(target) = ctx.load::<[u8; 16]>(icmp + 8) else {
        return;
    };
    if ty == ND_NEIGHBOR_SOLICIT {
        // DAD probes come from the unspecified address: not a lookup.
        let Ok(src) = ctx.load::<[u8; 16]>(ETH_HLEN + 8) else {
            return;
        };
        if src != [0u8; 16] {
            record(ifindex, AF_INET6, target, true, direction);
        }
    } else if ty == ND_NEIGHBOR_ADVERT {
        record(ifindex, AF_INET6, target, false, direction);
    }
}

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
    let mut value = NeighProbeValue::default();
    if request {
        value.requests[d] = 1;
        value.first_request_ns = now;
        value.last_request_ns = now;
    } else {
        value.replies[d] = 1;
    }
    if NEIGH_PROBES.insert(&key, &value, 0).is_ok() {
        bump(counters::NEIGH_PROBES_INSERTED);
    } else {
        bump(counters::TC_MAP_FULL);
    }
}

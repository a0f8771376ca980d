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
    flow::{AF_INET, AF_INET6},
    traffic::{
        CLASS_ARP, CLASS_IPV4, CLASS_IPV6, CLASS_OTHER, EGRESS, INGRESS, NeighProbeKey,
        NeighProbeValue, TrafficKey, TrafficValue,
    },
};

use crate::maps::bump;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;
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
    match be16(ctx, 12) {
        Some(ETH_P_IP) => {
            key.class = CLASS_IPV4;
            key.l4_proto = ctx.load::<u8>(ETH_HLEN + 9).unwrap_or(0);
        }
        Some(ETH_P_IPV6) => {
            key.class = CLASS_IPV6;
            key.l4_proto = ctx.load::<u8>(ETH_HLEN + 6).unwrap_or(0);
            if key.l4_proto == IPPROTO_ICMPV6 {
                ndp(ctx, ifindex);
            }
        }
        Some(ETH_P_ARP) => {
            key.class = CLASS_ARP;
            arp(ctx, ifindex);
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
}

/// ARP: requests for an address (not gratuitous ones) and replies from it.
#[inline(always)]
fn arp(ctx: &TcContext, ifindex: u32) {
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
        record(ifindex, AF_INET, addr, true);
    } else if op == ARPOP_REPLY {
        addr[..4].copy_from_slice(&spa);
        record(ifindex, AF_INET, addr, false);
    }
}

/// NDP: neighbour solicitations (not duplicate address detection) and advertisements.
#[inline(always)]
fn ndp(ctx: &TcContext, ifindex: u32) {
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
            record(ifindex, AF_INET6, target, true);
        }
    } else if ty == ND_NEIGHBOR_ADVERT {
        record(ifindex, AF_INET6, target, false);
    }
}

#[inline(always)]
fn record(ifindex: u32, family: u8, addr: [u8; 16], request: bool) {
    let key = NeighProbeKey {
        ifindex,
        family,
        _pad: [0; 3],
        addr,
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = NEIGH_PROBES.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe {
            if request {
                (*v).requests += 1;
                if (*v).first_request_ns == 0 {
                    (*v).first_request_ns = now;
                }
                (*v).last_request_ns = now;
            } else {
                (*v).replies += 1;
            }
        }
        return;
    }
    let value = if request {
        NeighProbeValue {
            requests: 1,
            replies: 0,
            first_request_ns: now,
            last_request_ns: now,
        }
    } else {
        NeighProbeValue {
            requests: 0,
            replies: 1,
            first_request_ns: 0,
            last_request_ns: 0,
        }
    };
    if NEIGH_PROBES.insert(&key, &value, 0).is_err() {
        bump(counters::TC_MAP_FULL);
    }
}

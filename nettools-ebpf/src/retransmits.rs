//! The retransmit probe: `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack`.
//!
//! Segments are counted exactly per namespace (`RETRANSMIT_TOTALS`) and per flow
//! (`RETRANSMIT_FLOWS`), the way the kernel's own `TcpRetransSegs` counts them: a TSO/GSO skb
//! counts as the segments it carries.

use aya_ebpf::{
    Global,
    macros::{map, tracepoint},
    maps::{LruPerCpuHashMap, PerCpuHashMap},
    programs::{TracePointContext, tracing::StackIdContext as _},
};
use nettools_common::{
    config::{ABSENT, RetransmitLayout},
    counters,
    event::kind,
    flow::{AF_INET, AF_INET6, Flow, family_from_v6_field},
    retransmits::{RetransmitEvent, RetransmitKey, RetransmitStackKey},
};

use crate::{
    kernel::{self, field, read},
    maps::{NETTOOLS_OFFSETS, STACKS, add, bump, emit, header, is_traced, want_stacks},
};

/// `TCP_SYN_RECV`: the state a SYN-ACK is retransmitted in.
const TCP_SYN_RECV: u32 = 3;
const IPPROTO_TCP: u8 = 6;

/// Retransmitted segments per (namespace, state, flow): an LRU map, so that one workload with
/// thousands of lossy connections pushes out its own oldest flows instead of leaving no room
/// for anyone else's (the namespace totals below stay exact).
#[map]
static RETRANSMIT_FLOWS: LruPerCpuHashMap<RetransmitKey, u64> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// Exact retransmitted segments per namespace (complete even when the flow map is full).
#[map]
static RETRANSMIT_TOTALS: PerCpuHashMap<u32, u64> = PerCpuHashMap::with_max_entries(4096, 0);

/// Exact retransmitted segments per (namespace, kernel stack).
#[map]
static RETRANSMIT_STACKS: PerCpuHashMap<RetransmitStackKey, u64> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Record layout of `tcp:tcp_retransmit_skb`, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_RETRANSMIT: Global<RetransmitLayout> = Global::new(RetransmitLayout::UNSET);

/// Record layout of `tcp:tcp_retransmit_synack`, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_SYNACK: Global<RetransmitLayout> = Global::new(RetransmitLayout::UNSET);

/// `tcp:tcp_retransmit_skb`.
#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = handle(&ctx, &NETTOOLS_RETRANSMIT.load(), false);
    0
}

/// `tcp:tcp_retransmit_synack`.
#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = handle(&ctx, &NETTOOLS_SYNACK.load(), true);
    0
}

/// Whether a retransmission attempt's `err` says the kernel gave up before sending it, where
/// `__tcp_retransmit_skb` returns before counting TcpRetransSegs: the original still in the
/// host's queue (-EBUSY), no receive window (-EAGAIN), no memory to trim or split it (-ENOMEM),
/// no route for the socket (-EHOSTUNREACH), a segment already acknowledged (-EINVAL). Failures
/// after that point (a qdisc or netfilter dropping the copy) were counted, and count here too.
#[inline(always)]
fn not_sent(err: i32) -> bool {
    const EAGAIN: i32 = 11;
    const ENOMEM: i32 = 12;
    const EBUSY: i32 = 16;
    const EINVAL: i32 = 22;
    const EHOSTUNREACH: i32 = 113;
    matches!(-err, EAGAIN | ENOMEM | EBUSY | EINVAL | EHOSTUNREACH)
}

fn handle(ctx: &TracePointContext, l: &RetransmitLayout, synack: bool) -> Option<()> {
    let o = NETTOOLS_OFFSETS.load();
    let sk = field::<*const u8>(ctx, l.skaddr)?;
    let netns = kernel::sk_netns(&o, sk);
    if !is_traced(netns) {
        return None;
    }
    if l.err != ABSENT && not_sent(field::<i32>(ctx, l.err).unwrap_or(0)) {
        bump(counters::RETRANSMITS_NOT_SENT);
        return None;
    }
    // 5.10's records have no family field: read it off the IPv4-mapped v6 address instead.
    let family = if l.family == ABSENT {
        family_from_v6_field(&field::<[u8; 16]>(ctx, l.saddr_v6).unwrap_or([0; 16]))
    } else {
        field::<u16>(ctx, l.family).unwrap_or(0) as u8
    };
    let mut flow = Flow {
        family,
        l4_proto: IPPROTO_TCP,
        sport: field::<u16>(ctx, l.sport).unwrap_or(0),
        dport: field::<u16>(ctx, l.dport).unwrap_or(0),
        ..Flow::default()
    };
    if family == AF_INET {
        let s = field::<[u8; 4]>(ctx, l.saddr).unwrap_or([0; 4]);
        let d = field::<[u8; 4]>(ctx, l.daddr).unwrap_or([0; 4]);
        flow.saddr[..4].copy_from_slice(&s);
        flow.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        flow.saddr = field::<[u8; 16]>(ctx, l.saddr_v6).unwrap_or([0; 16]);
        flow.daddr = field::<[u8; 16]>(ctx, l.daddr_v6).unwrap_or([0; 16]);
    }
    let state = if synack {
        TCP_SYN_RECV
    } else if l.state == ABSENT {
        0
    } else {
        field::<i32>(ctx, l.state).unwrap_or(0) as u32
    };
    // Segments in this skb: TCP_SKB_CB(skb)->tcp_gso_segs, at least one.
    let segs = if synack {
        1
    } else {
        let skb = field::<*const u8>(ctx, l.skbaddr).unwrap_or(core::ptr::null());
        let cb = if o.skb_cb == ABSENT || o.tcp_cb_gso_segs == ABSENT {
            ABSENT
        } else {
            o.skb_cb + o.tcp_cb_gso_segs
        };
        match read::<u16>(skb, cb) {
            Some(n) if n > 0 => n as u32,
            _ => 1,
        }
    };
    let key = RetransmitKey { netns, state, flow };
    add(&RETRANSMIT_TOTALS, &netns, segs as u64);
    let mut stack_id = -1;
    if want_stacks() {
        stack_id = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
        if !add(
            &RETRANSMIT_STACKS,
            &RetransmitStackKey { netns, stack_id },
            segs as u64,
        ) {
            bump(counters::STACK_COUNT_MAP_FULL);
        }
    }
    if let Some(v) = RETRANSMIT_FLOWS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe { *v += segs as u64 };
    } else if RETRANSMIT_FLOWS.insert(&key, segs as u64, 0).is_err() {
        bump(counters::RETRANSMIT_FLOW_MAP_FULL);
    }
    emit(RetransmitEvent {
        header: header(kind::RETRANSMIT),
        key,
        segs,
        synack: synack as u32,
        stack_id,
        _pad: 0,
    });
    Some(())
}

//! The drop probe: the `kfree_skb` raw tracepoint.
//!
//! Every freed packet whose reason is a real drop (not `NOT_SPECIFIED`, not a normal consume) and
//! whose namespace is traced is counted exactly in `DROP_COUNTS` (per namespace, reason and
//! kernel location) and described in one `DropEvent` on the ring buffer.
//!
//! The program runs for every packet the host frees with a reason, in every namespace, so the
//! order matters: the reason first (an argument, free to read), then the namespace (two or three
//! kernel reads) and the traced-namespace filter; only a traced drop reads its device, protocol
//! and headers. A raw tracepoint rather than `skb:kfree_skb`: the kernel hands the program the
//! arguments as they are instead of first filling a trace record with them.

use aya_ebpf::{
    EbpfContext as _,
    macros::{map, raw_tracepoint},
    maps::PerCpuHashMap,
    programs::RawTracePointContext,
    programs::tracing::StackIdContext as _,
};
use nettools_common::{
    config::{ABSENT, KfreeSkbLayout},
    counters,
    drops::{DropEvent, DropKey, DropStackKey, REASON_UNAVAILABLE},
    event::kind,
};

use crate::{
    kernel::{self, read},
    maps::{NETTOOLS_OFFSETS, STACKS, add, bump, emit, header, is_traced, want_stacks},
};

/// Exact drop counts per (namespace, reason, location).
#[map]
static DROP_COUNTS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Exact drops per (namespace, reason, kernel stack).
#[map]
static DROP_STACKS: PerCpuHashMap<DropStackKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// This kernel's `kfree_skb` arguments, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_KFREE_SKB: aya_ebpf::Global<KfreeSkbLayout> =
    aya_ebpf::Global::new(KfreeSkbLayout {
        has_reason: 0,
        has_rx_sk: 0,
        not_drops: [ABSENT; 3],
    });

/// `kfree_skb(struct sk_buff *skb, void *location[, enum skb_drop_reason reason[, struct sock
/// *rx_sk]])`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    let _ = try_kfree_skb(&ctx);
    0
}

/// Argument `N` of the raw tracepoint (a constant index: the verifier allows no other).
macro_rules! arg {
    ($ctx:expr, $n:literal) => {
        // SAFETY: a raw tracepoint's context is its arguments as an array of u64; the verifier
        // checks the index against the tracepoint's prototype when the program is attached.
        unsafe { *($ctx.as_ptr() as *const u64).add($n) }
    };
}

fn try_kfree_skb(ctx: &RawTracePointContext) -> Option<()> {
    let layout = NETTOOLS_KFREE_SKB.load();
    let reason = if layout.has_reason == 0 {
        // Before 5.17 there is no reason, and every kfree_skb is a drop (normal frees go to
        // consume_skb). REASON_UNAVAILABLE and the unset `not_drops` slots are both u32::MAX,
        // so they must not be compared: that would discard every drop.
        REASON_UNAVAILABLE
    } else {
        let reason = arg!(ctx, 2) as u32;
        if reason == layout.not_drops[0]
            || reason == layout.not_drops[1]
            || reason == layout.not_drops[2]
        {
            bump(counters::FREES_NOT_DROPS);
            return None;
        }
        reason
    };
    let skb = arg!(ctx, 0) as *const u8;
    let rx_sk = if layout.has_rx_sk != 0 {
        arg!(ctx, 3) as *const u8
    } else {
        core::ptr::null()
    };
    let o = NETTOOLS_OFFSETS.load();
    let netns = kernel::skb_netns(&o, skb, rx_sk);
    if netns == 0 {
        bump(counters::DROP_NETNS_UNKNOWN);
    }
    if !is_traced(netns) {
        bump(counters::DROPS_FILTERED);
        return None;
    }
    let location = arg!(ctx, 1);
    if netns == 0 {
        aya_log_ebpf::debug!(ctx, "drop at {:x}: network namespace unreadable", location);
    }
    let ifindex = kernel::skb_ifindex(&o, skb, netns);
    let protocol = u16::from_be(read::<u16>(skb, o.skb_protocol).unwrap_or(0));
    let key = DropKey {
        netns,
        reason,
        location,
    };
    count(&key);
    let mut stack_id = -1;
    if want_stacks() {
        stack_id = ctx.get_stackid(&STACKS, 0).map_or(-1, |id| id as i32);
        let stack_key = DropStackKey {
            netns,
            reason,
            stack_id,
            _pad: 0,
        };
        if !add(&DROP_STACKS, &stack_key, 1) {
            bump(counters::STACK_COUNT_MAP_FULL);
        }
    }

    emit(DropEvent {
        header: header(kind::DROP),
        key,
        ifindex,
        protocol,
        _pad: 0,
        stack_id,
        _pad2: 0,
        flow: kernel::skb_flow(skb, protocol),
    });
    Some(())
}

/// Adds one to the drop's exact count.
#[inline(always)]
fn count(key: &DropKey) {
    if !add(&DROP_COUNTS, key, 1) {
        bump(counters::DROP_COUNT_MAP_FULL);
    }
}

//! The drop probe: `skb:kfree_skb`.
//!
//! Every freed packet whose reason is a real drop (not `NOT_SPECIFIED`, not a normal consume) and
//! whose namespace is traced is counted exactly in `DROP_COUNTS` (per namespace, reason and
//! kernel location) and described in one `DropEvent` on the ring buffer.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
    programs::tracing::StackIdContext as _,
};
use nettools_common::{
    config::{ABSENT, KfreeSkbLayout},
    counters,
    drops::{DropEvent, DropKey, DropStackKey, REASON_UNAVAILABLE},
    event::kind,
};

use crate::{
    kernel::{self, field},
    maps::{STACKS, add, bump, emit, header, is_traced, want_stacks},
};

/// Exact drop counts per (namespace, reason, location).
#[map]
static DROP_COUNTS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Exact drops per (namespace, reason, kernel stack).
#[map]
static DROP_STACKS: PerCpuHashMap<DropStackKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Field offsets of this kernel's `skb:kfree_skb` record, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_KFREE_SKB: aya_ebpf::Global<KfreeSkbLayout> =
    aya_ebpf::Global::new(KfreeSkbLayout {
        skbaddr: ABSENT,
        location: ABSENT,
        protocol: ABSENT,
        reason: ABSENT,
        rx_sk: ABSENT,
        not_drops: [ABSENT; 3],
    });

/// `skb:kfree_skb`.
#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    let layout = NETTOOLS_KFREE_SKB.load();
    let reason = if layout.reason == ABSENT {
        // Before 5.17 there is no reason, and every kfree_skb is a drop (normal frees go to
        // skb:consume_skb). REASON_UNAVAILABLE and the unset `not_drops` slots are both
        // u32::MAX, so they must not be compared: that would discard every drop.
        REASON_UNAVAILABLE
    } else {
        let reason = field::<u32>(ctx, layout.reason)?;
        if reason == layout.not_drops[0]
            || reason == layout.not_drops[1]
            || reason == layout.not_drops[2]
        {
            bump(counters::FREES_NOT_DROPS);
            return None;
        }
        reason
    };
    let skb = field::<*const u8>(ctx, layout.skbaddr)?;
    let location = field::<u64>(ctx, layout.location).unwrap_or(0);
    let protocol = field::<u16>(ctx, layout.protocol).unwrap_or(0);
    let rx_sk = field::<*const u8>(ctx, layout.rx_sk).unwrap_or(core::ptr::null());
    let (netns, ifindex) = kernel::skb_netns(skb, rx_sk);
    if netns == 0 {
        bump(counters::DROP_NETNS_UNKNOWN);
        aya_log_ebpf::debug!(ctx, "drop at {:x}: network namespace unreadable", location);
    }
    if !is_traced(netns) {
        bump(counters::DROPS_FILTERED);
        return None;
    }
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

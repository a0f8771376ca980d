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
    drops::{
        DROP_PACKET_MAX, DropCapture, DropEvent, DropKey, DropPacketEvent, DropStackKey,
        REASON_UNAVAILABLE,
    },
    event::kind,
};

use crate::{
    kernel::{self, read},
    maps::{
        EVENTS, NETTOOLS_OFFSETS, STACKS, add, bump, emit, header, is_traced, submit, want_stacks,
    },
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

/// How many bytes of each dropped packet to copy (`nettools capture`; 0: none), written by
/// userspace before load. A read-only global: while it is 0 the verifier knows the copy never
/// runs and removes it, so tracing without a capture costs what it did before the copy existed
/// (one load of this global).
#[unsafe(no_mangle)]
static NETTOOLS_DROP_CAPTURE_BYTES: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// Where the copy finds the packet's length and start (written by userspace before load).
#[unsafe(no_mangle)]
static NETTOOLS_DROP_CAPTURE: aya_ebpf::Global<DropCapture> = aya_ebpf::Global::new(DropCapture {
    skb_len: ABSENT,
    skb_data_len: ABSENT,
    skb_data: ABSENT,
    _pad: 0,
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
    let bytes = NETTOOLS_DROP_CAPTURE_BYTES.load();
    if bytes != 0 {
        emit_packet(bytes, &key, ifindex, protocol, skb);
    }
    Some(())
}

/// Sends the dropped packet's bytes from its network header on: at most `bytes` and
/// [`DROP_PACKET_MAX`], and only from the linear part (`head` .. `data + len - data_len`), the
/// part a plain kernel read can reach. A packet without a readable network header is sent with
/// nothing captured, so userspace still counts it.
#[inline(always)]
fn emit_packet(bytes: u32, key: &DropKey, ifindex: u32, protocol: u16, skb: *const u8) {
    let o = NETTOOLS_OFFSETS.load();
    let capture = NETTOOLS_DROP_CAPTURE.load();
    let head = read::<*const u8>(skb, o.skb_head).unwrap_or(core::ptr::null()) as u64;
    let nh = read::<u16>(skb, o.skb_network_header).unwrap_or(0) as u64;
    let data = read::<*const u8>(skb, capture.skb_data).unwrap_or(core::ptr::null()) as u64;
    let len = read::<u32>(skb, capture.skb_len).unwrap_or(0) as u64;
    let data_len = read::<u32>(skb, capture.skb_data_len).unwrap_or(0) as u64;
    let (mut orig_len, mut n) = (0u64, 0u64);
    if head != 0 && data != 0 && data_len <= len {
        let l3 = head + nh;
        // The packet ends at data + len; its linear part at data + len - data_len.
        orig_len = (data + len).saturating_sub(l3);
        n = (data + len - data_len).saturating_sub(l3);
    }
    if n > bytes as u64 {
        n = bytes as u64;
    }
    if n > DROP_PACKET_MAX as u64 {
        n = DROP_PACKET_MAX as u64;
    }
    let Some(mut entry) = EVENTS.reserve::<DropPacketEvent>(0) else {
        bump(counters::EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at the reserved, writable ring-buffer record of a
    // `DropPacketEvent`; the fields are written in place (the event is too big for the stack)
    // and the copy's size is at most the `data` array's length, checked just above.
    let copied = unsafe {
        (*event).header = header(kind::DROP_PACKET);
        (*event).key = *key;
        (*event).ifindex = ifindex;
        (*event).protocol = protocol;
        (*event)._pad = 0;
        (*event).orig_len = orig_len as u32;
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            core::ptr::addr_of_mut!((*event).data).cast(),
            n as u32,
            (head + nh) as *const core::ffi::c_void,
        )
    };
    // SAFETY: as above.
    unsafe { (*event).captured = if copied == 0 { n as u32 } else { 0 } };
    submit(entry);
}

/// Adds one to the drop's exact count.
#[inline(always)]
fn count(key: &DropKey) {
    if !add(&DROP_COUNTS, key, 1) {
        bump(counters::DROP_COUNT_MAP_FULL);
    }
}

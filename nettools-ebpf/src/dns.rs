//! DNS latency on the workload's veth: query → response, matched in the kernel by client
//! address and port, server address and port and DNS id, over UDP and TCP (port 53). The
//! response's first bytes go to userspace, which reads rcode, name and type from them; a query
//! keeps its own bytes in the pairing map so an unanswered one can be named.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_skb_load_bytes,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use nettools_common::{
    counters,
    event::kind,
    latency::{DNS_CAPTURE, DnsEvent, DnsKey, DnsPending},
};

use crate::{
    maps::{EVENTS, bump, header, now, submit},
    packet::Packet,
    pairing::{reverse, role_of},
};

const IPPROTO_TCP: u8 = 6;

/// Queries waiting for their response.
#[map]
static DNS_PENDING: LruHashMap<DnsKey, DnsPending> = LruHashMap::with_max_entries(8192, 0);

/// Room to build a pending query (too big for the BPF stack).
#[map]
static DNS_SCRATCH: PerCpuArray<DnsPending> = PerCpuArray::with_max_entries(1, 0);

// `capture` bounds lengths with a mask of DNS_CAPTURE - 1.
const _: () = assert!(DNS_CAPTURE.is_power_of_two());

/// Copies up to `DNS_CAPTURE` bytes of the packet from `offset` (at most `max`) into `dst`.
/// Returns how many were copied.
#[inline(always)]
fn capture(ctx: &TcContext, offset: usize, max: u32, dst: *mut u8) -> u16 {
    let in_skb = ctx.len().saturating_sub(offset as u32);
    let n = if max < in_skb { max } else { in_skb };
    // Re-read the length through a volatile load so the compiler cannot move the bounds checks
    // away from the register the verifier checks: the helper needs 1 <= n <= DNS_CAPTURE.
    // SAFETY: reading a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n == 0 || n > DNS_CAPTURE as u32 {
        if n == 0 {
            return 0;
        }
        return capture_full(ctx, offset, dst);
    }
    // The same n, in a form every verifier can bound: 5.10's does not learn n >= 1 from
    // `n != 0` and rejects the helper call ("invalid access to memory ... size=0"); a mask of a
    // fresh load gives [0, DNS_CAPTURE - 1], plus one [1, DNS_CAPTURE]. DNS_CAPTURE is a power of
    // two and 1 <= n <= DNS_CAPTURE here, so the value is unchanged.
    // SAFETY: reading a local.
    let n = 1 + ((unsafe { core::ptr::read_volatile(&n) } - 1) & (DNS_CAPTURE as u32 - 1));
    // SAFETY: `dst` has room for DNS_CAPTURE bytes and 1 <= n <= DNS_CAPTURE.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb.cast(), offset as u32, dst.cast(), n) };
    if ret == 0 { n as u16 } else { 0 }
}

/// Copies exactly `DNS_CAPTURE` bytes (the message is at least that long).
#[inline(always)]
fn capture_full(ctx: &TcContext, offset: usize, dst: *mut u8) -> u16 {
    // SAFETY: `dst` has room for DNS_CAPTURE bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            offset as u32,
            dst.cast(),
            DNS_CAPTURE as u32,
        )
    };
    if ret == 0 { DNS_CAPTURE as u16 } else { 0 }
}

#[inline(always)]
pub fn on_packet(ctx: &TcContext, p: &Packet) {
    // Over TCP each DNS message starts with a two-byte length.
    let (msg_off, msg_len) = if p.flow.l4_proto == IPPROTO_TCP {
        if p.payload_len < 4 {
            return;
        }
        (p.payload_off + 2, p.payload_len - 2)
    } else {
        (p.payload_off, p.payload_len)
    };
    if msg_len < 12 {
        return;
    }
    let Ok(head) = ctx.load::<[u8; 4]>(msg_off) else {
        return;
    };
    let id = u16::from_be_bytes([head[0], head[1]]);
    let is_response = head[2] & 0x80 != 0;
    if !is_response && p.flow.dport == 53 {
        let key = DnsKey {
            ifindex: p.ifindex,
            id,
            _pad: 0,
            flow: p.flow,
        };
        let Some(slot) = DNS_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's scratch slot, used only within this program run.
        let pending = unsafe { &mut *slot };
        pending.ts_ns = now();
        pending.role = role_of(p.direction);
        pending.len = capture(ctx, msg_off, msg_len, pending.message.as_mut_ptr());
        if DNS_PENDING
            .insert(&key, &*pending, BPF_NOEXIST as u64)
            .is_ok()
        {
            bump(counters::DNS_INSERTED);
        }
    } else if is_response && p.flow.sport == 53 {
        let key = DnsKey {
            ifindex: p.ifindex,
            id,
            _pad: 0,
            flow: reverse(&p.flow),
        };
        // SAFETY: the two fields are copied out at once.
        let Some((ts, role)) = (unsafe { DNS_PENDING.get(&key) }).map(|q| (q.ts_ns, q.role)) else {
            bump(counters::DNS_UNMATCHED);
            return;
        };
        if DNS_PENDING.remove(&key).is_err() {
            return;
        }
        bump(counters::DNS_REMOVED);
        let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
            bump(counters::EVENTS_LOST);
            return;
        };
        let ev = entry.as_mut_ptr();
        // SAFETY: the reserved entry is ours until submitted; every field is written.
        unsafe {
            (*ev).header = header(kind::DNS);
            (*ev).key = key;
            (*ev).latency_ns = now().saturating_sub(ts);
            (*ev).role = role;
            (*ev)._pad = 0;
            (*ev)._pad2 = 0;
            (*ev).len = capture(ctx, msg_off, msg_len, (*ev).message.as_mut_ptr());
        }
        submit(entry);
    }
}

//! The connections probe: TCP resets sent (`tcp:tcp_send_reset`) and received
//! (`tcp:tcp_receive_reset`), the errors reported on sockets (the `inet_sk_error_report` raw
//! tracepoint: ECONNREFUSED, ECONNRESET, ETIMEDOUT, …, exactly what the application's next call
//! on the socket returns), and a line per finished connection (`sock:inet_sock_set_state` to
//! TCP_CLOSE, with the kernel's own byte counts and RTT from `struct tcp_sock`).
//!
//! Counted exactly per namespace (`RESET_TOTALS`, `SOCKET_ERROR_TOTALS`, `CONN_CLOSED_TOTALS`)
//! and per flow (LRU maps), with one event each. Nothing runs per packet: these fire once per
//! reset, per error and per TCP state change.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use nettools_common::{
    config::ABSENT,
    connections::{
        ClosedKey, ClosedWithError, ConnStart, ConnectionEvent, ErrorTotalKey, RECEIVED,
        ROLE_CLIENT, ROLE_SERVER, ResetEvent, ResetKey, ResetLayout, ResetTotalKey, RttConfig,
        RttSampleEvent, SENT, SetStateLayout, SockOffsets, SockOwner, SocketErrorEvent,
        SocketErrorKey, TcpSockOffsets, how, rtt_why,
    },
    event::kind,
    flow::{AF_INET, AF_INET6, Flow, family_from_v6_field},
};

use crate::{
    kernel::{self, field, read},
    maps::{NETTOOLS_OFFSETS, add, emit, emit_ref, header, is_traced, now},
};

const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LISTEN: i32 = 10;
const ECONNRESET: i32 = 104;
const EPIPE: i32 = 32;
const ETIMEDOUT: i32 = 110;

/// Exact resets per (namespace, direction).
#[map]
static RESET_TOTALS: PerCpuHashMap<ResetTotalKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Resets per (namespace, direction, state, reason, flow): an LRU map, so one workload's storm
/// of resets pushes out its own oldest flows (the totals stay exact).
#[map]
static RESET_FLOWS: LruPerCpuHashMap<ResetKey, u64> = LruPerCpuHashMap::with_max_entries(8192, 0);

/// Exact socket errors per (namespace, errno).
#[map]
static SOCKET_ERROR_TOTALS: PerCpuHashMap<ErrorTotalKey, u64> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Socket errors per (namespace, errno, flow), LRU like [`RESET_FLOWS`].
#[map]
static SOCKET_ERROR_FLOWS: LruPerCpuHashMap<SocketErrorKey, u64> =
    LruPerCpuHashMap::with_max_entries(8192, 0);

/// Which connections ended how, exactly, per namespace.
#[map]
static CONN_CLOSED_TOTALS: PerCpuHashMap<ClosedKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// When and by whom each socket was opened (state change to SYN_SENT or SYN_RECV), until it
/// closes; LRU so sockets that never close cannot fill it.
#[map]
static CONN_STARTS: LruHashMap<u64, ConnStart> = LruHashMap::with_max_entries(65536, 0);

/// One connection event per CPU, built in place (see [`SOCKET_ERROR_SCRATCH`]).
#[map]
static CONNECTION_SCRATCH: PerCpuArray<ConnectionEvent> = PerCpuArray::with_max_entries(1, 0);

/// `tcp_sock` offsets, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_TCP_SOCK: Global<TcpSockOffsets> = Global::new(TcpSockOffsets::UNSET);

/// Sockets that went to TCP_CLOSE with an error set, until the error report that follows (LRU:
/// a report that never comes cannot fill it).
#[map]
static CLOSED_WITH_ERROR: LruHashMap<u64, ClosedWithError> = LruHashMap::with_max_entries(4096, 0);

/// Record layouts and socket offsets, written by userspace before load.
#[unsafe(no_mangle)]
static NETTOOLS_SEND_RESET: Global<ResetLayout> = Global::new(ResetLayout::UNSET);
#[unsafe(no_mangle)]
static NETTOOLS_RECEIVE_RESET: Global<ResetLayout> = Global::new(ResetLayout::UNSET);
#[unsafe(no_mangle)]
static NETTOOLS_SET_STATE: Global<SetStateLayout> = Global::new(SetStateLayout::UNSET);
#[unsafe(no_mangle)]
static NETTOOLS_SOCK: Global<SockOffsets> = Global::new(SockOffsets::UNSET);

/// Where the RTT samplers find the socket, and the `tcp:tcp_probe` interval (before load).
#[unsafe(no_mangle)]
static NETTOOLS_RTT: Global<RttConfig> = Global::new(RttConfig::UNSET);

/// One RTT sample per CPU, built in place (the flow read from the socket is large).
#[map]
static RTT_SCRATCH: PerCpuArray<RttSampleEvent> = PerCpuArray::with_max_entries(1, 0);

/// `tcp:tcp_probe` (an incoming segment on an established socket): an RTT sample of a traced
/// socket, at most once per socket per interval.
#[tracepoint]
pub fn connections_tcp_probe(ctx: TracePointContext) -> u32 {
    let _ = tcp_probe(&ctx);
    0
}

/// `tcp:tcp_retransmit_skb`: an RTT sample of a traced socket at each retransmission.
#[tracepoint]
pub fn connections_retransmit(ctx: TracePointContext) -> u32 {
    let c = NETTOOLS_RTT.load();
    let sk = field::<*const u8>(&ctx, c.retransmit_skaddr).unwrap_or(core::ptr::null());
    let o = NETTOOLS_OFFSETS.load();
    let netns = kernel::sk_netns(&o, sk);
    if is_traced(netns) {
        let _ = rtt_sample(sk, netns, rtt_why::RETRANSMIT);
    }
    0
}

fn tcp_probe(ctx: &TracePointContext) -> Option<()> {
    let c = NETTOOLS_RTT.load();
    let sk = field::<*const u8>(ctx, c.probe_skaddr)?;
    let t = now();
    // The common case first, and cheapest: a traced socket sampled less than an interval ago.
    // The time of the last sample is kept in the socket's entry of CONN_STARTS (one map less
    // to preallocate).
    if let Some(start) = CONN_STARTS.get_ptr_mut(&(sk as u64)) {
        // SAFETY: a value of the map; a racing update from another CPU only moves the time.
        unsafe {
            if t.wrapping_sub((*start).last_rtt_ns) < c.interval_ns {
                return None;
            }
            (*start).last_rtt_ns = t;
        }
    } else {
        // A socket opened before the trace (or in a namespace not traced).
        let o = NETTOOLS_OFFSETS.load();
        let netns = kernel::sk_netns(&o, sk);
        if !is_traced(netns) {
            return None;
        }
        let start = ConnStart {
            start_ns: 0,
            role: 0,
            pid: 0,
            comm: [0; 16],
            last_rtt_ns: t,
        };
        let _ = CONN_STARTS.insert(&(sk as u64), &start, 0);
        return rtt_sample(sk, netns, rtt_why::PROBE);
    }
    let o = NETTOOLS_OFFSETS.load();
    rtt_sample(sk, kernel::sk_netns(&o, sk), rtt_why::PROBE)
}

/// Sends the socket's smoothed and minimum RTT (none before its first RTT measurement).
#[inline(always)]
fn rtt_sample(sk: *const u8, netns: u32, why: u32) -> Option<()> {
    let t = NETTOOLS_TCP_SOCK.load();
    let srtt = read::<u32>(sk, t.srtt_us).unwrap_or(0) >> 3;
    if srtt == 0 {
        return None;
    }
    let slot = RTT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's only slot; a program runs to completion on its CPU before the next
    // run of one there, and only the RTT samplers use this map.
    let ev = unsafe { &mut *slot };
    ev.header = header(kind::RTT_SAMPLE);
    ev.netns = netns;
    ev.why = why;
    ev.srtt_us = srtt;
    ev.min_rtt_us = read::<u32>(sk, t.rtt_min).unwrap_or(0);
    sock_flow(&NETTOOLS_SOCK.load(), sk, &mut ev.flow);
    emit_ref(ev);
    Some(())
}

/// `tcp:tcp_send_reset`.
#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = reset(&ctx, &NETTOOLS_SEND_RESET.load(), SENT);
    0
}

/// `tcp:tcp_receive_reset`.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = reset(&ctx, &NETTOOLS_RECEIVE_RESET.load(), RECEIVED);
    0
}

/// `inet_sk_error_report(sk)`: an error stored on a socket for its owner to read.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: RawTracePointContext) -> i32 {
    let _ = socket_error(&ctx);
    0
}

/// `sock:inet_sock_set_state`: remembers who connected a socket, forgets it when it closes.
#[tracepoint]
pub fn connections_set_state(ctx: TracePointContext) -> u32 {
    let _ = set_state(&ctx);
    0
}

/// Adds `n` to this CPU's slot for `key` in a per-CPU LRU counting map.
#[inline(always)]
fn add_lru<K>(map: &LruPerCpuHashMap<K, u64>, key: &K, n: u64) {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU map.
        unsafe { *v += n };
    } else {
        let _ = map.insert(key, n, 0);
    }
}

/// The flow of a record with separate port and address fields (`tcp_event_sk_skb`,
/// `tcp_event_sk`), or with two sockaddr buffers (6.10+ `tcp_send_reset`).
#[inline(always)]
fn record_flow(ctx: &TracePointContext, l: &ResetLayout) -> Flow {
    let mut flow = Flow {
        l4_proto: IPPROTO_TCP,
        ..Flow::default()
    };
    if l.saddr_sa != ABSENT {
        // struct sockaddr_in / sockaddr_in6: family (host order), port (network order), then
        // the IPv4 address at 4 or the IPv6 address at 8.
        let family = field::<u16>(ctx, l.saddr_sa).unwrap_or(0) as u8;
        flow.family = family;
        flow.sport = u16::from_be(field::<u16>(ctx, l.saddr_sa + 2).unwrap_or(0));
        flow.dport = u16::from_be(field::<u16>(ctx, l.daddr_sa + 2).unwrap_or(0));
        if family == AF_INET {
            let s = field::<[u8; 4]>(ctx, l.saddr_sa + 4).unwrap_or([0; 4]);
            let d = field::<[u8; 4]>(ctx, l.daddr_sa + 4).unwrap_or([0; 4]);
            flow.saddr[..4].copy_from_slice(&s);
            flow.daddr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            flow.saddr = field::<[u8; 16]>(ctx, l.saddr_sa + 8).unwrap_or([0; 16]);
            flow.daddr = field::<[u8; 16]>(ctx, l.daddr_sa + 8).unwrap_or([0; 16]);
        }
        return flow;
    }
    // Records without a family field (5.10) hold IPv4 addresses IPv4-mapped in saddr_v6.
    let family = if l.family == ABSENT {
        family_from_v6_field(&field::<[u8; 16]>(ctx, l.saddr_v6).unwrap_or([0; 16]))
    } else {
        field::<u16>(ctx, l.family).unwrap_or(0) as u8
    };
    flow.family = family;
    flow.sport = field::<u16>(ctx, l.sport).unwrap_or(0);
    flow.dport = field::<u16>(ctx, l.dport).unwrap_or(0);
    if family == AF_INET {
        let s = field::<[u8; 4]>(ctx, l.saddr).unwrap_or([0; 4]);
        let d = field::<[u8; 4]>(ctx, l.daddr).unwrap_or([0; 4]);
        flow.saddr[..4].copy_from_slice(&s);
        flow.daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        flow.saddr = field::<[u8; 16]>(ctx, l.saddr_v6).unwrap_or([0; 16]);
        flow.daddr = field::<[u8; 16]>(ctx, l.daddr_v6).unwrap_or([0; 16]);
    }
    flow
}

fn reset(ctx: &TracePointContext, l: &ResetLayout, direction: u32) -> Option<()> {
    if l.skaddr == ABSENT {
        return None;
    }
    let o = NETTOOLS_OFFSETS.load();
    let sk = field::<*const u8>(ctx, l.skaddr).unwrap_or(core::ptr::null());
    // A reset for a closed port (6.10+) has no socket: the namespace is the packet's.
    let netns = if sk.is_null() {
        let skb = field::<*const u8>(ctx, l.skbaddr).unwrap_or(core::ptr::null());
        kernel::skb_netns(&o, skb, core::ptr::null())
    } else {
        kernel::sk_netns(&o, sk)
    };
    if !is_traced(netns) {
        return None;
    }
    let state = if l.state != ABSENT {
        field::<i32>(ctx, l.state).unwrap_or(0) as u32
    } else {
        read::<u8>(sk, NETTOOLS_SOCK.load().state).unwrap_or(0) as u32
    };
    let reason = if l.reason == ABSENT {
        ABSENT
    } else {
        field::<u32>(ctx, l.reason).unwrap_or(ABSENT)
    };
    let key = ResetKey {
        netns,
        direction,
        state,
        reason,
        flow: record_flow(ctx, l),
    };
    add(&RESET_TOTALS, &ResetTotalKey { netns, direction }, 1);
    add_lru(&RESET_FLOWS, &key, 1);
    emit(ResetEvent {
        header: header(kind::RESET),
        key,
    });
    Some(())
}

/// Fills `flow` with a socket's addresses and ports, read through `__sk_common` straight into
/// place (this program's stack is tight).
#[inline(always)]
fn sock_flow(s: &SockOffsets, sk: *const u8, flow: &mut Flow) {
    let family = read::<u16>(sk, s.family).unwrap_or(0) as u8;
    flow.family = family;
    flow.l4_proto = read::<u16>(sk, s.protocol).unwrap_or(0) as u8;
    flow.sport = read::<u16>(sk, s.num).unwrap_or(0);
    flow.dport = u16::from_be(read::<u16>(sk, s.dport).unwrap_or(0));
    flow._pad = 0;
    flow.saddr = [0; 16];
    flow.daddr = [0; 16];
    let (src, dst, len) = if family == AF_INET {
        (s.rcv_saddr, s.daddr, 4)
    } else if family == AF_INET6 {
        (s.v6_rcv_saddr, s.v6_daddr, 16)
    } else {
        return;
    };
    if src == ABSENT || dst == ABSENT || sk.is_null() {
        return;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; on failure the bytes stay zero.
    unsafe {
        let _ = bpf_probe_read_kernel_buf(sk.wrapping_add(src as usize), &mut flow.saddr[..len]);
        let _ = bpf_probe_read_kernel_buf(sk.wrapping_add(dst as usize), &mut flow.daddr[..len]);
    }
}

/// One socket-error event per CPU, built in place: the event, its flow and the closed socket's
/// record do not fit the 512-byte stack together.
#[map]
static SOCKET_ERROR_SCRATCH: PerCpuArray<SocketErrorEvent> = PerCpuArray::with_max_entries(1, 0);

fn socket_error(ctx: &RawTracePointContext) -> Option<()> {
    let s = NETTOOLS_SOCK.load();
    if s.err == ABSENT {
        return None;
    }
    // SAFETY: raw tracepoint arguments are an array of u64; the first is the socket.
    let sk = unsafe { *(aya_ebpf::EbpfContext::as_ptr(ctx) as *const u64) } as *const u8;
    let o = NETTOOLS_OFFSETS.load();
    let netns = kernel::sk_netns(&o, sk);
    if !is_traced(netns) {
        return None;
    }
    let errno = read::<i32>(sk, s.err).unwrap_or(0);
    if errno <= 0 {
        return None;
    }
    let slot = SOCKET_ERROR_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's only slot; a program runs to completion on its CPU before the next
    // run of it there, and no other program uses this map.
    let ev = unsafe { &mut *slot };
    ev.header = header(kind::SOCKET_ERROR);
    ev.key.netns = netns;
    ev.key.errno = errno as u32;
    ev._pad = 0;
    // Kernels that report after `tcp_done()` left what the socket was in CLOSED_WITH_ERROR
    // (its local port and state are gone by now); others report before closing it.
    match CLOSED_WITH_ERROR.get_ptr(&(sk as u64)) {
        Some(p) => {
            // SAFETY: a value of the map, copied into the scratch slot at once.
            unsafe {
                ev.key.flow = (*p).flow;
                ev.state = (*p).state;
                ev.owner = (*p).owner;
            }
            let _ = CLOSED_WITH_ERROR.remove(&(sk as u64));
        }
        None => {
            sock_flow(&s, sk, &mut ev.key.flow);
            let state = read::<u8>(sk, s.state).unwrap_or(0) as i32;
            // An error set on a TCP socket that was already closed without one: its owner
            // aborted it (close with SO_LINGER 0, connect(AF_UNSPEC): `tcp_disconnect` reports
            // ECONNRESET after clearing the socket). No application saw that.
            if state == TCP_CLOSE && ev.key.flow.l4_proto == IPPROTO_TCP {
                return None;
            }
            ev.state = state as u32;
            match CONN_STARTS.get_ptr(&(sk as u64)) {
                // SAFETY: a value of the map, copied at once.
                Some(p) => unsafe {
                    ev.owner.pid = (*p).pid;
                    ev.owner.comm = (*p).comm;
                },
                None => {
                    ev.owner.pid = 0;
                    ev.owner.comm = [0; 16];
                }
            }
        }
    }
    add(
        &SOCKET_ERROR_TOTALS,
        &ErrorTotalKey {
            netns,
            errno: errno as u32,
        },
        1,
    );
    add_lru(&SOCKET_ERROR_FLOWS, &ev.key, 1);
    emit_ref(ev);
    Some(())
}

fn set_state(ctx: &TracePointContext) -> Option<()> {
    let l = NETTOOLS_SET_STATE.load();
    if l.record.skaddr == ABSENT {
        return None;
    }
    if l.protocol != ABSENT && field::<u16>(ctx, l.protocol).unwrap_or(0) != IPPROTO_TCP as u16 {
        return None;
    }
    let sk = field::<*const u8>(ctx, l.record.skaddr).unwrap_or(core::ptr::null());
    let newstate = field::<i32>(ctx, l.newstate).unwrap_or(0);
    if newstate == TCP_CLOSE {
        let _ = closed(ctx, &l, sk);
        let _ = CONN_STARTS.remove(&(sk as u64));
        return None;
    }
    // RTT samples when a connection is established (its handshake's round trip) and when it
    // leaves ESTABLISHED for another open state (its close is the connection's own line).
    let oldstate = field::<i32>(ctx, l.oldstate).unwrap_or(0);
    if newstate == TCP_ESTABLISHED || oldstate == TCP_ESTABLISHED {
        let o = NETTOOLS_OFFSETS.load();
        let netns = kernel::sk_netns(&o, sk);
        if !is_traced(netns) {
            return None;
        }
        let why = if newstate == TCP_ESTABLISHED {
            // The first `tcp:tcp_probe` sample comes an interval after this one.
            if let Some(start) = CONN_STARTS.get_ptr_mut(&(sk as u64)) {
                // SAFETY: a value of the map.
                unsafe { (*start).last_rtt_ns = now() };
            }
            rtt_why::ESTABLISHED
        } else {
            rtt_why::STATE
        };
        let _ = rtt_sample(sk, netns, why);
        return None;
    }
    if newstate != TCP_SYN_SENT && newstate != TCP_SYN_RECV {
        return None;
    }
    let o = NETTOOLS_OFFSETS.load();
    if !is_traced(kernel::sk_netns(&o, sk)) {
        return None;
    }
    // connect() moves the socket to SYN_SENT in the calling process; a listener's new socket
    // starts in SYN_RECV, in softirq (no process).
    let client = newstate == TCP_SYN_SENT;
    let start = ConnStart {
        start_ns: now(),
        role: if client { ROLE_CLIENT } else { ROLE_SERVER },
        pid: if client {
            (bpf_get_current_pid_tgid() >> 32) as u32
        } else {
            0
        },
        comm: if client {
            bpf_get_current_comm().unwrap_or([0; 16])
        } else {
            [0; 16]
        },
        last_rtt_ns: 0,
    };
    let _ = CONN_STARTS.insert(&(sk as u64), &start, 0);
    Some(())
}

/// How a connection that left `oldstate` for TCP_CLOSE with `errno` set ended.
#[inline(always)]
fn how_it_ended(oldstate: i32, errno: i32) -> u32 {
    match errno {
        0 if oldstate == TCP_ESTABLISHED
            || oldstate == TCP_CLOSE_WAIT
            || oldstate == TCP_FIN_WAIT1 =>
        {
            // Closing from these states without an error is an abort by this side (close with
            // unread data or SO_LINGER 0, shutdown by sock_destroy): its reset follows.
            how::RST_SENT
        }
        0 => how::FIN,
        ECONNRESET | EPIPE => how::RST_RECEIVED,
        ETIMEDOUT => how::TIMEOUT,
        _ => how::ERROR,
    }
}

/// A TCP socket's state change to TCP_CLOSE: keeps what its error report will need, and sends
/// the line of a connection that was established.
fn closed(ctx: &TracePointContext, l: &SetStateLayout, sk: *const u8) -> Option<()> {
    let o = NETTOOLS_OFFSETS.load();
    let netns = kernel::sk_netns(&o, sk);
    if !is_traced(netns) {
        return None;
    }
    let slot = CONNECTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's only slot; no other program uses this map.
    let ev = unsafe { &mut *slot };
    ev.netns = netns;
    ev.flow = record_flow(ctx, &l.record);
    let oldstate = field::<i32>(ctx, l.oldstate).unwrap_or(0);
    ev.oldstate = oldstate as u32;
    let errno = read::<i32>(sk, NETTOOLS_SOCK.load().err)
        .unwrap_or(0)
        .max(0);
    ev.errno = errno as u32;
    match CONN_STARTS.get_ptr(&(sk as u64)) {
        // SAFETY: a value of the map, copied into the scratch slot at once.
        Some(p) => ev.start = unsafe { *p },
        None => {
            ev.start.start_ns = 0;
            ev.start.role = 0;
            ev.start.pid = 0;
            ev.start.comm = [0; 16];
            ev.start.last_rtt_ns = 0;
        }
    }
    // Closing because of an error (`tcp_done_with_error` sets it first): keep what the report
    // that follows needs. The record still has the ports; the socket will not.
    if errno > 0 {
        let keep = ClosedWithError {
            flow: ev.flow,
            state: ev.oldstate,
            _pad: 0,
            owner: SockOwner {
                pid: ev.start.pid,
                _pad: 0,
                comm: ev.start.comm,
            },
        };
        let _ = CLOSED_WITH_ERROR.insert(&(sk as u64), &keep, 0);
    }
    // Only connections that were established get a line (failed connects are socket errors).
    if oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV || oldstate == TCP_LISTEN {
        return None;
    }
    ev.how = how_it_ended(oldstate, errno);
    add(&CONN_CLOSED_TOTALS, &ClosedKey { netns, how: ev.how }, 1);
    let t = NETTOOLS_TCP_SOCK.load();
    let sent = read::<u64>(sk, t.bytes_sent).unwrap_or(0);
    ev.bytes_sent = sent.saturating_sub(read::<u64>(sk, t.bytes_retrans).unwrap_or(0));
    let received = read::<u64>(sk, t.bytes_received).unwrap_or(0);
    // The peer's FIN takes one byte of sequence space, which bytes_received counts; SOCK_DONE
    // says it arrived (sk_shutdown does not: close() sets RCV_SHUTDOWN without a FIN).
    let fin =
        read::<u64>(sk, t.sk_flags).is_some_and(|flags| (flags >> (t.sock_done_bit & 63)) & 1 != 0);
    ev.bytes_received = if fin {
        received.saturating_sub(1)
    } else {
        received
    };
    ev.total_retrans = read::<u32>(sk, t.total_retrans).unwrap_or(0);
    ev.srtt_us = read::<u32>(sk, t.srtt_us).unwrap_or(0) >> 3;
    ev.min_rtt_us = read::<u32>(sk, t.rtt_min).unwrap_or(0);
    ev._pad = 0;
    ev.header = header(kind::CONNECTION);
    emit_ref(ev);
    Some(())
}

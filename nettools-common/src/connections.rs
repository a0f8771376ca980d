//! The connections probe: TCP resets sent and received (`tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset`) and the errors the kernel reported to applications on their sockets
//! (`inet_sk_error_report`), counted exactly per namespace and per flow in the kernel, with one
//! event each.

use crate::{config::ABSENT, event::EventHeader, flow::Flow};

/// Names of the globals holding the parts of [`ConnectionsConfig`] (one each: a program copies
/// only the part it reads onto its 512-byte stack).
pub const SEND_RESET_GLOBAL: &str = "NETTOOLS_SEND_RESET";
pub const RECEIVE_RESET_GLOBAL: &str = "NETTOOLS_RECEIVE_RESET";
pub const SET_STATE_GLOBAL: &str = "NETTOOLS_SET_STATE";
pub const SOCK_GLOBAL: &str = "NETTOOLS_SOCK";

/// [`ResetKey::direction`] of a reset this namespace's stack sent.
pub const SENT: u32 = 0;
/// [`ResetKey::direction`] of a reset one of this namespace's sockets received.
pub const RECEIVED: u32 = 1;

/// Field offsets in a `tcp:tcp_send_reset` or `tcp:tcp_receive_reset` record ([`ABSENT`] where
/// the record lacks the field). Kernels before 6.10 share the `tcp_event_sk_skb` /
/// `tcp_event_sk` layouts (ports and addresses in separate fields); later `tcp_send_reset`
/// records carry the addresses as two `struct sockaddr_in6`-sized buffers and a reset reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetLayout {
    pub skbaddr: u32,
    pub skaddr: u32,
    pub state: u32,
    /// `enum sk_rst_reason` (6.10+).
    pub reason: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// The local end as a `sockaddr_in`/`sockaddr_in6` (28 bytes; 6.10+ `tcp_send_reset`).
    pub saddr_sa: u32,
    /// The remote end, like `saddr_sa`.
    pub daddr_sa: u32,
}

impl ResetLayout {
    /// Every field absent: the program does nothing.
    pub const UNSET: Self = Self {
        skbaddr: ABSENT,
        skaddr: ABSENT,
        state: ABSENT,
        reason: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        saddr_sa: ABSENT,
        daddr_sa: ABSENT,
    };
}

/// Offsets in `struct sock` (through `__sk_common`), resolved from BTF, for the socket-error
/// and state-change programs, which get the socket and not a record of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock.sk_err` (int).
    pub err: u32,
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_state` (u8).
    pub state: u32,
    /// `sock.sk_protocol` (u16; a bitfield on old kernels, then [`ABSENT`]).
    pub protocol: u32,
    /// `__sk_common.skc_num` (local port, host order).
    pub num: u32,
    /// `__sk_common.skc_dport` (remote port, network order).
    pub dport: u32,
    /// `__sk_common.skc_rcv_saddr`.
    pub rcv_saddr: u32,
    /// `__sk_common.skc_daddr`.
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` ([`ABSENT`] without IPv6).
    pub v6_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr`.
    pub v6_daddr: u32,
}

impl SockOffsets {
    pub const UNSET: Self = Self {
        err: ABSENT,
        family: ABSENT,
        state: ABSENT,
        protocol: ABSENT,
        num: ABSENT,
        dport: ABSENT,
        rcv_saddr: ABSENT,
        daddr: ABSENT,
        v6_rcv_saddr: ABSENT,
        v6_daddr: ABSENT,
    };
}

/// Field offsets in a `sock:inet_sock_set_state` record: the ports and addresses as in a reset
/// record, and the states.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetStateLayout {
    pub record: ResetLayout,
    pub oldstate: u32,
    pub newstate: u32,
    pub protocol: u32,
    pub _pad: u32,
}

impl SetStateLayout {
    pub const UNSET: Self = Self {
        record: ResetLayout::UNSET,
        oldstate: ABSENT,
        newstate: ABSENT,
        protocol: ABSENT,
        _pad: 0,
    };
}

/// Everything the connections programs need to know about this kernel, written by userspace
/// before load (as four globals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionsConfig {
    pub send_reset: ResetLayout,
    pub receive_reset: ResetLayout,
    pub set_state: SetStateLayout,
    pub sock: SockOffsets,
    pub tcp: TcpSockOffsets,
    pub rtt: RttConfig,
}

impl ConnectionsConfig {
    pub const UNSET: Self = Self {
        send_reset: ResetLayout::UNSET,
        receive_reset: ResetLayout::UNSET,
        set_state: SetStateLayout::UNSET,
        sock: SockOffsets::UNSET,
        tcp: TcpSockOffsets::UNSET,
        rtt: RttConfig::UNSET,
    };
}

/// Exact resets per namespace and direction (`RESET_TOTALS`, value: resets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetTotalKey {
    pub netns: u32,
    /// [`SENT`] or [`RECEIVED`].
    pub direction: u32,
}

/// Resets per namespace, direction, socket state, reason and flow (`RESET_FLOWS`, an LRU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResetKey {
    pub netns: u32,
    /// [`SENT`] or [`RECEIVED`].
    pub direction: u32,
    /// TCP state of the socket (0: none, e.g. a reset for a closed port).
    pub state: u32,
    /// `enum sk_rst_reason` of a sent reset (6.10+), else [`ABSENT`].
    pub reason: u32,
    /// Local and remote address and port, from this namespace's point of view.
    pub flow: Flow,
}

/// One reset, sent or received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetEvent {
    pub header: EventHeader,
    pub key: ResetKey,
}

/// Exact socket errors per namespace and errno (`SOCKET_ERROR_TOTALS`, value: errors).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorTotalKey {
    pub netns: u32,
    /// Positive errno (`ECONNREFUSED` = 111, …).
    pub errno: u32,
}

/// Socket errors per namespace, errno and flow (`SOCKET_ERROR_FLOWS`, an LRU map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketErrorKey {
    pub netns: u32,
    pub errno: u32,
    pub flow: Flow,
}

/// The process that owned a socket: recorded when it called `connect()` (the state change to
/// SYN_SENT runs in that process), for errors reported later from softirq context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    /// Thread group id (the pid), 0 when unknown.
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// A socket that closed with an error set, kept from its state change to TCP_CLOSE until the
/// error report that follows it (since 5.x kernels report after `tcp_done()`, when the socket
/// has lost its local port and state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedWithError {
    pub flow: Flow,
    /// The state the socket left for TCP_CLOSE.
    pub state: u32,
    pub _pad: u32,
    pub owner: SockOwner,
}

/// One error reported on a socket (what the application's next call on it returns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketErrorEvent {
    pub header: EventHeader,
    pub key: SocketErrorKey,
    /// TCP state of the socket when the error struck (before it closed).
    pub state: u32,
    pub _pad: u32,
    /// The process that connected the socket, where known (pid 0 otherwise).
    pub owner: SockOwner,
}

/// Name of the global holding [`TcpSockOffsets`].
pub const TCP_SOCK_GLOBAL: &str = "NETTOOLS_TCP_SOCK";

/// Offsets in `struct tcp_sock` read when a connection closes, resolved from BTF ([`ABSENT`]
/// where missing: the figure is then reported as 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockOffsets {
    /// `bytes_sent` (u64): data bytes sent, retransmissions included (4.19+).
    pub bytes_sent: u32,
    /// `bytes_retrans` (u64): data bytes retransmitted.
    pub bytes_retrans: u32,
    /// `bytes_received` (u64): sequence space received in order (data, and one for a FIN).
    pub bytes_received: u32,
    /// `total_retrans` (u32): segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// `srtt_us` (u32): smoothed RTT in µs, times 8.
    pub srtt_us: u32,
    /// `rtt_min.s[0].v` (u32): the windowed minimum RTT in µs.
    pub rtt_min: u32,
    /// `sock.sk_flags` (unsigned long): `SOCK_DONE` is set once the peer's FIN arrived
    /// (`tcp_fin`); `sk_shutdown` cannot say, as close() sets RCV_SHUTDOWN too.
    pub sk_flags: u32,
    /// The bit of `SOCK_DONE` in `sk_flags` (its value in `enum sock_flags`).
    pub sock_done_bit: u32,
}

impl TcpSockOffsets {
    pub const UNSET: Self = Self {
        bytes_sent: ABSENT,
        bytes_retrans: ABSENT,
        bytes_received: ABSENT,
        total_retrans: ABSENT,
        srtt_us: ABSENT,
        rtt_min: ABSENT,
        sk_flags: ABSENT,
        sock_done_bit: 0,
    };
}

/// [`ConnStart::role`] of a socket that connected.
pub const ROLE_CLIENT: u32 = 1;
/// [`ConnStart::role`] of a socket a listener created.
pub const ROLE_SERVER: u32 = 2;

/// When and by whom a connection was opened (`CONN_STARTS`, by `struct sock` address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStart {
    pub start_ns: u64,
    /// [`ROLE_CLIENT`] or [`ROLE_SERVER`]; 0 unknown.
    pub role: u32,
    /// The connecting process (clients), 0 otherwise.
    pub pid: u32,
    pub comm: [u8; 16],
    /// When the socket was last sampled for RTT from `tcp:tcp_probe` (0: never). A socket
    /// opened before the trace gets an entry with `start_ns` 0 at its first sample.
    pub last_rtt_ns: u64,
}

/// How a connection ended ([`ConnectionEvent::how`]).
pub mod how {
    /// Closed by FIN (both ways), no error.
    pub const FIN: u32 = 1;
    /// The peer reset it (ECONNRESET, EPIPE).
    pub const RST_RECEIVED: u32 = 2;
    /// This side reset it (abort, close with unread data, SO_LINGER 0).
    pub const RST_SENT: u32 = 3;
    /// Retransmissions or keepalives ran out (ETIMEDOUT).
    pub const TIMEOUT: u32 = 4;
    /// Another error ended it (an ICMP error, …).
    pub const ERROR: u32 = 5;
}

/// Exact closed connections per (namespace, how) (`CONN_CLOSED_TOTALS`, value: connections).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClosedKey {
    pub netns: u32,
    pub how: u32,
}

/// One finished connection (an established one that reached TCP_CLOSE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub header: EventHeader,
    pub netns: u32,
    /// One of [`how`].
    pub how: u32,
    pub flow: Flow,
    /// The state the socket left for TCP_CLOSE.
    pub oldstate: u32,
    /// The error set on the socket (0: none).
    pub errno: u32,
    pub start: ConnStart,
    /// Data bytes sent (not counting retransmissions).
    pub bytes_sent: u64,
    /// Data bytes received in order (without the peer's FIN).
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// Smoothed RTT in µs (the kernel keeps it times 8; this is divided).
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    pub _pad: u32,
}

/// Name of the global holding [`RttConfig`].
pub const RTT_GLOBAL: &str = "NETTOOLS_RTT";

/// Where the RTT samplers find the socket in their tracepoint records, and how often an open
/// connection is sampled from `tcp:tcp_probe` ([`ABSENT`]: that sampler is not attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttConfig {
    /// `skaddr` in a `tcp:tcp_probe` record.
    pub probe_skaddr: u32,
    /// `skaddr` in a `tcp:tcp_retransmit_skb` record.
    pub retransmit_skaddr: u32,
    /// At most one `tcp:tcp_probe` sample per socket in this many nanoseconds.
    pub interval_ns: u64,
}

impl RttConfig {
    pub const UNSET: Self = Self {
        probe_skaddr: ABSENT,
        retransmit_skaddr: ABSENT,
        interval_ns: 1_000_000_000,
    };
}

/// Why an RTT sample was taken ([`RttSampleEvent::why`]).
pub mod rtt_why {
    /// The connection was just established (the handshake's round trip).
    pub const ESTABLISHED: u32 = 1;
    /// An ACK arrived (`tcp:tcp_probe`), at most once per socket per interval.
    pub const PROBE: u32 = 2;
    /// A segment was retransmitted.
    pub const RETRANSMIT: u32 = 3;
    /// The connection left ESTABLISHED (a FIN sent or received).
    pub const STATE: u32 = 4;
}

/// The kernel's RTT figures of an open TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttSampleEvent {
    pub header: EventHeader,
    pub netns: u32,
    /// One of [`rtt_why`].
    pub why: u32,
    /// Smoothed RTT in µs (the kernel's `srtt_us >> 3`).
    pub srtt_us: u32,
    /// The windowed minimum RTT in µs.
    pub min_rtt_us: u32,
    /// Local and remote address and port.
    pub flow: Flow,
}

crate::user_pod!(
    RttConfig,
    RttSampleEvent,
    ResetLayout,
    SockOffsets,
    SetStateLayout,
    ConnectionsConfig,
    ResetTotalKey,
    ResetKey,
    ResetEvent,
    ErrorTotalKey,
    SocketErrorKey,
    SockOwner,
    ClosedWithError,
    SocketErrorEvent,
    TcpSockOffsets,
    ConnStart,
    ClosedKey,
    ConnectionEvent,
);

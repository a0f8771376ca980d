//! The retransmit probe (`tcp:tcp_retransmit_skb`, `tcp:tcp_retransmit_synack`): retransmitted
//! segments per flow, counted exactly in the kernel, and one event per retransmission.

use crate::{event::EventHeader, flow::Flow};

/// Key of the in-kernel `RETRANSMIT_FLOWS` per-CPU hash (value: segments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransmitKey {
    /// Network namespace of the socket.
    pub netns: u32,
    /// TCP state of the socket (`TCP_ESTABLISHED` = 1, `TCP_SYN_SENT` = 2, …; 0 unknown).
    pub state: u32,
    /// Local and remote address and port, from the socket's point of view.
    pub flow: Flow,
}

/// One retransmission.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitEvent {
    pub header: EventHeader,
    pub key: RetransmitKey,
    /// Segments retransmitted (a TSO/GSO skb carries several; a SYN-ACK counts one).
    pub segs: u32,
    /// 1 for a SYN-ACK retransmitted by a listener, else 0.
    pub synack: u32,
    /// Kernel stack id in the `STACKS` map (negative when not recorded): RTO timer or fast
    /// retransmit, and from where.
    pub stack_id: i32,
    pub _pad: u32,
}

/// Key of the in-kernel `RETRANSMIT_STACKS` per-CPU hash (value: segments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransmitStackKey {
    pub netns: u32,
    pub stack_id: i32,
}

crate::user_pod!(RetransmitKey, RetransmitEvent, RetransmitStackKey);

//! The drop probe (`skb:kfree_skb`): one event per dropped packet, and exact counts per
//! namespace, reason and kernel location kept in the kernel.

use crate::{event::EventHeader, flow::Flow};

/// Reason code meaning "this kernel's tracepoint has no `reason` field" (before Linux 5.17).
pub const REASON_UNAVAILABLE: u32 = u32::MAX;

/// Key of the in-kernel `DROP_COUNTS` per-CPU hash: drops are counted exactly there, even when
/// the ring buffer overflows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// Network namespace inode the drop is attributed to (0 if unknown).
    pub netns: u32,
    /// `enum skb_drop_reason` value, or [`REASON_UNAVAILABLE`].
    pub reason: u32,
    /// Kernel text address where the packet was freed (`location` in the tracepoint).
    pub location: u64,
}

/// One dropped packet, as sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub header: EventHeader,
    /// Network namespace inode, reason and kernel location (same meaning as [`DropKey`]).
    pub key: DropKey,
    /// Interface index of `skb->dev` (0 if none), in the namespace of the drop.
    pub ifindex: u32,
    /// EtherType of the packet, host byte order (`0x0800` IPv4, `0x86dd` IPv6, `0x0806` ARP).
    pub protocol: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Kernel stack id in the `STACKS` map, or negative when no stack was recorded.
    pub stack_id: i32,
    /// Reserved, zero.
    pub _pad2: u32,
    /// Addresses and ports read from the packet's headers, when it has them.
    pub flow: Flow,
}

/// Key of the in-kernel `DROP_STACKS` per-CPU hash: exact drops per kernel stack, for flame
/// graphs that add up even when events are lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropStackKey {
    pub netns: u32,
    pub reason: u32,
    /// Id in the `STACKS` map; negative when the stack could not be recorded.
    pub stack_id: i32,
    pub _pad: u32,
}

crate::user_pod!(DropKey, DropEvent, DropStackKey);

/// Name of the global holding how many bytes of each dropped packet the drop probe copies (a
/// `u32`; 0: none). Written by userspace before load into a read-only global: at 0 the verifier
/// sees the copy can never run and removes it, so the drop probe costs what it did without it.
pub const DROP_CAPTURE_BYTES_GLOBAL: &str = "NETTOOLS_DROP_CAPTURE_BYTES";
/// Name of the global holding [`DropCapture`].
pub const DROP_CAPTURE_GLOBAL: &str = "NETTOOLS_DROP_CAPTURE";

/// The most bytes of a dropped packet the kernel copies into one [`DropPacketEvent`]: a
/// compile-time bound, so the verifier can check the copy stays inside the event (an Ethernet
/// MTU's worth of IP packet, rounded up).
pub const DROP_PACKET_MAX: usize = 1536;

/// Where a dropped packet's bytes are (`nettools capture`): the `struct sk_buff` fields the copy
/// reads besides those in `KernelOffsets`, resolved from this kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCapture {
    /// `struct sk_buff`: `len` (bytes from `data` to the packet's end, paged part included).
    pub skb_len: u32,
    /// `struct sk_buff`: `data_len` (bytes of the packet in pages, not in the linear part).
    pub skb_data_len: u32,
    /// `struct sk_buff`: `data` (pointer to the packet's current start).
    pub skb_data: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

/// A dropped packet's bytes, from its network (IP) header on, with the same attribution as a
/// [`DropEvent`]. Sent only while `nettools capture` runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropPacketEvent {
    pub header: EventHeader,
    /// Network namespace inode, reason and kernel location.
    pub key: DropKey,
    /// Interface index of `skb->dev` (0 if none), in the namespace of the drop.
    pub ifindex: u32,
    /// EtherType of the packet, host byte order.
    pub protocol: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Length of the packet from its network header to its end, as the kernel held it.
    pub orig_len: u32,
    /// Bytes of `data` that hold the packet (0 when none could be read).
    pub captured: u32,
    /// The first `captured` bytes of the packet from its network header; the rest is garbage.
    pub data: [u8; DROP_PACKET_MAX],
}

crate::user_pod!(DropCapture, DropPacketEvent);

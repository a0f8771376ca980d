//! Load-time settings: userspace resolves these from the running kernel (BTF, tracefs) and writes
//! them into the eBPF object's globals before loading it. Nothing kernel-specific is compiled in.

/// Name of the global holding [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "NETTOOLS_OFFSETS";
/// Name of the global holding [`KfreeSkbLayout`].
pub const KFREE_SKB_GLOBAL: &str = "NETTOOLS_KFREE_SKB";
/// Name of the global holding [`Filter`].
pub const FILTER_GLOBAL: &str = "NETTOOLS_FILTER";
/// Name of the global holding how many bytes of events wait in the ring buffer before the
/// collector is woken (0: woken for every event).
pub const WAKEUP_BYTES_GLOBAL: &str = "NETTOOLS_WAKEUP_BYTES";
/// Name of the global saying whether drops and retransmits record their kernel stack (1) or not
/// (0): only flame graphs and folded stacks need them, and the stack walk is most of a drop's
/// cost.
pub const STACKS_GLOBAL: &str = "NETTOOLS_STACKS";
/// Name of the global holding the namespace the bench's synthetic drop events are attributed to.
pub const SYNTHETIC_NETNS_GLOBAL: &str = "NETTOOLS_SYNTHETIC_NETNS";
/// Entries of the kernel stack map when stacks are recorded (one when they are not).
pub const STACK_MAP_ENTRIES: u32 = 16384;

/// Entries of `TRACED_NETNS_DIRECT`, the direct-mapped table of traced namespaces (a power of
/// two). Namespace inodes are handed out nearly in sequence, so they rarely share an entry; one
/// that finds its entry taken goes to the `TRACED_NETNS` hash instead.
pub const TRACED_NETNS_DIRECT_ENTRIES: u32 = 4096;

/// Offset value meaning "this kernel has no such field".
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets of the kernel struct fields the probes read, resolved from
/// `/sys/kernel/btf/vmlinux` at start-up (Rust eBPF has no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sk_buff`: `dev`.
    pub skb_dev: u32,
    /// `struct sk_buff`: `sk`.
    pub skb_sk: u32,
    /// `struct sk_buff`: `head`.
    pub skb_head: u32,
    /// `struct sk_buff`: `network_header` (u16 offset from `head`).
    pub skb_network_header: u32,
    /// `struct sk_buff`: `transport_header` (u16 offset from `head`).
    pub skb_transport_header: u32,
    /// `struct net_device`: `ifindex`.
    pub dev_ifindex: u32,
    /// `struct net_device`: `nd_net.net` (pointer to `struct net`).
    pub dev_net: u32,
    /// `struct sock`: `__sk_common.skc_net.net` (pointer to `struct net`).
    pub sk_net: u32,
    /// `struct net`: `ns.inum` (the namespace inode number).
    pub net_inum: u32,
    /// `struct sk_buff`: `cb` (the control buffer holding `struct tcp_skb_cb`).
    pub skb_cb: u32,
    /// `struct tcp_skb_cb`: `tcp_gso_segs` (segments carried by one skb).
    pub tcp_cb_gso_segs: u32,
    /// `struct net_device`: `name`.
    pub dev_name: u32,
    /// `struct sk_buff`: `protocol` (the EtherType, network byte order).
    pub skb_protocol: u32,
    /// `struct neighbour`: `dev`.
    pub neigh_dev: u32,
    /// `struct neighbour`: `nud_state`.
    pub neigh_nud_state: u32,
    /// `struct neighbour`: `primary_key` (the neighbour's address).
    pub neigh_primary_key: u32,
    /// `struct neighbour`: `tbl`.
    pub neigh_tbl: u32,
    /// `struct neigh_table`: `family`.
    pub neigh_table_family: u32,
}

impl KernelOffsets {
    /// Every offset absent: what the kernel side sees before userspace writes the real ones.
    pub const UNSET: Self = Self {
        skb_dev: ABSENT,
        skb_sk: ABSENT,
        skb_head: ABSENT,
        skb_network_header: ABSENT,
        skb_transport_header: ABSENT,
        dev_ifindex: ABSENT,
        dev_net: ABSENT,
        sk_net: ABSENT,
        net_inum: ABSENT,
        skb_cb: ABSENT,
        tcp_cb_gso_segs: ABSENT,
        dev_name: ABSENT,
        skb_protocol: ABSENT,
        neigh_dev: ABSENT,
        neigh_nud_state: ABSENT,
        neigh_primary_key: ABSENT,
        neigh_tbl: ABSENT,
        neigh_table_family: ABSENT,
    };
}

/// The arguments of the `kfree_skb` raw tracepoint on this kernel. Its prototype grew at the end:
/// `(skb, location)`, then `reason` (5.17), then `rx_sk` (6.12); userspace reads which from the
/// kernel's BTF (`btf_trace_kfree_skb`) or, failing that, from the tracepoint's tracefs fields.
/// The raw tracepoint hands the program its arguments as they are, where the plain tracepoint
/// first copies them into a record: reading them costs nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfreeSkbLayout {
    /// 1 when argument 2 is the drop reason (Linux 5.17+).
    pub has_reason: u32,
    /// 1 when argument 3 is the receiving socket (Linux 6.12+).
    pub has_rx_sk: u32,
    /// Reason values that are not drops (`SKB_NOT_DROPPED_YET`, `SKB_CONSUMED`,
    /// `SKB_DROP_REASON_NOT_SPECIFIED`), [`ABSENT`] where this kernel lacks them.
    pub not_drops: [u32; 3],
}

/// Name of the global holding [`RetransmitLayout`] for `tcp:tcp_retransmit_skb`.
pub const RETRANSMIT_GLOBAL: &str = "NETTOOLS_RETRANSMIT";
/// Name of the global holding [`RetransmitLayout`] for `tcp:tcp_retransmit_synack`.
pub const SYNACK_GLOBAL: &str = "NETTOOLS_SYNACK";

/// Field offsets in the `tcp:tcp_retransmit_skb` and `tcp:tcp_retransmit_synack` records (the
/// SYN-ACK record has no `skbaddr` and no `state`: those are [`ABSENT`] there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetransmitLayout {
    pub skbaddr: u32,
    pub skaddr: u32,
    pub state: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// The attempt's result (`err`, newer kernels): the record is also written for attempts
    /// the kernel gave up on before sending.
    pub err: u32,
}

impl RetransmitLayout {
    /// Every field absent (the program does nothing until userspace sets the layout).
    pub const UNSET: Self = Self {
        skbaddr: ABSENT,
        skaddr: ABSENT,
        state: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        family: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        err: ABSENT,
    };
}

/// Which network namespaces the probes report on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// 1: report every namespace; 0: only those in the `TRACED_NETNS` map.
    pub all: u32,
    /// Reserved, zero.
    pub _pad: u32,
}

crate::user_pod!(KernelOffsets, KfreeSkbLayout, Filter, RetransmitLayout);

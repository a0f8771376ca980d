//! Indices of the per-CPU health counters (`COUNTERS` map) that make losses visible.
//!
//! Every place where the kernel side gives up on something (a full ring buffer, a full map, a
//! kernel read that failed) bumps one of these, and the report shows them: nothing is lost silently.

/// An event could not be reserved in the ring buffer (userspace too slow or buffer too small).
pub const EVENTS_LOST: u32 = 0;
/// A drop could not be counted because the `DROP_COUNTS` map was full.
pub const DROP_COUNT_MAP_FULL: u32 = 1;
/// `skb:kfree_skb` fired with a reason that is not a drop (`NOT_SPECIFIED`, `CONSUMED`).
pub const FREES_NOT_DROPS: u32 = 2;
/// A drop whose network namespace could not be read from the skb, its device or its socket.
pub const DROP_NETNS_UNKNOWN: u32 = 3;
/// Drops seen in namespaces that are not traced (filtered out in the kernel).
pub const DROPS_FILTERED: u32 = 4;
/// A retransmit not counted per flow because the `RETRANSMIT_FLOWS` map was full (the
/// namespace total still counts it).
pub const RETRANSMIT_FLOW_MAP_FULL: u32 = 5;
/// A map used by the tc programs (`TRAFFIC`, `NEIGH_PROBES`) was full.
pub const TC_MAP_FULL: u32 = 6;
/// A neighbour failure not counted because `NEIGH_FAILURE_TOTALS` was full (failures in more
/// namespaces than it has entries).
pub const NEIGH_MAP_FULL: u32 = 7;
/// Entries inserted into the handshake pairing map.
pub const HANDSHAKE_INSERTED: u32 = 8;
/// Entries the kernel removed from it (answered or reset).
pub const HANDSHAKE_REMOVED: u32 = 9;
/// Entries inserted into the DNS pairing map.
pub const DNS_INSERTED: u32 = 10;
/// Entries the kernel removed from it (answered).
pub const DNS_REMOVED: u32 = 11;
/// Entries inserted into the ICMP pairing map.
pub const ICMP_INSERTED: u32 = 12;
/// Entries the kernel removed from it (answered).
pub const ICMP_REMOVED: u32 = 13;
/// Entries inserted into the transit map.
pub const TRANSIT_INSERTED: u32 = 14;
/// Entries the kernel removed from it (matched on another veth).
pub const TRANSIT_REMOVED: u32 = 15;
/// DNS responses that matched no waiting query (late, or the query was not seen).
pub const DNS_UNMATCHED: u32 = 16;
/// A drop or retransmit not counted per stack because its stack map was full.
pub const STACK_COUNT_MAP_FULL: u32 = 17;
/// Entries inserted into the `NEIGH_PROBES` LRU map (ARP/NDP lookups seen on veths).
pub const NEIGH_PROBES_INSERTED: u32 = 18;
/// `tcp_retransmit_skb` records of attempts the kernel gave up on before sending (its `err`:
/// the segment still in the host's queue, no window, no memory, no route). TcpRetransSegs does
/// not count them, so neither do the retransmit totals.
pub const RETRANSMITS_NOT_SENT: u32 = 19;
/// Addresses inserted into the `NEIGH_FAILURES` LRU map: with those present and those
/// userspace removed, what the map pushed out to make room.
pub const NEIGH_FAILURES_INSERTED: u32 = 20;
/// IPv4 neighbours (ARP) the neighbour probe saw go to FAILED, in every namespace, traced or
/// not: set against the kernel's own `res_failed` of the ARP table, what it never saw.
pub const NEIGH_FAILED_SEEN_ARP: u32 = 21;
/// The same for IPv6 neighbours (NDP) and the NDP table.
pub const NEIGH_FAILED_SEEN_NDP: u32 = 22;
/// Number of counters (size of the `COUNTERS` array).
pub const COUNT: u32 = 24;

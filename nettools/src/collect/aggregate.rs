//! Per-namespace aggregation: exact counts from the kernel's maps, and detail (flows) from events.

use std::collections::{BTreeMap, HashMap};

use nettools_common::{
    connections::{ConnectionEvent, RECEIVED, ResetEvent, RttSampleEvent, SENT, SocketErrorEvent},
    drops::{DropEvent, DropKey},
    flow::Flow,
    neighbours::{NeighbourEvent, NeighbourKey},
    retransmits::{RetransmitEvent, RetransmitKey},
    traffic::{NeighProbeKey, NeighProbeValue, TooBigKey, TooBigValue, TrafficKey, TrafficValue},
};

pub use super::flow::{FlowOrd, MAX_FLOWS_PER_NAMESPACE};
use crate::probe::connections::Counts;

/// Drops in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    /// Exact counts from the kernel: reason → kernel location → packets.
    pub counts: BTreeMap<u32, BTreeMap<u64, u64>>,
    /// Drop events received (equals the total unless events were lost).
    pub events: u64,
    /// (flow, reason) → packets, from events.
    pub flows: HashMap<(Flow, u32), u64>,
    /// Events whose flow was not kept because the flow table was full.
    pub flows_untracked: u64,
}

impl DropStats {
    /// Total drops (exact).
    pub fn total(&self) -> u64 {
        self.counts.values().flat_map(|l| l.values()).sum()
    }
}

/// TCP retransmissions in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetransmitStats {
    /// Exact segments (counted in the kernel per namespace).
    pub total: u64,
    /// Exact segments per (TCP state, flow), from the kernel's per-flow map.
    pub flows: BTreeMap<(u32, FlowOrd), u64>,
    /// Retransmit events received.
    pub events: u64,
}

/// Neighbour (ARP/NDP) failures in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighbourStats {
    /// Exact failures of the namespace, whatever the address.
    pub total: u64,
    /// Failures per (ifindex, family, address) still in the kernel's LRU address map (exact
    /// while an address is in it).
    pub failures: BTreeMap<(u32, u8, [u8; 16]), u64>,
    /// Device names seen in events, by ifindex.
    pub devices: BTreeMap<u32, String>,
    /// Failure events received.
    pub events: u64,
}

/// Everything seen in one network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    pub drops: DropStats,
    pub retransmits: RetransmitStats,
    pub neighbours: NeighbourStats,
    /// TCP resets and socket errors (the `connections` probe).
    pub connections: super::connections::ConnectionStats,
}

impl NamespaceStats {
    /// Whether anything at all was seen here.
    pub fn is_empty(&self) -> bool {
        self.drops.total() + self.drops.events == 0
            && self.retransmits.total + self.retransmits.events == 0
            && self.neighbours.failures.is_empty()
            && self.connections.is_empty()
    }
}

/// What the tc programs saw on one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// (direction, class, l4 protocol) → packets and bytes.
    pub traffic: BTreeMap<(u8, u8, u8), (u64, u64)>,
    /// ARP/NDP lookups: (family, address) → requests, replies, first and last request (ktime).
    pub probes: BTreeMap<(u8, [u8; 16]), NeighProbeValue>,
    /// ICMP "fragmentation needed" / "packet too big": (direction, family, sender,
    /// destination of the packet too big) → messages and the smallest MTU named.
    pub too_big: BTreeMap<(u8, u8, [u8; 16], [u8; 16]), TooBigValue>,
}

/// All namespaces, keyed by inode.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub namespaces: BTreeMap<u32, NamespaceStats>,
    /// Per interface (ifindex in the host namespace), from the tc programs.
    pub interfaces: BTreeMap<u32, InterfaceStats>,
    /// Latency samples and pairing outcomes, per interface.
    pub latency: super::latency::LatencyStats,
    /// Records that could not be decoded (object and binary out of step).
    pub undecodable: u64,
}

impl Aggregate {
    /// Adds the detail of one drop event.
    pub fn add_drop(&mut self, ev: &DropEvent) {
        let drops = &mut self.namespaces.entry(ev.key.netns).or_default().drops;
        drops.events += 1;
        let key = (ev.flow, ev.key.reason);
        if let Some(n) = drops.flows.get_mut(&key) {
            *n += 1;
        } else if drops.flows.len() < MAX_FLOWS_PER_NAMESPACE {
            drops.flows.insert(key, 1);
        } else {
            drops.flows_untracked += 1;
        }
    }

    /// Adds one retransmission event.
    pub fn add_retransmit(&mut self, ev: &RetransmitEvent) {
        self.namespaces
            .entry(ev.key.netns)
            .or_default()
            .retransmits
            .events += 1;
    }

    /// Adds one neighbour failure event (names its device).
    pub fn add_neighbour(&mut self, ev: &NeighbourEvent) {
        let n = &mut self.namespaces.entry(ev.key.netns).or_default().neighbours;
        n.events += 1;
        let end = ev.dev.iter().position(|&b| b == 0).unwrap_or(ev.dev.len());
        if let Ok(name) = std::str::from_utf8(&ev.dev[..end])
            && !name.is_empty()
        {
            n.devices.insert(ev.key.ifindex, name.to_string());
        }
    }

    /// Replaces retransmit counts with the kernel's exact figures.
    pub fn set_retransmit_counts(
        &mut self,
        totals: &BTreeMap<u32, u64>,
        flows: &[(RetransmitKey, u64)],
    ) {
        for ns in self.namespaces.values_mut() {
            ns.retransmits.total = 0;
            ns.retransmits.flows.clear();
        }
        for (netns, n) in totals {
            if *n > 0 {
                self.namespaces.entry(*netns).or_default().retransmits.total = *n;
            }
        }
        for (key, n) in flows {
            if *n > 0 {
                *self
                    .namespaces
                    .entry(key.netns)
                    .or_default()
                    .retransmits
                    .flows
                    .entry((key.state, FlowOrd(key.flow)))
                    .or_default() += n;
            }
        }
    }

    /// Replaces neighbour failure counts with the kernel's exact figures.
    pub fn set_neighbour_counts(&mut self, counts: &[(NeighbourKey, u64)], totals: &[(u32, u64)]) {
        for ns in self.namespaces.values_mut() {
            ns.neighbours.failures.clear();
            ns.neighbours.total = 0;
        }
        for (netns, n) in totals {
            if *n > 0 {
                self.namespaces.entry(*netns).or_default().neighbours.total = *n;
            }
        }
        for (key, n) in counts {
            if *n > 0 {
                *self
                    .namespaces
                    .entry(key.netns)
                    .or_default()
                    .neighbours
                    .failures
                    .entry((key.ifindex, key.family, key.addr))
                    .or_default() += n;
            }
        }
    }

    /// Replaces the per-interface traffic and ARP/NDP figures with the kernel's.
    pub fn set_interfaces(
        &mut self,
        traffic: &[(TrafficKey, TrafficValue)],
        probes: &[(NeighProbeKey, NeighProbeValue)],
        too_big: &[(TooBigKey, TooBigValue)],
    ) {
        self.interfaces.clear();
        for (k, v) in traffic {
            let e = self
                .interfaces
                .entry(k.ifindex)
                .or_default()
                .traffic
                .entry((k.direction, k.class, k.l4_proto))
                .or_default();
            e.0 += v.packets;
            e.1 += v.bytes;
        }
        for (k, v) in probes {
            self.interfaces
                .entry(k.ifindex)
                .or_default()
                .probes
                .insert((k.family, k.addr), *v);
        }
        for (k, v) in too_big {
            self.interfaces
                .entry(k.ifindex)
                .or_default()
                .too_big
                .insert((k.direction, k.family, k.from, k.to), *v);
        }
    }

    /// Replaces the drop counts with the kernel's exact figures.
    pub fn set_drop_counts(&mut self, counts: &[(DropKey, u64)]) {
        for ns in self.namespaces.values_mut() {
            ns.drops.counts.clear();
        }
        for (key, n) in counts {
            if *n == 0 {
                continue;
            }
            *self
                .namespaces
                .entry(key.netns)
                .or_default()
                .drops
                .counts
                .entry(key.reason)
                .or_default()
                .entry(key.location)
                .or_default() += n;
        }
    }
}

/// Resets, socket errors and finished connections (the `connections` probe).
impl Aggregate {
    /// Adds one reset event.
    pub fn add_reset(&mut self, ev: &ResetEvent) {
        self.namespaces
            .entry(ev.key.netns)
            .or_default()
            .connections
            .events += 1;
    }

    /// Adds one socket-error event (remembers the socket's owner when known).
    pub fn add_socket_error(&mut self, ev: &SocketErrorEvent) {
        self.namespaces
            .entry(ev.key.netns)
            .or_default()
            .connections
            .add_socket_error(ev);
    }

    /// Adds one finished connection: its RTT sample and the top lists.
    pub fn add_connection(&mut self, ev: &ConnectionEvent) {
        self.namespaces
            .entry(ev.netns)
            .or_default()
            .connections
            .add_connection(ev);
    }

    /// Adds one RTT sample of an open connection.
    pub fn add_rtt_sample(&mut self, ev: &RttSampleEvent) {
        self.namespaces
            .entry(ev.netns)
            .or_default()
            .connections
            .add_rtt(ev.srtt_us, ev.min_rtt_us);
    }

    /// Replaces reset and socket-error counts with the kernel's exact figures.
    pub fn set_connection_counts(&mut self, counts: &Counts) {
        for ns in self.namespaces.values_mut() {
            let c = &mut ns.connections;
            c.resets_sent = 0;
            c.resets_received = 0;
            c.reset_flows.clear();
            c.errors.clear();
            c.error_flows.clear();
            c.closed.clear();
        }
        for (k, n) in counts.closed_totals.iter().filter(|(_, n)| *n > 0) {
            *self
                .namespaces
                .entry(k.netns)
                .or_default()
                .connections
                .closed
                .entry(k.how)
                .or_default() += n;
        }
        for (k, n) in counts.reset_totals.iter().filter(|(_, n)| *n > 0) {
            let c = &mut self.namespaces.entry(k.netns).or_default().connections;
            match k.direction {
                SENT => c.resets_sent += n,
                RECEIVED => c.resets_received += n,
                _ => {}
            }
        }
        for (k, n) in counts.reset_flows.iter().filter(|(_, n)| *n > 0) {
            *self
                .namespaces
                .entry(k.netns)
                .or_default()
                .connections
                .reset_flows
                .entry((k.direction, k.state, k.reason, FlowOrd(k.flow)))
                .or_default() += n;
        }
        for (k, n) in counts.error_totals.iter().filter(|(_, n)| *n > 0) {
            *self
                .namespaces
                .entry(k.netns)
                .or_default()
                .connections
                .errors
                .entry(k.errno)
                .or_default() += n;
        }
        for (k, n) in counts.error_flows.iter().filter(|(_, n)| *n > 0) {
            *self
                .namespaces
                .entry(k.netns)
                .or_default()
                .connections
                .error_flows
                .entry((k.errno, FlowOrd(k.flow)))
                .or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(netns: u32, reason: u32, sport: u16) -> DropEvent {
        DropEvent {
            key: DropKey {
                netns,
                reason,
                location: 0x10,
            },
            flow: Flow {
                family: 2,
                l4_proto: 17,
                sport,
                dport: 7777,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn events_and_counts_are_kept_per_namespace() {
        let mut a = Aggregate::default();
        for _ in 0..3 {
            a.add_drop(&drop(1, 12, 5000));
        }
        a.add_drop(&drop(2, 12, 5000));
        a.set_drop_counts(&[
            (
                DropKey {
                    netns: 1,
                    reason: 12,
                    location: 0x10,
                },
                3,
            ),
            (
                DropKey {
                    netns: 1,
                    reason: 12,
                    location: 0x20,
                },
                2,
            ),
            (
                DropKey {
                    netns: 2,
                    reason: 58,
                    location: 0x30,
                },
                1,
            ),
            (
                DropKey {
                    netns: 3,
                    reason: 58,
                    location: 0x30,
                },
                0,
            ),
        ]);
        assert_eq!(a.namespaces[&1].drops.total(), 5);
        assert_eq!(a.namespaces[&1].drops.events, 3);
        assert_eq!(a.namespaces[&1].drops.counts[&12][&0x20], 2);
        assert_eq!(a.namespaces[&2].drops.total(), 1);
        assert!(
            !a.namespaces.contains_key(&3),
            "zero counts are not namespaces with drops"
        );
        // Counts are replaced, not added, when the kernel's figures are read again.
        a.set_drop_counts(&[(
            DropKey {
                netns: 1,
                reason: 12,
                location: 0x10,
            },
            4,
        )]);
        assert_eq!(a.namespaces[&1].drops.total(), 4);
        assert_eq!(a.namespaces[&2].drops.total(), 0);
    }

    #[test]
    fn flow_table_is_bounded() {
        let mut a = Aggregate::default();
        for i in 0..(MAX_FLOWS_PER_NAMESPACE + 10) {
            a.add_drop(&drop(1, 12, i as u16));
        }
        let d = &a.namespaces[&1].drops;
        assert_eq!(d.flows.len(), MAX_FLOWS_PER_NAMESPACE);
        assert_eq!(d.flows_untracked, 10);
        assert_eq!(d.events, (MAX_FLOWS_PER_NAMESPACE + 10) as u64);
    }
}

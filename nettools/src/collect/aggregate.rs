//! Per-namespace aggregation: exact counts from the kernel's maps, and detail (flows) from events.

use std::collections::{BTreeMap, HashMap};

use nettools_common::{
    drops::{DropEvent, DropKey},
    flow::Flow,
};

/// At most this many distinct dropped flows are kept per namespace; more are counted as
/// `flows_untracked` so memory stays bounded under a flood of distinct flows.
pub const MAX_FLOWS_PER_NAMESPACE: usize = 4096;

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

/// Everything seen in one network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceStats {
    pub drops: DropStats,
}

/// All namespaces, keyed by inode.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    pub namespaces: BTreeMap<u32, NamespaceStats>,
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

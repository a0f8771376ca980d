//! Flows as keys of the collector's sorted maps, and how many of them one namespace may hold.

use nettools_common::flow::Flow;

/// At most this many distinct flows (dropped, reset, failed) are kept per namespace; more are counted as
/// `flows_untracked` so memory stays bounded under a flood of distinct flows.
pub const MAX_FLOWS_PER_NAMESPACE: usize = 4096;

/// A [`Flow`] with an order, for sorted maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowOrd(pub Flow);

impl PartialOrd for FlowOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |f: &Flow| (f.family, f.l4_proto, f.saddr, f.sport, f.daddr, f.dport);
        key(&self.0).cmp(&key(&other.0))
    }
}

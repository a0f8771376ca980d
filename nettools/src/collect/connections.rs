//! Resets and socket errors per namespace: exact counts from the kernel's maps, and from events
//! the process that owned a failing socket.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use nettools_common::connections::{ConnectionEvent, SocketErrorEvent};

use super::flow::{FlowOrd, MAX_FLOWS_PER_NAMESPACE};

/// The process that owned a socket (`pid` 0 when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// How many finished connections each top list keeps.
pub const TOP_CONNECTIONS: usize = 5;

/// Resets, socket errors and finished connections in one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionStats {
    /// Exact resets this namespace's stack sent.
    pub resets_sent: u64,
    /// Exact resets this namespace's sockets received.
    pub resets_received: u64,
    /// Resets per (direction, TCP state, reason, flow), from the kernel's LRU flow map.
    pub reset_flows: BTreeMap<(u32, u32, u32, FlowOrd), u64>,
    /// Exact socket errors per errno.
    pub errors: BTreeMap<u32, u64>,
    /// Socket errors per (errno, flow), from the kernel's LRU flow map.
    pub error_flows: BTreeMap<(u32, FlowOrd), u64>,
    /// Who owned the socket of an error, from events (bounded).
    pub owners: BTreeMap<(u32, FlowOrd), Owner>,
    /// Reset and socket-error events received.
    pub events: u64,
    /// Exact finished connections per way they ended (`how`).
    pub closed: BTreeMap<u32, u64>,
    /// Smoothed RTT samples (nanoseconds): of open connections (when established, at most
    /// one a second while they carry traffic, at each retransmission, when they leave
    /// ESTABLISHED) and of each finished connection, from events.
    pub rtt: Option<Histogram<u64>>,
    /// The kernel's windowed minimum RTT at the same samples (nanoseconds).
    pub min_rtt: Option<Histogram<u64>>,
    /// The finished connections with the most retransmitted segments, and with the highest
    /// smoothed RTT.
    pub top_by_retransmits: Vec<ConnectionEvent>,
    pub top_by_rtt: Vec<ConnectionEvent>,
}

// Histograms compare by their counts: equality is total here.
impl Eq for ConnectionStats {}

/// Keeps `ev` in `top` when it is among the `TOP_CONNECTIONS` largest by `key`.
fn keep_top(
    top: &mut Vec<ConnectionEvent>,
    ev: &ConnectionEvent,
    key: fn(&ConnectionEvent) -> u32,
) {
    if key(ev) == 0 {
        return;
    }
    top.push(*ev);
    top.sort_by_key(|e| std::cmp::Reverse(key(e)));
    top.truncate(TOP_CONNECTIONS);
}

impl ConnectionStats {
    /// Adds one socket-error event (remembers the socket's owner when known).
    pub fn add_socket_error(&mut self, ev: &SocketErrorEvent) {
        self.events += 1;
        if ev.owner.pid != 0 && self.owners.len() < MAX_FLOWS_PER_NAMESPACE {
            self.owners.insert(
                (ev.key.errno, FlowOrd(ev.key.flow)),
                Owner {
                    pid: ev.owner.pid,
                    comm: comm_text(&ev.owner.comm),
                },
            );
        }
    }

    /// Adds one finished connection: its RTT sample and the top lists.
    pub fn add_connection(&mut self, ev: &ConnectionEvent) {
        self.events += 1;
        self.add_rtt(ev.srtt_us, ev.min_rtt_us);
        keep_top(&mut self.top_by_retransmits, ev, |e| e.total_retrans);
        keep_top(&mut self.top_by_rtt, ev, |e| e.srtt_us);
    }

    /// Adds one RTT sample (µs; a connection without an RTT measurement has 0 and is skipped).
    pub fn add_rtt(&mut self, srtt_us: u32, min_rtt_us: u32) {
        if srtt_us == 0 {
            return;
        }
        let h = self.rtt.get_or_insert_with(super::latency::new_histogram);
        h.saturating_record(u64::from(srtt_us) * 1000);
        if min_rtt_us > 0 && min_rtt_us != u32::MAX {
            let h = self
                .min_rtt
                .get_or_insert_with(super::latency::new_histogram);
            h.saturating_record(u64::from(min_rtt_us) * 1000);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.resets_sent + self.resets_received + self.events == 0
            && self.errors.is_empty()
            && self.closed.is_empty()
            && self.rtt.is_none()
    }
}

/// A NUL-terminated kernel comm as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collect::aggregate::Aggregate, probe::connections::Counts};
    use nettools_common::{
        connections::{
            ErrorTotalKey, RECEIVED, ResetKey, ResetTotalKey, SENT, SockOwner, SocketErrorKey,
        },
        flow::Flow,
    };

    #[test]
    fn counts_replace_and_owners_come_from_events() {
        let mut a = Aggregate::default();
        let flow = Flow {
            family: 2,
            l4_proto: 6,
            sport: 40000,
            dport: 80,
            ..Flow::default()
        };
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        a.add_socket_error(&SocketErrorEvent {
            key: SocketErrorKey {
                netns: 7,
                errno: 111,
                flow,
            },
            owner: SockOwner {
                pid: 42,
                _pad: 0,
                comm,
            },
            ..Default::default()
        });
        let counts = Counts {
            reset_totals: vec![
                (
                    ResetTotalKey {
                        netns: 7,
                        direction: RECEIVED,
                    },
                    3,
                ),
                (
                    ResetTotalKey {
                        netns: 8,
                        direction: SENT,
                    },
                    0,
                ),
            ],
            reset_flows: vec![(
                ResetKey {
                    netns: 7,
                    direction: RECEIVED,
                    state: 2,
                    reason: u32::MAX,
                    flow,
                },
                3,
            )],
            error_totals: vec![(
                ErrorTotalKey {
                    netns: 7,
                    errno: 111,
                },
                2,
            )],
            error_flows: vec![],
            closed_totals: vec![],
        };
        a.set_connection_counts(&counts);
        a.set_connection_counts(&counts);
        let c = &a.namespaces[&7].connections;
        assert_eq!((c.resets_received, c.resets_sent), (3, 0));
        assert_eq!(c.errors[&111], 2);
        assert_eq!(c.reset_flows.values().sum::<u64>(), 3);
        assert_eq!(c.owners[&(111, FlowOrd(flow))].comm, "curl");
        assert!(
            !a.namespaces.contains_key(&8),
            "zero counts are no namespace"
        );
    }
}

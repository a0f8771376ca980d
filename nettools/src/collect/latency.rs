//! Latency samples per interface and kind, in HdrHistograms, and what the pairing could not
//! pair: refused and unanswered handshakes, DNS rcodes and unanswered queries per server,
//! unanswered echo requests.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use nettools_common::{
    flow::Flow,
    flow::ip as addr,
    latency::{
        DnsEvent, DnsKey, DnsPending, HandshakeEvent, IcmpEvent, Pending, PendingKey, TransitEvent,
        outcome, role,
    },
};
use serde::Serialize;

use super::dns;
use crate::probe::latency::Expired;

/// What a latency sample measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyKind {
    /// The workload connected out: SYN → SYN-ACK as its veth sees it.
    TcpConnect,
    /// The workload accepted: its own SYN → SYN-ACK answer time.
    TcpAccept,
    /// The workload's DNS queries: query → response.
    Dns,
    /// DNS queries the workload answered (it is a DNS server).
    DnsServed,
    /// The workload's pings: echo request → reply.
    IcmpEcho,
    /// Pings the workload answered.
    IcmpAnswer,
    /// Packets from another traced workload into this one: time through the host.
    Transit,
}

impl LatencyKind {
    pub const ALL: [Self; 7] = [
        Self::TcpConnect,
        Self::TcpAccept,
        Self::Dns,
        Self::DnsServed,
        Self::IcmpEcho,
        Self::IcmpAnswer,
        Self::Transit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TcpConnect => "tcp_connect",
            Self::TcpAccept => "tcp_accept",
            Self::Dns => "dns",
            Self::DnsServed => "dns_served",
            Self::IcmpEcho => "icmp_echo",
            Self::IcmpAnswer => "icmp_answer",
            Self::Transit => "transit",
        }
    }

    /// What it means, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TcpConnect => "TCP connect (SYN -> SYN-ACK)",
            Self::TcpAccept => "TCP accept (its SYN-ACK answer time)",
            Self::Dns => "DNS query -> response",
            Self::DnsServed => "DNS queries it answered",
            Self::IcmpEcho => "ping (echo request -> reply)",
            Self::IcmpAnswer => "pings it answered",
            Self::Transit => "transit through the host into it",
        }
    }
}

/// The smallest latency a histogram tells apart: 100 ns (shorter samples count as 100 ns).
pub const HISTOGRAM_LOWEST_NS: u64 = 100;
/// The largest: 10 minutes (longer samples count as 10 minutes).
pub const HISTOGRAM_HIGHEST_NS: u64 = 600_000_000_000;
/// Significant decimal digits: 2, so every recorded value is within 1 % of the true one.
pub const HISTOGRAM_DIGITS: u8 = 2;

/// A histogram for nanosecond latencies, [`HISTOGRAM_LOWEST_NS`] to [`HISTOGRAM_HIGHEST_NS`]
/// at [`HISTOGRAM_DIGITS`] significant digits. There is one per interface and latency kind,
/// which adds up in the node agent: these bounds keep one under 30 KiB, where 1 ns to 1 h at 3
/// digits took 270 KiB.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(HISTOGRAM_LOWEST_NS, HISTOGRAM_HIGHEST_NS, HISTOGRAM_DIGITS) {
        Ok(h) => h,
        // Constant, valid bounds: only a broken hdrhistogram gets here.
        Err(e) => panic!("hdrhistogram refused bounds 100 ns..10 min at 2 digits: {e:?}"),
    }
}

/// At most this many names (or servers) are kept per interface in each DNS table; the rest are
/// counted together under [`OTHER_NAMES`] / [`OTHER_SERVERS`], so totals stay exact and memory
/// stays bounded when a workload fails to resolve ever new names.
pub const MAX_DNS_NAMES: usize = 4096;
/// The entry counting the names that did not fit.
pub const OTHER_NAMES: &str = "(other names)";
/// The entry counting the servers that did not fit.
pub const OTHER_SERVERS: &str = "(other servers)";

/// Adds one to `key` in a table of at most [`MAX_DNS_NAMES`] keys (plus `other`).
fn bump_capped<K: Ord>(table: &mut BTreeMap<K, u64>, key: K, other: impl FnOnce() -> K) {
    if let Some(n) = table.get_mut(&key) {
        *n += 1;
    } else if table.len() < MAX_DNS_NAMES {
        table.insert(key, 1);
    } else {
        *table.entry(other()).or_default() += 1;
    }
}

/// DNS outcomes on one interface.
#[derive(Clone, Debug, Default)]
pub struct DnsStats {
    /// Responses by rcode name (NOERROR, NXDOMAIN, …).
    pub rcodes: BTreeMap<String, u64>,
    /// Responses by transport (`udp`, `tcp`).
    pub transports: BTreeMap<&'static str, u64>,
    /// Queries never answered within the timeout, per server address.
    pub unanswered_by_server: BTreeMap<String, u64>,
    /// … and per name.
    pub unanswered_by_name: BTreeMap<String, u64>,
    /// Names answered with an error rcode: (name, rcode) → count.
    pub failed_names: BTreeMap<(String, String), u64>,
    /// Responses whose question could not be read (cut or malformed).
    pub undecodable: u64,
}

/// Handshake outcomes on one interface, by role.
#[derive(Clone, Copy, Debug, Default)]
pub struct HandshakeStats {
    /// Answered with RST (connection refused).
    pub refused: u64,
    /// No answer within the timeout.
    pub unanswered: u64,
    /// SYNs sent again before the answer came.
    pub syn_retransmits: u64,
}

/// Everything latency-related, keyed by the interface (host-side veth) it was seen on.
#[derive(Debug, Default)]
pub struct LatencyStats {
    pub histograms: BTreeMap<(u32, LatencyKind), Histogram<u64>>,
    pub dns: BTreeMap<u32, DnsStats>,
    /// (ifindex, role) → outcomes.
    pub handshakes: BTreeMap<(u32, u8), HandshakeStats>,
    /// (ifindex, role) → echo requests never answered.
    pub icmp_unanswered: BTreeMap<(u32, u8), u64>,
    /// (to ifindex, from ifindex) → packets followed through the host.
    pub transit_pairs: BTreeMap<(u32, u32), u64>,
    /// Entries userspace removed from the pairing maps after the timeout.
    pub expired: Expired,
}

fn flow_endpoint_addr(f: &Flow, src: bool) -> String {
    let raw = if src { &f.saddr } else { &f.daddr };
    addr(f.family, raw)
        .map(|a| a.to_string())
        .unwrap_or_default()
}

impl LatencyStats {
    fn record(&mut self, ifindex: u32, kind: LatencyKind, ns: u64) {
        self.histograms
            .entry((ifindex, kind))
            .or_insert_with(new_histogram)
            .saturating_record(ns.max(100));
    }

    pub fn add_handshake(&mut self, ev: &HandshakeEvent) {
        let stats = self.handshakes.entry((ev.ifindex, ev.role)).or_default();
        stats.syn_retransmits += u64::from(ev.syns.saturating_sub(1));
        if ev.outcome == outcome::RESET {
            stats.refused += 1;
            return;
        }
        let kind = if ev.role == role::CLIENT {
            LatencyKind::TcpConnect
        } else {
            LatencyKind::TcpAccept
        };
        self.record(ev.ifindex, kind, ev.latency_ns);
    }

    /// Records a DNS response; returns what could be read of it.
    pub fn add_dns(&mut self, ev: &DnsEvent) -> Result<dns::DnsMessage, dns::DnsError> {
        let kind = if ev.role == role::CLIENT {
            LatencyKind::Dns
        } else {
            LatencyKind::DnsServed
        };
        self.record(ev.key.ifindex, kind, ev.latency_ns);
        let stats = self.dns.entry(ev.key.ifindex).or_default();
        *stats
            .transports
            .entry(if ev.key.flow.l4_proto == 6 {
                "tcp"
            } else {
                "udp"
            })
            .or_default() += 1;
        let len = usize::from(ev.len).min(ev.message.len());
        let parsed = dns::parse(&ev.message[..len]);
        match &parsed {
            Ok(m) => {
                let rcode = dns::rcode_name(m.rcode);
                if m.rcode != 0 {
                    let name = m.qname.clone().unwrap_or_else(|| "?".into());
                    let other = (OTHER_NAMES.to_string(), rcode.clone());
                    bump_capped(&mut stats.failed_names, (name, rcode.clone()), || other);
                }
                *stats.rcodes.entry(rcode).or_default() += 1;
                if m.qname.is_none() {
                    stats.undecodable += 1;
                }
            }
            Err(_) => stats.undecodable += 1,
        }
        parsed
    }

    pub fn add_icmp(&mut self, ev: &IcmpEvent) {
        let kind = if ev.role == role::CLIENT {
            LatencyKind::IcmpEcho
        } else {
            LatencyKind::IcmpAnswer
        };
        self.record(ev.ifindex, kind, ev.latency_ns);
    }

    pub fn add_transit(&mut self, ev: &TransitEvent) {
        self.record(ev.to_ifindex, LatencyKind::Transit, ev.latency_ns);
        *self
            .transit_pairs
            .entry((ev.to_ifindex, ev.from_ifindex))
            .or_default() += 1;
    }

    /// SYNs that waited past the timeout.
    pub fn expire_handshakes(&mut self, expired: &[(PendingKey, Pending)]) {
        for (k, v) in expired {
            let s = self.handshakes.entry((k.ifindex, v.role)).or_default();
            s.unanswered += 1;
            s.syn_retransmits += u64::from(v.requests.saturating_sub(1));
            self.expired.handshakes += 1;
        }
    }

    /// Echo requests that waited past the timeout.
    pub fn expire_icmp(&mut self, expired: &[(PendingKey, Pending)]) {
        for (k, v) in expired {
            *self.icmp_unanswered.entry((k.ifindex, v.role)).or_default() += 1;
            self.expired.icmp += 1;
        }
    }

    /// DNS queries that waited past the timeout, named from their captured bytes.
    pub fn expire_dns(&mut self, expired: &[(DnsKey, DnsPending)]) {
        for (k, v) in expired {
            self.expired.dns += 1;
            // Queries the workload answered (server role) are not its unanswered queries.
            if v.role != role::CLIENT {
                continue;
            }
            let stats = self.dns.entry(k.ifindex).or_default();
            bump_capped(
                &mut stats.unanswered_by_server,
                flow_endpoint_addr(&k.flow, false),
                || OTHER_SERVERS.to_string(),
            );
            let len = usize::from(v.len).min(v.message.len());
            let name = dns::question(&v.message[..len])
                .map(|(n, t)| format!("{n} {}", dns::qtype_name(t)))
                .unwrap_or_else(|e| format!("? ({e})"));
            bump_capped(&mut stats.unanswered_by_name, name, || {
                OTHER_NAMES.to_string()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nettools_common::latency::DNS_CAPTURE;

    #[test]
    fn samples_go_to_their_kind_and_outcomes_are_counted() {
        let mut l = LatencyStats::default();
        let mut hs = HandshakeEvent {
            ifindex: 5,
            role: role::CLIENT,
            latency_ns: 2_000_000,
            syns: 2,
            ..Default::default()
        };
        l.add_handshake(&hs);
        hs.outcome = outcome::RESET;
        hs.syns = 1;
        l.add_handshake(&hs);
        let h = &l.histograms[&(5, LatencyKind::TcpConnect)];
        // Bounded memory: under 30 KiB per histogram.
        assert!(
            h.distinct_values() * 8 < 30 * 1024,
            "{} counts",
            h.distinct_values()
        );
        assert_eq!(h.len(), 1, "a refused connection is not a latency sample");
        assert!((h.value_at_quantile(0.5) as i64 - 2_000_000).abs() < 2_000_000 / 100);
        let s = l.handshakes[&(5, role::CLIENT)];
        assert_eq!((s.refused, s.syn_retransmits), (1, 1));

        let q = dns::build_query(9, "gone.test", 1);
        let mut ev = DnsEvent {
            latency_ns: 30_000_000,
            len: q.len() as u16,
            ..Default::default()
        };
        ev.key.ifindex = 5;
        ev.message[..q.len()].copy_from_slice(&q);
        ev.message[2] |= 0x80;
        ev.message[3] = 3;
        let m = l.add_dns(&ev).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.qname.as_deref(), Some("gone.test"));
        assert_eq!(l.dns[&5].rcodes["NXDOMAIN"], 1);
        assert_eq!(
            l.dns[&5].failed_names[&("gone.test".to_string(), "NXDOMAIN".to_string())],
            1
        );

        let mut pending = DnsPending {
            len: q.len() as u16,
            ..Default::default()
        };
        pending.message[..q.len()].copy_from_slice(&q);
        let mut key = DnsKey {
            ifindex: 5,
            ..Default::default()
        };
        key.flow.family = 2;
        key.flow.daddr[..4].copy_from_slice(&[10, 0, 0, 53]);
        l.expire_dns(&[(key, pending)]);
        assert_eq!(l.dns[&5].unanswered_by_server["10.0.0.53"], 1);
        assert_eq!(l.dns[&5].unanswered_by_name["gone.test A"], 1);
        assert_eq!(DNS_CAPTURE, 256);
    }

    #[test]
    fn failing_names_are_bounded_and_counted() {
        let mut l = LatencyStats::default();
        let extra = 10;
        for i in 0..MAX_DNS_NAMES + extra {
            let q = dns::build_query(1, &format!("n{i}.test"), 1);
            let mut ev = DnsEvent {
                len: q.len() as u16,
                ..Default::default()
            };
            ev.message[..q.len()].copy_from_slice(&q);
            ev.message[2] |= 0x80;
            ev.message[3] = 3;
            let _ = l.add_dns(&ev);
        }
        let failed = &l.dns[&0].failed_names;
        assert_eq!(failed.len(), MAX_DNS_NAMES + 1);
        assert_eq!(
            failed[&(OTHER_NAMES.to_string(), "NXDOMAIN".to_string())],
            extra as u64
        );
        assert_eq!(failed.values().sum::<u64>(), (MAX_DNS_NAMES + extra) as u64);
    }
}

//! Turning what was collected into answers: one [`Summary`] model that both the table (for
//! people) and JSON (for machines) render, so their figures cannot disagree.

pub mod connections;
pub mod file;
pub mod flamegraph;
pub mod histogram;
pub mod json;
pub mod live;
pub mod problems;
pub mod table;
pub mod text;

#[cfg(test)]
pub(crate) mod hostile_tests;

use std::{collections::BTreeMap, fmt::Write as _};

use nettools_common::{
    counters,
    flow::{AF_INET6, Flow},
};
use serde::Serialize;

use hdrhistogram::Histogram;

use crate::{
    collect::{aggregate::Aggregate, kallsyms::Kallsyms, latency::LatencyKind},
    discover::Workload,
    probe::{KernelInfo, ProbeKind},
};

/// How many kernel locations and flows a reason or namespace lists.
const TOP_LOCATIONS: usize = 3;
const TOP_FLOWS: usize = 5;

/// The output formats of `nettools trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A report for people, per namespace.
    Table,
    /// JSON lines: one object per event, then one summary object.
    Json,
    /// Latency histograms per workload and kind: percentiles and an ASCII distribution.
    Histogram,
    /// An SVG flame graph of where packets die (drops and retransmits by kernel stack).
    Flamegraph,
}

/// Health of the pipeline: everything the kernel side could not deliver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Events that did not fit in the ring buffer (counts stay exact; detail is lost).
    pub events_lost: u64,
    /// Drops not counted because the in-kernel count map was full.
    pub drop_count_map_full: u64,
    /// Drops whose network namespace could not be read.
    pub drops_netns_unknown: u64,
    /// Drops in namespaces not traced (filtered in the kernel).
    pub drops_in_other_namespaces: u64,
    /// `kfree_skb` calls that were not drops (NOT_SPECIFIED, CONSUMED).
    pub frees_not_drops: u64,
    /// Retransmits not counted per flow because the flow map was full (totals stay exact).
    pub retransmit_flow_map_full: u64,
    /// Retransmission attempts the kernel gave up on before sending: not retransmitted
    /// segments, so not counted (TcpRetransSegs does not count them either).
    pub retransmits_not_sent: u64,
    /// tc counters not kept because their map was full.
    pub tc_map_full: u64,
    /// Neighbour failures not counted because their map was full.
    pub neighbour_map_full: u64,
    /// Addresses the LRU map of neighbour failures pushed out to make room for others (their
    /// failures stay in the namespace's exact total, listed as "at other addresses").
    pub neighbour_addresses_pushed_out: u64,
    /// Records userspace could not decode.
    pub undecodable_events: u64,
    /// Runs of nettools' programs the kernel skipped because a BPF program was already running
    /// on that CPU (fdinfo `recursion_misses`): what they would have counted is missing.
    pub probe_runs_skipped: u64,
    /// Neighbour failures the kernel's ARP/NDP tables counted (`res_failed`, every namespace)
    /// that the neighbour probe never saw: the kernel did not run it for them, so neighbour
    /// totals may be short by up to this many.
    pub neighbour_failures_not_seen: u64,
}

impl Health {
    pub fn from_counters(
        c: &[u64; counters::COUNT as usize],
        undecodable: u64,
        probe_runs_skipped: u64,
    ) -> Self {
        Self {
            events_lost: c[counters::EVENTS_LOST as usize],
            drop_count_map_full: c[counters::DROP_COUNT_MAP_FULL as usize],
            drops_netns_unknown: c[counters::DROP_NETNS_UNKNOWN as usize],
            drops_in_other_namespaces: c[counters::DROPS_FILTERED as usize],
            frees_not_drops: c[counters::FREES_NOT_DROPS as usize],
            retransmit_flow_map_full: c[counters::RETRANSMIT_FLOW_MAP_FULL as usize],
            retransmits_not_sent: c[counters::RETRANSMITS_NOT_SENT as usize],
            tc_map_full: c[counters::TC_MAP_FULL as usize],
            neighbour_map_full: c[counters::NEIGH_MAP_FULL as usize],
            neighbour_addresses_pushed_out: 0,
            undecodable_events: undecodable,
            probe_runs_skipped,
            neighbour_failures_not_seen: 0,
        }
    }
}

/// One kernel location where packets were dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocationCount {
    /// `function+0xoffset`, or the raw address when it cannot be named.
    pub location: String,
    pub address: String,
    pub count: u64,
}

/// Drops with one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// Name from this kernel's `enum skb_drop_reason`, e.g. `NETFILTER_DROP`.
    pub reason: String,
    pub code: u32,
    pub count: u64,
    /// Where in the kernel, most frequent first.
    pub locations: Vec<LocationCount>,
}

/// A dropped flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowCount {
    /// e.g. `udp 10.231.0.2:40000 -> 10.231.0.1:7777`.
    pub flow: String,
    pub reason: String,
    pub count: u64,
}

/// Drops in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropSummary {
    /// Exact total (counted in the kernel).
    pub total: u64,
    pub by_reason: Vec<ReasonCount>,
    /// Most dropped flows, from events (a sample when events were lost).
    pub top_flows: Vec<FlowCount>,
    /// With `trace --rules`, for the namespaces traced from the start: the firewall rules of
    /// this namespace that drop and whose packet counters grew during the trace, dropping most
    /// first (read just before the probes attach and just after they detach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<crate::collect::rules::Grown>>,
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// Traffic of one protocol in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProtocolCounts {
    /// `received` or `sent`, from the workload's point of view (for `--iface`, the interface's).
    pub direction: &'static str,
    /// `ipv4/tcp`, `ipv6/icmpv6`, `arp`, `other`, …
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
}

/// An address asked for (ARP/NDP) on an interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighbourLookup {
    pub address: String,
    /// `arp` or `ndp`.
    pub protocol: &'static str,
    pub requests: u64,
    pub replies: u64,
}

/// One interface with nettools' tc programs: the host end of a workload's veth, or an
/// interface traced with `--iface`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceSummary {
    /// The interface the programs are attached to (host side).
    pub name: String,
    pub ifindex: u32,
    /// The workload's end of the veth (`eth0`), when this is a veth.
    pub peer: Option<String>,
    pub bridge: Option<String>,
    /// `tcx` or `clsact`; `null` when attaching was not possible.
    pub attached: Option<&'static str>,
    /// What the workload received (for `--iface`: what the interface received).
    pub received: Counts,
    pub sent: Counts,
    pub by_protocol: Vec<ProtocolCounts>,
    /// Addresses asked for with ARP/NDP that never answered during the trace.
    pub unanswered: Vec<NeighbourLookup>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" messages that passed the
    /// interface: a path whose MTU is smaller than what is sent with Don't Fragment.
    pub too_big: Vec<TooBig>,
}

/// ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) messages of one sender about
/// packets to one destination, in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TooBig {
    /// `received` (the workload was told its packets are too big) or `sent` (it told others:
    /// it is the router whose next hop is too small), as [`ProtocolCounts::direction`].
    pub direction: &'static str,
    /// Who sent the messages.
    pub from: String,
    /// Where the packets too big were going.
    pub to: String,
    /// The smallest MTU the messages named (`null`: none named one).
    pub mtu: Option<u32>,
    pub messages: u64,
}

/// A retransmitting flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetransmitFlow {
    pub flow: String,
    pub segments: u64,
    /// Segments by the TCP state the socket was in (`SYN_SENT`, `ESTABLISHED`, `FIN_WAIT1`, …).
    pub states: BTreeMap<&'static str, u64>,
}

impl RetransmitFlow {
    /// The states, most segments first: `FIN_WAIT1 82, ESTABLISHED 15`.
    pub fn states_text(&self) -> String {
        let mut states: Vec<(&&str, &u64)> = self.states.iter().collect();
        states.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        states
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// TCP retransmissions in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetransmitSummary {
    /// Exact segments retransmitted by sockets in this namespace.
    pub total: u64,
    /// Flows with the most retransmitted segments.
    pub top_flows: Vec<RetransmitFlow>,
}

/// A neighbour entry that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighbourFailure {
    pub address: String,
    /// `arp` (IPv4) or `ndp` (IPv6).
    pub protocol: &'static str,
    pub device: String,
    pub ifindex: u32,
    /// Times the entry went to FAILED.
    pub failures: u64,
}

/// Neighbour (ARP/NDP) trouble in one namespace: "incomplete ARPs".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NeighbourSummary {
    /// Exact count of entries that went to FAILED.
    pub total_failures: u64,
    /// Addresses with failures, as far as the kernel's address map kept them.
    pub failures: Vec<NeighbourFailure>,
    /// Failures at addresses the map no longer holds (one workload probing more addresses than
    /// it has room for pushes out the oldest): `total_failures` minus those listed.
    pub failures_elsewhere: u64,
    /// Lookups seen on the workload's veth without an answer.
    pub unanswered: Vec<NeighbourLookup>,
}

/// One latency distribution (milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyDistribution {
    pub kind: LatencyKind,
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The samples (nanoseconds), for histogram output.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl LatencyDistribution {
    pub fn new(kind: LatencyKind, h: Histogram<u64>) -> Self {
        let ms = |ns: u64| (ns as f64 / 1e3).round() / 1e3;
        Self {
            kind,
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: (h.mean() / 1e3).round() / 1e3,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            histogram: h,
        }
    }
}

/// TCP handshake outcomes in one role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeOutcomes {
    /// Answered with RST: nothing listened (connection refused).
    pub refused: u64,
    /// No SYN-ACK within the timeout.
    pub unanswered: u64,
    /// SYNs sent again before the answer.
    pub syn_retransmits: u64,
}

/// A name answered with an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsFailure {
    pub name: String,
    pub rcode: String,
    pub count: u64,
}

/// DNS as the workload sees it (its own queries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DnsSummary {
    pub responses: u64,
    /// Responses by rcode (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, …).
    pub rcodes: BTreeMap<String, u64>,
    /// Responses by transport (udp, tcp).
    pub transports: BTreeMap<&'static str, u64>,
    /// Queries with no response within the timeout.
    pub unanswered: u64,
    pub unanswered_by_server: BTreeMap<String, u64>,
    /// `name TYPE` → unanswered queries.
    pub unanswered_by_name: BTreeMap<String, u64>,
    /// Names answered with an error rcode, most frequent first.
    pub failures: Vec<DnsFailure>,
    /// Responses whose question could not be read.
    pub undecodable: u64,
}

/// Packets that came in from another traced workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransitSource {
    pub from: String,
    pub packets: u64,
}

/// Latency on the workload's veth.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub distributions: Vec<LatencyDistribution>,
    /// Connections it made.
    pub connect: HandshakeOutcomes,
    /// Connections it was asked to accept.
    pub accept: HandshakeOutcomes,
    pub dns: DnsSummary,
    /// Its echo requests never answered.
    pub icmp_unanswered: u64,
    /// Echo requests to it never answered.
    pub icmp_unanswered_to_it: u64,
    pub transit_from: Vec<TransitSource>,
}

/// Everything reported for one network namespace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadSummary {
    pub name: String,
    pub kind: crate::discover::WorkloadKind,
    pub netns: u32,
    pub netns_path: Option<String>,
    pub pid: Option<u32>,
    /// The pod this namespace is, when it is one.
    pub pod: Option<crate::discover::PodRef>,
    /// The containers sharing this namespace.
    pub containers: Vec<crate::discover::ContainerRef>,
    /// A host-network pod or container: its figures are the host's.
    pub host_network: bool,
    /// Named from a runtime's last good answer while that runtime fails (its counts go on).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Traffic per interface (with the `traffic` probe).
    pub interfaces: Vec<InterfaceSummary>,
    pub drops: DropSummary,
    /// With the `retransmits` probe.
    pub retransmits: Option<RetransmitSummary>,
    /// With the `neighbours` probe (and `traffic` for the unanswered lookups).
    pub neighbours: Option<NeighbourSummary>,
    /// With any of the `handshake`, `dns`, `icmp`, `transit` probes.
    pub latency: Option<LatencySummary>,
    /// With the `connections` probe: TCP resets and socket errors.
    pub connections: Option<connections::ConnectionSummary>,
}

/// The final (or periodic) report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_s: f64,
    pub kernel: String,
    pub probes: Vec<ProbeKind>,
    /// Whether every namespace was traced (`--all`).
    pub all_namespaces: bool,
    pub health: Health,
    /// What is wrong, worst first ([`problems`]): one entry per problem and workload.
    pub problems: Vec<problems::Problem>,
    /// What counted as a problem.
    pub thresholds: problems::Thresholds,
    /// Sentences about what this kernel cannot do (missing fields, no reason names).
    pub notes: Vec<String>,
    /// How every pairing map's entries ended (evictions counted, not guessed).
    pub pairing: crate::probe::latency::Accounts,
    /// Requests still waiting for an answer when the trace ended (younger than the timeout).
    pub waiting: crate::probe::latency::Waiting,
    pub workloads: Vec<WorkloadSummary>,
}

/// What a summary is built from.
pub struct Inputs<'a> {
    pub aggregate: &'a Aggregate,
    /// Traced workloads (always listed, even without events).
    pub traced: &'a [Workload],
    /// Names for other namespaces (with `--all`).
    pub labels: &'a BTreeMap<u32, Workload>,
    pub kernel: &'a KernelInfo,
    pub kallsyms: &'a Kallsyms,
    pub health: Health,
    pub duration_s: f64,
    pub probes: Vec<ProbeKind>,
    pub all_namespaces: bool,
    /// Where the tc programs are attached.
    pub attached: &'a [crate::probe::tc::Attached],
    /// The kernel's monotonic clock when the trace ended (to age ARP/NDP requests).
    pub end_ktime_ns: u64,
    pub pairing: crate::probe::latency::Accounts,
    pub waiting: crate::probe::latency::Waiting,
}

/// Names a network namespace for the report.
pub fn workload_for(netns: u32, traced: &[Workload], labels: &BTreeMap<u32, Workload>) -> Workload {
    traced
        .iter()
        .find(|w| w.netns == netns)
        .or_else(|| labels.get(&netns))
        .cloned()
        .unwrap_or_else(|| Workload {
            name: if netns == 0 {
                "unknown namespace".to_string()
            } else {
                format!("netns {netns}")
            },
            netns,
            ..Default::default()
        })
}

impl Summary {
    pub fn build(i: &Inputs<'_>) -> Self {
        // Traced workloads first, in the order given, then other namespaces with activity.
        let mut order: Vec<u32> = i.traced.iter().map(|w| w.netns).collect();
        for (netns, stats) in &i.aggregate.namespaces {
            if !order.contains(netns) && !stats.is_empty() {
                order.push(*netns);
            }
        }
        let workloads = order
            .into_iter()
            .map(|netns| {
                let w = workload_for(netns, i.traced, i.labels);
                let empty = crate::collect::aggregate::NamespaceStats::default();
                let stats = i.aggregate.namespaces.get(&netns).unwrap_or(&empty);
                let interfaces: Vec<InterfaceSummary> = if i.probes.contains(&ProbeKind::Traffic) {
                    w.veths
                        .iter()
                        .map(|v| interface_summary(v, w.kind, i))
                        .collect()
                } else {
                    Vec::new()
                };
                let neighbours = i
                    .probes
                    .contains(&ProbeKind::Neighbours)
                    .then(|| neighbour_summary(&stats.neighbours, &w, &interfaces));
                WorkloadSummary {
                    name: w.name.clone(),
                    kind: w.kind,
                    netns,
                    netns_path: w.netns_path.as_ref().map(|p| p.display().to_string()),
                    pid: w.pid,
                    pod: w.pod.clone(),
                    containers: w.containers.clone(),
                    host_network: w.host_network,
                    stale: w.stale,
                    drops: drop_summary(&stats.drops, i.kernel, i.kallsyms),
                    retransmits: i
                        .probes
                        .contains(&ProbeKind::Retransmits)
                        .then(|| retransmit_summary(&stats.retransmits)),
                    neighbours,
                    latency: i
                        .probes
                        .iter()
                        .any(|p| {
                            matches!(
                                p,
                                ProbeKind::Handshake
                                    | ProbeKind::Dns
                                    | ProbeKind::Icmp
                                    | ProbeKind::Transit
                            )
                        })
                        .then(|| latency_summary(&w, i)),
                    connections: i
                        .probes
                        .contains(&ProbeKind::Connections)
                        .then(|| connections::summary(&stats.connections, &i.kernel.reset_reasons)),
                    interfaces,
                }
            })
            .collect();
        let mut s = Self {
            kind: "summary",
            duration_s: i.duration_s,
            kernel: i.kernel.release.clone(),
            probes: i.probes.clone(),
            all_namespaces: i.all_namespaces,
            health: i.health.clone(),
            problems: Vec::new(),
            thresholds: problems::Thresholds::default(),
            notes: i.kernel.notes.clone(),
            pairing: i.pairing,
            waiting: i.waiting,
            workloads,
        };
        s.find_problems(problems::Thresholds::default());
        s
    }

    /// Finds the problems again with these thresholds.
    pub fn find_problems(&mut self, thresholds: problems::Thresholds) {
        self.thresholds = thresholds;
        self.problems = problems::find(self, &thresholds);
    }
}

/// The workload's own ARP/NDP requests and the replies to them: on a host-side veth they come
/// from the workload on ingress and the replies go to it on egress; on an interface traced
/// directly, requests leave on egress and replies arrive on ingress.
pub fn own_lookups(v: &nettools_common::traffic::NeighProbeValue, direct: bool) -> (u64, u64) {
    if direct {
        (v.requests[1], v.replies[0])
    } else {
        (v.requests[0], v.replies[1])
    }
}

/// Requests without a reply are "unanswered" once they had time for an answer: two requests or
/// more, or one older than a second.
pub fn unanswered(requests: u64, replies: u64, first_request_ns: u64, now_ns: u64) -> bool {
    requests > 0
        && replies == 0
        && (requests >= 2 || now_ns.saturating_sub(first_request_ns) >= 1_000_000_000)
}

fn class_name(class: u8, l4: u8) -> String {
    use nettools_common::traffic::{CLASS_ARP, CLASS_IPV4, CLASS_IPV6};
    match class {
        CLASS_IPV4 => format!("ipv4/{}", l4_name(l4)),
        CLASS_IPV6 => format!("ipv6/{}", l4_name(l4)),
        CLASS_ARP => "arp".to_string(),
        _ => "other".to_string(),
    }
}

fn interface_summary(
    v: &crate::discover::veth::HostVeth,
    kind: crate::discover::WorkloadKind,
    i: &Inputs<'_>,
) -> InterfaceSummary {
    use nettools_common::traffic::{EGRESS, INGRESS};
    // A host-side veth's ingress is what the workload sends; an interface traced directly
    // receives on ingress.
    let direct = kind == crate::discover::WorkloadKind::Interface;
    let received_hook = if direct { INGRESS } else { EGRESS };
    let mut received = Counts::default();
    let mut sent = Counts::default();
    let mut by_protocol = Vec::new();
    let mut unanswered_lookups = Vec::new();
    let mut too_big = Vec::new();
    if let Some(stats) = i.aggregate.interfaces.get(&v.ifindex) {
        for (&(dir, family, from, to), value) in &stats.too_big {
            let text =
                |raw: &[u8; 16]| addr(family, raw).map(|a| a.to_string()).unwrap_or_default();
            too_big.push(TooBig {
                direction: if dir == received_hook {
                    "received"
                } else {
                    "sent"
                },
                from: text(&from),
                to: text(&to),
                mtu: (value.mtu != 0).then_some(value.mtu),
                messages: value.messages,
            });
        }
        for (&(dir, class, l4), &(packets, bytes)) in &stats.traffic {
            let (slot, direction) = if dir == received_hook {
                (&mut received, "received")
            } else {
                (&mut sent, "sent")
            };
            slot.packets += packets;
            slot.bytes += bytes;
            by_protocol.push(ProtocolCounts {
                direction,
                protocol: class_name(class, l4),
                packets,
                bytes,
            });
        }
        for (&(family, raw), value) in &stats.probes {
            let (requests, replies) = own_lookups(value, direct);
            if unanswered(requests, replies, value.first_request_ns, i.end_ktime_ns) {
                unanswered_lookups.push(NeighbourLookup {
                    address: addr(family, &raw)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    protocol: if family == AF_INET6 { "ndp" } else { "arp" },
                    requests,
                    replies,
                });
            }
        }
    }
    by_protocol.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.protocol.cmp(&b.protocol)));
    InterfaceSummary {
        name: v.name.clone(),
        ifindex: v.ifindex,
        peer: (!v.inner_name.is_empty()).then(|| v.inner_name.clone()),
        bridge: v.bridge.clone(),
        attached: i
            .attached
            .iter()
            .find(|a| a.ifindex == v.ifindex)
            .map(|a| a.mechanism),
        received,
        sent,
        by_protocol,
        unanswered: unanswered_lookups,
        too_big,
    }
}

fn latency_summary(w: &Workload, i: &Inputs<'_>) -> LatencySummary {
    use nettools_common::latency::role;
    let l = &i.aggregate.latency;
    let ifs: Vec<u32> = w.veths.iter().map(|v| v.ifindex).collect();
    let mut out = LatencySummary::default();
    for kind in LatencyKind::ALL {
        let mut merged: Option<Histogram<u64>> = None;
        for ifindex in &ifs {
            if let Some(h) = l.histograms.get(&(*ifindex, kind)) {
                match merged.as_mut() {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        if let Some(h) = merged.filter(|h| !h.is_empty()) {
            out.distributions.push(LatencyDistribution::new(kind, h));
        }
    }
    for ifindex in &ifs {
        for (r, slot) in [
            (role::CLIENT, &mut out.connect),
            (role::SERVER, &mut out.accept),
        ] {
            if let Some(s) = l.handshakes.get(&(*ifindex, r)) {
                slot.refused += s.refused;
                slot.unanswered += s.unanswered;
                slot.syn_retransmits += s.syn_retransmits;
            }
        }
        out.icmp_unanswered += l
            .icmp_unanswered
            .get(&(*ifindex, role::CLIENT))
            .copied()
            .unwrap_or(0);
        out.icmp_unanswered_to_it += l
            .icmp_unanswered
            .get(&(*ifindex, role::SERVER))
            .copied()
            .unwrap_or(0);
        if let Some(d) = l.dns.get(ifindex) {
            let s = &mut out.dns;
            for (k, v) in &d.rcodes {
                *s.rcodes.entry(k.clone()).or_default() += v;
                s.responses += v;
            }
            for (k, v) in &d.transports {
                *s.transports.entry(k).or_default() += v;
            }
            for (k, v) in &d.unanswered_by_server {
                *s.unanswered_by_server.entry(k.clone()).or_default() += v;
                s.unanswered += v;
            }
            for (k, v) in &d.unanswered_by_name {
                *s.unanswered_by_name.entry(k.clone()).or_default() += v;
            }
            for ((name, rcode), count) in &d.failed_names {
                s.failures.push(DnsFailure {
                    name: name.clone(),
                    rcode: rcode.clone(),
                    count: *count,
                });
            }
            s.undecodable += d.undecodable;
        }
        for (&(to, from), &packets) in &l.transit_pairs {
            if to == *ifindex {
                let from_name = i
                    .traced
                    .iter()
                    .chain(i.labels.values())
                    .find(|w| w.veths.iter().any(|v| v.ifindex == from))
                    .map(|w| w.name.clone())
                    .unwrap_or_else(|| format!("ifindex {from}"));
                out.transit_from.push(TransitSource {
                    from: from_name,
                    packets,
                });
            }
        }
    }
    out.dns
        .failures
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    out.dns.failures.truncate(TOP_FLOWS * 2);
    out
}

fn retransmit_summary(r: &crate::collect::aggregate::RetransmitStats) -> RetransmitSummary {
    let mut by_flow: BTreeMap<crate::collect::aggregate::FlowOrd, RetransmitFlow> = BTreeMap::new();
    for ((state, flow), &segments) in &r.flows {
        let f = by_flow.entry(*flow).or_insert_with(|| RetransmitFlow {
            flow: format_flow(&flow.0),
            segments: 0,
            states: BTreeMap::new(),
        });
        f.segments += segments;
        *f.states
            .entry(crate::probe::retransmits::state_name(*state))
            .or_default() += segments;
    }
    let mut flows: Vec<RetransmitFlow> = by_flow.into_values().collect();
    flows.sort_by(|a, b| b.segments.cmp(&a.segments).then(a.flow.cmp(&b.flow)));
    flows.truncate(TOP_FLOWS);
    RetransmitSummary {
        total: r.total,
        top_flows: flows,
    }
}

fn neighbour_summary(
    n: &crate::collect::aggregate::NeighbourStats,
    w: &Workload,
    interfaces: &[InterfaceSummary],
) -> NeighbourSummary {
    let failures: Vec<NeighbourFailure> = n
        .failures
        .iter()
        .map(|(&(ifindex, family, raw), &count)| NeighbourFailure {
            address: addr(family, &raw)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            protocol: if family == AF_INET6 { "ndp" } else { "arp" },
            device: n
                .devices
                .get(&ifindex)
                .cloned()
                .or_else(|| {
                    w.veths
                        .iter()
                        .find(|v| v.inner_ifindex == ifindex)
                        .map(|v| v.inner_name.clone())
                })
                .unwrap_or_else(|| format!("ifindex {ifindex}")),
            ifindex,
            failures: count,
        })
        .collect();
    let mut failures = failures;
    failures.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.address.cmp(&b.address)));
    let listed: u64 = failures.iter().map(|f| f.failures).sum();
    NeighbourSummary {
        total_failures: n.total.max(listed),
        failures_elsewhere: n.total.saturating_sub(listed),
        failures,
        unanswered: interfaces
            .iter()
            .flat_map(|i| i.unanswered.clone())
            .collect(),
    }
}

fn drop_summary(
    d: &crate::collect::aggregate::DropStats,
    kernel: &KernelInfo,
    kallsyms: &Kallsyms,
) -> DropSummary {
    let mut by_reason: Vec<ReasonCount> = d
        .counts
        .iter()
        .map(|(&code, locations)| {
            let mut locs: Vec<(u64, u64)> = locations.iter().map(|(&a, &n)| (a, n)).collect();
            locs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ReasonCount {
                reason: kernel.drop_reasons.name(code),
                code,
                count: locations.values().sum(),
                locations: locs
                    .into_iter()
                    .take(TOP_LOCATIONS)
                    .map(|(addr, count)| LocationCount {
                        location: kallsyms.describe(addr),
                        address: format!("{addr:#x}"),
                        count,
                    })
                    .collect(),
            }
        })
        .collect();
    by_reason.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    DropSummary {
        total: d.total(),
        by_reason,
        top_flows: group_flows(&d.flows)
            .into_iter()
            .take(TOP_FLOWS)
            .map(|(flow, reason, count)| FlowCount {
                flow,
                reason: kernel.drop_reasons.name(reason),
                count,
            })
            .collect(),
        rules: None,
    }
}

/// Flows that differ only in their (ephemeral) source port are one line, with the port shown
/// as `*`: a client opening a socket per request is one flow to a person. Most packets first.
pub fn group_flows(flows: &std::collections::HashMap<(Flow, u32), u64>) -> Vec<(String, u32, u64)> {
    let mut groups: BTreeMap<(String, u32), (u64, Option<Flow>, bool)> = BTreeMap::new();
    for ((flow, reason), &count) in flows {
        let ported = matches!(flow.l4_proto, 6 | 17 | 132) && flow.family != 0;
        let mut any_port = *flow;
        if ported {
            any_port.sport = 0;
        }
        let key = (format_flow(&any_port), *reason);
        let g = groups.entry(key).or_insert((0, Some(*flow), false));
        g.0 += count;
        if g.1.is_some_and(|f| f.sport != flow.sport) {
            g.2 = true;
        }
    }
    let mut out: Vec<(String, u32, u64)> = groups
        .into_iter()
        .map(|((any, reason), (count, first, many))| {
            let text = match (many, first) {
                (false, Some(f)) => format_flow(&f),
                _ => any.replacen(":0 ->", ":* ->", 1),
            };
            (text, reason, count)
        })
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    out
}

/// Name of an IP protocol number.
pub fn l4_name(proto: u8) -> String {
    match proto {
        0 => "hop-by-hop".into(),
        1 => "icmp".into(),
        2 => "igmp".into(),
        4 => "ipip".into(),
        41 => "ipv6-in-ipv4".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => format!("proto {other}"),
    }
}

/// The address of a flow endpoint.
pub use nettools_common::flow::ip as addr;

/// `udp 10.0.0.2:40000 -> 10.0.0.1:7777`, `icmp 10.0.0.2 -> 10.0.0.1 type 8 code 0`,
/// `tcp [fd00::2]:1 -> [fd00::1]:80`; `non-IP packet` when the flow is unknown.
pub fn format_flow(f: &Flow) -> String {
    let (Some(src), Some(dst)) = (addr(f.family, &f.saddr), addr(f.family, &f.daddr)) else {
        return "non-IP packet".to_string();
    };
    let mut s = l4_name(f.l4_proto);
    let endpoint = |ip: std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
    };
    match f.l4_proto {
        6 | 17 | 132 => {
            let _ = write!(
                s,
                " {} -> {}",
                endpoint(src, f.sport),
                endpoint(dst, f.dport)
            );
        }
        1 | 58 => {
            let _ = write!(s, " {src} -> {dst} type {} code {}", f.sport, f.dport);
        }
        _ => {
            let _ = write!(s, " {src} -> {dst}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nettools_common::flow::AF_INET;
    use std::net::Ipv6Addr;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn flows_differing_only_in_source_port_are_one_line() {
        let f = |sport: u16, dport: u16| Flow {
            family: AF_INET,
            l4_proto: 17,
            sport,
            dport,
            saddr: v4([10, 0, 0, 2]),
            daddr: v4([10, 0, 0, 9]),
            ..Default::default()
        };
        let flows: std::collections::HashMap<(Flow, u32), u64> = [
            ((f(1000, 9), 58), 2),
            ((f(1001, 9), 58), 3),
            ((f(1002, 53), 58), 1),
        ]
        .into_iter()
        .collect();
        let g = group_flows(&flows);
        assert_eq!(
            g,
            vec![
                ("udp 10.0.0.2:* -> 10.0.0.9:9".to_string(), 58, 5),
                ("udp 10.0.0.2:1002 -> 10.0.0.9:53".to_string(), 58, 1),
            ]
        );
    }

    #[test]
    fn formats_flows() {
        let mut f = Flow {
            family: AF_INET,
            l4_proto: 17,
            sport: 40000,
            dport: 7777,
            saddr: v4([10, 231, 0, 2]),
            daddr: v4([10, 231, 0, 1]),
            ..Default::default()
        };
        assert_eq!(format_flow(&f), "udp 10.231.0.2:40000 -> 10.231.0.1:7777");
        f.l4_proto = 1;
        f.sport = 8;
        f.dport = 0;
        assert_eq!(
            format_flow(&f),
            "icmp 10.231.0.2 -> 10.231.0.1 type 8 code 0"
        );
        let v6 = Flow {
            family: AF_INET6,
            l4_proto: 6,
            sport: 1,
            dport: 80,
            saddr: "fd00::2"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or_default(),
            daddr: "fd00::1"
                .parse::<Ipv6Addr>()
                .map(|a| a.octets())
                .unwrap_or_default(),
            ..Default::default()
        };
        assert_eq!(format_flow(&v6), "tcp [fd00::2]:1 -> [fd00::1]:80");
        assert_eq!(format_flow(&Flow::default()), "non-IP packet");
    }
}

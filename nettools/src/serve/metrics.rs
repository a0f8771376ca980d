//! The agent's Prometheus exposition, built from a [`Summary`] at each scrape: the same figures
//! `nettools trace` reports, as counters, gauges and histograms in Prometheus text format
//! (0.0.4, encoded by the `prometheus` crate).
//!
//! Naming follows Prometheus' conventions: a `nettools_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` on counters. Label cardinality is bounded:
//! - every per-workload series carries the same five labels, `kind`, `namespace`, `pod`,
//!   `container`, `netns` (the namespace inode); flows, addresses and kernel locations are
//!   never labels;
//! - at most `max_workloads` workloads get series of their own (pods first, then containers,
//!   named namespaces, the host, other processes' namespaces); the rest are summed into one
//!   series with `kind="overflow"`, and `nettools_workloads_overflow` says how many;
//! - the other labels take values from closed sets: drop reasons from this kernel's
//!   `enum skb_drop_reason`, DNS rcodes (4 bits), `direction`, `role`, `outcome`, `protocol`.
//!
//! Latency histograms come from the HdrHistograms ([`new_histogram`](crate::collect::latency::new_histogram):
//! 100 ns to 10 min, 2 significant digits): the sample count is exact, each sample is placed
//! within 1 % (so one that close to a bucket bound may land in its neighbour), sums are within
//! 1 %, and all only grow, as Prometheus counters must.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram as PromHistogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::{
    collect::latency::LatencyKind,
    discover::WorkloadKind,
    probe::ProbeKind,
    report::{Summary, WorkloadSummary},
};

/// Upper bounds of the latency histograms' buckets, in seconds (100 µs … 10 s).
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The labels every per-workload series carries, in this order.
pub const WORKLOAD_LABELS: [&str; 5] = ["kind", "namespace", "pod", "container", "netns"];

/// What the exposition says besides the summary.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// At most this many workloads get series of their own.
    pub max_workloads: usize,
    /// The probes attached.
    pub probes: Vec<ProbeKind>,
    /// Interfaces with the tc programs attached.
    pub tc_interfaces: usize,
    /// Each runtime source (`cri`, `docker-api`) and socket, and whether it answered at the
    /// last refresh.
    pub sources: Vec<(String, String, bool)>,
    /// This build's version and the kernel's release.
    pub version: String,
    pub kernel: String,
}

/// The five workload labels of one workload.
pub fn workload_labels(w: &WorkloadSummary) -> [String; 5] {
    let kind = match w.kind {
        WorkloadKind::Pod => "pod",
        WorkloadKind::Container => "container",
        WorkloadKind::Netns => "netns",
        WorkloadKind::Process => "process",
        WorkloadKind::Host => "host",
        WorkloadKind::Interface => "interface",
    };
    let (namespace, pod) = match &w.pod {
        Some(p) => (p.namespace.clone().unwrap_or_default(), p.name.clone()),
        None => (String::new(), String::new()),
    };
    // A pod's containers share its namespace: the pod is the unit. A container (or several
    // joined with --net container:X) is named by its first container, by name.
    let container = if w.pod.is_some() {
        String::new()
    } else {
        let mut names: Vec<&str> = w.containers.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.first().map(|n| n.to_string()).unwrap_or_default()
    };
    [
        kind.to_string(),
        namespace,
        pod,
        container,
        w.netns.to_string(),
    ]
}

/// Which workloads come first when the cap applies: pods, containers, named namespaces, the
/// host, then processes' namespaces.
fn priority(kind: WorkloadKind) -> u8 {
    match kind {
        WorkloadKind::Pod => 0,
        WorkloadKind::Container => 1,
        WorkloadKind::Netns => 2,
        WorkloadKind::Host => 3,
        WorkloadKind::Interface => 4,
        WorkloadKind::Process => 5,
    }
}

/// The labels of the overflow series.
fn overflow_labels() -> [String; 5] {
    [
        "overflow".to_string(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]
}

/// A series' label pairs, in order.
type Labels = Vec<(String, String)>;

/// One metric family being filled: its type, help text and series.
type Family = (MetricType, &'static str, BTreeMap<Labels, Value>);

/// Metric families being filled, by name.
#[derive(Default)]
struct Families {
    families: BTreeMap<&'static str, Family>,
}

/// A sample's value before encoding: counters and gauges add up (the overflow series sums
/// workloads), histograms merge.
enum Value {
    Number(f64),
    Histogram(Box<Histogram<u64>>),
}

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        ty: MetricType,
        help: &'static str,
        labels: Vec<(String, String)>,
        value: f64,
    ) {
        let (_, _, series) = self
            .families
            .entry(name)
            .or_insert_with(|| (ty, help, BTreeMap::new()));
        match series.entry(labels).or_insert(Value::Number(0.0)) {
            Value::Number(v) => *v += value,
            Value::Histogram(_) => {}
        }
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(String, String)>,
        h: &Histogram<u64>,
    ) {
        let (_, _, series) = self
            .families
            .entry(name)
            .or_insert_with(|| (MetricType::HISTOGRAM, help, BTreeMap::new()));
        match series.entry(labels) {
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Value::Histogram(Box::new(h.clone())));
            }
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if let Value::Histogram(merged) = e.get_mut() {
                    // Same bounds (new_histogram): adding cannot fail.
                    let _ = merged.add(h);
                }
            }
        }
    }

    fn encode(self) -> Vec<MetricFamily> {
        self.families
            .into_iter()
            .filter(|(_, (_, _, series))| !series.is_empty())
            .map(|(name, (ty, help, series))| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(ty);
                mf.set_metric(
                    series
                        .into_iter()
                        .map(|(labels, value)| {
                            let mut m = Metric::default();
                            m.set_label(
                                labels
                                    .into_iter()
                                    .map(|(k, v)| {
                                        let mut l = LabelPair::default();
                                        l.set_name(k);
                                        l.set_value(v);
                                        l
                                    })
                                    .collect(),
                            );
                            match (ty, value) {
                                (MetricType::COUNTER, Value::Number(v)) => {
                                    let mut c = Counter::default();
                                    c.set_value(v);
                                    m.set_counter(c);
                                }
                                (_, Value::Histogram(h)) => m.set_histogram(histogram(&h)),
                                (_, Value::Number(v)) => {
                                    let mut g = Gauge::default();
                                    g.set_value(v);
                                    m.set_gauge(g);
                                }
                            }
                            m
                        })
                        .collect(),
                );
                mf
            })
            .collect()
    }
}

/// A Prometheus histogram (seconds) from an HdrHistogram of nanoseconds.
pub fn histogram(h: &Histogram<u64>) -> PromHistogram {
    let mut out = PromHistogram::default();
    out.set_sample_count(h.len());
    out.set_sample_sum(h.mean() * h.len() as f64 / 1e9);
    out.set_bucket(
        BUCKETS
            .iter()
            .map(|&le| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(h.count_between(0, (le * 1e9) as u64));
                b
            })
            .collect(),
    );
    out
}

fn with(labels: &[String; 5], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    WORKLOAD_LABELS
        .iter()
        .zip(labels.iter())
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The exposition's metric families for one summary. Only the workloads in `summary` whose
/// namespace is in `current` are exported (namespaces that are gone are left out).
pub fn families(
    summary: &Summary,
    current: &dyn Fn(u32) -> bool,
    ctx: &Context,
) -> Vec<MetricFamily> {
    let mut f = Families::default();
    let mut workloads: Vec<&WorkloadSummary> = summary
        .workloads
        .iter()
        .filter(|w| current(w.netns))
        .collect();
    workloads.sort_by(|a, b| {
        priority(a.kind)
            .cmp(&priority(b.kind))
            .then(a.name.cmp(&b.name))
    });
    let overflow = workloads.len().saturating_sub(ctx.max_workloads);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (i, w) in workloads.iter().enumerate() {
        let own = workload_labels(w);
        *kinds.entry(own[0].clone()).or_default() += 1;
        let labels = if i < ctx.max_workloads {
            f.add(
                "nettools_workload_info",
                MetricType::GAUGE,
                "A traced workload (1): its name as nettools reports it, by its labels.",
                with(&own, &[("name", &w.name)]),
                1.0,
            );
            own
        } else {
            overflow_labels()
        };
        workload(&mut f, w, &labels, &ctx.probes);
    }
    for (kind, n) in kinds {
        f.add(
            "nettools_workloads",
            MetricType::GAUGE,
            "Workloads (network namespaces) on this node, by kind.",
            vec![("kind".into(), kind)],
            n as f64,
        );
    }
    f.add(
        "nettools_workloads_stale",
        MetricType::GAUGE,
        "Workloads named from a container runtime's last good answer while that runtime fails \
         (their series go on).",
        Vec::new(),
        workloads.iter().filter(|w| w.stale).count() as f64,
    );
    f.add(
        "nettools_workloads_overflow",
        MetricType::GAUGE,
        "Workloads beyond --max-workloads, whose figures are summed into the kind=\"overflow\" series.",
        Vec::new(),
        overflow as f64,
    );
    health(&mut f, summary, ctx);
    f.encode()
}

/// The series of one workload.
fn workload(f: &mut Families, w: &WorkloadSummary, labels: &[String; 5], probes: &[ProbeKind]) {
    let has = |p: ProbeKind| probes.contains(&p);
    if has(ProbeKind::Drops) {
        for r in &w.drops.by_reason {
            f.add(
                "nettools_drops_total",
                MetricType::COUNTER,
                "Packets the kernel dropped in this network namespace, by drop reason (skb:kfree_skb; counted in the kernel).",
                with(labels, &[("reason", &r.reason)]),
                r.count as f64,
            );
        }
    }
    if let Some(r) = &w.retransmits {
        f.add(
            "nettools_tcp_retransmitted_segments_total",
            MetricType::COUNTER,
            "TCP segments retransmitted by sockets in this network namespace (like TcpRetransSegs).",
            with(labels, &[]),
            r.total as f64,
        );
    }
    if let Some(c) = &w.connections {
        connection_series(f, c, labels);
    }
    if let Some(n) = &w.neighbours {
        let mut by_protocol: BTreeMap<&str, u64> = BTreeMap::from([("arp", 0), ("ndp", 0)]);
        for failure in &n.failures {
            *by_protocol.entry(failure.protocol).or_default() += failure.failures;
        }
        for (protocol, count) in by_protocol {
            f.add(
                "nettools_neighbour_failures_total",
                MetricType::COUNTER,
                "ARP/NDP entries in this network namespace that went to FAILED (an address that never answered).",
                with(labels, &[("protocol", protocol)]),
                count as f64,
            );
        }
        f.add(
            "nettools_neighbour_unanswered_addresses",
            MetricType::GAUGE,
            "Addresses asked for with ARP/NDP on the workload's veth that have not answered.",
            with(labels, &[]),
            n.unanswered.len() as f64,
        );
    }
    if has(ProbeKind::Traffic) && !w.interfaces.is_empty() {
        let (mut received, mut sent) = (
            crate::report::Counts::default(),
            crate::report::Counts::default(),
        );
        for i in &w.interfaces {
            received.packets += i.received.packets;
            received.bytes += i.received.bytes;
            sent.packets += i.sent.packets;
            sent.bytes += i.sent.bytes;
        }
        for (direction, c) in [("received", received), ("sent", sent)] {
            f.add(
                "nettools_veth_packets_total",
                MetricType::COUNTER,
                "Packets on the workload's host-side veth, from the workload's point of view.",
                with(labels, &[("direction", direction)]),
                c.packets as f64,
            );
            f.add(
                "nettools_veth_bytes_total",
                MetricType::COUNTER,
                "Bytes on the workload's host-side veth, from the workload's point of view.",
                with(labels, &[("direction", direction)]),
                c.bytes as f64,
            );
        }
    }
    let Some(l) = &w.latency else { return };
    for d in &l.distributions {
        let (name, help, role): (&'static str, &'static str, Option<&str>) = match d.kind {
            LatencyKind::TcpConnect => (
                "nettools_tcp_handshake_duration_seconds",
                "TCP handshakes on the workload's veth, SYN to SYN-ACK: connections it made (role=connect) or accepted (role=accept).",
                Some("connect"),
            ),
            LatencyKind::TcpAccept => (
                "nettools_tcp_handshake_duration_seconds",
                "TCP handshakes on the workload's veth, SYN to SYN-ACK: connections it made (role=connect) or accepted (role=accept).",
                Some("accept"),
            ),
            LatencyKind::Dns => (
                "nettools_dns_duration_seconds",
                "DNS query to response on the workload's veth: its own queries (role=client) or queries it answered (role=server).",
                Some("client"),
            ),
            LatencyKind::DnsServed => (
                "nettools_dns_duration_seconds",
                "DNS query to response on the workload's veth: its own queries (role=client) or queries it answered (role=server).",
                Some("server"),
            ),
            LatencyKind::IcmpEcho => (
                "nettools_icmp_echo_duration_seconds",
                "ICMP echo request to reply on the workload's veth: its pings (role=client) or pings it answered (role=server).",
                Some("client"),
            ),
            LatencyKind::IcmpAnswer => (
                "nettools_icmp_echo_duration_seconds",
                "ICMP echo request to reply on the workload's veth: its pings (role=client) or pings it answered (role=server).",
                Some("server"),
            ),
            LatencyKind::Transit => (
                "nettools_transit_duration_seconds",
                "Time packets from another traced workload spent crossing the host into this one.",
                None,
            ),
        };
        let extra: Vec<(&str, &str)> = role.map(|r| vec![("role", r)]).unwrap_or_default();
        f.histogram(name, help, with(labels, &extra), &d.histogram);
    }
    for (role, o) in [("connect", &l.connect), ("accept", &l.accept)] {
        for (outcome, n) in [("refused", o.refused), ("unanswered", o.unanswered)] {
            f.add(
                "nettools_tcp_handshakes_failed_total",
                MetricType::COUNTER,
                "TCP handshakes that failed on the workload's veth: answered with RST (refused) or not within the timeout (unanswered).",
                with(labels, &[("role", role), ("outcome", outcome)]),
                n as f64,
            );
        }
        f.add(
            "nettools_tcp_syn_retransmits_total",
            MetricType::COUNTER,
            "SYNs sent again before the handshake was answered.",
            with(labels, &[("role", role)]),
            o.syn_retransmits as f64,
        );
    }
    for (rcode, n) in &l.dns.rcodes {
        f.add(
            "nettools_dns_responses_total",
            MetricType::COUNTER,
            "DNS responses to the workload's queries, by rcode.",
            with(labels, &[("rcode", rcode)]),
            *n as f64,
        );
    }
    f.add(
        "nettools_dns_unanswered_queries_total",
        MetricType::COUNTER,
        "DNS queries of the workload with no response within the timeout.",
        with(labels, &[]),
        l.dns.unanswered as f64,
    );
    for (role, n) in [
        ("client", l.icmp_unanswered),
        ("server", l.icmp_unanswered_to_it),
    ] {
        f.add(
            "nettools_icmp_echo_unanswered_total",
            MetricType::COUNTER,
            "ICMP echo requests with no reply within the timeout: its own (role=client) or to it (role=server).",
            with(labels, &[("role", role)]),
            n as f64,
        );
    }
}

/// The agent's own health: what the kernel side could not deliver, probes and sources.
fn health(f: &mut Families, s: &Summary, ctx: &Context) {
    let h = &s.health;
    f.add(
        "nettools_events_lost_total",
        MetricType::COUNTER,
        "Events that did not fit in the ring buffer (totals stay exact; per-event detail is lost).",
        Vec::new(),
        h.events_lost as f64,
    );
    for (map, n) in [
        ("drop_counts", h.drop_count_map_full),
        ("retransmit_flows", h.retransmit_flow_map_full),
        ("tc", h.tc_map_full),
        ("neighbours", h.neighbour_map_full),
    ] {
        f.add(
            "nettools_map_full_total",
            MetricType::COUNTER,
            "Updates lost because an in-kernel map was full, by map.",
            vec![("map".into(), map.into())],
            n as f64,
        );
    }
    f.add(
        "nettools_map_evicted_total",
        MetricType::COUNTER,
        "Entries an LRU map pushed out to make room, by map (the figures they held stay in \
         exact totals).",
        vec![("map".into(), "neighbour_addresses".into())],
        h.neighbour_addresses_pushed_out as f64,
    );
    f.add(
        "nettools_drops_netns_unknown_total",
        MetricType::COUNTER,
        "Drops whose network namespace could not be read.",
        Vec::new(),
        h.drops_netns_unknown as f64,
    );
    f.add(
        "nettools_retransmits_not_sent_total",
        MetricType::COUNTER,
        "TCP retransmission attempts the kernel gave up on before sending (not counted as retransmitted segments, as TcpRetransSegs does not).",
        Vec::new(),
        h.retransmits_not_sent as f64,
    );
    f.add(
        "nettools_undecodable_events_total",
        MetricType::COUNTER,
        "Ring-buffer records userspace could not decode.",
        Vec::new(),
        h.undecodable_events as f64,
    );
    f.add(
        "nettools_probe_runs_skipped_total",
        MetricType::COUNTER,
        "Runs of nettools' eBPF programs the kernel skipped because another BPF program was already running on that CPU (what they would have counted is missing).",
        Vec::new(),
        h.probe_runs_skipped as f64,
    );
    f.add(
        "nettools_neighbour_failures_not_seen_total",
        MetricType::COUNTER,
        "Neighbour failures the kernel's ARP/NDP tables counted (res_failed, every namespace) that the neighbour probe never saw: neighbour totals may be short by up to this many.",
        Vec::new(),
        h.neighbour_failures_not_seen as f64,
    );
    for p in ProbeKind::ALL {
        f.add(
            "nettools_probe_attached",
            MetricType::GAUGE,
            "Whether a probe is attached (1) or not (0).",
            vec![("probe".into(), p.name().into())],
            if ctx.probes.contains(&p) { 1.0 } else { 0.0 },
        );
    }
    f.add(
        "nettools_tc_interfaces",
        MetricType::GAUGE,
        "Interfaces (host-side veths) with nettools' tc programs attached.",
        Vec::new(),
        ctx.tc_interfaces as f64,
    );
    for (source, socket, up) in &ctx.sources {
        f.add(
            "nettools_runtime_up",
            MetricType::GAUGE,
            "Whether a container runtime answered at the last refresh (1) or not (0).",
            vec![
                ("source".into(), source.clone()),
                ("socket".into(), socket.clone()),
            ],
            if *up { 1.0 } else { 0.0 },
        );
    }
    f.add(
        "nettools_build_info",
        MetricType::GAUGE,
        "nettools' version and the kernel it runs on (1).",
        vec![
            ("version".into(), ctx.version.clone()),
            ("kernel".into(), ctx.kernel.clone()),
        ],
        1.0,
    );
}

/// The exposition as Prometheus text (format 0.0.4).
pub fn render(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    prometheus::TextEncoder::new().encode_to_string(families)
}

/// Resets and socket errors of one workload: every direction and errno label, zeros included
/// (closed label sets).
fn connection_series(
    f: &mut Families,
    c: &crate::report::connections::ConnectionSummary,
    labels: &[String; 5],
) {
    use crate::probe::connections::ERRNO_NAMES;
    for (direction, n) in [("sent", c.resets_sent), ("received", c.resets_received)] {
        f.add(
            "nettools_tcp_resets_total",
            MetricType::COUNTER,
            "TCP resets sent by this network namespace's stack or received by its sockets (tcp:tcp_send_reset, tcp:tcp_receive_reset).",
            with(labels, &[("direction", direction)]),
            n as f64,
        );
    }
    let mut by_errno: BTreeMap<&str, u64> = ERRNO_NAMES.iter().map(|e| (*e, 0)).collect();
    for (name, n) in &c.socket_errors {
        let label = ERRNO_NAMES
            .iter()
            .find(|e| **e == name.as_str())
            .copied()
            .unwrap_or("other");
        *by_errno.entry(label).or_default() += n;
    }
    for (errno, n) in by_errno {
        f.add(
            "nettools_socket_errors_total",
            MetricType::COUNTER,
            "Errors the kernel reported to applications on their sockets in this network namespace (inet_sk_error_report), by errno.",
            with(labels, &[("errno", errno)]),
            n as f64,
        );
    }
    for how in crate::probe::connections::HOW_NAMES {
        f.add(
            "nettools_tcp_connections_closed_total",
            MetricType::COUNTER,
            "Established TCP connections of this network namespace that closed, by how they ended (sock:inet_sock_set_state).",
            with(labels, &[("how", how)]),
            c.closed.get(how).copied().unwrap_or(0) as f64,
        );
    }
    let empty = crate::collect::latency::new_histogram();
    f.histogram(
        "nettools_tcp_rtt_seconds",
        "Smoothed RTT (the kernel's srtt) of this network namespace's TCP connections: sampled when established, at most once a second while they carry traffic, at each retransmission, when they leave ESTABLISHED and when they close.",
        with(labels, &[]),
        c.rtt.as_ref().map_or(&empty, |r| &r.histogram),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collect::latency::new_histogram,
        discover::{ContainerRef, PodRef},
        report::{DropSummary, LatencyDistribution, LatencySummary, ReasonCount},
    };

    fn summary(workloads: Vec<WorkloadSummary>) -> Summary {
        Summary {
            kind: "summary",
            duration_s: 1.0,
            kernel: "6.18".into(),
            probes: ProbeKind::ALL.to_vec(),
            all_namespaces: true,
            health: Default::default(),
            problems: vec![],
            thresholds: Default::default(),
            notes: Vec::new(),
            pairing: Default::default(),
            waiting: Default::default(),
            workloads,
        }
    }

    fn pod(name: &str, netns: u32, drops: u64) -> WorkloadSummary {
        WorkloadSummary {
            name: format!("pod shop/{name}"),
            kind: WorkloadKind::Pod,
            netns,
            netns_path: None,
            pid: None,
            pod: Some(PodRef {
                name: name.into(),
                namespace: Some("shop".into()),
                ..Default::default()
            }),
            containers: vec![ContainerRef {
                name: "app".into(),
                ..Default::default()
            }],
            host_network: false,
            stale: false,
            interfaces: Vec::new(),
            drops: DropSummary {
                total: drops,
                by_reason: vec![ReasonCount {
                    reason: "NETFILTER_DROP".into(),
                    code: 12,
                    count: drops,
                    locations: Vec::new(),
                }],
                top_flows: Vec::new(),
                rules: None,
            },
            retransmits: None,
            neighbours: None,
            latency: None,
            connections: None,
        }
    }

    fn ctx(max: usize) -> Context {
        Context {
            max_workloads: max,
            probes: ProbeKind::ALL.to_vec(),
            version: "0.1.0".into(),
            kernel: "6.18".into(),
            ..Default::default()
        }
    }

    #[test]
    fn drops_are_counters_on_the_pods_labels() -> Result<(), prometheus::Error> {
        let s = summary(vec![pod("web", 11, 30)]);
        let text = render(&families(&s, &|_| true, &ctx(10)))?;
        assert!(
            text.contains("# TYPE nettools_drops_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "nettools_drops_total{kind=\"pod\",namespace=\"shop\",pod=\"web\",container=\"\",netns=\"11\",reason=\"NETFILTER_DROP\"} 30"
            ),
            "{text}"
        );
        // Gone namespaces are not exported.
        let text = render(&families(&s, &|n| n != 11, &ctx(10)))?;
        assert!(!text.contains("pod=\"web\""), "{text}");
        Ok(())
    }

    #[test]
    fn workloads_past_the_cap_are_summed_into_one_overflow_series() -> Result<(), prometheus::Error>
    {
        let s = summary(vec![pod("a", 1, 1), pod("b", 2, 2), pod("c", 3, 4)]);
        let text = render(&families(&s, &|_| true, &ctx(1)))?;
        assert!(text.contains("pod=\"a\""), "{text}");
        assert!(
            !text.contains("pod=\"b\"") && !text.contains("pod=\"c\""),
            "{text}"
        );
        assert!(
            text.contains(
                "nettools_drops_total{kind=\"overflow\",namespace=\"\",pod=\"\",container=\"\",netns=\"\",reason=\"NETFILTER_DROP\"} 6"
            ),
            "{text}"
        );
        assert!(text.contains("nettools_workloads_overflow 2"), "{text}");
        Ok(())
    }

    #[test]
    fn latency_is_a_histogram_in_seconds() -> Result<(), prometheus::Error> {
        let mut h = new_histogram();
        for ms in [1u64, 2, 3, 40] {
            h.record(ms * 1_000_000).ok();
        }
        let mut w = pod("web", 11, 0);
        w.latency = Some(LatencySummary {
            distributions: vec![LatencyDistribution::new(LatencyKind::TcpConnect, h)],
            ..Default::default()
        });
        let text = render(&families(&summary(vec![w]), &|_| true, &ctx(10)))?;
        let prefix = "nettools_tcp_handshake_duration_seconds_bucket{kind=\"pod\",namespace=\"shop\",pod=\"web\",container=\"\",netns=\"11\",role=\"connect\",le=";
        for (le, n) in [
            ("0.001", 1),
            ("0.0025", 2),
            ("0.005", 3),
            ("0.025", 3),
            ("0.05", 4),
            ("+Inf", 4),
        ] {
            assert!(
                text.contains(&format!("{prefix}\"{le}\"}} {n}\n")),
                "{le}: {text}"
            );
        }
        let sum = text
            .lines()
            .find(|l| l.starts_with("nettools_tcp_handshake_duration_seconds_sum"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!((sum - 0.046).abs() < 0.046 * 0.002, "{sum}");
        Ok(())
    }
}

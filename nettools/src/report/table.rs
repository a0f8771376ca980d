//! The report for people: per namespace, what is going wrong and where.

use std::fmt::Write as _;

use super::{
    Counts, Health, InterfaceSummary, LatencySummary, Summary, WorkloadSummary,
    text::{self, Safe},
};

/// Failing neighbour addresses a table lists per workload (the JSON has them all).
const TOP_NEIGHBOURS: usize = 10;

/// `1.2 MiB`, `340 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn counts(c: &Counts) -> String {
    format!("{} pkts, {}", c.packets, bytes(c.bytes))
}

/// The widest a workload's name is in the problems section (cut keeping its end, where names
/// differ: `ntlab-…-firewall`).
const PROBLEM_NAME: usize = 40;

/// The problems section: `problems (N):` and one line each, worst first, or `no problems
/// found`. Names and sentences are escaped.
pub fn problems(out: &mut String, s: &Summary) {
    if s.problems.is_empty() {
        let _ = writeln!(out, "no problems found");
        return;
    }
    let _ = writeln!(out, "problems ({}):", s.problems.len());
    let names: Vec<String> = s
        .problems
        .iter()
        .map(|p| text::fit_tail(&p.workload, PROBLEM_NAME))
        .collect();
    let width = names.iter().map(|n| text::width(n)).max().unwrap_or(0);
    for (p, name) in s.problems.iter().zip(&names) {
        let _ = writeln!(
            out,
            "  {:<8}  {}  {}",
            p.kind.name(),
            text::pad(name, width),
            Safe(&p.sentence)
        );
    }
}

/// Renders the summary as text: the problems first, then a section per workload (a healthy
/// one in one line unless `verbose`).
pub fn render(s: &Summary, verbose: bool) -> String {
    let mut out = String::new();
    problems(&mut out, s);
    let _ = writeln!(out);
    let probes: Vec<&str> = s.probes.iter().map(|p| p.name()).collect();
    let _ = writeln!(
        out,
        "nettools trace: {} for {:.1} s, probes: {}, kernel {}",
        match (s.all_namespaces, s.workloads.len()) {
            (true, _) => "every namespace".to_string(),
            (false, 1) => "1 namespace".to_string(),
            (false, n) => format!("{n} namespaces"),
        },
        s.duration_s,
        probes.join(", "),
        Safe(&s.kernel)
    );
    for note in &s.notes {
        let _ = writeln!(out, "note: {}", Safe(note));
    }
    let _ = writeln!(out, "{}", health_line(&s.health));
    if s.workloads.is_empty() {
        let _ = writeln!(out, "\nnothing to report in any network namespace");
    }
    let mut collapsed = false;
    for w in &s.workloads {
        if verbose || super::problems::names(&s.problems, w) {
            workload(&mut out, w);
            collapsed = false;
        } else {
            // Healthy workloads one after the other are one block.
            if !collapsed {
                let _ = writeln!(out);
            }
            healthy(&mut out, w);
            collapsed = true;
        }
    }
    out
}

/// A workload no problem names, in one line: its title and its traffic.
fn healthy(out: &mut String, w: &WorkloadSummary) {
    let mut line = title(w);
    line.push_str("  no problems");
    let attached: Vec<&InterfaceSummary> = w
        .interfaces
        .iter()
        .filter(|i| i.attached.is_some())
        .collect();
    if !attached.is_empty() {
        let mut received = Counts::default();
        let mut sent = Counts::default();
        for i in attached {
            received.packets += i.received.packets;
            received.bytes += i.received.bytes;
            sent.packets += i.sent.packets;
            sent.bytes += i.sent.bytes;
        }
        let _ = write!(
            line,
            "; received {}; sent {}",
            counts(&received),
            counts(&sent)
        );
    }
    if let Some(brief) = w
        .connections
        .as_ref()
        .and_then(super::connections::in_brief)
    {
        let _ = write!(line, "; {brief}");
    }
    let _ = writeln!(out, "{line}");
}

/// `== web  (netns 4026532000, /run/netns/web)`.
fn title(w: &WorkloadSummary) -> String {
    let mut title = format!("== {}  (netns {}", Safe(&w.name), w.netns);
    if let Some(p) = &w.netns_path
        && !w.name.contains(p.as_str())
    {
        let _ = write!(title, ", {}", Safe(p));
    }
    title.push(')');
    title
}

fn workload(out: &mut String, w: &WorkloadSummary) {
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", title(w));
    for i in &w.interfaces {
        interface(out, i);
    }
    drops(out, w);
    if let Some(r) = &w.retransmits {
        if r.total == 0 {
            let _ = writeln!(out, "  retransmits: none");
        } else {
            let _ = writeln!(out, "  retransmits: {} segments", r.total);
            let _ = writeln!(out, "    {:>8}  FLOW  (segments by TCP state)", "SEGMENTS");
            for f in &r.top_flows {
                let _ = writeln!(
                    out,
                    "    {:>8}  {}  ({})",
                    f.segments,
                    Safe(&f.flow),
                    f.states_text()
                );
            }
        }
    }
    if let Some(c) = &w.connections {
        super::connections::table(out, c);
    }
    if let Some(l) = &w.latency {
        latency(out, l);
    }
    if let Some(n) = &w.neighbours {
        if n.failures.is_empty() && n.unanswered.is_empty() {
            let _ = writeln!(out, "  neighbours (ARP/NDP): all resolved");
        } else {
            let _ = writeln!(
                out,
                "  incomplete neighbours (ARP/NDP): {} failed, {} unanswered",
                n.total_failures,
                n.unanswered.len()
            );
            for f in n.failures.iter().take(TOP_NEIGHBOURS) {
                let _ = writeln!(
                    out,
                    "    {} on {}: FAILED {} time{} ({})",
                    Safe(&f.address),
                    Safe(&f.device),
                    f.failures,
                    if f.failures == 1 { "" } else { "s" },
                    f.protocol.to_uppercase()
                );
            }
            let more = n.failures.len().saturating_sub(TOP_NEIGHBOURS);
            if more > 0 || n.failures_elsewhere > 0 {
                let rest: u64 = n
                    .failures
                    .iter()
                    .skip(TOP_NEIGHBOURS)
                    .map(|f| f.failures)
                    .sum();
                let _ = writeln!(
                    out,
                    "    … and {} more failure{} at {} other address{}",
                    rest + n.failures_elsewhere,
                    if rest + n.failures_elsewhere == 1 {
                        ""
                    } else {
                        "s"
                    },
                    if n.failures_elsewhere > 0 {
                        format!("{more}+")
                    } else {
                        more.to_string()
                    },
                    if more == 1 && n.failures_elsewhere == 0 {
                        ""
                    } else {
                        "es"
                    }
                );
            }
            for u in &n.unanswered {
                let _ = writeln!(
                    out,
                    "    {}: {} {} request{}, no reply",
                    Safe(&u.address),
                    u.requests,
                    u.protocol.to_uppercase(),
                    if u.requests == 1 { "" } else { "s" }
                );
            }
        }
    }
}

fn latency(out: &mut String, l: &LatencySummary) {
    use super::histogram::duration;
    if l.distributions.is_empty() {
        let _ = writeln!(out, "  latency: no samples");
    } else {
        let _ = writeln!(
            out,
            "  latency {:<32} {:>7} {:>11} {:>11} {:>11}",
            "", "COUNT", "P50", "P99", "MAX"
        );
        for d in &l.distributions {
            let ms = |v: f64| duration(v * 1e6);
            let _ = writeln!(
                out,
                "    {:<38} {:>7} {:>11} {:>11} {:>11}",
                d.kind.describe(),
                d.count,
                ms(d.p50_ms),
                ms(d.p99_ms),
                ms(d.max_ms)
            );
        }
    }
    for (what, h) in [("connect", &l.connect), ("accept", &l.accept)] {
        let mut parts = Vec::new();
        if h.refused > 0 {
            parts.push(format!("{} refused (RST)", h.refused));
        }
        if h.unanswered > 0 {
            parts.push(format!(
                "{} SYN{} unanswered",
                h.unanswered,
                if h.unanswered == 1 { "" } else { "s" }
            ));
        }
        if h.syn_retransmits > 0 {
            parts.push(format!(
                "{} SYN retransmit{}",
                h.syn_retransmits,
                if h.syn_retransmits == 1 { "" } else { "s" }
            ));
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  tcp {what}: {}", parts.join(", "));
        }
    }
    let d = &l.dns;
    if d.responses + d.unanswered > 0 {
        let rcodes: Vec<String> = d
            .rcodes
            .iter()
            .map(|(k, v)| format!("{} {v}", Safe(k)))
            .collect();
        let mut line = format!(
            "  dns: {} response{}",
            d.responses,
            if d.responses == 1 { "" } else { "s" }
        );
        if !rcodes.is_empty() {
            let _ = write!(line, " ({})", rcodes.join(", "));
        }
        if d.unanswered > 0 {
            let servers: Vec<String> = d
                .unanswered_by_server
                .iter()
                .map(|(k, v)| format!("{}: {v}", Safe(k)))
                .collect();
            let _ = write!(
                line,
                "; {} unanswered ({})",
                d.unanswered,
                servers.join(", ")
            );
        }
        let _ = writeln!(out, "{line}");
        for f in &d.failures {
            let _ = writeln!(
                out,
                "    {} {} ({})",
                Safe(&f.rcode),
                Safe(&f.name),
                f.count
            );
        }
        for (name, n) in &d.unanswered_by_name {
            let _ = writeln!(out, "    unanswered {} ({n})", Safe(name));
        }
    }
    if l.icmp_unanswered > 0 {
        let _ = writeln!(
            out,
            "  ping: {} echo request(s) unanswered",
            l.icmp_unanswered
        );
    }
    if l.icmp_unanswered_to_it > 0 {
        let _ = writeln!(
            out,
            "  ping: {} echo request(s) to it unanswered",
            l.icmp_unanswered_to_it
        );
    }
    if !l.transit_from.is_empty() {
        let from: Vec<String> = l
            .transit_from
            .iter()
            .map(|t| format!("{} ({} packets)", Safe(&t.from), t.packets))
            .collect();
        let _ = writeln!(out, "  transit into it from: {}", from.join(", "));
    }
}

fn interface(out: &mut String, i: &InterfaceSummary) {
    let mut what = text::escape(&i.name).into_owned();
    if let Some(peer) = &i.peer {
        let _ = write!(what, " (host side of {}", Safe(peer));
        if let Some(b) = &i.bridge {
            let _ = write!(what, ", on {}", Safe(b));
        }
        what.push(')');
    }
    match i.attached {
        None => {
            let _ = writeln!(out, "  traffic on {what}: not attached");
        }
        Some(_) => {
            let _ = writeln!(
                out,
                "  traffic on {what}: received {}; sent {}",
                counts(&i.received),
                counts(&i.sent)
            );
        }
    }
    for t in &i.too_big {
        let _ = writeln!(
            out,
            "    ICMP too big {}: {} from {} about packets to {}{}",
            t.direction,
            t.messages,
            t.from,
            t.to,
            t.mtu.map_or(String::new(), |m| format!(", MTU {m}"))
        );
    }
}

fn drops(out: &mut String, w: &WorkloadSummary) {
    let d = &w.drops;
    if d.total == 0 {
        let _ = writeln!(out, "  drops: none");
        return;
    }
    let _ = writeln!(out, "  drops: {}", d.total);
    let reasons: Vec<String> = d
        .by_reason
        .iter()
        .map(|r| text::escape(&r.reason).into_owned())
        .collect();
    let width = reasons
        .iter()
        .map(|r| text::width(r))
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        out,
        "    {}  {:>8}  WHERE IN THE KERNEL",
        text::pad("REASON", width),
        "PACKETS"
    );
    for (r, name) in d.by_reason.iter().zip(&reasons) {
        let locs: Vec<String> = r
            .locations
            .iter()
            .map(|l| format!("{} ({})", Safe(&l.location), l.count))
            .collect();
        let _ = writeln!(
            out,
            "    {}  {:>8}  {}",
            text::pad(name, width),
            r.count,
            locs.join(", ")
        );
    }
    match &d.rules {
        Some(rules) if !rules.is_empty() => {
            let _ = writeln!(
                out,
                "    firewall rules that dropped (their counters, during the trace):"
            );
            for g in rules {
                let _ = writeln!(
                    out,
                    "      {:>8}  {}: {}",
                    g.delta,
                    Safe(&g.rule.place()),
                    Safe(&g.rule.text)
                );
            }
        }
        Some(_) if d.by_reason.iter().any(|r| r.reason == "NETFILTER_DROP") => {
            let _ = writeln!(
                out,
                "    firewall rules that dropped: no rule's counter grew (nftables rules without \
                 `counter`, or tools that cannot read this namespace's rules)"
            );
        }
        Some(_) => {}
        None => {}
    }
    if !d.top_flows.is_empty() {
        let _ = writeln!(out, "    top dropped flows:");
        for f in &d.top_flows {
            let _ = writeln!(
                out,
                "      {:>8}  {}  [{}]",
                f.count,
                Safe(&f.flow),
                Safe(&f.reason)
            );
        }
    }
}

/// One line on the pipeline's health: lost events are never silent.
fn health_line(h: &Health) -> String {
    let mut line = format!("events lost: {}", h.events_lost);
    let extras = [
        (h.drop_count_map_full, "drops not counted (count map full)"),
        (h.drops_netns_unknown, "drops with unknown namespace"),
        (
            h.retransmit_flow_map_full,
            "retransmits not counted per flow (map full)",
        ),
        (
            h.retransmits_not_sent,
            "retransmit attempts not sent (not counted, as TcpRetransSegs)",
        ),
        (h.tc_map_full, "tc counters not kept (map full)"),
        (
            h.neighbour_map_full,
            "neighbour failures not counted (map full)",
        ),
        (
            h.neighbour_addresses_pushed_out,
            "failing neighbour addresses pushed out of their map (totals exact)",
        ),
        (
            h.neighbour_failures_not_seen,
            "neighbour failures the kernel's tables counted that the probe never saw (neighbour totals may be short)",
        ),
        (h.undecodable_events, "undecodable events"),
        (
            h.probe_runs_skipped,
            "probe runs the kernel skipped (another BPF program was running; counts may be short)",
        ),
    ];
    for (n, what) in extras {
        if n > 0 {
            let _ = write!(line, "; {what}: {n}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        DropSummary, LocationCount, NeighbourFailure, NeighbourSummary, ReasonCount,
        RetransmitFlow, RetransmitSummary,
    };

    fn workload(name: &str, netns: u32) -> WorkloadSummary {
        WorkloadSummary {
            name: name.into(),
            kind: Default::default(),
            netns,
            netns_path: None,
            pid: None,
            pod: None,
            containers: vec![],
            host_network: false,
            stale: false,
            interfaces: vec![],
            drops: DropSummary::default(),
            retransmits: None,
            neighbours: None,
            latency: None,
            connections: None,
        }
    }

    #[test]
    fn shows_every_section_and_quiet_namespaces() {
        let mut web = workload("web", 4026532000);
        web.netns_path = Some("/run/netns/web".into());
        web.drops = DropSummary {
            total: 12,
            by_reason: vec![ReasonCount {
                reason: "NETFILTER_DROP".into(),
                code: 12,
                count: 12,
                locations: vec![LocationCount {
                    location: "nf_hook_slow+0x9c".into(),
                    address: "0xffffffff81a0009c".into(),
                    count: 12,
                }],
            }],
            top_flows: vec![],
            rules: None,
        };
        web.retransmits = Some(RetransmitSummary {
            total: 7,
            top_flows: vec![RetransmitFlow {
                flow: "tcp 10.0.0.2:1 -> 10.0.0.1:80".into(),
                segments: 7,
                states: [("ESTABLISHED", 5), ("FIN_WAIT1", 2)].into_iter().collect(),
            }],
        });
        web.neighbours = Some(NeighbourSummary {
            total_failures: 1,
            failures_elsewhere: 0,
            failures: vec![NeighbourFailure {
                address: "10.0.0.99".into(),
                protocol: "arp",
                device: "eth0".into(),
                ifindex: 2,
                failures: 1,
            }],
            unanswered: vec![],
        });
        let mut db = workload("db", 4026532001);
        db.retransmits = Some(RetransmitSummary::default());
        let s = Summary {
            kind: "summary",
            duration_s: 2.0,
            kernel: "6.18.0".into(),
            probes: vec![crate::probe::ProbeKind::Drops],
            all_namespaces: false,
            health: Health {
                events_lost: 3,
                ..Default::default()
            },
            problems: vec![],
            thresholds: Default::default(),
            notes: vec![],
            pairing: Default::default(),
            waiting: Default::default(),
            workloads: vec![web, db],
        };
        let text = render(&s, true);
        assert!(text.contains("events lost: 3"), "{text}");
        assert!(
            text.contains("== web  (netns 4026532000, /run/netns/web)"),
            "{text}"
        );
        assert!(
            text.contains("NETFILTER_DROP        12  nf_hook_slow+0x9c (12)"),
            "{text}"
        );
        assert!(text.contains("retransmits: 7 segments"), "{text}");
        assert!(
            text.contains("       7  tcp 10.0.0.2:1 -> 10.0.0.1:80  (ESTABLISHED 5, FIN_WAIT1 2)"),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.99 on eth0: FAILED 1 time (ARP)"),
            "{text}"
        );
        assert!(
            text.contains("== db  (netns 4026532001)\n  drops: none\n  retransmits: none"),
            "{text}"
        );
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(340), "340 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}

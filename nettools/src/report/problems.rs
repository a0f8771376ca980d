//! What is wrong, worst first: the problems a [`Summary`] shows, each in one sentence an
//! on-call engineer would say, naming the workload and pointing to the section of the report
//! (and the JSON object) that holds the figures. Rules over the summary's own figures only, no
//! kernel and no I/O, with [`Thresholds`] the user can set (`nettools trace --slow-answer …`).
//!
//! | kind | when | evidence |
//! |---|---|---|
//! | firewall | packets dropped by netfilter (`NETFILTER_DROP`; before 5.17: freed in netfilter) | drops |
//! | routing | packets dropped for want of a route (`IP_INNOROUTES`, `IP_OUTNOROUTES`) | drops |
//! | mtu | packets dropped as too big for the next hop (`PKT_TOO_BIG`: a router's smaller MTU onwards, Don't Fragment set); ICMP "fragmentation needed" / "packet too big" received or sent on its veth | drops, interfaces |
//! | arp | neighbours (ARP/NDP) that went FAILED or never answered | neighbours |
//! | dns | error answers (SERVFAIL, NXDOMAIN, REFUSED, …), unanswered queries, slow answers | latency.dns |
//! | refused | packets to a port where nothing listens (`NO_SOCKET`: the kernel answered a reset or port unreachable) | drops |
//! | drops | packets dropped for any other reason | drops |
//! | lossy | TCP segments retransmitted, at least a share of what was sent | retransmits |
//! | latency | SYNs or pings answered slowly | latency |
//!
//! Sentences hold names from outside raw (flows, DNS names): renderers escape them.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{LatencySummary, Summary, WorkloadSummary};
use crate::collect::latency::LatencyKind;

/// What counts as a problem. The defaults are documented in the README (why these values).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// A workload whose SYN-ACKs or echo replies take longer than this (p90, ms) is slow.
    pub slow_answer_ms: f64,
    /// DNS answers slower than this (p90, ms) are a DNS problem.
    pub slow_dns_ms: f64,
    /// Retransmitted segments, as a percentage of the TCP segments the workload sent (its
    /// TCP bytes in full-size segments where the veth carried offloaded ones), from which its
    /// traffic is lossy…
    pub lossy_percent: f64,
    /// …and at least this many segments (a handful of retransmits is ordinary TCP).
    pub lossy_min_segments: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            slow_answer_ms: 20.0,
            slow_dns_ms: 100.0,
            lossy_percent: 1.0,
            lossy_min_segments: 10,
        }
    }
}

/// The kinds of problem, in the words of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Firewall,
    Routing,
    Mtu,
    Arp,
    Dns,
    Refused,
    Drops,
    Lossy,
    Latency,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Firewall => "firewall",
            Self::Routing => "routing",
            Self::Mtu => "mtu",
            Self::Arp => "arp",
            Self::Dns => "dns",
            Self::Refused => "refused",
            Self::Drops => "drops",
            Self::Lossy => "lossy",
            Self::Latency => "latency",
        }
    }
}

/// Where a problem's figures are, and the figure it is ranked by.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// The section of the workload's report (and its JSON object) that holds the figures:
    /// `drops`, `retransmits`, `neighbours`, `latency.dns`, `latency`, `interfaces`.
    pub section: &'static str,
    /// The figure the problem is ranked by, in `unit`s.
    pub count: u64,
    /// `packets` (dropped), `segments` (retransmitted), `failures` (neighbour entries FAILED or
    /// addresses unanswered), `queries` (failed or unanswered DNS queries), `answers` (slow
    /// answers sampled), `messages` (ICMP "too big" messages, for `mtu` without drops).
    pub unit: &'static str,
    /// Drop reasons, TCP states, DNS rcodes (most first).
    pub reasons: Vec<String>,
    /// Kernel functions where packets were dropped (most first).
    pub locations: Vec<String>,
    /// Flows, addresses or names concerned (most first).
    pub subjects: Vec<String>,
    /// The p90 of the slow answers (ms), for `latency` and slow `dns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
}

/// One problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    pub kind: Kind,
    /// The workload's name (as in its section).
    pub workload: String,
    pub netns: u32,
    /// What is wrong, in one sentence (raw: names from outside are escaped when rendered).
    pub sentence: String,
    pub evidence: Evidence,
    /// 0: traffic fails (dropped, unanswered, refused); 1: it gets through, degraded.
    #[serde(skip)]
    tier: u8,
}

/// Drop reasons of a routing failure.
const ROUTING_REASONS: [&str; 2] = ["IP_INNOROUTES", "IP_OUTNOROUTES"];
/// The reason the kernel names a firewall drop with.
const FIREWALL_REASON: &str = "NETFILTER_DROP";
/// Packets too big for the next hop's MTU (with Don't Fragment, or IPv6).
const MTU_REASON: &str = "PKT_TOO_BIG";
/// Packets to a port nothing listens on.
const NO_SOCKET_REASON: &str = "NO_SOCKET";
/// Packets that waited for a neighbour that never answered.
const NEIGH_REASON: &str = "NEIGH_FAILED";
/// What the report says when the kernel names no reasons (before 5.17).
const NO_REASON: &str = "UNAVAILABLE";

/// How many subjects (flows, addresses, names) a sentence names before "and N more".
const NAMED: usize = 2;

/// The class of a drop: by reason where the kernel names it; on kernels without reasons by
/// the function that freed the packet (the same functions free the same drops).
fn drop_kind(reason: &str, location: &str) -> Option<Kind> {
    let function = location.split('+').next().unwrap_or("");
    let by_location = reason == NO_REASON;
    if reason == FIREWALL_REASON
        || (by_location
            && ["nf_hook", "nft_do_chain", "ipt_do_table", "ip6t_do_table"]
                .iter()
                .any(|f| function.starts_with(f)))
    {
        Some(Kind::Firewall)
    } else if ROUTING_REASONS.contains(&reason) || (by_location && function == "ip_error") {
        Some(Kind::Routing)
    } else if reason == MTU_REASON {
        // Only by reason: before it, ip_forward frees these as it frees other drops.
        Some(Kind::Mtu)
    } else if reason == NO_SOCKET_REASON {
        // Only by reason: before 5.17 the same functions free packets for many other causes.
        Some(Kind::Refused)
    } else if reason == NEIGH_REASON
        || (by_location && ["neigh_invalidate", "neigh_timer_handler"].contains(&function))
    {
        Some(Kind::Arp)
    } else {
        None
    }
}

/// Drops of one class in a workload: count, reasons, functions.
#[derive(Default)]
struct DropClass {
    count: u64,
    reasons: Vec<String>,
    locations: Vec<String>,
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// The drops of `w` that belong to `kind` (`None`: the ones no other rule claims).
fn drops_of(w: &WorkloadSummary, kind: Option<Kind>) -> DropClass {
    let mut c = DropClass::default();
    for r in &w.drops.by_reason {
        if r.reason == NO_REASON && !r.locations.is_empty() {
            // One reason for all drops: the functions tell them apart.
            for l in &r.locations {
                if drop_kind(&r.reason, &l.location) == kind {
                    c.count += l.count;
                    push_unique(&mut c.reasons, &r.reason);
                    push_unique(&mut c.locations, function(&l.location));
                }
            }
            if kind.is_none() {
                // Drops at functions beyond the listed ones are of no known class.
                let listed: u64 = r.locations.iter().map(|l| l.count).sum();
                c.count += r.count.saturating_sub(listed);
            }
        } else if drop_kind(&r.reason, "") == kind {
            c.count += r.count;
            push_unique(&mut c.reasons, &r.reason);
            for l in &r.locations {
                push_unique(&mut c.locations, function(&l.location));
            }
        }
    }
    c
}

fn function(location: &str) -> &str {
    location.split('+').next().unwrap_or(location)
}

/// The flows of `w`'s dropped packets with one of `reasons`, most first.
fn dropped_flows<'a>(w: &'a WorkloadSummary, reasons: &[String]) -> Vec<(&'a str, u64)> {
    w.drops
        .top_flows
        .iter()
        .filter(|f| reasons.contains(&f.reason))
        .map(|f| (f.flow.as_str(), f.count))
        .collect()
}

/// `udp 10.0.0.2:* -> 10.0.0.9:7777` → (`UDP`, `10.0.0.9:7777`); `icmp a -> b type 8 code 0`
/// → (`ICMP`, `b`).
fn protocol_and_destination(flow: &str) -> Option<(String, String)> {
    let (proto, rest) = flow.split_once(' ')?;
    let (_, dst) = rest.split_once(" -> ")?;
    let dst = dst.split(' ').next().unwrap_or(dst);
    Some((proto.to_uppercase(), dst.to_string()))
}

/// `a`, `a and b`, `a, b and 3 more`.
fn listing(items: &[String], total: usize) -> String {
    let more = total.saturating_sub(items.len());
    let mut s = match items {
        [] => String::new(),
        [one] => one.clone(),
        [first @ .., last] if more == 0 => format!("{} and {last}", first.join(", ")),
        all => all.join(", "),
    };
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// The first [`NAMED`] of `items` and how many more: `a and b`, `a, b and 3 more`.
fn first_named(items: &[String]) -> String {
    listing(&items[..items.len().min(NAMED)], items.len())
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The evidence of a problem made of one class of drops: in `drops`, counted in packets.
fn drop_evidence(c: DropClass, subjects: Vec<String>) -> Evidence {
    Evidence {
        section: "drops",
        count: c.count,
        unit: "packets",
        subjects,
        reasons: c.reasons,
        locations: c.locations,
        p90_ms: None,
    }
}

/// `(NETFILTER_DROP, nft_do_chain)`.
fn reasons_and_where(c: &DropClass) -> String {
    let mut parts: Vec<&str> = c.reasons.iter().map(String::as_str).collect();
    parts.extend(c.locations.iter().take(NAMED).map(String::as_str));
    format!("({})", parts.join(", "))
}

fn firewall(w: &WorkloadSummary) -> Option<Problem> {
    let c = drops_of(w, Some(Kind::Firewall));
    if c.count == 0 {
        return None;
    }
    let flows = dropped_flows(w, &c.reasons);
    let what = match flows
        .first()
        .and_then(|(f, n)| Some((protocol_and_destination(f)?, n)))
    {
        Some(((proto, dst), &n)) if n == c.count => format!(
            "{} to {dst} dropped by netfilter",
            plural(
                c.count,
                &format!("{proto} packet"),
                &format!("{proto} packets")
            )
        ),
        Some(((proto, dst), &n)) => format!(
            "{} dropped by netfilter, {n} of them {proto} to {dst}",
            plural(c.count, "packet", "packets")
        ),
        None => format!(
            "{} dropped by netfilter",
            plural(c.count, "packet", "packets")
        ),
    };
    // With `trace --rules`: the rule that dropped most.
    let rule = w
        .drops
        .rules
        .iter()
        .flatten()
        .next()
        .map(|g| format!("; rule {}: {} (+{})", g.rule.place(), g.rule.text, g.delta))
        .unwrap_or_default();
    Some(problem(
        Kind::Firewall,
        w,
        format!("{what} {}{rule}", reasons_and_where(&c)),
        drop_evidence(c, flows.iter().map(|(f, _)| f.to_string()).collect()),
        0,
    ))
}

fn routing(w: &WorkloadSummary) -> Option<Problem> {
    let c = drops_of(w, Some(Kind::Routing));
    if c.count == 0 {
        return None;
    }
    let flows = dropped_flows(w, &c.reasons);
    let mut destinations: Vec<String> = Vec::new();
    for (f, _) in &flows {
        if let Some((_, dst)) = protocol_and_destination(f) {
            // The address: a route is to an address, not a port.
            let addr = match dst.rsplit_once(':') {
                Some((a, port)) if port.parse::<u16>().is_ok() || port == "*" => a.to_string(),
                _ => dst,
            };
            push_unique(&mut destinations, &addr);
        }
    }
    let to = if destinations.is_empty() {
        String::new()
    } else {
        format!(" to {}", first_named(&destinations))
    };
    let mut evidence = reasons_and_where(&c);
    evidence.insert_str(
        evidence.len() - 1,
        &format!(", {}", plural(c.count, "packet", "packets")),
    );
    Some(problem(
        Kind::Routing,
        w,
        format!("no route{to} {evidence}"),
        drop_evidence(c, destinations),
        0,
    ))
}

/// Packets too big for the path: the classic overlay failure (small requests work, large
/// transfers hang). Named where they died (`PKT_TOO_BIG` drops, with their destinations), and
/// by the ICMP "fragmentation needed" / "packet too big" messages on the workload's veth: the
/// ones it received (who said its packets are too big, for where, which MTU) and the ones it
/// sent (it is the router whose next hop is too small; on kernels that free those packets
/// without naming the reason, the only sign).
fn mtu(w: &WorkloadSummary) -> Option<Problem> {
    let c = drops_of(w, Some(Kind::Mtu));
    let messages = |direction: &str| -> Vec<&super::TooBig> {
        w.interfaces
            .iter()
            .flat_map(|i| &i.too_big)
            .filter(|t| t.direction == direction)
            .collect()
    };
    let (received, sent) = (messages("received"), messages("sent"));
    if c.count == 0 && received.is_empty() && sent.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    let mut subjects: Vec<String> = Vec::new();
    if c.count > 0 {
        let flows = dropped_flows(w, &c.reasons);
        let mut destinations: Vec<String> = Vec::new();
        for (f, _) in &flows {
            if let Some((proto, dst)) = protocol_and_destination(f) {
                push_unique(&mut destinations, &format!("{proto} to {dst}"));
            }
        }
        let to = if destinations.is_empty() {
            String::new()
        } else {
            format!(", {}", first_named(&destinations))
        };
        parts.push(format!(
            "{} too big for the next hop's MTU{to} {}",
            plural(c.count, "packet", "packets"),
            reasons_and_where(&c)
        ));
        subjects.extend(destinations);
    }
    let mtu_of = |t: &super::TooBig| t.mtu.map_or(String::new(), |m| format!(", MTU {m}"));
    for t in received.iter().take(NAMED) {
        parts.push(format!(
            "{} says its packets to {} are too big ({} ICMP {}{})",
            t.from,
            t.to,
            t.messages,
            icmp_name(&t.from),
            mtu_of(t)
        ));
        push_unique(&mut subjects, &t.to);
    }
    let told: u64 = sent.iter().map(|t| t.messages).sum();
    if let Some(first) = sent.first() {
        let (icmp, mtu) = (icmp_name(&first.from), mtu_of(first));
        parts.push(if c.count > 0 {
            format!("it answered {told} of them with ICMP {icmp}{mtu}")
        } else {
            format!(
                "answered {} too big for its next hop with ICMP {icmp}{mtu}",
                plural(told, "packet", "packets")
            )
        });
    }
    let (count, unit) = if c.count > 0 {
        (c.count, "packets")
    } else {
        (
            received.iter().map(|t| t.messages).sum::<u64>() + told,
            "messages",
        )
    };
    Some(problem(
        Kind::Mtu,
        w,
        parts.join("; "),
        Evidence {
            section: if c.count > 0 { "drops" } else { "interfaces" },
            count,
            unit,
            subjects,
            reasons: c.reasons,
            locations: c.locations,
            p90_ms: None,
        },
        0,
    ))
}

/// The ICMP message that says a packet is too big, by the sender's address family.
fn icmp_name(from: &str) -> &'static str {
    if from.contains(':') {
        "'packet too big'"
    } else {
        "'fragmentation needed'"
    }
}

fn arp(w: &WorkloadSummary) -> Option<Problem> {
    let n = w.neighbours.as_ref()?;
    if n.total_failures == 0 && n.unanswered.is_empty() {
        return None;
    }
    // Addresses: the failed ones, then the unanswered ones not failed (yet).
    let mut addresses: Vec<String> = Vec::new();
    let mut protocols: BTreeSet<&str> = BTreeSet::new();
    for f in &n.failures {
        push_unique(&mut addresses, &f.address);
        protocols.insert(f.protocol);
    }
    for u in &n.unanswered {
        push_unique(&mut addresses, &u.address);
        protocols.insert(u.protocol);
    }
    let requests: u64 = n.unanswered.iter().map(|u| u.requests).sum();
    let protocol = protocols
        .iter()
        .map(|p| p.to_uppercase())
        .collect::<Vec<_>>()
        .join("/");
    let shown = &addresses[..addresses.len().min(NAMED)];
    let mut figures = vec![format!("{} FAILED", n.total_failures)];
    if requests > 0 {
        figures.push(plural(requests, "request", "requests"));
    }
    let waited = drops_of(w, Some(Kind::Arp));
    if waited.count > 0 {
        figures.push(format!(
            "{} dropped waiting",
            plural(waited.count, "packet", "packets")
        ));
    }
    let total = addresses.len().max(1);
    let who = if addresses.is_empty() {
        "neighbours".to_string()
    } else {
        listing(shown, total)
    };
    Some(problem(
        Kind::Arp,
        w,
        format!(
            "{who} never answered {} ({})",
            if protocol.is_empty() {
                "ARP"
            } else {
                &protocol
            },
            figures.join(", ")
        ),
        Evidence {
            section: "neighbours",
            // Ranked by the packets lost waiting where the drop probe saw them.
            count: if waited.count > 0 {
                waited.count
            } else {
                n.total_failures.max(n.unanswered.len() as u64)
            },
            unit: if waited.count > 0 {
                "packets"
            } else {
                "failures"
            },
            reasons: if waited.count > 0 {
                waited.reasons
            } else {
                Vec::new()
            },
            locations: waited.locations,
            subjects: addresses,
            p90_ms: None,
        },
        0,
    ))
}

fn p90(l: &LatencySummary, kind: LatencyKind) -> Option<(f64, u64)> {
    l.distributions
        .iter()
        .find(|d| d.kind == kind && d.count > 0)
        .map(|d| (d.p90_ms, d.count))
}

/// `200 ms`, `1.5 ms`, `2.3 s`: as people say them (the sections have the exact figures).
fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Whether the DNS figures of `l` are a server's: answers it gave, no queries of its own.
fn dns_server(l: &LatencySummary) -> bool {
    p90(l, LatencyKind::Dns).is_none()
        && l.dns.unanswered == 0
        && p90(l, LatencyKind::DnsServed).is_some()
}

/// DNS failures. Like slow answers, a failing lookup is named once: at the workload that asks
/// (it says which name failed); at a DNS server only when no traced workload asks.
fn dns(w: &WorkloadSummary, t: &Thresholds, askers_traced: bool) -> Option<Problem> {
    let l = w.latency.as_ref()?;
    let server = dns_server(l);
    if server && askers_traced {
        return None;
    }
    let d = &l.dns;
    let errors: u64 = d
        .rcodes
        .iter()
        .filter(|(k, _)| k.as_str() != "NOERROR")
        .map(|(_, v)| v)
        .sum();
    let slow = p90(l, LatencyKind::Dns).filter(|(p, _)| *p > t.slow_dns_ms);
    if errors == 0 && d.unanswered == 0 && slow.is_none() {
        return None;
    }
    let mut parts = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut subjects: Vec<String> = Vec::new();
    // Error answers, by rcode: `SERVFAIL for db.lab (14)`.
    let mut rcodes: Vec<(&String, &u64)> = d
        .rcodes
        .iter()
        .filter(|(k, n)| k.as_str() != "NOERROR" && **n > 0)
        .collect();
    rcodes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (rcode, count) in rcodes {
        reasons.push(rcode.clone());
        let names: Vec<&super::DnsFailure> =
            d.failures.iter().filter(|f| &f.rcode == rcode).collect();
        let shown: Vec<String> = names
            .iter()
            .take(NAMED)
            .map(|f| format!("{} ({})", f.name, f.count))
            .collect();
        subjects.extend(names.iter().map(|f| f.name.clone()));
        parts.push(if shown.is_empty() {
            format!("{rcode} ({count})")
        } else {
            format!("{rcode} for {}", listing(&shown, names.len()))
        });
    }
    if d.unanswered > 0 {
        let mut names: Vec<(&String, &u64)> = d.unanswered_by_name.iter().collect();
        names.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        // `lost.lab A` → `lost.lab`: the name is what people search for.
        let name = |k: &str| k.rsplit_once(' ').map_or(k, |(n, _)| n).to_string();
        let shown: Vec<String> = names
            .iter()
            .take(NAMED)
            .map(|(k, n)| format!("{} ({n})", name(k)))
            .collect();
        subjects.extend(names.iter().map(|(k, _)| name(k)));
        parts.push(if shown.is_empty() {
            format!("{} unanswered", plural(d.unanswered, "query", "queries"))
        } else {
            format!("no answer for {}", listing(&shown, names.len()))
        });
    }
    if let Some((p, _)) = slow {
        parts.push(format!("answers take {} (p90)", ms(p)));
    }
    if server && let Some(first) = parts.first_mut() {
        first.insert_str(0, "answers ");
    }
    let failed = errors + d.unanswered;
    Some(problem(
        Kind::Dns,
        w,
        parts.join(", "),
        Evidence {
            section: "latency.dns",
            count: if failed > 0 {
                failed
            } else {
                slow.map_or(0, |(_, n)| n)
            },
            unit: if failed > 0 { "queries" } else { "answers" },
            reasons,
            locations: Vec::new(),
            subjects,
            p90_ms: slow.map(|(p, _)| p),
        },
        if failed > 0 { 0 } else { 1 },
    ))
}

/// Packets to ports where nothing listens: the ports, most packets first.
fn refused(w: &WorkloadSummary) -> Option<Problem> {
    let c = drops_of(w, Some(Kind::Refused));
    if c.count == 0 {
        return None;
    }
    let flows = dropped_flows(w, &c.reasons);
    let mut ports: Vec<String> = Vec::new();
    for (proto, dst) in flows
        .iter()
        .filter_map(|(f, _)| protocol_and_destination(f))
    {
        push_unique(&mut ports, &format!("{proto} {dst}"));
    }
    let sentence = if ports.is_empty() {
        format!(
            "{} to ports where nothing listens {}",
            plural(c.count, "packet", "packets"),
            reasons_and_where(&c)
        )
    } else {
        let named: Vec<String> = ports.iter().take(NAMED).cloned().collect();
        format!(
            "nothing listens on {}: {} refused {}",
            listing(&named, ports.len()),
            plural(c.count, "packet", "packets"),
            reasons_and_where(&c)
        )
    };
    Some(problem(
        Kind::Refused,
        w,
        sentence,
        drop_evidence(c, flows.iter().map(|(f, _)| f.to_string()).collect()),
        0,
    ))
}

fn other_drops(w: &WorkloadSummary) -> Option<Problem> {
    let c = drops_of(w, None);
    if c.count == 0 {
        return None;
    }
    let flows = dropped_flows(w, &c.reasons);
    let mut sentence = format!("{} dropped", plural(c.count, "packet", "packets"));
    if let Some(((proto, dst), n)) = flows
        .first()
        .and_then(|(f, n)| Some((protocol_and_destination(f)?, n)))
    {
        sentence.push_str(&format!(", {n} of them {proto} to {dst}"));
    }
    sentence.push_str(&format!(" {}", reasons_and_where(&c)));
    Some(problem(
        Kind::Drops,
        w,
        sentence,
        drop_evidence(c, flows.iter().map(|(f, _)| f.to_string()).collect()),
        0,
    ))
}

/// The bytes of a full-size TCP segment on an Ethernet MTU: what a segmentation-offloaded
/// (GSO) packet on a veth is cut into on the wire.
const SEGMENT_BYTES: u64 = 1500;

/// TCP segments `w` sent, when the traffic probe counted them. A veth carries
/// segmentation-offloaded packets of up to 64 KiB, each many segments: a packet counts as
/// its bytes in full-size segments when that is more.
fn tcp_sent(w: &WorkloadSummary) -> Option<u64> {
    let mut seen = false;
    let mut sent = 0;
    for i in &w.interfaces {
        if i.attached.is_none() {
            continue;
        }
        seen = true;
        sent += i
            .by_protocol
            .iter()
            .filter(|p| p.direction == "sent" && p.protocol.ends_with("/tcp"))
            .map(|p| p.packets.max(p.bytes.div_ceil(SEGMENT_BYTES)))
            .sum::<u64>();
    }
    seen.then_some(sent)
}

fn lossy(w: &WorkloadSummary, t: &Thresholds) -> Option<Problem> {
    let r = w.retransmits.as_ref()?;
    if r.total == 0 || r.total < t.lossy_min_segments {
        return None;
    }
    let share = tcp_sent(w)
        .filter(|&sent| sent > 0)
        .map(|sent| 100.0 * r.total as f64 / sent as f64);
    if share.is_some_and(|s| s < t.lossy_percent) {
        return None;
    }
    let mut sentence = format!(
        "{} retransmitted",
        plural(r.total, "TCP segment", "TCP segments")
    );
    let top = r.top_flows.first();
    if let Some(f) = top {
        if let Some((_, dst)) = protocol_and_destination(&f.flow) {
            if f.segments == r.total {
                sentence.push_str(&format!(" to {dst}"));
            } else {
                sentence.push_str(&format!(", {} to {dst}", f.segments));
            }
        }
        sentence.push_str(&format!(" ({})", f.states_text()));
    }
    if let Some(s) = share {
        sentence.push_str(&format!(", {s:.1} % of the TCP segments it sent"));
    }
    let mut reasons: Vec<String> = Vec::new();
    for f in &r.top_flows {
        for state in f.states.keys() {
            push_unique(&mut reasons, state);
        }
    }
    Some(problem(
        Kind::Lossy,
        w,
        sentence,
        Evidence {
            section: "retransmits",
            count: r.total,
            unit: "segments",
            reasons,
            locations: Vec::new(),
            subjects: r.top_flows.iter().map(|f| f.flow.clone()).collect(),
            p90_ms: None,
        },
        1,
    ))
}

/// The kinds of answer latency: (what it answers, the answerer's kind, the asker's kind).
const ANSWERS: [(&str, LatencyKind, LatencyKind); 2] = [
    ("SYNs", LatencyKind::TcpAccept, LatencyKind::TcpConnect),
    ("pings", LatencyKind::IcmpAnswer, LatencyKind::IcmpEcho),
];

/// Slow answers. A slow answer is named once: at the workload that answers slowly when it is
/// traced (its clients' waits are that same problem); at a client only when no traced
/// workload answers that kind slowly.
fn latency(
    w: &WorkloadSummary,
    t: &Thresholds,
    slow_answerers: &BTreeSet<usize>,
) -> Option<Problem> {
    let l = w.latency.as_ref()?;
    let mut answers = Vec::new();
    let mut waits = Vec::new();
    let mut worst: f64 = 0.0;
    let mut samples = 0;
    for (i, (what, answer, ask)) in ANSWERS.iter().enumerate() {
        if let Some((p, n)) = p90(l, *answer).filter(|(p, _)| *p > t.slow_answer_ms) {
            answers.push(format!("{what} in {}", ms(p)));
            worst = worst.max(p);
            samples += n;
        } else if !slow_answerers.contains(&i)
            && let Some((p, n)) = p90(l, *ask).filter(|(p, _)| *p > t.slow_answer_ms)
        {
            waits.push(format!(
                "{} for {}",
                ms(p),
                if i == 0 { "SYN-ACKs" } else { "ping replies" }
            ));
            worst = worst.max(p);
            samples += n;
        }
    }
    if answers.is_empty() && waits.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !answers.is_empty() {
        parts.push(format!("answers {}", answers.join(" and ")));
    }
    if !waits.is_empty() {
        parts.push(format!("waits {}", waits.join(" and ")));
    }
    Some(problem(
        Kind::Latency,
        w,
        format!("{} (p90)", parts.join(", ")),
        Evidence {
            section: "latency",
            count: samples,
            unit: "answers",
            reasons: Vec::new(),
            locations: Vec::new(),
            subjects: Vec::new(),
            p90_ms: Some(worst),
        },
        1,
    ))
}

fn problem(
    kind: Kind,
    w: &WorkloadSummary,
    sentence: String,
    evidence: Evidence,
    tier: u8,
) -> Problem {
    Problem {
        kind,
        workload: w.name.clone(),
        netns: w.netns,
        sentence,
        evidence,
        tier,
    }
}

/// Every problem of the summary, worst first: traffic that fails (dropped, unanswered) before
/// traffic that is degraded (retransmitted, slow); then the most packets, segments or queries
/// affected; then by workload and kind, so the order is stable.
pub fn find(s: &Summary, t: &Thresholds) -> Vec<Problem> {
    // Which kinds of answer some traced workload gives slowly (see `latency`).
    let slow_answerers: BTreeSet<usize> = ANSWERS
        .iter()
        .enumerate()
        .filter(|(_, (_, answer, _))| {
            s.workloads.iter().any(|w| {
                w.latency
                    .as_ref()
                    .and_then(|l| p90(l, *answer))
                    .is_some_and(|(p, _)| p > t.slow_answer_ms)
            })
        })
        .map(|(i, _)| i)
        .collect();
    let dns_askers = s.workloads.iter().any(|w| {
        w.latency
            .as_ref()
            .is_some_and(|l| l.dns.responses + l.dns.unanswered > 0 && !dns_server(l))
    });
    let mut out: Vec<Problem> = Vec::new();
    for w in &s.workloads {
        out.extend(firewall(w));
        out.extend(routing(w));
        out.extend(mtu(w));
        out.extend(arp(w));
        out.extend(dns(w, t, dns_askers));
        out.extend(refused(w));
        out.extend(other_drops(w));
        out.extend(lossy(w, t));
        out.extend(latency(w, t, &slow_answerers));
    }
    out.sort_by(|a, b| {
        a.tier
            .cmp(&b.tier)
            .then(b.evidence.count.cmp(&a.evidence.count))
            .then(a.workload.cmp(&b.workload))
            .then(a.kind.cmp(&b.kind))
    });
    out
}

/// Whether a workload is named by any problem.
pub fn names(problems: &[Problem], w: &WorkloadSummary) -> bool {
    problems
        .iter()
        .any(|p| p.netns == w.netns && p.workload == w.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collect::latency::new_histogram,
        report::{
            Counts, DnsFailure, DropSummary, FlowCount, InterfaceSummary, LatencyDistribution,
            LocationCount, NeighbourFailure, NeighbourLookup, NeighbourSummary, ProtocolCounts,
            ReasonCount, RetransmitFlow, RetransmitSummary,
        },
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
            retransmits: Some(RetransmitSummary::default()),
            neighbours: Some(NeighbourSummary::default()),
            latency: None,
            connections: None,
        }
    }

    fn summary(workloads: Vec<WorkloadSummary>) -> Summary {
        let mut s = Summary {
            kind: "summary",
            duration_s: 1.0,
            kernel: "6.18".into(),
            probes: vec![],
            all_namespaces: false,
            health: Default::default(),
            problems: vec![],
            thresholds: Default::default(),
            notes: vec![],
            pairing: Default::default(),
            waiting: Default::default(),
            workloads,
        };
        s.find_problems(Thresholds::default());
        s
    }

    fn reason(reason: &str, locations: &[(&str, u64)]) -> ReasonCount {
        ReasonCount {
            reason: reason.into(),
            code: 0,
            count: locations.iter().map(|l| l.1).sum(),
            locations: locations
                .iter()
                .map(|(l, n)| LocationCount {
                    location: l.to_string(),
                    address: "0x0".into(),
                    count: *n,
                })
                .collect(),
        }
    }

    fn drops(w: &mut WorkloadSummary, reasons: Vec<ReasonCount>, flows: &[(&str, &str, u64)]) {
        w.drops = DropSummary {
            total: reasons.iter().map(|r| r.count).sum(),
            by_reason: reasons,
            top_flows: flows
                .iter()
                .map(|(f, r, n)| FlowCount {
                    flow: f.to_string(),
                    reason: r.to_string(),
                    count: *n,
                })
                .collect(),
            rules: None,
        };
    }

    /// A latency distribution whose every sample took `ms`.
    fn took(kind: LatencyKind, ms: u64, n: u64) -> LatencyDistribution {
        let mut h = new_histogram();
        for _ in 0..n {
            let _ = h.record(ms * 1_000_000);
        }
        LatencyDistribution::new(kind, h)
    }

    fn lines(s: &Summary) -> Vec<String> {
        s.problems
            .iter()
            .map(|p| format!("{} {} {}", p.kind.name(), p.workload, p.sentence))
            .collect()
    }

    #[test]
    fn packets_too_big_for_the_path_are_an_mtu_problem_not_other_drops() {
        let mut router = workload("router", 7);
        drops(
            &mut router,
            vec![reason("PKT_TOO_BIG", &[("ip_forward+0x1d4", 12)])],
            &[(
                "icmp 10.242.0.2 -> 10.242.1.2 type 8 code 0",
                "PKT_TOO_BIG",
                12,
            )],
        );
        let s = summary(vec![router]);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        let p = &s.problems[0];
        assert_eq!((p.kind, p.evidence.count), (Kind::Mtu, 12));
        assert_eq!(
            p.sentence,
            "12 packets too big for the next hop's MTU, ICMP to 10.242.1.2 (PKT_TOO_BIG, ip_forward)"
        );
    }

    #[test]
    fn a_healthy_summary_has_no_problems() {
        let mut quiet = workload("quiet", 1);
        quiet.latency = Some(LatencySummary {
            distributions: vec![
                took(LatencyKind::TcpAccept, 1, 20),
                took(LatencyKind::Dns, 2, 20),
            ],
            ..Default::default()
        });
        quiet.retransmits = Some(RetransmitSummary {
            total: 3,
            top_flows: vec![],
        });
        let s = summary(vec![quiet]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let table = super::super::table::render(&s, false);
        assert!(table.starts_with("no problems found\n"), "{table}");
        assert!(
            table.contains("\n== quiet  (netns 1)  no problems\n"),
            "{table}"
        );
    }

    #[test]
    fn firewall_and_routing_drops_are_named_with_reason_and_place() {
        let mut fw = workload("ntlab-1-firewall", 1);
        drops(
            &mut fw,
            vec![reason("NETFILTER_DROP", &[("nft_do_chain+0x1f", 81)])],
            &[(
                "udp 10.231.0.11:* -> 10.231.0.12:7777",
                "NETFILTER_DROP",
                81,
            )],
        );
        let mut router = workload("ntlab-1-router", 2);
        drops(
            &mut router,
            vec![reason("IP_INNOROUTES", &[("ip_error+0x5a", 27)])],
            &[("udp 10.231.0.19:* -> 10.99.0.1:9", "IP_INNOROUTES", 27)],
        );
        let s = summary(vec![router, fw]);
        assert_eq!(
            lines(&s),
            [
                "firewall ntlab-1-firewall 81 UDP packets to 10.231.0.12:7777 dropped by netfilter \
                 (NETFILTER_DROP, nft_do_chain)",
                "routing ntlab-1-router no route to 10.99.0.1 (IP_INNOROUTES, ip_error, 27 packets)",
            ]
        );
        let e = &s.problems[0].evidence;
        assert_eq!((e.section, e.count, e.unit), ("drops", 81, "packets"));
        assert_eq!(e.reasons, ["NETFILTER_DROP"]);
    }

    #[test]
    fn packets_to_closed_ports_are_refused_naming_the_ports() {
        let mut sink = workload("ntlab-1-sink", 3);
        drops(
            &mut sink,
            vec![reason(
                "NO_SOCKET",
                &[("tcp_v4_rcv+0x12", 21), ("__udp4_lib_rcv+0x3", 2)],
            )],
            &[
                ("tcp 10.231.0.11:* -> 10.231.0.10:8080", "NO_SOCKET", 21),
                ("udp 10.231.0.11:* -> 10.231.0.10:53", "NO_SOCKET", 2),
            ],
        );
        let s = summary(vec![sink]);
        assert_eq!(
            lines(&s),
            [
                "refused ntlab-1-sink nothing listens on TCP 10.231.0.10:8080 and UDP \
              10.231.0.10:53: 23 packets refused (NO_SOCKET, tcp_v4_rcv, __udp4_lib_rcv)"
            ]
        );
        assert_eq!(s.problems[0].evidence.count, 23);
    }

    #[test]
    fn without_reason_names_the_freeing_function_tells_drops_apart() {
        let mut w = workload("old", 1);
        drops(
            &mut w,
            vec![reason(
                NO_REASON,
                &[
                    ("nf_hook_slow+0x93", 10),
                    ("ip_error+0x1", 4),
                    ("tcp_v4_rcv+0x8", 2),
                ],
            )],
            &[],
        );
        let s = summary(vec![w]);
        assert_eq!(
            lines(&s),
            [
                "firewall old 10 packets dropped by netfilter (UNAVAILABLE, nf_hook_slow)",
                "routing old no route (UNAVAILABLE, ip_error, 4 packets)",
                "drops old 2 packets dropped (UNAVAILABLE, tcp_v4_rcv)",
            ]
        );
    }

    #[test]
    fn a_neighbour_that_never_answers() {
        let mut w = workload("arp", 1);
        drops(
            &mut w,
            vec![reason("NEIGH_FAILED", &[("neigh_invalidate+0x8", 8)])],
            &[],
        );
        w.neighbours = Some(NeighbourSummary {
            total_failures: 8,
            failures_elsewhere: 0,
            failures: vec![NeighbourFailure {
                address: "10.231.0.99".into(),
                protocol: "arp",
                device: "eth0".into(),
                ifindex: 2,
                failures: 8,
            }],
            unanswered: vec![NeighbourLookup {
                address: "10.231.0.99".into(),
                protocol: "arp",
                requests: 27,
                replies: 0,
            }],
        });
        let s = summary(vec![w]);
        assert_eq!(
            lines(&s),
            [
                "arp arp 10.231.0.99 never answered ARP (8 FAILED, 27 requests, 8 packets dropped waiting)"
            ]
        );
        assert_eq!(s.problems[0].evidence.section, "neighbours");
    }

    #[test]
    fn dns_errors_unanswered_and_slow_answers_are_one_line() {
        let mut w = workload("dns", 1);
        let mut l = LatencySummary {
            distributions: vec![took(LatencyKind::Dns, 200, 20)],
            ..Default::default()
        };
        l.dns.rcodes = [("NOERROR".to_string(), 20), ("SERVFAIL".to_string(), 14)].into();
        l.dns.responses = 34;
        l.dns.failures = vec![DnsFailure {
            name: "db.lab".into(),
            rcode: "SERVFAIL".into(),
            count: 14,
        }];
        l.dns.unanswered = 13;
        l.dns.unanswered_by_name = [("lost.lab A".to_string(), 13)].into();
        w.latency = Some(l);
        let s = summary(vec![w]);
        assert_eq!(
            lines(&s),
            [
                "dns dns SERVFAIL for db.lab (14), no answer for lost.lab (13), answers take \
                 200 ms (p90)"
            ]
        );
        let e = &s.problems[0].evidence;
        assert_eq!((e.count, e.unit), (27, "queries"));
        assert!(e.p90_ms.is_some_and(|p| (p - 200.0).abs() < 1.0), "{e:?}");
        assert_eq!(e.subjects, ["db.lab", "lost.lab"]);
    }

    #[test]
    fn a_failing_dns_server_is_named_only_when_nobody_asking_is_traced() {
        let mut server = workload("dns-fail", 1);
        let mut l = LatencySummary {
            distributions: vec![took(LatencyKind::DnsServed, 1, 11)],
            ..Default::default()
        };
        l.dns.rcodes = [("SERVFAIL".to_string(), 11)].into();
        l.dns.responses = 11;
        l.dns.failures = vec![DnsFailure {
            name: "db.lab".into(),
            rcode: "SERVFAIL".into(),
            count: 11,
        }];
        server.latency = Some(l.clone());
        let s = summary(vec![server.clone()]);
        assert_eq!(lines(&s), ["dns dns-fail answers SERVFAIL for db.lab (11)"]);
        let mut client = workload("app", 2);
        l.distributions = vec![took(LatencyKind::Dns, 1, 11)];
        client.latency = Some(l);
        let s = summary(vec![server, client]);
        assert_eq!(lines(&s), ["dns app SERVFAIL for db.lab (11)"]);
    }

    fn lossy_workload(retransmits: u64, tcp_sent: u64) -> WorkloadSummary {
        let mut w = workload("lossy", 1);
        w.retransmits = Some(RetransmitSummary {
            total: retransmits,
            top_flows: vec![RetransmitFlow {
                flow: "tcp 10.231.0.13:40000 -> 10.231.0.21:8080".into(),
                segments: retransmits,
                states: [("ESTABLISHED", retransmits)].into(),
            }],
        });
        w.interfaces = vec![InterfaceSummary {
            name: "veth".into(),
            ifindex: 3,
            peer: None,
            bridge: None,
            attached: Some("tcx"),
            received: Counts::default(),
            sent: Counts {
                packets: tcp_sent,
                bytes: 0,
            },
            by_protocol: vec![ProtocolCounts {
                direction: "sent",
                protocol: "ipv4/tcp".into(),
                packets: tcp_sent,
                bytes: 0,
            }],
            unanswered: vec![],
            too_big: vec![],
        }];
        w
    }

    #[test]
    fn lossy_needs_both_a_share_and_a_count() {
        // 1931 of 19310: 10 %.
        let s = summary(vec![lossy_workload(1931, 19310)]);
        assert_eq!(
            lines(&s),
            [
                "lossy lossy 1931 TCP segments retransmitted to 10.231.0.21:8080 (ESTABLISHED \
                 1931), 10.0 % of the TCP segments it sent"
            ]
        );
        // 50 of 10000: 0.5 %, ordinary.
        assert!(summary(vec![lossy_workload(50, 10000)]).problems.is_empty());
        // 9 of 20: a lot, but few.
        assert!(summary(vec![lossy_workload(9, 20)]).problems.is_empty());
        // The thresholds are the user's.
        let mut s = summary(vec![lossy_workload(50, 10000)]);
        s.find_problems(Thresholds {
            lossy_percent: 0.4,
            ..Default::default()
        });
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.thresholds.lossy_percent, 0.4);
    }

    #[test]
    fn a_slow_answer_is_named_once_at_the_answerer() {
        let mut slow = workload("slow", 1);
        slow.latency = Some(LatencySummary {
            distributions: vec![
                took(LatencyKind::TcpAccept, 50, 20),
                took(LatencyKind::IcmpAnswer, 50, 20),
            ],
            ..Default::default()
        });
        let mut client = workload("client", 2);
        client.latency = Some(LatencySummary {
            distributions: vec![
                took(LatencyKind::TcpConnect, 50, 20),
                took(LatencyKind::IcmpEcho, 50, 20),
            ],
            ..Default::default()
        });
        let s = summary(vec![slow, client.clone()]);
        assert_eq!(
            lines(&s),
            ["latency slow answers SYNs in 50 ms and pings in 50 ms (p90)"]
        );
        // Without the answerer traced, the client's wait is the problem.
        let s = summary(vec![client]);
        assert_eq!(
            lines(&s),
            ["latency client waits 50 ms for SYN-ACKs and 50 ms for ping replies (p90)"]
        );
        let mut s = summary(vec![]);
        s.find_problems(Thresholds {
            slow_answer_ms: 60.0,
            ..Default::default()
        });
        assert!(s.problems.is_empty());
    }

    #[test]
    fn failures_come_before_degradations_then_the_most_affected() {
        let mut a = workload("a", 1);
        drops(
            &mut a,
            vec![reason("TCP_CSUM", &[("tcp_v4_rcv+0x1", 3)])],
            &[],
        );
        let b = lossy_workload(5000, 10000);
        let mut c = workload("c", 3);
        drops(
            &mut c,
            vec![reason("NETFILTER_DROP", &[("nf_hook_slow+0x1", 30)])],
            &[],
        );
        let s = summary(vec![b, a, c]);
        let kinds: Vec<&str> = s.problems.iter().map(|p| p.kind.name()).collect();
        assert_eq!(kinds, ["firewall", "drops", "lossy"]);
        // The table leads with them, in that order, and JSON has the same.
        let table = super::super::table::render(&s, false);
        let head: Vec<&str> = table.lines().take(4).collect();
        assert_eq!(head[0], "problems (3):");
        for (line, p) in head[1..].iter().zip(&s.problems) {
            assert!(
                line.starts_with(&format!("  {:<8}  ", p.kind.name())),
                "{line}"
            );
            assert!(line.ends_with(&p.sentence), "{line}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&super::super::json::summary(&s)).unwrap_or_default();
        assert_eq!(json["problems"][0]["kind"], "firewall");
        assert_eq!(json["problems"][0]["workload"], "c");
        assert_eq!(json["problems"][0]["evidence"]["count"], 30);
        assert_eq!(json["problems"][2]["evidence"]["section"], "retransmits");
        assert_eq!(json["thresholds"]["lossy_min_segments"], 10);
    }

    #[test]
    fn names_from_outside_are_escaped_in_the_table() {
        let mut w = workload("evil\x1b[2J\nname", 1);
        drops(
            &mut w,
            vec![reason("NETFILTER_DROP", &[("nf_hook_slow+0x1", 3)])],
            &[],
        );
        let mut l = LatencySummary::default();
        l.dns.rcodes = [("NXDOMAIN".to_string(), 2)].into();
        l.dns.failures = vec![DnsFailure {
            name: "x\u{202e}\n== forged".into(),
            rcode: "NXDOMAIN".into(),
            count: 2,
        }];
        w.latency = Some(l);
        let s = summary(vec![w]);
        let table = super::super::table::render(&s, false);
        crate::report::hostile_tests::assert_terminal_safe("problems", &table);
        assert!(
            !table.lines().any(|l| l.starts_with("== forged")),
            "{table}"
        );
        assert!(table.contains("evil\\x1b[2J\\nname"), "{table}");
    }
}

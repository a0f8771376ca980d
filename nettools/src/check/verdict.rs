//! From what the kernel reported about the probes' packets to one verdict with its evidence,
//! and how it is printed (a table for people, one JSON object).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::Serialize;

use super::probes::{ProbeResult, Route};
use crate::{
    cli::CheckProto,
    collect::rules::{Grown, Rule},
    report::text::Safe,
    units::humantime,
};

/// What the kernel did, in the terms a verdict needs (names already resolved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Drops of the probes' packets: (namespace name, netns, reason, location) → packets.
    pub drops: BTreeMap<DropKey, u64>,
    /// Resets sent about the probes' flows: namespace name, netns → resets.
    pub resets_sent: BTreeMap<(String, u32), u64>,
    /// The resets were seen as RSTs on the answering side's veth (the kernel's tcp_send_reset
    /// reported none).
    pub resets_from_veth: bool,
    /// Neighbour entries that failed: (namespace name, netns, device, address) → failures.
    pub neighbours: BTreeMap<(String, u32, String, IpAddr), u64>,
    /// ARP/NDP requests seen on the wire for an address (any interface).
    pub neighbour_requests: BTreeMap<IpAddr, u64>,
    /// Rules whose counter grew, per namespace name.
    pub rules: BTreeMap<String, Vec<Grown>>,
    /// Rules that drop without counting, per namespace name (read after the probes).
    pub uncounted: BTreeMap<String, Vec<Rule>>,
    /// The namespaces that own the addresses ICMP errors came from.
    pub owners: BTreeMap<IpAddr, String>,
}

/// A drop, named: (namespace name, netns, reason, location).
pub type DropKey = (String, u32, String, String);

/// One piece of evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// `drop`, `rule`, `reset`, `neighbour`, `errno`, `route`, `dns`, `note`.
    pub kind: &'static str,
    /// The namespace it happened in (its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// The kernel's drop reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where in the kernel (function+offset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Packets, resets, failures or requests, by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `rule`: the rule and its counter's growth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Grown>,
    /// For `neighbour`: the device and address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// For `errno`: what the source's socket got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The same as a sentence.
    pub text: String,
}

impl Evidence {
    /// A remark about the evidence itself (kind `note`).
    pub fn note(text: String) -> Self {
        Self::new("note", text)
    }

    fn new(kind: &'static str, text: String) -> Self {
        Self {
            kind,
            namespace: None,
            netns: None,
            reason: None,
            location: None,
            count: None,
            rule: None,
            device: None,
            address: None,
            error: None,
            text,
        }
    }
}

/// One hop of the path the probes took, as far as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub namespace: String,
    pub what: String,
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// `ok`, `dns_failure`, `firewall`, `rejected`, `refused`, `no_route`,
    /// `neighbour_unreachable`, `dropped`, `timeout`.
    pub verdict: &'static str,
    /// The verdict as one sentence.
    pub summary: String,
    pub source: String,
    pub destination: String,
    pub protocol: CheckProto,
    /// Latency over the answered probes, in milliseconds (`ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    pub evidence: Vec<Evidence>,
    pub probes: Vec<ProbeResult>,
    pub path: Vec<Hop>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub max: f64,
}

impl Verdict {
    /// Whether the exit status is 0.
    pub fn ok(&self) -> bool {
        self.verdict == "ok"
    }
}

/// What the check was about.
pub struct Question<'a> {
    pub source: &'a str,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub proto: CheckProto,
    pub route: &'a Route,
    /// `--size`: the probes' packet size, with Don't Fragment.
    pub size: Option<u32>,
}

impl Question<'_> {
    fn destination(&self) -> String {
        match (self.port, self.dst) {
            (Some(p), IpAddr::V6(a)) => format!("[{a}]:{p}"),
            (Some(p), a) => format!("{a}:{p}"),
            (None, a) => a.to_string(),
        }
    }
}

/// Decides the verdict: an answer is `ok`; else, in this order, a REJECT rule that answered
/// (it drops the packet too), a firewall drop, a reset, a missing route, an unanswered
/// neighbour, another drop; with none of them, `timeout`.
pub fn decide(q: &Question, probes: Vec<ProbeResult>, seen: &Seen) -> Verdict {
    let mut evidence = Vec::new();
    let mut path = vec![Hop {
        namespace: q.source.to_string(),
        what: route_text(q.route),
    }];
    let errors: BTreeMap<String, u64> =
        probes
            .iter()
            .filter_map(|p| p.error.clone())
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e).or_default() += 1;
                m
            });
    let answered: Vec<f64> = probes
        .iter()
        .filter(|p| p.outcome == "answered")
        .map(|p| p.ms)
        .collect();
    let dest = q.destination();
    let proto = proto_name(q.proto, q.dst);
    // Most packets first: the first names the verdict.
    let drops_with = |pred: &dyn Fn(&str) -> bool| -> Vec<(&DropKey, u64)> {
        let mut list: Vec<(&DropKey, u64)> = seen
            .drops
            .iter()
            .filter(|((_, _, reason, location), _)| pred(class(reason, location)))
            .map(|(k, v)| (k, *v))
            .collect();
        list.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        list
    };
    let drop_evidence = |evidence: &mut Vec<Evidence>,
                         path: &mut Vec<Hop>,
                         list: &[(&DropKey, u64)]| {
        for ((ns, netns, reason, location), n) in list {
            let mut e = Evidence::new(
                "drop",
                format!(
                    "{n} {proto} packet(s) to or from {dest} dropped in {} ({reason} at {location})",
                    Safe(ns)
                ),
            );
            e.namespace = Some(ns.clone());
            e.netns = Some(*netns);
            e.reason = Some(reason.clone());
            e.location = Some(location.clone());
            e.count = Some(*n);
            evidence.push(e);
            if !path.iter().any(|h| &h.namespace == ns) {
                path.push(Hop {
                    namespace: ns.clone(),
                    what: format!("dropped here ({reason})"),
                });
            }
        }
    };
    for (error, n) in &errors {
        let mut e = Evidence::new(
            "errno",
            format!("{n} of {} probe(s) got {error} in the source", probes.len()),
        );
        e.namespace = Some(q.source.to_string());
        e.error = Some(error.clone());
        e.count = Some(*n);
        evidence.push(e);
    }

    let firewall = drops_with(&|r| r == "NETFILTER_DROP");
    let (verdict, summary) = if !answered.is_empty() {
        let latency = latency(&answered);
        let summary = format!(
            "{dest} answered {} of {} {proto} probe(s) from {}: {} p50, {} max",
            answered.len(),
            probes.len(),
            Safe(q.source),
            ms_text(latency.p50),
            ms_text(latency.max)
        );
        return Verdict {
            verdict: "ok",
            summary,
            source: q.source.to_string(),
            destination: dest,
            protocol: q.proto,
            latency_ms: Some(latency),
            evidence,
            probes,
            path,
        };
    } else if let Some(mtu) = too_big(&probes, &drops_with(&|r| r == "PKT_TOO_BIG")) {
        let owner = |a: IpAddr| {
            seen.owners
                .get(&a)
                .map_or_else(|| a.to_string(), |ns| format!("{} ({a})", Safe(ns)))
        };
        let size = q
            .size
            .map_or_else(|| "these".to_string(), |s| format!("{s}-byte"));
        let mut e = Evidence::new("mtu", String::new());
        e.count = Some(mtu.probes);
        e.address = mtu.from;
        e.namespace = mtu.from.and_then(|a| seen.owners.get(&a).cloned());
        let summary = match (mtu.from, mtu.mtu) {
            (Some(from), Some(m)) => {
                e.text = format!(
                    "{} of {} probe(s) got \"fragmentation needed\" / \"packet too big\" from {}: \
                     MTU {m}",
                    mtu.probes,
                    probes.len(),
                    owner(from)
                );
                path.push(Hop {
                    namespace: e.namespace.clone().unwrap_or_else(|| from.to_string()),
                    what: format!("MTU {m}: too big here"),
                });
                format!(
                    "{size} packets do not fit the path to {dest}: {} passes at most {m} bytes \
                     with Don't Fragment",
                    owner(from)
                )
            }
            _ if mtu.local => {
                e.text = format!(
                    "{} of {} probe(s) got EMSGSIZE in the source: its own route's MTU is smaller",
                    mtu.probes,
                    probes.len()
                );
                format!(
                    "{size} packets do not fit the source's own route to {dest} (EMSGSIZE in {})",
                    Safe(q.source)
                )
            }
            _ => {
                e.text = "packets too big for the path were dropped (PKT_TOO_BIG)".to_string();
                format!("{size} packets to {dest} were dropped as too big for the path")
            }
        };
        evidence.insert(0, e);
        drop_evidence(&mut evidence, &mut path, &mtu.drops);
        ("mtu", summary)
    } else if let Some((ns, g)) = seen
        .rules
        .iter()
        .flat_map(|(ns, rules)| rules.iter().map(move |g| (ns, g)))
        .find(|(_, g)| g.rule.rejects)
        .filter(|_| probes.iter().any(|p| p.outcome != "timeout"))
    {
        evidence.push(rule_evidence(ns, g));
        path.push(Hop {
            namespace: ns.clone(),
            what: "rejected here".to_string(),
        });
        drop_evidence(&mut evidence, &mut path, &firewall);
        (
            "rejected",
            format!(
                "a REJECT rule in {} answered {} packet(s) to {dest}: {}: {}",
                Safe(ns),
                g.delta,
                Safe(&g.rule.place()),
                Safe(&g.rule.text)
            ),
        )
    } else if !firewall.is_empty() {
        drop_evidence(&mut evidence, &mut path, &firewall);
        let ((ns, _, reason, location), n) = firewall[0];
        let mut summary = format!(
            "a firewall in {} dropped {n} {proto} packet(s) to or from {dest} ({reason} at {location})",
            Safe(ns)
        );
        if let Some(rules) = seen.rules.get(ns)
            && let Some(first) = rules.iter().find(|g| g.rule.drops).or(rules.first())
        {
            let _ = write!(
                summary,
                "; rule: {}: {} (+{} packets)",
                Safe(&first.rule.place()),
                Safe(&first.rule.text),
                first.delta
            );
        } else if let Some(first) = seen.uncounted.get(ns).and_then(|r| r.first()) {
            let _ = write!(
                summary,
                "; no rule counted them, this one drops without a counter: {}: {}",
                Safe(&first.place()),
                Safe(&first.text),
            );
        }
        for (ns, rules) in &seen.rules {
            if !firewall.iter().any(|((n, ..), _)| n == ns) {
                continue;
            }
            evidence.extend(rules.iter().map(|g| rule_evidence(ns, g)));
        }
        // Where no counted rule that drops grew, the rules that drop without counting.
        for (ns, rules) in &seen.uncounted {
            let counted = seen
                .rules
                .get(ns)
                .is_some_and(|g| g.iter().any(|g| g.rule.drops));
            if counted || !firewall.iter().any(|((n, ..), _)| n == ns) {
                continue;
            }
            evidence.extend(rules.iter().map(|r| uncounted_evidence(ns, r)));
        }
        ("firewall", summary)
    } else if !seen.resets_sent.is_empty() || errors.keys().any(|e| e == "ECONNREFUSED") {
        let mut who = Vec::new();
        for ((ns, netns), n) in &seen.resets_sent {
            let how = if seen.resets_from_veth {
                " (RSTs seen on its veth: this kernel's tcp:tcp_send_reset reported none)"
            } else {
                ""
            };
            let mut e = Evidence::new(
                "reset",
                format!("{} answered {n} time(s) with a TCP reset{how}", Safe(ns)),
            );
            e.namespace = Some(ns.clone());
            e.netns = Some(*netns);
            e.count = Some(*n);
            evidence.push(e);
            who.push(Safe(ns).to_string());
            path.push(Hop {
                namespace: ns.clone(),
                what: "answered with a reset".to_string(),
            });
        }
        // The kernel that found no socket for them (UDP's answer is an ICMP port unreachable).
        let no_socket = drops_with(&|r| r == "NO_SOCKET");
        drop_evidence(&mut evidence, &mut path, &no_socket);
        for ((ns, ..), _) in &no_socket {
            let name = Safe(ns).to_string();
            if !who.contains(&name) {
                who.push(name);
            }
        }
        let by = if who.is_empty() {
            String::new()
        } else {
            format!(" (answered by {})", who.join(", "))
        };
        let what = match q.port {
            Some(p) => format!("nothing listens on {proto} port {p} at {}", q.dst),
            None => format!("{} refused", q.dst),
        };
        ("refused", format!("{what}{by}"))
    } else if let Some(list) = Some(drops_with(&|r| {
        r == "IP_INNOROUTES" || r == "IP_OUTNOROUTES"
    }))
    .filter(|l| !l.is_empty())
    {
        drop_evidence(&mut evidence, &mut path, &list);
        let ((ns, _, reason, _), n) = list[0];
        (
            "no_route",
            format!(
                "{} has no route to {} ({reason}, {n} packet(s) dropped)",
                Safe(ns),
                q.dst
            ),
        )
    } else if errors.keys().any(|e| e == "ENETUNREACH") {
        (
            "no_route",
            format!(
                "{} has no route to {} (its sockets get ENETUNREACH)",
                Safe(q.source),
                q.dst
            ),
        )
    } else if !seen.neighbours.is_empty() || !drops_with(&|r| r == "NEIGH_FAILED").is_empty() {
        let list = drops_with(&|r| r == "NEIGH_FAILED");
        drop_evidence(&mut evidence, &mut path, &list);
        let mut summary = String::new();
        for ((ns, netns, device, address), n) in &seen.neighbours {
            let requests = seen.neighbour_requests.get(address).copied();
            let mut e = Evidence::new(
                "neighbour",
                format!(
                    "{}: {address} on {} never answered {} ({n} failure(s){})",
                    Safe(ns),
                    Safe(device),
                    if address.is_ipv4() { "ARP" } else { "NDP" },
                    requests.map_or(String::new(), |r| format!(", {r} request(s) on the wire"))
                ),
            );
            e.namespace = Some(ns.clone());
            e.netns = Some(*netns);
            e.device = Some(device.clone());
            e.address = Some(*address);
            e.count = Some(*n);
            if summary.is_empty() {
                summary = format!(
                    "{address} on {} in {} never answered {}{}",
                    Safe(device),
                    Safe(ns),
                    if address.is_ipv4() { "ARP" } else { "NDP" },
                    requests.map_or(String::new(), |r| format!(" ({r} request(s))"))
                );
            }
            evidence.push(e);
        }
        if summary.is_empty() {
            let ((ns, ..), n) = list[0];
            summary = format!(
                "{n} packet(s) to {} waited in {} for a neighbour that never answered (NEIGH_FAILED)",
                q.dst,
                Safe(ns)
            );
        }
        ("neighbour_unreachable", summary)
    } else if let Some(list) = Some(drops_with(&|_| true)).filter(|l| !l.is_empty()) {
        drop_evidence(&mut evidence, &mut path, &list);
        let ((ns, _, reason, location), n) = list[0];
        (
            "dropped",
            format!(
                "{} dropped {n} {proto} packet(s) to or from {dest} ({reason} at {location})",
                Safe(ns)
            ),
        )
    } else if errors
        .keys()
        .any(|e| e == "EHOSTUNREACH" || e.starts_with("ICMP"))
    {
        let what: Vec<&str> = errors.keys().map(String::as_str).collect();
        (
            "no_route",
            format!(
                "{} is unreachable from {} ({}), and nothing on this node dropped the probes: an \
                 ICMP error came from beyond it",
                q.dst,
                Safe(q.source),
                what.join(", ")
            ),
        )
    } else {
        let mut e = Evidence::new(
            "route",
            format!(
                "nothing on this node dropped or refused the probes; they left {} {}",
                Safe(q.source),
                route_text(q.route)
            ),
        );
        e.namespace = Some(q.source.to_string());
        e.device = q.route.interface.clone();
        e.address = q.route.via;
        evidence.push(e);
        (
            "timeout",
            format!(
                "no answer from {dest} in {} and nothing dropped on this node: the probes left \
                 {} {}; the problem is beyond this node",
                probes.first().map_or_else(String::new, |p| humantime(
                    std::time::Duration::from_secs_f64((p.ms / 1e3).max(0.0))
                )),
                Safe(q.source),
                route_text(q.route)
            ),
        )
    };
    Verdict {
        verdict,
        summary,
        source: q.source.to_string(),
        destination: dest,
        protocol: q.proto,
        latency_ms: None,
        evidence,
        probes,
        path,
    }
}

/// A rule whose counter grew during the check, in namespace `ns`.
fn rule_evidence(ns: &str, g: &Grown) -> Evidence {
    let mut e = Evidence::new(
        "rule",
        format!(
            "{} {} rule {}: {} counted {} packet(s) during the check",
            Safe(ns),
            Safe(&with_backend(&g.rule)),
            g.rule.position,
            Safe(&g.rule.text),
            g.delta
        ),
    );
    e.namespace = Some(ns.to_string());
    e.count = Some(g.delta);
    e.rule = Some(g.clone());
    e
}

/// `nf_tables ipv4 table filter, chain INPUT` (iptables), `nftables inet table fw, …` (native).
fn with_backend(r: &Rule) -> String {
    if r.handle.is_some() {
        r.place()
    } else {
        format!("{} {}", r.backend, r.place())
    }
}

/// A rule in namespace `ns` that drops without counting (no nftables `counter`): it may have
/// dropped the probes, nobody can tell how many.
fn uncounted_evidence(ns: &str, r: &Rule) -> Evidence {
    let mut e = Evidence::new(
        "rule",
        format!(
            "{} {}: {} (a rule that drops without a counter: add `counter` to it to see its count)",
            Safe(ns),
            Safe(&with_backend(r)),
            Safe(&r.text),
        ),
    );
    e.namespace = Some(ns.to_string());
    e.rule = Some(Grown {
        rule: r.clone(),
        delta: 0,
    });
    e
}

/// The drop reason a verdict goes by: the kernel's, or on kernels without reasons (before
/// 5.17, `UNAVAILABLE`) the one the freeing function stands for.
fn class<'a>(reason: &'a str, location: &str) -> &'a str {
    if reason != "UNAVAILABLE" {
        return reason;
    }
    let function = location.split('+').next().unwrap_or("");
    let is = |prefixes: &[&str]| prefixes.iter().any(|p| function.starts_with(p));
    if is(&["nf_hook", "nft_do_chain", "ipt_do_table", "ip6t_do_table"]) {
        "NETFILTER_DROP"
    } else if is(&["ip_error", "ip6_pkt_drop"]) {
        "IP_INNOROUTES"
    } else if is(&["neigh_invalidate", "neigh_timer_handler"]) {
        "NEIGH_FAILED"
    } else if is(&["__udp4_lib_rcv", "__udp6_lib_rcv"]) {
        // UDP's receive path frees a datagram it found no socket for (after the ICMP port
        // unreachable); its only other drop there is a bad checksum.
        "NO_SOCKET"
    } else {
        reason
    }
}

fn proto_name(proto: CheckProto, dst: IpAddr) -> &'static str {
    match (proto, dst) {
        (CheckProto::Tcp, _) => "tcp",
        (CheckProto::Udp, _) => "udp",
        (CheckProto::Icmp, IpAddr::V4(_)) => "icmp",
        (CheckProto::Icmp, IpAddr::V6(_)) => "icmpv6",
        (CheckProto::Dns, _) => "dns",
    }
}

/// `through eth0 via 10.0.0.1`.
fn route_text(r: &Route) -> String {
    let mut s = match &r.interface {
        Some(i) => format!("through {}", Safe(i)),
        None => "with no route".to_string(),
    };
    if let Some(via) = r.via {
        let _ = write!(s, " via {via}");
    }
    s
}

/// What says the probes were too big for the path.
struct TooBig<'a> {
    /// Probes that got an ICMP "fragmentation needed"/"packet too big", or EMSGSIZE.
    probes: u64,
    /// Who sent the ICMP error, and the MTU it named (the first such probe's).
    from: Option<IpAddr>,
    mtu: Option<u32>,
    /// The source's own route refused them (EMSGSIZE).
    local: bool,
    drops: Vec<(&'a DropKey, u64)>,
}

fn too_big<'a>(probes: &[ProbeResult], drops: &[(&'a DropKey, u64)]) -> Option<TooBig<'a>> {
    let told: Vec<&ProbeResult> = probes.iter().filter(|p| p.mtu.is_some()).collect();
    let local = probes
        .iter()
        .filter(|p| p.error.as_deref() == Some("EMSGSIZE"))
        .count() as u64;
    if told.is_empty() && local == 0 && drops.is_empty() {
        return None;
    }
    Some(TooBig {
        probes: told.len() as u64 + local,
        from: told.first().and_then(|p| p.icmp_from),
        mtu: told.first().and_then(|p| p.mtu),
        local: local > 0,
        drops: drops.to_vec(),
    })
}

/// `--proto dns`: the verdict of the lookups. Answers are `ok`; an error rcode or a name
/// without address records is `dns_failure`, and so is no answer when nothing on this node
/// dropped the queries (the resolver got them, or they left the node); a drop, a missing route
/// or a refusal on the way stays that verdict: it is why the resolver did not answer.
pub fn dns(mut v: Verdict, name: &str, server: IpAddr, timeout: std::time::Duration) -> Verdict {
    let total = v.probes.len();
    let first = |outcome: &str| {
        v.probes
            .iter()
            .find(|p| p.outcome == outcome)
            .and_then(|p| p.dns.clone())
            .unwrap_or_default()
    };
    let failed = v.probes.iter().filter(|p| p.outcome == "dns_error").count();
    v.destination = format!("{name} (resolver {})", v.destination);
    if let Some(l) = v.latency_ms.filter(|_| v.verdict == "ok") {
        v.summary = format!(
            "{} (the resolver {server} answered {} of {total} lookups: {} p50, {} max)",
            Safe(&first("answered")),
            v.probes.iter().filter(|p| p.outcome == "answered").count(),
            ms_text(l.p50),
            ms_text(l.max)
        );
    } else if failed > 0 {
        let what = first("dns_error");
        v.verdict = "dns_failure";
        v.summary = format!(
            "the resolver {server} answered {} ({failed} of {total} lookups of {})",
            Safe(&what),
            Safe(name)
        );
        let mut e = Evidence::new("dns", format!("resolver {server}: {}", Safe(&what)));
        e.count = Some(failed as u64);
        e.address = Some(server);
        v.evidence.insert(0, e);
    } else if v.verdict == "timeout" {
        v.verdict = "dns_failure";
        v.summary = format!(
            "no answer from the resolver {server} within {} for {} ({total} lookups), and \
             nothing on this node dropped the queries",
            ms_text(timeout.as_secs_f64() * 1e3),
            Safe(name)
        );
        let mut e = Evidence::new("dns", format!("resolver {server}: no answer"));
        e.count = Some(total as u64);
        e.address = Some(server);
        v.evidence.insert(0, e);
    }
    v
}

/// A host name that did not resolve from the source, before any probe was sent:
/// `dns_failure`, naming the name asked last, the answer and the resolver.
pub fn unresolved(
    source: &str,
    proto: CheckProto,
    name: &str,
    asked: &str,
    answer: &str,
    server: Option<IpAddr>,
) -> Verdict {
    let by = server.map_or_else(|| "no resolver".to_string(), |s| format!("resolver {s}"));
    let mut e = Evidence::new("dns", format!("{}: {} ({by})", Safe(asked), Safe(answer)));
    e.address = server;
    e.namespace = Some(source.to_string());
    Verdict {
        verdict: "dns_failure",
        summary: format!(
            "{} does not resolve from {}: {}: {} ({by}); nothing was sent to it (`--proto dns` \
             traces the lookup itself)",
            Safe(name),
            Safe(source),
            Safe(asked),
            Safe(answer)
        ),
        source: source.to_string(),
        destination: name.to_string(),
        protocol: proto,
        latency_ms: None,
        evidence: vec![e],
        probes: Vec::new(),
        path: Vec::new(),
    }
}

/// The evidence of how the destination's name resolved (`check --to NAME`).
pub fn resolved(name: &str, asked: &str, answer: &str, server: IpAddr, ms: f64) -> Evidence {
    let mut e = Evidence::new(
        "dns",
        format!(
            "{} resolved as {}: {} (resolver {server}, {})",
            Safe(name),
            Safe(asked),
            Safe(answer),
            ms_text(ms)
        ),
    );
    e.address = Some(server);
    e
}

fn latency(ms: &[f64]) -> Latency {
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    Latency {
        p50: sorted[(sorted.len() - 1) / 2],
        max: sorted[sorted.len() - 1],
    }
}

fn ms_text(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// The table report.
pub fn render(v: &Verdict) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "check: {} -> {} {}, {} probe(s)",
        Safe(&v.source),
        v.destination,
        proto_label(v.protocol),
        v.probes.len()
    );
    let _ = writeln!(out, "verdict: {}  {}", v.verdict, v.summary);
    if !v.evidence.is_empty() {
        let _ = writeln!(out, "evidence:");
        for e in &v.evidence {
            let _ = writeln!(out, "  {:<9} {}", e.kind, e.text);
        }
    }
    if !v.probes.is_empty() {
        let _ = writeln!(out, "probes:");
    }
    for p in &v.probes {
        let line = format!(
            "  {:>3}  {:<11} {:>10}  {}",
            p.n,
            p.outcome,
            ms_text(p.ms),
            Safe(p.error.as_deref().or(p.dns.as_deref()).unwrap_or(""))
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !v.path.is_empty() {
        let _ = writeln!(out, "path:");
    }
    for h in &v.path {
        let _ = writeln!(out, "  {}  {}", Safe(&h.namespace), h.what);
    }
    out
}

fn proto_label(p: CheckProto) -> &'static str {
    match p {
        CheckProto::Tcp => "tcp",
        CheckProto::Udp => "udp",
        CheckProto::Icmp => "icmp",
        CheckProto::Dns => "dns",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(outcome: &'static str, error: Option<&str>, ms: f64) -> ProbeResult {
        ProbeResult {
            n: 1,
            outcome,
            error: error.map(str::to_string),
            ms,
            dns: None,
            icmp_from: None,
            mtu: None,
        }
    }

    #[test]
    fn dns_lookups_are_ok_a_failure_or_the_drop_on_their_way() {
        let route = Route::default();
        let server = IpAddr::from([10, 0, 0, 53]);
        let q = Question {
            source: "a",
            dst: server,
            port: Some(53),
            proto: CheckProto::Dns,
            route: &route,
            size: None,
        };
        let lookup = |outcome: &'static str, answer: &str| ProbeResult {
            dns: Some(format!("db.lab: {answer}")),
            ..probe(outcome, None, 1.5)
        };
        let t = std::time::Duration::from_secs(1);
        let ok = dns(
            decide(&q, vec![lookup("answered", "10.0.0.7")], &Seen::default()),
            "db.lab",
            server,
            t,
        );
        assert_eq!(ok.verdict, "ok");
        assert!(
            ok.summary
                .starts_with("db.lab: 10.0.0.7 (the resolver 10.0.0.53 answered 1 of 1"),
            "{}",
            ok.summary
        );
        let servfail = dns(
            decide(
                &q,
                vec![lookup("dns_error", "SERVFAIL"); 2],
                &Seen::default(),
            ),
            "db.lab",
            server,
            t,
        );
        assert_eq!(servfail.verdict, "dns_failure");
        assert_eq!(
            servfail.summary,
            "the resolver 10.0.0.53 answered db.lab: SERVFAIL (2 of 2 lookups of db.lab)"
        );
        let silent = dns(
            decide(&q, vec![lookup("timeout", "no answer")], &Seen::default()),
            "lost.lab",
            server,
            t,
        );
        assert_eq!(silent.verdict, "dns_failure");
        assert!(
            silent
                .summary
                .starts_with("no answer from the resolver 10.0.0.53 within"),
            "{}",
            silent.summary
        );
        // Dropped on the way: the firewall is the answer, not the resolver.
        let mut seen = Seen::default();
        seen.drops.insert(
            (
                "b".into(),
                7,
                "NETFILTER_DROP".into(),
                "nft_do_chain+0x1".into(),
            ),
            1,
        );
        let dropped = dns(
            decide(&q, vec![lookup("timeout", "no answer")], &seen),
            "db.lab",
            server,
            t,
        );
        assert_eq!(dropped.verdict, "firewall");
    }

    fn question(route: &Route) -> Question<'_> {
        Question {
            source: "a",
            dst: IpAddr::from([10, 0, 0, 2]),
            port: Some(80),
            proto: CheckProto::Tcp,
            route,
            size: None,
        }
    }

    #[test]
    fn an_answer_is_ok_with_its_latency() {
        let route = Route::default();
        let v = decide(
            &question(&route),
            vec![
                probe("answered", None, 3.0),
                probe("answered", None, 1.0),
                probe("answered", None, 2.0),
            ],
            &Seen::default(),
        );
        assert_eq!(v.verdict, "ok");
        assert_eq!(v.latency_ms, Some(Latency { p50: 2.0, max: 3.0 }));
    }

    #[test]
    fn a_firewall_drop_comes_before_the_other_evidence() {
        let route = Route::default();
        let mut seen = Seen::default();
        seen.drops.insert(
            (
                "b".into(),
                7,
                "NETFILTER_DROP".into(),
                "nft_do_chain+0x1".into(),
            ),
            3,
        );
        seen.resets_sent.insert(("c".into(), 8), 1);
        let v = decide(
            &question(&route),
            vec![probe("timeout", None, 1000.0)],
            &seen,
        );
        assert_eq!(v.verdict, "firewall");
        assert!(
            v.summary.contains("firewall in b dropped 3"),
            "{}",
            v.summary
        );
    }

    #[test]
    fn without_reasons_the_freeing_function_decides() {
        assert_eq!(class("UNAVAILABLE", "nft_do_chain+0x3e8"), "NETFILTER_DROP");
        assert_eq!(class("UNAVAILABLE", "ip_error+0x94"), "IP_INNOROUTES");
        assert_eq!(class("UNAVAILABLE", "tcp_v4_rcv+0x10"), "UNAVAILABLE");
        assert_eq!(class("UNAVAILABLE", "__udp4_lib_rcv+0x5c2"), "NO_SOCKET");
        assert_eq!(class("NO_SOCKET", "nft_do_chain+0x3e8"), "NO_SOCKET");
    }

    #[test]
    fn nothing_seen_is_a_timeout_naming_the_interface() {
        let route = Route {
            interface: Some("d0".into()),
            via: None,
            source: None,
        };
        let v = decide(
            &question(&route),
            vec![probe("timeout", None, 1000.0)],
            &Seen::default(),
        );
        assert_eq!(v.verdict, "timeout");
        assert!(v.summary.contains("through d0"), "{}", v.summary);
        let refused = decide(
            &question(&route),
            vec![probe("refused", Some("ECONNREFUSED"), 0.1)],
            &Seen::default(),
        );
        assert_eq!(refused.verdict, "refused");
    }
}

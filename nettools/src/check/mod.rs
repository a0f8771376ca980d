//! `nettools check`: why can A not reach B? Traces the whole node (every namespace and the
//! host) while a thread inside the source's namespace sends a few probes ([`probes`]), follows
//! those probes' packets through the drops, resets and neighbour failures the kernel reports,
//! reads the firewall rules' counters around them ([`collect::rules`]), and prints one verdict with its
//! evidence ([`verdict`]).

pub mod probes;
pub mod resolver;
pub mod verdict;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nettools_common::{
    connections::SENT,
    flow::{Flow, ip},
};

use crate::{
    cli::{CheckArgs, CheckFormat, CheckProto, DestinationWorkload},
    collect::{self, Event},
    discover::{self, Workload},
    probe::{self, ProbeKind},
    report,
    session::{self, Started, Status, Stop, Symbols},
};

/// A usage error of `check` (an unknown source, a protocol that needs a port): exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The probes that see what happens to the check's packets.
/// (handshake: the RST a destination's veth carried back, for kernels whose `tcp_send_reset`
/// does not report a reset sent for no socket.)
const PROBES: [ProbeKind; 5] = [
    ProbeKind::Drops,
    ProbeKind::Neighbours,
    ProbeKind::Traffic,
    ProbeKind::Connections,
    ProbeKind::Handshake,
];

/// How long after the last probe the kernel's late reports (a neighbour entry failing, the
/// last drop) are still waited for.
const GRACE: Duration = Duration::from_millis(500);

/// At most this many namespaces have their firewall rules read (two `*-save` runs each).
const MAX_RULE_NAMESPACES: usize = 64;

/// Runs the check and prints its verdict; `Ok(true)` when the verdict is `ok`.
pub async fn run(args: &CheckArgs, verbose: bool) -> Result<bool> {
    let verdict = decide(args, verbose).await?;
    print_verdict(&verdict, args.output)?;
    Ok(verdict.ok())
}

/// Runs the check: the probes, what the kernel did to them, the verdict.
pub async fn decide(args: &CheckArgs, verbose: bool) -> Result<verdict::Verdict> {
    let source = resolve_source(args).await?;
    let Some(source_path) = source.netns_path.clone() else {
        return Err(UsageError(format!("{} has no network namespace path", source.name)).into());
    };
    let proto = match (args.proto, args.to.port) {
        (Some(p), _) => p,
        (None, Some(_)) => CheckProto::Tcp,
        (None, None) => CheckProto::Icmp,
    };
    let name = args.to.name.clone();
    if proto == CheckProto::Dns && name.is_none() {
        return Err(UsageError(
            "--proto dns looks a host name up from the source: --to NAME".to_string(),
        )
        .into());
    }
    // A host name: the source's own resolver configuration.
    let conf = match &name {
        Some(_) => Some(resolver::ResolvConf::of(&source)?),
        None => None,
    };
    let mut resolved = None;
    let (dst, port) = match (&args.to.netns, &name, &conf) {
        (Some(ns), _, _) => (address_of(ns)?, args.to.port),
        _ if args.to.workload.is_some() => (workload_address(args).await?, args.to.port),
        (None, Some(_), Some(conf)) if proto == CheckProto::Dns => {
            let server = conf.servers.first().copied().with_context(|| {
                format!(
                    "{} names no nameserver: there is no resolver to ask",
                    conf.file.display()
                )
            })?;
            (server, Some(53))
        }
        (None, Some(n), Some(conf)) => {
            let (c, asked_for, timeout) = (conf.clone(), n.clone(), args.timeout);
            let (asked, answer, ms) = discover::enter::in_netns(&source_path, move || {
                resolver::resolve(&c, &asked_for, timeout)
            })?;
            let server = conf.servers.first().copied();
            let chosen = match &answer {
                resolver::Answer::Addresses(a) => a
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| a.first())
                    .copied(),
                _ => None,
            };
            let (Some(addr), Some(server)) = (chosen, server) else {
                let v = verdict::unresolved(
                    &source.name,
                    proto,
                    n,
                    &asked,
                    &resolver::describe(&answer),
                    server,
                );
                return Ok(v);
            };
            resolved = Some(verdict::resolved(
                n,
                &asked,
                &resolver::describe(&answer),
                server,
                ms,
            ));
            (addr, args.to.port)
        }
        _ => (args.to.ip, args.to.port),
    };
    if args.size.is_some() && !matches!(proto, CheckProto::Icmp | CheckProto::Udp) {
        return Err(UsageError(
            "--size sets the size of icmp and udp probes: use it with --proto icmp or udp"
                .to_string(),
        )
        .into());
    }
    if matches!(proto, CheckProto::Tcp | CheckProto::Udp) && port.is_none() {
        return Err(UsageError(format!(
            "--proto {} needs a port: --to {}",
            if proto == CheckProto::Tcp {
                "tcp"
            } else {
                "udp"
            },
            match dst {
                IpAddr::V6(a) => format!("[{a}]:PORT"),
                a => format!("{a}:PORT"),
            }
        ))
        .into());
    }

    // Ctrl-C and SIGTERM from here on end the check with everything detached.
    let mut stop = Stop::install()?;
    let status = Status::new();
    status.say("naming the node's namespaces");
    let mut labels = discover::netns::labels();
    labels.extend(
        discover::inventory::Inventory::gather(&args.runtime.sources())
            .await
            .labels(),
    );
    labels.insert(source.netns, source.clone());

    status.say("reading the firewall rules' counters");
    let rule_paths = rule_namespaces(&labels, &source);
    let paths: Vec<&std::path::Path> = rule_paths.iter().map(|(_, p)| p.as_path()).collect();
    let before = collect::rules::snapshots(&paths);

    let started = Started::load(
        session::Options {
            probes: PROBES.to_vec(),
            all: true,
            ring_buffer_bytes: 4 << 20,
            tc_mode: probe::tc::Mode::Auto,
            timeout: args.timeout,
            transit_sample_shift: 0,
            stacks: false,
            verbose,
            // Read around the probes here, in the namespaces on their path.
            rules: false,
        },
        Vec::new(),
        labels.clone(),
        Box::new(std::io::sink()) as Box<dyn std::io::Write>,
        false,
        &status,
        Symbols::Load,
    )?;
    status.clear();
    let Started {
        mut probes,
        mut events,
        ..
    } = started;

    // The probes, from a thread inside the source.
    let (count, timeout, size) = (args.count, args.timeout, args.size);
    let path = source_path.clone();
    let lookups = match (proto, &conf, &name) {
        (CheckProto::Dns, Some(c), Some(n)) => Some((c.clone(), n.clone())),
        _ => None,
    };
    let sender = std::thread::spawn(move || {
        discover::enter::in_netns(&path, || {
            let route = probes::route_to(dst).unwrap_or_default();
            let results = match &lookups {
                Some((conf, name)) => resolver::send(conf, name, count, timeout),
                None => probes::send(proto, dst, port, count, timeout, size),
            };
            (route, results)
        })
    });
    let mut watch = Watch::new(dst, port, proto);
    while !sender.is_finished() {
        watch.drain(&mut events, &mut probes.collector)?;
        tokio::select! {
            _ = tokio::time::sleep(session::DRAIN_EVERY) => {}
            _ = stop.requested() => {
                probes.loaded.detach_all();
                anyhow::bail!("interrupted before the probes were done: no verdict");
            }
        }
    }
    let (route, results) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the thread sending the probes panicked"))??;
    let grace_end = Instant::now() + GRACE;
    while Instant::now() < grace_end {
        watch.drain(&mut events, &mut probes.collector)?;
        tokio::time::sleep(session::DRAIN_EVERY).await;
    }
    let neigh_probes = probe::tc::read_neigh_probes(&probes.loaded.ebpf)?;
    let events_lost = probes.loaded.counters()?[nettools_common::counters::EVENTS_LOST as usize];
    probes.loaded.detach_all();
    watch.drain(&mut events, &mut probes.collector)?;

    let mut seen = watch.seen(&probes, &labels);
    for (k, v) in &neigh_probes {
        if let Some(addr) = ip(k.family, &k.addr)
            && seen.neighbours.keys().any(|(.., a)| *a == addr)
        {
            *seen.neighbour_requests.entry(addr).or_default() += v.requests.iter().sum::<u64>();
        }
    }
    // The namespaces that sent the ICMP errors the probes got (a router says where the path
    // is too small).
    for from in results.iter().filter_map(|p| p.icmp_from) {
        if seen.owners.contains_key(&from) {
            continue;
        }
        if let Some(name) = owner_of(from, &rule_paths) {
            seen.owners.insert(from, name);
        }
    }
    for (((name, _), was), after) in rule_paths
        .iter()
        .zip(&before)
        .zip(collect::rules::snapshots(&paths))
    {
        let grown = collect::rules::grown(was, &after);
        if !grown.is_empty() {
            seen.rules.insert(name.clone(), grown);
        }
        let uncounted = collect::rules::uncounted_drops(&after);
        if !uncounted.is_empty() {
            seen.uncounted.insert(name.clone(), uncounted);
        }
    }

    let mut verdict = verdict::decide(
        &verdict::Question {
            source: &source.name,
            dst,
            port,
            proto,
            route: &route,
            size: args.size,
        },
        results,
        &seen,
    );
    if let (CheckProto::Dns, Some(n)) = (proto, &name) {
        verdict = verdict::dns(verdict, n, dst, args.timeout);
    }
    if let Some(e) = resolved {
        verdict.evidence.insert(0, e);
    }
    if events_lost > 0 {
        verdict.evidence.push(verdict::Evidence::note(format!(
            "{events_lost} kernel event(s) did not fit in the ring buffer: the evidence may be \
             incomplete (the node is busy; run the check again)"
        )));
    }
    Ok(verdict)
}

fn print_verdict(verdict: &verdict::Verdict, output: CheckFormat) -> Result<()> {
    match output {
        CheckFormat::Table => print!("{}", verdict::render(verdict)),
        CheckFormat::Json => println!(
            "{}",
            serde_json::to_string(verdict).context("cannot write the verdict as JSON")?
        ),
    }
    Ok(())
}

/// The source, named as `trace` names its targets.
async fn resolve_source(args: &CheckArgs) -> Result<Workload> {
    let usage = |e: anyhow::Error| anyhow::Error::from(UsageError(format!("{e}")));
    let s = &args.source;
    if let Some(spec) = &s.netns {
        return discover::netns::by_name_or_path(spec).map_err(usage);
    }
    if let Some(pid) = s.pid {
        return discover::netns::by_pid(pid).map_err(usage);
    }
    let pods: Vec<String> = s.pod.iter().cloned().collect();
    let containers: Vec<String> = s.container.iter().cloned().collect();
    let (found, _) = discover::watch::lookup(
        &pods,
        args.namespace.as_deref(),
        &containers,
        &args.runtime.sources(),
        false,
    )
    .await
    .map_err(usage)?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| UsageError("no such pod or container".to_string()).into())
}

/// The address of a namespace of this node (`--to netns/NAME`): its first IPv4 address, else
/// its first global IPv6 one.
fn address_of(name: &str) -> Result<IpAddr> {
    let w = discover::netns::by_name_or_path(name)
        .map_err(|e| anyhow::Error::from(UsageError(format!("{e}"))))?;
    address_in(
        &w.netns_path.unwrap_or_default(),
        &format!("network namespace {name:?}"),
    )
}

/// The address of a pod or container of this node (`--to pod/…`, `container/…`), found through
/// the runtimes as a source is.
async fn workload_address(args: &CheckArgs) -> Result<IpAddr> {
    let usage = |e: anyhow::Error| anyhow::Error::from(UsageError(format!("{e}")));
    let (pods, namespace, containers) = match &args.to.workload {
        Some(DestinationWorkload::Pod { namespace, name }) => {
            (vec![name.clone()], namespace.as_deref(), Vec::new())
        }
        Some(DestinationWorkload::Container(name)) => (Vec::new(), None, vec![name.clone()]),
        None => return Err(UsageError("no pod or container given".to_string()).into()),
    };
    let (found, _) = discover::watch::lookup(
        &pods,
        namespace,
        &containers,
        &args.runtime.sources(),
        false,
    )
    .await
    .map_err(usage)?;
    let w = found
        .into_iter()
        .next()
        .ok_or_else(|| UsageError("no such pod or container".to_string()))?;
    let Some(path) = w.netns_path.clone() else {
        return Err(UsageError(format!("{} has no network namespace path", w.name)).into());
    };
    address_in(&path, &w.name)
}

/// The namespace, of those whose rules are read, that owns `addr`: its name.
fn owner_of(addr: IpAddr, namespaces: &[(String, PathBuf)]) -> Option<String> {
    namespaces
        .iter()
        .find(|(_, path)| {
            discover::enter::in_netns(path, discover::netlink::addresses)
                .ok()
                .and_then(Result::ok)
                .is_some_and(|list| list.iter().any(|(_, a, _)| *a == addr))
        })
        .map(|(name, _)| name.clone())
}

/// The first IPv4 address of the namespace at `path`, else its first global IPv6 one.
fn address_in(path: &std::path::Path, what: &str) -> Result<IpAddr> {
    let addresses = discover::enter::in_netns(path, discover::netlink::addresses)??;
    let usable = |a: &IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    };
    addresses
        .iter()
        .map(|(_, a, _)| *a)
        .filter(usable)
        .min_by_key(|a| a.is_ipv6())
        .ok_or_else(|| UsageError(format!("{what} has no address to send to")).into())
}

/// The namespaces whose firewall rules are read: the source's, the host's, then the others,
/// at most [`MAX_RULE_NAMESPACES`].
fn rule_namespaces(labels: &BTreeMap<u32, Workload>, source: &Workload) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let host = discover::netns::host_inode();
    let mut ordered: Vec<&Workload> = vec![source];
    ordered.extend(labels.values().filter(|w| Some(w.netns) == host));
    ordered.extend(labels.values());
    for w in ordered {
        if out.len() >= MAX_RULE_NAMESPACES {
            break;
        }
        if let Some(path) = &w.netns_path
            && !out.iter().any(|(n, _)| *n == w.name)
        {
            out.push((w.name.clone(), path.clone()));
        }
    }
    out
}

/// The events about the probes' packets, as they are drained.
struct Watch {
    dst: IpAddr,
    port: Option<u16>,
    l4: u8,
    drops: Vec<nettools_common::drops::DropEvent>,
    resets: Vec<nettools_common::connections::ResetEvent>,
    /// SYNs answered with a RST, seen by the handshake probe on the answering side's veth.
    veth_resets: Vec<nettools_common::latency::HandshakeEvent>,
    neighbours: Vec<nettools_common::neighbours::NeighbourEvent>,
}

/// Events kept per kind, at most (a flood of drops to the same address is counted, not kept).
const MAX_KEPT: usize = 100_000;

impl Watch {
    fn new(dst: IpAddr, port: Option<u16>, proto: CheckProto) -> Self {
        Self {
            dst,
            port,
            l4: match (proto, dst) {
                (CheckProto::Tcp, _) => 6,
                // DNS queries go out as UDP datagrams.
                (CheckProto::Udp | CheckProto::Dns, _) => 17,
                (CheckProto::Icmp, IpAddr::V4(_)) => 1,
                (CheckProto::Icmp, IpAddr::V6(_)) => 58,
            },
            drops: Vec::new(),
            resets: Vec::new(),
            veth_resets: Vec::new(),
            neighbours: Vec::new(),
        }
    }

    /// Whether a packet is one of the probes' (either direction).
    fn ours(&self, f: &Flow) -> bool {
        if f.l4_proto != self.l4 {
            return false;
        }
        let to = ip(f.family, &f.daddr) == Some(self.dst)
            && self
                .port
                .is_none_or(|p| f.dport == p || self.l4 == 1 || self.l4 == 58);
        let from = ip(f.family, &f.saddr) == Some(self.dst)
            && self
                .port
                .is_none_or(|p| f.sport == p || self.l4 == 1 || self.l4 == 58);
        to || from
    }

    fn drain(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        collector: &mut session::Collector,
    ) -> Result<()> {
        while let Some(record) = ring.next() {
            let Ok(ev) = collect::decode(&record) else {
                collector.agg.undecodable += 1;
                continue;
            };
            match &ev {
                Event::Drop(d) if self.ours(&d.flow) && self.drops.len() < MAX_KEPT => {
                    self.drops.push(*d)
                }
                Event::Reset(r)
                    if r.key.direction == SENT
                        && self.ours(&r.key.flow)
                        && self.resets.len() < MAX_KEPT =>
                {
                    self.resets.push(*r)
                }
                Event::Handshake(h)
                    if h.outcome == nettools_common::latency::outcome::RESET
                        && h.role == nettools_common::latency::role::SERVER
                        && self.ours(&h.flow)
                        && self.veth_resets.len() < MAX_KEPT =>
                {
                    self.veth_resets.push(*h)
                }
                Event::NeighbourFailed(n) if self.neighbours.len() < MAX_KEPT => {
                    self.neighbours.push(*n)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What was seen, with names.
    fn seen(
        &self,
        probes: &session::Probes<Box<dyn std::io::Write>>,
        labels: &BTreeMap<u32, Workload>,
    ) -> verdict::Seen {
        let name = |netns: u32| report::workload_for(netns, &[], labels).name;
        let kernel = &probes.loaded.kernel;
        let kallsyms = &probes.collector.kallsyms;
        let mut seen = verdict::Seen::default();
        let mut neigh_failed_ns = Vec::new();
        for d in &self.drops {
            let reason = kernel.drop_reasons.name(d.key.reason);
            if reason == "NEIGH_FAILED" {
                neigh_failed_ns.push(d.key.netns);
            }
            *seen
                .drops
                .entry((
                    name(d.key.netns),
                    d.key.netns,
                    reason,
                    kallsyms.describe(d.key.location),
                ))
                .or_default() += 1;
        }
        for r in &self.resets {
            *seen
                .resets_sent
                .entry((name(r.key.netns), r.key.netns))
                .or_default() += 1;
        }
        if self.resets.is_empty() {
            // The kernel's tcp_send_reset said nothing (before it reported resets sent for no
            // socket): the RSTs the answering side's veth carried back name it instead.
            for h in &self.veth_resets {
                let netns = probes.collector.netns_of(h.ifindex);
                if netns != 0 {
                    *seen.resets_sent.entry((name(netns), netns)).or_default() += 1;
                    seen.resets_from_veth = true;
                }
            }
        }
        for n in &self.neighbours {
            let Some(addr) = ip(n.key.family, &n.key.addr) else {
                continue;
            };
            // The destination itself, or the next hop of a namespace that dropped the probes
            // waiting for it.
            if addr != self.dst && !neigh_failed_ns.contains(&n.key.netns) {
                continue;
            }
            let end = n.dev.iter().position(|&b| b == 0).unwrap_or(n.dev.len());
            let device = String::from_utf8_lossy(&n.dev[..end]).into_owned();
            *seen
                .neighbours
                .entry((name(n.key.netns), n.key.netns, device, addr))
                .or_default() += 1;
        }
        seen
    }
}

//! `nettools serve`: the node agent. It runs the probes of a [`Session`] on every network
//! namespace of the node, names them by the container runtimes' inventory (pods, containers,
//! named namespaces, processes), asks the runtimes again every `--refresh` to follow pods as
//! they come and go (attaching the tc programs to new veths, forgetting namespaces that are
//! gone), and answers Prometheus scrapes on `--listen` with the figures at that moment
//! ([`metrics`], served by [`http`]).

pub mod http;
pub mod metrics;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, Pod,
    maps::{MapData, PerCpuHashMap},
};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cli::ServeArgs,
    discover::{Workload, WorkloadKind, cache::RuntimeCache, inventory::Inventory},
    probe::ProbeKind,
    session::{self, Session, Status},
};

/// Binds the listening socket, with one sentence for the usual failures.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use std::io::ErrorKind;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {addr}: the address is already in use (another nettools serve, or \
             another program; choose another with --listen)"
        ),
        ErrorKind::AddrNotAvailable => {
            anyhow!("cannot listen on {addr}: no interface of this host has that address")
        }
        ErrorKind::PermissionDenied => anyhow!(
            "cannot listen on {addr}: permission denied (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE)"
        ),
        _ => anyhow!("cannot listen on {addr}: {e}"),
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {addr}"))?;
    TcpListener::from_std(listener).with_context(|| format!("cannot listen on {addr}"))
}

/// Every namespace of the node, named by the runtimes where they know it.
fn all_labels(inventory: &Inventory) -> BTreeMap<u32, Workload> {
    let mut labels = crate::discover::netns::labels();
    labels.extend(inventory.labels());
    labels
}

/// What the runtimes answered, for `nettools_runtime_up`.
fn sources_of(inventory: &Inventory) -> Vec<(String, String, bool)> {
    inventory
        .sources
        .iter()
        .filter(|s| s.source != "cgroup-scan")
        .map(|s| {
            (
                s.source.to_string(),
                s.socket.clone().unwrap_or_default(),
                s.error.is_none(),
            )
        })
        .collect()
}

/// What makes a namespace the same workload from one refresh to the next. The kernel reuses a
/// namespace's inode at once, so a pod restarted with a new sandbox can have its old inode: the
/// sandbox (its id, or its namespace's bind mount) tells them apart.
fn identity(w: &Workload) -> String {
    match w.kind {
        WorkloadKind::Pod => format!(
            "pod {:?} {:?}",
            w.pod.as_ref().map(|p| (&p.sandbox_id, &p.uid, &p.name)),
            w.netns_path
        ),
        WorkloadKind::Container => {
            let mut ids: Vec<&str> = w.containers.iter().map(|c| c.id.as_str()).collect();
            ids.sort_unstable();
            format!("container {} {:?}", ids.join(","), w.netns_path)
        }
        WorkloadKind::Netns => format!("netns {:?}", w.netns_path),
        // A process's namespace is the same namespace while its inode exists.
        WorkloadKind::Process | WorkloadKind::Host | WorkloadKind::Interface => String::new(),
    }
}

/// Whether the namespace `old` named at the last refresh is gone, or its inode now holds another
/// workload. A namespace the runtimes name only now (seen a moment before as a bare namespace
/// or a process's) is the same namespace, with the same counts.
fn replaced(old: &Workload, now: Option<&Workload>) -> bool {
    let Some(now) = now else { return true };
    match old.kind {
        WorkloadKind::Pod | WorkloadKind::Container => {
            now.kind != old.kind || identity(now) != identity(old)
        }
        WorkloadKind::Netns => now.kind == old.kind && identity(now) != identity(old),
        WorkloadKind::Process | WorkloadKind::Host | WorkloadKind::Interface => false,
    }
}

/// Removes the entries of per-CPU hash map `map` whose key `gone` matches.
fn remove_keys<K: Pod, V: Pod>(ebpf: &mut Ebpf, map: &str, gone: impl Fn(&K) -> bool) -> usize {
    let Some(m) = ebpf.map_mut(map) else {
        return 0;
    };
    let Ok(mut hash) = PerCpuHashMap::<&mut MapData, K, V>::try_from(m) else {
        return 0;
    };
    let keys: Vec<K> = hash
        .keys()
        .filter_map(Result::ok)
        .filter(|k| gone(k))
        .collect();
    keys.iter().filter(|k| hash.remove(k).is_ok()).count()
}

/// Forgets a namespace that is gone (or now belongs to another workload) and its veths: its
/// counts leave the kernel's maps and the aggregate, so the maps do not fill up with the dead
/// and a new workload that gets the same inode starts from zero. Its veths can be attached
/// again should their ifindex come back.
fn forget(session: &mut Session, netns: u32, ifindexes: &[u32]) {
    use nettools_common::{
        drops::{DropKey, DropStackKey},
        neighbours::NeighbourKey,
        retransmits::{RetransmitKey, RetransmitStackKey},
        traffic::{NeighProbeKey, NeighProbeValue, TrafficKey, TrafficValue},
    };
    let ebpf = &mut session.loaded.ebpf;
    let mut removed = remove_keys::<DropKey, u64>(ebpf, "DROP_COUNTS", |k| k.netns == netns);
    removed += remove_keys::<DropStackKey, u64>(ebpf, "DROP_STACKS", |k| k.netns == netns);
    removed += remove_keys::<RetransmitKey, u64>(ebpf, "RETRANSMIT_FLOWS", |k| k.netns == netns);
    removed += remove_keys::<u32, u64>(ebpf, "RETRANSMIT_TOTALS", |k| *k == netns);
    removed +=
        remove_keys::<RetransmitStackKey, u64>(ebpf, "RETRANSMIT_STACKS", |k| k.netns == netns);
    removed += remove_keys::<NeighbourKey, u64>(ebpf, "NEIGH_FAILURES", |k| k.netns == netns);
    removed += remove_keys::<TrafficKey, TrafficValue>(ebpf, "TRAFFIC_OVERFLOW", |k| {
        ifindexes.contains(&k.ifindex)
    });
    removed += remove_keys::<NeighProbeKey, NeighProbeValue>(ebpf, "NEIGH_PROBES", |k| {
        ifindexes.contains(&k.ifindex)
    });
    log::debug!("forgot namespace {netns} ({removed} kernel map entries)");
    let agg = &mut session.collector.agg;
    agg.namespaces.remove(&netns);
    for i in ifindexes {
        agg.interfaces.remove(i);
        let l = &mut agg.latency;
        l.histograms.retain(|(ifindex, _), _| ifindex != i);
        l.dns.remove(i);
        l.handshakes.retain(|(ifindex, _), _| ifindex != i);
        l.icmp_unanswered.retain(|(ifindex, _), _| ifindex != i);
        l.transit_pairs.retain(|(to, from), _| to != i && from != i);
    }
    for i in ifindexes {
        crate::probe::tc::detach(&mut session.loaded.ebpf, &mut session.loaded.tc, *i);
    }
}

/// Attaches the tc programs to the veths of `labels` not attached yet (looking up the veths of
/// namespaces that have none yet). A veth that vanished meanwhile is skipped.
fn attach_veths(session: &mut Session, labels: &mut BTreeMap<u32, Workload>) {
    if !session.options.probes.iter().any(|p| p.on_veth()) {
        return;
    }
    let mut notes = Vec::new();
    let targets = session::tc_targets(&mut [], labels, &mut notes);
    for n in notes {
        log::debug!("{n}");
    }
    let mode = session.options.tc_mode;
    for t in targets {
        if let Err(e) = session.loaded.attach_tc(std::slice::from_ref(&t), mode) {
            log::info!("{e:#}");
        }
    }
}

/// How long a refresh waits for the runtimes; a later answer is used at a later refresh.
const RUNTIME_WAIT: Duration = Duration::from_millis(250);

/// Asks the runtimes and the namespaces again: names new workloads, attaches their veths,
/// forgets the ones that are gone. A runtime that fails keeps its last answer (stale), so its
/// workloads are not forgotten while their namespaces exist.
async fn refresh(session: &mut Session, runtimes: &mut RuntimeCache, ctx: &mut metrics::Context) {
    runtimes.ask();
    runtimes.answer(Some(RUNTIME_WAIT)).await;
    let inventory = runtimes.inventory().clone();
    ctx.sources = sources_of(&inventory);
    let mut labels = all_labels(&inventory);
    let old = std::mem::take(&mut session.collector.labels);
    for (netns, w) in &mut labels {
        // A namespace's veth stays with it: only new namespaces are looked into.
        if let Some(o) = old.get(netns).filter(|o| identity(o) == identity(w)) {
            w.veths = o.veths.clone();
        }
    }
    for (netns, o) in &old {
        if replaced(o, labels.get(netns)) {
            let ifindexes: Vec<u32> = o.veths.iter().map(|v| v.ifindex).collect();
            forget(session, *netns, &ifindexes);
        }
    }
    attach_veths(session, &mut labels);
    session.collector.traced = labels.values().cloned().collect();
    session.collector.labels = labels;
    ctx.tc_interfaces = session.loaded.tc.interfaces.len();
}

/// One scrape: the ring buffer drained, the kernel's counts read, the exposition rendered.
fn scrape(session: &mut Session, ctx: &metrics::Context, started: Instant) -> Result<String> {
    session.drain()?;
    let summary = session.summarize(started.elapsed().as_secs_f64())?;
    let labels = &session.collector.labels;
    let families = metrics::families(&summary, &|netns| labels.contains_key(&netns), ctx);
    metrics::render(&families).context("encoding the exposition failed")
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: &ServeArgs, verbose: bool) -> Result<()> {
    crate::preflight::require_privileges()?;
    let listener = bind(args.listen)?;
    let local = listener.local_addr().unwrap_or(args.listen);
    let mut runtimes = RuntimeCache::new(args.runtime.sources());
    let status = Status::new();
    status.say("asking the container runtimes");
    let inventory = runtimes.gather().await.clone();
    let mut probes = if args.probes.is_empty() {
        ProbeKind::DEFAULT.to_vec()
    } else {
        args.probes.clone()
    };
    probes.sort();
    probes.dedup();
    let mut session = Session::start(
        session::Options {
            probes: probes.clone(),
            all: true,
            ring_buffer_bytes: args.ring_buffer,
            tc_mode: args.tc_mode,
            timeout: args.timeout,
            transit_sample_shift: args.transit_sample.trailing_zeros(),
            stacks: false,
            verbose,
        },
        Vec::new(),
        all_labels(&inventory),
        Box::new(std::io::sink()),
        false,
        &status,
    )?;
    status.clear();
    // Every namespace is listed in the summary, with or without events.
    session.collector.traced = session.collector.labels.values().cloned().collect();
    let mut ctx = metrics::Context {
        max_workloads: args.max_workloads,
        probes: probes.clone(),
        tc_interfaces: session.loaded.tc.interfaces.len(),
        sources: sources_of(&inventory),
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: session.loaded.kernel.release.clone(),
    };
    let (scrapes, mut requests) = mpsc::channel::<http::Scrape>(16);
    let server = tokio::spawn(http::serve(listener, scrapes));
    let names: Vec<&str> = probes.iter().map(|p| p.name()).collect();
    eprintln!(
        "nettools: serving Prometheus metrics on http://{local}/metrics: {} in {} namespaces \
         ({} veths), asking the runtimes every {}; Ctrl-C stops",
        names.join(", "),
        session.collector.labels.len(),
        ctx.tc_interfaces,
        crate::trace::humantime(args.refresh)
    );
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + args.refresh, args.refresh);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            step = session.step() => { step?; }
            _ = every.tick() => refresh(&mut session, &mut runtimes, &mut ctx).await,
            Some(reply) = requests.recv() => {
                let body = scrape(&mut session, &ctx, started).map_err(|e| {
                    log::warn!("scrape failed: {e:#}");
                    format!("{e:#}")
                });
                let _ = reply.send(body);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    server.abort();
    session.loaded.detach_all();
    eprintln!("nettools: stopped serving");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::PodRef;

    fn pod(sandbox: &str) -> Workload {
        Workload {
            kind: WorkloadKind::Pod,
            netns: 7,
            netns_path: Some(format!("/run/netns/cni-{sandbox}").into()),
            pod: Some(PodRef {
                name: "web".into(),
                sandbox_id: Some(sandbox.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_sandbox_on_a_reused_inode_is_another_workload() {
        let first = pod("aaa");
        assert!(!replaced(&first, Some(&pod("aaa"))));
        assert!(replaced(&first, Some(&pod("bbb"))));
        assert!(replaced(&first, None));
        // A bare namespace (or a process's) that a runtime names a moment later: the same one.
        let bare = Workload {
            kind: WorkloadKind::Netns,
            netns: 7,
            netns_path: Some("/run/netns/cni-aaa".into()),
            ..Default::default()
        };
        assert!(!replaced(&bare, Some(&first)));
        let process = Workload {
            kind: WorkloadKind::Process,
            netns: 7,
            ..Default::default()
        };
        assert!(!replaced(&process, Some(&first)));
        // A pod whose inode now belongs to something else.
        assert!(replaced(&first, Some(&process)));
    }
}

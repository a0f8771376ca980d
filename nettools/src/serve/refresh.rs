//! The agent's refresh thread: names the node's namespaces by the container runtimes'
//! inventory, attaches the tc programs to new veths and forgets the namespaces that are gone.
//! It runs on a thread of its own with its own small async runtime, so a runtime that hangs
//! costs only refreshes: the HTTP server, the drain thread and the expiry never wait for it.
//! The lock on the agent's state is taken only to read the last names and for each change
//! (one veth attached, one namespace forgotten), never while a runtime is asked or a
//! namespace entered.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{MapData, PerCpuHashMap},
};

use super::core::{Core, lock};
use crate::{
    discover::{
        Workload, WorkloadKind,
        cache::RuntimeCache,
        inventory::{Inventory, Sources},
    },
    session,
};

/// Starts the refresh thread: a first round from the namespaces alone (so veths are attached
/// before any runtime answers), then the runtimes' inventory at once and every `every`.
/// `first` is called once the runtimes answered (or failed) the first time.
pub fn spawn(
    core: Arc<Mutex<Core>>,
    sources: Sources,
    every: Duration,
    stop: Arc<AtomicBool>,
    first: impl FnOnce(&Inventory) + Send + 'static,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nettools-refresh".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    log::error!(
                        "cannot start the runtime the container runtimes are asked on: {e}"
                    );
                    return;
                }
            };
            apply(&core, crate::discover::netns::labels(), None);
            let mut first = Some(first);
            // A runtime that fails keeps its last answer (stale), so its workloads are not
            // forgotten while their namespaces exist.
            let mut runtimes = RuntimeCache::new(sources);
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let inventory = runtime.block_on(runtimes.gather()).clone();
                log::debug!(
                    "the runtimes answered in {:.0} ms",
                    asked.elapsed().as_secs_f64() * 1e3
                );
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                apply(&core, all_labels(&inventory), Some(&inventory));
                if let Some(f) = first.take() {
                    f(&inventory);
                }
                let slept = Instant::now();
                while slept.elapsed() < every && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                }
            }
        })
        .context("cannot start the thread that asks the container runtimes")
}

/// Every namespace of the node, named by the runtimes where they know it.
pub fn all_labels(inventory: &Inventory) -> BTreeMap<u32, Workload> {
    let mut labels = crate::discover::netns::labels();
    labels.extend(inventory.labels());
    labels
}

/// What the runtimes answered, for `nettools_runtime_up`.
pub fn sources_of(inventory: &Inventory) -> Vec<(String, String, bool)> {
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

/// Removes a namespace's resets and socket errors from the connections probe's maps.
fn forget_connections(ebpf: &mut Ebpf, netns: u32) -> usize {
    use nettools_common::connections::{
        ClosedKey, ErrorTotalKey, ResetKey, ResetTotalKey, SocketErrorKey,
    };
    remove_keys::<ResetTotalKey, u64>(ebpf, "RESET_TOTALS", |k| k.netns == netns)
        + remove_keys::<ResetKey, u64>(ebpf, "RESET_FLOWS", |k| k.netns == netns)
        + remove_keys::<ErrorTotalKey, u64>(ebpf, "SOCKET_ERROR_TOTALS", |k| k.netns == netns)
        + remove_keys::<SocketErrorKey, u64>(ebpf, "SOCKET_ERROR_FLOWS", |k| k.netns == netns)
        + remove_keys::<ClosedKey, u64>(ebpf, "CONN_CLOSED_TOTALS", |k| k.netns == netns)
}

/// Forgets a namespace that is gone (or now belongs to another workload) and its veths: its
/// counts leave the kernel's maps and the aggregate, so the maps do not fill up with the dead
/// and a new workload that gets the same inode starts from zero. Its veths can be attached
/// again should their ifindex come back.
fn forget(core: &mut Core, netns: u32, ifindexes: &[u32]) {
    use nettools_common::{
        drops::{DropKey, DropStackKey},
        neighbours::NeighbourKey,
        retransmits::{RetransmitKey, RetransmitStackKey},
        traffic::{NeighProbeKey, NeighProbeValue, TrafficKey, TrafficValue},
    };
    let probes = &mut core.probes;
    let ebpf = &mut probes.loaded.ebpf;
    let mut removed = remove_keys::<DropKey, u64>(ebpf, "DROP_COUNTS", |k| k.netns == netns);
    removed += remove_keys::<DropStackKey, u64>(ebpf, "DROP_STACKS", |k| k.netns == netns);
    removed += remove_keys::<RetransmitKey, u64>(ebpf, "RETRANSMIT_FLOWS", |k| k.netns == netns);
    removed += remove_keys::<u32, u64>(ebpf, "RETRANSMIT_TOTALS", |k| *k == netns);
    removed +=
        remove_keys::<RetransmitStackKey, u64>(ebpf, "RETRANSMIT_STACKS", |k| k.netns == netns);
    removed += forget_connections(ebpf, netns);
    let neighbours = remove_keys::<NeighbourKey, u64>(ebpf, "NEIGH_FAILURES", |k| k.netns == netns);
    probes.loaded.neighbour_entries_forgotten += neighbours as u64;
    let ebpf = &mut probes.loaded.ebpf;
    removed += neighbours;
    removed += remove_keys::<u32, u64>(ebpf, "NEIGH_FAILURE_TOTALS", |k| *k == netns);
    removed += remove_keys::<TrafficKey, TrafficValue>(ebpf, "TRAFFIC_OVERFLOW", |k| {
        ifindexes.contains(&k.ifindex)
    });
    removed += remove_keys::<NeighProbeKey, NeighProbeValue>(ebpf, "NEIGH_PROBES", |k| {
        ifindexes.contains(&k.ifindex)
    });
    log::debug!("forgot namespace {netns} ({removed} kernel map entries)");
    let agg = &mut probes.collector.agg;
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
        crate::probe::tc::detach(&mut probes.loaded.ebpf, &mut probes.loaded.tc, *i);
    }
}

/// Makes `labels` the agent's names: namespaces keep their veths, new ones get theirs looked
/// up (entering them, outside the lock) and attached, the ones gone are forgotten.
fn apply(core: &Mutex<Core>, mut labels: BTreeMap<u32, Workload>, inventory: Option<&Inventory>) {
    let (old, on_veth, mode) = {
        let c = lock(core);
        if c.stopping {
            return;
        }
        let probes = &c.probes;
        (
            probes.collector.labels.clone(),
            probes.options.probes.iter().any(|p| p.on_veth()),
            probes.options.tc_mode,
        )
    };
    for (netns, w) in &mut labels {
        // A namespace's veth stays with it: only new namespaces are looked into.
        if let Some(o) = old.get(netns).filter(|o| !replaced(o, Some(w))) {
            w.veths = o.veths.clone();
        }
    }
    let gone: Vec<(u32, Vec<u32>)> = old
        .iter()
        .filter(|(netns, o)| replaced(o, labels.get(netns)))
        .map(|(netns, o)| (*netns, o.veths.iter().map(|v| v.ifindex).collect()))
        .collect();
    for (netns, ifindexes) in &gone {
        let mut c = lock(core);
        if c.stopping {
            return;
        }
        forget(&mut c, *netns, ifindexes);
    }
    let targets = if on_veth {
        let mut notes = Vec::new();
        let targets = session::tc_targets(&mut [], &mut labels, &mut notes);
        for n in notes {
            log::debug!("{n}");
        }
        targets
    } else {
        Vec::new()
    };
    for t in targets {
        let mut c = lock(core);
        if c.stopping {
            return;
        }
        if let Err(e) = c.probes.loaded.attach_tc(std::slice::from_ref(&t), mode) {
            log::info!("{e:#}");
        }
    }
    let mut c = lock(core);
    if c.stopping {
        return;
    }
    if let Some(inventory) = inventory {
        c.ctx.sources = sources_of(inventory);
    }
    c.ctx.tc_interfaces = c.probes.loaded.tc.interfaces.len();
    c.probes.collector.traced = labels.values().cloned().collect();
    c.probes.collector.labels = labels;
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

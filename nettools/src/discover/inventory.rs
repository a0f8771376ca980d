//! Every pod and container on this node, from every source that answers (CRI, the Docker
//! API, the cgroup scan), merged into one [`Workload`] per network namespace: a pod's
//! containers, or containers joined with `--net container:X`, are one workload. Also where
//! `--pod NAME [-n NS]` and `--container ID|NAME` are matched (the lookup itself, which also
//! follows them, is [`watch::lookup`](super::watch::lookup)).
//!
//! The runtimes are asked all at once ([`ask`]), each within [`LIMITS`](super::LIMITS): a
//! hung runtime costs its deadline, not the sum of everyone's.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
};

use anyhow::{Result, bail};
use futures_util::future::join_all;
use serde::Serialize;

use super::{
    LIMITS, Limits, PodRef, Workload, WorkloadKind, cgroup, cri, docker, found::Found, netns,
    podman, span, veth,
};

/// Which runtime sockets to ask (`None`: the standard paths that exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub cri_socket: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
}

/// What one source said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceReport {
    /// `cri`, `docker-api`, `podman-storage` or `cgroup-scan`.
    pub source: &'static str,
    /// The socket asked, if any.
    pub socket: Option<String>,
    /// The runtime that answered, e.g. `containerd 1.6.20`.
    pub runtime: Option<String>,
    /// Containers and sandboxes it reported.
    pub found: usize,
    /// Why it gave nothing, if it failed.
    pub error: Option<String>,
    /// Containers and sandboxes kept from its last good answer while it fails (their
    /// namespaces still exist): their workloads are marked stale.
    #[serde(skip_serializing_if = "is_zero")]
    pub kept: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl SourceReport {
    /// A source not asked yet.
    fn new(source: &'static str, socket: Option<String>) -> Self {
        Self {
            source,
            socket,
            runtime: None,
            found: 0,
            error: None,
            kept: 0,
        }
    }

    /// `containerd 1.6.20 at /run/containerd/containerd.sock`, `docker-api at /x.sock failed:
    /// no answer to GET /version within 5 s`.
    pub fn describe(&self) -> String {
        let at = self.socket.as_deref().unwrap_or("");
        let who = match &self.runtime {
            Some(rt) if self.error.is_some() => format!("{} ({rt})", self.source),
            _ => self.source.to_string(),
        };
        match (&self.runtime, &self.error) {
            (_, Some(e)) if self.kept > 0 => format!(
                "{who} at {at} failed: {e}; its last answer stands for {} containers and \
                 sandboxes whose namespaces still exist (marked stale)",
                self.kept
            ),
            (_, Some(e)) => format!("{who} at {at} failed: {e}"),
            (Some(rt), None) => format!("{rt} at {at}"),
            (None, None) if self.source == "cgroup-scan" => "the cgroup scan of /proc".to_string(),
            (None, None) => format!("{} at {at}", self.source),
        }
    }

    /// Whether this is a runtime's API (not the cgroup scan) and it answered.
    pub fn answered(&self) -> bool {
        self.source != "cgroup-scan" && self.error.is_none()
    }
}

/// What one source said, and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub report: SourceReport,
    pub found: Vec<Found>,
}

/// Asks one runtime within the limits' deadline for a whole listing.
async fn ask_one<R>(
    mut report: SourceReport,
    limits: &Limits,
    query: impl std::future::Future<Output = Result<(R, Vec<Found>)>>,
    name: impl Fn(&R) -> String,
) -> Answer {
    let mut found = Vec::new();
    match tokio::time::timeout(limits.source, query).await {
        Ok(Ok((rt, f))) => {
            report.runtime = Some(name(&rt));
            report.found = f.len();
            found = f;
        }
        Ok(Err(e)) => report.error = Some(format!("{e:#}")),
        Err(_) => {
            report.error = Some(format!(
                "no complete listing within {}",
                span(limits.source)
            ))
        }
    }
    Answer { report, found }
}

/// Asks every source: the runtimes all at once (CRI sockets first, then the Docker API
/// ones, in this order in the answer), then the cgroup scan. Sources that fail are reported,
/// not fatal.
pub async fn ask(sources: &Sources) -> Vec<Answer> {
    let limits = &LIMITS;
    let cri = cri::sockets(sources.cri_socket.as_deref())
        .into_iter()
        .map(|socket| async move {
            let report = SourceReport::new("cri", Some(socket.display().to_string()));
            ask_one(report, limits, cri::query(&socket), |rt| {
                format!("{} {}", rt.name, rt.version)
            })
            .await
        });
    let docker = docker::sockets(sources.docker_socket.as_deref())
        .into_iter()
        .map(|socket| async move {
            let report = SourceReport::new("docker-api", Some(socket.display().to_string()));
            ask_one(report, limits, docker::query(&socket), |e| {
                format!("{} {}", e.name, e.version)
            })
            .await
        });
    let (mut answers, docker) = tokio::join!(join_all(cri), join_all(docker));
    answers.extend(docker);
    let scanned = cgroup::scan();
    if let Some(store) = podman::local() {
        answers.push(ask_podman_store(&store, &scanned));
    }
    let mut report = SourceReport::new("cgroup-scan", None);
    report.found = scanned.len();
    answers.push(Answer {
        report,
        found: scanned,
    });
    answers
}

/// Podman's own files, for the containers the cgroup scan found (Podman without its service).
fn ask_podman_store(store: &podman::Store, scanned: &[Found]) -> Answer {
    let mut report = SourceReport::new("podman-storage", Some(store.file.display().to_string()));
    let mut found = Vec::new();
    match podman::read(store) {
        Ok(names) => {
            found = podman::name_scanned(&names, scanned);
            report.found = found.len();
            report.runtime = Some(if store.pods {
                "podman's state database".to_string()
            } else {
                "podman's container records (container names only)".to_string()
            });
        }
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    Answer { report, found }
}

/// Everything found, one workload per network namespace (host-network pods and containers
/// are one workload each).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inventory {
    pub sources: Vec<SourceReport>,
    pub workloads: Vec<Workload>,
}

impl Inventory {
    /// Asks every source and groups what they found. Sources that fail are reported in
    /// `sources`, not fatal. Veths and addresses are not filled in (see [`Inventory::describe`]).
    pub async fn gather(sources: &Sources) -> Self {
        Self::from_answers(ask(sources).await)
    }

    /// Groups what the sources answered, in their order (the first to report a container
    /// names it).
    pub fn from_answers(answers: Vec<Answer>) -> Self {
        let mut sources = Vec::new();
        let mut found = Vec::new();
        for a in answers {
            sources.push(a.report);
            found.extend(a.found);
        }
        Self {
            sources,
            workloads: group(found),
        }
    }

    /// Fills in every workload's host-side veths and addresses (entering each namespace).
    pub fn describe(&mut self) {
        for w in &mut self.workloads {
            describe(w);
        }
    }

    /// The sources that answered, for sentences: `containerd 1.6.20 at /run/…; podman 4.3.1 at …`.
    pub fn asked(&self) -> String {
        self.sources
            .iter()
            .map(SourceReport::describe)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `--pod NAME [-n NAMESPACE]`: exactly one pod, or a sentence saying what exists instead.
    /// A pod's Kubernetes UID or sandbox id (or a unique prefix of it) also matches.
    pub fn find_pod(&self, name: &str, namespace: Option<&str>) -> Result<Workload> {
        let pods: Vec<&Workload> = self.workloads.iter().filter(|w| w.pod.is_some()).collect();
        let matching: Vec<&Workload> = pods
            .iter()
            .copied()
            .filter(|w| {
                w.pod
                    .as_ref()
                    .is_some_and(|p| pod_matches(p, name, namespace))
            })
            .collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let wanted = match namespace {
                    Some(ns) => format!("no pod {name:?} in namespace {ns:?}"),
                    None => format!("no pod {name:?}"),
                };
                let here = if pods.is_empty() {
                    "there are no pods here".to_string()
                } else {
                    let names: BTreeSet<String> = pods
                        .iter()
                        .filter_map(|w| w.pod.as_ref().map(PodRef::display))
                        .collect();
                    format!(
                        "pods here: {}",
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    )
                };
                bail!(
                    "{wanted} on this node ({here}; {})",
                    self.asked_or_nothing()
                )
            }
            many => {
                let names: BTreeSet<String> = many
                    .iter()
                    .filter_map(|w| w.pod.as_ref().map(PodRef::display))
                    .collect();
                let namespaces: BTreeSet<&str> = many
                    .iter()
                    .filter_map(|w| w.pod.as_ref()?.namespace.as_deref())
                    .collect();
                if namespaces.len() > 1 && namespace.is_none() {
                    bail!(
                        "pod {name:?} exists in {} namespaces ({}): choose one with -n NAMESPACE",
                        namespaces.len(),
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
                bail!(
                    "{name:?} matches {} pods ({}): give the full name or id",
                    many.len(),
                    names.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        }
    }

    /// `--container ID|NAME`: the workload holding that container (with every container
    /// sharing its namespace), matched by name, full id or unique id prefix.
    pub fn find_container(&self, spec: &str) -> Result<Workload> {
        let by = |exact: bool| -> Vec<&Workload> {
            self.workloads
                .iter()
                .filter(|w| {
                    w.containers.iter().any(|c| {
                        if exact {
                            c.name == spec || c.id == spec
                        } else {
                            spec.len() >= 3 && c.id.starts_with(spec)
                        }
                    })
                })
                .collect()
        };
        let mut matching = by(true);
        if matching.is_empty() {
            matching = by(false);
        }
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => {
                let names: BTreeSet<String> = self
                    .workloads
                    .iter()
                    .flat_map(|w| w.containers.iter().map(|c| c.name.clone()))
                    .collect();
                let here = if names.is_empty() {
                    "there are no containers here".to_string()
                } else {
                    format!(
                        "containers here: {}",
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    )
                };
                bail!(
                    "no container {spec:?} on this node ({here}; {})",
                    self.asked_or_nothing()
                )
            }
            many => bail!(
                "{spec:?} matches containers in {} workloads ({}): give a longer id",
                many.len(),
                many.iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    fn asked_or_nothing(&self) -> String {
        let answered = self.sources.iter().any(SourceReport::answered);
        if answered {
            format!("asked {}", self.asked())
        } else if self.sources.iter().all(|s| s.source == "cgroup-scan") {
            format!(
                "no container runtime socket exists at {} or {}, so only the cgroup scan of /proc \
                 was used: give --cri-socket or --docker-socket",
                cri::DEFAULT_SOCKETS.join(", "),
                docker::DEFAULT_SOCKETS.join(", ")
            )
        } else {
            format!("no runtime answered: {}", self.asked())
        }
    }

    /// Names for `--all`: every pod's and container's namespace by inode. Host-network pods
    /// and containers are not given the host's namespace; they are listed in its name.
    pub fn labels(&self) -> BTreeMap<u32, Workload> {
        let host = netns::host_inode();
        let mut out = BTreeMap::new();
        let mut on_host = Vec::new();
        for w in &self.workloads {
            if w.host_network || Some(w.netns) == host {
                on_host.push(short_name(w));
                continue;
            }
            out.entry(w.netns).or_insert_with(|| w.clone());
        }
        if let Some(h) = host
            && !on_host.is_empty()
        {
            out.insert(
                h,
                Workload {
                    name: format!("host (and its host-network {})", on_host.join(", ")),
                    kind: WorkloadKind::Host,
                    netns: h,
                    netns_path: Some(PathBuf::from("/proc/self/ns/net")),
                    host_network: true,
                    ..Default::default()
                },
            );
        }
        out
    }
}

/// Whether a pod matches `--pod NAME [-n NS]` (name, UID or sandbox id prefix).
pub fn pod_matches(p: &PodRef, name: &str, namespace: Option<&str>) -> bool {
    let ns_ok = match namespace {
        Some(ns) => p.namespace.as_deref() == Some(ns),
        None => true,
    };
    let name_ok = p.name == name
        || p.uid.as_deref() == Some(name)
        || (name.len() >= 6 && p.sandbox_id.as_deref().is_some_and(|s| s.starts_with(name)));
    ns_ok && name_ok
}

/// `pod default/web` or `container ntc1`, without the container list.
fn short_name(w: &Workload) -> String {
    match &w.pod {
        Some(p) => format!("pod {}", p.display()),
        None => match w.containers.first() {
            Some(c) => format!("container {}", c.name),
            None => w.name.clone(),
        },
    }
}

/// The name a person reads: `pod default/web (containers: web, sidecar)`,
/// `container ntc1`, `containers ntc1, ntshared`, with `(host network)` when it has no
/// namespace of its own.
pub fn display_name(w: &Workload) -> String {
    let names: Vec<&str> = w.containers.iter().map(|c| c.name.as_str()).collect();
    let mut name = match &w.pod {
        Some(p) if names.is_empty() => format!("pod {}", p.display()),
        Some(p) => format!("pod {} (containers: {})", p.display(), names.join(", ")),
        None if names.len() == 1 => format!("container {}", names[0]),
        None => format!("containers {}", names.join(", ")),
    };
    if w.host_network {
        name.push_str(" (host network)");
    }
    name
}

/// Groups what the sources found: one workload per network namespace, except host-network
/// pods and containers (one each). The first source to report a container wins (CRI, then the
/// Docker API, then Podman's storage, then the cgroup scan), and the cgroup scan only adds
/// containers nothing else knew.
pub fn group(found: Vec<Found>) -> Vec<Workload> {
    let host = netns::host_inode();
    let mut known_ids: HashSet<String> = HashSet::new();
    // Group key: the namespace, or for host-network ones the pod (or container) identity.
    let mut groups: BTreeMap<(u32, String), Workload> = BTreeMap::new();
    let mut order: Vec<(u32, String)> = Vec::new();
    for f in found {
        let Some(c) = &f.container else { continue };
        if !known_ids.insert(c.id.clone()) {
            continue;
        }
        let host_network = f.host_network || Some(f.netns) == host;
        let key = if host_network {
            let who = f
                .pod
                .as_ref()
                .map(|p| format!("pod {}", p.sandbox_id.clone().unwrap_or(p.display())))
                .unwrap_or_else(|| format!("container {}", c.id));
            (f.netns, who)
        } else {
            (f.netns, String::new())
        };
        let w = groups.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Workload {
                netns: f.netns,
                host_network,
                // The first source to report it names it.
                named_by: Some(f.named_by),
                ..Default::default()
            }
        });
        // Named (in part) from a source's last good answer.
        w.stale |= f.stale;
        if w.pod.is_none() {
            w.pod = f.pod.clone();
        }
        // A stable path (the runtime's bind mount) is better than a process's.
        let stable = |p: &Option<PathBuf>| p.as_ref().is_some_and(|p| !p.starts_with("/proc"));
        if w.netns_path.is_none() || (!stable(&w.netns_path) && stable(&f.netns_path)) {
            w.netns_path = f.netns_path.clone();
        }
        if f.pid.is_some() && (w.pid.is_none() || f.sandbox) {
            w.pid = f.pid;
        }
        if !f.sandbox {
            w.containers.push(c.clone());
        }
    }
    order
        .into_iter()
        .filter_map(|k| groups.remove(&k))
        .map(|mut w| {
            w.kind = if w.pod.is_some() {
                WorkloadKind::Pod
            } else {
                WorkloadKind::Container
            };
            w.name = display_name(&w);
            w
        })
        .collect()
}

/// Fills in a workload's host-side veths and addresses from inside its namespace (nothing for
/// host-network ones: their interfaces are the host's).
pub fn describe(w: &mut Workload) {
    if w.host_network {
        return;
    }
    let Some(path) = w.netns_path.clone() else {
        return;
    };
    match veth::inside(&path) {
        Ok(inside) => {
            if let Ok(host) = super::netlink::links() {
                w.veths = veth::pair(&inside.links, &host);
            }
            w.addresses = inside
                .addresses
                .iter()
                .filter(|(_, a, _)| !a.is_loopback())
                .map(|(_, a, prefix)| format!("{a}/{prefix}"))
                .collect();
        }
        Err(e) => log::debug!("cannot look inside {}: {e:#}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::ContainerRef;
    use std::path::Path;

    fn c(id: &str, name: &str, rt: &str) -> Option<ContainerRef> {
        Some(ContainerRef {
            id: id.into(),
            name: name.into(),
            runtime: rt.into(),
        })
    }

    fn pod(name: &str, ns: Option<&str>, id: &str) -> Option<PodRef> {
        Some(PodRef {
            name: name.into(),
            namespace: ns.map(String::from),
            uid: Some(format!("uid-{name}-{}", ns.unwrap_or(""))),
            sandbox_id: Some(id.into()),
        })
    }

    fn sample() -> Vec<Workload> {
        group(vec![
            // A CRI pod: its sandbox, then two containers.
            Found {
                netns: 100,
                netns_path: Some("/run/netns/cni-1".into()),
                pid: Some(11),
                pod: pod("web", Some("default"), "sb-web-default"),
                container: c("sb1", "web sandbox", "containerd"),
                sandbox: true,
                ..Default::default()
            },
            Found {
                netns: 100,
                netns_path: Some("/run/netns/cni-1".into()),
                pod: pod("web", Some("default"), "sb-web-default"),
                container: c("c1", "web", "containerd"),
                ..Default::default()
            },
            Found {
                netns: 100,
                netns_path: Some("/run/netns/cni-1".into()),
                pod: pod("web", Some("default"), "sb-web-default"),
                container: c("c2", "sidecar", "containerd"),
                ..Default::default()
            },
            // The same name in another namespace.
            Found {
                netns: 200,
                netns_path: Some("/run/netns/cni-2".into()),
                pid: Some(22),
                pod: pod("web", Some("staging"), "sb-web-staging"),
                container: c("sb2", "web sandbox", "containerd"),
                sandbox: true,
                ..Default::default()
            },
            // Two Podman containers in one namespace (`--net container:ntc1`).
            Found {
                netns: 300,
                netns_path: Some("/proc/33/ns/net".into()),
                pid: Some(33),
                container: c("aaaa1111", "ntc1", "podman"),
                ..Default::default()
            },
            Found {
                netns: 300,
                netns_path: Some("/run/netns/netns-3".into()),
                pid: Some(34),
                container: c("bbbb2222", "ntshared", "podman"),
                ..Default::default()
            },
            // The cgroup scan sees c1 again (known) and one container no API knew.
            Found {
                netns: 100,
                netns_path: Some("/proc/12/ns/net".into()),
                pid: Some(12),
                container: c("c1", "c1", "containerd (cgroup scan)"),
                ..Default::default()
            },
            Found {
                netns: 400,
                netns_path: Some("/proc/44/ns/net".into()),
                pid: Some(44),
                container: c("dddd4444", "dddd4444", "docker (cgroup scan)"),
                ..Default::default()
            },
            // Two host-network pods: one workload each.
            Found {
                netns: 1,
                pid: Some(55),
                pod: pod("agent", Some("kube-system"), "sb-agent"),
                container: c("sb5", "agent sandbox", "containerd"),
                host_network: true,
                sandbox: true,
                ..Default::default()
            },
            Found {
                netns: 1,
                pid: Some(66),
                pod: pod("proxy", Some("kube-system"), "sb-proxy"),
                container: c("sb6", "proxy sandbox", "containerd"),
                host_network: true,
                sandbox: true,
                ..Default::default()
            },
        ])
    }

    #[test]
    fn one_workload_per_namespace() {
        let ws = sample();
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "pod default/web (containers: web, sidecar)",
                "pod staging/web",
                "containers ntc1, ntshared",
                "container dddd4444",
                "pod kube-system/agent (host network)",
                "pod kube-system/proxy (host network)",
            ]
        );
        assert_eq!(ws[0].kind, WorkloadKind::Pod);
        // The sandbox's process, not a container's, and no duplicate from the cgroup scan.
        assert_eq!(ws[0].pid, Some(11));
        assert_eq!(ws[0].containers.len(), 2);
        // The runtime's bind mount is preferred over /proc.
        assert_eq!(
            ws[2].netns_path.as_deref(),
            Some(Path::new("/run/netns/netns-3"))
        );
        assert_eq!(ws[2].kind, WorkloadKind::Container);
        assert!(ws[4].host_network && ws[5].host_network);
    }

    fn inventory() -> Inventory {
        Inventory {
            sources: vec![SourceReport {
                source: "cri",
                socket: Some("/run/containerd/containerd.sock".into()),
                runtime: Some("containerd 1.6.20".into()),
                found: 7,
                error: None,
                kept: 0,
            }],
            workloads: sample(),
        }
    }

    fn err(r: Result<Workload>) -> String {
        match r {
            Ok(w) => format!("unexpectedly found {}", w.name),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn finds_pods_by_name_namespace_uid_and_id() -> Result<()> {
        let inv = inventory();
        assert_eq!(inv.find_pod("web", Some("default"))?.netns, 100);
        assert_eq!(inv.find_pod("web", Some("staging"))?.netns, 200);
        assert_eq!(
            inv.find_pod("agent", None)?.name,
            "pod kube-system/agent (host network)"
        );
        assert_eq!(inv.find_pod("uid-web-staging", None)?.netns, 200);
        assert_eq!(inv.find_pod("sb-web-d", None)?.netns, 100);
        Ok(())
    }

    #[test]
    fn unknown_and_ambiguous_pods_are_sentences() {
        let inv = inventory();
        let e = err(inv.find_pod("web", None));
        assert_eq!(
            e,
            "pod \"web\" exists in 2 namespaces (default/web, staging/web): choose one with -n NAMESPACE"
        );
        let e = err(inv.find_pod("nope", None));
        assert!(
            e.starts_with("no pod \"nope\" on this node (pods here: default/web, kube-system/agent, kube-system/proxy, staging/web; asked containerd 1.6.20 at /run/containerd/containerd.sock)"),
            "{e}"
        );
        let e = err(inv.find_pod("web", Some("prod")));
        assert!(
            e.starts_with("no pod \"web\" in namespace \"prod\" on this node"),
            "{e}"
        );
        let empty = Inventory {
            sources: vec![SourceReport {
                source: "cgroup-scan",
                socket: None,
                runtime: None,
                found: 0,
                error: None,
                kept: 0,
            }],
            workloads: Vec::new(),
        };
        let e = err(empty.find_pod("web", None));
        assert!(e.contains("there are no pods here"), "{e}");
        assert!(e.contains("give --cri-socket or --docker-socket"), "{e}");
    }

    #[test]
    fn finds_containers_by_name_id_and_prefix() -> Result<()> {
        let inv = inventory();
        assert_eq!(
            inv.find_container("ntshared")?.name,
            "containers ntc1, ntshared"
        );
        assert_eq!(inv.find_container("aaaa1111")?.netns, 300);
        assert_eq!(inv.find_container("dddd")?.netns, 400);
        assert_eq!(inv.find_container("sidecar")?.netns, 100);
        let e = err(inv.find_container("zzz"));
        assert!(
            e.starts_with("no container \"zzz\" on this node (containers here: "),
            "{e}"
        );
        // Sandboxes are not containers a person names.
        assert!(!e.contains("sandbox"), "{e}");
        // Too short a prefix matches nothing rather than everything.
        assert!(inv.find_container("c").is_err());
        Ok(())
    }

    #[test]
    fn labels_keep_the_host_as_the_host() {
        let labels = inventory().labels();
        assert_eq!(
            labels.get(&100).map(|w| w.name.as_str()),
            Some("pod default/web (containers: web, sidecar)")
        );
        assert!(labels.contains_key(&300));
        // Host-network pods do not name a namespace; the host's name lists them.
        assert!(!labels.contains_key(&1));
        if let Some(h) = netns::host_inode() {
            assert_eq!(
                labels.get(&h).map(|w| w.name.as_str()),
                Some("host (and its host-network pod kube-system/agent, pod kube-system/proxy)")
            );
        }
    }
}

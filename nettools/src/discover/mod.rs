//! Finding what to trace: turning `--netns`, `--pid`, `--pod`, `--container` or `--all` into
//! network namespaces (by inode, the key every event carries) with names a person recognises.
//!
//! Pods and containers come from the node's container runtimes, one module per source: [`cri`]
//! (containerd, CRI-O), [`docker`] (Docker, Podman's Docker-compatible service), [`podman`]
//! (Podman's own files, for Podman without its service: read with [`bolt`]) and [`cgroup`]
//! (a /proc + cgroup scan when no runtime answers); [`inventory`] merges them into one workload
//! per network namespace and finds `--pod` / `--container` there; [`cache`] keeps the last
//! good answer of a runtime that stops answering, so its workloads keep their names (marked
//! stale); [`watch`] follows a pod or container during a trace.
//!
//! Every runtime call has deadlines ([`Limits`]): a runtime that hangs, dribbles or floods
//! costs at most those and shows as an error of that source, never as a stuck nettools.

pub mod bolt;
pub mod cache;
pub mod cgroup;
pub mod cri;
pub mod docker;
pub mod enter;
pub mod found;
pub mod inventory;
pub mod netlink;
pub mod netns;
pub mod podman;
pub mod veth;
pub mod watch;

use std::{path::PathBuf, time::Duration};

/// How long a container runtime may take, and how much it may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connecting to its socket.
    pub connect: Duration,
    /// One request, from connecting to the last byte of the answer.
    pub request: Duration,
    /// One source's whole listing (version, lists, every inspection).
    pub source: Duration,
    /// The largest answer read; a larger one fails the source.
    pub max_answer: usize,
    /// Requests in flight at once to one runtime (container inspections, sandbox statuses).
    pub concurrency: usize,
}

/// The limits nettools uses for every runtime.
pub const LIMITS: Limits = Limits {
    connect: Duration::from_secs(1),
    request: Duration::from_secs(5),
    source: Duration::from_secs(15),
    max_answer: 16 << 20,
    concurrency: 8,
};

/// `5 s`, `300 ms`: a limit in a sentence.
pub fn span(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// `16 MiB`, `1024 bytes`: a size limit in a sentence.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Text a runtime sent (an error message), fit for one line of a sentence: control
/// characters escaped, at most 200 characters.
pub fn quoted_text(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.trim().chars().enumerate() {
        if i == 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

use serde::Serialize;

/// What kind of thing a workload is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A named network namespace (`ip netns`) or one given by path.
    #[default]
    Netns,
    /// The network namespace of a process.
    Process,
    /// The host's own network namespace.
    Host,
    /// One interface traced directly (`--iface`): its traffic is seen from the interface.
    Interface,
    /// A pod (Kubernetes through CRI, or a Podman pod): one namespace shared by its containers.
    Pod,
    /// One container, or several sharing one namespace (`--net container:X`), not in a pod.
    Container,
}

/// Which kind of source named a workload (and its containers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamedBy {
    /// A runtime's API: CRI (containerd, CRI-O) or the Docker-compatible API (Docker, Podman's
    /// service).
    #[default]
    RuntimeApi,
    /// The runtime's own files: Podman's container store and state database.
    Storage,
    /// The cgroup scan of /proc: container ids, no names.
    CgroupScan,
}

impl NamedBy {
    /// `API`, `storage`, `cgroup scan`: the table's words.
    pub fn words(self) -> &'static str {
        match self {
            NamedBy::RuntimeApi => "API",
            NamedBy::Storage => "storage",
            NamedBy::CgroupScan => "cgroup scan",
        }
    }
}

/// The pod a workload is, as its runtime names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub name: String,
    /// The Kubernetes namespace (`None` for a Podman pod).
    pub namespace: Option<String>,
    /// The Kubernetes pod UID, when known.
    pub uid: Option<String>,
    /// The runtime's id of the pod: CRI sandbox id, Podman pod id.
    pub sandbox_id: Option<String>,
}

impl PodRef {
    /// `default/web`, or `web` for a pod without namespace.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// One container in a workload's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// Full container id.
    pub id: String,
    /// Its name (Docker/Podman name, or the CRI container name within its pod).
    pub name: String,
    /// Who reported it: `containerd`, `cri-o`, `podman`, `docker`, or `… (cgroup scan)`.
    pub runtime: String,
}

/// Something with its own network namespace: a named netns, a process, a container or pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// What a person calls it: the netns name, `pid 1234 (nginx)`, `host`, …
    pub name: String,
    pub kind: WorkloadKind,
    /// Inode of its network namespace.
    pub netns: u32,
    /// A path that holds the namespace open (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns_path: Option<PathBuf>,
    /// A process inside it, when known.
    pub pid: Option<u32>,
    /// Its veths' host-side ends (or, for [`WorkloadKind::Interface`], the interface itself):
    /// where the tc programs attach.
    pub veths: Vec<veth::HostVeth>,
    /// The pod this namespace belongs to, when it is one.
    pub pod: Option<PodRef>,
    /// The containers sharing this namespace (a pod's containers, `--net container:X`).
    pub containers: Vec<ContainerRef>,
    /// Whether the pod or container uses the host's network namespace: its traffic is then
    /// the host's, not its own.
    pub host_network: bool,
    /// Addresses inside the namespace (`10.233.0.2/24`), loopback left out.
    pub addresses: Vec<String>,
    /// Named from a runtime's last good answer: that runtime fails now, and the namespace
    /// still exists (see [`cache`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Which kind of source named it (`None` for what no runtime reported: a named netns, a
    /// process, the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub named_by: Option<NamedBy>,
}

impl Workload {
    /// Fills in `veths` from the namespace (a workload without a path or veth keeps none).
    pub fn discover_veths(&mut self) -> anyhow::Result<()> {
        self.discover_veths_among(None)
    }

    /// The same, with the host's links already dumped (`None`: dump them now, if needed).
    pub fn discover_veths_among(&mut self, host: Option<&[netlink::Link]>) -> anyhow::Result<()> {
        if self.kind == WorkloadKind::Interface
            || self.kind == WorkloadKind::Host
            || self.host_network
            || !self.veths.is_empty()
        {
            return Ok(());
        }
        if let Some(path) = &self.netns_path {
            self.veths = match host {
                Some(links) => veth::host_veths_among(path, links)?,
                None => veth::host_veths(path)?,
            };
        }
        Ok(())
    }
}

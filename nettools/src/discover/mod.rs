//! Finding what to trace: turning `--netns`, `--pid` or `--all` into network namespaces (by
//! inode, the key every event carries) with names a person recognises.

pub mod netlink;
pub mod netns;
pub mod veth;

use std::path::PathBuf;

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
}

impl Workload {
    /// Fills in `veths` from the namespace (a workload without a path or veth keeps none).
    pub fn discover_veths(&mut self) -> anyhow::Result<()> {
        if self.kind == WorkloadKind::Interface
            || self.kind == WorkloadKind::Host
            || !self.veths.is_empty()
        {
            return Ok(());
        }
        if let Some(path) = &self.netns_path {
            self.veths = veth::host_veths(path)?;
        }
        Ok(())
    }
}

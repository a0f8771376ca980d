//! One container or pod sandbox as a runtime source reports it (CRI, the Docker API, the
//! cgroup scan), before [`inventory`](super::inventory) groups them by network namespace.

use std::path::{Path, PathBuf};

use super::{ContainerRef, NamedBy, PodRef, netns};

/// One container or pod sandbox as a source reports it, before grouping by namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Inode of its network namespace.
    pub netns: u32,
    pub netns_path: Option<PathBuf>,
    pub pid: Option<u32>,
    pub pod: Option<PodRef>,
    pub container: Option<ContainerRef>,
    pub host_network: bool,
    /// A pod's sandbox (pause or infra container): holds the namespace, not named as a
    /// container of the pod.
    pub sandbox: bool,
    /// From its source's last good answer: that source fails now (see
    /// [`RuntimeCache`](super::cache::RuntimeCache)).
    pub stale: bool,
    /// The kind of source that reported it.
    pub named_by: NamedBy,
}

impl Found {
    /// Whether its network namespace still exists (its path still holds that inode).
    pub fn still_there(&self) -> bool {
        self.netns_path
            .as_deref()
            .is_some_and(|p| still_there(p, self.netns))
    }
}

/// Whether a path still holds the namespace `inode`.
pub fn still_there(path: &Path, inode: u32) -> bool {
    netns::inode_of(path) == Some(inode)
}

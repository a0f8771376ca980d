//! Finding what to trace: turning `--netns`, `--pid` or `--all` into network namespaces (by
//! inode, the key every event carries) with names a person recognises.

pub mod netns;

use std::path::PathBuf;

use serde::Serialize;

/// Something with its own network namespace: a named netns, a process, a container or pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// What a person calls it: the netns name, `pid 1234 (nginx)`, `host`, …
    pub name: String,
    /// Inode of its network namespace.
    pub netns: u32,
    /// A path that holds the namespace open (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns_path: Option<PathBuf>,
    /// A process inside it, when known.
    pub pid: Option<u32>,
}

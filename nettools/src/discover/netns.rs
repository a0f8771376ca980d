//! Network namespaces by name (`ip netns`), by path and by process, and labels for every
//! namespace on the node (for `--all`).

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};

use super::{Workload, WorkloadKind};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Inode of the namespace behind a path, if the path is a network namespace.
pub fn inode_of(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    // nsfs inodes fit in 32 bits (the kernel's ns.inum is an unsigned int).
    u32::try_from(meta.ino()).ok()
}

/// The host's (this process's) network namespace inode.
pub fn host_inode() -> Option<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// Named namespaces (`ip netns list`): name → path.
pub fn named() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for dir in NETNS_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.entry(name).or_insert_with(|| entry.path());
        }
    }
    out
}

/// Whether a path is a network namespace handle (nsfs), not just any file.
fn is_netns(path: &Path) -> bool {
    // A namespace file and /proc/self/ns/net share the nsfs device.
    let (Ok(a), Ok(b)) = (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        return false;
    };
    a.dev() == b.dev()
}

/// `--netns NAME|PATH`.
pub fn by_name_or_path(spec: &str) -> Result<Workload> {
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        match named().remove(spec) {
            Some(p) => p,
            None => {
                let known: Vec<String> = named().into_keys().collect();
                let listing = if known.is_empty() {
                    "there are no named network namespaces (ip netns list is empty)".to_string()
                } else {
                    format!("named namespaces here: {}", known.join(", "))
                };
                bail!("no network namespace named {spec:?}: {listing}");
            }
        }
    };
    if !path.exists() {
        bail!(
            "{} does not exist: give a network namespace name (ip netns list) or a path such as /proc/PID/ns/net",
            path.display()
        );
    }
    if !is_netns(&path) {
        bail!(
            "{} is not a network namespace: give a name from `ip netns list` or a path such as /proc/PID/ns/net",
            path.display()
        );
    }
    let Some(netns) = inode_of(&path) else {
        bail!("cannot read the namespace inode of {}", path.display());
    };
    Ok(Workload {
        name: if spec.contains('/') {
            path.display().to_string()
        } else {
            spec.to_string()
        },
        kind: if Some(netns) == host_inode() {
            WorkloadKind::Host
        } else {
            WorkloadKind::Netns
        },
        netns,
        netns_path: Some(path),
        ..Default::default()
    })
}

/// The command name of a process, for labels.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `--pid PID`.
pub fn by_pid(pid: u32) -> Result<Workload> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("there is no process with pid {pid}");
    }
    let Some(netns) = inode_of(&path) else {
        bail!("cannot read the network namespace of pid {pid}: run nettools as root");
    };
    let name = match comm(pid) {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    };
    Ok(Workload {
        name,
        kind: if Some(netns) == host_inode() {
            WorkloadKind::Host
        } else {
            WorkloadKind::Process
        },
        netns,
        netns_path: Some(path),
        pid: Some(pid),
        ..Default::default()
    })
}

/// `--iface NAME`: one interface of this (the host's) namespace, traced directly.
pub fn by_interface(name: &str) -> Result<Workload> {
    let links = super::netlink::links()?;
    let Some(link) = links.iter().find(|l| l.name == name) else {
        let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        bail!(
            "there is no interface {name:?} in this network namespace: interfaces here: {}",
            names.join(", ")
        );
    };
    let netns = host_inode().unwrap_or(0);
    Ok(Workload {
        name: format!("interface {name}"),
        kind: WorkloadKind::Interface,
        netns,
        netns_path: Some(PathBuf::from("/proc/self/ns/net")),
        pid: None,
        veths: vec![super::veth::HostVeth {
            name: link.name.clone(),
            ifindex: link.index,
            bridge: link
                .master
                .and_then(|m| links.iter().find(|b| b.index == m))
                .map(|b| b.name.clone()),
            inner_name: String::new(),
            inner_ifindex: 0,
        }],
        ..Default::default()
    })
}

/// A label for every network namespace on the node: named namespaces first, then the host,
/// then one process per remaining namespace.
pub fn labels() -> BTreeMap<u32, Workload> {
    let mut out = BTreeMap::new();
    for (name, path) in named() {
        if let Some(netns) = inode_of(&path) {
            out.entry(netns).or_insert(Workload {
                name,
                netns,
                netns_path: Some(path),
                ..Default::default()
            });
        }
    }
    if let Some(host) = host_inode() {
        out.entry(host).or_insert(Workload {
            name: "host".to_string(),
            kind: WorkloadKind::Host,
            netns: host,
            netns_path: Some(PathBuf::from("/proc/self/ns/net")),
            ..Default::default()
        });
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Some(netns) = inode_of(&path) {
                out.entry(netns).or_insert_with(|| Workload {
                    name: match comm(pid) {
                        Some(c) => format!("pid {pid} ({c})"),
                        None => format!("pid {pid}"),
                    },
                    kind: WorkloadKind::Process,
                    netns,
                    netns_path: Some(path),
                    pid: Some(pid),
                    ..Default::default()
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_name_is_a_sentence() {
        let err = by_name_or_path("surely-no-such-netns-xyz")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("no network namespace named")));
    }

    #[test]
    fn a_regular_file_is_not_a_namespace() {
        let err = by_name_or_path("/etc/hostname")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("is not a network namespace")),);
    }

    #[test]
    fn own_namespace_by_path_and_pid() -> Result<()> {
        let me = std::process::id();
        let w = by_pid(me)?;
        assert_eq!(Some(w.netns), host_inode());
        let p = by_name_or_path(&format!("/proc/{me}/ns/net"))?;
        assert_eq!(p.netns, w.netns);
        assert!(by_pid(u32::MAX - 1).is_err());
        Ok(())
    }
}

//! The fallback source when no runtime API answers: a scan of `/proc/*/cgroup`. Container
//! runtimes put each container in a cgroup named after its id (`/kubepods/besteffort/pod<uid>/<id>`,
//! `/libpod_parent/<pod>/libpod-<id>`, `/docker/<id>`, `…/cri-containerd-<id>.scope`), so a
//! process's cgroup path gives its container id and, for Kubernetes, its pod UID; the process
//! gives the network namespace.

use std::{collections::BTreeMap, path::PathBuf};

use super::{ContainerRef, PodRef, found::Found, netns};

/// What a cgroup path says about the container a process runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupContainer {
    /// The 64-hex container id.
    pub id: String,
    /// `kubernetes`, `podman`, `docker`, `containerd`, `cri-o`: who made the cgroup.
    pub runtime: &'static str,
    /// The Kubernetes pod UID (from `pod<uid>` or `kubepods-…-pod<uid>.slice`).
    pub pod_uid: Option<String>,
    /// The Podman pod id (from `/libpod_parent/<pod>/…` or `machine-libpod_pod_<pod>.slice`).
    pub podman_pod: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Kubernetes pod UID in a cgroup component: `pod<uid>` (cgroupfs) or
/// `kubepods-besteffort-pod<uid with _>.slice` (systemd).
fn pod_uid(component: &str) -> Option<String> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    let at = c.rfind("pod")?;
    // `kubepods` itself is not a pod.
    let rest = &c[at + 3..];
    let uid = rest.replace('_', "-");
    let looks_like_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    looks_like_uid.then_some(uid)
}

/// Parses one cgroup path (`/kubepods/besteffort/pod<uid>/<id>`, …). `None` when the path is
/// not a container's, or is a runtime's helper (conmon).
pub fn parse(path: &str) -> Option<CgroupContainer> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let last = components.last()?;
    let leaf = last.strip_suffix(".scope").unwrap_or(last);
    if leaf.contains("conmon") {
        return None;
    }
    let (prefix_runtime, id) = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ]
    .iter()
    .find_map(|(prefix, rt)| leaf.strip_prefix(prefix).map(|id| (Some(*rt), id)))
    .unwrap_or((None, leaf));
    if !is_id(id) {
        return None;
    }
    let parents = &components[..components.len() - 1];
    let kube = parents.iter().any(|c| c.starts_with("kubepods"));
    let libpod = parents
        .iter()
        .any(|c| c.starts_with("libpod_parent") || c.contains("libpod_pod_"))
        || prefix_runtime == Some("podman");
    let runtime = if kube {
        prefix_runtime.unwrap_or("kubernetes")
    } else if libpod {
        "podman"
    } else if let Some(rt) = prefix_runtime {
        rt
    } else if parents.first() == Some(&"docker") {
        "docker"
    } else if parents.len() == 1 {
        // `ctr run` puts a container in `/<containerd namespace>/<id>`.
        "containerd"
    } else {
        return None;
    };
    let pod_uid = if kube {
        parents.iter().rev().find_map(|c| pod_uid(c))
    } else {
        None
    };
    let podman_pod = if libpod {
        parents.iter().rev().find_map(|c| {
            let c = c.strip_suffix(".slice").unwrap_or(c);
            let id = c.rsplit("libpod_pod_").next().unwrap_or(c);
            is_id(id).then(|| id.to_string())
        })
    } else {
        None
    };
    Some(CgroupContainer {
        id: id.to_string(),
        runtime,
        pod_uid,
        podman_pod,
    })
}

/// The container a process runs in, from `/proc/PID/cgroup` (every hierarchy is tried: on a
/// hybrid v1/v2 node the unified line may be just `/`).
pub fn of_process(cgroup_file: &str) -> Option<CgroupContainer> {
    cgroup_file
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(parse)
}

/// Every container found through the processes' cgroups, with the namespace of its first
/// process. Containers whose processes cannot be read are left out.
pub fn scan() -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut by_id: BTreeMap<String, (CgroupContainer, u32)> = BTreeMap::new();
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if let Some(c) = of_process(&text) {
            by_id.entry(c.id.clone()).or_insert((c, pid));
        }
    }
    let host = netns::host_inode();
    by_id
        .into_values()
        .filter_map(|(c, pid)| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            let inode = netns::inode_of(&path)?;
            let pod = c
                .pod_uid
                .as_ref()
                .map(|uid| PodRef {
                    name: format!("uid {uid}"),
                    namespace: None,
                    uid: Some(uid.clone()),
                    sandbox_id: None,
                })
                .or_else(|| {
                    c.podman_pod.as_ref().map(|id| PodRef {
                        name: format!("podman pod {}", &id[..12]),
                        namespace: None,
                        uid: None,
                        sandbox_id: Some(id.clone()),
                    })
                });
            Some(Found {
                netns: inode,
                netns_path: Some(path),
                pid: Some(pid),
                pod,
                container: Some(ContainerRef {
                    name: c.id[..12].to_string(),
                    id: c.id,
                    runtime: format!("{} (cgroup scan)", c.runtime),
                }),
                host_network: Some(inode) == host,
                sandbox: false,
                stale: false,
                named_by: super::NamedBy::CgroupScan,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "faba427618a88f6c9efa2771c5c52b590743e21a98ef97fb5dc5460c9f47a966";
    const POD: &str = "6b43e246d78af319851956951f4a5cab6eb6afb0c2d0acb68ea0e72431542183";
    const UID: &str = "3f1c2a4e-7b9d-4c1e-9a2b-0d5e6f7a8b9c";

    #[test]
    fn kubepods_cgroupfs_and_systemd() {
        let c = parse(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(
            c,
            Some(CgroupContainer {
                id: ID.into(),
                runtime: "kubernetes",
                pod_uid: Some(UID.into()),
                podman_pod: None,
            })
        );
        // Guaranteed pods have no QoS level in the path.
        let c = parse(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(c.and_then(|c| c.pod_uid), Some(UID.to_string()));
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let c = parse(&systemd);
        assert_eq!(
            c.as_ref().map(|c| (c.id.as_str(), c.runtime)),
            Some((ID, "containerd"))
        );
        assert_eq!(c.and_then(|c| c.pod_uid), Some(UID.to_string()));
        let crio = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(parse(&crio).map(|c| c.runtime), Some("cri-o"));
        // The QoS and pod levels themselves are not containers.
        assert_eq!(parse(&format!("/kubepods/besteffort/pod{UID}")), None);
        assert_eq!(parse("/kubepods/besteffort"), None);
    }

    #[test]
    fn podman_docker_containerd() {
        let c = parse(&format!("/libpod_parent/libpod-{ID}"));
        assert_eq!(
            c,
            Some(CgroupContainer {
                id: ID.into(),
                runtime: "podman",
                pod_uid: None,
                podman_pod: None,
            })
        );
        let c = parse(&format!("/libpod_parent/{POD}/libpod-{ID}"));
        assert_eq!(c.and_then(|c| c.podman_pod), Some(POD.to_string()));
        let c = parse(&format!(
            "/machine.slice/machine-libpod_pod_{POD}.slice/libpod-{ID}.scope"
        ));
        assert_eq!(c.and_then(|c| c.podman_pod), Some(POD.to_string()));
        // conmon watches a container from outside it: not the container.
        assert_eq!(parse("/libpod_parent/conmon"), None);
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            parse(&format!("/docker/{ID}")).map(|c| c.runtime),
            Some("docker")
        );
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope")).map(|c| c.runtime),
            Some("docker")
        );
        assert_eq!(
            parse(&format!("/default/{ID}")).map(|c| c.runtime),
            Some("containerd")
        );
        // Not containers.
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(parse(&format!("/a/b/{ID}")), None);
        assert_eq!(parse("/docker/not-an-id"), None);
    }

    #[test]
    fn hybrid_layout_uses_any_hierarchy() {
        let file = format!(
            "9:name=systemd:/libpod_parent/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n0::/\n"
        );
        assert_eq!(of_process(&file).map(|c| c.id), Some(ID.to_string()));
        assert_eq!(of_process("0::/\n4:memory:/process_api/abc\n"), None);
    }
}

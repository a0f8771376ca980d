//! The Kubernetes Container Runtime Interface (containerd, CRI-O) over its unix socket: the pod
//! sandboxes a kubelet made, with their Kubernetes names (`io.kubernetes.pod.name` /
//! `io.kubernetes.pod.namespace`), their network namespace and process (from the sandbox's
//! verbose status, as `crictl inspectp` shows it) and the containers in each.
//!
//! Every call runs under [`Limits`]: a connect timeout, a deadline per call, a cap on the
//! size of an answer; sandbox statuses are asked a few at a time. A sandbox removed between
//! the list and its status is left out; any other failure fails the whole answer, so that a
//! runtime's hiccup never makes pods vanish.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{StreamExt as _, stream};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStateValue, ListContainersRequest,
    ListPodSandboxRequest, NamespaceMode, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, VersionRequest, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::{ContainerRef, LIMITS, Limits, PodRef, found::Found, netns, quoted_text, span};

/// Where CRI runtimes listen (`$CONTAINER_RUNTIME_ENDPOINT` comes first, as for crictl).
pub const DEFAULT_SOCKETS: [&str; 4] = [
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/cri-dockerd.sock",
];

/// The sockets to ask: the one given, else `$CONTAINER_RUNTIME_ENDPOINT` and the defaults that
/// exist.
pub fn sockets(given: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = given {
        return vec![p.to_path_buf()];
    }
    let env = std::env::var("CONTAINER_RUNTIME_ENDPOINT").ok();
    let from_env = env
        .as_deref()
        .map(|e| e.strip_prefix("unix://").unwrap_or(e))
        .filter(|e| e.starts_with('/'))
        .map(PathBuf::from);
    let mut out: Vec<PathBuf> = Vec::new();
    for p in from_env
        .into_iter()
        .chain(DEFAULT_SOCKETS.iter().map(PathBuf::from))
    {
        if p.exists() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// A connected RuntimeService client.
pub async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>> {
    connect_within(socket, &LIMITS)
        .await
        .with_context(|| format!("cannot connect to {}", socket.display()))
}

/// A connected RuntimeService client, within the limits' connect timeout; answers may be up
/// to the limits' size. The error is the end of a sentence.
async fn connect_within(socket: &Path, limits: &Limits) -> Result<RuntimeServiceClient<Channel>> {
    let path = socket.to_path_buf();
    // The URI is ignored: every connection goes to the socket.
    let endpoint = Endpoint::from_static("http://cri.sock")
        .connect_timeout(limits.connect)
        .timeout(limits.request);
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        }
    }));
    let channel = match tokio::time::timeout(limits.connect, connecting).await {
        Err(_) => bail!(
            "no connection within {} (the socket accepts nothing)",
            span(limits.connect)
        ),
        Ok(Err(e)) => {
            let io = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(|io| io.kind());
            match io {
                Some(std::io::ErrorKind::NotFound) => {
                    bail!("cannot connect: the socket does not exist")
                }
                Some(std::io::ErrorKind::ConnectionRefused) => {
                    bail!("cannot connect: nothing listens on the socket (connection refused)")
                }
                Some(std::io::ErrorKind::PermissionDenied) => {
                    bail!("cannot connect: permission denied")
                }
                _ => bail!("cannot connect ({e})"),
            }
        }
        Ok(Ok(c)) => c,
    };
    Ok(RuntimeServiceClient::new(channel).max_decoding_message_size(limits.max_answer))
}

/// One CRI call within the limits' deadline; the error is the end of a sentence.
async fn call<T>(
    limits: &Limits,
    name: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limits.request, call).await {
        Err(_) => Err(CallError::Failed(anyhow!(
            "no answer to {name} within {}",
            span(limits.request)
        ))),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Err(CallError::NotFound),
        Ok(Err(s)) if s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired" => {
            Err(CallError::Failed(anyhow!(
                "no answer to {name} within {}",
                span(limits.request)
            )))
        }
        Ok(Err(s)) => Err(CallError::Failed(anyhow!(
            "{name} failed: {}",
            quoted_text(s.message())
        ))),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// Why a call gave nothing.
enum CallError {
    /// What was asked about does not exist (any more).
    NotFound,
    Failed(anyhow::Error),
}

impl From<CallError> for anyhow::Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound => anyhow!("the runtime answered \"not found\""),
            CallError::Failed(e) => e,
        }
    }
}

/// The runtime behind a socket, e.g. `containerd 1.6.20~ds1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    pub name: String,
    pub version: String,
}

/// One sandbox's process and namespace, from its verbose status (`info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxInfo {
    pub pid: Option<u32>,
    /// The network namespace's path from the sandbox's OCI spec, if it has its own.
    pub netns_path: Option<PathBuf>,
}

/// Reads the pid and network namespace path out of a verbose `PodSandboxStatus` info map
/// (containerd puts one JSON document under `info`; CRI-O's has the same fields).
pub fn parse_verbose_info(info: &HashMap<String, String>) -> SandboxInfo {
    let mut out = SandboxInfo::default();
    for text in info.values() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            continue;
        };
        if out.pid.is_none() {
            out.pid = v["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0);
        }
        if out.netns_path.is_none()
            && let Some(namespaces) = v["runtimeSpec"]["linux"]["namespaces"].as_array()
        {
            out.netns_path = namespaces
                .iter()
                .find(|n| n["type"] == "network")
                .and_then(|n| n["path"].as_str())
                .filter(|p| !p.is_empty())
                .map(PathBuf::from);
        }
    }
    out
}

/// The pod's Kubernetes name, namespace and UID: the kubelet's labels first, the sandbox
/// metadata otherwise.
pub fn pod_ref(
    labels: &HashMap<String, String>,
    metadata: Option<&k8s_cri::v1::PodSandboxMetadata>,
    sandbox_id: &str,
) -> PodRef {
    let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    PodRef {
        name: label("io.kubernetes.pod.name")
            .or_else(|| metadata.map(|m| m.name.clone()))
            .unwrap_or_default(),
        namespace: label("io.kubernetes.pod.namespace").or_else(|| {
            metadata
                .map(|m| m.namespace.clone())
                .filter(|n| !n.is_empty())
        }),
        uid: label("io.kubernetes.pod.uid")
            .or_else(|| metadata.map(|m| m.uid.clone()).filter(|n| !n.is_empty())),
        sandbox_id: Some(sandbox_id.to_string()),
    }
}

/// Every ready pod sandbox and running container the runtime at `socket` knows; the error
/// is the end of a sentence saying what went wrong.
pub async fn query(socket: &Path) -> Result<(Runtime, Vec<Found>)> {
    query_within(socket, &LIMITS).await
}

/// [`query`] under other limits.
pub async fn query_within(socket: &Path, limits: &Limits) -> Result<(Runtime, Vec<Found>)> {
    let mut client = connect_within(socket, limits).await?;
    let version = call(
        limits,
        "the CRI Version call",
        client.version(VersionRequest {
            version: "v1".into(),
        }),
    )
    .await?;
    let runtime = Runtime {
        name: version.runtime_name,
        version: version.runtime_version,
    };
    let sandboxes = call(
        limits,
        "ListPodSandbox",
        client.list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        }),
    )
    .await?
    .items;
    let containers = call(
        limits,
        "ListContainers",
        client.list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        }),
    )
    .await?
    .containers;
    // The statuses a few at a time, on the one connection (HTTP/2 streams).
    let statuses: Vec<_> = stream::iter(sandboxes)
        .map(|sandbox| {
            let mut client = client.clone();
            async move {
                let status = call(
                    limits,
                    "PodSandboxStatus",
                    client.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: sandbox.id.clone(),
                        verbose: true,
                    }),
                )
                .await;
                (sandbox, status)
            }
        })
        .buffered(limits.concurrency.max(1))
        .collect()
        .await;
    let host = netns::host_inode();
    let mut out = Vec::new();
    for (sandbox, status) in statuses {
        let status = match status {
            Ok(s) => s,
            // Removed between the list and the status.
            Err(CallError::NotFound) => {
                log::debug!("sandbox {} is gone", sandbox.id);
                continue;
            }
            Err(CallError::Failed(e)) => return Err(e),
        };
        let info = parse_verbose_info(&status.info);
        let host_network = status
            .status
            .as_ref()
            .and_then(|s| s.linux.as_ref())
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .is_some_and(|o| o.network == NamespaceMode::Node as i32);
        let proc_path = info.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net")));
        let readable = |p: &Option<PathBuf>| {
            p.as_ref()
                .and_then(|p| netns::inode_of(p).map(|i| (p.clone(), i)))
        };
        let Some((netns_path, inode)) = readable(&info.netns_path).or_else(|| readable(&proc_path))
        else {
            log::debug!("sandbox {} has no readable network namespace", sandbox.id);
            continue;
        };
        let pod = pod_ref(&sandbox.labels, sandbox.metadata.as_ref(), &sandbox.id);
        let host_network = host_network || Some(inode) == host;
        out.push(Found {
            netns: inode,
            netns_path: Some(netns_path.clone()),
            pid: info.pid,
            pod: Some(pod.clone()),
            container: Some(ContainerRef {
                id: sandbox.id.clone(),
                name: format!("{} sandbox", pod.name),
                runtime: runtime.name.clone(),
            }),
            host_network,
            sandbox: true,
            stale: false,
            named_by: super::NamedBy::RuntimeApi,
        });
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sandbox.id) {
            out.push(Found {
                netns: inode,
                netns_path: Some(netns_path.clone()),
                pid: None,
                pod: Some(pod.clone()),
                container: Some(ContainerRef {
                    id: c.id.clone(),
                    name: c
                        .metadata
                        .as_ref()
                        .map(|m| m.name.clone())
                        .or_else(|| c.labels.get("io.kubernetes.container.name").cloned())
                        .unwrap_or_else(|| c.id.chars().take(12).collect()),
                    runtime: runtime.name.clone(),
                }),
                host_network,
                sandbox: false,
                stale: false,
                named_by: super::NamedBy::RuntimeApi,
            });
        }
    }
    Ok((runtime, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.6's verbose sandbox info (trimmed).
    const CONTAINERD_INFO: &str = r#"{"pid":4242,"processStatus":"running",
        "netNamespaceClosed":false,"image":"localhost/ntpause:latest","snapshotKey":"x",
        "runtimeHandler":"","runtimeType":"io.containerd.runc.v2",
        "runtimeSpec":{"ociVersion":"1.0.2-dev","process":{"args":["/pause"]},
          "linux":{"cgroupsPath":"/kubepods/besteffort/podu/abc",
            "namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},
              {"type":"network","path":"/var/run/netns/cni-0b5c7b1e-4b8a-5f2e-1c2d-3e4f5a6b7c8d"}]}},
        "cniResult":{"Interfaces":{"eth0":{"IPConfigs":[{"IP":"10.234.0.2","Gateway":"10.234.0.1"}]}}}}"#;

    #[test]
    fn reads_pid_and_netns_from_verbose_info() {
        let info = HashMap::from([("info".to_string(), CONTAINERD_INFO.to_string())]);
        assert_eq!(
            parse_verbose_info(&info),
            SandboxInfo {
                pid: Some(4242),
                netns_path: Some(PathBuf::from(
                    "/var/run/netns/cni-0b5c7b1e-4b8a-5f2e-1c2d-3e4f5a6b7c8d"
                )),
            }
        );
        // A host-network sandbox has a network namespace entry without a path, or none.
        let host = CONTAINERD_INFO.replace(
            r#"{"type":"network","path":"/var/run/netns/cni-0b5c7b1e-4b8a-5f2e-1c2d-3e4f5a6b7c8d"}"#,
            r#"{"type":"cgroup"}"#,
        );
        let info = HashMap::from([("info".to_string(), host)]);
        assert_eq!(
            parse_verbose_info(&info),
            SandboxInfo {
                pid: Some(4242),
                netns_path: None
            }
        );
        // Garbage and missing fields give nothing rather than an error.
        let junk = HashMap::from([
            ("info".to_string(), "not json".to_string()),
            ("other".to_string(), r#"{"pid":0}"#.to_string()),
        ]);
        assert_eq!(parse_verbose_info(&junk), SandboxInfo::default());
    }

    #[test]
    fn kubelet_labels_name_the_pod() {
        let meta = k8s_cri::v1::PodSandboxMetadata {
            name: "meta-name".into(),
            uid: "meta-uid".into(),
            namespace: "meta-ns".into(),
            attempt: 0,
        };
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_string(), "web".to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "shop".to_string(),
            ),
        ]);
        let p = pod_ref(&labels, Some(&meta), "sb1");
        assert_eq!(p.display(), "shop/web");
        assert_eq!(p.uid.as_deref(), Some("meta-uid"));
        assert_eq!(p.sandbox_id.as_deref(), Some("sb1"));
        let p = pod_ref(&HashMap::new(), Some(&meta), "sb1");
        assert_eq!(p.display(), "meta-ns/meta-name");
    }

    #[test]
    fn a_given_socket_is_the_only_one() {
        let given = PathBuf::from("/nonexistent/cri.sock");
        assert_eq!(sockets(Some(&given)), vec![given]);
    }
}

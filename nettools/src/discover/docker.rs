//! The Docker-compatible Engine API over its unix socket: Docker itself, and Podman's
//! `podman system service`. Gives every running container with its name, main process and
//! network namespace; on Podman also the pod each container belongs to (Podman's own
//! `libpod` endpoint on the same socket). A tiny HTTP/1.1 client: one `GET` per connection.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;

use super::{ContainerRef, PodRef, inventory::Found, netns};

/// Where Docker and Podman listen by default (`$DOCKER_HOST` comes first when it is a socket).
pub const DEFAULT_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The sockets to ask: the one given, else `$DOCKER_HOST` and the defaults that exist.
pub fn sockets(given: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = given {
        return vec![p.to_path_buf()];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let env = std::env::var("DOCKER_HOST").ok();
    let from_env = env
        .as_deref()
        .and_then(|h| h.strip_prefix("unix://"))
        .map(PathBuf::from);
    for p in from_env
        .into_iter()
        .chain(DEFAULT_SOCKETS.iter().map(PathBuf::from))
    {
        let canonical = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if p.exists()
            && !out
                .iter()
                .any(|o| std::fs::canonicalize(o).ok() == Some(canonical.clone()))
        {
            out.push(p);
        }
    }
    out
}

/// An HTTP response: status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Splits a raw HTTP/1.x response into status and (de-chunked) body.
pub fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer is not HTTP (no end of headers)")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the answer is not HTTP: {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes `Transfer-Encoding: chunked`.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunked answer ended early")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("a chunked answer ended early");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// A client for one Engine API socket.
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// `GET path`; fails on connection errors, not on HTTP errors.
    pub fn get(&self, path: &str) -> Result<Response> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: nettools\r\nConnection: close\r\n\r\n"
        )
        .with_context(|| format!("cannot send a request to {}", self.socket.display()))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("no answer from {}", self.socket.display()))?;
        parse_response(&raw).with_context(|| format!("{} answered oddly", self.socket.display()))
    }

    /// `GET path` that must answer 200 with JSON.
    fn json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let r = self.get(path)?;
        if r.status != 200 {
            bail!(
                "{} answered {} to {path}: {}",
                self.socket.display(),
                r.status,
                api_message(&r.body)
            );
        }
        serde_json::from_slice(&r.body)
            .with_context(|| format!("cannot decode {}'s answer to {path}", self.socket.display()))
    }

    /// Which engine this is: `podman` or `docker`, with its version.
    pub fn engine(&self) -> Result<Engine> {
        let v: Version = self.json("/version")?;
        Ok(v.engine())
    }

    /// Every running container, with pods on Podman.
    pub fn containers(&self) -> Result<(Engine, Vec<Found>)> {
        let engine = self.engine()?;
        let listed: Vec<Listed> = self.json("/v1.40/containers/json")?;
        // Podman knows pods; its own endpoint says which pod each container is in.
        let pods: HashMap<String, LibpodListed> = if engine.name == "podman" {
            self.json::<Vec<LibpodListed>>("/v4.0.0/libpod/containers/json")
                .map(|v| v.into_iter().map(|c| (c.id.clone(), c)).collect())
                .unwrap_or_else(|e| {
                    log::debug!("no pods from podman: {e:#}");
                    HashMap::new()
                })
        } else {
            HashMap::new()
        };
        let host = netns::host_inode();
        let mut out = Vec::new();
        for c in listed {
            let inspect: Inspect = match self.json(&format!("/v1.40/containers/{}/json", c.id)) {
                Ok(i) => i,
                // Gone between the list and the inspection.
                Err(e) => {
                    log::debug!("cannot inspect container {}: {e:#}", c.id);
                    continue;
                }
            };
            if let Some(found) = found(&engine, &inspect, pods.get(&c.id), host) {
                out.push(found);
            }
        }
        Ok((engine, out))
    }
}

/// The `message` of an Engine API error body, or the body itself.
pub fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        message: String,
    }
    serde_json::from_slice::<ApiError>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}

/// Docker or Podman, and its version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Engine {
    /// `podman` or `docker`.
    pub name: &'static str,
    pub version: String,
}

/// `GET /version`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Version {
    pub version: String,
    pub components: Vec<Component>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Component {
    pub name: String,
    pub version: String,
}

impl Version {
    pub fn engine(&self) -> Engine {
        match self.components.iter().find(|c| c.name.contains("Podman")) {
            Some(p) => Engine {
                name: "podman",
                version: p.version.clone(),
            },
            None => Engine {
                name: "docker",
                version: self.version.clone(),
            },
        }
    }
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Listed {
    pub id: String,
    pub names: Vec<String>,
}

/// One entry of Podman's `GET /libpod/containers/json`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LibpodListed {
    pub id: String,
    pub pod: String,
    pub pod_name: String,
    pub is_infra: bool,
}

/// `GET /containers/{id}/json`, the parts nettools uses.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Inspect {
    pub id: String,
    /// `/name`.
    pub name: String,
    pub state: State,
    pub host_config: HostConfig,
    pub network_settings: NetworkSettings,
    pub config: Option<Config>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct State {
    pub running: bool,
    pub pid: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// `bridge`, `host`, `container:<id>`, a network name, …
    pub network_mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    /// The namespace's bind mount (`/run/netns/netns-…`, `/var/run/docker/netns/…`).
    pub sandbox_key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Config {
    pub labels: Option<HashMap<String, String>>,
}

/// What one inspected container contributes: its namespace, process, pod and name. `None`
/// for a container that is not running or whose namespace cannot be read.
pub fn found(
    engine: &Engine,
    c: &Inspect,
    libpod: Option<&LibpodListed>,
    host: Option<u32>,
) -> Option<Found> {
    if !c.state.running || c.state.pid == 0 {
        return None;
    }
    let proc_path = PathBuf::from(format!("/proc/{}/ns/net", c.state.pid));
    let sandbox = PathBuf::from(&c.network_settings.sandbox_key);
    // The bind mount outlives the process and names the namespace for people; the process is
    // the fallback (and the only handle for host-network containers).
    let (netns_path, inode) = match (
        !c.network_settings.sandbox_key.is_empty(),
        netns::inode_of(&sandbox),
        netns::inode_of(&proc_path),
    ) {
        (true, Some(i), Some(p)) if i == p => (sandbox, i),
        (_, _, Some(p)) => (proc_path, p),
        _ => return None,
    };
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let name = c.name.trim_start_matches('/').to_string();
    // Containers a kubelet made through Docker (dockershim, cri-dockerd) carry their pod.
    let kube_pod = labels.get("io.kubernetes.pod.name").map(|n| PodRef {
        name: n.clone(),
        namespace: labels.get("io.kubernetes.pod.namespace").cloned(),
        uid: labels.get("io.kubernetes.pod.uid").cloned(),
        sandbox_id: labels.get("io.kubernetes.sandbox.id").cloned(),
    });
    let podman_pod = libpod.filter(|l| !l.pod.is_empty()).map(|l| PodRef {
        name: if l.pod_name.is_empty() {
            l.pod.clone()
        } else {
            l.pod_name.clone()
        },
        namespace: None,
        uid: None,
        sandbox_id: Some(l.pod.clone()),
    });
    let infra = libpod.is_some_and(|l| l.is_infra)
        || labels.get("io.kubernetes.docker.type").map(String::as_str) == Some("podsandbox");
    Some(Found {
        netns: inode,
        netns_path: Some(netns_path),
        pid: Some(c.state.pid),
        pod: kube_pod.or(podman_pod),
        container: Some(ContainerRef {
            id: c.id.clone(),
            name,
            runtime: engine.name.to_string(),
        }),
        host_network: c.host_config.network_mode == "host" || Some(inode) == host,
        sandbox: infra,
    })
}

/// Asks one socket, with a sentence for what went wrong.
pub fn query(socket: &Path) -> Result<(Engine, Vec<Found>)> {
    Client::new(socket)
        .containers()
        .map_err(|e| anyhow!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_plain_and_chunked() -> Result<()> {
        let plain =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(
            parse_response(plain)?,
            Response {
                status: 200,
                body: b"[]".to_vec()
            }
        );
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=y\r\n 1}\r\n0\r\n\r\n";
        let r = parse_response(chunked)?;
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"{\"a\": 1}");
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn error_bodies_become_sentences() {
        let body = br#"{"cause":"no such container","message":"no container with name or ID \"x\" found: no such container","response":404}"#;
        assert_eq!(
            api_message(body),
            "no container with name or ID \"x\" found: no such container"
        );
        assert_eq!(api_message(b"plain text\n"), "plain text");
    }

    #[test]
    fn podman_and_docker_versions() -> Result<()> {
        let podman: Version = serde_json::from_str(
            r#"{"Platform":{"Name":"linux/amd64/debian-12"},"Components":[{"Name":"Podman Engine","Version":"4.3.1","Details":{}},{"Name":"Conmon","Version":"conmon version 2.1.6"}],"Version":"4.3.1","ApiVersion":"1.41"}"#,
        )?;
        assert_eq!(
            podman.engine(),
            Engine {
                name: "podman",
                version: "4.3.1".into()
            }
        );
        let docker: Version = serde_json::from_str(
            r#"{"Components":[{"Name":"Engine","Version":"28.2.2"},{"Name":"containerd","Version":"1.7"}],"Version":"28.2.2"}"#,
        )?;
        assert_eq!(docker.engine().name, "docker");
        Ok(())
    }

    /// A real `podman inspect` answer (trimmed), for a container in a pod.
    const INSPECT: &str = r#"{"Id":"faba427618a88f6c9efa2771c5c52b590743e21a98ef97fb5dc5460c9f47a966",
        "Created":"2026-11-23T12:17:40Z","Path":"sleep","Args":["1000"],
        "State":{"Status":"running","Running":true,"Paused":false,"Pid":PID,"ExitCode":0},
        "Name":"/ntpodweb","HostConfig":{"NetworkMode":"container:279f0d8f544b"},
        "NetworkSettings":{"SandboxKey":"/proc/PID/ns/net","Networks":{"ntnet1":{"IPAddress":"10.233.0.3","IPPrefixLen":24}}},
        "Config":{"Labels":null,"Image":"localhost/ntbusybox:latest"}}"#;

    #[test]
    fn decodes_an_inspected_container_in_a_pod() -> Result<()> {
        let me = std::process::id();
        let text = INSPECT.replace("PID", &me.to_string());
        let inspect: Inspect = serde_json::from_str(&text)?;
        assert_eq!(inspect.state.pid, me);
        assert_eq!(inspect.host_config.network_mode, "container:279f0d8f544b");
        let libpod: Vec<LibpodListed> = serde_json::from_str(
            r#"[{"Id":"faba427618a88f6c9efa2771c5c52b590743e21a98ef97fb5dc5460c9f47a966","Names":["ntpodweb"],
                "Pod":"6b43e246d78af319851956951f4a5cab6eb6afb0c2d0acb68ea0e72431542183","PodName":"ntpod1","IsInfra":false,"Pid":14073}]"#,
        )?;
        let engine = Engine {
            name: "podman",
            version: "4.3.1".into(),
        };
        let f = found(&engine, &inspect, libpod.first(), None).context("no workload")?;
        assert_eq!(f.pid, Some(me));
        assert_eq!(Some(f.netns), netns::host_inode());
        let pod = f.pod.context("no pod")?;
        assert_eq!(pod.name, "ntpod1");
        assert_eq!(pod.namespace, None);
        let c = f.container.context("no container")?;
        assert_eq!(
            (c.name.as_str(), c.runtime.as_str()),
            ("ntpodweb", "podman")
        );
        assert!(!f.sandbox);

        // A stopped container has no namespace to trace.
        let stopped: Inspect =
            serde_json::from_str(&text.replace("\"Running\":true", "\"Running\":false"))?;
        assert!(found(&engine, &stopped, None, None).is_none());
        Ok(())
    }

    #[test]
    fn kubernetes_labels_name_the_pod() -> Result<()> {
        let me = std::process::id();
        let text = INSPECT.replace("PID", &me.to_string()).replace(
            "\"Labels\":null",
            r#""Labels":{"io.kubernetes.pod.name":"web","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"u-1","io.kubernetes.docker.type":"podsandbox"}"#,
        ).replace("container:279f0d8f544b", "host");
        let inspect: Inspect = serde_json::from_str(&text)?;
        let engine = Engine {
            name: "docker",
            version: "28".into(),
        };
        let f = found(&engine, &inspect, None, None).context("no workload")?;
        let pod = f.pod.context("no pod")?;
        assert_eq!(pod.display(), "shop/web");
        assert_eq!(pod.uid.as_deref(), Some("u-1"));
        assert!(f.sandbox);
        assert!(f.host_network);
        Ok(())
    }
}

//! The Docker-compatible Engine API over its unix socket: Docker itself, and Podman's
//! `podman system service`. Gives every running container with its name, main process and
//! network namespace; on Podman also the pod each container belongs to (Podman's own
//! `libpod` endpoint on the same socket).
//!
//! HTTP/1.1 by hyper's client, one `GET` per connection, under [`Limits`]: a connect timeout,
//! a deadline for each whole request and a cap on the answer's size, so a socket that accepts
//! and never answers, dribbles, or floods costs at most those and fails this source with one
//! sentence. Containers are inspected a few at a time ([`Limits::concurrency`]).

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
    time::Instant,
};

use super::{ContainerRef, LIMITS, Limits, PodRef, found::Found, netns, quoted_text, size, span};

/// Where Docker and Podman listen by default (`$DOCKER_HOST` comes first when it is a socket).
pub const DEFAULT_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/podman/podman.sock"];

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

/// A unix stream that counts the bytes read from it, to say how much of an answer came.
struct Counted {
    inner: UnixStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(got, Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why connecting failed, as the end of a sentence (no raw errno).
fn connect_failure(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "cannot connect: the socket does not exist".to_string(),
        io::ErrorKind::ConnectionRefused => {
            "cannot connect: nothing listens on the socket (connection refused)".to_string()
        }
        io::ErrorKind::PermissionDenied => "cannot connect: permission denied".to_string(),
        io::ErrorKind::WouldBlock => {
            "cannot connect: the socket's queue of connections is full".to_string()
        }
        kind => format!("cannot connect ({kind})"),
    }
}

/// A failed exchange, as the end of a sentence.
fn exchange_failure(e: &hyper::Error, path: &str) -> anyhow::Error {
    if e.is_parse() || e.is_parse_status() {
        anyhow!("the answer to GET {path} is not HTTP ({e})")
    } else if e.is_incomplete_message() || e.is_closed() || ended_early(e) {
        anyhow!("the connection closed before the answer to GET {path} was complete")
    } else {
        anyhow!("the exchange for GET {path} failed ({e})")
    }
}

/// Whether the connection ended in the middle of the body (hyper says so in its causes).
fn ended_early(e: &hyper::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |s| s.source()).any(|s| {
        s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
    })
}

/// The body, refused once it grows past `max` bytes.
async fn capped(mut body: Incoming, max: usize, path: &str) -> Result<Vec<u8>> {
    let too_large = || anyhow!("the answer to GET {path} is larger than {}", size(max));
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| exchange_failure(&e, path))?;
        if let Ok(data) = frame.into_data() {
            if out.len().saturating_add(data.len()) > max {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// One `GET` on a connected stream: the request sent, the answer read (at most `max` bytes).
async fn exchange(io: Counted, path: &str, max: usize) -> Result<Response> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| exchange_failure(&e, path))?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::USER_AGENT, "nettools")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| anyhow!("cannot ask for {path} ({e})"))?;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| exchange_failure(&e, path))?;
        let status = response.status().as_u16();
        let body = capped(response.into_body(), max, path).await?;
        Ok(Response { status, body })
    };
    let mut conn = pin!(conn);
    let mut answer = pin!(answer);
    tokio::select! {
        r = &mut answer => r,
        c = &mut conn => match c {
            Err(e) => Err(exchange_failure(&e, path)),
            // The connection ended cleanly: the answer is complete, or fails on its own.
            Ok(()) => answer.await,
        },
    }
}

/// Whether a container id from the runtime is safe to put in a request path.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A client for one Engine API socket.
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
    pub limits: Limits,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self::with_limits(socket, LIMITS)
    }

    pub fn with_limits(socket: &Path, limits: Limits) -> Self {
        Self {
            socket: socket.to_path_buf(),
            limits,
        }
    }

    /// `GET path`, within the connect timeout and the request's deadline; fails on
    /// connection errors, timeouts and answers past the size cap, not on HTTP errors. The
    /// error is the end of a sentence that names the socket elsewhere.
    pub async fn get(&self, path: &str) -> Result<Response> {
        let deadline = Instant::now() + self.limits.request;
        let stream = match tokio::time::timeout(
            self.limits.connect,
            UnixStream::connect(&self.socket),
        )
        .await
        {
            Err(_) => bail!(
                "no connection within {} (the socket accepts nothing)",
                span(self.limits.connect)
            ),
            Ok(Err(e)) => bail!("{}", connect_failure(&e)),
            Ok(Ok(s)) => s,
        };
        let read = Arc::new(AtomicUsize::new(0));
        let io = Counted {
            inner: stream,
            read: read.clone(),
        };
        match tokio::time::timeout_at(deadline, exchange(io, path, self.limits.max_answer)).await {
            Ok(r) => r,
            Err(_) => match read.load(Ordering::Relaxed) {
                0 => bail!(
                    "no answer to GET {path} within {}",
                    span(self.limits.request)
                ),
                n => bail!(
                    "only {n} bytes of an answer to GET {path} within {}",
                    span(self.limits.request)
                ),
            },
        }
    }

    /// `GET path` answered with JSON: `None` when the answer is 404 (no such thing).
    async fn json_or_none<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<Option<T>> {
        let r = self.get(path).await?;
        if r.status == 404 {
            return Ok(None);
        }
        if r.status != 200 {
            bail!(
                "answered {} to GET {path}: {}",
                r.status,
                quoted_text(&api_message(&r.body))
            );
        }
        serde_json::from_slice(&r.body)
            .map(Some)
            .map_err(|e| anyhow!("the answer to GET {path} is not the JSON expected ({e})"))
    }

    /// `GET path` that must answer 200 with JSON.
    async fn json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        self.json_or_none(path)
            .await?
            .ok_or_else(|| anyhow!("answered 404 to GET {path}: not a Docker-compatible API"))
    }

    /// Which engine this is: `podman` or `docker`, with its version.
    pub async fn engine(&self) -> Result<Engine> {
        let v: Version = self.json("/version").await?;
        Ok(v.engine())
    }

    /// Every running container, with pods on Podman. A container removed between the list
    /// and its inspection is left out; any other failure fails the whole answer (a partial
    /// one would make workloads vanish).
    pub async fn containers(&self) -> Result<(Engine, Vec<Found>)> {
        let engine = self.engine().await?;
        let listed: Vec<Listed> = self.json("/v1.40/containers/json").await?;
        // Podman knows pods; its own endpoint says which pod each container is in.
        let pods: HashMap<String, LibpodListed> = if engine.name == "podman" {
            self.json_or_none::<Vec<LibpodListed>>("/v4.0.0/libpod/containers/json")
                .await?
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect()
        } else {
            HashMap::new()
        };
        let this = &self;
        let inspected: Vec<Result<Option<Inspect>>> = stream::iter(listed)
            .filter(|c| {
                let ok = plausible_id(&c.id);
                if !ok {
                    log::debug!("skipping a container with an odd id {:?}", c.id);
                }
                std::future::ready(ok)
            })
            .map(|c| async move {
                this.json_or_none::<Inspect>(&format!("/v1.40/containers/{}/json", c.id))
                    .await
            })
            .buffered(self.limits.concurrency.max(1))
            .collect()
            .await;
        let host = netns::host_inode();
        let mut out = Vec::new();
        for inspect in inspected {
            // `None`: gone between the list and the inspection.
            if let Some(found) = inspect?
                .as_ref()
                .and_then(|i| found(&engine, i, pods.get(&i.id), host))
            {
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
        stale: false,
        named_by: super::NamedBy::RuntimeApi,
    })
}

/// Asks one socket; the error is the end of a sentence saying what went wrong.
pub async fn query(socket: &Path) -> Result<(Engine, Vec<Found>)> {
    Client::new(socket).containers().await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Small limits, so that the fault sockets fail fast.
    const TEST_LIMITS: Limits = Limits {
        connect: Duration::from_millis(200),
        request: Duration::from_millis(400),
        source: Duration::from_secs(2),
        max_answer: 4096,
        concurrency: 2,
    };

    /// A unix socket of this test's own that answers every connection with `answer` (after
    /// reading the request), or with nothing (`None`), or one byte every `dribble`.
    struct FaultSocket {
        path: PathBuf,
        server: tokio::task::JoinHandle<()>,
    }

    impl FaultSocket {
        fn start(answer: Option<Vec<u8>>, dribble: Option<Duration>) -> Result<Self> {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "nettools-unit-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)?;
            let server = tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let mut request = [0u8; 4096];
                        let _ = conn.read(&mut request).await;
                        match (answer, dribble) {
                            (Some(a), Some(gap)) => {
                                for b in a {
                                    if conn.write_all(&[b]).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(gap).await;
                                }
                            }
                            (Some(a), None) => {
                                let _ = conn.write_all(&a).await;
                            }
                            (None, _) => std::future::pending::<()>().await,
                        }
                    });
                }
            });
            Ok(Self { path, server })
        }

        fn client(&self) -> Client {
            Client::with_limits(&self.path, TEST_LIMITS)
        }
    }

    impl Drop for FaultSocket {
        fn drop(&mut self) {
            self.server.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }

    async fn failure(socket: &FaultSocket, path: &str) -> (String, Duration) {
        let started = std::time::Instant::now();
        let r = socket.client().get(path).await;
        let took = started.elapsed();
        match r {
            Ok(r) => (format!("unexpectedly answered {}", r.status), took),
            Err(e) => (format!("{e:#}"), took),
        }
    }

    #[tokio::test]
    async fn a_silent_socket_costs_the_deadline() -> Result<()> {
        let socket = FaultSocket::start(None, None)?;
        let (e, took) = failure(&socket, "/version").await;
        assert_eq!(e, "no answer to GET /version within 400 ms");
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_secs(2),
            "{took:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_dribbling_socket_costs_the_deadline() -> Result<()> {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]".to_vec();
        let socket = FaultSocket::start(Some(answer), Some(Duration::from_millis(100)))?;
        let (e, took) = failure(&socket, "/version").await;
        assert!(
            e.starts_with("only ")
                && e.ends_with(" bytes of an answer to GET /version within 400 ms"),
            "{e}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        Ok(())
    }

    #[tokio::test]
    async fn answers_past_the_cap_are_refused() -> Result<()> {
        // Announced by its length…
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1 << 20);
        let socket = FaultSocket::start(Some(big.into_bytes()), None)?;
        let (e, _) = failure(&socket, "/v1.40/containers/json").await;
        assert_eq!(
            e,
            "the answer to GET /v1.40/containers/json is larger than 4096 bytes"
        );
        // …or streamed in chunks without one.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            chunked.extend_from_slice(b"400\r\n");
            chunked.extend(std::iter::repeat_n(b' ', 0x400));
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let socket = FaultSocket::start(Some(chunked), None)?;
        let (e, _) = failure(&socket, "/v1.40/containers/json").await;
        assert_eq!(
            e,
            "the answer to GET /v1.40/containers/json is larger than 4096 bytes"
        );
        Ok(())
    }

    #[tokio::test]
    async fn chunked_answers_and_api_errors_are_read() -> Result<()> {
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=y\r\n 1}\r\n0\r\n\r\n";
        let socket = FaultSocket::start(Some(chunked.to_vec()), None)?;
        let r = socket.client().get("/x").await?;
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"{\"a\": 1}");

        let error = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 30\r\n\r\n{\"message\":\"bad\\u001b[2J day\"}";
        let socket = FaultSocket::start(Some(error.to_vec()), None)?;
        let e = socket
            .client()
            .engine()
            .await
            .err()
            .context("a 500 was taken for an answer")?;
        // The runtime's own words, with their control characters escaped.
        assert_eq!(
            format!("{e:#}"),
            "answered 500 to GET /version: bad\\u{1b}[2J day"
        );
        Ok(())
    }

    #[tokio::test]
    async fn garbage_and_missing_sockets_are_sentences() -> Result<()> {
        let socket = FaultSocket::start(Some(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()), None)?;
        let (e, _) = failure(&socket, "/version").await;
        assert!(
            e.starts_with("the answer to GET /version is not HTTP"),
            "{e}"
        );

        let socket = FaultSocket::start(
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[]".to_vec()),
            None,
        )?;
        let (e, _) = failure(&socket, "/version").await;
        assert_eq!(
            e,
            "the connection closed before the answer to GET /version was complete"
        );

        let gone = Client::with_limits(Path::new("/nonexistent/docker.sock"), TEST_LIMITS);
        let e = gone.get("/version").await.err().context("no error")?;
        assert_eq!(
            format!("{e:#}"),
            "cannot connect: the socket does not exist"
        );
        Ok(())
    }

    #[test]
    fn odd_container_ids_are_not_put_in_paths() {
        assert!(plausible_id(
            "faba427618a88f6c9efa2771c5c52b590743e21a98ef97fb5dc5460c9f47a966"
        ));
        for odd in ["", "../../version", "a b", "x?all=1", "x/json"] {
            assert!(!plausible_id(odd), "{odd}");
        }
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

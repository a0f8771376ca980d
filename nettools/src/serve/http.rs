//! The agent's HTTP endpoint (hyper, HTTP/1.1, plain or TLS): `GET /metrics` answers with
//! the exposition of a render (shared by the scrapes that arrive while it runs), `/healthz`
//! answers as soon as the listener is up, `/` says where the metrics are.
//!
//! What a client can cost is bounded: [`MAX_CONNECTIONS`] are served at once (more wait in the
//! kernel's listen queue of [`BACKLOG`] until one ends, and are not refused); the TLS handshake,
//! the request head (and the idle time between two requests on one connection), the wait for
//! a render and every write of the response each have a deadline; request heads are capped at
//! [`MAX_HEAD_BYTES`] and bodies are never read.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;

use super::{
    auth::{Policy, Refusal},
    core::Core,
    render,
    stall::Stall,
};

/// Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once on the metrics listener; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once on the `--health-listen` listener.
pub const MAX_HEALTH_CONNECTIONS: usize = 8;
/// The kernel's listen queue: a burst of this many connections waits its turn.
pub const BACKLOG: u32 = 1024;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request head may take to arrive, and a connection may stay idle between two
/// requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for its render before it gets 503.
pub const RENDER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write of the response may wait for the client to read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read (hyper's smallest read buffer).
pub const MAX_HEAD_BYTES: usize = 8192;

/// Which paths a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics`, `/healthz` and `/`.
    All,
    /// `/healthz` alone (`--health-listen`).
    Health,
}

/// What every connection shares: the agent's state once its probes are loaded, and the render
/// in flight.
#[derive(Default)]
pub struct App {
    pub core: OnceLock<Arc<Mutex<Core>>>,
    pub renders: Arc<render::Shared>,
}

/// A listening socket and how it answers.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub policy: Policy,
    pub routes: Routes,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Accepts connections until the task is aborted, one task per connection, at most
/// `max_connections` at once.
pub async fn serve(listener: Listener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(listener.max_connections));
    let listener = Arc::new(listener);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, or the like: try again a little later.
                log::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let listener = listener.clone();
        let app = app.clone();
        tokio::spawn(async move {
            connection(stream, peer, &listener, &app).await;
            drop(slot);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, listener: &Arc<Listener>, app: &Arc<App>) {
    let _ = stream.set_nodelay(true);
    match &listener.tls {
        None => http(Stall::new(stream, WRITE_TIMEOUT), peer, listener, app).await,
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => http(Stall::new(tls, WRITE_TIMEOUT), peer, listener, app).await,
                Ok(Err(e)) => log::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => log::debug!("TLS handshake with {peer} took too long"),
            }
        }
    }
}

async fn http<I>(io: I, peer: SocketAddr, listener: &Arc<Listener>, app: &Arc<App>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (listener, app) = (listener.clone(), app.clone());
    let service = hyper::service::service_fn(move |req| {
        let (listener, app) = (listener.clone(), app.clone());
        async move { Ok::<_, Infallible>(respond(req, &listener, &app).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        log::debug!("connection from {peer}: {e}");
    }
}

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn respond(req: Request<Incoming>, listener: &Listener, app: &App) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path();
    if listener.routes == Routes::Health && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, PLAIN, "only /healthz here\n");
    }
    if let Err(refusal) = listener.policy.check(path, req.headers()) {
        let (challenge, why) = match refusal {
            Refusal::Missing => ("Bearer realm=\"nettools\"", "a bearer token is needed\n"),
            Refusal::Wrong => (
                "Bearer realm=\"nettools\", error=\"invalid_token\"",
                "the bearer token is wrong\n",
            ),
        };
        let mut r = text(StatusCode::UNAUTHORIZED, PLAIN, why);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
        return r;
    }
    match path {
        "/metrics" => {
            let Some(core) = app.core.get() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "nettools is starting: its probes are not loaded yet\n",
                );
            };
            match tokio::time::timeout(RENDER_TIMEOUT, app.renders.get(core)).await {
                Ok(Ok(body)) => text(StatusCode::OK, CONTENT_TYPE, body),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "the exposition took too long to render\n",
                ),
            }
        }
        "/healthz" => match app.core.get() {
            Some(_) => text(StatusCode::OK, PLAIN, "ok\n"),
            None => text(StatusCode::OK, PLAIN, "ok: starting\n"),
        },
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><head><title>nettools</title></head><body><h1>nettools</h1>\
             <p><a href=\"/metrics\">Metrics</a></p></body></html>\n",
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found: try /metrics\n"),
    }
}

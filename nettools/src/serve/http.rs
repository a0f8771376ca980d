//! The agent's HTTP endpoint (hyper, HTTP/1.1): `GET /metrics` asks the probe loop for a fresh
//! exposition and waits for it, so a scrape sees the kernel's counts as they are at that moment;
//! `/healthz` answers while the loop runs; `/` says where the metrics are.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

/// Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape: the probe loop answers with the exposition, or an error sentence.
pub type Scrape = oneshot::Sender<Result<String, String>>;

/// Accepts connections until the process ends, one task per connection.
pub async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, scrapes.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("connection from {peer}: {e}");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn respond(
    req: Request<Incoming>,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "only GET\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            if scrapes.send(tx).await.is_err() {
                return Ok(text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    plain,
                    "nettools is stopping\n".into(),
                ));
            }
            match rx.await {
                Ok(Ok(body)) => text(StatusCode::OK, CONTENT_TYPE, body),
                Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, plain, format!("{e}\n")),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    plain,
                    "nettools is stopping\n".into(),
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, plain, "ok\n".into()),
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><head><title>nettools</title></head><body><h1>nettools</h1>\
             <p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                .into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            plain,
            "not found: try /metrics\n".into(),
        ),
    })
}

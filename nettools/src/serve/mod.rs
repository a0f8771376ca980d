//! `nettools serve`: the node agent. It runs the probes on every network namespace of the
//! node, names them by the container runtimes' inventory (pods, containers, named namespaces,
//! processes), follows pods as they come and go, and answers Prometheus scrapes with the
//! figures at that moment.
//!
//! Nothing waits on anything it does not need: the listener is up first (`/healthz` answers
//! while the probes load and before any runtime is asked); a thread of its own drains the
//! kernel's events ([`drain`]); another asks the runtimes and attaches new veths
//! ([`refresh`]); HTTP runs on a multi-threaded runtime ([`http`]), scrapes share one render
//! ([`render`]) made on a blocking thread; all of them meet at the lock on [`core::Core`],
//! which each holds briefly. Exposure is the operator's choice: loopback by default, TLS with
//! optional client certificates ([`tls`]) and a bearer token ([`auth`]).

pub mod auth;
pub mod core;
pub mod drain;
pub mod http;
pub mod metrics;
pub mod refresh;
pub mod render;
pub mod stall;
pub mod tls;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::net::{TcpListener, TcpSocket};

use crate::{
    cli::ServeArgs,
    probe::ProbeKind,
    session::{self, Started, Status, Symbols},
};
use core::{Core, lock};

/// Binds a listening socket with a deep listen queue, with one sentence for the usual failures.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use std::io::ErrorKind;
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(http::BACKLOG)
    })();
    bound.map_err(|e| match e.kind() {
        ErrorKind::AddrInUse => anyhow!(
            "cannot listen on {addr}: the address is already in use (another nettools serve, or \
             another program; choose another with --listen)"
        ),
        ErrorKind::AddrNotAvailable => {
            anyhow!("cannot listen on {addr}: no interface of this host has that address")
        }
        ErrorKind::PermissionDenied => anyhow!(
            "cannot listen on {addr}: permission denied (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE)"
        ),
        _ => anyhow!("cannot listen on {addr}: {e}"),
    })
}

/// The warning for a listener anyone who reaches it can read, if it is one.
fn exposure_warning(addr: SocketAddr, tls: bool, token: bool, client_ca: bool) -> Option<String> {
    if auth::is_loopback(addr) {
        return None;
    }
    match (tls, token || client_ca) {
        (false, false) => Some(format!(
            "nettools: warning: {addr} serves the node's workload inventory to anyone who \
             reaches it, in plain HTTP without authentication (use --tls-cert with --client-ca \
             or --bearer-token-file, or keep the default 127.0.0.1 behind a proxy)"
        )),
        (false, true) => Some(format!(
            "nettools: warning: {addr} is plain HTTP: the bearer token crosses the network \
             unencrypted (add --tls-cert and --tls-key)"
        )),
        (true, false) => Some(format!(
            "nettools: warning: {addr} encrypts but authenticates nobody: anyone who reaches it \
             reads the node's workload inventory (add --client-ca or --bearer-token-file)"
        )),
        (true, true) => None,
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: &ServeArgs, verbose: bool) -> Result<()> {
    crate::preflight::require_privileges()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, args.client_ca.as_deref())?),
        _ => None,
    };
    let token = args
        .bearer_token_file
        .as_deref()
        .map(auth::Token::read)
        .transpose()?;
    if let Some(h) = args.health_listen
        && !auth::is_loopback(h)
    {
        bail!(
            "--health-listen {h} is not a loopback address: /healthz there answers anyone, so it \
             is served on loopback only"
        );
    }
    // From here on SIGINT and SIGTERM wait for the loop below, which detaches the probes.
    let mut stop_requested = session::Stop::install()?;
    let tcp = bind(args.listen)?;
    let local = tcp.local_addr().unwrap_or(args.listen);
    let health = args.health_listen.map(bind).transpose()?;
    if let Some(w) = exposure_warning(
        local,
        tls.is_some(),
        token.is_some(),
        args.client_ca.is_some(),
    ) {
        eprintln!("{w}");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app = Arc::new(http::App::default());
    let policy = auth::Policy::new(token, local, tls.is_some());
    let server = tokio::spawn(http::serve(
        http::Listener {
            tcp,
            tls,
            policy,
            routes: http::Routes::All,
            max_connections: http::MAX_CONNECTIONS,
        },
        app.clone(),
    ));
    let health_server = match health {
        Some(tcp) => {
            let addr = tcp.local_addr().ok();
            let policy = auth::Policy::new(None, addr.unwrap_or(local), false);
            if let Some(a) = addr {
                eprintln!("nettools: /healthz also on http://{a}/healthz");
            }
            Some(tokio::spawn(http::serve(
                http::Listener {
                    tcp,
                    tls: None,
                    policy,
                    routes: http::Routes::Health,
                    max_connections: http::MAX_HEALTH_CONNECTIONS,
                },
                app.clone(),
            )))
        }
        None => None,
    };
    eprintln!(
        "nettools: listening on {scheme}://{local} (/healthz answers now, /metrics once the \
         probes are loaded)"
    );

    let mut probes = if args.probes.is_empty() {
        ProbeKind::DEFAULT.to_vec()
    } else {
        args.probes.clone()
    };
    probes.sort();
    probes.dedup();
    let options = session::Options {
        probes: probes.clone(),
        all: true,
        ring_buffer_bytes: args.ring_buffer,
        // See ServeArgs::tc_mode: many veths attach far faster as clsact filters.
        tc_mode: match args.tc_mode {
            crate::probe::tc::Mode::Auto => crate::probe::tc::Mode::Clsact,
            mode => mode,
        },
        timeout: args.timeout,
        transit_sample_shift: args.transit_sample.trailing_zeros(),
        stacks: false,
        verbose,
        rules: false,
    };
    // The probes count every namespace from the start; veths are attached by the refresh
    // thread, which names the namespaces.
    let Started {
        probes: loaded,
        events,
        kernel_log,
    } = tokio::task::spawn_blocking(move || {
        let status = Status::new();
        let started = Started::load(
            options,
            Vec::new(),
            BTreeMap::new(),
            std::io::sink(),
            false,
            &status,
            Symbols::Skip,
        );
        status.clear();
        started
    })
    .await
    .context("loading the probes failed")??;
    let ctx = metrics::Context {
        max_workloads: args.max_workloads,
        probes: probes.clone(),
        tc_interfaces: 0,
        sources: Vec::new(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: loaded.loaded.kernel.release.clone(),
    };
    let core = Arc::new(Mutex::new(Core {
        probes: loaded,
        ctx,
        started: Instant::now(),
        stopping: false,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let (drained_tx, mut drained) = tokio::sync::oneshot::channel();
    let drainer = drain::spawn(events, kernel_log, core.clone(), stop.clone(), drained_tx)?;
    let _ = app.core.set(core.clone());
    let refresher = refresh::spawn(
        core.clone(),
        args.runtime.sources(),
        args.refresh,
        stop.clone(),
        |inventory| eprintln!("nettools: asked the runtimes: {}", inventory.asked()),
    )?;
    let names: Vec<&str> = probes.iter().map(|p| p.name()).collect();
    eprintln!(
        "nettools: serving Prometheus metrics on {scheme}://{local}/metrics: {} in every \
         namespace of the node, asking the runtimes every {}; Ctrl-C stops",
        names.join(", "),
        crate::units::humantime(args.refresh)
    );

    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            _ = expiry.tick() => {
                let core = core.clone();
                let expired = tokio::task::spawn_blocking(move || lock(&core).probes.expire()).await;
                match expired {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => log::warn!("expiring unanswered requests failed: {e:#}"),
                    Err(e) => log::warn!("expiring unanswered requests failed: {e}"),
                }
            }
            r = &mut drained => break r.unwrap_or_else(|_| Err(anyhow!("the thread that reads the kernel's events ended"))),
            _ = stop_requested.requested() => break Ok(()),
        }
    };
    stop.store(true, Ordering::Relaxed);
    server.abort();
    if let Some(h) = health_server {
        h.abort();
    }
    let detaching = core.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut c = lock(&detaching);
        c.stopping = true;
        c.probes.loaded.detach_all();
    })
    .await;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = drainer.join();
        // The refresh thread may be waiting for a runtime: it is not waited for.
        drop(refresher);
    })
    .await;
    ended?;
    eprintln!("nettools: stopped serving");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_is_warned_about_off_loopback() -> Result<()> {
        let lo: SocketAddr = "127.0.0.1:9977".parse()?;
        let any: SocketAddr = "0.0.0.0:9977".parse()?;
        assert_eq!(exposure_warning(lo, false, false, false), None);
        assert!(
            exposure_warning(any, false, false, false)
                .is_some_and(|w| w.contains("without authentication"))
        );
        assert!(exposure_warning(any, false, true, false).is_some_and(|w| w.contains("token")));
        assert!(exposure_warning(any, true, false, false).is_some());
        assert_eq!(exposure_warning(any, true, true, false), None);
        assert_eq!(exposure_warning(any, true, false, true), None);
        Ok(())
    }
}

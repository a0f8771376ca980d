//! `nettools serve` run behind a test: on a loopback port of its own, stopped with SIGTERM (by
//! PID) when the test is done, scraped as Prometheus scrapes it.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Background, prom};

/// A loopback address with a port nobody uses now (the kernel's choice, given back at once
/// for the agent to take).
pub fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A running agent.
pub struct Agent {
    pub nettools: Background,
    pub addr: SocketAddr,
}

impl Agent {
    /// `nettools serve --listen ADDR ARGS` on a free loopback port, once it says it serves.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_until(args, "nettools: serving")
    }

    /// The same with TLS and client certificates, from the files [`prom::certificates`] made
    /// in `dir`: the server's certificate and key, and the good CA as the client CA.
    pub fn start_mutual_tls(dir: &Path, args: &[&str]) -> Result<Self> {
        let file = |name: &str| dir.join(name).display().to_string();
        let (cert, key, ca) = (file("server.pem"), file("server.key"), file("good-ca.pem"));
        let mut full = vec!["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca];
        full.extend_from_slice(args);
        Self::start(&full)
    }

    /// The same as [`Agent::start`], once its stderr says `ready`.
    pub fn start_until(args: &[&str], ready: &str) -> Result<Self> {
        let addr = free_port()?;
        let listen = addr.to_string();
        let mut full: Vec<&OsStr> = ["serve", "--listen", &listen]
            .into_iter()
            .map(OsStr::new)
            .collect();
        full.extend(args.iter().map(OsStr::new));
        let nettools = Background::start(&full, ready)?;
        Ok(Self { nettools, addr })
    }

    pub fn stderr_text(&self) -> String {
        self.nettools.stderr_text()
    }

    /// How many files (sockets, BPF links, maps, …) the agent holds open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.nettools.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `GET /metrics`: the body (the agent's stderr in the error).
    pub fn scrape(&self) -> Result<String> {
        prom::scrape(self.addr).with_context(|| self.stderr_text())
    }

    /// Scrapes until `done` says the exposition has what the test waits for (at most
    /// `within`); returns that exposition.
    pub fn scrape_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&str) -> Result<bool>,
    ) -> Result<String> {
        let started = Instant::now();
        loop {
            let text = self.scrape()?;
            if done(&text)? {
                return Ok(text);
            }
            if started.elapsed() > within {
                bail!(
                    "{what}: not within {within:?}: {}\n{text}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.nettools.signal(libc::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.nettools.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Background's own drop kills what is still running.
    }
}

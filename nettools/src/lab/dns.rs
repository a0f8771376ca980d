//! A small DNS server for labs and tests, over UDP and TCP on port 53 inside a namespace: per
//! name it answers after a set delay, answers with an error rcode, or never answers. It stops
//! (and closes its sockets) when dropped.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::Node;
use crate::collect::dns;

/// What the server does with a query for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer with this A record after this delay.
    Answer { delay: Duration, addr: Ipv4Addr },
    /// Answer at once with this rcode (3 NXDOMAIN, 2 SERVFAIL, 5 REFUSED, …).
    Rcode(u8),
    /// Never answer.
    Never,
}

/// Names (lower case, no trailing dot) and what to do with them.
pub type Zone = HashMap<String, Behaviour>;

/// A running server.
pub struct DnsServer {
    node: Node,
    addr: IpAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Queries received, UDP and TCP.
    pub queries: Arc<AtomicU64>,
}

fn behaviour(zone: &Zone, default: Behaviour, query: &[u8]) -> Behaviour {
    match dns::question(query) {
        Ok((name, _)) => zone
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(default),
        Err(_) => Behaviour::Rcode(1),
    }
}

fn respond(query: &[u8], b: Behaviour) -> Option<(Duration, Vec<u8>)> {
    match b {
        Behaviour::Never => None,
        Behaviour::Rcode(rc) => dns::build_response(query, rc, None).map(|r| (Duration::ZERO, r)),
        Behaviour::Answer { delay, addr } => {
            dns::build_response(query, 0, Some(addr)).map(|r| (delay, r))
        }
    }
}

impl DnsServer {
    /// Serves `zone` on `addr`:53 inside `node`; names not in the zone get `default`.
    pub fn start(node: &Node, addr: IpAddr, zone: Zone, default: Behaviour) -> Result<Self> {
        let (udp, tcp) = node.enter(|| -> Result<(UdpSocket, TcpListener)> {
            let udp =
                UdpSocket::bind(SocketAddr::new(addr, 53)).context("cannot bind UDP port 53")?;
            let tcp =
                TcpListener::bind(SocketAddr::new(addr, 53)).context("cannot bind TCP port 53")?;
            Ok((udp, tcp))
        })??;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let zone = Arc::new(zone);
        let mut threads = Vec::new();
        {
            let (stop, queries, zone) = (stop.clone(), queries.clone(), zone.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let query = buf[..n].to_vec();
                    if let Some((delay, reply)) = respond(&query, behaviour(&zone, default, &query))
                        && let Ok(sock) = udp.try_clone()
                    {
                        // Each reply waits on its own, so a slow name does not hold the others.
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            let _ = sock.send_to(&reply, from);
                        });
                    }
                }
            }));
        }
        {
            let (stop, queries, zone) = (stop.clone(), queries.clone(), zone.clone());
            // A blocking accept, so a connection is served the moment it arrives (polling would
            // add its period to every TCP query's latency); Drop wakes it with a connection.
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = tcp.accept() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (stop, queries, zone) = (stop.clone(), queries.clone(), zone.clone());
                        std::thread::spawn(move || {
                            serve_tcp(conn, &zone, default, &stop, &queries)
                        });
                    }
                }
            }));
        }
        Ok(Self {
            node: node.clone(),
            addr,
            stop,
            threads,
            queries,
        })
    }
}

/// One TCP connection: length-prefixed messages (RFC 1035 4.2.2).
fn serve_tcp(
    mut conn: TcpStream,
    zone: &Zone,
    default: Behaviour,
    stop: &AtomicBool,
    queries: &AtomicU64,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            queries.fetch_add(1, Ordering::Relaxed);
            if let Some((delay, reply)) = respond(&query, behaviour(zone, default, &query)) {
                std::thread::sleep(delay);
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                let _ = conn.write_all(&framed);
            }
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let addr = SocketAddr::new(self.addr, 53);
        let _ = self
            .node
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends one query over UDP from `node` to `server` and waits up to `wait` for the response.
pub fn query_udp(
    node: &Node,
    server: IpAddr,
    id: u16,
    name: &str,
    wait: Duration,
) -> Result<Option<Vec<u8>>> {
    node.enter(|| -> Result<Option<Vec<u8>>> {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(wait))?;
        sock.send_to(&dns::build_query(id, name, 1), SocketAddr::new(server, 53))?;
        let mut buf = [0u8; 1500];
        Ok(sock.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
    })?
}

/// Sends one query over a new TCP connection and waits up to `wait` for the response.
pub fn query_tcp(
    node: &Node,
    server: IpAddr,
    id: u16,
    name: &str,
    wait: Duration,
) -> Result<Option<Vec<u8>>> {
    node.enter(|| -> Result<Option<Vec<u8>>> {
        let mut conn = TcpStream::connect_timeout(&SocketAddr::new(server, 53), wait)?;
        conn.set_read_timeout(Some(wait))?;
        let q = dns::build_query(id, name, 1);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        conn.write_all(&framed)?;
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return Ok(None);
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        Ok(conn.read_exact(&mut msg).ok().map(|()| msg))
    })?
}

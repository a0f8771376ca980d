//! A small DNS server for labs and tests, over UDP and TCP on port 53 inside a namespace: per
//! name it answers after a set delay, answers with an error rcode, or never answers. It stops
//! (and closes its sockets) when dropped.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd as _;

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
    /// How long each answered query was really held: from its arrival to just before and just
    /// after the reply was sent (the configured delay plus whatever the scheduler added).
    pub held: Held,
}

/// One answered query: transport, DNS id, and the time from its arrival to just before and
/// just after the reply was sent.
pub type HeldQuery = (&'static str, u16, Duration, Duration);
/// Answered queries and how long the server held each: the test's oracle for latency.
pub type Held = Arc<Mutex<Vec<HeldQuery>>>;

/// Asks the kernel to stamp every packet it receives on `fd` (SO_TIMESTAMPNS), so the server
/// knows when a query really arrived, not when its thread got to read it.
fn stamp_arrivals(fd: std::os::fd::RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The monotonic and the wall clock read at (nearly) the same instant, to turn a kernel's
/// wall-clock stamp into an `Instant`. Reading one after the other is not enough: a preemption
/// between the two reads (a tenth of a millisecond is common under emulation) shifts every
/// converted stamp by as much. So each wall-clock read is bracketed by two monotonic reads, the
/// tightest of a few brackets wins, and its midpoint stands for the wall-clock read: the error
/// is at most half that bracket.
fn clock_pair() -> (Instant, std::time::SystemTime) {
    let sample = || {
        let before = Instant::now();
        let wall = std::time::SystemTime::now();
        let width = before.elapsed();
        (width, before + width / 2, wall)
    };
    let mut best = sample();
    for _ in 0..7 {
        if best.0 < Duration::from_micros(2) {
            break;
        }
        let next = sample();
        if next.0 < best.0 {
            best = next;
        }
    }
    (best.1, best.2)
}

/// `recvmsg` into `buf`: bytes read, the sender (UDP), and when the kernel received the data
/// (as an `Instant`, from its SO_TIMESTAMPNS stamp; now when there is none).
fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SocketAddr>, Instant)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: zeroed sockaddr_storage and msghdr are valid; pointers outlive the call.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: a valid socket and msghdr.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let now = clock_pair();
    let mut arrived = now.0;
    // SAFETY: walking the control messages the kernel wrote, with its own macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                let stamp =
                    std::time::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                if let Ok(age) = now.1.duration_since(stamp) {
                    arrived = now.0.checked_sub(age).unwrap_or(now.0);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let sender = match from.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let a =
                unsafe { *(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let a =
                unsafe { *(&from as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    };
    Ok((n as usize, sender, arrived))
}

/// Sends the reply with `send`, recording how long the query was held around it.
fn reply_and_record(
    held: &Held,
    transport: &'static str,
    query: &[u8],
    arrived: Instant,
    send: impl FnOnce() -> bool,
) {
    let before = arrived.elapsed();
    if send() && query.len() >= 2 {
        let after = arrived.elapsed();
        if let Ok(mut h) = held.lock() {
            h.push((
                transport,
                u16::from_be_bytes([query[0], query[1]]),
                before,
                after,
            ));
        }
    }
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
        stamp_arrivals(udp.as_raw_fd());
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let held: Held = Arc::new(Mutex::new(Vec::new()));
        let zone = Arc::new(zone);
        let mut threads = Vec::new();
        {
            let (stop, queries, zone, held) =
                (stop.clone(), queries.clone(), zone.clone(), held.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, Some(from), arrived)) = recv_stamped(udp.as_raw_fd(), &mut buf)
                    else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let query = buf[..n].to_vec();
                    if let Some((delay, reply)) = respond(&query, behaviour(&zone, default, &query))
                        && let Ok(sock) = udp.try_clone()
                    {
                        // Each reply waits on its own, so a slow name does not hold the others.
                        let held = held.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(delay.saturating_sub(arrived.elapsed()));
                            reply_and_record(&held, "udp", &query, arrived, || {
                                sock.send_to(&reply, from).is_ok()
                            });
                        });
                    }
                }
            }));
        }
        {
            let (stop, queries, zone, held) =
                (stop.clone(), queries.clone(), zone.clone(), held.clone());
            // A blocking accept, so a connection is served the moment it arrives (polling would
            // add its period to every TCP query's latency); Drop wakes it with a connection.
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = tcp.accept() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (stop, queries, zone, held) =
                            (stop.clone(), queries.clone(), zone.clone(), held.clone());
                        std::thread::spawn(move || {
                            serve_tcp(conn, &zone, default, &stop, &queries, &held)
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
            held,
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
    held: &Held,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    stamp_arrivals(conn.as_raw_fd());
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut buf = [0u8; 4096];
        let arrived = match recv_stamped(conn.as_raw_fd(), &mut buf) {
            Ok((0, _, _)) => return,
            Ok((n, _, arrived)) => {
                pending.extend_from_slice(&buf[..n]);
                arrived
            }
            Err(_) => continue,
        };
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
            queries.fetch_add(1, Ordering::Relaxed);
            if let Some((delay, reply)) = respond(&query, behaviour(zone, default, &query)) {
                std::thread::sleep(delay.saturating_sub(arrived.elapsed()));
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                reply_and_record(held, "tcp", &query, arrived, || {
                    conn.write_all(&framed).is_ok()
                });
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

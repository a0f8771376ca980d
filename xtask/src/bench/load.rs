//! Load generators: iperf3 between the two namespaces, a paced UDP flood, short TCP
//! connections.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::lab::Node;

/// What one iperf3 run measured at the receiver.
#[derive(Clone, Copy, Debug)]
pub struct Iperf {
    /// Received bits per second.
    pub bits_per_s: f64,
    /// Sent bits per second (UDP: the sender is not paced by the receiver).
    pub sent_bits_per_s: f64,
    /// Bytes received, and datagrams sent (UDP).
    pub bytes: f64,
    pub packets_sent: f64,
    /// CPU time of both iperf3 processes (user + system, which includes the kernel's packet
    /// path run on their behalf: veth, bridge, the tc programs), seconds.
    pub cpu_s: f64,
}

/// Datagram size of the small-packet UDP run.
pub const UDP_LEN: u32 = 64;

/// Runs the iperf3 client in `client` against the server at `server` for `seconds`.
pub fn iperf(client: &Node, server: Ipv4Addr, seconds: u32, udp: bool) -> Result<Iperf> {
    let t = seconds.to_string();
    let srv = server.to_string();
    let len = UDP_LEN.to_string();
    let mut args = vec!["iperf3", "-c", &srv, "-t", &t, "-J"];
    if udp {
        args.extend_from_slice(&["-u", "-b", "0", "-l", &len]);
    }
    let out = client
        .command(&args)
        .output()
        .context("cannot run iperf3")?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 failed: {e}");
    }
    let end = &json["end"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let (Some(bits), Some(sent)) = (
        end["sum_received"]["bits_per_second"].as_f64(),
        end["sum_sent"]["bits_per_second"].as_f64(),
    ) else {
        bail!("iperf3's JSON has no end.sum_received: {}", end);
    };
    let cpu = &end["cpu_utilization_percent"];
    let seconds = f(&end["sum_sent"]["seconds"]);
    Ok(Iperf {
        bits_per_s: bits,
        sent_bits_per_s: sent,
        bytes: f(&end["sum_received"]["bytes"]),
        packets_sent: end["sum_sent"]["packets"].as_f64().unwrap_or(0.0),
        cpu_s: (f(&cpu["host_total"]) + f(&cpu["remote_total"])) / 100.0 * seconds,
    })
}

/// Sends UDP datagrams from `node` to `dst` at `rate` per second (0: as fast as possible) for
/// `duration`, cycling the destination port over `ports` ports from `dst`'s. Returns the
/// datagrams sent (whether or not a firewall let them through).
pub fn flood(
    node: &Node,
    dst: SocketAddrV4,
    rate: u64,
    duration: Duration,
    ports: u16,
) -> Result<u64> {
    node.enter(|| -> Result<u64> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let payload = [0u8; 18];
        let started = Instant::now();
        let mut sent: u64 = 0;
        let mut port_index: u16 = 0;
        let mut target = dst;
        loop {
            let elapsed = started.elapsed();
            if elapsed >= duration {
                break;
            }
            // Paced in 1 ms steps: send what the rate allows up to now, then sleep a little.
            let due = if rate == 0 {
                sent + 256
            } else {
                (elapsed.as_secs_f64() * rate as f64) as u64 + 1
            };
            if sent >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            while sent < due {
                if ports > 1 {
                    target.set_port(dst.port().wrapping_add(port_index));
                    port_index = (port_index + 1) % ports;
                }
                // A datagram the firewall drops fails with EPERM: it was sent all the same.
                let _ = socket.send_to(&payload, target);
                sent += 1;
            }
        }
        Ok(sent)
    })?
}

/// Opens `count` short TCP connections from `client` to a listener in `server` (the server
/// closes first, so no TIME_WAIT piles up on the client's ports). Returns how many completed.
pub fn connections(
    client: &Node,
    server: &Node,
    port: u16,
    count: u32,
    stop: &AtomicBool,
) -> Result<u32> {
    let addr = SocketAddrV4::new(server.ipv4, port);
    let ready = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<u32> {
        let srv = scope.spawn(|| {
            server.enter(|| -> Result<u32> {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                ready.store(true, Ordering::SeqCst);
                let mut accepted = 0;
                while !done.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            drop(s);
                            accepted += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_micros(100));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(accepted)
            })
        });
        while !ready.load(Ordering::SeqCst) {
            if srv.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let made = client.enter(|| -> Result<u32> {
            let mut made = 0;
            let mut buf = [0u8; 16];
            for _ in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                // Wait for the server's FIN, then close.
                let _ = s.read(&mut buf);
                made += 1;
            }
            Ok(made)
        });
        done.store(true, Ordering::SeqCst);
        let accepted = srv
            .join()
            .map_err(|_| anyhow::anyhow!("the listener thread panicked"))???;
        let made = made??;
        if accepted < made {
            bail!("{made} connections made but only {accepted} accepted");
        }
        Ok(made)
    })
}

/// Asks the DNS server in `server` for `count` different names (`n<i>.bench.test` from
/// `i = first`, type A), one after the other, and returns how many were answered. Pairs with
/// [`nxdomain_server`].
pub fn dns_queries(client: &Node, server: Ipv4Addr, first: u32, count: u32) -> Result<u32> {
    client.enter(|| -> Result<u32> {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let dst = SocketAddrV4::new(server, 53);
        let mut answered = 0;
        let mut buf = [0u8; 512];
        for i in first..first + count {
            let mut q = Vec::with_capacity(48);
            q.extend_from_slice(&(i as u16).to_be_bytes()); // id
            q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
            for label in [format!("n{i}").as_str(), "bench", "test"] {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
            socket.send_to(&q, dst)?;
            if socket.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
        }
        Ok(answered)
    })?
}

/// A DNS server in `node` that answers every query NXDOMAIN, until `stop` is set.
pub fn nxdomain_server(node: &Node, stop: &AtomicBool, ready: &AtomicBool) -> Result<u64> {
    node.enter(|| -> Result<u64> {
        let socket = UdpSocket::bind(SocketAddrV4::new(node.ipv4, 53))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        ready.store(true, Ordering::SeqCst);
        let mut buf = [0u8; 512];
        let mut answered = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if n < 12 {
                continue;
            }
            buf[2] |= 0x80; // QR: a response
            buf[3] = 0x83; // RA, rcode 3 (NXDOMAIN)
            let _ = socket.send_to(&buf[..n], from);
            answered += 1;
        }
        Ok(answered)
    })?
}

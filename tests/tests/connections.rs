//! The connections probe against the kernel's own counters and the errno each client got:
//! resets sent and received (nstat TcpOutRsts, TcpEstabResets, TcpAttemptFails in each
//! namespace) and the errors reported on sockets (ECONNREFUSED, ECONNRESET, EPIPE,
//! EHOSTUNREACH, ENETUNREACH, ETIMEDOUT), IPv4 and IPv6.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::*;
use serde_json::Value;

const HOST_UNREACH: u16 = 7001;
const NET_UNREACH: u16 = 7002;
const SILENT: u16 = 7003;
const CLOSED: u16 = 7004;
const ABORTS: u16 = 7005;
const ABORTS_AFTER_FIN: u16 = 7006;

/// How many connections each case makes.
const REFUSED: usize = 3;
const RESET: usize = 2;
const PIPE: usize = 2;
const UNREACH: usize = 2;

/// Whether this kernel has the tracepoints the probe needs (the probe says what it skips).
fn kernel_lacks() -> Option<String> {
    for tp in [
        "tcp/tcp_send_reset",
        "tcp/tcp_receive_reset",
        "sock/inet_sk_error_report",
    ] {
        let path = format!("/sys/kernel/tracing/events/{tp}/format");
        if !std::path::Path::new(&path).exists() {
            return Some(format!("this kernel has no tracepoint {tp}"));
        }
    }
    None
}

/// Whether `tcp:tcp_send_reset` fires for resets sent without a socket (the 6.10+ record, with
/// the addresses as sockaddrs): only then can every sent reset be counted.
fn send_reset_covers_closed_ports() -> Result<bool> {
    let format = std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")?;
    Ok(format.contains("saddr[28]"))
}

/// Sets SO_LINGER {on, 0}: closing then aborts the connection with a reset.
fn linger_zero(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a pointer to a linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A server that accepts `n` connections and aborts each (SO_LINGER 0), after a FIN first when
/// `fin_first` (the client is then in CLOSE_WAIT and sees EPIPE).
fn aborting_server(
    listener: TcpListener,
    n: usize,
    fin_first: bool,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        for _ in 0..n {
            let (stream, _) = listener.accept()?;
            if fin_first {
                // FIN first, and the reset only once the client says it read the FIN: a slow
                // guest could otherwise read the reset (ECONNRESET) before the end of stream.
                stream.shutdown(std::net::Shutdown::Write)?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut byte = [0u8; 1];
                (&stream)
                    .read_exact(&mut byte)
                    .context("the server waits for the client to read its FIN")?;
            }
            linger_zero(&stream)?;
            drop(stream);
        }
        Ok(())
    })
}

/// Connects with SYN retries limited to `syn_count` (TCP_SYNCNT), returning the errno.
fn connect_errno(dst: SocketAddr, syn_count: Option<i32>) -> Result<i32> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours, and is closed only by this OwnedFd.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if let Some(n) = syn_count {
        // SAFETY: a valid socket and an int option.
        let rc = unsafe {
            libc::setsockopt(
                owned.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_SYNCNT,
                (&raw const n).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("TCP_SYNCNT: {}", std::io::Error::last_os_error());
        }
    }
    // A std socket address converts to the C one through a std stream's connect; build it by
    // hand instead.
    let rc = match dst {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid socket and address of the size given.
            unsafe {
                libc::connect(
                    owned.as_raw_fd(),
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe {
                libc::connect(
                    owned.as_raw_fd(),
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc == 0 {
        bail!("connect to {dst} succeeded, a failure was staged");
    }
    Ok(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// The errno of a std I/O error.
fn errno_of(r: std::io::Result<usize>, what: &str) -> Result<i32> {
    match r {
        Ok(n) => bail!("{what} returned {n}, an error was staged"),
        Err(e) => e
            .raw_os_error()
            .with_context(|| format!("{what} failed without an errno: {e}")),
    }
}

fn name(errno: i32) -> &'static str {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "unexpected",
    }
}

/// The nstat counters of one namespace the test compares with.
fn counters(node: &Node) -> Result<[u64; 3]> {
    Ok([
        nstat(node, "TcpOutRsts")?,
        nstat(node, "TcpEstabResets")?,
        nstat(node, "TcpAttemptFails")?,
    ])
}

fn delta(after: [u64; 3], before: [u64; 3]) -> [u64; 3] {
    [
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    ]
}

/// Every failure case once, traced; the counts compared with nstat and the clients' errnos.
fn failures(ipv6: bool) -> Result<()> {
    require_root();
    if let Some(reason) = kernel_lacks() {
        skip(&reason);
        return Ok(());
    }
    let mut lab = Lab::new()?;
    let (s6, c6) = if ipv6 {
        (Some("fd00:234::1/64"), Some("fd00:234::2/64"))
    } else {
        (None, None)
    };
    let server = lab.node("srv", "10.234.0.1/24", s6)?;
    let client = lab.node("cli", "10.234.0.2/24", c6)?;
    let (iptables, host, net) = if ipv6 {
        ("ip6tables", "icmp6-addr-unreachable", "icmp6-no-route")
    } else {
        ("iptables", "icmp-host-unreachable", "icmp-net-unreachable")
    };
    for (port, target) in [
        (HOST_UNREACH, Some(host)),
        (NET_UNREACH, Some(net)),
        (SILENT, None),
    ] {
        let port = port.to_string();
        let mut rule = vec![iptables, "-A", "INPUT", "-p", "tcp", "--dport", &port];
        match target {
            Some(t) => rule.extend(["-j", "REJECT", "--reject-with", t]),
            None => rule.extend(["-j", "DROP"]),
        }
        server.run(&rule)?;
    }
    let ip: IpAddr = match (ipv6, server.ipv6) {
        (true, Some(v6)) => v6.into(),
        _ => server.ipv4.into(),
    };
    let any: IpAddr = if ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let aborts = server.enter(|| TcpListener::bind(SocketAddr::new(any, ABORTS)))??;
    let aborts_after_fin =
        server.enter(|| TcpListener::bind(SocketAddr::new(any, ABORTS_AFTER_FIN)))??;

    let (server_before, client_before) = (counters(&server)?, counters(&client)?);
    let trace = Trace::start(&[
        "--netns",
        &server.netns,
        "--netns",
        &client.netns,
        "--probes",
        "connections",
        "-o",
        "json",
    ])?;
    let abort_thread = aborting_server(aborts, RESET, false);
    let fin_thread = aborting_server(aborts_after_fin, PIPE, true);
    // Phase 1: failures by reset. Each client records the errno it got.
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    let phase1 = client.enter(|| -> Result<Vec<i32>> {
        let mut errnos = Vec::new();
        for _ in 0..REFUSED {
            let r =
                TcpStream::connect_timeout(&SocketAddr::new(ip, CLOSED), Duration::from_secs(5));
            errnos.push(match r {
                Ok(_) => bail!("a connection to a closed port succeeded"),
                Err(e) => e
                    .raw_os_error()
                    .context("connect failed without an errno")?,
            });
        }
        for _ in 0..RESET {
            // On a slow guest the reset can strike before connect() returns: connect() then
            // reports it (ECONNRESET), which is the errno this application saw.
            errnos.push(match TcpStream::connect(SocketAddr::new(ip, ABORTS)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    errno_of(s.read(&mut [0u8; 64]), "recv from an aborting peer")?
                }
                Err(e) => e
                    .raw_os_error()
                    .with_context(|| format!("connect to the aborting server: {e}"))?,
            });
        }
        for _ in 0..PIPE {
            let mut s = TcpStream::connect(SocketAddr::new(ip, ABORTS_AFTER_FIN))
                .context("connect to the server that aborts after its FIN")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            // The peer's FIN (CLOSE_WAIT), then its reset a little later.
            let n = s
                .read(&mut [0u8; 64])
                .context("read the FIN of the server that aborts after it")?;
            if n != 0 {
                bail!("the aborting peer sent data");
            }
            s.write_all(b"k")
                .context("tell the server the FIN was read")?;
            std::thread::sleep(Duration::from_millis(400));
            errnos.push(errno_of(s.write(b"late"), "send after the peer's reset")?);
        }
        Ok(errnos)
    })??;
    for t in [abort_thread, fin_thread] {
        t.join()
            .map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
    }
    let client_mid = counters(&client)?;
    // Phase 2: failures without a reset (ICMP errors, a SYN never answered).
    let phase2 = client.enter(|| -> Result<Vec<i32>> {
        let mut errnos = Vec::new();
        for _ in 0..UNREACH {
            errnos.push(connect_errno(SocketAddr::new(ip, HOST_UNREACH), None)?);
            errnos.push(connect_errno(SocketAddr::new(ip, NET_UNREACH), None)?);
        }
        // One SYN and one retransmission, then ETIMEDOUT (about 3 s).
        errnos.push(connect_errno(SocketAddr::new(ip, SILENT), Some(1))?);
        Ok(errnos)
    })??;
    for e in phase1.iter().chain(&phase2) {
        *seen.entry(name(*e)).or_default() += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    let done = trace.stop()?;
    let server_d = delta(counters(&server)?, server_before);
    let client_d = delta(counters(&client)?, client_before);
    let phase1_attempt_fails = client_mid[2] - client_before[2];
    eprintln!(
        "errnos the clients got: {seen:?}; server nstat Δ[OutRsts, EstabResets, AttemptFails] \
         {server_d:?}; client {client_d:?} (AttemptFails in the reset phase: \
         {phase1_attempt_fails})"
    );
    let expected: BTreeMap<&str, u64> = [
        ("ECONNREFUSED", REFUSED as u64),
        ("ECONNRESET", RESET as u64),
        ("EPIPE", PIPE as u64),
        ("EHOSTUNREACH", UNREACH as u64),
        ("ENETUNREACH", UNREACH as u64),
        ("ETIMEDOUT", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, expected, "the staged failures gave these errnos");
    assert!(done.success, "nettools failed: {}", done.stderr);

    let lines = done.json()?;
    let s = summary(&lines)?;
    let (srv_ns, cli_ns) = (server.inode()?, client.inode()?);
    let srv = &workload(s, srv_ns)?["connections"];
    let cli = &workload(s, cli_ns)?["connections"];
    // Runs of the programs the kernel skipped (a tracepoint in an interrupt while another BPF
    // program ran on that CPU; fdinfo recursion_misses): nettools reports them, and a count may
    // be short by at most that many. Without any, every count below is exact.
    let skipped = s["health"]["probe_runs_skipped"].as_u64().unwrap_or(0);
    eprintln!("nettools: server {srv}\nclient {cli}\nprobe runs skipped: {skipped}");
    let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
    let agrees = |got: u64, want: u64| got == want || (got < want && want - got <= skipped);

    // Sent resets: the kernel's TcpOutRsts in each namespace.
    if send_reset_covers_closed_ports()? {
        assert!(
            agrees(n(&srv["resets_sent"]), server_d[0]),
            "server sent: {srv}"
        );
    } else {
        // Older kernels do not trace resets sent without a socket (the closed port's).
        assert!(n(&srv["resets_sent"]) <= server_d[0], "{srv}");
        assert!(n(&srv["resets_sent"]) >= (RESET + PIPE) as u64, "{srv}");
    }
    assert!(
        agrees(n(&cli["resets_sent"]), client_d[0]),
        "client sent: {cli}"
    );
    // Received resets: in ESTABLISHED or CLOSE_WAIT (TcpEstabResets) and in SYN_SENT (the
    // reset phase's TcpAttemptFails); the server received none.
    assert!(
        agrees(
            n(&cli["resets_received"]),
            client_d[1] + phase1_attempt_fails
        ),
        "client received: {cli}"
    );
    assert!(
        agrees(n(&cli["resets_received"]), (REFUSED + RESET + PIPE) as u64),
        "{cli}"
    );
    assert_eq!(n(&srv["resets_received"]), 0, "{srv}");

    // Socket errors: exactly the errnos the clients got.
    let counted: BTreeMap<&str, u64> = cli["socket_errors"]
        .as_object()
        .context("no socket_errors object")?
        .iter()
        .map(|(k, v)| (name_static(k), n(v)))
        .collect();
    let short: u64 = expected
        .iter()
        .map(|(k, want)| want.saturating_sub(counted.get(k).copied().unwrap_or(0)))
        .sum();
    assert!(
        counted.keys().all(|k| expected.contains_key(k))
            && expected
                .iter()
                .all(|(k, want)| agrees(counted.get(k).copied().unwrap_or(0), *want))
            && short <= skipped,
        "socket errors per errno {counted:?}, the clients got {expected:?} \
         ({skipped} probe runs skipped): {cli}"
    );
    assert!(
        srv["socket_errors"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{srv}"
    );

    // One event each, in its namespace, with its flow, state and the process that connected.
    let events = |kind: &str, netns: u32| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["type"] == kind && l["netns"] == netns)
            .collect()
    };
    let port_of = |flow: &str| -> Option<u16> { flow.rsplit(':').next()?.parse().ok() };
    let refused: Vec<&Value> = events("tcp_reset", cli_ns)
        .into_iter()
        .filter(|e| e["direction"] == "received" && e["state"] == "SYN_SENT")
        .collect();
    assert!(
        agrees(refused.len() as u64, REFUSED as u64),
        "{} resets received in SYN_SENT",
        refused.len()
    );
    for e in &refused {
        let flow = e["flow"].as_str().unwrap_or("");
        assert_eq!(port_of(flow), Some(CLOSED), "{e}");
        assert!(
            flow.starts_with(&format!("tcp {}", fmt_ip(client_ip(&client, ipv6)))),
            "{e}"
        );
    }
    let sent: Vec<&Value> = events("tcp_reset", srv_ns)
        .into_iter()
        .filter(|e| e["direction"] == "sent")
        .collect();
    assert_eq!(
        sent.len() as u64,
        n(&srv["resets_sent"]),
        "one event per sent reset"
    );
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events("socket_error", cli_ns) {
        let error = name_static(e["error"].as_str().unwrap_or(""));
        *errors.entry(error).or_default() += 1;
        let port = port_of(e["flow"].as_str().unwrap_or(""));
        let want = match error {
            "ECONNREFUSED" => CLOSED,
            "ECONNRESET" => ABORTS,
            "EPIPE" => ABORTS_AFTER_FIN,
            "EHOSTUNREACH" => HOST_UNREACH,
            "ENETUNREACH" => NET_UNREACH,
            _ => SILENT,
        };
        assert_eq!(port, Some(want), "{e}");
        // Every one of these sockets was connected by this test process.
        assert_eq!(e["pid"], std::process::id(), "{e}");
    }
    assert_eq!(errors, counted, "one socket_error event per error counted");

    // The connections that were established have a line each, ended as they were: the client
    // received the resets, the server sent those of its aborts in ESTABLISHED.
    let hows = |netns: u32, port: u16| -> Vec<String> {
        events("tcp_connection", netns)
            .into_iter()
            .filter(|e| {
                e["flow"].as_str().is_some_and(|f| {
                    f.contains(&format!(":{port} ")) || f.ends_with(&format!(":{port}"))
                })
            })
            .map(|e| e["how"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for (netns, port, how, want) in [
        (cli_ns, ABORTS, "rst_received", RESET),
        (cli_ns, ABORTS_AFTER_FIN, "rst_received", PIPE),
        (srv_ns, ABORTS, "rst_sent", RESET),
    ] {
        let got = hows(netns, port);
        assert!(
            got.iter().all(|h| h == how) && agrees(got.len() as u64, want as u64),
            "connections to :{port} in {netns} ended {got:?}, want {want} {how}"
        );
    }
    assert!(
        agrees(n(&cli["closed"]["rst_received"]), (RESET + PIPE) as u64),
        "{cli}"
    );
    assert!(
        hows(cli_ns, CLOSED).is_empty() && hows(cli_ns, SILENT).is_empty(),
        "failed connects are socket errors, not finished connections"
    );
    Ok(())
}

fn client_ip(node: &Node, ipv6: bool) -> IpAddr {
    match (ipv6, node.ipv6) {
        (true, Some(v6)) => v6.into(),
        _ => node.ipv4.into(),
    }
}

/// A server and a client namespace on `10.N.0.0/24` (and `fd00:N::/64` with IPv6) and a
/// listener on the server at `port`: (lab, server, client, the server's address, listener).
fn server_and_client(
    n: u16,
    ipv6: bool,
    port: u16,
) -> Result<(Lab, Node, Node, IpAddr, TcpListener)> {
    let mut lab = Lab::new()?;
    let (s6, c6) = if ipv6 {
        (
            Some(format!("fd00:{n}::1/64")),
            Some(format!("fd00:{n}::2/64")),
        )
    } else {
        (None, None)
    };
    let server = lab.node("srv", &format!("10.{n}.0.1/24"), s6.as_deref())?;
    let client = lab.node("cli", &format!("10.{n}.0.2/24"), c6.as_deref())?;
    let ip = client_ip(&server, ipv6);
    let any: IpAddr = if ipv6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let listener = server.enter(|| TcpListener::bind(SocketAddr::new(any, port)))??;
    Ok((lab, server, client, ip, listener))
}

/// An address as nettools writes it in a flow (`[v6]` in brackets).
fn fmt_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// The test's own errno names for a name nettools printed (anything else is "unexpected").
fn name_static(s: &str) -> &'static str {
    [
        "ECONNREFUSED",
        "ECONNRESET",
        "EPIPE",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ETIMEDOUT",
    ]
    .into_iter()
    .find(|n| *n == s)
    .unwrap_or("unexpected")
}

#[test]
fn resets_and_socket_errors_ipv4() -> Result<()> {
    failures(false)
}

#[test]
fn resets_and_socket_errors_ipv6() -> Result<()> {
    failures(true)
}

/// `nettools serve --probes connections` on a lab: the reset and socket-error counters of each
/// namespace equal nstat's and the errnos the client got, every label of the closed sets is
/// exposed (zeros included), and `promtool check metrics` accepts the exposition.
#[test]
fn resets_and_socket_errors_are_scraped_as_counted() -> Result<()> {
    need!(&["promtool"]);
    if let Some(reason) = kernel_lacks() {
        skip(&reason);
        return Ok(());
    }
    let mut lab = Lab::new()?;
    let server = lab.node("srv", "10.235.0.1/24", None)?;
    let client = lab.node("cli", "10.235.0.2/24", None)?;
    let any: IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
    let aborts = server.enter(|| TcpListener::bind(SocketAddr::new(any, ABORTS)))??;
    let (server_before, client_before) = (counters(&server)?, counters(&client)?);
    let agent =
        nettools_tests::agent::Agent::start(&["--probes", "connections", "--refresh", "1s"])?;
    let abort_thread = aborting_server(aborts, RESET, false);
    let ip: IpAddr = server.ipv4.into();
    let errnos = client.enter(|| -> Result<Vec<i32>> {
        let mut errnos = Vec::new();
        for _ in 0..REFUSED {
            errnos.push(match TcpStream::connect(SocketAddr::new(ip, CLOSED)) {
                Ok(_) => bail!("a connection to a closed port succeeded"),
                Err(e) => e
                    .raw_os_error()
                    .context("connect failed without an errno")?,
            });
        }
        for _ in 0..RESET {
            // On a slow guest the reset can strike before connect() returns: connect() then
            // reports it (ECONNRESET), which is the errno this application saw.
            errnos.push(match TcpStream::connect(SocketAddr::new(ip, ABORTS)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    errno_of(s.read(&mut [0u8; 64]), "recv from an aborting peer")?
                }
                Err(e) => e
                    .raw_os_error()
                    .with_context(|| format!("connect to the aborting server: {e}"))?,
            });
        }
        Ok(errnos)
    })??;
    abort_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    let refused = errnos.iter().filter(|e| **e == libc::ECONNREFUSED).count();
    let reset = errnos.iter().filter(|e| **e == libc::ECONNRESET).count();
    assert_eq!((refused, reset), (REFUSED, RESET), "errnos: {errnos:?}");
    let server_d = delta(counters(&server)?, server_before);
    let client_d = delta(counters(&client)?, client_before);
    let (srv_ns, cli_ns) = (server.inode()?.to_string(), client.inode()?.to_string());
    let resets = |text: &str, netns: &str, direction: &str| {
        nettools_tests::prom::value(
            text,
            "nettools_tcp_resets_total",
            &[("netns", netns), ("direction", direction)],
        )
    };
    let want_received = (client_d[1] + client_d[2]) as f64;
    // Counts are read from the kernel at the scrape; RTT samples come with events, which the
    // agent drains on a short timer. Each connection gives two on each side: when established
    // and when it closed (the reset comes well within the second before a tcp_probe sample).
    let rtt_count = |text: &str, netns: &str| {
        nettools_tests::prom::value(text, "nettools_tcp_rtt_seconds_count", &[("netns", netns)])
    };
    let text = agent.scrape_until(Duration::from_secs(15), "the client's resets", |text| {
        Ok(resets(text, &cli_ns, "received")? == Some(want_received)
            && rtt_count(text, &cli_ns)? == Some(2.0 * RESET as f64)
            && rtt_count(text, &srv_ns)? == Some(2.0 * RESET as f64))
    })?;
    nettools_tests::prom::promtool_accepts(&text)?;
    eprintln!(
        "nstat Δ[OutRsts, EstabResets, AttemptFails]: server {server_d:?}, client {client_d:?}"
    );
    if send_reset_covers_closed_ports()? {
        assert_eq!(
            resets(&text, &srv_ns, "sent")?,
            Some(server_d[0] as f64),
            "{text}"
        );
    }
    assert_eq!(resets(&text, &cli_ns, "sent")?, Some(client_d[0] as f64));
    assert_eq!(resets(&text, &srv_ns, "received")?, Some(0.0));
    let errors = |errno: &str| {
        nettools_tests::prom::value(
            &text,
            "nettools_socket_errors_total",
            &[("netns", &cli_ns), ("errno", errno)],
        )
    };
    for (errno, want) in [
        ("ECONNREFUSED", REFUSED),
        ("ECONNRESET", RESET),
        ("EPIPE", 0),
        ("ETIMEDOUT", 0),
        ("EHOSTUNREACH", 0),
        ("ENETUNREACH", 0),
        ("other", 0),
    ] {
        assert_eq!(errors(errno)?, Some(want as f64), "{errno}: {text}");
    }
    // The aborted connections, closed on both sides: reset received by the client, sent by
    // the server; one RTT sample each.
    let closed = |netns: &str, how: &str| {
        nettools_tests::prom::value(
            &text,
            "nettools_tcp_connections_closed_total",
            &[("netns", netns), ("how", how)],
        )
    };
    for how in ["fin", "rst_received", "rst_sent", "timeout", "error"] {
        let (cli_want, srv_want) = match how {
            "rst_received" => (RESET, 0),
            "rst_sent" => (0, RESET),
            _ => (0, 0),
        };
        assert_eq!(
            closed(&cli_ns, how)?,
            Some(cli_want as f64),
            "{how}: {text}"
        );
        assert_eq!(
            closed(&srv_ns, how)?,
            Some(srv_want as f64),
            "{how}: {text}"
        );
    }
    Ok(())
}

/// The port of the delayed request/response connection.
const DELAYED: u16 = 7010;
/// Bytes each side sends besides the ping-pong bytes.
const REQUEST_BYTES: usize = 3_000;
const RESPONSE_BYTES: usize = 123_457;
/// One-byte round trips the client times itself.
const PINGS: usize = 20;

/// One connection over a link whose client-to-server packets are held 20 ms (NFQUEUE): its
/// `tcp_connection` line on each side has the bytes each end counted, ended by FIN, the role,
/// and on the client a smoothed and a minimum RTT within 1 ms of the round trip the client
/// timed itself.
fn finished_connection(ipv6: bool) -> Result<()> {
    require_root();
    // Only the state-change tracepoint is needed here.
    if !std::path::Path::new("/sys/kernel/tracing/events/sock/inet_sock_set_state/format").exists()
    {
        skip("this kernel has no tracepoint sock/inet_sock_set_state");
        return Ok(());
    }
    let (_lab, server, client, ip, listener) = server_and_client(236, ipv6, DELAYED)?;
    let delay = Duration::from_millis(20);
    let port = DELAYED.to_string();
    let held = nettools::lab::delay::Delay::start(
        &client,
        ipv6,
        "OUTPUT",
        &["-p", "tcp", "--dport", &port],
        0,
        delay,
    )?;
    let trace = Trace::start(&[
        "--netns",
        &server.netns,
        "--netns",
        &client.netns,
        "--probes",
        "connections",
        "-o",
        "json",
    ])?;
    let server_thread = std::thread::spawn(move || -> Result<(usize, u16)> {
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        let mut request = vec![0u8; REQUEST_BYTES];
        s.read_exact(&mut request)?;
        let mut b = [0u8; 1];
        for _ in 0..PINGS {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        // The server closes first: the client's FIN, sent last, is then acknowledged at once
        // by a socket in FIN_WAIT2, so the client's last RTT sample is a round trip like the
        // ones it timed (a FIN sent first waited for the server to wake and write, which
        // under load lifted the smoothed RTT by 3 ms).
        s.write_all(&pattern(RESPONSE_BYTES, 3))?;
        drop(s);
        Ok((REQUEST_BYTES + PINGS, peer.port()))
    });
    let (rtts, client_received, client_port) =
        client.enter(|| -> Result<(Vec<Duration>, usize, u16)> {
            let mut s = TcpStream::connect(SocketAddr::new(ip, DELAYED))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_nodelay(true)?;
            let port = s.local_addr()?.port();
            // The request first, then the round trips: the kernel's smoothed RTT at the close
            // is then mostly made of round trips like those the client times (the request's
            // last segment may have waited for a delayed ACK).
            s.write_all(&pattern(REQUEST_BYTES, 5))?;
            let mut rtts = Vec::new();
            let mut b = [7u8; 1];
            for _ in 0..PINGS {
                let t = std::time::Instant::now();
                s.write_all(&b)?;
                s.read_exact(&mut b)?;
                rtts.push(t.elapsed());
            }
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)?;
            drop(s);
            Ok((rtts, PINGS + rest.len(), port))
        })??;
    let (server_received, _) = server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    // Both ends closed (the client's last ACK may still be held): wait out the hold.
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert_eq!(server_received, PINGS + REQUEST_BYTES);
    assert_eq!(client_received, PINGS + RESPONSE_BYTES);
    let mut sorted = rtts.clone();
    sorted.sort();
    let measured_ms = sorted[sorted.len() / 2].as_secs_f64() * 1e3;
    let lines = done.json()?;
    let line = |netns: u32| -> Result<&Value> {
        lines
            .iter()
            .find(|l| {
                l["type"] == "tcp_connection"
                    && l["netns"] == netns
                    && l["flow"]
                        .as_str()
                        .is_some_and(|f| f.contains(&client_port.to_string()))
            })
            .with_context(|| format!("no tcp_connection line in netns {netns}"))
    };
    let cli = line(client.inode()?)?;
    let srv = line(server.inode()?)?;
    // Where SOCK_DONE cannot be read the kernel's bytes_received keeps the peer's FIN (the
    // summary's notes say so): one more byte each side.
    let fin = u64::from(summary(&lines)?["notes"].as_array().is_some_and(|n| {
        n.iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("SOCK_DONE")))
    }));
    eprintln!(
        "the client timed a round trip of {measured_ms:.3} ms (median of {PINGS})\nclient {cli}\nserver {srv}"
    );
    assert_eq!(cli["role"], "client", "{cli}");
    assert_eq!(srv["role"], "server", "{srv}");
    assert_eq!(cli["bytes_sent"], (PINGS + REQUEST_BYTES) as u64, "{cli}");
    assert_eq!(
        cli["bytes_received"],
        (PINGS + RESPONSE_BYTES) as u64 + fin,
        "{cli}"
    );
    assert_eq!(srv["bytes_sent"], (PINGS + RESPONSE_BYTES) as u64, "{srv}");
    assert_eq!(
        srv["bytes_received"],
        (PINGS + REQUEST_BYTES) as u64 + fin,
        "{srv}"
    );
    assert_eq!(cli["how"], "fin", "{cli}");
    assert_eq!(srv["how"], "fin", "{srv}");
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let (srtt, min_rtt) = (ms(&cli["srtt_ms"]), ms(&cli["min_rtt_ms"]));
    assert!(
        (srtt - measured_ms).abs() <= latency_tolerance_ms(1.0),
        "srtt {srtt} ms, the client measured {measured_ms} ms"
    );
    let fastest = sorted[0].as_secs_f64() * 1e3;
    assert!(
        (min_rtt - fastest).abs() <= latency_tolerance_ms(1.0),
        "min RTT {min_rtt} ms, the client's fastest round trip {fastest} ms"
    );
    Ok(())
}

#[test]
fn a_finished_connection_has_its_bytes_and_rtt_ipv4() -> Result<()> {
    finished_connection(false)
}

#[test]
fn a_finished_connection_has_its_bytes_and_rtt_ipv6() -> Result<()> {
    finished_connection(true)
}

/// The kernel memory charged for each BPF map a process holds (`memlock:` in the fdinfo of its
/// map fds), by the map's name as the kernel keeps it (15 characters at most; bpftool names
/// them by id).
fn map_memlock(pid: u32) -> Result<BTreeMap<String, u64>> {
    let out = std::process::Command::new("bpftool")
        .args(["--json", "map", "show"])
        .output()
        .context("cannot run bpftool")?;
    let all: Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let names: BTreeMap<u64, String> = all
        .as_array()
        .context("bpftool did not list maps")?
        .iter()
        .filter_map(|m| Some((m["id"].as_u64()?, m["name"].as_str()?.to_string())))
        .collect();
    let mut by_id: BTreeMap<u64, u64> = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().parse().ok())?
            })
        };
        if let (Some(id), Some(bytes)) = (field("map_id"), field("memlock")) {
            by_id.insert(id, bytes);
        }
    }
    Ok(by_id
        .into_iter()
        .map(|(id, bytes)| {
            let name = names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("map {id}"));
            (name, bytes)
        })
        .collect())
}

/// The maps only the connections probe writes, as the kernel names them.
const CONNECTION_MAPS: [&str; 7] = [
    "RESET_TOTALS",
    "RESET_FLOWS",
    "SOCKET_ERROR_TO",
    "SOCKET_ERROR_FL",
    "CONN_CLOSED_TOT",
    "CONN_STARTS",
    "CLOSED_WITH_ERR",
];

/// The maps of the default probes that a `--probes connections` trace does not run, as the
/// kernel names them: the drops, retransmits, neighbours, handshake, DNS and ICMP probes' and
/// the tc programs' (no probe of that trace is on the veth), and the stack counts (no
/// `--stacks`).
const OTHER_PROBES_MAPS: [&str; 11] = [
    "DROP_COUNTS",
    "DROP_STACKS",
    "RETRANSMIT_FLOW",
    "RETRANSMIT_TOTA",
    "NEIGH_FAILURES",
    "HANDSHAKES",
    "DNS_PENDING",
    "ICMP_PENDING",
    "IF_SLOTS",
    "TRAFFIC_OVERFLO",
    "NEIGH_PROBES",
];

/// A trace pays only for the maps of the probes it runs: their kernel memory (`memlock` of each
/// map fd nettools holds, the kernel's own figure) is a few KiB when the probe is off, megabytes
/// when it is on. A default trace holds the default probes' maps and not the connections
/// probe's; `--probes connections` the reverse.
#[test]
fn maps_of_probes_that_are_off_cost_nothing() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let node = lab.node("mem", "10.237.0.1/24", None)?;
    let mut measured = Vec::new();
    for probes in [None, Some("connections")] {
        let mut args = vec!["--netns", node.netns.as_str(), "-o", "json"];
        if let Some(p) = probes {
            args.extend(["--probes", p]);
        }
        let trace = Trace::start(&args)?;
        let maps = map_memlock(trace.pid());
        trace.stop()?;
        let maps = maps?;
        let total: u64 = maps.values().sum();
        let sum_of = |names: &[&str]| -> Result<u64> {
            names
                .iter()
                .map(|n| {
                    maps.get(*n)
                        .copied()
                        .with_context(|| format!("nettools holds no map {n}: {maps:?}"))
                })
                .sum()
        };
        let (conns, others) = (sum_of(&CONNECTION_MAPS)?, sum_of(&OTHER_PROBES_MAPS)?);
        eprintln!(
            "probes {}: {} maps, {:.1} MiB in all; {:.1} KiB for the connections maps, {:.1} \
             KiB for the other probes' maps",
            probes.unwrap_or("(default)"),
            maps.len(),
            total as f64 / (1 << 20) as f64,
            conns as f64 / 1024.0,
            others as f64 / 1024.0
        );
        measured.push((conns, others, maps));
    }
    let small = 64 << 10;
    let (conns, others, maps) = &measured[0];
    assert!(
        *conns <= 256 << 10,
        "a default trace holds {conns} bytes of connections maps"
    );
    assert!(
        *others >= 4 << 20,
        "a default trace holds only {others} bytes of its probes' maps: {maps:?}"
    );
    let (conns, _, maps) = &measured[1];
    assert!(
        *conns >= 1 << 20,
        "with the probe its maps hold only {conns} bytes"
    );
    for name in OTHER_PROBES_MAPS {
        let bytes = maps.get(name).copied().unwrap_or(u64::MAX);
        assert!(
            bytes <= small,
            "a --probes connections trace holds {bytes} bytes for {name}, a map it never writes"
        );
    }
    Ok(())
}

/// Round trips the open-connection test's client times (about 20 ms each).
const OPEN_PINGS: usize = 150;

/// One connection kept open over a link whose client-to-server packets are held 20 ms: the
/// trace ends while it is still open, so every RTT sample in the client's workload comes from
/// the samplers of open connections (established, `tcp:tcp_probe`, state changes), none from a
/// close. Its srtt p50 is within 1 ms of the median round trip the client timed itself, its
/// min RTT p50 within 1 ms of the fastest, and the samples are bounded (one at establishment,
/// at most one a second after) although hundreds of segments arrived. The `.hgrm` files hold
/// the same counts.
fn open_connection_rtt(ipv6: bool) -> Result<()> {
    require_root();
    for tp in ["sock/inet_sock_set_state", "tcp/tcp_probe"] {
        if !std::path::Path::new(&format!("/sys/kernel/tracing/events/{tp}/format")).exists() {
            skip(&format!("this kernel has no tracepoint {tp}"));
            return Ok(());
        }
    }
    // Older kernels' tcp_probe records have no socket address: no sampler then (a note).
    let probe = std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_probe/format")?;
    if !probe.contains(" skaddr;") {
        skip("this kernel's tcp:tcp_probe record has no skaddr field");
        return Ok(());
    }
    let (_lab, server, client, ip, listener) = server_and_client(238, ipv6, DELAYED)?;
    let port = DELAYED.to_string();
    let held = nettools::lab::delay::Delay::start(
        &client,
        ipv6,
        "OUTPUT",
        &["-p", "tcp", "--dport", &port],
        0,
        Duration::from_millis(20),
    )?;
    let hgrm = Scratch::new("rtt-hgrm")?;
    let trace = Trace::start(&[
        "--netns",
        &server.netns,
        "--netns",
        &client.netns,
        "--probes",
        "connections",
        "-o",
        "json",
        "--hgrm",
        &hgrm.0.display().to_string(),
    ])?;
    let server_thread = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        for _ in 0..OPEN_PINGS {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        // Holds the connection open until the client's end of stream.
        let _ = s.read(&mut b);
        Ok(())
    });
    let started = std::time::Instant::now();
    let (rtts, stream) = client.enter(|| -> Result<(Vec<Duration>, TcpStream)> {
        let mut s = TcpStream::connect(SocketAddr::new(ip, DELAYED))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        let mut rtts = Vec::new();
        let mut b = [7u8; 1];
        for _ in 0..OPEN_PINGS {
            let t = std::time::Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            rtts.push(t.elapsed());
        }
        Ok((rtts, s))
    })??;
    // The trace ends with the connection still open.
    let lasted = started.elapsed();
    let done = trace.stop()?;
    drop(stream);
    server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    drop(held);
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2].as_secs_f64() * 1e3;
    let fastest = sorted[0].as_secs_f64() * 1e3;
    let lines = done.json()?;
    assert!(
        !lines.iter().any(|l| l["type"] == "tcp_connection"),
        "the connection closed during the trace"
    );
    let s = summary(&lines)?;
    let c = &workload(s, client.inode()?)?["connections"];
    eprintln!(
        "the client timed {OPEN_PINGS} round trips in {:.2} s: median {median:.3} ms, fastest \
         {fastest:.3} ms\nclient workload: {c}",
        lasted.as_secs_f64()
    );
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let srtt = ms(&c["rtt"]["p50_ms"]);
    let min = ms(&c["min_rtt"]["p50_ms"]);
    assert!(
        (srtt - median).abs() <= latency_tolerance_ms(1.0),
        "srtt p50 {srtt} ms, the client measured {median} ms"
    );
    assert!(
        (min - fastest).abs() <= latency_tolerance_ms(1.0),
        "min RTT p50 {min} ms, the client's fastest round trip {fastest} ms"
    );
    // One sample when established, then at most one per started second of traffic.
    let count = c["rtt"]["count"].as_u64().unwrap_or(0);
    let bound = 1 + lasted.as_secs() + 1;
    assert!(
        (2..=bound).contains(&count),
        "{count} samples over {:.2} s (expected 2..={bound})",
        lasted.as_secs_f64()
    );
    assert_eq!(c["min_rtt"]["count"].as_u64(), Some(count), "{c}");
    // The .hgrm files: the client's workload's srtt file counts the same samples.
    let name = workload(s, client.inode()?)?["name"]
        .as_str()
        .context("workload name")?
        .to_string();
    let file = hgrm.file(&format!("{name}-tcp_srtt.hgrm"));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("{file}: {:?}", hgrm.names()))?;
    assert!(
        text.contains(&format!("Total count    = {count:>12}")),
        "{file}:\n{text}"
    );
    Ok(())
}

#[test]
fn an_open_connection_is_sampled_for_rtt_ipv4() -> Result<()> {
    open_connection_rtt(false)
}

#[test]
fn an_open_connection_is_sampled_for_rtt_ipv6() -> Result<()> {
    open_connection_rtt(true)
}

/// The port of the retransmission-sample test.
const RETRANSMITTED: u16 = 7011;

/// A connection whose peer stops answering (its INPUT drops the segments) retransmits on its
/// timer, and no ACK arrives: the client's RTT samples are exactly the one taken when it was
/// established plus one per retransmitted segment, which nstat's TcpRetransSegs counts in its
/// namespace.
fn retransmit_samples(ipv6: bool) -> Result<()> {
    require_root();
    for tp in ["sock/inet_sock_set_state", "tcp/tcp_retransmit_skb"] {
        if !std::path::Path::new(&format!("/sys/kernel/tracing/events/{tp}/format")).exists() {
            skip(&format!("this kernel has no tracepoint {tp}"));
            return Ok(());
        }
    }
    let (_lab, server, client, ip, listener) = server_and_client(239, ipv6, RETRANSMITTED)?;
    let trace = Trace::start(&[
        "--netns",
        &client.netns,
        "--probes",
        "connections",
        "-o",
        "json",
    ])?;
    let before_connect = nstat(&client, "TcpRetransSegs")?;
    let mut stream = client.enter(|| TcpStream::connect(SocketAddr::new(ip, RETRANSMITTED)))??;
    let (_accepted, _) = listener.accept()?;
    let before = nstat(&client, "TcpRetransSegs")?;
    // A handshake that needed a retransmitted SYN has no RTT measurement (Karn): no sample.
    let established_sample = u64::from(before == before_connect);
    let iptables = if ipv6 { "ip6tables" } else { "iptables" };
    let port = RETRANSMITTED.to_string();
    server.run(&[
        iptables, "-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
    ])?;
    stream.write_all(b"x")?;
    // RTO 200 ms, doubling: a few retransmissions.
    std::thread::sleep(Duration::from_millis(2500));
    let after = nstat(&client, "TcpRetransSegs")?;
    let done = trace.stop()?;
    let retransmitted = after - before;
    let lines = done.json()?;
    let c = &workload(summary(&lines)?, client.inode()?)?["connections"];
    eprintln!(
        "{retransmitted} segments retransmitted (nstat), {} during the handshake\nclient \
         workload: {c}",
        before - before_connect
    );
    assert!(retransmitted >= 2, "only {retransmitted} retransmissions");
    assert_eq!(
        c["rtt"]["count"].as_u64(),
        Some(established_sample + retransmitted),
        "{c}"
    );
    drop(stream);
    Ok(())
}

#[test]
fn a_retransmission_is_an_rtt_sample_ipv4() -> Result<()> {
    retransmit_samples(false)
}

#[test]
fn a_retransmission_is_an_rtt_sample_ipv6() -> Result<()> {
    retransmit_samples(true)
}

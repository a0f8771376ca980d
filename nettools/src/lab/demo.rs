//! `nettools lab`: a throwaway lab that stages each of the five classic container network
//! problems in its own namespace, traces it with every probe, prints the report and tears it
//! down.
//!
//! | namespace | problem staged | where it shows |
//! |---|---|---|
//! | firewall | iptables drops UDP port 7777 (client sends to it) | drops NETFILTER_DROP |
//! | lossy | its TCP stream to lossy-rx loses 10 % of its data segments (iptables in lossy-rx) | retransmits (drops in lossy-rx) |
//! | arp | sends to 10.231.0.99, which nobody owns | incomplete ARP |
//! | dns | asks dns-slow (answers in 200 ms) and dns-fail (SERVFAIL; never answers lost.lab) | DNS latency, rcodes, unanswered |
//! | slow | answers late: SYNs and pings to it wait 50 ms (NFQUEUE) | its answer time; client's connect and ping latency |
//! | router | forwards for noroute but has no route to 10.99.0.0/16 | drops IP_INNOROUTES |
//! | client | also connects to TCP 8080 on sink, where nothing listens | resets sent by sink, received by client; ECONNREFUSED |
//!
//! After the table report it runs `nettools check` from the namespace of each problem (the
//! traffic stopped, the faults still up) and prints each command with its verdict ([`checks`]).
//!
//! With the connections probe (the lab runs every probe) the report also has the TCP round-trip
//! times: the lossy stream's, and the client's connections to slow (their handshake waits 50 ms,
//! the kernel's first RTT sample).
//! sink, client, lossy-rx, noroute, dns-slow and dns-fail are the peers.
//!
//! Latency is measured on each workload's veth, so a delay inside a namespace shows as that
//! namespace's own answer time (and as its clients' connect latency), never as something the
//! veth of the namespace that waits before sending could see.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use super::{
    Lab, Node,
    delay::Delay,
    dns::{Behaviour, DnsServer, query_udp},
};
use crate::{
    cli::LabArgs,
    discover::Workload,
    preflight,
    probe::ProbeKind,
    report::{Output, text::Safe},
    trace::{self, TraceSpec},
};

/// The UDP port the firewall drops.
pub const BLOCKED_PORT: u16 = 7777;
/// The sink's UDP and TCP ports.
pub const SINK_UDP: u16 = 7000;
pub const SINK_TCP: u16 = 8080;
/// The address nobody owns.
pub const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 99);
/// Where noroute sends, and the router has no route to.
pub const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The slow DNS server's delay and the slow namespace's added latency.
pub const DNS_DELAY: Duration = Duration::from_millis(200);
pub const ADDED_LATENCY: Duration = Duration::from_millis(50);
/// How often the client connects to sink's closed TCP port (ms).
pub const REFUSED_EVERY_MS: u64 = 300;

/// The namespaces of the lab, by role.
pub struct Staged {
    pub sink: Node,
    pub client: Node,
    pub firewall: Node,
    pub lossy: Node,
    pub lossy_rx: Node,
    pub arp: Node,
    pub dns: Node,
    pub dns_slow: Node,
    pub dns_fail: Node,
    pub slow: Node,
    pub noroute: Node,
    pub router: Node,
}

impl Staged {
    pub fn all(&self) -> [(&Node, &'static str); 12] {
        [
            (
                &self.firewall,
                "firewall drop: iptables drops UDP port 7777 sent by client",
            ),
            (
                &self.lossy,
                "lossy link: its TCP stream to lossy-rx loses 10 % of the data -> retransmits",
            ),
            (
                &self.arp,
                "incomplete ARP: sends to 10.231.0.99, which nobody owns",
            ),
            (
                &self.dns,
                "DNS: dns-slow answers in 200 ms, dns-fail answers SERVFAIL and never answers lost.lab",
            ),
            (
                &self.slow,
                "latency: answers late, SYNs and pings to it wait 50 ms (NFQUEUE)",
            ),
            (
                &self.router,
                "routing: forwards for noroute but has no route to 10.99.0.0/16",
            ),
            (
                &self.sink,
                "UDP sink; resets the connects to its TCP 8080 (nothing listens)",
            ),
            (
                &self.client,
                "sends to firewall and sink, connects to and pings slow, connects to sink's closed port",
            ),
            (
                &self.lossy_rx,
                "the far end of the lossy link (its iptables drops 10 %)",
            ),
            (&self.noroute, "healthy: sends to 10.99.0.1 through router"),
            (&self.dns_slow, "healthy: slow DNS server"),
            (&self.dns_fail, "healthy: failing DNS server"),
        ]
    }
}

/// Runs `step` in `node` every `period` until `stop` (errors end the loop quietly: the lab is a
/// demo, and the report shows what happened).
fn every(
    node: &Node,
    period: Duration,
    stop: &Arc<AtomicBool>,
    mut step: impl FnMut() -> Result<()> + Send + 'static,
) -> JoinHandle<()> {
    let node = node.clone();
    let stop = stop.clone();
    std::thread::spawn(move || {
        let _ = node.enter(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = step() {
                    log::debug!("lab traffic: {e:#}");
                }
                std::thread::sleep(period);
            }
        });
    })
}

/// An ICMP echo request through a ping socket (the namespace allows them; see [`stage`]).
fn ping_once(to: Ipv4Addr, seq: u16) -> Result<()> {
    // SAFETY: plain socket calls with valid arguments; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
        if fd < 0 {
            anyhow::bail!(
                "cannot open a ping socket: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut req = [8u8, 0, 0, 0, 0, 0, 0, 0];
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        // Wait for the reply so the socket is there to take it.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let mut buf = [0u8; 64];
        libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        libc::close(fd);
    }
    Ok(())
}

/// Builds the lab's namespaces and faults (no traffic yet).
pub fn stage(lab: &mut Lab) -> Result<(Staged, Vec<Delay>, Vec<DnsServer>)> {
    let node =
        |lab: &mut Lab, name: &str, last: u8| lab.node(name, &format!("10.231.0.{last}/24"), None);
    let s = Staged {
        sink: node(lab, "sink", 10)?,
        client: node(lab, "client", 11)?,
        firewall: node(lab, "firewall", 12)?,
        lossy: node(lab, "lossy", 13)?,
        lossy_rx: node(lab, "lossy-rx", 21)?,
        arp: node(lab, "arp", 14)?,
        dns: node(lab, "dns", 15)?,
        dns_slow: node(lab, "dns-slow", 16)?,
        dns_fail: node(lab, "dns-fail", 17)?,
        slow: node(lab, "slow", 18)?,
        noroute: node(lab, "noroute", 19)?,
        router: node(lab, "router", 20)?,
    };
    s.firewall.drop_input("udp", BLOCKED_PORT)?;
    // Loss on the receiving side (a drop in the sender's own OUTPUT is not a loss to TCP: it
    // just sends again later). Data segments only, so lossy-rx's handshake packets and ACKs
    // are not lost and lossy-rx itself retransmits nothing.
    s.lossy_rx.run(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &SINK_TCP.to_string(),
        "-m",
        "length",
        "--length",
        "200:65535",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.1",
        "-j",
        "DROP",
    ])?;
    s.arp.sysctl("net.ipv4.neigh.eth0.retrans_time_ms", "200")?;
    s.client
        .sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
    s.router.sysctl("net.ipv4.ip_forward", "1")?;
    s.noroute.run(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        &s.router.ipv4.to_string(),
    ])?;
    let delays = vec![
        Delay::start(
            &s.slow,
            false,
            "INPUT",
            &["-p", "tcp", "--syn"],
            0,
            ADDED_LATENCY,
        )?,
        Delay::start(
            &s.slow,
            false,
            "INPUT",
            &["-p", "icmp", "--icmp-type", "echo-request"],
            1,
            ADDED_LATENCY,
        )?,
    ];
    let servers = vec![
        DnsServer::start(
            &s.dns_slow,
            s.dns_slow.ipv4.into(),
            HashMap::new(),
            Behaviour::Answer {
                delay: DNS_DELAY,
                addr: s.sink.ipv4,
            },
        )?,
        DnsServer::start(
            &s.dns_fail,
            s.dns_fail.ipv4.into(),
            HashMap::from([("lost.lab".to_string(), Behaviour::Never)]),
            Behaviour::Rcode(2),
        )?,
    ];
    // dns's resolver, for the lab's `check --proto dns` (its traffic asks both servers).
    s.dns.resolv_conf(&[s.dns_fail.ipv4.into()])?;
    Ok((s, delays, servers))
}

/// A TCP server in `node` on [`SINK_TCP`] that reads and discards.
fn tcp_sink(node: &Node, stop: &Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let listener = node.enter(|| TcpListener::bind(("0.0.0.0", SINK_TCP)))??;
    listener.set_nonblocking(true)?;
    let stop = stop.clone();
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = vec![0u8; 65536];
                        while !stop.load(Ordering::Relaxed) {
                            match conn.read(&mut buf) {
                                Ok(0) => return,
                                Ok(_) => {}
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }))
}

/// Starts the traffic that makes the staged problems (and the healthy peers) visible.
pub fn traffic(s: &Staged, stop: &Arc<AtomicBool>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    // The sink: UDP, reading and discarding.
    let udp_sink = s.sink.enter(|| UdpSocket::bind(("0.0.0.0", SINK_UDP)))??;
    udp_sink.set_read_timeout(Some(Duration::from_millis(100)))?;
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = udp_sink.recv(&mut buf);
            }
        }));
    }
    threads.push(tcp_sink(&s.lossy_rx, stop)?);
    threads.push(tcp_sink(&s.slow, stop)?);
    let (firewall, sink) = (s.firewall.ipv4, s.sink.ipv4);
    let (lossy_rx, slow) = (s.lossy_rx.ipv4, s.slow.ipv4);

    let mut client_sock: Option<UdpSocket> = None;
    threads.push(every(
        &s.client,
        Duration::from_millis(100),
        stop,
        move || {
            let sock = match &client_sock {
                Some(s) => s,
                None => client_sock.insert(UdpSocket::bind("0.0.0.0:0")?),
            };
            sock.send_to(b"blocked", SocketAddr::from((firewall, BLOCKED_PORT)))?;
            sock.send_to(b"fine", SocketAddr::from((sink, SINK_UDP)))?;
            Ok(())
        },
    ));
    // A steady TCP stream from lossy to lossy-rx, about 3 MB/s.
    let mut stream: Option<TcpStream> = None;
    let chunk = vec![0x5au8; 64 * 1024];
    threads.push(every(
        &s.lossy,
        Duration::from_millis(20),
        stop,
        move || {
            if stream.is_none() {
                stream = Some(TcpStream::connect_timeout(
                    &SocketAddr::from((lossy_rx, SINK_TCP)),
                    Duration::from_secs(2),
                )?);
            }
            if let Some(st) = stream.as_mut()
                && st.write_all(&chunk).is_err()
            {
                stream = None;
            }
            Ok(())
        },
    ));
    threads.push(every(&s.arp, Duration::from_millis(500), stop, move || {
        UdpSocket::bind("0.0.0.0:0")?.send_to(b"anyone?", SocketAddr::from((NOBODY, 9)))?;
        Ok(())
    }));
    {
        let (dns, slow_server, fail_server) = (s.dns.clone(), s.dns_slow.ipv4, s.dns_fail.ipv4);
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut id = 1u16;
            while !stop.load(Ordering::Relaxed) {
                for (server, name) in [
                    (slow_server, "app.lab"),
                    (fail_server, "db.lab"),
                    (fail_server, "lost.lab"),
                ] {
                    id = id.wrapping_add(1);
                    let _ = query_udp(&dns, server.into(), id, name, Duration::from_millis(300));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    let mut seq = 0u16;
    threads.push(every(
        &s.client,
        Duration::from_millis(300),
        stop,
        move || {
            seq = seq.wrapping_add(1);
            ping_once(slow, seq)?;
            // Connect and close cleanly (a socket closed with unread data shows as QUEUE_PURGE
            // drops, which would be noise here).
            let mut conn = TcpStream::connect_timeout(
                &SocketAddr::from((slow, SINK_TCP)),
                Duration::from_secs(1),
            )?;
            conn.shutdown(std::net::Shutdown::Write)?;
            conn.set_read_timeout(Some(Duration::from_millis(300)))?;
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            Ok(())
        },
    ));
    // Connects to a port where nothing listens: sink answers each SYN with a reset, and the
    // client's connect fails with ECONNREFUSED (the expected outcome, so not an error here).
    threads.push(every(
        &s.client,
        Duration::from_millis(REFUSED_EVERY_MS),
        stop,
        move || match TcpStream::connect_timeout(
            &SocketAddr::from((sink, SINK_TCP)),
            Duration::from_secs(1),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => anyhow::bail!("a connection to sink's closed port succeeded"),
        },
    ));
    threads.push(every(
        &s.noroute,
        Duration::from_millis(300),
        stop,
        move || {
            UdpSocket::bind("0.0.0.0:0")?.send_to(b"where?", SocketAddr::from((UNROUTED, 9)))?;
            Ok(())
        },
    ));
    Ok(threads)
}

/// After the trace, `nettools check` from the namespace of each problem: (problem, source,
/// `--to`, `--proto`).
fn checks(s: &Staged) -> [(&'static str, &Node, String, &'static str); 6] {
    [
        (
            "firewall",
            &s.client,
            format!("{}:{BLOCKED_PORT}", s.firewall.ipv4),
            "udp",
        ),
        (
            "refused",
            &s.client,
            format!("{}:{SINK_TCP}", s.sink.ipv4),
            "tcp",
        ),
        ("routing", &s.noroute, UNROUTED.to_string(), "icmp"),
        ("arp", &s.arp, NOBODY.to_string(), "icmp"),
        // Through its resolv.conf, which names dns-fail (see `stage`).
        ("dns", &s.dns, "db.lab".to_string(), "dns"),
        ("latency", &s.client, s.slow.ipv4.to_string(), "icmp"),
    ]
}

/// How many probes each of the lab's checks sends, and how long each waits.
const CHECK_PROBES: &str = "2";
const CHECK_TIMEOUT: &str = "1s";

/// Runs the lab's checks one after the other and prints each command and its verdict.
async fn run_checks(s: &Staged, verbose: bool) -> Result<()> {
    let mut out = format!(
        "\nchecks (`nettools check` from the namespace with the problem, {CHECK_PROBES} probes each):\n"
    );
    for (problem, source, to, proto) in checks(s) {
        let argv = [
            "nettools",
            "check",
            "--netns",
            &source.netns,
            "--to",
            &to,
            "--proto",
            proto,
            "--count",
            CHECK_PROBES,
            "--timeout",
            CHECK_TIMEOUT,
        ];
        let args = match <crate::cli::Cli as clap::Parser>::try_parse_from(argv)?.command {
            crate::cli::Command::Check(args) => args,
            _ => anyhow::bail!("the lab's check command did not parse as a check"),
        };
        let verdict = crate::check::decide(&args, verbose).await?;
        let _ = writeln!(
            out,
            "  {problem:<8}  {}\n            {}: {}",
            Safe(&argv[1..].join(" ")),
            verdict.verdict,
            verdict.summary
        );
    }
    print!("{out}");
    std::io::stdout().flush()?;
    Ok(())
}

pub async fn run(args: &LabArgs, verbose: bool) -> Result<()> {
    preflight::require_privileges()?;
    let mut lab = Lab::new()?;
    eprintln!(
        "nettools: building lab {} (12 namespaces on a bridge, five problems staged)",
        lab.id
    );
    let (staged, delays, servers) = stage(&mut lab)?;
    let nodes = staged.all();
    let width = nodes.iter().map(|(n, _)| n.netns.len()).max().unwrap_or(0);
    for (node, what) in nodes {
        eprintln!("  {:<width$}  {what}", node.netns);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads = traffic(&staged, &stop)?;
    let workloads = staged
        .all()
        .iter()
        .map(|(n, _)| -> Result<Workload> {
            Ok(Workload {
                name: n.netns.clone(),
                netns: n.inode()?,
                netns_path: Some(n.path.clone()),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let traced = trace::run(TraceSpec {
        workloads,
        session: crate::session::Options {
            probes: ProbeKind::ALL.to_vec(),
            all: false,
            ring_buffer_bytes: 1 << 22,
            tc_mode: crate::probe::tc::Mode::Auto,
            // Short, so unanswered DNS queries show within the lab's few seconds.
            timeout: Duration::from_secs(1),
            transit_sample_shift: 0,
            stacks: false,
            verbose,
            // The lab's firewall problems name their rules.
            rules: true,
        },
        duration: Some(args.duration),
        output: args.output,
        out: args.out.clone(),
        table: args.table.clone(),
        thresholds: args.thresholds.thresholds(),
        hgrm_dir: None,
        folded: args.folded.clone(),
        stacks: args.stacks,
        live: Some(false),
        runtime: Default::default(),
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // With the traffic stopped (the checks follow their own packets), the faults still up.
    let checked = match traced {
        Ok(()) if args.output == Output::Table && !args.no_checks => {
            run_checks(&staged, verbose).await
        }
        other => other,
    };
    drop(servers);
    for d in delays {
        let _ = d.stop();
    }
    checked?;
    if args.keep {
        lab.keep();
        let names: Vec<String> = staged
            .all()
            .iter()
            .map(|(n, _)| format!("--netns {}", n.netns))
            .collect();
        eprintln!(
            "\nthe lab is still up (without its traffic). Trace it: nettools trace {}\nremove it: ip netns del <each name above>; ip link del {}",
            names.join(" "),
            lab.bridge()?
        );
    } else if args.output == Output::Table && args.out.is_none() {
        eprintln!("\nnettools: lab {} removed", lab.id);
    }
    Ok(())
}

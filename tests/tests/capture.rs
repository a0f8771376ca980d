//! `nettools capture` against Wireshark's tshark (which reads every file nettools writes) and
//! tcpdump on the same veth: the packets the test itself sent, no more, no fewer.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::{nsexec, runtimes, *};

/// Two namespaces on a bridge, IPv4 only (nothing on the wire the test did not send but ARP).
fn two_pods() -> Result<(Lab, Node, Node)> {
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.236.0.1/24", None)?;
    let b = lab.node("b", "10.236.0.2/24", None)?;
    // The neighbours known before capturing: no ARP in the middle of a capture.
    a.run(&["ping", "-c", "1", "-W", "2", "10.236.0.2"])?;
    Ok((lab, a, b))
}

/// A process started by this test, its stderr collected line by line; killed if still running
/// when dropped.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `program ARGS` with `stdout` and waits until stderr says `ready`.
    fn start(program: &OsStr, args: &[&str], stdout: Stdio, ready: &str) -> Result<Self> {
        let mut child = dies_with_test(program)
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().context("no stderr pipe")?;
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut l) = lines.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let running = Self { child, stderr };
        let started = Instant::now();
        while !running.stderr().contains(ready) {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} did not say {ready:?} within 30 s: {}",
                    program.display(),
                    running.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(running)
    }

    fn nettools(args: &[&str], stdout: Stdio) -> Result<Self> {
        let mut full = vec!["capture"];
        full.extend_from_slice(args);
        Self::start(
            nettools_bin().as_os_str(),
            &full,
            stdout,
            "nettools: capturing on",
        )
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// SIGINT (Ctrl-C), then waits for the exit: whether it succeeded.
    fn interrupt(mut self) -> Result<(bool, String)> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: signalling the child this test started, by its PID.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.wait()
    }

    /// Waits (at most 30 s) for the exit: whether it succeeded, and its stderr.
    fn wait(&mut self) -> Result<(bool, String)> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(50));
                return Ok((status.success(), self.stderr()));
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("did not exit within 30 s: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// tshark's fields of every packet in `file` (one line per packet, tab-separated), read with
/// `display_filter` when given.
fn tshark_fields(
    file: &OsStr,
    display_filter: Option<&str>,
    fields: &[&str],
) -> Result<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(file).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    if let Some(f) = display_filter {
        cmd.args(["-Y", f]);
    }
    let out = cmd.output().context("cannot run tshark")?;
    if !out.status.success() {
        bail!(
            "tshark cannot read {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect())
}

/// `count` pings from `from` to `to`, 50 ms apart, each answered.
fn ping(from: &Node, to: &Node, count: u32) -> Result<()> {
    from.run(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        &to.ipv4.to_string(),
    ])
    .map(|_| ())
}

/// The echo requests in `file`: source, destination and sequence number, as tshark reads them.
fn echo_requests(file: &OsStr) -> Result<Vec<String>> {
    tshark_fields(
        file,
        Some("icmp.type == 8"),
        &["ip.src", "ip.dst", "icmp.seq"],
    )
}

#[test]
fn a_ping_through_the_veth_is_exactly_the_echo_requests_sent() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    let file = TempFile::new(".pcapng");
    let capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-w",
            &file.0.display().to_string(),
            "icmp",
        ],
        Stdio::null(),
    )?;
    ping(&b, &a, 5)?;
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");

    let requests = echo_requests(file.0.as_os_str())?;
    let expected: Vec<String> = (1..=5)
        .map(|seq| format!("{}\t{}\t{seq}", b.ipv4, a.ipv4))
        .collect();
    assert_eq!(requests, expected);
    // Both directions: each request's reply, and nothing else (the filter is `icmp`).
    let all = tshark_fields(file.0.as_os_str(), None, &["icmp.type"])?;
    assert_eq!(all.len(), 10, "{all:?}");
    assert!(
        stderr.contains("10 packets captured, 0 packets dropped by kernel"),
        "{stderr}"
    );
    // The interface is named, with nanosecond kernel timestamps, and its statistics block
    // closes the file.
    let info = Command::new("capinfos").arg(&file.0).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains(&format!("Name = {}", a.host_veth)), "{info}");
    assert!(info.contains("nanoseconds (9)"), "{info}");
    assert!(info.contains("Number of stat entries = 1"), "{info}");
    Ok(())
}

#[test]
fn a_tcp_port_filter_keeps_the_connection_and_excludes_icmp() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    let file = TempFile::new(".pcapng");
    let listener = a.enter(|| TcpListener::bind("10.236.0.1:8080"))??;
    let capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-w",
            &file.0.display().to_string(),
            "tcp",
            "port",
            "8080",
        ],
        Stdio::null(),
    )?;
    ping(&b, &a, 3)?;
    let server = std::thread::spawn(move || -> Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got.len())
    });
    b.enter(|| -> Result<()> {
        let mut c = TcpStream::connect(SocketAddr::from((a.ipv4, 8080)))?;
        c.write_all(&[7u8; 3000])?;
        Ok(())
    })??;
    let received = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    assert_eq!(received, 3000);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");

    let packets = tshark_fields(file.0.as_os_str(), None, &["ip.proto", "tcp.port"])?;
    assert!(!packets.is_empty());
    for p in &packets {
        assert!(p.starts_with("6\t") && p.contains("8080"), "{p}");
    }
    // The handshake, the 3000 bytes and the close are all there, as tshark reassembles them.
    let syns = tshark_fields(
        file.0.as_os_str(),
        Some("tcp.flags.syn == 1 && tcp.flags.ack == 0"),
        &["tcp.srcport"],
    )?;
    assert_eq!(syns.len(), 1, "{syns:?}");
    let payload: usize = tshark_fields(
        file.0.as_os_str(),
        Some("tcp.dstport == 8080"),
        &["tcp.len"],
    )?
    .iter()
    .filter_map(|l| l.parse::<usize>().ok())
    .sum();
    assert_eq!(payload, 3000);
    Ok(())
}

#[test]
fn stdout_streamed_into_tshark_is_the_same_as_the_file() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    let file = TempFile::new(".pcapng");
    let fields = ["ip.src", "ip.dst", "icmp.type", "icmp.seq", "frame.len"];
    let from_stream = file_and_stream(&a, &file, &fields, || ping(&b, &a, 4))?;
    let from_file = tshark_fields(file.0.as_os_str(), None, &fields)?;
    assert_eq!(from_stream.len(), 8, "{from_stream:?}");
    assert_eq!(from_stream, from_file);
    Ok(())
}

/// Captures `icmp` in `a`'s namespace twice at once while `traffic` runs: into `file` and as
/// `-w -` piped into `tshark -r -` (both started by the test). Returns the lines tshark printed
/// with `fields` from the stream.
fn file_and_stream(
    a: &Node,
    file: &TempFile,
    fields: &[&str],
    traffic: impl FnOnce() -> Result<()>,
) -> Result<Vec<String>> {
    let listing = TempFile::new(".txt");
    let to_file = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-w",
            &file.0.display().to_string(),
            "icmp",
        ],
        Stdio::null(),
    )?;
    let mut tshark = dies_with_test("tshark");
    tshark.args(["-n", "-r", "-", "-T", "fields"]);
    for f in fields {
        tshark.args(["-e", f]);
    }
    let mut tshark = tshark
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&listing.0)?)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start tshark")?;
    let pipe = tshark.stdin.take().context("no stdin pipe")?;
    let streamed = Running::nettools(&["--netns", &a.netns, "-w", "-", "icmp"], Stdio::from(pipe))?;
    traffic()?;
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = streamed.interrupt()?;
    assert!(ok, "{stderr}");
    let (ok, stderr) = to_file.interrupt()?;
    assert!(ok, "{stderr}");
    assert!(tshark.wait()?.success(), "tshark failed reading the stream");
    Ok(std::fs::read_to_string(&listing.0)?
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn count_stops_after_that_many_packets() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    let file = TempFile::new(".pcapng");
    let mut capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-c",
            "3",
            "-w",
            &file.0.display().to_string(),
            "icmp[icmptype] == icmp-echo",
        ],
        Stdio::null(),
    )?;
    ping(&b, &a, 6)?;
    // It ends by itself after the third request.
    let (ok, stderr) = capture.wait()?;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 packets captured"), "{stderr}");
    let requests = echo_requests(file.0.as_os_str())?;
    let expected: Vec<String> = (1..=3)
        .map(|seq| format!("{}\t{}\t{seq}", b.ipv4, a.ipv4))
        .collect();
    assert_eq!(requests, expected);
    Ok(())
}

#[test]
fn the_same_packets_as_tcpdump_on_the_same_veth_and_filter() -> Result<()> {
    need!(&["tshark", "tcpdump"]);
    let (_lab, a, b) = two_pods()?;
    let ours = TempFile::new(".pcapng");
    let theirs = TempFile::new(".pcap");
    let filter = ["tcp", "or", "icmp"];
    let mut args = vec!["--netns", a.netns.as_str()];
    let ours_path = ours.0.display().to_string();
    args.extend(["-w", ours_path.as_str()]);
    args.extend(filter);
    let nettools = Running::nettools(&args, Stdio::null())?;
    let theirs_path = theirs.0.display().to_string();
    let mut tcpdump_args = vec![
        "-n",
        "-U",
        "-i",
        a.host_veth.as_str(),
        "-w",
        theirs_path.as_str(),
    ];
    tcpdump_args.extend(filter);
    let tcpdump = Running::start(
        OsStr::new("tcpdump"),
        &tcpdump_args,
        Stdio::null(),
        "listening on",
    )?;

    let listener = a.enter(|| TcpListener::bind("10.236.0.1:8080"))??;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        s.write_all(&got)?;
        Ok(())
    });
    ping(&b, &a, 5)?;
    b.enter(|| -> Result<()> {
        let mut c = TcpStream::connect(SocketAddr::from((a.ipv4, 8080)))?;
        c.write_all(&pattern(100_000, 7))?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)?;
        assert_eq!(back.len(), 100_000);
        Ok(())
    })??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    // tcpdump blocks in poll(2) until the kernel retires a TPACKET_V3 block (its 1 s timeout)
    // and leaves what is still in the ring when interrupted: it gets the time to read it all.
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, stderr) = nettools.interrupt()?;
    assert!(ok, "{stderr}");
    let (_, tcpdump_stderr) = tcpdump.interrupt()?;

    // Packet by packet: the same bytes (length and content digest, in order).
    let fields = [
        "frame.len",
        "frame.cap_len",
        "ip.id",
        "tcp.seq_raw",
        "icmp.seq",
    ];
    let mine = tshark_fields(ours.0.as_os_str(), None, &fields)?;
    let tcpdump = tshark_fields(theirs.0.as_os_str(), None, &fields)?;
    assert!(mine.len() > 20, "{mine:?}");
    assert_eq!(mine.len(), tcpdump.len(), "tcpdump: {tcpdump_stderr}");
    assert_eq!(mine, tcpdump);
    let bytes = |lines: &[String]| -> u64 {
        lines
            .iter()
            .filter_map(|l| l.split('\t').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(bytes(&mine), bytes(&tcpdump));
    assert!(
        tcpdump_stderr.contains(&format!("{} packets captured", mine.len())),
        "{tcpdump_stderr}"
    );
    assert!(
        stderr.contains(&format!("{} packets captured", mine.len())),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn lines_on_stdout_name_each_packet_like_tcpdump() -> Result<()> {
    need!(&["tcpdump"]);
    let (_lab, a, b) = two_pods()?;
    let listing = TempFile::new(".txt");
    let capture = Running::nettools(
        &["--netns", &a.netns, "icmp"],
        Stdio::from(std::fs::File::create(&listing.0)?),
    )?;
    ping(&b, &a, 2)?;
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");
    let lines = std::fs::read_to_string(&listing.0)?;
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    // `HH:MM:SS.micro IP SRC > DST: ICMP echo request, id N, seq S, length 64`, tcpdump's words.
    for (i, line) in lines.iter().enumerate() {
        let seq = i / 2 + 1;
        let (what, src, dst) = if i % 2 == 0 {
            ("echo request", b.ipv4, a.ipv4)
        } else {
            ("echo reply", a.ipv4, b.ipv4)
        };
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or("");
        assert!(
            rest.starts_with(&format!("IP {src} > {dst}: ICMP {what}, id "))
                && rest.ends_with(&format!(", seq {seq}, length 64")),
            "{line}"
        );
    }
    Ok(())
}

#[test]
fn bad_input_is_one_sentence() -> Result<()> {
    need!(&["tcpdump"]);
    let (_lab, a, _b) = two_pods()?;
    // A filter libpcap cannot compile: its own message (the one tcpdump prints), exit 2.
    let out = nettools(&["capture", "--netns", &a.netns, "tcp", "port"])?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr)?;
    let tcpdump = Command::new("tcpdump").args(["-d", "tcp port"]).output()?;
    let tcpdump = String::from_utf8(tcpdump.stderr)?;
    // tcpdump says `Warning: assuming Ethernet` first without an interface; its last line is
    // libpcap's message.
    let message = tcpdump
        .lines()
        .last()
        .unwrap_or("")
        .trim_start_matches("tcpdump: ");
    assert!(!message.is_empty());
    assert_eq!(
        stderr,
        format!("nettools: invalid filter \"tcp port\": {message}\n")
    );

    // A file nettools cannot write: exit 1, one sentence, nothing opened.
    let out = nettools(&[
        "capture",
        "--netns",
        &a.netns,
        "-w",
        "/nonexistent-dir/x.pcapng",
    ])?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(
        stderr,
        "nettools: cannot write /nonexistent-dir/x.pcapng: No such file or directory\n"
    );
    // A namespace without veth.
    let out = nettools(&["capture", "--netns", "/proc/self/ns/net"])?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stderr)?.lines().count(), 1);
    Ok(())
}

#[test]
fn a_podman_pod_and_container_are_captured_on_their_veth() -> Result<()> {
    need!(&["podman", "runc", "conmon", "nsenter", "tshark"]);
    let podman = nettools_tests::runtimes::Podman::start()?;
    let net = format!("--network={}", podman.network);
    podman.pod("ntcap")?;
    podman.run(&["--name", "ntcap-web", "--pod", "ntcap"])?;
    podman.run(&["--name", "ntcap-client", &net])?;
    let pod_ip = podman.ip("ntcap-web")?.to_string();
    let client_ip = podman.ip("ntcap-client")?.to_string();
    let client_ns = format!("--net=/proc/{}/ns/net", podman.pid("ntcap-client")?);
    let socket = podman.socket.display().to_string();
    for (target, name, to) in [
        ("--pod", "ntcap", &pod_ip),
        ("--container", "ntcap-client", &pod_ip),
    ] {
        let file = TempFile::new(".pcapng");
        let capture = Running::nettools(
            &[
                target,
                name,
                "--docker-socket",
                &socket,
                "-w",
                &file.0.display().to_string(),
                "icmp",
            ],
            Stdio::null(),
        )?;
        sh(&[
            "nsenter", &client_ns, "ping", "-c", "3", "-i", "0.05", "-W", "2", to,
        ])?;
        let (ok, stderr) = capture.interrupt()?;
        assert!(ok, "{target} {name}: {stderr}");
        let expected: Vec<String> = (1..=3)
            .map(|seq| format!("{client_ip}\t{pod_ip}\t{seq}"))
            .collect();
        assert_eq!(
            echo_requests(file.0.as_os_str())?,
            expected,
            "{target} {name}"
        );
    }
    Ok(())
}

/// A containerd pod, found through the CRI by name and namespace: the datagrams the host sent
/// to it on its veth, and the ones its own firewall dropped on the drops interface, each with
/// the reason, as many as the rule counted.
#[test]
fn a_containerd_pod_is_captured_by_name_with_what_its_firewall_dropped() -> Result<()> {
    need!(&[runtimes::CONTAINERD_PROGRAMS, &["tshark"]].concat());
    let mut ctd = runtimes::Containerd::start()?;
    let socket = ctd.socket.display().to_string();
    let uid = "2d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let sandbox = ctd.run_pod("capweb", "nettools-test", uid, 0)?;
    ctd.run_container(&sandbox, ("capweb", "nettools-test", uid, 0), "app")?;
    let path = format!("/proc/{}/ns/net", ctd.sandbox_pid(uid, &sandbox)?);
    // The pod's address as its own eth0 has it.
    let addr = nsexec::in_ns(&path, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    let ip: std::net::Ipv4Addr = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("the pod has no IPv4 address: {addr}"))?;
    nsexec::drop_udp(&path, 7777)?;
    let file = TempFile::new(".pcapng");
    let capture = Running::nettools(
        &[
            "--pod",
            "capweb",
            "-n",
            "nettools-test",
            "--cri-socket",
            &socket,
            "-w",
            &file.0.display().to_string(),
            "udp",
            "port",
            "7777",
        ],
        Stdio::null(),
    )?;
    nsexec::udp_from(
        None,
        SocketAddr::from((ip, 7777)),
        20,
        Duration::from_millis(5),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");

    let counted = nsexec::input_rule_packets(&path, 1)?;
    assert_eq!(counted, 20, "the pod's rule counted {counted}");
    let f = file.0.as_os_str();
    let on_veth = tshark_fields(
        f,
        Some("frame.interface_name != \"nettools-drops\""),
        &["ip.dst", "udp.dstport"],
    )?;
    assert_eq!(on_veth, vec![format!("{ip}\t7777"); 20]);
    let dropped = on_interface(
        f,
        "nettools-drops",
        &["ip.dst", "udp.dstport", "frame.comment"],
    )?;
    assert_eq!(dropped.len() as u64, counted, "{dropped:?}");
    let netns = nsexec::inode(&path)?;
    for line in &dropped {
        let (packet, comment) = line.rsplit_once('\t').context("no comment")?;
        assert_eq!(packet, format!("{ip}\t7777"));
        assert_firewall_comment(comment, netns)?;
    }
    Ok(())
}

#[test]
fn pid_and_iface_name_the_same_veth() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &a.netns, "sleep", "60"])
        .spawn()?;
    let pid = sleeper.id().to_string();
    // `ip netns exec` execs sleep: the PID is the process in the namespace once it ran.
    std::thread::sleep(Duration::from_millis(300));
    let result = (|| -> Result<()> {
        for target in [["--pid", pid.as_str()], ["--iface", a.host_veth.as_str()]] {
            let file = TempFile::new(".pcapng");
            let capture = Running::nettools(
                &[
                    target[0],
                    target[1],
                    "-w",
                    &file.0.display().to_string(),
                    "icmp",
                ],
                Stdio::null(),
            )?;
            assert!(
                capture
                    .stderr()
                    .contains(&format!("capturing on {} (", a.host_veth)),
                "{}",
                capture.stderr()
            );
            ping(&b, &a, 2)?;
            let (ok, stderr) = capture.interrupt()?;
            assert!(ok, "{stderr}");
            assert_eq!(echo_requests(file.0.as_os_str())?.len(), 2, "{target:?}");
        }
        Ok(())
    })();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    result
}

/// `a`'s firewall drops every echo request that reaches it (iptables in `a`'s namespace).
fn drop_echo_requests(a: &Node) -> Result<()> {
    a.run(&[
        "iptables",
        "-A",
        "INPUT",
        "-p",
        "icmp",
        "--icmp-type",
        "echo-request",
        "-j",
        "DROP",
    ])
    .map(|_| ())
}

/// `count` pings from `from` to `to` that nobody answers (ping's exit status 1 says exactly that).
fn unanswered_ping(from: &Node, to: &Node, count: u32) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &from.netns, "ping", "-n", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.05", "-W", "1"])
        .arg(to.ipv4.to_string())
        .output()
        .context("cannot run ping")?;
    if out.status.code() != Some(1) {
        bail!(
            "ping was answered or failed otherwise ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// The packets of `file` on the interface `name`, with `fields`.
fn on_interface(file: &OsStr, name: &str, fields: &[&str]) -> Result<Vec<String>> {
    tshark_fields(
        file,
        Some(&format!("frame.interface_name == \"{name}\"")),
        fields,
    )
}

/// Checks one drop comment: `dropped: REASON at function+0xoff (netns N)`, the reason being a
/// firewall's on this kernel and the function netfilter's.
fn assert_firewall_comment(comment: &str, netns: u32) -> Result<()> {
    let reason = firewall_reason()?;
    let rest = comment
        .strip_prefix(&format!("dropped: {reason} at "))
        .with_context(|| format!("not a {reason} comment: {comment:?}"))?;
    let (location, ns) = rest
        .split_once(' ')
        .with_context(|| format!("no namespace: {comment:?}"))?;
    assert!(is_netfilter_location(location), "{comment}");
    // Where netfilter is a module (the vmtest guests), kallsyms names it: `… [nf_tables] (…)`.
    let ns = match ns.split_once("] ") {
        Some((module, rest)) if module.starts_with('[') => rest,
        _ => ns,
    };
    assert_eq!(ns, format!("(netns {netns})"), "{comment}");
    Ok(())
}

#[test]
fn dropped_pings_are_captured_with_the_reason_as_many_as_the_rule_counted() -> Result<()> {
    need!(&["tshark", "capinfos"]);
    let (_lab, a, b) = two_pods()?;
    drop_echo_requests(&a)?;
    let file = TempFile::new(".pcapng");
    let tcp_only = TempFile::new(".pcapng");
    let capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-w",
            &file.0.display().to_string(),
            "icmp",
        ],
        Stdio::null(),
    )?;
    // The same dropped pings, through a filter they do not match.
    let tcp_capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-w",
            &tcp_only.0.display().to_string(),
            "tcp",
            "port",
            "8080",
        ],
        Stdio::null(),
    )?;
    unanswered_ping(&b, &a, 5)?;
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");
    let (ok, tcp_stderr) = tcp_capture.interrupt()?;
    assert!(ok, "{tcp_stderr}");

    // The kernel's own count of what the rule dropped.
    let counted = iptables_packets(&a, "INPUT", 1)?;
    assert_eq!(counted, 5, "the lab itself misbehaved");
    let f = file.0.as_os_str();
    // On the veth: the echo requests on their way in (the drop happens behind it).
    let on_veth = on_interface(
        f,
        &a.host_veth,
        &["ip.src", "ip.dst", "icmp.type", "icmp.seq"],
    )?;
    let expected: Vec<String> = (1..=5)
        .map(|seq| format!("{}\t{}\t8\t{seq}", b.ipv4, a.ipv4))
        .collect();
    assert_eq!(on_veth, expected);
    // On nettools-drops: the same requests, as many as the rule counted, each with the reason.
    let dropped = on_interface(
        f,
        "nettools-drops",
        &["ip.src", "ip.dst", "icmp.type", "icmp.seq", "frame.comment"],
    )?;
    assert_eq!(dropped.len() as u64, counted, "{dropped:?}");
    for (line, want) in dropped.iter().zip(&expected) {
        let (packet, comment) = line.rsplit_once('\t').context("no comment")?;
        assert_eq!(packet, want);
        assert_firewall_comment(comment, a.inode()?)?;
    }
    assert!(
        stderr.contains("5 packets captured, 0 packets dropped by kernel, 5 dropped packets captured, 0 drop events lost"),
        "{stderr}"
    );
    // Two interfaces, the drops one raw IP, each closed by its statistics block.
    let info = Command::new("capinfos").arg(&file.0).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Number of interfaces in file: 2"), "{info}");
    assert!(info.contains("Name = nettools-drops"), "{info}");
    assert!(info.contains("Encapsulation = Raw IP"), "{info}");
    assert_eq!(
        info.matches("Number of stat entries = 1").count(),
        2,
        "{info}"
    );

    // `tcp port 8080` kept out the pings, dropped or not.
    let t = tcp_only.0.as_os_str();
    assert_eq!(
        tshark_fields(t, None, &["frame.number"])?,
        Vec::<String>::new()
    );
    assert!(
        tcp_stderr.contains("0 packets captured, 0 packets dropped by kernel, 0 dropped packets captured, 0 drop events lost"),
        "{tcp_stderr}"
    );
    Ok(())
}

#[test]
fn dropped_packets_streamed_into_tshark_are_the_same_as_in_the_file() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    drop_echo_requests(&a)?;
    let file = TempFile::new(".pcapng");
    let fields = [
        "frame.interface_name",
        "ip.src",
        "ip.dst",
        "icmp.seq",
        "frame.comment",
    ];
    let mut from_stream = file_and_stream(&a, &file, &fields, || unanswered_ping(&b, &a, 3))?;
    let mut from_file = tshark_fields(file.0.as_os_str(), None, &fields)?;
    // The two interfaces' packets interleave as each capture read them: compare them sorted.
    from_stream.sort();
    from_file.sort();
    assert_eq!(from_stream, from_file);
    let dropped: Vec<&String> = from_file
        .iter()
        .filter(|l| l.starts_with("nettools-drops\t"))
        .collect();
    assert_eq!(
        dropped.len() as u64,
        iptables_packets(&a, "INPUT", 1)?,
        "{from_file:?}"
    );
    assert_eq!(dropped.len(), 3, "{from_file:?}");
    for line in dropped {
        let comment = line.rsplit('\t').next().unwrap_or("");
        assert_firewall_comment(comment, a.inode()?)?;
    }
    Ok(())
}

/// Needs nothing but ping and iptables, so it also runs in the kernel matrix's guests (which
/// have no tshark): the packet copy in the drop probe must pass every kernel's verifier.
#[test]
fn dropped_packets_are_lines_with_the_reason() -> Result<()> {
    need!(&["ping", "iptables"]);
    let (_lab, a, b) = two_pods()?;
    drop_echo_requests(&a)?;
    let listing = TempFile::new(".txt");
    let lines = Running::nettools(
        &["--netns", &a.netns, "icmp"],
        Stdio::from(std::fs::File::create(&listing.0)?),
    )?;
    unanswered_ping(&b, &a, 2)?;
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = lines.interrupt()?;
    assert!(ok, "{stderr}");
    assert_eq!(
        iptables_packets(&a, "INPUT", 1)?,
        2,
        "the lab itself misbehaved"
    );

    // `TIME DROPPED IP SRC > DST: ICMP echo request, … [REASON at function+0xoff (netns N)]`
    // after each request's own line from the veth.
    let text = std::fs::read_to_string(&listing.0)?;
    let dropped: Vec<&str> = text.lines().filter(|l| l.contains(" DROPPED ")).collect();
    assert_eq!(dropped.len(), 2, "{text}");
    for (i, line) in dropped.iter().enumerate() {
        let rest = line.split_once(" DROPPED ").map_or("", |(_, r)| r);
        let (packet, why) = rest.split_once(" [").context("no reason")?;
        assert!(
            packet.starts_with(&format!(
                "IP {} > {}: ICMP echo request, id ",
                b.ipv4, a.ipv4
            )) && packet.ends_with(&format!(", seq {}, length 64", i + 1)),
            "{line}"
        );
        let why = why.strip_suffix(']').context("no closing bracket")?;
        assert_firewall_comment(&format!("dropped: {why}"), a.inode()?)?;
    }
    assert_eq!(text.lines().count(), 4, "{text}\n{stderr}");
    assert!(
        stderr.contains("2 packets captured, 0 packets dropped by kernel, 2 dropped packets captured, 0 drop events lost"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn no_drops_captures_the_veth_alone() -> Result<()> {
    need!(&["tshark", "capinfos"]);
    let (_lab, a, b) = two_pods()?;
    drop_echo_requests(&a)?;
    let file = TempFile::new(".pcapng");
    let without = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "--no-drops",
            "-w",
            &file.0.display().to_string(),
            "icmp",
        ],
        Stdio::null(),
    )?;
    unanswered_ping(&b, &a, 2)?;
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = without.interrupt()?;
    assert!(ok, "{stderr}");
    assert_eq!(
        iptables_packets(&a, "INPUT", 1)?,
        2,
        "the lab itself misbehaved"
    );

    // The veth's packets only, one interface, tcpdump's summary, no probe loaded.
    let info = Command::new("capinfos").arg(&file.0).output()?;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Number of interfaces in file: 1"), "{info}");
    assert_eq!(
        tshark_fields(file.0.as_os_str(), None, &["icmp.seq"])?,
        ["1", "2"]
    );
    assert!(
        stderr.contains("2 packets captured, 0 packets dropped by kernel\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("kfree_skb"), "{stderr}");
    Ok(())
}

#[test]
fn a_snap_length_cuts_dropped_packets_but_keeps_their_length() -> Result<()> {
    need!(&["tshark"]);
    let (_lab, a, b) = two_pods()?;
    drop_echo_requests(&a)?;
    let file = TempFile::new(".pcapng");
    let capture = Running::nettools(
        &[
            "--netns",
            &a.netns,
            "-s",
            "100",
            "-w",
            &file.0.display().to_string(),
            "icmp",
        ],
        Stdio::null(),
    )?;
    // 1000 bytes of ICMP data: a 1028-byte IP packet, 1042 bytes on the veth with Ethernet.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &b.netns, "ping", "-n", "-c", "1", "-s", "1000",
        ])
        .args(["-W", "1", &a.ipv4.to_string()])
        .output()?;
    assert_eq!(out.status.code(), Some(1), "the ping was answered");
    std::thread::sleep(Duration::from_millis(200));
    let (ok, stderr) = capture.interrupt()?;
    assert!(ok, "{stderr}");
    assert_eq!(
        iptables_packets(&a, "INPUT", 1)?,
        1,
        "the lab itself misbehaved"
    );
    let f = file.0.as_os_str();
    let fields = ["frame.len", "frame.cap_len", "ip.len"];
    assert_eq!(on_interface(f, &a.host_veth, &fields)?, ["1042\t100\t1028"]);
    assert_eq!(
        on_interface(f, "nettools-drops", &fields)?,
        ["1028\t100\t1028"]
    );
    Ok(())
}

//! What the integration tests share: the nettools binary under test, a trace running in the
//! background, and the kernel's own counters that serve as the oracle.
//!
//! Labs come from `nettools::lab` (namespaces on a bridge, removed on drop even when a test
//! fails). Tests run one at a time (`--test-threads=1`): they share one kernel.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub mod agent;
pub mod manifest;
pub mod nsexec;
pub mod prom;
pub mod pty;
pub mod runtimes;

use anyhow::{Context as _, Result, bail};
pub use nettools::lab::{Lab, Node, sh};
use serde_json::Value;

/// The binary under test: `NETTOOLS_BIN` (set by `cargo xtask test`) or the debug build.
pub fn nettools_bin() -> PathBuf {
    std::env::var_os("NETTOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/nettools")
        })
}

/// Fails the test with a clear message when not run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests build network labs and load eBPF: run them as root (cargo xtask test)"
    );
}

/// The first lines of a test that needs root and `programs` (a `&[&str]`): fails the test
/// when not run as root; when a program is missing, says so (see [`skip`]) and returns
/// `Ok(())` from the test.
#[macro_export]
macro_rules! need {
    ($programs:expr) => {
        $crate::require_root();
        if let Some(reason) = $crate::runtimes::missing($programs) {
            $crate::skip(&reason);
            return Ok(());
        }
    };
}

/// A command for `program` whose process is sent SIGTERM when the test process dies first, so
/// a killed test takes it along (and nettools still removes what it attached).
pub fn dies_with_test(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: prctl is async-signal-safe, and the only call made between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd
}

/// Runs nettools to completion.
pub fn nettools(args: &[&str]) -> Result<Output> {
    nettools_env(args, &[])
}

/// Runs nettools to completion with extra environment variables.
pub fn nettools_env(args: &[&str], env: &[(&str, PathBuf)]) -> Result<Output> {
    Command::new(nettools_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .with_context(|| format!("cannot run {}", nettools_bin().display()))
}

/// A number unique to this process and call, for names, subnets, files and directories.
pub(crate) fn unique() -> (u32, u32) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A unique temporary file path, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(suffix: &str) -> Self {
        let (pid, n) = unique();
        Self(std::env::temp_dir().join(format!("nettools-test-{pid}-{n}{suffix}")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A scratch directory of this test's own, `nettools-KIND-PID-N` in the temporary directory,
/// removed on drop (with whatever is mounted below it), also when the test fails.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(kind: &str) -> Result<Self> {
        let (pid, n) = unique();
        let dir = std::env::temp_dir().join(format!("nettools-{kind}-{pid}-{n}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// The same with permissions `mode` (e.g. `0o1777`, sticky and writable by all).
    pub fn with_mode(kind: &str, mode: u32) -> Result<Self> {
        let dir = Self::new(kind)?;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", dir.0.display()))?;
        Ok(dir)
    }

    /// The path of `name` in the directory, as a command-line argument.
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    /// The names of the entries in the directory, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_dir_with_mounts(&self.0);
    }
}

/// Unmounts everything mounted below `dir` (deepest first), then removes it.
pub(crate) fn remove_dir_with_mounts(dir: &Path) {
    let mut mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        let _ = sh(&["umount", "-l", &m.display().to_string()]);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A nettools process running in the background: stdout discarded, stderr collected line by
/// line, and SIGTERM'd (so it still removes what it attached) if the test process dies first.
pub struct Background {
    pub child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Background {
    /// Spawns `nettools ARGS` and waits until its stderr says `ready` (fails if it exits
    /// first or takes over 60 s).
    pub fn start(args: &[&OsStr], ready: &str) -> Result<Self> {
        Self::start_env(args, ready, &[])
    }

    /// The same with extra environment variables.
    pub fn start_env(args: &[&OsStr], ready: &str, env: &[(&str, PathBuf)]) -> Result<Self> {
        let mut child = dies_with_test(nettools_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", nettools_bin().display()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().context("no stderr pipe")?;
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
        let mut running = Self { child, stderr };
        let started = Instant::now();
        loop {
            if running.stderr_text().contains(ready) {
                return Ok(running);
            }
            if let Some(status) = running.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "nettools exited ({status}) before printing {ready:?}: {}",
                    running.stderr_text()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "nettools did not print {ready:?} within 60 s: {}",
                    running.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines nettools printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Sends `signal` to nettools, by the PID this test started.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: signalling the child we started, by its PID.
        unsafe { libc::kill(pid, signal) };
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `nettools trace` running in the background, writing its report to a file.
pub struct Trace {
    nettools: Background,
    out: TempFile,
}

/// What a finished trace produced.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub report: String,
    pub stderr: String,
}

impl Trace {
    /// Starts `nettools trace ARGS --out FILE` and waits until its probes are attached.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_env(args, &[])
    }

    /// The same with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, PathBuf)]) -> Result<Self> {
        let out = TempFile::new(".report");
        let mut full: Vec<&OsStr> = vec![OsStr::new("trace")];
        full.extend(args.iter().map(OsStr::new));
        full.extend([OsStr::new("--out"), out.0.as_os_str()]);
        let nettools = Background::start_env(&full, "nettools: tracing", env)?;
        Ok(Self { nettools, out })
    }

    /// The PID of the nettools process (to read its /proc entries).
    pub fn pid(&self) -> u32 {
        self.nettools.child.id()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the final report.
    pub fn stop(self) -> Result<Finished> {
        self.nettools.signal(libc::SIGINT)?;
        self.wait()
    }

    /// Kills nettools with SIGKILL: no chance to clean up.
    pub fn kill(mut self) -> Result<()> {
        kill_9(&mut self.nettools.child)
    }

    /// Lines nettools printed on stderr so far.
    pub fn stderr_lines(&self) -> String {
        self.nettools.stderr_text()
    }

    /// Waits for the trace to end by itself (e.g. `--duration`).
    pub fn wait(mut self) -> Result<Finished> {
        let started = Instant::now();
        let child = &mut self.nettools.child;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!(
                    "nettools did not finish within 60 s: {}",
                    self.nettools.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        Ok(Finished {
            success: status.success(),
            report: std::fs::read_to_string(&self.out.0).unwrap_or_default(),
            stderr: self.nettools.stderr_text(),
        })
    }
}

/// Sends `count` UDP datagrams from `node` to `dst`, paced so no queue overflows.
pub fn udp_burst(node: &Node, dst: SocketAddr, count: u32) -> Result<()> {
    node.enter(|| -> Result<()> {
        let socket = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        for _ in 0..count {
            socket.send_to(b"nettools test", dst)?;
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    })?
}

/// The packet counter of rule `n` (1-based) of `chain` in `node`'s iptables filter table.
pub fn iptables_packets(node: &Node, chain: &str, n: usize) -> Result<u64> {
    let out = node.run(&["iptables", "-L", chain, "-v", "-x", "-n"])?;
    out.lines()
        .nth(1 + n)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no rule {n} in chain {chain}:\n{out}"))
}

impl Finished {
    /// The JSON report's lines (for `-o json` traces).
    pub fn json(&self) -> Result<Vec<Value>> {
        if !self.success {
            bail!("nettools failed: {}", self.stderr);
        }
        json_lines(&self.report)
    }
}

/// Parses JSON lines.
pub fn json_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The summary object of a JSON report.
pub fn summary(lines: &[Value]) -> Result<&Value> {
    lines
        .iter()
        .rev()
        .find(|v| v["type"] == "summary")
        .context("the JSON report has no summary object")
}

/// The summary's entry for a namespace.
pub fn workload(summary: &Value, netns: u32) -> Result<&Value> {
    summary["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["netns"] == netns))
        .with_context(|| format!("namespace {netns} is not in the summary: {summary}"))
}

/// Drops with `reason` in one workload of the summary.
pub fn drops_with_reason(workload: &Value, reason: &str) -> u64 {
    workload["drops"]["by_reason"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["reason"] == reason)
                .filter_map(|r| r["count"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Says that this test cannot run on this kernel or machine, and why. The test then returns
/// without checking anything; `cargo xtask vmtest` lists every skip with its reason.
pub fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

/// The running kernel's `skb:kfree_skb` format file (tracefs), the oracle for what this kernel's
/// drop tracepoint carries.
pub fn kfree_skb_format() -> Result<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|d| format!("{d}/events/skb/kfree_skb/format"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .context("no skb/kfree_skb/format in tracefs: is tracefs mounted?")
}

/// Whether this kernel gives drop reasons (`skb:kfree_skb` has a `reason` field from 5.17).
pub fn kernel_names_drop_reasons() -> Result<bool> {
    Ok(kfree_skb_format()?.contains(" reason;"))
}

/// The drop reason table in the tracepoint's print format, `{ 12, "NETFILTER_DROP" }`…: the
/// kernel's own value → name mapping, independent of the BTF nettools reads.
pub fn tracepoint_reason_names(format: &str) -> Vec<(u32, String)> {
    let Some(start) = format.find("__print_symbolic(REC->reason") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &format[start..];
    while let Some(open) = rest.find("{ ") {
        let Some(close) = rest[open..].find(" }") else {
            break;
        };
        let pair = &rest[open + 2..open + close];
        if let Some((value, name)) = pair.split_once(", ")
            && let Ok(value) = value.trim().parse::<u32>()
        {
            out.push((value, name.trim().trim_matches('"').to_string()));
        }
        rest = &rest[open + close..];
    }
    out
}

/// The kernel functions that free packets dropped for `reason`, which identify such drops on
/// kernels without reasons (before 5.17). Reasons not listed cannot be told apart there.
pub fn reason_locations(reason: &str) -> &'static [&'static str] {
    match reason {
        // Where a firewall rule's drop is freed.
        "NETFILTER_DROP" => &["nf_hook", "nft_do_chain", "ipt_do_table", "ip6t_do_table"],
        // Packets queued for an address that never answered ARP/NDP.
        "NEIGH_FAILED" => &["neigh_invalidate", "neigh_timer_handler"],
        // No route: the route lookup's error handler frees the packet.
        "IP_INNOROUTES" => &["ip_error"],
        _ => &[],
    }
}

/// Whether a kernel location (`nf_hook_slow+0x93`) is one where `reason`'s drops are freed.
pub fn is_location_of(reason: &str, location: &str) -> bool {
    let function = location.split('+').next().unwrap_or("");
    reason_locations(reason)
        .iter()
        .any(|f| function.starts_with(f))
}

/// Whether a kernel location is in netfilter's packet path, where a firewall rule's drop is freed.
pub fn is_netfilter_location(location: &str) -> bool {
    is_location_of("NETFILTER_DROP", location)
}

/// How a drop for `reason` is labelled on this kernel: the reason, or `UNAVAILABLE` before 5.17.
pub fn reason_label(reason: &'static str) -> Result<&'static str> {
    Ok(if kernel_names_drop_reasons()? {
        reason
    } else {
        "UNAVAILABLE"
    })
}

/// The reason a firewall drop is reported with on this kernel.
pub fn firewall_reason() -> Result<&'static str> {
    reason_label("NETFILTER_DROP")
}

/// Drops for `reason` in one workload of the summary: by reason where the kernel names reasons;
/// before 5.17 the drops (reason `UNAVAILABLE`) at the functions that free such drops.
pub fn drops_for(workload: &Value, reason: &str) -> Result<u64> {
    if kernel_names_drop_reasons()? {
        return Ok(drops_with_reason(workload, reason));
    }
    Ok(workload["drops"]["by_reason"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["reason"] == "UNAVAILABLE")
        .flat_map(|r| r["locations"].as_array().into_iter().flatten())
        .filter(|l| {
            l["location"]
                .as_str()
                .is_some_and(|l| is_location_of(reason, l))
        })
        .filter_map(|l| l["count"].as_u64())
        .sum())
}

/// Firewall drops in one workload of the summary (see [`drops_for`]).
pub fn firewall_drops(workload: &Value) -> Result<u64> {
    drops_for(workload, "NETFILTER_DROP")
}

/// Whether a drop event of the JSON stream is a firewall drop (see [`drops_for`]).
pub fn is_firewall_drop_event(event: &Value) -> Result<bool> {
    Ok(event["type"] == "drop"
        && if kernel_names_drop_reasons()? {
            event["reason"] == "NETFILTER_DROP"
        } else {
            event["reason"] == "UNAVAILABLE"
                && event["location"]
                    .as_str()
                    .is_some_and(is_netfilter_location)
        })
}

/// Deterministic pseudo-random bytes (xorshift), so a transfer's content is known in advance.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, to compare what was sent with what arrived.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What a TCP transfer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub bytes: usize,
    pub hash: u64,
    /// The client's local port (identifies the flow).
    pub client_port: u16,
}

/// Sends `data` over TCP from `client` to `server` (listening on `addr:port` inside `server`) and
/// returns what the server received. Fails after `timeout`.
pub fn tcp_transfer(
    client: &Node,
    server: &Node,
    addr: IpAddr,
    port: u16,
    data: &[u8],
    timeout: Duration,
) -> Result<Delivered> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        SocketAddr::from(([0u16; 8], port))
    };
    let listener = server.enter(|| TcpListener::bind(bind))??;
    listener.set_nonblocking(false)?;
    let reader = std::thread::spawn(move || -> Result<(usize, u64)> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(timeout))?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        Ok((received.len(), fnv1a(&received)))
    });
    let client_port = client.enter(|| -> Result<u16> {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::new(addr, port), timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        let local = stream.local_addr()?.port();
        stream.write_all(data)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        // Wait for the server to close, so every retransmission of ours is over.
        let mut rest = Vec::new();
        stream.set_read_timeout(Some(timeout))?;
        let _ = stream.read_to_end(&mut rest);
        Ok(local)
    })??;
    let (bytes, hash) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))??;
    Ok(Delivered {
        bytes,
        hash,
        client_port,
    })
}

/// A counter of `nstat` (e.g. `TcpRetransSegs`) inside a namespace: the kernel's own count.
pub fn nstat(node: &Node, counter: &str) -> Result<u64> {
    let out = node.run(&["nstat", "-a", "-z", "-s", counter])?;
    out.lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(counter)).then(|| parts.next()?.parse().ok())?
        })
        .with_context(|| format!("nstat has no {counter}:\n{out}"))
}

/// An interface's own counters (`ip -s link`): (rx packets, rx bytes, tx packets, tx bytes).
pub fn link_stats(ifname: &str) -> Result<(u64, u64, u64, u64)> {
    let out = sh(&["ip", "-j", "-s", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out).context("ip -j printed no JSON")?;
    let s = &v[0]["stats64"];
    let n = |dir: &str, what: &str| {
        s[dir][what]
            .as_u64()
            .with_context(|| format!("no {dir} {what} in {out}"))
    };
    Ok((
        n("rx", "packets")?,
        n("rx", "bytes")?,
        n("tx", "packets")?,
        n("tx", "bytes")?,
    ))
}

/// The ARP table's `res_failed` (resolutions that ran out of probes, counted in
/// `neigh_timer_handler`), summed over CPUs: one table for every namespace.
pub fn arp_res_failed() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/stat/arp_cache")?;
    let mut lines = text.lines();
    let column = lines
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == "res_failed"))
        .context("/proc/net/stat/arp_cache has no res_failed column")?;
    Ok(lines
        .filter_map(|l| l.split_whitespace().nth(column))
        .filter_map(|v| u64::from_str_radix(v, 16).ok())
        .sum())
}

/// The state `ip neigh` shows for an address in a namespace (`FAILED`, `REACHABLE`, …).
pub fn neigh_state(node: &Node, addr: &str) -> Result<String> {
    let out = node.run(&["ip", "neigh", "show", addr, "dev", "eth0"])?;
    Ok(out.split_whitespace().last().unwrap_or("").to_string())
}

/// Names of the programs attached to an interface's tcx hook.
pub fn tcx_programs(ifname: &str, ingress: bool) -> Result<Vec<String>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let hook = if ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    let (_, progs) = SchedClassifier::query_tcx(ifname, hook)
        .with_context(|| format!("cannot query the tcx programs of {ifname}"))?;
    Ok(progs
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
        .collect())
}

/// `tc filter show dev IFNAME ingress|egress` (the clsact filters).
pub fn tc_filters(ifname: &str, ingress: bool) -> Result<String> {
    sh(&[
        "tc",
        "filter",
        "show",
        "dev",
        ifname,
        if ingress { "ingress" } else { "egress" },
    ])
}

/// Sends SIGKILL to a process this test started.
pub fn kill_9(child: &mut Child) -> Result<()> {
    child.kill().context("cannot kill nettools")?;
    child.wait().context("cannot reap nettools")?;
    Ok(())
}

/// Whether this test runs in the `cargo xtask vmtest` guest: another kernel, under QEMU's
/// software emulation (its /init sets `NETTOOLS_VMTEST=1`).
pub fn in_vmtest_guest() -> bool {
    std::env::var_os("NETTOOLS_VMTEST").is_some_and(|v| v == "1")
}

/// Whether this kernel has tcx (BPF links on tc hooks, Linux 6.6), from its own BTF: the
/// attach types it knows include `BPF_TCX_INGRESS`.
pub fn kernel_has_tcx() -> Result<bool> {
    let btf =
        std::fs::read("/sys/kernel/btf/vmlinux").context("cannot read /sys/kernel/btf/vmlinux")?;
    let needle = b"BPF_TCX_INGRESS\0";
    Ok(btf.windows(needle.len()).any(|w| w == needle))
}

/// How far a measured latency may be from the delay a lab injected, given the tolerance on real
/// hardware. Under software emulation (the vmtest guest) every packet that a userspace program
/// holds (NFQUEUE) or answers waits for an emulated CPU, which adds several milliseconds
/// (measured: 5.8 ms on a 30 ms delay), and the holder's own clock readings land late; 10 ms
/// more are allowed there.
pub fn latency_tolerance_ms(on_hardware: f64) -> f64 {
    if in_vmtest_guest() {
        on_hardware + 10.0
    } else {
        on_hardware
    }
}

/// Whether a system tool is installed (the kernel matrix's guests carry what this machine has).
pub fn have_tool(name: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(name).is_file())
}

/// A native nftables rule's handle and packet counter, from `nft -a list chain` in `node` (the
/// line holding `matching`: `… counter packets 6 bytes 360 drop # handle 2`; 0 packets for a
/// rule without a counter).
pub fn nft_rule(
    node: &Node,
    family: &str,
    table: &str,
    chain: &str,
    matching: &str,
) -> Result<(u64, u64)> {
    let out = node.run(&["nft", "-a", "list", "chain", family, table, chain])?;
    let line = out
        .lines()
        .find(|l| l.contains(matching))
        .with_context(|| format!("no rule with {matching:?} in:\n{out}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.parse().ok()
    };
    let handle = after("handle").with_context(|| format!("no handle in {line:?}"))?;
    Ok((handle, after("packets").unwrap_or(0)))
}

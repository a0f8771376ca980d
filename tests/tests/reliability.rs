//! Untrusted input, files and exits (issue 14): names a workload chooses reach every report
//! escaped; report files never follow another user's link and are replaced only once
//! complete; a SIGTERM while the probes attach still detaches everything; a dead lab is
//! recognised even when its PID was reused.

use std::{
    ffi::CString,
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nettools::report::text;
use nettools_tests::*;

/// A process in a lab namespace that renamed itself (prctl PR_SET_NAME), as any workload can.
struct Renamed {
    pid: i32,
}

impl Renamed {
    fn start(node: &Node, comm: &[u8]) -> Result<Self> {
        let ns = File::open(&node.path)?;
        let name = CString::new(comm)?;
        // SAFETY: the child only makes async-signal-safe system calls (prctl, setns, pause,
        // _exit) on memory prepared before the fork, then waits to be killed.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => bail!("cannot fork: {}", std::io::Error::last_os_error()),
            0 => {
                // SAFETY: see above; this is the child.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        libc::_exit(1);
                    }
                    libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                    loop {
                        libc::pause();
                    }
                }
            }
            pid => {
                let renamed = Self { pid };
                let comm_file = format!("/proc/{pid}/comm");
                for _ in 0..200 {
                    if std::fs::read(&comm_file).is_ok_and(|c| c.strip_suffix(b"\n") == Some(comm))
                    {
                        return Ok(renamed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                bail!("the child did not rename itself")
            }
        }
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        // SAFETY: killing and reaping the child this test forked, by its PID.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Fails when `text` holds a character that must not reach a terminal raw (line feeds aside).
fn assert_escaped(what: &str, out: &str) {
    if let Some(c) = out.chars().find(|&c| c != '\n' && text::is_unsafe(c)) {
        panic!("{what} holds {c:?} raw:\n{out}");
    }
}

/// A process named with escape sequences and a right-to-left override, in a namespace whose
/// interface is named with escape sequences (the kernel takes them; only '/', ':' and
/// whitespace are refused), traced with `--pid`: the table, the folded stacks, the status
/// line and the live view on a real terminal show the escaped forms, never the raw bytes.
/// The folded stacks still count exactly what the firewall rule dropped.
#[test]
fn names_a_workload_chooses_reach_every_report_escaped() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.239.7.1/24", None)?;
    let b = lab.node("b", "10.239.7.2/24", None)?;
    let ifname = "\x1b[2J\x1b]0;if\x07";
    a.run(&["ip", "link", "set", "eth0", "down"])?;
    a.run(&["ip", "link", "set", "eth0", "name", ifname])?;
    a.run(&["ip", "link", "set", ifname, "up"])?;
    a.drop_input("udp", 7010)?;
    let comm = "\x1b]0;pwn\x07\u{202e}";
    let child = Renamed::start(&a, comm.as_bytes())?;
    let pid = child.pid.to_string();

    let folded = TempFile::new(".folded");
    let trace = Trace::start(&[
        "--pid",
        &pid,
        "--probes",
        "drops,traffic",
        "--folded",
        &folded.0.to_string_lossy(),
    ])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7010)), 40)?;
    std::thread::sleep(Duration::from_millis(300));
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    let name = format!("pid {pid} (\\x1b]0;pwn\\x07\\u{{202e}})");
    let peer = "host side of \\x1b[2J\\x1b]0;if\\x07";
    assert_escaped("the report", &done.report);
    assert!(
        done.report.contains(&format!("== {name}  (netns ")),
        "{}",
        done.report
    );
    assert!(done.report.contains(peer), "{}", done.report);
    assert_escaped("stderr", &done.stderr);
    assert!(
        done.stderr.contains(&format!("in {name}")),
        "{}",
        done.stderr
    );
    // Folded stacks: the name is one frame, the counts are the rule's.
    let folded = std::fs::read_to_string(&folded.0)?;
    assert_escaped("the folded stacks", &folded);
    // (`;` and spaces are frame and count separators: `_` inside a frame.)
    let frame = format!("pid_{pid}_(\\x1b]0_pwn\\x07\\u{{202e}})");
    let mut dropped = 0;
    for line in folded.lines() {
        let (frames, count) = line.rsplit_once(' ').context("no count")?;
        assert!(!frames.contains(char::is_whitespace), "{line}");
        if frames.starts_with(&format!("{frame};")) {
            dropped += count.parse::<u64>()?;
        }
    }
    let (reason, named) = (firewall_reason()?, kernel_names_drop_reasons()?);
    let firewall: u64 = folded
        .lines()
        .filter(|l| l.contains(&format!(";{reason};")) && (named || l.contains("nf_hook_slow")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(firewall, iptables_packets(&a, "INPUT", 1)?, "{folded}");
    assert!(dropped >= firewall, "{folded}");

    // The live view on a terminal: only nettools' own cursor movements.
    let args = [
        "trace",
        "--pid",
        pid.as_str(),
        "--probes",
        "drops,traffic",
        "-d",
        "2500ms",
    ];
    let Some(term) = pty::Terminal::start(&args, pty::Side::Stdout, 200)? else {
        skip("no pseudo-terminals here (devpts is not mounted)");
        return Ok(());
    };
    let (status, shown) = term.wait(Duration::from_secs(60))?;
    assert!(status.success(), "{status}: {shown}");
    pty::assert_only_own_escapes(&shown);
    assert!(shown.contains("\x1b[J"), "no live frame: {shown:?}");
    assert!(shown.contains("\\x1b]0;pwn\\x07\\u{202e})"), "{shown:?}");
    drop(child);
    Ok(())
}

/// `lchown`: what another user's planted link looks like.
fn chown_link(path: &Path, uid: u32) -> Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; lchown changes the link itself.
    if unsafe { libc::lchown(c.as_ptr(), uid, uid) } != 0 {
        bail!("lchown: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pings from `from` to `to` while a trace of `from` runs with `--hgrm dir`, so it has an
/// `icmp_echo` histogram to write: the trace and how many replies ping got.
fn trace_pings(from: &Node, to: &Node, dir: &Path) -> Result<(Finished, u64)> {
    let trace = Trace::start(&[
        "--netns",
        &from.netns,
        "--probes",
        "icmp",
        "--hgrm",
        &dir.to_string_lossy(),
    ])?;
    let ping = from.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &to.ipv4.to_string(),
    ])?;
    let received = ping
        .split(", ")
        .find_map(|part| part.strip_suffix(" received")?.parse().ok())
        .with_context(|| format!("no reply count in {ping}"))?;
    Ok((trace.stop()?, received))
}

/// `/tmp/…/web-icmp_echo.hgrm -> victim`, planted by another user in a sticky directory:
/// refused with one sentence and the victim untouched. The same link of root's own is replaced
/// (never followed); a directory anyone can write to is refused before tracing starts.
#[test]
fn a_planted_link_is_never_followed() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("web", "10.239.8.1/24", None)?;
    let b = lab.node("peer", "10.239.8.2/24", None)?;
    let dir = Scratch::with_mode("hgrm", 0o1777)?;
    let victim = dir.0.join("victim");
    std::fs::write(&victim, "precious\n")?;
    let link = dir.0.join(format!("{}-icmp_echo.hgrm", a.netns));
    std::os::unix::fs::symlink(&victim, &link)?;
    chown_link(&link, 65534)?;

    let (done, _) = trace_pings(&a, &b, &dir.0)?;
    assert!(
        !done.success,
        "a planted link was accepted: {}",
        done.stderr
    );
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("nettools: ")
            && last.contains("is a symbolic link of uid 65534: nettools does not write through"),
        "{}",
        done.stderr
    );
    assert_eq!(std::fs::read_to_string(&victim)?, "precious\n");
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());

    // Root's own link: the file replaces it, the victim stays as it was.
    chown_link(&link, 0)?;
    let (done, replies) = trace_pings(&a, &b, &dir.0)?;
    assert!(done.success, "{}", done.stderr);
    assert_eq!(std::fs::read_to_string(&victim)?, "precious\n");
    let written = std::fs::symlink_metadata(&link)?;
    assert!(written.is_file(), "the link was not replaced");
    let hgrm = std::fs::read_to_string(&link)?;
    let total = format!("Total count    = {replies:>12}]");
    assert!(
        hgrm.contains("Percentile") && hgrm.contains(&total),
        "{total}: {hgrm}"
    );
    // 0644 at most (less the umask), and root's.
    assert_eq!(written.permissions().mode() & 0o7133, 0);
    assert_eq!(
        dir.names()?,
        vec![
            link.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            "victim".into()
        ],
        "a temporary file was left"
    );

    // A directory anyone can write to (not sticky): refused before anything is attached.
    let open = Scratch::with_mode("open", 0o777)?;
    let out = nettools(&[
        "trace",
        "--netns",
        &a.netns,
        "-d",
        "1s",
        "--hgrm",
        &open.0.to_string_lossy(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("can be written by others (mode 0777, uid 0)"),
        "{stderr}"
    );
    assert!(!stderr.contains("tracing"), "{stderr}");
    Ok(())
}

/// `--out` is replaced only by a complete report: a run whose probes cannot load and a run
/// killed in the middle (its JSON lines streaming) leave the old file as it was; a run that
/// completes replaces it.
#[test]
fn a_failed_or_killed_trace_leaves_the_old_report() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.239.9.1/24", None)?;
    let b = lab.node("b", "10.239.9.2/24", None)?;
    a.drop_input("udp", 7011)?;
    let dir = Scratch::with_mode("out", 0o755)?;
    let out = dir.0.join("report.txt");
    let out_arg = out.to_string_lossy().into_owned();
    std::fs::write(&out, "old report\n")?;

    // The probes cannot load (no BTF): detected after --out was opened.
    let failed = std::process::Command::new(nettools_bin())
        .args(["trace", "--netns", &a.netns, "-d", "1s", "--out", &out_arg])
        .env("NETTOOLS_BTF", "/nonexistent/vmlinux")
        .output()?;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no BTF"));
    assert_eq!(std::fs::read_to_string(&out)?, "old report\n");
    assert_eq!(dir.names()?, vec!["report.txt".to_string()]);

    // Killed while JSON lines stream into the new report.
    let args = [
        "trace", "--netns", &a.netns, "-o", "json", "--out", &out_arg,
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let mut running = Background::start(&args, "nettools: tracing")?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7011)), 20)?;
    std::thread::sleep(Duration::from_millis(1500));
    kill_9(&mut running.child)?;
    assert_eq!(std::fs::read_to_string(&out)?, "old report\n");
    // What it had written went to its temporary file (left by SIGKILL; removed here).
    let temps: Vec<String> = dir
        .names()?
        .into_iter()
        .filter(|n| n.starts_with(".nettools-"))
        .collect();
    assert_eq!(temps.len(), 1, "{temps:?}");
    let partial = std::fs::read_to_string(dir.0.join(&temps[0]))?;
    assert!(partial.contains("\"type\":\"drop\""), "{partial}");
    std::fs::remove_file(dir.0.join(&temps[0]))?;

    // A complete run replaces it.
    let ok = nettools(&[
        "trace", "--netns", &a.netns, "-d", "500ms", "--out", &out_arg,
    ])?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The whole report: the problems, then the header and the sections.
    let report = std::fs::read_to_string(&out)?;
    assert!(
        (report.starts_with("problems (") || report.starts_with("no problems found\n"))
            && report
                .split("\n\n")
                .nth(1)
                .is_some_and(|h| h.starts_with("nettools trace: 1 namespace")),
        "{report}"
    );
    assert_eq!(dir.names()?, vec!["report.txt".to_string()]);
    Ok(())
}

/// SIGTERM at each step of start-up (as the status line on a terminal announces it) with
/// `--tc-mode clsact`: nettools finishes by itself, writes its report, and leaves no filter on
/// the veths. The last run first checks that the filters are there while tracing.
#[test]
fn sigterm_while_attaching_leaves_no_clsact_filter() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.239.10.1/24", None)?;
    let b = lab.node("b", "10.239.10.2/24", None)?;
    let out = TempFile::new(".report");
    let out_arg = out.0.to_string_lossy().into_owned();
    let args = [
        "trace",
        "--netns",
        a.netns.as_str(),
        "--netns",
        b.netns.as_str(),
        "--tc-mode",
        "clsact",
        "--out",
        &out_arg,
    ];
    let ours = |node: &Node| -> Result<bool> {
        Ok([true, false]
            .iter()
            .map(|&ingress| tc_filters(&node.host_veth, ingress))
            .collect::<Result<Vec<String>>>()?
            .iter()
            .any(|f| f.contains("nettools")))
    };
    for moment in [
        "loading probes into the kernel",
        "finding the workloads' veths",
        "attaching tc programs",
        "attaching tracepoints",
        "nettools: tracing",
    ] {
        let _ = std::fs::remove_file(&out.0);
        let started = std::time::Instant::now();
        let Some(mut term) = pty::Terminal::start(&args, pty::Side::Stderr, 200)? else {
            skip("no pseudo-terminals here (devpts is not mounted)");
            return Ok(());
        };
        assert!(
            term.wait_for(moment, Duration::from_secs(30))?,
            "{moment:?} never shown: {}",
            term.received()
        );
        if moment == "nettools: tracing" {
            assert!(ours(&a)? && ours(&b)?, "no clsact filter while tracing");
        }
        let shown_at = started.elapsed();
        term.signal(libc::SIGTERM)?;
        let (status, shown) = term.wait(Duration::from_secs(60))?;
        eprintln!(
            "SIGTERM at {moment:?} ({:.0} ms after start): exited {status} {:.0} ms later",
            shown_at.as_secs_f64() * 1e3,
            (started.elapsed() - shown_at).as_secs_f64() * 1e3
        );
        assert!(
            status.success(),
            "SIGTERM at {moment:?}: {status} (killed by the signal?): {shown}"
        );
        assert!(
            !ours(&a)? && !ours(&b)?,
            "a clsact filter left after SIGTERM at {moment:?}"
        );
        let report = std::fs::read_to_string(&out.0).unwrap_or_default();
        // The whole report: the problems (the lab's, if any), then the header.
        assert!(
            (report.starts_with("problems (") || report.starts_with("no problems found\n"))
                && report
                    .split("\n\n")
                    .nth(1)
                    .is_some_and(|h| h.starts_with("nettools trace: 2 namespaces")),
            "{moment:?}: {report}"
        );
    }
    Ok(())
}

/// The stale-lab sweep: a lab whose owner PID now belongs to another process (here: this
/// test's PID with another start time) is removed, one of a PID that no longer exists too,
/// and one of this very process stays.
#[test]
fn the_lab_sweep_tells_a_reused_pid_from_its_owner() -> Result<()> {
    require_root();
    let me = nettools::lab::Owner::me();
    let Some(start) = me.start else {
        bail!("no start time for this process in /proc")
    };
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let reused = format!("ntlab-{}.{}-90-stale", me.pid, start + 1);
    let gone = format!("ntlab-{pid_max}-90-gone");
    let mine = format!("ntlab-{}-90-mine", me.token());
    for name in [&reused, &gone, &mine] {
        sh(&["ip", "netns", "add", name])?;
    }
    let stale_link = format!("ntsw{}", me.pid % 100_000);
    sh(&[
        "ip",
        "link",
        "add",
        &stale_link,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{stale_link}p"),
    ])?;
    sh(&[
        "ip",
        "link",
        "set",
        &stale_link,
        "alias",
        &format!("ntlab-{}.{}-90", me.pid, start + 1),
    ])?;
    let named = || -> Vec<String> { nettools::discover::netns::named().into_keys().collect() };
    let before = named();
    let lab = Lab::new();
    let after = named();
    let link_left = sh(&["ip", "link", "show", &stale_link]).is_ok();
    let _ = sh(&["ip", "netns", "del", &mine]);
    let _ = sh(&["ip", "link", "del", &stale_link]);
    drop(lab?);
    assert!(
        before.contains(&reused) && before.contains(&gone),
        "{before:?}"
    );
    assert!(
        !after.contains(&reused),
        "a reused PID kept a dead lab: {after:?}"
    );
    assert!(!after.contains(&gone), "{after:?}");
    assert!(
        after.contains(&mine),
        "the sweep removed a live lab: {after:?}"
    );
    assert!(!link_left, "the dead lab's veth was left");
    Ok(())
}

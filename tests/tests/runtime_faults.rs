//! Container runtimes that misbehave, and what they cost nettools. A Docker-API socket that
//! accepts and never answers, one that dribbles a byte every 2 s, and one that floods past the
//! answer cap, next to a real containerd that answers: `list` and `trace --container` return
//! within the request deadline with one sentence naming the socket, and containerd's pods are
//! still found. Then the real containerd stopped with SIGSTOP for 15 s under a running
//! `nettools serve` and `nettools trace`: the pod's series keep their labels at every scrape,
//! `nettools_runtime_up` goes to 0 and back to 1, and the drop counter never goes back and ends
//! equal to the pod's iptables rule counter (the kernel's own count, the oracle).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::{agent::Agent, nsexec::*, prom::*, runtimes::*, *};

/// nettools' deadline for one runtime request (`discover::LIMITS.request`).
const DEADLINE: Duration = Duration::from_secs(5);
/// What this noisy 2-core machine may add to it (process start, the other sources, a busy
/// CPU): generous, the point is "the deadline, not forever".
const SLACK: Duration = Duration::from_secs(4);

/// containerd running one pod, `web` in `namespace` (with a container `app`), whose firewall
/// drops UDP port 7777.
fn containerd_with_a_dropping_pod(namespace: &str, uid: &str) -> Result<(Containerd, DroppingPod)> {
    let mut ctd = Containerd::start()?;
    let name = "web";
    let sandbox = ctd.run_pod(name, namespace, uid, 0)?;
    ctd.run_container(&sandbox, (name, namespace, uid, 0), "app")?;
    let path = format!("/proc/{}/ns/net", ctd.sandbox_pid(uid, &sandbox)?);
    let pod = DroppingPod::stage(path, 7777)?;
    Ok((ctd, pod))
}

/// `nettools ARGS`, timed.
fn timed(args: &[&str]) -> Result<(std::process::Output, Duration)> {
    let started = Instant::now();
    let out = nettools(args)?;
    Ok((out, started.elapsed()))
}

/// The "asked:" line of `nettools list`.
fn asked_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("asked: "))
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_hung_dribbling_or_flooding_docker_socket_costs_its_deadline_and_the_others_answer()
-> Result<()> {
    need!(CONTAINERD_PROGRAMS);
    let (ctd, pod) =
        containerd_with_a_dropping_pod("nettools-faults", "3d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")?;
    let cri = ctd.socket.display().to_string();
    let silent = FaultSocket::start(Fault::Silent)?;
    let dribbling = FaultSocket::start(Fault::Dribble(Duration::from_secs(2)))?;
    let flooding = FaultSocket::start(Fault::Flood(17 << 20))?;

    for (socket, reason) in [
        (&silent, "no answer to GET /version within 5 s".to_string()),
        (
            &dribbling,
            // One byte every 2 s: 3 bytes in 5 s (maybe 2 on a slow start).
            "bytes of an answer to GET /version within 5 s".to_string(),
        ),
        (
            &flooding,
            "the answer to GET /v1.40/containers/json is larger than 16 MiB".to_string(),
        ),
    ] {
        let docker = socket.display();
        // list: the pod from CRI, the Docker socket's failure in the "asked:" line.
        let (out, took) = timed(&["list", "--cri-socket", &cri, "--docker-socket", &docker])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("MEASURED: nettools list with {docker} ({reason}): {took:?}");
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
        assert!(took < DEADLINE + SLACK, "list took {took:?}");
        let asked = asked_line(&stdout);
        let failure = format!("docker-api at {docker} failed: ");
        assert!(asked.contains(&failure), "{asked}");
        assert!(asked.contains(&reason), "{asked}");
        assert!(asked.contains("containerd 1."), "{asked}");
        assert!(
            stdout.lines().any(|l| l.starts_with("pod")
                && l.contains("nettools-faults/web")
                && l.contains(&pod.netns.to_string())),
            "{stdout}"
        );
        // The failure is one sentence on one line.
        let sentence = asked
            .split("; ")
            .find(|s| s.starts_with(&failure))
            .unwrap_or("");
        assert!(
            !sentence.contains('\n') && !sentence.contains("os error"),
            "{sentence}"
        );

        // trace --container: a container only the Docker socket could name is one sentence,
        // exit code 1, within the deadline.
        let (out, took) = timed(&[
            "trace",
            "--container",
            "nope",
            "--cri-socket",
            &cri,
            "--docker-socket",
            &docker,
            "-d",
            "1s",
        ])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("MEASURED: nettools trace --container nope with {docker}: {took:?} to fail");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("nettools: no container \"nope\" on this node (containers here: ")
                && stderr.contains("app"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&failure) && stderr.contains(&reason),
            "{stderr}"
        );
        assert!(took < DEADLINE + SLACK, "trace took {took:?}");
    }

    // trace --container of the CRI pod's container: found despite the hung socket, traced, and
    // its drops are the kernel's count.
    let started = Instant::now();
    let docker = silent.display();
    let trace = Trace::start(&[
        "--container",
        "app",
        "--cri-socket",
        &cri,
        "--docker-socket",
        &docker,
        "-o",
        "json",
        "--probes",
        "drops",
    ])?;
    let until_traced = started.elapsed();
    eprintln!(
        "MEASURED: nettools trace --container app with the silent socket: tracing after {until_traced:?}"
    );
    assert!(until_traced < DEADLINE + SLACK, "{until_traced:?}");
    udp_from(
        None,
        SocketAddr::from((pod.ip, 7777)),
        80,
        Duration::from_micros(300),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let traced = workload(s, pod.netns)?;
    assert_eq!(traced["name"], "pod nettools-faults/web (containers: app)");
    let counted_by_kernel = input_rule_packets(&pod.path, 1)?;
    assert_eq!(counted_by_kernel, 80, "the set-up itself misbehaved");
    assert_eq!(
        drops_with_reason(traced, "NETFILTER_DROP"),
        counted_by_kernel
    );
    Ok(())
}

/// UDP datagrams to `dst` every `gap` until stopped (on drop too).
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Sender {
    fn start(dst: SocketAddr, gap: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || -> Result<u64> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            let mut sent = 0;
            while !stopping.load(Ordering::Relaxed) {
                socket.send_to(b"nettools test", dst)?;
                sent += 1;
                std::thread::sleep(gap);
            }
            Ok(sent)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("already finished")?
            .join()
            .map_err(|_| anyhow::anyhow!("the sender panicked"))?
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The labels of the one sample of `name` that has `want`.
fn labels_of(text: &str, name: &str, want: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    match samples_with(text, name, want).as_slice() {
        [(labels, _)] => Some(labels.clone()),
        _ => None,
    }
}

/// Scrapes of the agent, each checked against the pod's rule counter and the last one.
struct Scrapes<'a> {
    agent: &'a Agent,
    pod: &'a DroppingPod,
    info: &'a BTreeMap<String, String>,
    ours: &'a [(&'a str, &'a str)],
    drop_labels: &'a [(&'a str, &'a str)],
    runtime_up: &'a [(&'a str, &'a str)],
    t0: Instant,
    last: f64,
    /// `nettools_runtime_up` at each scrape: seconds since `t0`, value.
    ups: Vec<(f64, f64)>,
    slowest: Duration,
}

impl Scrapes<'_> {
    /// One scrape, checked; returns `nettools_runtime_up`.
    fn check(&mut self, phase: &str) -> Result<f64> {
        let before = input_rule_packets(&self.pod.path, 1)? as f64;
        let asked = Instant::now();
        let text = self.agent.scrape()?;
        self.slowest = self.slowest.max(asked.elapsed());
        let after = input_rule_packets(&self.pod.path, 1)? as f64;
        promtool_accepts(&text)?;
        let now = labels_of(&text, "nettools_workload_info", self.ours);
        assert_eq!(
            now.as_ref(),
            Some(self.info),
            "{phase}: the pod's labels changed:\n{text}"
        );
        let drops = value(&text, "nettools_drops_total", self.drop_labels)?.unwrap_or(0.0);
        assert!(
            self.last <= drops && before <= drops && drops <= after,
            "{phase}: scraped {drops} drops after {}; the kernel counted {before} before and \
             {after} after",
            self.last
        );
        self.last = drops;
        let up = value(&text, "nettools_runtime_up", self.runtime_up)?
            .with_context(|| format!("{phase}: no nettools_runtime_up:\n{text}"))?;
        self.ups
            .push(((self.t0.elapsed().as_secs_f64() * 10.0).round() / 10.0, up));
        Ok(up)
    }
}

#[test]
fn containerd_stopped_for_15_s_keeps_the_pods_series_and_its_counters_never_reset() -> Result<()> {
    need!(&[CONTAINERD_PROGRAMS, &["promtool"]].concat());
    let (mut ctd, pod) =
        containerd_with_a_dropping_pod("nettools-stop", "4d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6")?;
    let cri = ctd.socket.display().to_string();
    let netns = pod.netns.to_string();
    let agent = Agent::start(&["--cri-socket", &cri, "--refresh", "1s"])?;
    // A trace of the pod by name, without --follow: a runtime's hiccup must not end it.
    let trace = Trace::start(&[
        "--pod",
        "web",
        "-n",
        "nettools-stop",
        "--cri-socket",
        &cri,
        "-o",
        "json",
        "--probes",
        "drops",
    ])?;
    let ours = [
        ("kind", "pod"),
        ("namespace", "nettools-stop"),
        ("pod", "web"),
        ("netns", netns.as_str()),
    ];
    let runtime_up = [("source", "cri"), ("socket", cri.as_str())];
    let text = agent.scrape()?;
    promtool_accepts(&text)?;
    let info = labels_of(&text, "nettools_workload_info", &ours)
        .with_context(|| format!("the pod is not exported: {text}"))?;
    assert_eq!(
        value(&text, "nettools_runtime_up", &runtime_up)?,
        Some(1.0),
        "{text}"
    );
    let mut drop_labels = ours.to_vec();
    drop_labels.push(("reason", "NETFILTER_DROP"));

    // Traffic into the drop throughout: a datagram every 5 ms.
    let sender = Sender::start(SocketAddr::from((pod.ip, 7777)), Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(1));

    // Every scrape: the same labels; the drop counter between the kernel's count just before
    // and just after it, and never below the last scrape's.
    let mut scrapes = Scrapes {
        agent: &agent,
        pod: &pod,
        info: &info,
        ours: &ours,
        drop_labels: &drop_labels,
        runtime_up: &runtime_up,
        t0: Instant::now(),
        last: 0.0,
        ups: Vec::new(),
        slowest: Duration::ZERO,
    };
    scrapes.check("before the stop")?;

    // containerd hangs: its socket accepts, nothing answers.
    let frozen = ctd.freeze()?;
    let stopped_at = Instant::now();
    eprintln!(
        "MEASURED: SIGSTOP at {:.1} s",
        scrapes.t0.elapsed().as_secs_f64()
    );
    // `list` meanwhile: the pod comes from the cgroup scan, the failure is one sentence.
    let (out, took) = timed(&["list", "--cri-socket", &cri])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("MEASURED: nettools list with containerd stopped: {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < DEADLINE + SLACK, "list took {took:?}");
    let asked = asked_line(&stdout);
    assert!(asked.contains(&format!("cri at {cri} failed: ")), "{asked}");
    while stopped_at.elapsed() < Duration::from_secs(15) {
        scrapes.check("containerd stopped")?;
        std::thread::sleep(Duration::from_secs(1));
    }
    frozen.thaw();
    let thawed = Instant::now();
    eprintln!(
        "MEASURED: SIGCONT at {:.1} s",
        scrapes.t0.elapsed().as_secs_f64()
    );
    loop {
        let up = scrapes.check("containerd running again")?;
        if up == 1.0 {
            break;
        }
        if thawed.elapsed() > Duration::from_secs(20) {
            bail!(
                "nettools_runtime_up stayed 0 after SIGCONT: {:?}",
                scrapes.ups
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "MEASURED: runtime_up over time (s, value): {:?}",
        scrapes.ups
    );
    eprintln!(
        "MEASURED: slowest of {} scrapes: {:?}",
        scrapes.ups.len(),
        scrapes.slowest
    );
    assert!(
        scrapes.ups.iter().any(|(_, up)| *up == 0.0),
        "nettools_runtime_up never went to 0 while containerd was stopped: {:?}",
        scrapes.ups
    );

    // Quiet: the counter is exactly the kernel's.
    let sent = sender.finish()?;
    std::thread::sleep(Duration::from_millis(300));
    let counted_by_kernel = input_rule_packets(&pod.path, 1)?;
    assert_eq!(counted_by_kernel, sent, "the set-up itself misbehaved");
    let text = agent.scrape()?;
    assert_eq!(
        value(&text, "nettools_drops_total", &drop_labels)?,
        Some(counted_by_kernel as f64),
        "{text}"
    );
    assert_eq!(
        labels_of(&text, "nettools_workload_info", &ours),
        Some(info)
    );

    // The trace neither ended nor restarted, and counted every drop too.
    let stderr = trace.stderr_lines();
    assert!(
        !stderr.contains("was deleted")
            && !stderr.contains("new sandbox")
            && !stderr.contains("ending the trace"),
        "{stderr}"
    );
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let traced = workload(s, pod.netns)?;
    assert_eq!(traced["name"], "pod nettools-stop/web (containers: app)");
    assert_eq!(
        drops_with_reason(traced, "NETFILTER_DROP"),
        counted_by_kernel
    );
    Ok(())
}

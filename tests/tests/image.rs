//! The container image (`cargo xtask image`, built offline) run the way its users run it, in
//! real Podman: privileged, with the host's PID and network namespaces, `/sys/fs/bpf` and `/run`
//! mounted, and the runtime's socket. Inside it `nettools list` sees a Podman pod started
//! outside it, `nettools trace --pod` reports a drop staged in that pod with the count the
//! pod's own iptables rule counted, and the toolbox's programs answer.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::{manifest, nsexec::*, prom, runtimes::*, *};
use serde_json::Value;

const IMAGE: &str = "localhost/nettools-image:test";

/// The image tar `cargo xtask test` built (`NETTOOLS_IMAGE_TAR`), or the one `cargo xtask
/// image` leaves in target/image.
fn image_tar() -> Result<PathBuf> {
    let tar = std::env::var_os("NETTOOLS_IMAGE_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image/nettools-image.tar")
        });
    if !tar.is_file() {
        bail!(
            "the image tar {} does not exist: run `cargo xtask image --no-import` (cargo xtask \
             test builds it)",
            tar.display()
        );
    }
    Ok(tar)
}

/// `podman run` arguments of the documented privileged run, with the runtime's socket (which
/// lives outside /run here) mounted where `$DOCKER_HOST` points.
fn privileged(podman: &Podman) -> Vec<String> {
    let socket = podman.socket.display().to_string();
    [
        "--privileged",
        "--pid",
        "host",
        "--net",
        "host",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        "/run:/run:ro",
        "-v",
        &format!("{socket}:/podman.sock"),
        "-e",
        "DOCKER_HOST=unix:///podman.sock",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// How deploy/daemonset.yaml runs the agent: the capabilities it adds, and its host mounts as
/// `podman run` arguments (the ones whose host path exists here; read-only, and following the
/// host's new mounts where the manifest says so).
fn daemonset_agent() -> Result<(Vec<String>, Vec<String>)> {
    let docs = manifest::documents("daemonset.yaml")?;
    let ds = manifest::one(&docs, "DaemonSet")?;
    let agent = manifest::container(ds, "nettools")?;
    let caps = manifest::capabilities(agent);
    assert!(caps.contains(&"BPF".to_string()), "{caps:?}");
    let mut mounts = Vec::new();
    for m in manifest::host_mounts(ds, agent)? {
        if !std::path::Path::new(&m.host).exists() {
            continue;
        }
        let mut options = vec![if m.read_only { "ro" } else { "rw" }];
        if m.follows_host {
            options.push("rslave");
        }
        mounts.push("-v".to_string());
        mounts.push(format!("{}:{}:{}", m.host, m.container, options.join(",")));
    }
    Ok((caps, mounts))
}

/// The toolbox's programs and what each prints about its version.
const TOOLS: &[(&str, &str)] = &[
    ("iperf3 --version", "iperf 3"),
    ("tcpdump --version", "tcpdump version"),
    ("netstat --version", "net-tools"),
    ("ip -V", "iproute2"),
    ("nsenter --version", "util-linux"),
    ("brctl -V", "bridge-utils"),
    ("dig -v", "DiG 9"),
    ("ab -V", "ApacheBench"),
    ("ping -V", "iputils"),
    ("curl --version", "curl 7"),
    ("ethtool --version", "ethtool version"),
    ("nmap --version", "Nmap version"),
    ("conntrack --version", "conntrack v"),
    ("socat -V", "socat version"),
    ("iptables --version", "iptables v"),
    ("nettools --version", "nettools 0."),
];

/// A bash script running every program of `TOOLS`, each section headed `== COMMAND:` and
/// ended by its exit status. ipvsadm cannot print its version without IPVS in the kernel (this
/// one has none): it must at least run and say so.
fn toolbox_script() -> String {
    let mut script = String::new();
    for (command, _) in TOOLS {
        script.push_str(&format!(
            "echo \"== {command}: $({command} 2>&1; echo rc=$?)\"\n"
        ));
    }
    script.push_str(
        "if ipvsadm --version >/tmp/o 2>&1 || grep -q 'IP Virtual Server' /tmp/o; then \
         echo '== ipvsadm: ok'; fi\n",
    );
    script
}

/// Every program of `TOOLS` named its version and exited 0 in `out` (`toolbox_script`'s).
/// Under qemu-user (`emulated`) the two that open a netfilter netlink socket first, conntrack
/// and iptables (nft backend), are refused it: qemu-user translates only the route, audit and
/// uevent netlink families. There they must have run far enough to be refused, in those words.
fn check_toolbox(out: &str, emulated: bool) -> Result<()> {
    for (command, expected) in TOOLS {
        let section = out
            .split("== ")
            .find(|s| s.starts_with(&format!("{command}:")))
            .with_context(|| format!("{command} printed nothing:\n{out}"))?;
        if emulated && (command.starts_with("conntrack ") || command.starts_with("iptables ")) {
            assert!(
                section.contains("Protocol not supported"),
                "`{command}` in the emulated image: {section}"
            );
            continue;
        }
        assert!(
            section.contains(expected) && section.trim_end().ends_with("rc=0"),
            "`{command}` in the image: {section}"
        );
    }
    assert!(out.contains("== ipvsadm: ok"), "ipvsadm: {out}");
    Ok(())
}

#[test]
fn the_image_lists_and_traces_a_pod_started_outside_it_and_has_its_toolbox() -> Result<()> {
    require_root();
    if let Some(reason) = missing(&["podman", "runc", "conmon", "nsenter", "iptables"]) {
        eprintln!("SKIPPED: {reason}");
        return Ok(());
    }
    let tar = image_tar()?;
    let podman = Podman::start()?;
    let started = Instant::now();
    podman.cmd(&["import", &tar.display().to_string(), IMAGE])?;
    eprintln!("image imported in {:.1} s", started.elapsed().as_secs_f64());

    // A pod outside the image, with a firewall drop inside it, and a neighbour to send from.
    podman.pod("ntimgpod")?;
    podman.run(&["--name", "ntimg-web", "--pod", "ntimgpod"])?;
    podman.run(&[
        "--name",
        "ntimg-client",
        &format!("--network={}", podman.network),
    ])?;
    let pod_ns = format!("/proc/{}/ns/net", podman.pid("ntimg-web")?);
    let client_ns = format!("/proc/{}/ns/net", podman.pid("ntimg-client")?);
    let pod_inode = inode(&pod_ns)?;
    drop_udp(&pod_ns, 7777)?;
    let flags = privileged(&podman);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // `nettools list` inside the image finds the pod, its namespace and its veth.
    let mut args = vec!["run", "--rm"];
    args.extend(&flags);
    args.extend([IMAGE, "nettools", "list", "-o", "json"]);
    let list: Value = serde_json::from_str(&podman.cmd(&args)?)
        .context("nettools list -o json in the image printed no JSON")?;
    let pod = list["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["netns"] == pod_inode))
        .with_context(|| format!("the pod's namespace {pod_inode} is not listed: {list:#}"))?;
    assert_eq!(pod["pod"]["name"], "ntimgpod", "{pod:#}");
    assert_eq!(
        pod["veths"][0]["ifindex"],
        eth0_peer_index(&pod_ns)?,
        "{pod:#}"
    );
    assert!(
        list["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["source"] == "docker-api"
                && s["socket"] == "/podman.sock"
                && s["error"].is_null())),
        "the runtime socket was not asked: {list:#}"
    );

    // `nettools trace --pod` inside the image, in the background; the report goes to a
    // directory shared with the test.
    let out = Scratch::new("image")?;
    let report = out.0.join("report.jsonl");
    let mount = format!("{}:/out", out.0.display());
    let mut args = vec!["run", "-d", "--name", "ntimg-tracer", "-v", &mount];
    args.extend(&flags);
    // Its stderr goes to the shared directory too (`podman logs` would mix it with stdout).
    args.extend([
        IMAGE,
        "bash",
        "-c",
        "exec nettools \"$@\" 2>/out/stderr",
        "nettools",
        "trace",
        "--pod",
        "ntimgpod",
        "-o",
        "json",
        "--out",
        "/out/report.jsonl",
        "--duration",
        "60s",
    ]);
    podman.cmd(&args)?;
    let stderr = || std::fs::read_to_string(out.0.join("stderr")).unwrap_or_default();
    let waited = Instant::now();
    loop {
        let logs = stderr();
        if logs.contains("nettools: tracing") {
            break;
        }
        let state = podman.inspect("ntimg-tracer", "{{.State.Status}}")?;
        if state != "running" || waited.elapsed() > Duration::from_secs(60) {
            bail!("nettools in the image did not start tracing ({state}): {logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod_ip = podman.ip("ntimg-web")?;
    udp_from(
        Some(&client_ns),
        SocketAddr::from((pod_ip, 7777)),
        200,
        Duration::from_micros(300),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    podman.cmd(&["kill", "--signal", "INT", "ntimg-tracer"])?;
    let code = podman.cmd(&["wait", "ntimg-tracer"])?;
    assert_eq!(
        code,
        "0",
        "nettools trace in the image failed: {}",
        stderr()
    );
    let lines = json_lines(&std::fs::read_to_string(&report).context("no report")?)?;
    let s = summary(&lines)?;
    let traced = workload(s, pod_inode)?;
    assert_eq!(traced["pod"]["name"], "ntimgpod", "{traced:#}");
    let counted_by_kernel = input_rule_packets(&pod_ns, 1)?;
    assert_eq!(counted_by_kernel, 200, "the set-up itself misbehaved");
    assert_eq!(
        drops_with_reason(traced, "NETFILTER_DROP"),
        counted_by_kernel,
        "{traced:#}"
    );

    // The toolbox: each program runs and names its version.
    let mut args = vec!["run", "--rm"];
    args.extend(&flags);
    let script = toolbox_script();
    args.extend([IMAGE, "bash", "-c", &script]);
    check_toolbox(&podman.cmd(&args)?, false)?;

    // As the DaemonSet runs it: not privileged, only its capabilities, a read-only root, only
    // its host mounts, read-only (the runtime's socket is Podman's here); the agent inside
    // counts the pod's drops exactly.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let (caps, mounts) = daemonset_agent()?;
    let socket_mount = format!("{}:/podman.sock", podman.socket.display());
    let mut args = vec![
        "run",
        "-d",
        "--name",
        "ntimg-agent",
        "--read-only",
        "--cap-drop",
        "ALL",
    ];
    for c in &caps {
        args.extend(["--cap-add", c.as_str()]);
    }
    args.extend([
        "--security-opt",
        "seccomp=unconfined",
        "--pid",
        "host",
        "--net",
        "host",
    ]);
    args.extend(mounts.iter().map(String::as_str));
    args.extend([
        "-v",
        &socket_mount,
        "-e",
        "DOCKER_HOST=unix:///podman.sock",
        IMAGE,
        "nettools",
        "serve",
        "--listen",
        &listen,
        "--refresh",
        "1s",
    ]);
    podman.cmd(&args)?;
    let addr: SocketAddr = listen.parse()?;
    let waited = Instant::now();
    loop {
        match prom::scrape(addr) {
            Ok(text) if text.contains("pod=\"ntimgpod\"") => break,
            _ if waited.elapsed() > Duration::from_secs(60) => {
                let state =
                    podman.inspect("ntimg-agent", "{{.State.Status}} {{.State.ExitCode}}")?;
                bail!("the agent in the image did not answer with the pod ({state})");
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let before = input_rule_packets(&pod_ns, 1)?;
    udp_from(
        Some(&client_ns),
        SocketAddr::from((pod_ip, 7777)),
        50,
        Duration::from_micros(300),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let text = prom::scrape(addr)?;
    let counted = input_rule_packets(&pod_ns, 1)? - before;
    assert_eq!(counted, 50, "the set-up itself misbehaved");
    prom::promtool_accepts(&text)?;
    assert_eq!(
        prom::value(
            &text,
            "nettools_drops_total",
            &[("pod", "ntimgpod"), ("reason", "NETFILTER_DROP")]
        )?,
        Some(counted as f64),
        "{text}"
    );
    // Its veth was found (entering the pod's namespace) and the tc programs attached to it.
    let received = prom::value(
        &text,
        "nettools_veth_packets_total",
        &[("pod", "ntimgpod"), ("direction", "received")],
    )?
    .unwrap_or(0.0);
    assert!(
        received >= counted as f64,
        "{received} packets on the veth: {text}"
    );
    Ok(())
}

/// The arm64 image (`cargo xtask image --arch arm64`), run on this x86_64 machine under
/// qemu-user-static, the way Podman runs a foreign image: Podman knows it as arm64, its shell
/// and nettools are arm64 programs, and every program of the toolbox answers.
#[test]
fn the_arm64_image_holds_an_arm64_nettools_and_toolbox() -> Result<()> {
    require_root();
    if let Some(reason) = missing(&["podman", "runc", "conmon"]) {
        skip(&reason);
        return Ok(());
    }
    let tar = std::env::var_os("NETTOOLS_IMAGE_ARM64_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/image/nettools-image-arm64.tar")
        });
    if !tar.is_file() {
        skip(
            "no arm64 image was built: `cargo xtask image --arch arm64 --no-import` builds it \
             (about 10 minutes, its packages' scripts run under emulation), the test command \
             does not",
        );
        return Ok(());
    }
    if !std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists() {
        skip("this machine cannot run arm64 programs: qemu-user-static is not registered");
        return Ok(());
    }
    const ARM64: &str = "localhost/nettools-image:test-arm64";
    let podman = Podman::start()?;
    podman.cmd(&[
        "import",
        "--os",
        "linux",
        "--arch",
        "arm64",
        &tar.display().to_string(),
        ARM64,
    ])?;
    let platform = podman.cmd(&[
        "image",
        "inspect",
        "--format",
        "{{.Os}}/{{.Architecture}}",
        ARM64,
    ])?;
    assert_eq!(platform.trim(), "linux/arm64");
    // uname -m says what the shell runs as (an x86_64 shell would run natively and say
    // x86_64); the ELF header's e_machine (bytes 18-19) is AArch64's 183 = 0xb7.
    let script = format!(
        "echo \"== uname: $(uname -m)\"\n\
         echo \"== machine: $(od -An -tx1 -j18 -N2 /usr/local/bin/nettools)\"\n{}",
        toolbox_script()
    );
    let out = podman.cmd(&[
        "run", "--rm", "--arch", "arm64", ARM64, "bash", "-c", &script,
    ])?;
    assert!(out.contains("== uname: aarch64\n"), "{out}");
    assert!(out.contains("== machine:  b7 00\n"), "{out}");
    check_toolbox(&out, true)
}

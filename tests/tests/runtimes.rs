//! Pods and containers of real runtimes (Podman through its Docker-compatible API, containerd
//! through CRI with a CNI bridge), found by nettools and traced by name. The oracles are the
//! kernel's: namespace inodes of the containers' processes, the veth peer index seen from
//! inside, iptables rule counters in the pod's namespace.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::{nsexec::*, runtimes::*, *};
use serde_json::Value;

/// The gap between the datagrams these tests send.
const RUNTIME_GAP: Duration = Duration::from_micros(300);

/// `nettools list -o json ARGS`.
fn list_json(args: &[&str]) -> Result<Value> {
    let mut full = vec!["list", "-o", "json"];
    full.extend_from_slice(args);
    let out = nettools(&full)?;
    assert!(
        out.status.success(),
        "nettools list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("nettools list -o json printed no JSON")
}

fn container_names(w: &Value) -> Vec<String> {
    let mut names: Vec<String> = w["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn listed(list: &Value, netns: u32) -> Result<&Value> {
    list["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["netns"] == netns))
        .with_context(|| format!("namespace {netns} is not listed: {list:#}"))
}

#[test]
fn podman_containers_pods_and_shared_namespaces_are_listed_with_their_veth() -> Result<()> {
    need!(&["podman", "runc", "conmon", "nsenter"]);
    let podman = Podman::start()?;
    let net = format!("--network={}", podman.network);
    podman.run(&["--name", "ntc-solo", &net])?;
    podman.run(&["--name", "ntc-joined", "--network=container:ntc-solo"])?;
    podman.pod("ntpod")?;
    podman.run(&["--name", "ntpod-web", "--pod", "ntpod"])?;
    podman.run(&["--name", "ntpod-side", "--pod", "ntpod"])?;
    podman.run(&["--name", "nthost", "--network=host"])?;

    let list = list_json(&["--docker-socket", &podman.socket.display().to_string()])?;
    let engine = &list["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "docker-api"))
        .context("no docker-api source")?;
    assert!(
        engine["runtime"]
            .as_str()
            .is_some_and(|r| r.starts_with("podman")),
        "{engine}"
    );

    // The kernel's view: each container's process namespace, and eth0's peer on the host.
    for (members, pod) in [
        (["ntc-joined", "ntc-solo"], None),
        (["ntpod-side", "ntpod-web"], Some("ntpod")),
    ] {
        let path = format!("/proc/{}/ns/net", podman.pid(members[0])?);
        let netns = inode(&path)?;
        assert_eq!(
            inode(&format!("/proc/{}/ns/net", podman.pid(members[1])?))?,
            netns
        );
        let w = listed(&list, netns)?;
        assert_eq!(container_names(w), members, "{w:#}");
        assert_eq!(
            w["kind"],
            if pod.is_some() { "pod" } else { "container" },
            "{w:#}"
        );
        match pod {
            Some(p) => {
                assert_eq!(w["pod"]["name"], p, "{w:#}");
                assert_eq!(
                    w["name"]
                        .as_str()
                        .map(|n| n.starts_with(&format!("pod {p} (containers: "))),
                    Some(true)
                );
            }
            None => assert!(w["pod"].is_null(), "{w:#}"),
        }
        let peer = eth0_peer_index(&path)?;
        assert_eq!(w["veths"][0]["ifindex"], peer, "{w:#}");
        assert_eq!(w["veths"][0]["name"], host_ifname(peer)?.as_str());
        assert_eq!(w["veths"][0]["inner_name"], "eth0");
        let ip = podman.ip(members[0])?;
        let addresses = w["addresses"].as_array().context("no addresses")?;
        assert!(
            addresses.iter().any(|a| a == &format!("{ip}/24")),
            "{ip} not in {w:#}"
        );
        assert_eq!(w["host_network"], false);
        // Named by the API the test started.
        assert_eq!(w["named_by"], "runtime-api", "{w:#}");
    }
    // Exactly one workload per namespace: four containers and an infra container, two rows.
    let ours: Vec<&Value> = list["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| {
                    container_names(w)
                        .iter()
                        .any(|n| n.starts_with("ntc-") || n.starts_with("ntpod-"))
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ours.len(), 2, "{list:#}");

    // A host-network container is flagged, has no veth of its own, and its trace says that
    // what it reports is the host's.
    let host = nettools::discover::netns::host_inode().context("no host namespace")?;
    let hostnet = list["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| container_names(w) == ["nthost"]))
        .with_context(|| format!("nthost is not listed: {list:#}"))?;
    assert_eq!(hostnet["netns"], host, "{hostnet:#}");
    assert_eq!(hostnet["host_network"], true, "{hostnet:#}");
    assert_eq!(hostnet["name"], "container nthost (host network)");
    assert!(hostnet["veths"].as_array().is_some_and(|v| v.is_empty()));
    let socket = podman.socket.display().to_string();
    let out = nettools(&[
        "trace",
        "--container",
        "nthost",
        "--docker-socket",
        &socket,
        "-d",
        "1s",
        "--probes",
        "drops",
    ])?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("note: container nthost (host network) uses the host's network namespace"),
        "{report}"
    );

    // The table shows the same, one row each.
    let out = nettools(&[
        "list",
        "--docker-socket",
        &podman.socket.display().to_string(),
    ])?;
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.starts_with("pod") && l.contains("ntpod"))
        .with_context(|| format!("no row for the pod:\n{table}"))?;
    let veth = host_ifname(eth0_peer_index(&format!(
        "/proc/{}/ns/net",
        podman.pid("ntpod-web")?
    ))?)?;
    assert!(
        row.contains("ntpod-side, ntpod-web") || row.contains("ntpod-web, ntpod-side"),
        "{row}"
    );
    assert!(row.contains(&veth), "{row}");
    Ok(())
}

/// Pings from inside a namespace to `to`; fails unless every reply came back (the count the
/// trace is checked against).
fn ping_from(ns: &str, to: &str, count: u32) -> Result<()> {
    let out = in_ns(
        ns,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
            to,
        ],
    )?;
    assert!(
        out.contains(&format!("{count} packets transmitted, {count} received")),
        "the set-up itself misbehaved: {out}"
    );
    Ok(())
}

/// Podman without its API service (nobody enabled `podman.socket`): `list` names the pod and
/// the container as `podman pod ps` and `podman ps` do, read from Podman's own files (and says
/// so), and `trace --pod` / `--container` by those names attach to their veths and count the
/// pings the test sent from inside them.
#[test]
fn podman_without_its_service_is_named_from_its_storage_and_traced_by_name() -> Result<()> {
    need!(&["podman", "runc", "conmon", "nsenter", "ping"]);
    let podman = Podman::without_service()?;
    // nettools finds Podman's storage as Podman does: through storage.conf.
    let env = podman.env();
    let net = format!("--network={}", podman.network);
    podman.pod("ntspod")?;
    podman.run(&["--name", "ntspod-web", "--pod", "ntspod"])?;
    podman.run(&["--name", "ntssolo", &net])?;
    assert!(!podman.socket.exists(), "no API service runs");
    let pod_ns = format!("/proc/{}/ns/net", podman.pid("ntspod-web")?);
    let solo_ns = format!("/proc/{}/ns/net", podman.pid("ntssolo")?);
    // Podman's own words for them: the oracle for the names.
    let pod_id = podman.cmd(&["pod", "inspect", "--format", "{{.ID}}", "ntspod"])?;
    let listed_by_podman = podman.cmd(&["ps", "--format", "{{.Names}}"])?;
    assert!(
        listed_by_podman.lines().any(|l| l == "ntssolo")
            && listed_by_podman.lines().any(|l| l == "ntspod-web"),
        "{listed_by_podman}"
    );

    let out = nettools_env(&["list", "-o", "json"], &env)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let sources = list["sources"].as_array().context("no sources")?;
    assert!(
        sources.iter().all(|s| s["source"] != "docker-api"),
        "{list:#}"
    );
    let storage = sources
        .iter()
        .find(|s| s["source"] == "podman-storage")
        .with_context(|| format!("Podman's storage was not read: {list:#}"))?;
    assert!(storage["error"].is_null(), "{storage}");
    assert!(
        storage["socket"]
            .as_str()
            .is_some_and(|p| p.ends_with("storage/libpod/bolt_state.db")),
        "{storage}"
    );
    let pod = listed(&list, inode(&pod_ns)?)?;
    assert_eq!(pod["kind"], "pod", "{pod:#}");
    assert_eq!(pod["pod"]["name"], "ntspod", "{pod:#}");
    assert_eq!(pod["pod"]["sandbox_id"], pod_id.as_str(), "{pod:#}");
    // The infra container holds the namespace; it is not one of the pod's containers.
    assert_eq!(container_names(pod), ["ntspod-web"], "{pod:#}");
    assert_eq!(pod["name"], "pod ntspod (containers: ntspod-web)");
    assert_eq!(pod["named_by"], "storage", "{pod:#}");
    assert_eq!(pod["veths"][0]["ifindex"], eth0_peer_index(&pod_ns)?);
    let solo = listed(&list, inode(&solo_ns)?)?;
    assert_eq!(solo["name"], "container ntssolo", "{solo:#}");
    assert_eq!(solo["named_by"], "storage", "{solo:#}");
    assert_eq!(solo["containers"][0]["runtime"], "podman", "{solo:#}");

    let test_state = storage["socket"].as_str().unwrap_or_default().to_string();

    // Without this Podman's storage in sight, only the cgroup scan finds them: by id, and it
    // says so. (The machine's own Podman storage may be read, e.g. after `cargo xtask image`
    // imported an image there; it holds none of these.)
    let list = list_json(&[])?;
    let scanned = listed(&list, inode(&pod_ns)?)?;
    assert_eq!(scanned["named_by"], "cgroup-scan", "{scanned:#}");
    assert_eq!(
        scanned["pod"]["name"],
        format!("podman pod {}", &pod_id[..12]).as_str(),
        "{scanned:#}"
    );
    assert!(
        list["sources"].as_array().is_some_and(|s| s
            .iter()
            .all(|s| s["source"] != "podman-storage" || s["socket"] != test_state.as_str())),
        "{list:#}"
    );

    // The table says the same.
    let out = nettools_env(&["list"], &env)?;
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("NAMED BY"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("pod") && l.contains("ntspod"))
        .with_context(|| format!("no row for the pod:\n{table}"))?;
    assert!(
        row.contains("ntspod-web") && row.contains("storage") && row.contains("podman"),
        "{row}"
    );
    assert!(table.contains("podman's state database at "), "{table}");

    // A name that is not there is one sentence naming what is, and where nettools looked.
    let out = nettools_env(&["trace", "--pod", "ntsnope", "-d", "1s"], &env)?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("no pod \"ntsnope\"")
            && said.contains("ntspod")
            && said.contains("podman's state database at "),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");

    // Traced by name: each workload on its own veth, with exactly the pings sent from it.
    let gateway = format!("{}.1", podman.subnet_prefix);
    let trace = Trace::start_env(
        &[
            "--pod",
            "ntspod",
            "--container",
            "ntssolo",
            "--probes",
            "icmp,traffic",
            "-o",
            "json",
        ],
        &env,
    )?;
    ping_from(&pod_ns, &gateway, 7)?;
    ping_from(&solo_ns, &gateway, 4)?;
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    let lines = done.json()?;
    let s = summary(&lines)?;
    for (ns, name, sent) in [
        (&pod_ns, "pod ntspod (containers: ntspod-web)", 7),
        (&solo_ns, "container ntssolo", 4),
    ] {
        let w = workload(s, inode(ns)?)?;
        assert_eq!(w["name"], name, "{w:#}");
        assert_eq!(w["interfaces"][0]["ifindex"], eth0_peer_index(ns)?, "{w:#}");
        let echo = w["latency"]["distributions"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["kind"] == "icmp_echo"))
            .with_context(|| format!("no ping latency for {name}: {w:#}"))?;
        assert_eq!(echo["count"], sent, "{name}: {echo}");
        // The veth carried at least the requests and replies.
        let sent_pkts = w["interfaces"][0]["sent"]["packets"].as_u64().unwrap_or(0);
        assert!(sent_pkts >= sent, "{name}: {w:#}");
    }
    Ok(())
}

#[test]
fn podman_pod_firewall_drops_are_the_pods_not_its_neighbours() -> Result<()> {
    need!(&["podman", "runc", "conmon", "nsenter", "iptables"]);
    let podman = Podman::start()?;
    let net = format!("--network={}", podman.network);
    podman.pod("ntdrop")?;
    podman.run(&["--name", "ntdrop-web", "--pod", "ntdrop"])?;
    podman.run(&["--name", "ntdrop-side", "--pod", "ntdrop"])?;
    podman.run(&["--name", "ntneighbour", &net])?;
    let pod_ns = format!("/proc/{}/ns/net", podman.pid("ntdrop-web")?);
    let neighbour_ns = format!("/proc/{}/ns/net", podman.pid("ntneighbour")?);
    drop_udp(&pod_ns, 7777)?;
    let socket = podman.socket.display().to_string();
    let trace = Trace::start(&[
        "--pod",
        "ntdrop",
        "--container",
        "ntneighbour",
        "--docker-socket",
        &socket,
        "-o",
        "json",
    ])?;
    let pod_ip = podman.ip("ntdrop-web")?;
    udp_from(
        Some(&neighbour_ns),
        SocketAddr::from((pod_ip, 7777)),
        200,
        RUNTIME_GAP,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;

    let counted_by_kernel = input_rule_packets(&pod_ns, 1)?;
    assert_eq!(counted_by_kernel, 200, "the set-up itself misbehaved");
    let pod = workload(s, inode(&pod_ns)?)?;
    assert_eq!(pod["pod"]["name"], "ntdrop", "{pod:#}");
    assert_eq!(container_names(pod), ["ntdrop-side", "ntdrop-web"]);
    assert_eq!(
        drops_with_reason(pod, "NETFILTER_DROP"),
        counted_by_kernel,
        "{pod:#}"
    );
    let neighbour = workload(s, inode(&neighbour_ns)?)?;
    assert_eq!(neighbour["name"], "container ntneighbour");
    assert_eq!(
        drops_with_reason(neighbour, "NETFILTER_DROP"),
        0,
        "{neighbour:#}"
    );
    // Each event names the pod.
    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "drop" && l["reason"] == "NETFILTER_DROP")
        .collect();
    assert_eq!(events.len() as u64, counted_by_kernel);
    assert!(
        events.iter().all(
            |e| e["workload"] == "pod ntdrop (containers: ntdrop-web, ntdrop-side)"
                || e["workload"] == "pod ntdrop (containers: ntdrop-side, ntdrop-web)"
        ),
        "{:#}",
        events[0]
    );
    // The pod's veth carried the datagrams (seen by the tc programs on the host side).
    let received = pod["interfaces"][0]["received"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(received >= counted_by_kernel, "{pod:#}");

    // With --all every namespace is traced; the pod's is named by its pod.
    let trace = Trace::start(&["--all", "--docker-socket", &socket, "-o", "json"])?;
    udp_from(
        Some(&neighbour_ns),
        SocketAddr::from((pod_ip, 7777)),
        50,
        RUNTIME_GAP,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let pod = workload(s, inode(&pod_ns)?)?;
    assert!(
        pod["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("pod ntdrop (containers: ")),
        "{pod:#}"
    );
    assert_eq!(
        drops_with_reason(pod, "NETFILTER_DROP"),
        input_rule_packets(&pod_ns, 1)? - counted_by_kernel
    );
    Ok(())
}

#[test]
fn podman_container_deleted_mid_trace_ends_it_and_a_restart_is_followed() -> Result<()> {
    need!(&["podman", "runc", "conmon", "nsenter", "iptables"]);
    let podman = Podman::start()?;
    let net = format!("--network={}", podman.network);
    let socket = podman.socket.display().to_string();

    // Deleted: the trace ends by itself, says so, and still reports.
    podman.run(&["--name", "ntgone", &net])?;
    let trace = Trace::start(&[
        "--container",
        "ntgone",
        "--docker-socket",
        &socket,
        "-o",
        "json",
    ])?;
    podman.cmd(&["rm", "--force", "--time", "0", "ntgone"])?;
    let done = trace.wait()?;
    assert!(done.success, "{}", done.stderr);
    assert!(
        done.stderr
            .contains("nettools: container ntgone was deleted"),
        "{}",
        done.stderr
    );
    let lines = done.json()?;
    let s = summary(&lines)?;
    assert!(
        s["notes"].as_array().is_some_and(|n| n.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("container ntgone was deleted")))),
        "{s:#}"
    );

    // Restarted: a new network namespace, followed with --follow; the drops in the new one
    // are counted and attributed to the container. (The kernel may give the new namespace the
    // old one's inode number: the sandbox, not the inode, tells them apart.)
    podman.run(&["--name", "ntback", &net])?;
    let first = inode(&format!("/proc/{}/ns/net", podman.pid("ntback")?))?;
    let first_key = podman.inspect("ntback", "{{.NetworkSettings.SandboxKey}}")?;
    let trace = Trace::start(&[
        "--container",
        "ntback",
        "--follow",
        "--docker-socket",
        &socket,
        "-o",
        "json",
    ])?;
    podman.cmd(&["restart", "--time", "0", "ntback"])?;
    let path = format!("/proc/{}/ns/net", podman.pid("ntback")?);
    let second = inode(&path)?;
    assert_ne!(
        podman.inspect("ntback", "{{.NetworkSettings.SandboxKey}}")?,
        first_key,
        "podman restart kept the namespace"
    );
    let started = std::time::Instant::now();
    while !trace.stderr_lines().contains("has a new sandbox") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not followed: {}",
            trace.stderr_lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_udp(&path, 7001)?;
    udp_from(
        None,
        SocketAddr::from((podman.ip("ntback")?, 7001)),
        60,
        RUNTIME_GAP,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let now = workload(s, second)?;
    assert_eq!(now["name"], "container ntback");
    assert_eq!(
        drops_with_reason(now, "NETFILTER_DROP"),
        input_rule_packets(&path, 1)?
    );
    assert_eq!(drops_with_reason(now, "NETFILTER_DROP"), 60);
    if first != second {
        let before = workload(s, first)?;
        assert_eq!(before["name"], "container ntback (previous sandbox)");
    }
    Ok(())
}

#[test]
fn containerd_cri_pod_is_found_by_name_and_namespace_and_its_drop_reported() -> Result<()> {
    need!(CONTAINERD_PROGRAMS);
    let mut ctd = Containerd::start()?;
    let socket = ctd.socket.display().to_string();
    let uid = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let web = ctd.run_pod("web", "nettools-test", uid, 0)?;
    ctd.run_container(&web, ("web", "nettools-test", uid, 0), "app")?;
    // The same pod name in another namespace, and another pod.
    let other_uid = "1d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    ctd.run_pod("web", "other", other_uid, 0)?;

    let pid = ctd.sandbox_pid(uid, &web)?;
    let path = format!("/proc/{pid}/ns/net");
    let netns = inode(&path)?;
    // Found without --cri-socket: the socket named the way crictl takes it.
    let out = std::process::Command::new(nettools_bin())
        .args(["list", "-o", "json"])
        .env("CONTAINER_RUNTIME_ENDPOINT", format!("unix://{socket}"))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let w = listed(&list, netns)?;
    assert_eq!(w["pod"]["name"], "web");
    assert_eq!(w["pod"]["namespace"], "nettools-test");
    assert_eq!(w["pod"]["uid"], uid);
    assert_eq!(container_names(w), ["app"]);
    assert_eq!(w["containers"][0]["runtime"], "containerd");
    assert_eq!(w["named_by"], "runtime-api", "{w:#}");
    assert_eq!(w["pid"], pid);
    let peer = eth0_peer_index(&path)?;
    assert_eq!(w["veths"][0]["ifindex"], peer, "{w:#}");
    assert_eq!(w["veths"][0]["bridge"], ctd.bridge.as_str());

    // The pod by name and namespace; a drop staged inside it, counted by the kernel too.
    drop_udp(&path, 7777)?;
    let trace = Trace::start(&[
        "--pod",
        "web",
        "-n",
        "nettools-test",
        "--cri-socket",
        &socket,
        "-o",
        "json",
    ])?;
    let ip = w["addresses"]
        .as_array()
        .and_then(|a| a.iter().find_map(|a| a.as_str()?.strip_suffix("/24")))
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .context("the pod has no address")?;
    assert!(ip.to_string().starts_with(&ctd.subnet_prefix));
    udp_from(None, SocketAddr::from((ip, 7777)), 150, RUNTIME_GAP)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let traced = workload(s, netns)?;
    assert_eq!(traced["name"], "pod nettools-test/web (containers: app)");
    let counted_by_kernel = input_rule_packets(&path, 1)?;
    assert_eq!(counted_by_kernel, 150);
    assert_eq!(
        drops_with_reason(traced, "NETFILTER_DROP"),
        counted_by_kernel,
        "{traced:#}"
    );

    // Ambiguous without -n, unknown, not on this node: one sentence, exit code 1.
    for (args, expected) in [
        (
            vec!["--pod", "web"],
            "nettools: pod \"web\" exists in 2 namespaces (nettools-test/web, other/web): choose one with -n NAMESPACE",
        ),
        (
            vec!["--pod", "nope"],
            "nettools: no pod \"nope\" on this node (pods here: ",
        ),
        (
            vec!["--pod", "web", "-n", "prod"],
            "nettools: no pod \"web\" in namespace \"prod\" on this node (pods here: ",
        ),
        (
            vec!["--container", "nope"],
            "nettools: no container \"nope\" on this node (containers here: ",
        ),
    ] {
        let mut full = vec!["trace", "-d", "1s", "--cri-socket", &socket];
        full.extend(args);
        let out = nettools(&full)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with(expected), "{stderr}");
        // What exists instead is listed (other pods on this node may be listed too).
        let instead = if expected.contains("exists in") {
            vec![]
        } else if expected.contains("container") {
            vec!["app"]
        } else {
            vec!["nettools-test/web", "other/web", "asked containerd"]
        };
        for name in instead {
            assert!(stderr.contains(name), "{name} missing: {stderr}");
        }
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("os error"),
            "{stderr}"
        );
    }

    // Deleted and re-created with a new sandbox (a new namespace), as a kubelet restarts a
    // pod: followed with --follow, and the new namespace's drops are the pod's.
    let trace = Trace::start(&[
        "--pod",
        "web",
        "-n",
        "nettools-test",
        "--follow",
        "--cri-socket",
        &socket,
        "-o",
        "json",
    ])?;
    ctd.remove_pod(&web)?;
    let again = ctd.run_pod("web", "nettools-test", uid, 1)?;
    let new_path = format!("/proc/{}/ns/net", ctd.sandbox_pid(uid, &again)?);
    // Often the old namespace's inode number again: the kernel reuses it at once.
    let new_netns = inode(&new_path)?;
    let started = std::time::Instant::now();
    while !trace.stderr_lines().contains("has a new sandbox") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not followed: {}",
            trace.stderr_lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_udp(&new_path, 7778)?;
    let new_ip = in_ns(&new_path, &["ip", "-j", "-4", "addr", "show", "eth0"])?;
    let new_ip: Value = serde_json::from_str(&new_ip)?;
    let new_ip: std::net::Ipv4Addr = new_ip[0]["addr_info"][0]["local"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .context("the new sandbox has no address")?;
    udp_from(None, SocketAddr::from((new_ip, 7778)), 40, RUNTIME_GAP)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let followed = workload(s, new_netns)?;
    assert_eq!(followed["pod"]["name"], "web");
    assert_eq!(
        drops_with_reason(followed, "NETFILTER_DROP"),
        input_rule_packets(&new_path, 1)?
    );
    assert_eq!(drops_with_reason(followed, "NETFILTER_DROP"), 40);
    Ok(())
}

//! `nettools serve`, the node agent, scraped the way Prometheus scrapes it: on loopback, with a
//! firewall drop staged in a real Podman pod. Every scrape must pass `promtool check metrics`,
//! and the pod's drop counter must be the kernel's own count (the pod's iptables rule counter)
//! at scrape time: read just before and just after the scrape, while traffic keeps arriving,
//! the two readings bracket it. Pods that appear after the agent started are followed, and
//! pods that go away leave the exposition.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::{agent::Agent, nsexec::*, prom::*, runtimes::*, *};

#[test]
fn a_pods_firewall_drops_are_scraped_as_the_kernel_counts_them_and_pods_are_followed() -> Result<()>
{
    need!(&[
        "podman", "runc", "conmon", "nsenter", "iptables", "promtool",
    ]);
    let podman = Podman::start()?;
    let (dropping, client_ns) = podman.dropping_pod_and_client("ntsrv", 7777)?;
    let pod_ns = dropping.path.clone();
    let pod_netns = dropping.netns.to_string();
    let dst = SocketAddr::from((dropping.ip, 7777));
    let socket = podman.socket.display().to_string();
    let agent = Agent::start(&["--docker-socket", &socket, "--refresh", "1s"])?;
    let pod = [
        ("kind", "pod"),
        ("pod", "ntsrvpod"),
        ("netns", pod_netns.as_str()),
    ];
    let pod_drops = |text: &str| -> Result<Option<f64>> {
        let mut want = pod.to_vec();
        want.push(("reason", "NETFILTER_DROP"));
        value(text, "nettools_drops_total", &want)
    };

    // Before any traffic: the pod is known (once the runtime answered), with nothing dropped.
    let text = agent.scrape_until(Duration::from_secs(15), "the pod is named", |text| {
        Ok(value(text, "nettools_workload_info", &pod)?.is_some())
    })?;
    promtool_accepts(&text)?;
    assert_eq!(
        value(&text, "nettools_workload_info", &pod)?,
        Some(1.0),
        "{text}"
    );
    assert_eq!(pod_drops(&text)?, None, "{text}");

    // A burst, then quiet: the scrape equals the rule counter, read before and after it.
    udp_from(Some(&client_ns), dst, 200, Duration::from_micros(300))?;
    std::thread::sleep(Duration::from_millis(200));
    let before = input_rule_packets(&pod_ns, 1)?;
    let text = agent.scrape()?;
    let after = input_rule_packets(&pod_ns, 1)?;
    assert_eq!((before, after), (200, 200), "the set-up itself misbehaved");
    promtool_accepts(&text)?;
    assert!(
        text.contains("# TYPE nettools_drops_total counter"),
        "{text}"
    );
    assert_eq!(pod_drops(&text)?, Some(200.0), "{text}");
    // Nowhere else: not on the client's container, not in the host's namespace.
    for other in [("container", "ntsrv-client"), ("kind", "host")] {
        assert!(
            !matches!(
                value(&text, "nettools_drops_total", &[other, ("reason", "NETFILTER_DROP")])?,
                Some(v) if v > 0.0
            ),
            "drops attributed to {other:?}: {text}"
        );
    }
    let received = value(
        &text,
        "nettools_veth_packets_total",
        &[pod[0], pod[1], pod[2], ("direction", "received")],
    )?
    .unwrap_or(0.0);
    assert!(received >= 200.0, "the pod's veth saw {received} packets");

    // While traffic keeps arriving: the scrape lies between the counter just before and just
    // after it, and above what the burst alone left.
    let sender = {
        let client_ns = client_ns.clone();
        std::thread::spawn(move || udp_from(Some(&client_ns), dst, 1500, Duration::from_millis(1)))
    };
    std::thread::sleep(Duration::from_millis(400));
    let before = input_rule_packets(&pod_ns, 1)?;
    let text = agent.scrape()?;
    let after = input_rule_packets(&pod_ns, 1)?;
    let scraped = pod_drops(&text)?.context("no drops for the pod")? as u64;
    assert!(
        200 < before && before <= scraped && scraped <= after,
        "scraped {scraped}, the kernel counted {before} before and {after} after"
    );
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    std::thread::sleep(Duration::from_millis(200));
    let settled = input_rule_packets(&pod_ns, 1)?;
    let text = agent.scrape()?;
    promtool_accepts(&text)?;
    assert_eq!(settled, 1700);
    assert_eq!(pod_drops(&text)?, Some(settled as f64), "{text}");

    // A pod started after the agent is found at the next refresh, with its own drops.
    let fds_before = agent.open_files();
    podman.pod("ntsrvlate")?;
    podman.run(&["--name", "ntsrvlate-web", "--pod", "ntsrvlate"])?;
    let late_ns = format!("/proc/{}/ns/net", podman.pid("ntsrvlate-web")?);
    let late_netns = inode(&late_ns)?.to_string();
    drop_udp(&late_ns, 7778)?;
    let late_ip = podman.ip("ntsrvlate-web")?;
    let late = [("pod", "ntsrvlate"), ("netns", late_netns.as_str())];
    let waited = Instant::now();
    while value(&agent.scrape()?, "nettools_workload_info", &late)?.is_none() {
        if waited.elapsed() > Duration::from_secs(15) {
            bail!("the new pod was not picked up: {}", agent.stderr_text());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    udp_from(
        Some(&client_ns),
        SocketAddr::from((late_ip, 7778)),
        30,
        Duration::from_micros(300),
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let text = agent.scrape()?;
    let mut want = late.to_vec();
    want.push(("reason", "NETFILTER_DROP"));
    assert_eq!(
        value(&text, "nettools_drops_total", &want)?,
        Some(input_rule_packets(&late_ns, 1)? as f64),
        "{text}"
    );
    assert_eq!(input_rule_packets(&late_ns, 1)?, 30);

    // Removed: its series leave the exposition; the first pod's stay.
    podman.cmd(&["pod", "rm", "--force", "--time", "0", "ntsrvlate"])?;
    let waited = Instant::now();
    loop {
        let text = agent.scrape()?;
        if !text.contains("pod=\"ntsrvlate\"") {
            promtool_accepts(&text)?;
            assert_eq!(pod_drops(&text)?, Some(1700.0), "{text}");
            // The links to its veth were closed, not leaked.
            let fds_after = agent.open_files();
            assert!(
                fds_after <= fds_before,
                "{fds_before} open files before, {fds_after} after"
            );
            break;
        }
        if waited.elapsed() > Duration::from_secs(15) {
            bail!("the removed pod is still exported: {text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// One line on stderr, exit code 1, starting with `expected`.
fn one_sentence(out: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with(expected), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn the_agents_errors_are_one_sentence() -> Result<()> {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = nettools(&["serve", "--listen", &addr])?;
    one_sentence(
        &out,
        &format!("nettools: cannot listen on {addr}: the address is already in use"),
    );
    // Root without any capability: what a non-root user or an unprivileged container has.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(nettools_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()?;
    one_sentence(&out, "nettools: nettools needs root");
    Ok(())
}

#[test]
fn the_plain_scrape_config_is_valid() -> Result<()> {
    if let Some(reason) = missing(&["promtool"]) {
        eprintln!("SKIPPED: {reason}");
        return Ok(());
    }
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus.yml");
    // Syntax only: the files it names (certificates) are the user's.
    let out = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(&config)
        .output()?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

//! The tc programs on host-side veths: counts equal the interface's own, traffic is never
//! altered, and nothing is left attached when nettools dies.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::*;

/// The interface's counters (`ip -s link`) and nettools' for the same window: equal.
#[test]
fn veth_counters_equal_the_interface_counters() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.0.1/24", None)?;
    let b = lab.node("b", "10.235.0.2/24", None)?;
    let veth = b.host_veth.clone();
    let before = link_stats(&veth)?;
    let trace = Trace::start(&["--netns", &b.netns, "--probes", "traffic", "-o", "json"])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 9000)), 300)?;
    let data = pattern(256 * 1024, 3);
    tcp_transfer(&b, &a, a.ipv4.into(), 5202, &data, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let after = link_stats(&veth)?;
    let lines = done.json()?;
    let w = workload(summary(&lines)?, b.inode()?)?;
    let iface = &w["interfaces"][0];
    assert_eq!(iface["name"], veth.as_str(), "{w}");
    assert_eq!(iface["peer"], "eth0");
    let get = |dir: &str, what: &str| iface[dir][what].as_u64().unwrap_or(u64::MAX);
    // The host end receives what the workload sends.
    assert_eq!(get("sent", "packets"), after.0 - before.0, "{iface}");
    assert_eq!(get("sent", "bytes"), after.1 - before.1, "{iface}");
    assert_eq!(get("received", "packets"), after.2 - before.2, "{iface}");
    assert_eq!(get("received", "bytes"), after.3 - before.3, "{iface}");
    // And the known transfer is in there (TCP leaves as large GSO packets on a veth, so count
    // bytes, not packets).
    assert!(
        get("sent", "bytes") >= (data.len() + 300 * 13) as u64,
        "{iface}"
    );
    let udp_sent: u64 = iface["by_protocol"]
        .as_array()
        .context("no by_protocol")?
        .iter()
        .filter(|p| p["direction"] == "sent" && p["protocol"] == "ipv4/udp")
        .filter_map(|p| p["packets"].as_u64())
        .sum();
    assert_eq!(udp_sent, 300);
    Ok(())
}

/// What arrives is byte for byte what was sent, traced or not.
#[test]
fn tracing_never_alters_traffic() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.1.1/24", Some("fd00:235::1/64"))?;
    let b = lab.node("b", "10.235.1.2/24", Some("fd00:235::2/64"))?;
    let data = pattern(4 << 20, 11);
    let untraced = tcp_transfer(&b, &a, a.ipv4.into(), 5203, &data, Duration::from_secs(30))?;
    let trace = Trace::start(&["--netns", &a.netns, "--netns", &b.netns])?;
    let traced = tcp_transfer(&b, &a, a.ipv4.into(), 5204, &data, Duration::from_secs(30))?;
    let v6 = a.ipv6.context("no IPv6 address")?;
    let traced6 = tcp_transfer(&b, &a, v6.into(), 5205, &data, Duration::from_secs(30))?;
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    assert_eq!(untraced.hash, fnv1a(&data));
    assert_eq!((traced.bytes, traced.hash), (untraced.bytes, untraced.hash));
    assert_eq!(
        (traced6.bytes, traced6.hash),
        (untraced.bytes, untraced.hash)
    );
    Ok(())
}

/// tcx links die with the process, even on SIGKILL.
#[test]
fn sigkill_leaves_no_tcx_attachment() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.2.1/24", None)?;
    let veth = a.host_veth.clone();
    if !kernel_has_tcx()? {
        // Before 6.6: asking for tcx is refused in one sentence (auto falls back to clsact).
        let out = nettools(&["trace", "--netns", &a.netns, "--tc-mode", "tcx", "-d", "1s"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--tc-mode tcx needs Linux 6.6"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        return Ok(());
    }
    let trace = Trace::start(&["--netns", &a.netns, "--tc-mode", "tcx"])?;
    assert!(
        tcx_programs(&veth, true)?
            .iter()
            .any(|p| p.starts_with("nettools_ingre"))
    );
    assert!(
        tcx_programs(&veth, false)?
            .iter()
            .any(|p| p.starts_with("nettools_egres"))
    );
    trace.kill()?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        tcx_programs(&veth, true)?.is_empty(),
        "left on ingress: {:?}",
        tcx_programs(&veth, true)
    );
    assert!(
        tcx_programs(&veth, false)?.is_empty(),
        "left on egress: {:?}",
        tcx_programs(&veth, false)
    );
    Ok(())
}

/// clsact filters outlive a SIGKILL; the next nettools removes them, and its own on exit.
#[test]
fn clsact_filters_are_cleaned_at_exit_and_after_sigkill() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.3.1/24", None)?;
    let b = lab.node("b", "10.235.3.2/24", None)?;
    let veth = a.host_veth.clone();
    let trace = Trace::start(&["--netns", &a.netns, "--tc-mode", "clsact"])?;
    assert!(tc_filters(&veth, true)?.contains("nettools_ingress"));
    assert!(tc_filters(&veth, false)?.contains("nettools_egress"));
    trace.kill()?;
    assert!(
        tc_filters(&veth, true)?.contains("nettools_ingress"),
        "a killed process cannot remove a clsact filter"
    );

    // The next run removes the stale filters, counts with its own, and removes those on exit.
    let trace = Trace::start(&[
        "--netns",
        &a.netns,
        "--tc-mode",
        "clsact",
        "--probes",
        "traffic",
        "-o",
        "json",
    ])?;
    let ingress = tc_filters(&veth, true)?;
    assert_eq!(
        ingress.matches("nettools_ingress").count(),
        1,
        "stale filter not removed:\n{ingress}"
    );
    udp_burst(&b, SocketAddr::from((a.ipv4, 9000)), 20)?;
    let done = trace.stop()?;
    let lines = done.json()?;
    let w = workload(summary(&lines)?, a.inode()?)?;
    assert_eq!(w["interfaces"][0]["attached"], "clsact");
    assert!(
        w["interfaces"][0]["received"]["packets"]
            .as_u64()
            .unwrap_or(0)
            >= 20,
        "{w}"
    );
    assert!(
        !tc_filters(&veth, true)?.contains("nettools"),
        "{}",
        tc_filters(&veth, true)?
    );
    assert!(
        !tc_filters(&veth, false)?.contains("nettools"),
        "{}",
        tc_filters(&veth, false)?
    );
    Ok(())
}

/// `--iface` traces one interface directly, from the interface's point of view.
#[test]
fn iface_traces_an_interface_directly() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.4.1/24", None)?;
    let b = lab.node("b", "10.235.4.2/24", None)?;
    let trace = Trace::start(&["--iface", &b.host_veth, "--probes", "traffic", "-o", "json"])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 9000)), 40)?;
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let w = s["workloads"]
        .as_array()
        .and_then(|ws| ws.first())
        .context("no workload")?;
    assert_eq!(w["kind"], "interface");
    // The interface receives what b sends.
    let rx = w["interfaces"][0]["received"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(rx >= 40, "{w}");
    let out = nettools(&["trace", "--iface", "no-such-if0", "-d", "1s"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("there is no interface \"no-such-if0\""),
        "{stderr}"
    );
    Ok(())
}

/// Two nettools on one veth with clsact filters (an agent and a `trace` started and stopped
/// beside it): each removes only its own, the agent keeps counting, and the clsact qdisc goes
/// with the one that added it.
#[test]
fn a_trace_leaves_the_agents_clsact_filters_alone() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.235.5.1/24", None)?;
    let b = lab.node("b", "10.235.5.2/24", None)?;
    let veth = b.host_veth.clone();
    let had_clsact = sh(&["tc", "qdisc", "show", "dev", &veth])?.contains("clsact");
    let agent = nettools_tests::agent::Agent::start(&[
        "--tc-mode",
        "clsact",
        "--refresh",
        "1s",
        "--probes",
        "traffic",
    ])?;
    let inode = b.inode()?.to_string();
    let sent = |text: &str| -> f64 {
        nettools_tests::prom::samples(text, "nettools_veth_packets_total")
            .iter()
            .filter(|(l, _)| {
                l.get("netns") == Some(&inode) && l.get("direction").is_some_and(|d| d == "sent")
            })
            .map(|(_, v)| v)
            .sum()
    };
    agent.scrape_until(
        Duration::from_secs(20),
        "the agent attached to b's veth",
        |t| Ok(tc_filters(&veth, true)?.contains("nettools_ingress") && t.contains(&inode)),
    )?;

    // A trace on the same veth comes and goes.
    let trace = Trace::start(&[
        "--netns",
        &b.netns,
        "--tc-mode",
        "clsact",
        "--probes",
        "traffic",
    ])?;
    let during = tc_filters(&veth, true)?;
    assert_eq!(
        during.matches("nettools_ingress").count(),
        2,
        "the trace removed the agent's filter or did not attach:\n{during}"
    );
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    let after = tc_filters(&veth, true)?;
    assert_eq!(
        after.matches("nettools_ingress").count(),
        1,
        "the trace's exit took the agent's filter along, or left its own:\n{after}"
    );
    // One line per filter (its name and its program's both read nettools_egress).
    let egress = tc_filters(&veth, false)?;
    assert_eq!(
        egress
            .lines()
            .filter(|l| l.contains("nettools_egress"))
            .count(),
        1,
        "{egress}"
    );

    // The agent still counts what b sends: 60 datagrams more.
    let before = sent(&agent.scrape()?);
    udp_burst(&b, SocketAddr::from((a.ipv4, 9000)), 60)?;
    let text = agent.scrape_until(
        Duration::from_secs(10),
        "the agent counting b's datagrams",
        |t| Ok(sent(t) >= before + 60.0),
    )?;
    eprintln!("agent: {before} then {} packets sent by b", sent(&text));
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
    let qdisc = sh(&["tc", "qdisc", "show", "dev", &veth])?;
    assert!(
        !tc_filters(&veth, true)?.contains("nettools"),
        "{}",
        tc_filters(&veth, true)?
    );
    if !had_clsact {
        assert!(
            !qdisc.contains("clsact"),
            "the agent added the clsact qdisc and left it:\n{qdisc}"
        );
    }
    Ok(())
}

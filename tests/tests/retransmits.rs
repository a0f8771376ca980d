//! The retransmit probe against the kernel's own count: `nstat` TcpRetransSegs of the sender.

use std::time::Duration;

use anyhow::Result;
use nettools_tests::*;

/// A TCP bulk transfer through 20 % random loss (iptables statistic in the receiver): the
/// sender's retransmitted segments as nettools counts them equal its TcpRetransSegs (within
/// 1 %), and the flow with them is the transfer's.
///
/// The transfer runs once more when nettools came up short. On the 6.18 host, in about one
/// run in fifty (more under CPU load), `tcp:tcp_retransmit_skb` reported fewer segments than
/// the kernel adds to TcpRetransSegs and to the socket's own `total_retrans` (from one segment
/// to 45 of a TSO skb, with CUBIC and with BBR): bpftrace on the same tracepoint, and a raw
/// tracepoint program, counted exactly what nettools counted, and no program run was skipped.
/// The kernel did not report those segments to anyone, so a second short run in a row is a
/// failure, and an overcount always is.
fn lossy_transfer(ipv6: bool) -> Result<()> {
    let Some(first) = measure(ipv6)? else {
        return Ok(());
    };
    eprintln!("{first}: the tracepoint reported fewer than the kernel counted; once more");
    match measure(ipv6)? {
        None => Ok(()),
        Some(second) => anyhow::bail!("twice short: {first}; then {second}"),
    }
}

/// One lossy transfer, traced: `Some` (what was short) when nettools counted more than 1 %
/// fewer segments than nstat; every other disagreement fails at once.
fn measure(ipv6: bool) -> Result<Option<String>> {
    require_root();
    let mut lab = Lab::new()?;
    let (a6, b6) = if ipv6 {
        (Some("fd00:233::1/64"), Some("fd00:233::2/64"))
    } else {
        (None, None)
    };
    let receiver = lab.node("rx", "10.233.0.1/24", a6)?;
    let sender = lab.node("tx", "10.233.0.2/24", b6)?;
    let iptables = if ipv6 { "ip6tables" } else { "iptables" };
    receiver.run(&[
        iptables,
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "5201",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.2",
        "-j",
        "DROP",
    ])?;
    let dst: std::net::IpAddr = match (ipv6, receiver.ipv6) {
        (true, Some(v6)) => v6.into(),
        _ => receiver.ipv4.into(),
    };
    let before = nstat(&sender, "TcpRetransSegs")?;
    let trace = Trace::start(&[
        "--netns",
        &sender.netns,
        "--netns",
        &receiver.netns,
        "-o",
        "json",
    ])?;
    // Under emulation (the vmtest guest) every loss costs a retransmission timeout of emulated
    // time: 1 MiB still makes hundreds of retransmits, and keeps the matrix within CI's time.
    let data = pattern(if in_vmtest_guest() { 1 << 20 } else { 4 << 20 }, 7);
    let delivered = tcp_transfer(
        &sender,
        &receiver,
        dst,
        5201,
        &data,
        Duration::from_secs(60),
    )?;
    // Until both ends are closed, either may still retransmit (a FIN): stop only after that.
    // The rule drops 20 % of what reaches the receiver, its last ACKs included, and a FIN
    // whose ACKs keep being lost is resent with exponential backoff: in the emulated guest
    // (6.18) the receiver was once still in LAST-ACK after 10 s.
    for node in [&sender, &receiver] {
        wait_closed(node, Duration::from_secs(60))?;
    }
    let done = trace.stop()?;
    let kernel = nstat(&sender, "TcpRetransSegs")? - before;
    assert_eq!(
        delivered.hash,
        fnv1a(&data),
        "the transfer itself was corrupted"
    );
    assert!(
        kernel > 20,
        "20 % loss should cause retransmissions, the kernel counted {kernel}"
    );

    let lines = done.json()?;
    let s = summary(&lines)?;
    let tx = workload(s, sender.inode()?)?;
    let counted = tx["retransmits"]["total"].as_u64().unwrap_or(0);
    // The figures themselves, for a run with --nocapture (CI's log keeps them on failure).
    eprintln!(
        "retransmits (sender netns {}): nettools {counted}, nstat TcpRetransSegs {kernel}; \
         attempts not sent (not counted): {}; probe runs the kernel skipped: {}",
        sender.inode()?,
        s["health"]["retransmits_not_sent"],
        s["health"]["probe_runs_skipped"]
    );
    // Never more than the kernel. Fewer only by what the kernel's own tracepoint did not report
    // (see `lossy_transfer`): within 1 %, or this run is reported as short.
    assert!(
        counted <= kernel + kernel / 100,
        "nettools counted {counted} retransmitted segments, nstat {kernel}"
    );
    let short = (counted * 100 < kernel * 99).then(|| {
        format!("nettools counted {counted} retransmitted segments, nstat TcpRetransSegs {kernel}")
    });

    // The transfer's flow carries them (local port of the client, server port 5201).
    let top = &tx["retransmits"]["top_flows"][0];
    let flow = top["flow"].as_str().unwrap_or("");
    let expect = if ipv6 {
        format!(
            "tcp [{}]:{} -> [{dst}]:5201",
            sender.ipv6.map(|a| a.to_string()).unwrap_or_default(),
            delivered.client_port
        )
    } else {
        format!(
            "tcp {}:{} -> {dst}:5201",
            sender.ipv4, delivered.client_port
        )
    };
    assert_eq!(flow, expect, "{tx}");
    assert!(
        top["segments"].as_u64().unwrap_or(0) * 100 >= counted * 95,
        "the transfer's flow carries the retransmits: {tx}"
    );
    // The receiver's own retransmissions (a FIN whose ACK was late) are its own.
    let rx = workload(s, receiver.inode()?)?;
    let rx_kernel = nstat(&receiver, "TcpRetransSegs")?;
    assert_eq!(
        rx["retransmits"]["total"].as_u64().unwrap_or(0),
        rx_kernel,
        "{rx}"
    );
    // One event per retransmission (a multi-segment skb is one event), each in its namespace.
    let events_in = |netns: u32| {
        lines
            .iter()
            .filter(|l| l["type"] == "retransmit" && l["netns"] == netns)
            .filter_map(|l| l["segments"].as_u64())
            .sum::<u64>()
    };
    assert_eq!(
        events_in(sender.inode()?),
        counted,
        "no event lost, none misattributed"
    );
    assert_eq!(events_in(receiver.inode()?), rx_kernel);
    Ok(short)
}

/// Waits until no TCP socket in `node` is closing (FIN_WAIT1, CLOSING, LAST_ACK).
fn wait_closed(node: &Node, limit: Duration) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let out = node.run(&[
            "ss",
            "-Htan",
            "state",
            "fin-wait-1",
            "state",
            "closing",
            "state",
            "last-ack",
        ])?;
        if out.trim().is_empty() {
            return Ok(());
        }
        if started.elapsed() > limit {
            anyhow::bail!("sockets still closing after {limit:?}: {out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn retransmits_equal_nstat_ipv4() -> Result<()> {
    lossy_transfer(false)
}

#[test]
fn retransmits_equal_nstat_ipv6() -> Result<()> {
    lossy_transfer(true)
}

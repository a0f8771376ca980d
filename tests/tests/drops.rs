//! The drop probe against the kernel's own count: iptables rule counters.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::*;
use serde_json::Value;

/// Three namespaces on a bridge, like three pods on a node, with IPv6 off so that only the
/// test's own traffic crosses the lab.
fn three_pods() -> Result<(Lab, Node, Node, Node)> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.232.0.1/24", None)?;
    let b = lab.node("b", "10.232.0.2/24", None)?;
    let c = lab.node("c", "10.232.0.3/24", None)?;
    Ok((lab, a, b, c))
}

fn drop_udp_port(node: &Node, port: u16) -> Result<()> {
    node.drop_input("udp", port)
}

#[test]
fn firewall_drops_equal_the_rule_counter_and_stay_in_their_namespace() -> Result<()> {
    let (_lab, a, b, c) = three_pods()?;
    drop_udp_port(&a, 7777)?;
    let trace = Trace::start(&[
        "--netns", &a.netns, "--netns", &b.netns, "--netns", &c.netns, "-o", "json",
    ])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7777)), 250)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "nettools failed: {}", done.stderr);

    let counted_by_kernel = iptables_packets(&a, "INPUT", 1)?;
    assert_eq!(counted_by_kernel, 250, "the lab itself misbehaved");
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;
    assert_eq!(s["health"]["events_lost"], 0);
    let wa = workload(s, a.inode()?)?;
    assert_eq!(firewall_drops(wa)?, counted_by_kernel, "{wa}");
    for other in [&b, &c] {
        let w = workload(s, other.inode()?)?;
        assert_eq!(
            firewall_drops(w)?,
            0,
            "firewall drops leaked into {}: {w}",
            other.netns
        );
    }

    // Every drop is also an event with the flow, the namespace and a named kernel location.
    let events: Vec<_> = lines
        .iter()
        .filter(|l| is_firewall_drop_event(l).unwrap_or(false))
        .collect();
    assert_eq!(events.len() as u64, counted_by_kernel);
    for e in events {
        assert_eq!(e["netns"], a.inode()?);
        assert_eq!(e["workload"], a.netns.as_str());
        assert_eq!(e["src"], b.ipv4.to_string());
        assert_eq!(e["dst"], a.ipv4.to_string());
        assert_eq!(e["dport"], 7777);
        assert_eq!(e["l4"], "udp");
        let location = e["location"].as_str().context("no location")?;
        assert!(
            location.contains('+') && !location.starts_with("0x"),
            "location not symbolised: {location}"
        );
        assert!(
            is_netfilter_location(location),
            "a firewall drop outside netfilter: {location}"
        );
    }
    Ok(())
}

#[test]
fn drops_in_two_namespaces_are_attributed_to_each() -> Result<()> {
    let (_lab, a, b, c) = three_pods()?;
    drop_udp_port(&a, 7001)?;
    drop_udp_port(&c, 7002)?;
    let trace = Trace::start(&[
        "--netns", &a.netns, "--netns", &b.netns, "--netns", &c.netns, "-o", "json",
    ])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7001)), 120)?;
    udp_burst(&b, SocketAddr::from((c.ipv4, 7002)), 70)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "nettools failed: {}", done.stderr);
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;
    let in_a = iptables_packets(&a, "INPUT", 1)?;
    let in_c = iptables_packets(&c, "INPUT", 1)?;
    assert_eq!((in_a, in_c), (120, 70));
    assert_eq!(firewall_drops(workload(s, a.inode()?)?)?, in_a);
    assert_eq!(firewall_drops(workload(s, c.inode()?)?)?, in_c);
    assert_eq!(firewall_drops(workload(s, b.inode()?)?)?, 0);
    Ok(())
}

#[test]
fn untraced_namespaces_are_filtered_in_the_kernel() -> Result<()> {
    let (_lab, a, b, c) = three_pods()?;
    drop_udp_port(&a, 7003)?;
    drop_udp_port(&c, 7004)?;
    // Only c is traced: a's drops must not appear at all.
    let trace = Trace::start(&["--netns", &c.netns, "-o", "json"])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7003)), 50)?;
    udp_burst(&b, SocketAddr::from((c.ipv4, 7004)), 30)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;
    let names: Vec<&str> = s["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(
        names,
        vec![c.netns.as_str()],
        "only the traced namespace is reported"
    );
    assert_eq!(
        firewall_drops(workload(s, c.inode()?)?)?,
        iptables_packets(&c, "INPUT", 1)?
    );
    assert!(
        s["health"]["drops_in_other_namespaces"]
            .as_u64()
            .unwrap_or(0)
            >= 50
    );
    assert!(
        lines
            .iter()
            .all(|l| l["type"] != "drop" || l["netns"] == c.inode().unwrap_or(0))
    );
    Ok(())
}

/// The table for people and the JSON summary for machines show the same figures: the same
/// staged fault, traced once per format, gives the rule's count in both.
#[test]
fn table_and_json_report_the_same_figures() -> Result<()> {
    let (_lab, a, b, _c) = three_pods()?;
    drop_udp_port(&a, 7005)?;
    let mut figures = Vec::new();
    let reason = firewall_reason()?;
    for format in ["table", "json"] {
        let before = iptables_packets(&a, "INPUT", 1)?;
        let trace = Trace::start(&["--netns", &a.netns, "-o", format])?;
        udp_burst(&b, SocketAddr::from((a.ipv4, 7005)), 90)?;
        std::thread::sleep(Duration::from_millis(200));
        let done = trace.stop()?;
        assert!(done.success, "{}", done.stderr);
        let expected = iptables_packets(&a, "INPUT", 1)? - before;
        // The problems section names the one problem with the rule's count, first.
        let named = format!(
            "{expected} UDP packets to {}:7005 dropped by netfilter ({reason}",
            a.ipv4
        );
        let figure = if format == "json" {
            let lines = json_lines(&done.report)?;
            let s = summary(&lines)?;
            let w = workload(s, a.inode()?)?;
            assert_eq!(w["drops"]["total"].as_u64(), Some(firewall_drops(w)?));
            let problems = s["problems"].as_array().context("no problems[]")?;
            assert_eq!(problems.len(), 1, "{s}");
            assert_eq!(problems[0]["kind"], "firewall");
            assert_eq!(problems[0]["workload"], a.netns.as_str());
            assert_eq!(problems[0]["evidence"]["section"], "drops");
            assert_eq!(problems[0]["evidence"]["count"].as_u64(), Some(expected));
            let sentence = problems[0]["sentence"].as_str().unwrap_or("");
            assert!(sentence.starts_with(&named), "{sentence}");
            firewall_drops(w)?
        } else {
            let mut lines = done.report.lines();
            assert_eq!(lines.next(), Some("problems (1):"), "{}", done.report);
            let first = lines.next().unwrap_or("");
            assert!(
                first.starts_with(&format!("  firewall  {}  {named}", a.netns)),
                "{}",
                done.report
            );
            // "    NETFILTER_DROP        90  nft_do_chain+0x… (90)"
            done.report
                .lines()
                .find_map(|l| {
                    let mut parts = l.split_whitespace();
                    (parts.next() == Some(reason)).then(|| parts.next()?.parse::<u64>().ok())?
                })
                .with_context(|| format!("no {reason} row in the table:\n{}", done.report))?
        };
        assert_eq!(figure, expected, "{format} report");
        figures.push(figure);
    }
    assert_eq!(figures[0], figures[1]);
    Ok(())
}

/// `trace --rules` names the rules that dropped next to the drops: the iptables rule (its
/// counter's growth equal to `iptables -L -v` and to the drops traced), a native nftables rule
/// with its handle (equal to nft's count), not the ACCEPT rule that counted too, and an empty
/// list for a namespace whose rules dropped nothing.
#[test]
fn trace_rules_names_the_rules_that_dropped_with_their_counts() -> Result<()> {
    let (_lab, a, b, c) = three_pods()?;
    a.run(&[
        "iptables", "-A", "INPUT", "-p", "udp", "--dport", "7010", "-j", "ACCEPT",
    ])?;
    drop_udp_port(&a, 7011)?;
    let nft = have_tool("nft");
    if nft {
        b.run(&["nft", "add", "table", "ip", "ntfw"])?;
        b.run(&[
            "nft",
            "add",
            "chain",
            "ip",
            "ntfw",
            "input",
            "{ type filter hook input priority 0 ; }",
        ])?;
        b.run(&[
            "nft", "add", "rule", "ip", "ntfw", "input", "udp", "dport", "7012", "counter", "drop",
        ])?;
    } else {
        skip("nft is not installed: the native nftables half is left out");
        drop_udp_port(&b, 7012)?;
    }
    let dir = Scratch::new("rules")?;
    let table = dir.file("table.txt");
    let trace = Trace::start(&[
        "--netns", &a.netns, "--netns", &b.netns, "--netns", &c.netns, "--rules", "-o", "json",
        "--table", &table,
    ])?;
    udp_burst(&c, SocketAddr::from((a.ipv4, 7010)), 40)?;
    udp_burst(&c, SocketAddr::from((a.ipv4, 7011)), 150)?;
    udp_burst(&c, SocketAddr::from((b.ipv4, 7012)), 70)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "nettools failed: {}", done.stderr);
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;

    let counted_a = iptables_packets(&a, "INPUT", 2)?;
    assert_eq!(counted_a, 150, "the lab itself misbehaved");
    let wa = workload(s, a.inode()?)?;
    assert_eq!(firewall_drops(wa)?, counted_a, "{wa}");
    let rules = wa["drops"]["rules"].as_array().context("no drops.rules")?;
    assert_eq!(rules.len(), 1, "only the rule that drops: {wa}");
    assert_eq!(
        rules[0]["text"],
        "-A INPUT -p udp -m udp --dport 7011 -j DROP"
    );
    assert_eq!(
        (rules[0]["chain"].as_str(), rules[0]["position"].as_u64()),
        (Some("INPUT"), Some(2))
    );
    assert_eq!(rules[0]["delta"], counted_a);

    let wb = workload(s, b.inode()?)?;
    let rules = wb["drops"]["rules"].as_array().context("no drops.rules")?;
    assert_eq!(rules.len(), 1, "{wb}");
    let counted_b = if nft {
        let (handle, packets) = nft_rule(&b, "ip", "ntfw", "input", "dport 7012")?;
        assert_eq!(
            (
                rules[0]["backend"].as_str(),
                rules[0]["family"].as_str(),
                rules[0]["handle"].as_u64()
            ),
            (Some("nftables"), Some("ipv4"), Some(handle)),
            "{wb}"
        );
        assert_eq!(rules[0]["text"], "udp dport 7012 counter drop");
        packets
    } else {
        iptables_packets(&b, "INPUT", 1)?
    };
    assert_eq!(counted_b, 70, "the lab itself misbehaved");
    assert_eq!(firewall_drops(wb)?, counted_b, "{wb}");
    assert_eq!(rules[0]["delta"], counted_b);

    // Reading the rules drops nothing the trace sees (the tools' netlink sockets do drop a few
    // messages when they close: read while the probes are detached).
    let wc = workload(s, c.inode()?)?;
    assert_eq!(wc["drops"]["total"], 0, "{wc}");
    assert_eq!(
        wc["drops"]["rules"].as_array().map(Vec::len),
        Some(0),
        "{wc}"
    );

    // The problems name the rule; the drops section lists it with its count.
    let table = std::fs::read_to_string(&table)?;
    let problem = table
        .lines()
        .find(|l| l.contains("firewall") && l.contains(&a.netns))
        .with_context(|| format!("no firewall problem for {}:\n{table}", a.netns))?;
    assert!(
        problem.ends_with("rule ipv4 table filter, chain INPUT: -A INPUT -p udp -m udp --dport 7011 -j DROP (+150)"),
        "{problem}"
    );
    assert!(
        table.lines().any(|l| l.trim()
            == "150  ipv4 table filter, chain INPUT: -A INPUT -p udp -m udp --dport 7011 -j DROP"),
        "{table}"
    );
    Ok(())
}

/// A router whose route onwards has a smaller MTU drops what is too big (IPv4 with Don't
/// Fragment; IPv6 routers never fragment): the classic overlay failure. The trace names it an
/// `mtu` problem in the router, with as many packets as the router's own count, and in the
/// sender, told by the router's ICMP errors as many times as the sender's kernel counted them.
#[test]
fn packets_too_big_for_a_routers_next_hop_are_an_mtu_problem_there() -> Result<()> {
    too_big_for_the_path(false)
}

#[test]
fn packets_too_big_for_a_routers_next_hop_are_an_mtu_problem_there_ipv6() -> Result<()> {
    too_big_for_the_path(true)
}

fn too_big_for_the_path(v6: bool) -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    // IPv6 only where tested: its own neighbour discovery and MLD add drops of their own.
    let v6_addr = |a: &'static str| v6.then_some(a);
    let a = lab.node("a", "10.238.0.1/24", v6_addr("fd00:238::1/64"))?;
    let router = lab.node("router", "10.238.0.254/24", v6_addr("fd00:238::fe/64"))?;
    let b = lab.node("b", "10.239.0.2/24", v6_addr("fd00:239::2/64"))?;
    // (family flag, router, onward net, back net, destination, dropped counter, ICMP out, in)
    let (ip, router_addr, onward, back, to, dropped, told_counter, heard_counter) = if v6 {
        (
            "-6",
            "fd00:238::fe",
            "fd00:239::/64",
            "fd00:238::/64",
            "fd00:239::2",
            "Ip6InTooBigErrors",
            "Icmp6OutPktTooBigs",
            "Icmp6InPktTooBigs",
        )
    } else {
        (
            "-4",
            "10.238.0.254",
            "10.239.0.0/24",
            "10.238.0.0/24",
            "10.239.0.2",
            "IpFragFails",
            "IcmpOutDestUnreachs",
            "IcmpInDestUnreachs",
        )
    };
    router.sysctl(
        if v6 {
            "net.ipv6.conf.all.forwarding"
        } else {
            "net.ipv4.ip_forward"
        },
        "1",
    )?;
    router.run(&[
        "ip", ip, "route", "add", onward, "dev", "eth0", "mtu", "lock", "1280",
    ])?;
    a.run(&["ip", ip, "route", "add", onward, "via", router_addr])?;
    b.run(&["ip", ip, "route", "add", back, "dev", "eth0"])?;
    let before = nstat(&router, dropped)?;
    let (told_before, heard_before) = (nstat(&router, told_counter)?, nstat(&a, heard_counter)?);
    let trace = Trace::start(&["--netns", &router.netns, "--netns", &a.netns, "-o", "json"])?;
    // 1400-byte IP packets, not fragmented whatever path MTU a's kernel learns meanwhile.
    let payload = if v6 { 1400 - 48 } else { 1400 - 28 };
    let dst: std::net::SocketAddr = if v6 {
        format!("[{to}]:9")
    } else {
        format!("{to}:9")
    }
    .parse()?;
    a.enter(|| -> Result<()> {
        let socket = std::net::UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" })?;
        let (level, name, probe) = if v6 {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_PROBE,
            )
        } else {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            )
        };
        // SAFETY: a valid socket and an int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                level,
                name,
                (&probe as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(rc == 0, "MTU_DISCOVER: {}", std::io::Error::last_os_error());
        for _ in 0..40 {
            socket.send_to(&vec![0x5a; payload], dst)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "nettools failed: {}", done.stderr);
    let fails = nstat(&router, dropped)? - before;
    assert_eq!(fails, 40, "the lab itself misbehaved");
    // The router tells the sender, as often as its ICMP rate limit lets it.
    let told = nstat(&router, told_counter)? - told_before;
    let heard = nstat(&a, heard_counter)? - heard_before;
    assert!(
        told >= 1 && heard == told,
        "the lab itself misbehaved: told {told}, heard {heard}"
    );
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;
    let problems = s["problems"].as_array().context("no problems[]")?;
    let mtu_problem = |netns: &str| -> Result<&Value> {
        let p: Vec<&Value> = problems
            .iter()
            .filter(|p| p["kind"] == "mtu" && p["workload"] == netns)
            .collect();
        anyhow::ensure!(p.len() == 1, "no single mtu problem for {netns}: {s}");
        Ok(p[0])
    };
    // The sender's veth carried the router's ICMP errors, the router's veth the same messages
    // leaving: each as many as the kernels counted, with the MTU.
    for (node, direction, n) in [(&a, "received", heard), (&router, "sent", told)] {
        let w = workload(s, node.inode()?)?;
        let too_big = &w["interfaces"][0]["too_big"];
        assert_eq!(
            too_big,
            &serde_json::json!([{"direction": direction, "from": router_addr, "to": to, "mtu": 1280, "messages": n}]),
            "{}: {w}",
            node.netns
        );
    }
    let icmp = if v6 {
        "'packet too big'"
    } else {
        "'fragmentation needed'"
    };
    assert_eq!(
        mtu_problem(&a.netns)?["sentence"],
        format!(
            "{router_addr} says its packets to {to} are too big ({heard} ICMP {icmp}, MTU 1280)"
        )
    );
    let w = workload(s, router.inode()?)?;
    // The router's drops of the datagrams (IPv6's own multicast may add a drop or two).
    assert_eq!(s["health"]["events_lost"], 0);
    let flow_end = if v6 {
        format!("-> [{to}]:9")
    } else {
        format!("-> {to}:9")
    };
    let to_dst: u64 = w["drops"]["top_flows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["flow"].as_str().is_some_and(|t| t.ends_with(&flow_end)))
        .filter_map(|f| f["count"].as_u64())
        .sum();
    assert_eq!(to_dst, fails, "{w}");
    let named = drops_with_reason(w, "PKT_TOO_BIG");
    let p = mtu_problem(&router.netns)?;
    if named == 0 {
        skip(
            "this kernel frees packets too big for the next hop without naming PKT_TOO_BIG: the router is named by the ICMP errors it sent",
        );
        assert_eq!(
            p["sentence"],
            format!("answered {told} packets too big for its next hop with ICMP {icmp}, MTU 1280")
        );
        return Ok(());
    }
    assert_eq!(named, fails, "{w}");
    assert_eq!(p["evidence"]["count"], fails);
    let sentence = p["sentence"].as_str().unwrap_or("");
    let (udp_to, forward) = if v6 {
        (format!("UDP to [{to}]:9"), "ip6_forward")
    } else {
        (format!("UDP to {to}:9"), "ip_forward")
    };
    assert_eq!(
        sentence,
        format!(
            "40 packets too big for the next hop's MTU, {udp_to} (PKT_TOO_BIG, {forward}); it answered {told} of them with ICMP {icmp}, MTU 1280"
        ),
        "{s}"
    );
    Ok(())
}

/// Namespaces with nothing wrong: the report says so first, JSON's problems[] is empty, and
/// each healthy namespace is one line (its traffic) unless --verbose.
#[test]
fn a_healthy_trace_finds_no_problems() -> Result<()> {
    let (_lab, _a, b, c) = three_pods()?;
    let table = TempFile::new(".txt");
    let sink = c.enter(|| std::net::UdpSocket::bind(("0.0.0.0", 7007)))??;
    let trace = Trace::start(&[
        "--netns",
        &b.netns,
        "--netns",
        &c.netns,
        "-o",
        "json",
        "--table",
        &table.0.to_string_lossy(),
    ])?;
    udp_burst(&b, SocketAddr::from((c.ipv4, 7007)), 50)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    drop(sink);
    let lines = json_lines(&done.report)?;
    let s = summary(&lines)?;
    assert_eq!(s["problems"], serde_json::json!([]), "{s}");
    // The datagrams arrived: the trace saw traffic, and called it healthy.
    let received = workload(s, c.inode()?)?["interfaces"][0]["received"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(received >= 50, "{s}");
    let text = std::fs::read_to_string(&table.0)?;
    assert_eq!(text.lines().next(), Some("no problems found"), "{text}");
    for node in [&b, &c] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("== {}  (netns", node.netns))
                    && l.contains("  no problems; received ")),
            "{text}"
        );
    }
    assert!(
        !text.contains("drops: none"),
        "healthy sections collapse: {text}"
    );
    Ok(())
}

/// The flame graph of a staged firewall drop names the netfilter path, and its folded counts
/// sum to the drop count.
#[test]
fn flamegraph_of_a_firewall_drop() -> Result<()> {
    let (_lab, a, b, _c) = three_pods()?;
    drop_udp_port(&a, 7006)?;
    let svg = TempFile::new(".svg");
    let folded = TempFile::new(".folded");
    let trace = Trace::start(&[
        "--netns",
        &a.netns,
        "--probes",
        "drops",
        "-o",
        "flamegraph",
        "--folded",
        &folded.0.to_string_lossy(),
    ])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, 7006)), 60)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "{}", done.stderr);
    // The trace's report file is the SVG.
    std::fs::write(&svg.0, &done.report)?;
    let text = std::fs::read_to_string(&svg.0)?;
    assert!(
        text.starts_with("<?xml") && text.contains("<svg"),
        "not an SVG"
    );
    assert!(
        text.contains(firewall_reason()?) && text.contains("nf_hook_slow"),
        "no netfilter path in the SVG"
    );
    let folded = std::fs::read_to_string(&folded.0)?;
    // Before 5.17 every drop is UNAVAILABLE: the firewall's are those through netfilter.
    let (reason, named) = (firewall_reason()?, kernel_names_drop_reasons()?);
    let sum: u64 = folded
        .lines()
        .filter(|l| l.contains(&format!(";{reason};")) && (named || l.contains("nf_hook_slow")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(sum, iptables_packets(&a, "INPUT", 1)?, "{folded}");
    Ok(())
}

/// The live view: plain lines when stdout is not a terminal, a table redrawn in place on one.
#[test]
fn live_view_in_a_pipe_and_on_a_terminal() -> Result<()> {
    let (_lab, a, b, _c) = three_pods()?;
    drop_udp_port(&a, 7007)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = std::thread::spawn({
        let b = b.clone();
        let stop = stop.clone();
        let dst = SocketAddr::from((a.ipv4, 7007));
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = udp_burst(&b, dst, 5);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    // A pipe: lines saying what grew, then the final table.
    let piped = nettools(&[
        "trace", "--netns", &a.netns, "--probes", "drops", "-d", "2500ms",
    ])?;
    let out = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.status.success());
    assert!(
        out.lines().any(|l| l.starts_with('[')
            && l.contains(&format!("{}: +", a.netns))
            && l.contains("drops")),
        "{out}"
    );
    assert!(out.contains("nettools trace: 1 namespace"), "{out}");
    // A terminal (script(1) gives it one): the table is drawn, redrawn, and replaced by the
    // final report.
    let cmd = format!(
        "{} trace --netns {} --probes drops -d 2500ms",
        nettools_bin().display(),
        a.netns
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()?;
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}");
    assert!(screen.matches("nettools live").count() >= 2, "{screen}");
    assert!(screen.contains("\x1b[J"), "no in-place redraw: {screen}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.join();
    assert!(screen.contains(firewall_reason()?), "{screen}");
    Ok(())
}

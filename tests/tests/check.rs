//! `nettools check`: one staged fault per verdict, each verdict checked against an oracle of
//! its own (the rule's iptables counter, nstat's resets and no-route counts, the ARP table,
//! the interface's counters, the listener's accepted connections).

use std::{
    net::{TcpListener, UdpSocket},
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::*;
use serde_json::Value;

/// Two namespaces on a bridge: `a` (the source) and `b`, IPv4 and IPv6.
fn two_pods() -> Result<(Lab, Node, Node)> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.245.0.1/24", Some("fd00:245::1/64"))?;
    let b = lab.node("b", "10.245.0.2/24", Some("fd00:245::2/64"))?;
    Ok((lab, a, b))
}

/// Runs `nettools check --netns SOURCE ARGS -o json`; the verdict object and the exit code.
fn check(source: &Node, args: &[&str]) -> Result<(Value, i32, Output)> {
    let mut full = vec!["check", "--netns", source.netns.as_str(), "-o", "json"];
    full.extend_from_slice(args);
    let out = nettools(&full)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "check printed no JSON: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((v, out.status.code().unwrap_or(-1), out))
}

/// The evidence items of one kind.
fn evidence<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["evidence"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Whether `iptables-save` is here (the kernel matrix's guests have it too).
fn have_iptables_save() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("iptables-save").is_file())
    }) || std::path::Path::new("/usr/sbin/iptables-save").is_file()
}

#[test]
fn a_healthy_path_is_ok_with_the_latency_of_every_probe() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    let listener = b.enter(|| TcpListener::bind("0.0.0.0:8080"))??;
    let (v, code, _) = check(&a, &["--to", "10.245.0.2:8080", "--count", "3"])?;
    assert_eq!(v["verdict"], "ok", "{v:#}");
    assert_eq!(code, 0);
    // The oracle: the listener's queue holds the three connections the probes made.
    listener.set_nonblocking(true)?;
    let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
    assert_eq!(accepted, 3);
    let probes = v["probes"].as_array().context("no probes")?;
    assert_eq!(probes.len(), 3);
    let max = v["latency_ms"]["max"].as_f64().context("no latency")?;
    let p50 = v["latency_ms"]["p50"].as_f64().context("no p50")?;
    let slowest = probes
        .iter()
        .filter_map(|p| p["ms"].as_f64())
        .fold(0.0, f64::max);
    assert!(p50 <= max && max == slowest, "{v:#}");
    // b named as a namespace of the node: its IPv4 address.
    let to = format!("netns/{}:8080", b.netns);
    let (named, code, _) = check(&a, &["--to", &to, "--count", "1"])?;
    assert_eq!(
        (named["verdict"].as_str(), code),
        (Some("ok"), 0),
        "{named:#}"
    );
    assert_eq!(named["destination"], "10.245.0.2:8080");
    assert_eq!(std::iter::from_fn(|| listener.accept().ok()).count(), 1);
    // ICMPv6 echo, answered by b's kernel.
    let (v6, code, _) = check(&a, &["--to", "fd00:245::2", "--count", "2"])?;
    assert_eq!((v6["verdict"].as_str(), code), (Some("ok"), 0), "{v6:#}");
    assert_eq!(v6["protocol"], "icmp");
    Ok(())
}

#[test]
fn nothing_listening_is_refused_by_the_namespace_that_sent_the_resets() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    let before = nstat(&b, "TcpOutRsts")?;
    let (v, code, _) = check(&a, &["--to", "10.245.0.2:9", "--count", "3"])?;
    let sent = nstat(&b, "TcpOutRsts")? - before;
    assert_eq!(sent, 3, "the lab itself misbehaved");
    assert_eq!((v["verdict"].as_str(), code), (Some("refused"), 1), "{v:#}");
    let resets = evidence(&v, "reset");
    assert_eq!(resets.len(), 1, "{v:#}");
    assert_eq!(resets[0]["namespace"], b.netns.as_str());
    assert_eq!(resets[0]["netns"], b.inode()?);
    assert_eq!(resets[0]["count"], sent);
    // UDP: b's kernel found no socket and answered ICMP port unreachable.
    let before = nstat(&b, "UdpNoPorts")?;
    let (udp, code, _) = check(
        &a,
        &["--to", "10.245.0.2:9", "--proto", "udp", "--count", "2"],
    )?;
    let no_ports = nstat(&b, "UdpNoPorts")? - before;
    assert_eq!(no_ports, 2, "the lab itself misbehaved");
    assert_eq!(
        (udp["verdict"].as_str(), code),
        (Some("refused"), 1),
        "{udp:#}"
    );
    let drops = evidence(&udp, "drop");
    assert_eq!(drops.len(), 1, "{udp:#}");
    assert_eq!(drops[0]["namespace"], b.netns.as_str());
    assert_eq!(drops[0]["reason"], reason_label("NO_SOCKET")?);
    assert_eq!(drops[0]["count"], no_ports);
    // IPv6 alike.
    let (v6, _, _) = check(&a, &["--to", "[fd00:245::2]:9", "--count", "1"])?;
    assert_eq!(v6["verdict"], "refused", "{v6:#}");
    assert_eq!(evidence(&v6, "reset")[0]["namespace"], b.netns.as_str());
    Ok(())
}

#[test]
fn a_drop_rule_in_the_destination_is_a_firewall_verdict_naming_the_rule() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    b.drop_input("tcp", 8080)?;
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "10.245.0.2:8080",
            "--count",
            "2",
            "--timeout",
            "1500ms",
        ],
    )?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("firewall"), 1),
        "{v:#}"
    );
    // The oracle: the rule's own counter.
    let counted = iptables_packets(&b, "INPUT", 1)?;
    assert!(counted >= 2, "the lab itself misbehaved: {counted}");
    let drops = evidence(&v, "drop");
    assert_eq!(drops.len(), 1, "{v:#}");
    assert_eq!(drops[0]["namespace"], b.netns.as_str());
    assert_eq!(drops[0]["netns"], b.inode()?);
    assert_eq!(drops[0]["reason"], firewall_reason()?);
    assert_eq!(drops[0]["count"], counted);
    let location = drops[0]["location"].as_str().context("no location")?;
    assert!(is_netfilter_location(location), "{location}");
    if !have_iptables_save() {
        skip("iptables-save is not installed: the rule cannot be named");
        return Ok(());
    }
    let rules = evidence(&v, "rule");
    assert_eq!(rules.len(), 1, "{v:#}");
    let rule = &rules[0]["rule"];
    assert_eq!(rules[0]["namespace"], b.netns.as_str());
    assert_eq!(
        (
            rule["table"].as_str(),
            rule["chain"].as_str(),
            rule["position"].as_u64()
        ),
        (Some("filter"), Some("INPUT"), Some(1))
    );
    assert_eq!(rule["text"], "-A INPUT -p tcp -m tcp --dport 8080 -j DROP");
    assert_eq!(
        rule["delta"], counted,
        "the rule's counter grew by what it counted"
    );
    assert!(
        v["summary"]
            .as_str()
            .is_some_and(|s| s.contains("--dport 8080 -j DROP")),
        "{v:#}"
    );
    Ok(())
}

/// Asserts a firewall verdict naming `node`'s rule `text` in `chain`, whose counter grew by
/// `counted` (its own counter, read by the test), for `family` (`ipv4`, `ipv6`).
fn assert_rule(v: &Value, namespace: &str, family: &str, chain: &str, text: &str, counted: u64) {
    assert_eq!(v["verdict"], "firewall", "{v:#}");
    let drops = evidence(v, "drop");
    assert!(
        drops
            .iter()
            .any(|d| d["namespace"] == namespace && d["count"] == counted),
        "no drop of {counted} in {namespace}: {v:#}"
    );
    if !have_iptables_save() {
        skip("iptables-save is not installed: the rule cannot be named");
        return;
    }
    let rules = evidence(v, "rule");
    let rule = rules
        .iter()
        .find(|r| r["namespace"] == namespace && r["rule"]["text"] == text)
        .unwrap_or_else(|| panic!("rule {text:?} of {namespace} not named: {v:#}"));
    assert_eq!(rule["rule"]["family"], family);
    assert_eq!(rule["rule"]["table"], "filter");
    assert_eq!(rule["rule"]["chain"], chain);
    assert_eq!(rule["rule"]["delta"], counted, "{v:#}");
}

/// The packet counter of the rule of `chain` whose `-S` form is `text`, in `node` (`None`:
/// the host), from `iptables -S -v` (its `-c PACKETS BYTES`).
fn rule_packets(node: Option<&Node>, program: &str, chain: &str, text: &str) -> Result<u64> {
    let args = [program, "-t", "filter", "-S", chain, "-v"];
    let out = match node {
        Some(n) => n.run(&args)?,
        None => sh(&args)?,
    };
    // `-A INPUT -p tcp -m tcp --dport 8080 -c 2 120 -j DROP`
    out.lines()
        .find(|l| {
            let plain: Vec<&str> = l.split_whitespace().collect();
            let mut without = Vec::new();
            let mut i = 0;
            while i < plain.len() {
                if plain[i] == "-c" {
                    i += 3;
                    continue;
                }
                without.push(plain[i]);
                i += 1;
            }
            without.join(" ") == text
        })
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let c = words.iter().position(|w| *w == "-c")?;
            words.get(c + 1)?.parse().ok()
        })
        .with_context(|| format!("no rule {text:?} in:\n{out}"))
}

/// A NetworkPolicy as kube-router writes it: a `KUBE-NWPLCY-…` chain jumped to from INPUT whose
/// DROP rule carries the policy's name in a comment. The verdict names the chain's owner and
/// the rule with the policy, its count equal to the rule's own counter.
#[test]
fn a_network_policy_chain_is_named_with_its_owner_and_policy() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    b.run(&["iptables", "-N", "KUBE-NWPLCY-LABDB"])?;
    b.run(&["iptables", "-A", "INPUT", "-j", "KUBE-NWPLCY-LABDB"])?;
    b.run(&[
        "iptables",
        "-A",
        "KUBE-NWPLCY-LABDB",
        "-p",
        "tcp",
        "--dport",
        "5432",
        "-m",
        "comment",
        "--comment",
        "default/deny-db",
        "-j",
        "DROP",
    ])?;
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "10.245.0.2:5432",
            "--count",
            "2",
            "--timeout",
            "1500ms",
        ],
    )?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("firewall"), 1),
        "{v:#}"
    );
    if !have_iptables_save() {
        skip("iptables-save is not installed: the rule cannot be named");
        return Ok(());
    }
    let text = "-A KUBE-NWPLCY-LABDB -p tcp -m tcp --dport 5432 -m comment --comment \"default/deny-db\" -j DROP";
    let counted = rule_packets(Some(&b), "iptables", "KUBE-NWPLCY-LABDB", text)?;
    assert!(counted >= 2, "the lab itself misbehaved: {counted}");
    let summary = v["summary"].as_str().unwrap_or("");
    assert!(
        summary.ends_with(&format!(
            "; rule: ipv4 table filter, chain KUBE-NWPLCY-LABDB (kube-router network policy): {text} (+{counted} packets)"
        )),
        "{summary}"
    );
    let rules = evidence(&v, "rule");
    let rule = rules
        .iter()
        .find(|r| r["rule"]["chain"] == "KUBE-NWPLCY-LABDB")
        .with_context(|| format!("the policy's rule is not named: {v:#}"))?;
    assert_eq!(rule["rule"]["owner"], "kube-router network policy");
    assert_eq!(rule["rule"]["delta"], counted);
    Ok(())
}

/// A native nftables table (as kube-proxy's nftables mode, firewalld or a hand-written ruleset
/// makes): the rule is named with its handle, its counter's growth equal to nft's own count;
/// a drop rule without `counter` is named as one that counts nothing.
#[test]
fn a_native_nftables_rule_is_named_by_its_handle_and_an_uncounted_one_as_such() -> Result<()> {
    if !have_tool("nft") {
        skip("nft is not installed: native nftables rules cannot be read");
        return Ok(());
    }
    let (_lab, a, b) = two_pods()?;
    b.run(&["nft", "add", "table", "inet", "ntfw"])?;
    b.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "ntfw",
        "input",
        "{ type filter hook input priority 0 ; }",
    ])?;
    b.run(&[
        "nft", "add", "rule", "inet", "ntfw", "input", "tcp", "dport", "5432", "counter", "drop",
    ])?;
    b.run(&[
        "nft", "add", "rule", "inet", "ntfw", "input", "tcp", "dport", "5433", "drop",
    ])?;
    let args = |port: &'static str| ["--to", port, "--count", "2", "--timeout", "1500ms"];

    let (v, code, _) = check(&a, &args("10.245.0.2:5432"))?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("firewall"), 1),
        "{v:#}"
    );
    let (handle, counted) = nft_rule(&b, "inet", "ntfw", "input", "dport 5432")?;
    assert!(counted >= 2, "the lab itself misbehaved: {counted}");
    let drops = evidence(&v, "drop");
    assert_eq!(drops.len(), 1, "{v:#}");
    assert_eq!(
        (drops[0]["namespace"].as_str(), drops[0]["count"].as_u64()),
        (Some(b.netns.as_str()), Some(counted))
    );
    let rules = evidence(&v, "rule");
    assert_eq!(rules.len(), 1, "{v:#}");
    let rule = &rules[0]["rule"];
    assert_eq!(
        (
            rule["backend"].as_str(),
            rule["family"].as_str(),
            rule["table"].as_str(),
            rule["chain"].as_str(),
            rule["handle"].as_u64(),
            rule["text"].as_str(),
            rule["counted"].as_bool(),
        ),
        (
            Some("nftables"),
            Some("inet"),
            Some("ntfw"),
            Some("input"),
            Some(handle),
            Some("tcp dport 5432 counter drop"),
            Some(true)
        ),
        "{v:#}"
    );
    assert_eq!(
        rule["delta"], counted,
        "the rule's counter grew by what nft counted"
    );
    let summary = v["summary"].as_str().unwrap_or("");
    assert!(
        summary.contains(&format!(
            "handle {handle}: tcp dport 5432 counter drop (+{counted} packets)"
        )),
        "{summary}"
    );

    // Without a counter nobody can count: the rule is named as such, with no figure.
    let (v, code, _) = check(&a, &args("10.245.0.2:5433"))?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("firewall"), 1),
        "{v:#}"
    );
    let (handle, _) = nft_rule(&b, "inet", "ntfw", "input", "dport 5433")?;
    let drops = evidence(&v, "drop");
    // Each connect sends its SYN again after a second: two or more packets per probe.
    assert!(
        drops.len() == 1 && drops[0]["count"].as_u64().is_some_and(|n| n >= 2),
        "{v:#}"
    );
    let rules = evidence(&v, "rule");
    assert_eq!(rules.len(), 1, "{v:#}");
    assert_eq!(
        (
            rules[0]["rule"]["handle"].as_u64(),
            rules[0]["rule"]["text"].as_str(),
            rules[0]["rule"]["counted"].as_bool(),
            rules[0]["count"].as_u64()
        ),
        (Some(handle), Some("tcp dport 5433 drop"), Some(false), None),
        "{v:#}"
    );
    assert!(
        rules[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("without a counter")),
        "{v:#}"
    );
    assert!(
        v["summary"].as_str().is_some_and(|s| s.ends_with(&format!(
            "drops without a counter: nftables inet table ntfw, chain input, handle {handle}: tcp dport 5433 drop"
        ))),
        "{v:#}"
    );
    Ok(())
}

#[test]
fn an_ipv6_drop_rule_in_the_destination_is_named() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    let rule = "-A INPUT -p tcp -m tcp --dport 8080 -j DROP";
    b.run(&[
        "ip6tables",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DROP",
    ])?;
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "[fd00:245::2]:8080",
            "--count",
            "2",
            "--timeout",
            "1500ms",
        ],
    )?;
    assert_eq!(code, 1);
    let counted = rule_packets(Some(&b), "ip6tables", "INPUT", rule)?;
    assert!(counted >= 2, "the lab itself misbehaved: {counted}");
    assert_rule(&v, &b.netns, "ipv6", "INPUT", rule, counted);
    Ok(())
}

#[test]
fn a_drop_rule_in_the_source_output_is_named() -> Result<()> {
    let (_lab, a, _b) = two_pods()?;
    let rule = "-A OUTPUT -d 10.245.0.2/32 -p tcp -m tcp --dport 8080 -j DROP";
    a.run(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-d",
        "10.245.0.2",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "DROP",
    ])?;
    let (v, code, _) = check(&a, &["--to", "10.245.0.2:8080", "--count", "2"])?;
    assert_eq!(code, 1);
    let counted = rule_packets(Some(&a), "iptables", "OUTPUT", rule)?;
    assert!(counted >= 2, "the lab itself misbehaved: {counted}");
    assert_rule(&v, &a.netns, "ipv4", "OUTPUT", rule, counted);
    Ok(())
}

/// Removes a rule from the host's FORWARD chain when dropped, also when the test fails.
struct HostRule(Vec<String>);

impl Drop for HostRule {
    fn drop(&mut self) {
        let mut args: Vec<&str> = vec!["iptables", "-D", "FORWARD"];
        args.extend(self.0.iter().map(String::as_str));
        let _ = sh(&args);
    }
}

#[test]
fn a_drop_rule_in_the_host_forward_chain_is_named_in_the_host() -> Result<()> {
    let (_lab, a, _b) = two_pods()?;
    if std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map_or(true, |v| v.trim() != "1")
    {
        skip("bridged traffic does not pass the host's iptables (bridge-nf-call-iptables)");
        return Ok(());
    }
    // Only this lab's two addresses and port: nothing else on the machine is touched.
    let spec: Vec<String> = [
        "-s",
        "10.245.0.1",
        "-d",
        "10.245.0.2",
        "-p",
        "tcp",
        "--dport",
        "8081",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut add: Vec<&str> = vec!["iptables", "-I", "FORWARD", "1"];
    add.extend(spec.iter().map(String::as_str));
    sh(&add)?;
    let _guard = HostRule(spec);
    let rule = "-A FORWARD -s 10.245.0.1/32 -d 10.245.0.2/32 -p tcp -m tcp --dport 8081 -j DROP";
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "10.245.0.2:8081",
            "--count",
            "1",
            "--timeout",
            "1500ms",
        ],
    )?;
    assert_eq!(code, 1);
    let counted = rule_packets(None, "iptables", "FORWARD", rule)?;
    assert!(counted >= 1, "the lab itself misbehaved: {counted}");
    assert_rule(&v, "host", "ipv4", "FORWARD", rule, counted);
    Ok(())
}

#[test]
fn a_reject_rule_is_rejected_naming_the_rule() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    if !have_iptables_save() {
        skip("iptables-save is not installed: a REJECT rule cannot be told from a listener");
        return Ok(());
    }
    for (port, with, text) in [
        (
            "8080",
            "tcp-reset",
            "-A INPUT -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset",
        ),
        (
            "8081",
            "icmp-port-unreachable",
            "-A INPUT -p tcp -m tcp --dport 8081 -j REJECT --reject-with icmp-port-unreachable",
        ),
    ] {
        b.run(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            port,
            "-j",
            "REJECT",
            "--reject-with",
            with,
        ])?;
        let to = format!("10.245.0.2:{port}");
        let (v, code, _) = check(&a, &["--to", &to, "--count", "2"])?;
        let counted = rule_packets(Some(&b), "iptables", "INPUT", text)?;
        assert_eq!(counted, 2, "the lab itself misbehaved");
        assert_eq!(
            (v["verdict"].as_str(), code),
            (Some("rejected"), 1),
            "{v:#}"
        );
        let rules = evidence(&v, "rule");
        assert_eq!(rules.len(), 1, "{v:#}");
        assert_eq!(rules[0]["namespace"], b.netns.as_str());
        assert_eq!(rules[0]["rule"]["text"], text);
        assert_eq!(rules[0]["rule"]["delta"], counted);
        // What the source's sockets got: a refusal, as from a closed port.
        assert!(
            evidence(&v, "errno")
                .iter()
                .any(|e| e["error"] == "ECONNREFUSED" && e["count"] == 2),
            "{v:#}"
        );
    }
    Ok(())
}

#[test]
fn a_missing_route_in_a_router_is_no_route_there() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.245.0.1/24", None)?;
    let router = lab.node("router", "10.245.0.254/24", None)?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    a.run(&["ip", "route", "add", "default", "via", "10.245.0.254"])?;
    let before = nstat(&router, "IpExtInNoRoutes")?;
    let (v, code, _) = check(&a, &["--to", "10.246.9.1:80", "--count", "2"])?;
    let no_routes = nstat(&router, "IpExtInNoRoutes")? - before;
    assert!(no_routes >= 2, "the lab itself misbehaved: {no_routes}");
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("no_route"), 1),
        "{v:#}"
    );
    let drops = evidence(&v, "drop");
    assert_eq!(drops.len(), 1, "{v:#}");
    assert_eq!(drops[0]["namespace"], router.netns.as_str());
    assert_eq!(drops[0]["reason"], reason_label("IP_INNOROUTES")?);
    assert_eq!(drops[0]["count"], no_routes);
    // The source got the router's ICMP net unreachable.
    assert!(
        evidence(&v, "errno")
            .iter()
            .any(|e| e["error"] == "ENETUNREACH" && e["count"] == 2),
        "{v:#}"
    );
    Ok(())
}

/// A router whose route onwards allows 1280 bytes: 1400-byte echo requests with Don't
/// Fragment are `mtu`, naming the router and the MTU it sent back; 1200-byte ones get through.
/// The oracle: the router's own IpFragFails (packets it could not forward unfragmented) grew by
/// the probes sent.
#[test]
fn a_router_with_a_smaller_mtu_onwards_is_an_mtu_verdict_naming_it() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.245.0.1/24", None)?;
    let router = lab.node("router", "10.245.0.254/24", None)?;
    let b = lab.node("b", "10.247.0.2/24", None)?;
    router.sysctl("net.ipv4.ip_forward", "1")?;
    router.run(&[
        "ip",
        "route",
        "add",
        "10.247.0.0/24",
        "dev",
        "eth0",
        "mtu",
        "lock",
        "1280",
    ])?;
    a.run(&["ip", "route", "add", "10.247.0.0/24", "via", "10.245.0.254"])?;
    b.run(&["ip", "route", "add", "10.245.0.0/24", "dev", "eth0"])?;
    let (v, code, _) = check(
        &a,
        &["--to", "10.247.0.2", "--size", "1200", "--count", "1"],
    )?;
    assert_eq!((v["verdict"].as_str(), code), (Some("ok"), 0), "{v:#}");

    let before = nstat(&router, "IpFragFails")?;
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "10.247.0.2",
            "--size",
            "1400",
            "--count",
            "2",
            "--timeout",
            "1s",
        ],
    )?;
    let fails = nstat(&router, "IpFragFails")? - before;
    assert_eq!(fails, 2, "the lab itself misbehaved: {v:#}");
    assert_eq!((v["verdict"].as_str(), code), (Some("mtu"), 1), "{v:#}");
    assert_eq!(
        v["summary"],
        format!(
            "1400-byte packets do not fit the path to 10.247.0.2: {} (10.245.0.254) passes at \
             most 1280 bytes with Don't Fragment",
            router.netns
        ),
        "{v:#}"
    );
    let mtu = evidence(&v, "mtu");
    assert_eq!(mtu.len(), 1, "{v:#}");
    assert_eq!(mtu[0]["namespace"], router.netns.as_str());
    assert!(
        mtu[0]["count"]
            .as_u64()
            .is_some_and(|n| (1..=fails).contains(&n)),
        "{v:#}"
    );
    Ok(())
}

#[test]
fn an_address_nobody_owns_is_neighbour_unreachable() -> Result<()> {
    let (_lab, a, _b) = two_pods()?;
    a.sysctl("net.ipv4.neigh.eth0.retrans_time_ms", "200")?;
    let failed_before = arp_res_failed()?;
    let (v, code, _) = check(
        &a,
        &["--to", "10.245.0.99:80", "--count", "1", "--timeout", "2s"],
    )?;
    assert!(
        arp_res_failed()? > failed_before,
        "the lab itself misbehaved"
    );
    assert_eq!(neigh_state(&a, "10.245.0.99")?, "FAILED");
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("neighbour_unreachable"), 1),
        "{v:#}"
    );
    let n = evidence(&v, "neighbour");
    assert_eq!(n.len(), 1, "{v:#}");
    assert_eq!(n[0]["namespace"], a.netns.as_str());
    assert_eq!(n[0]["device"], "eth0");
    assert_eq!(n[0]["address"], "10.245.0.99");
    Ok(())
}

#[test]
fn an_ipv6_address_nobody_owns_is_neighbour_unreachable_from_a_pid() -> Result<()> {
    let (_lab, a, _b) = two_pods()?;
    a.sysctl("net.ipv6.neigh.eth0.retrans_time_ms", "200")?;
    // The source named by a process inside it, as `trace --pid` takes it.
    let mut sleeper = dies_with_test("ip")
        .args(["netns", "exec", &a.netns, "sleep", "60"])
        .spawn()?;
    let pid = sleeper.id().to_string();
    // `ip netns exec` enters the namespace after it starts (slowly in an emulated guest): the
    // source is that process's namespace only from then on.
    let inode = a.inode()?;
    let entered = Instant::now();
    while std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default()
        != format!("net:[{inode}]")
    {
        if entered.elapsed() > Duration::from_secs(10) {
            bail!("ip netns exec did not enter {} within 10 s", a.netns);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = nettools(&[
        "check",
        "--pid",
        &pid,
        "-o",
        "json",
        "--to",
        "[fd00:245::99]:80",
        "--count",
        "1",
        "--timeout",
        "2s",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let out = out?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).into_owned())?;
    // The oracle: the neighbour table's own state.
    let state = a.run(&["ip", "-6", "neigh", "show", "fd00:245::99", "dev", "eth0"])?;
    assert!(
        state.contains("FAILED"),
        "the lab itself misbehaved: {state}"
    );
    assert_eq!(v["verdict"], "neighbour_unreachable", "{v:#}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        v["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("pid {pid}"))),
        "{v:#}"
    );
    let n = evidence(&v, "neighbour");
    assert_eq!(n.len(), 1, "{v:#}");
    // Named as the source was named.
    assert_eq!(n[0]["namespace"], v["source"]);
    assert_eq!(n[0]["netns"], a.inode()?);
    assert_eq!(n[0]["device"], "eth0");
    assert_eq!(n[0]["address"], "fd00:245::99");
    Ok(())
}

#[test]
fn a_peer_that_takes_the_datagrams_and_never_answers_is_a_timeout() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    // b reads nothing and answers nothing: nothing is dropped anywhere.
    let silent = b.enter(|| UdpSocket::bind("0.0.0.0:5353"))??;
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "10.245.0.2:5353",
            "--proto",
            "udp",
            "--count",
            "2",
            "--timeout",
            "500ms",
        ],
    )?;
    // The oracle: the datagrams reached b's socket.
    silent.set_nonblocking(true)?;
    let mut buf = [0u8; 64];
    let arrived = std::iter::from_fn(|| silent.recv(&mut buf).ok()).count();
    assert_eq!(arrived, 2, "the lab itself misbehaved");
    assert_eq!((v["verdict"].as_str(), code), (Some("timeout"), 1), "{v:#}");
    let route = evidence(&v, "route");
    assert_eq!(route.len(), 1, "{v:#}");
    assert_eq!(route[0]["namespace"], a.netns.as_str());
    assert_eq!(route[0]["device"], "eth0");
    assert!(evidence(&v, "drop").is_empty(), "{v:#}");
    Ok(())
}

/// A namespace's own resolver configuration, `/etc/netns/NAME/resolv.conf` (where `ip netns
/// exec` puts it in place, and where `check` reads it), removed when dropped.
struct NetnsResolvConf(std::path::PathBuf);

impl NetnsResolvConf {
    fn new(node: &Node, text: &str) -> Result<Self> {
        let dir = std::path::Path::new("/etc/netns").join(&node.netns);
        std::fs::create_dir_all(&dir)?;
        let conf = Self(dir);
        std::fs::write(conf.0.join("resolv.conf"), text)?;
        Ok(conf)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names are resolved as the source's applications resolve them: its own resolv.conf (the
/// search domain `lab` makes `app` into `app.lab`), its nameserver, from inside it. The
/// oracles: the lab DNS server's zone and its count of queries received, and the listener's
/// accepted connection.
#[test]
fn names_resolve_through_the_sources_resolver_and_failed_lookups_are_dns_failure() -> Result<()> {
    use nettools::lab::dns::{Behaviour, DnsServer, Zone};
    use std::sync::atomic::Ordering;
    let (_lab, a, b) = two_pods()?;
    let zone: Zone = [
        (
            "app.lab".to_string(),
            Behaviour::Answer {
                delay: Duration::ZERO,
                addr: b.ipv4,
            },
        ),
        ("db.lab".to_string(), Behaviour::Rcode(2)),
        ("lost.lab".to_string(), Behaviour::Never),
    ]
    .into_iter()
    .collect();
    let server = DnsServer::start(&b, b.ipv4.into(), zone, Behaviour::Rcode(3))?;
    let _conf = NetnsResolvConf::new(&a, &format!("nameserver {}\nsearch lab\n", b.ipv4))?;
    let listener = b.enter(|| TcpListener::bind("0.0.0.0:8080"))??;
    let queries = || server.queries.load(Ordering::Relaxed);

    // A name with a port: resolved from inside a, then connected to.
    let (v, code, _) = check(&a, &["--to", "app:8080", "--count", "1"])?;
    assert_eq!((v["verdict"].as_str(), code), (Some("ok"), 0), "{v:#}");
    let resolved = evidence(&v, "dns");
    assert!(
        resolved
            .first()
            .and_then(|e| e["text"].as_str())
            .is_some_and(|t| t.starts_with(&format!(
                "app resolved as app.lab: {} (resolver {}",
                b.ipv4, b.ipv4
            ))),
        "{v:#}"
    );
    listener.set_nonblocking(true)?;
    assert_eq!(std::iter::from_fn(|| listener.accept().ok()).count(), 1);

    // The lookup itself: SERVFAIL is dns_failure, one query per lookup reached the server.
    let before = queries();
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "db.lab",
            "--proto",
            "dns",
            "--count",
            "2",
            "--timeout",
            "1s",
        ],
    )?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("dns_failure"), 1),
        "{v:#}"
    );
    assert_eq!(
        v["summary"],
        format!(
            "the resolver {} answered db.lab: SERVFAIL (2 of 2 lookups of db.lab)",
            b.ipv4
        )
    );
    assert_eq!(queries() - before, 2, "{v:#}");

    // Never answered: dns_failure naming the silence; the server did get the query, and
    // nothing on the node dropped it.
    let before = queries();
    let (v, code, _) = check(
        &a,
        &[
            "--to",
            "lost.lab",
            "--proto",
            "dns",
            "--count",
            "1",
            "--timeout",
            "500ms",
        ],
    )?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("dns_failure"), 1),
        "{v:#}"
    );
    assert!(
        v["summary"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!(
                "no answer from the resolver {} within 500 ms for lost.lab",
                b.ipv4
            ))),
        "{v:#}"
    );
    assert_eq!(queries() - before, 1, "{v:#}");
    assert!(evidence(&v, "drop").is_empty(), "{v:#}");

    // A name nobody has: NXDOMAIN for it and its search name, and nothing is sent to it.
    let before = queries();
    let (v, code, _) = check(&a, &["--to", "nope.lab:8080"])?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("dns_failure"), 1),
        "{v:#}"
    );
    assert!(
        v["summary"].as_str().is_some_and(
            |t| t.starts_with("nope.lab does not resolve from ") && t.contains("NXDOMAIN")
        ),
        "{v:#}"
    );
    assert_eq!(v["probes"].as_array().map(Vec::len), Some(0));
    // nope.lab (A: NXDOMAIN), then nope.lab.lab (A: NXDOMAIN).
    assert_eq!(queries() - before, 2, "{v:#}");
    Ok(())
}

/// A containerd pod as the destination, found through the CRI by namespace and name (from the
/// host's namespace): it answers pings; its own firewall drops datagrams to a port, and check names that
/// rule in the pod with the packets its counter grew by.
#[test]
fn a_pod_of_the_node_is_a_destination_by_name() -> Result<()> {
    need!(nettools_tests::runtimes::CONTAINERD_PROGRAMS);
    let mut ctd = nettools_tests::runtimes::Containerd::start()?;
    let socket = ctd.socket.display().to_string();
    let uid = "3d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
    let sandbox = ctd.run_pod("chkweb", "nettools-test", uid, 0)?;
    ctd.run_container(&sandbox, ("chkweb", "nettools-test", uid, 0), "app")?;
    let path = format!("/proc/{}/ns/net", ctd.sandbox_pid(uid, &sandbox)?);
    let addr =
        nettools_tests::nsexec::in_ns(&path, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .with_context(|| format!("the pod has no IPv4 address: {addr}"))?
        .to_string();
    let me = std::process::id().to_string();
    let run = |args: &[&str]| -> Result<(Value, i32)> {
        // From this test's own namespace (the host's), which routes to the pods' bridge.
        let mut full = vec!["check", "--pid", &me, "--cri-socket", &socket, "-o", "json"];
        full.extend_from_slice(args);
        let out = nettools(&full)?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((v, out.status.code().unwrap_or(-1)))
    };
    let (v, code) = run(&["--to", "pod/nettools-test/chkweb", "--count", "2"])?;
    assert_eq!((v["verdict"].as_str(), code), (Some("ok"), 0), "{v:#}");
    assert_eq!(v["destination"], ip.as_str(), "{v:#}");

    nettools_tests::nsexec::drop_udp(&path, 7777)?;
    let (v, code) = run(&[
        "--to",
        "pod/nettools-test/chkweb:7777",
        "--proto",
        "udp",
        "--count",
        "2",
        "--timeout",
        "500ms",
    ])?;
    assert_eq!(
        (v["verdict"].as_str(), code),
        (Some("firewall"), 1),
        "{v:#}"
    );
    let counted = nettools_tests::nsexec::input_rule_packets(&path, 1)?;
    assert_eq!(counted, 2, "the pod's rule counted {counted}");
    if have_iptables_save() {
        let rules = evidence(&v, "rule");
        assert!(
            rules.iter().any(|r| r["rule"]["delta"] == counted
                && r["namespace"]
                    .as_str()
                    .is_some_and(|n| n.contains("chkweb"))),
            "{v:#}"
        );
    }
    Ok(())
}

#[test]
fn bad_input_is_one_sentence_and_exit_2() -> Result<()> {
    let (_lab, a, _b) = two_pods()?;
    for args in [
        &[
            "check",
            "--netns",
            "ntlab-no-such-namespace",
            "--to",
            "10.245.0.2:80",
        ][..],
        &[
            "check",
            "--netns",
            a.netns.as_str(),
            "--to",
            "10.245.0.2:70000",
        ],
        &[
            "check",
            "--netns",
            a.netns.as_str(),
            "--to",
            "10.245.0.2",
            "--proto",
            "tcp",
        ],
        &["check", "--netns", a.netns.as_str(), "--to", "no such name"],
        &[
            "check",
            "--netns",
            a.netns.as_str(),
            "--to",
            "10.245.0.2",
            "--proto",
            "dns",
        ],
        &["check", "--to", "10.245.0.2"],
        &[
            "check",
            "--netns",
            a.netns.as_str(),
            "--to",
            "netns/ntlab-no-such-namespace:80",
        ],
    ] {
        let out = nettools(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("nettools: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    Ok(())
}

#[test]
fn the_table_names_the_verdict_and_the_rule() -> Result<()> {
    let (_lab, a, b) = two_pods()?;
    b.drop_input("tcp", 8080)?;
    let out = nettools(&[
        "check",
        "--netns",
        &a.netns,
        "--to",
        "10.245.0.2:8080",
        "--count",
        "1",
        "--timeout",
        "1s",
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("verdict: firewall"), "{text}");
    assert!(text.contains(&format!("dropped in {}", b.netns)), "{text}");
    if have_iptables_save() {
        assert!(text.contains("-j DROP counted"), "{text}");
    }
    Ok(())
}

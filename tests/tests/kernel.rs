//! What differs between kernels, checked against the running kernel's own description of its
//! drop tracepoint (tracefs), not against values written into the test. `cargo xtask vmtest`
//! runs these on 5.10 (no drop reasons), 6.1, 6.12, 6.18 and the newest kernel.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::*;

const FIREWALLED: u16 = 7101;
/// Nothing listens there: the kernel drops with `NO_SOCKET` (a second, different reason).
const CLOSED: u16 = 7102;

/// A firewall drop and a drop for want of a socket in namespace `a`, traced as JSON.
fn two_kinds_of_drops() -> Result<(Lab, Node, Vec<serde_json::Value>)> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.233.0.1/24", None)?;
    let b = lab.node("b", "10.233.0.2/24", None)?;
    a.drop_input("udp", FIREWALLED)?;
    let trace = Trace::start(&["--netns", &a.netns, "-o", "json"])?;
    udp_burst(&b, SocketAddr::from((a.ipv4, FIREWALLED)), 40)?;
    udp_burst(&b, SocketAddr::from((a.ipv4, CLOSED)), 25)?;
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    assert!(done.success, "nettools failed: {}", done.stderr);
    let lines = json_lines(&done.report)?;
    let counted_by_kernel = iptables_packets(&a, "INPUT", 1)?;
    assert_eq!(counted_by_kernel, 40, "the lab itself misbehaved");
    assert_eq!(
        firewall_drops(workload(summary(&lines)?, a.inode()?)?)?,
        counted_by_kernel,
        "firewall drops: {}",
        done.report
    );
    Ok((lab, a, lines))
}

/// Reason names come from the kernel's BTF at start-up; the tracepoint's print format has the
/// kernel's own value → name table. Both must agree for every reason nettools reported.
#[test]
fn drop_reason_names_match_this_kernels_tracepoint() -> Result<()> {
    let format = kfree_skb_format()?;
    if !kernel_names_drop_reasons()? {
        // The kernel before 5.17: the degradation is what is tested here.
        let (_lab, _a, lines) = two_kinds_of_drops()?;
        let drops: Vec<_> = lines.iter().filter(|l| l["type"] == "drop").collect();
        assert!(!drops.is_empty(), "no drop events at all");
        for d in &drops {
            assert_eq!(d["reason"], "UNAVAILABLE", "{d}");
            assert!(
                d["location"].as_str().is_some_and(|l| l.contains('+')),
                "{d}"
            );
        }
        let s = summary(&lines)?;
        let notes = s["notes"].to_string();
        assert!(notes.contains("does not name drop reasons"), "{notes}");
        return Ok(());
    }
    let table = tracepoint_reason_names(&format);
    assert!(
        table.iter().any(|(_, n)| n == "NETFILTER_DROP"),
        "the tracepoint's format has no reason table: {format}"
    );
    let (_lab, a, lines) = two_kinds_of_drops()?;
    let mut seen = std::collections::BTreeSet::new();
    for d in lines.iter().filter(|l| l["type"] == "drop") {
        let code = d["reason_code"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .with_context(|| format!("no reason_code: {d}"))?;
        let name = d["reason"].as_str().context("no reason")?;
        let kernel_name = table.iter().find(|(v, _)| *v == code).map(|(_, n)| n);
        assert_eq!(
            kernel_name.map(String::as_str),
            Some(name),
            "reason code {code} is {kernel_name:?} in this kernel's tracepoint, nettools says {name}"
        );
        seen.insert(name.to_string());
    }
    assert!(seen.contains("NETFILTER_DROP"), "{seen:?}: {lines:?}");
    assert!(
        seen.contains("NO_SOCKET"),
        "datagrams to a closed port were not reported as NO_SOCKET: {seen:?}"
    );
    // The summary's table uses the same names.
    let w = workload(summary(&lines)?, a.inode()?)?;
    for r in w["drops"]["by_reason"].as_array().into_iter().flatten() {
        let code = r["code"].as_u64().and_then(|c| u32::try_from(c).ok());
        let kernel_name = table.iter().find(|(v, _)| Some(*v) == code).map(|(_, n)| n);
        assert_eq!(kernel_name.map(String::as_str), r["reason"].as_str(), "{r}");
    }
    Ok(())
}

/// `nettools doctor` says what this kernel lacks, as the kernel's tracepoint shows it.
#[test]
fn doctor_states_what_this_kernel_offers() -> Result<()> {
    require_root();
    let out = nettools(&["doctor"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = |what: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" {what}: ")))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    if kernel_names_drop_reasons()? {
        assert!(line("drop reasons").starts_with("ok"), "{stdout}");
        assert!(
            line("drop probe").contains("with a reason field"),
            "{stdout}"
        );
    } else {
        assert!(line("drop reasons").starts_with("note"), "{stdout}");
        assert!(line("drop reasons").contains("has none"), "{stdout}");
        assert!(line("drop probe").contains("no reason field"), "{stdout}");
    }
    assert!(
        line("eBPF programs").starts_with("ok"),
        "the probes must load on every kernel: {stdout}"
    );
    Ok(())
}

#[test]
fn the_print_format_parser_reads_the_kernels_table() {
    let format = "print fmt: \"reason: %s\", __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, \
                  { 3, \"NO_SOCKET\" }, { 12, \"NETFILTER_DROP\" })";
    assert_eq!(
        tracepoint_reason_names(format),
        [
            (2, "NOT_SPECIFIED".to_string()),
            (3, "NO_SOCKET".to_string()),
            (12, "NETFILTER_DROP".to_string())
        ]
    );
    assert!(tracepoint_reason_names("print fmt: \"skbaddr=%p\"").is_empty());
    assert!(is_netfilter_location("nf_hook_slow+0x93"));
    assert!(is_netfilter_location("nft_do_chain+0x3e8"));
    assert!(is_netfilter_location("ipt_do_table+0x2c1"));
    assert!(!is_netfilter_location("__udp4_lib_rcv+0x5a2"));
}

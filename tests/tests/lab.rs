//! `nettools lab`: each staged problem appears in the report, attributed to the namespace
//! that has it, and nowhere else. And the flame graph of its drops names the kernel path.

use anyhow::{Context as _, Result};
use nettools_tests::*;
use serde_json::Value;

fn by_suffix<'a>(s: &'a Value, suffix: &str) -> Result<&'a Value> {
    s["workloads"]
        .as_array()
        .and_then(|ws| {
            ws.iter().find(|w| {
                w["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("-{suffix}")))
            })
        })
        .with_context(|| format!("no workload {suffix} in the lab report"))
}

fn others<'a>(s: &'a Value, except: &str) -> Vec<&'a Value> {
    s["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| {
                    !w["name"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(&format!("-{except}")))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn latency_p50(w: &Value, kind: &str) -> Option<f64> {
    w["latency"]["distributions"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == kind)?["p50_ms"]
        .as_f64()
}

#[test]
fn every_staged_problem_shows_where_it_is_and_nowhere_else() -> Result<()> {
    require_root();
    let out = TempFile::new(".json");
    let folded = TempFile::new(".folded");
    let run = nettools(&[
        "lab",
        "-d",
        "6s",
        "-o",
        "json",
        "--out",
        &out.0.to_string_lossy(),
        "--folded",
        &folded.0.to_string_lossy(),
    ])?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out.0)?;
    let lines = json_lines(&text)?;
    let s = summary(&lines)?;
    assert_eq!(s["workloads"].as_array().map(Vec::len), Some(12));

    // Firewall: drops of UDP port 7777 in firewall only.
    let fw = by_suffix(s, "firewall")?;
    assert!(firewall_drops(fw)? > 0, "{fw}");
    let port_7777 = |w: &Value| {
        w["drops"]["top_flows"].as_array().is_some_and(|fs| {
            fs.iter()
                .any(|f| f["flow"].as_str().is_some_and(|t| t.ends_with(":7777")))
        })
    };
    assert!(port_7777(fw));
    for w in others(s, "firewall") {
        assert!(!port_7777(w), "firewall drops leaked into {}", w["name"]);
    }

    // Lossy link: retransmits in lossy only.
    let lossy = by_suffix(s, "lossy")?;
    assert!(
        lossy["retransmits"]["total"].as_u64().unwrap_or(0) > 0,
        "{lossy}"
    );
    for w in others(s, "lossy") {
        assert_eq!(w["retransmits"]["total"], 0, "retransmits in {}", w["name"]);
    }

    // Incomplete ARP: the address nobody owns, in arp only.
    let arp = by_suffix(s, "arp")?;
    let failed_99 = |w: &Value| {
        w["neighbours"]["failures"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f["address"] == "10.231.0.99"))
    };
    assert!(failed_99(arp), "{arp}");
    assert!(
        arp["neighbours"]["unanswered"]
            .as_array()
            .is_some_and(|u| !u.is_empty())
    );
    for w in others(s, "arp") {
        assert!(!failed_99(w), "ARP failure in {}", w["name"]);
        assert_eq!(
            w["neighbours"]["unanswered"].as_array().map(Vec::len),
            Some(0),
            "{}",
            w["name"]
        );
    }

    // DNS: the slow answers, the SERVFAILs and the unanswered queries, seen by dns only.
    let dns = by_suffix(s, "dns")?;
    let d = &dns["latency"]["dns"];
    assert!(d["rcodes"]["SERVFAIL"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(d["unanswered"].as_u64().unwrap_or(0) > 0, "{d}");
    assert!(
        d["unanswered_by_name"]["lost.lab A"].as_u64().unwrap_or(0) > 0,
        "{d}"
    );
    let p99 = dns["latency"]["distributions"]
        .as_array()
        .and_then(|ds| ds.iter().find(|x| x["kind"] == "dns"))
        .and_then(|x| x["p99_ms"].as_f64())
        .unwrap_or(0.0);
    assert!(p99 >= 200.0, "the slow server answers in 200 ms: p99 {p99}");
    for w in others(s, "dns") {
        assert_eq!(w["latency"]["dns"]["unanswered"], 0, "{}", w["name"]);
        assert!(
            latency_p50(w, "dns").is_none(),
            "DNS queries from {}",
            w["name"]
        );
    }

    // Latency: slow answers in 50 ms; every other workload answers fast.
    let slow = by_suffix(s, "slow")?;
    for kind in ["tcp_accept", "icmp_answer"] {
        let p50 = latency_p50(slow, kind).with_context(|| format!("no {kind} in slow"))?;
        assert!(
            (p50 - 50.0).abs() < latency_tolerance_ms(5.0),
            "slow's {kind} p50 {p50} ms"
        );
        for w in others(s, "slow") {
            if let Some(p) = latency_p50(w, kind) {
                assert!(p < 5.0, "{}'s {kind} p50 {p} ms", w["name"]);
            }
        }
    }

    // Routing: the router drops what it has no route for; nobody else does.
    let router = by_suffix(s, "router")?;
    assert!(drops_for(router, "IP_INNOROUTES")? > 0, "{router}");
    for w in others(s, "router") {
        assert_eq!(drops_for(w, "IP_INNOROUTES")?, 0, "{}", w["name"]);
    }

    // The flame graph's folded stacks: the firewall's tower goes through netfilter, and the
    // folded counts add up to the drops counted.
    let folded = std::fs::read_to_string(&folded.0)?;
    let fw_name = fw["name"].as_str().unwrap_or("");
    let fw_reason = firewall_reason()?;
    assert!(
        folded.lines().any(
            |l| l.starts_with(&format!("{fw_name};{fw_reason};")) && l.contains("nf_hook_slow")
        ),
        "{folded}"
    );
    let total: u64 = folded
        .lines()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let counted: u64 = s["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["drops"]["total"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(total, counted, "folded stacks add up to what was counted");
    Ok(())
}

//! Incomplete ARP/NDP: an address on the subnet that nobody owns.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::*;

fn unanswered_neighbour(ipv6: bool) -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let (a6, b6) = if ipv6 {
        (Some("fd00:234::1/64"), Some("fd00:234::2/64"))
    } else {
        (None, None)
    };
    let _other = lab.node("o", "10.234.0.1/24", a6)?;
    let asker = lab.node("q", "10.234.0.2/24", b6)?;
    let family = if ipv6 { "ipv6" } else { "ipv4" };
    // Give up after 3 probes 200 ms apart instead of 3 s.
    asker.sysctl(&format!("net.{family}.neigh.eth0.retrans_time_ms"), "200")?;
    let nobody: std::net::IpAddr = if ipv6 {
        "fd00:234::99".parse()?
    } else {
        "10.234.0.99".parse()?
    };
    let trace = Trace::start(&["--netns", &asker.netns, "-o", "json"])?;
    udp_burst(&asker, SocketAddr::new(nobody, 9), 1)?;
    // Wait until the kernel gives up on the address.
    let mut state = String::new();
    for _ in 0..50 {
        state = neigh_state(&asker, &nobody.to_string())?;
        if state == "FAILED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state, "FAILED", "ip neigh should show the address FAILED");
    std::thread::sleep(Duration::from_millis(200));
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;
    let w = workload(s, asker.inode()?)?;
    let n = &w["neighbours"];
    let failure = n["failures"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["address"] == nobody.to_string()))
        .with_context(|| format!("no failure for {nobody}: {n}"))?;
    assert_eq!(failure["device"], "eth0");
    assert_eq!(failure["protocol"], if ipv6 { "ndp" } else { "arp" });
    assert_eq!(failure["failures"], 1);
    // The requests were also seen on the wire, without an answer.
    let unanswered = n["unanswered"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["address"] == nobody.to_string()))
        .with_context(|| format!("{nobody} not among unanswered lookups: {n}"))?;
    assert!(
        unanswered["requests"].as_u64().unwrap_or(0) >= 2,
        "{unanswered}"
    );
    assert_eq!(unanswered["replies"], 0);
    // The packet that waited for the address was dropped for that reason (IPv4 only: the
    // kernel's NDP error path frees it without a reason, which is not counted as a drop).
    if !ipv6 {
        assert!(drops_for(w, "NEIGH_FAILED")? >= 1, "{w}");
    }
    // The event says the same, and nothing is reported for addresses that did answer.
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "neighbour_failure" && l["address"] == nobody.to_string())
    );
    assert_eq!(n["failures"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[test]
fn arp_failure_is_reported_where_it_happens() -> Result<()> {
    unanswered_neighbour(false)
}

#[test]
fn ndp_failure_is_reported_where_it_happens() -> Result<()> {
    unanswered_neighbour(true)
}

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
    // The kernel sometimes does not run the probe for a timer batch (README: "Neighbour
    // failures have the same kind of gap"): then the failure must be counted as not seen,
    // never lost silently.
    let unseen = s["health"]["neighbour_failures_not_seen"]
        .as_u64()
        .context("no neighbour_failures_not_seen in health")?;
    let failure = n["failures"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["address"] == nobody.to_string()));
    let seen = match failure {
        Some(failure) => {
            assert_eq!(failure["device"], "eth0");
            assert_eq!(failure["protocol"], if ipv6 { "ndp" } else { "arp" });
            assert_eq!(failure["failures"], 1);
            true
        }
        None => {
            assert!(
                unseen >= 1,
                "no failure for {nobody}, and none counted as not seen: {n}; {}",
                s["health"]
            );
            eprintln!("the kernel did not run the probe for the failure ({unseen} not seen)");
            false
        }
    };
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
    assert_eq!(
        lines
            .iter()
            .any(|l| l["type"] == "neighbour_failure" && l["address"] == nobody.to_string()),
        seen
    );
    assert_eq!(
        n["failures"].as_array().map(Vec::len),
        Some(usize::from(seen))
    );
    // The lookups seen on the veth are kept for the whole trace: none pushed out of the map.
    let lookups = &s["pairing"]["neighbour_lookups"];
    assert!(lookups["inserted"].as_u64().unwrap_or(0) >= 1, "{lookups}");
    assert_eq!(lookups["remaining"], lookups["inserted"], "{lookups}");
    assert_eq!(lookups["evicted"], 0, "{lookups}");
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

/// The host's neighbour-table limits (`net.ipv4.neigh.default.gc_thresh*`, shared by every
/// namespace), raised for a test and put back when it ends, however it ends.
struct NeighbourTableRoom {
    saved: Vec<(String, String)>,
}

impl NeighbourTableRoom {
    fn raise(to: &str) -> Result<Self> {
        let mut saved = Vec::new();
        for n in ["gc_thresh3", "gc_thresh2", "gc_thresh1"] {
            let path = format!("/proc/sys/net/ipv4/neigh/default/{n}");
            let old =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
            saved.push((path, old.trim().to_string()));
        }
        let room = Self { saved };
        for (path, _) in &room.saved {
            std::fs::write(path, to).with_context(|| format!("cannot write {path}"))?;
        }
        Ok(room)
    }
}

impl Drop for NeighbourTableRoom {
    fn drop(&mut self) {
        // thresh1 <= thresh2 <= thresh3 holds at every step in this order.
        for (path, old) in self.saved.iter().rev() {
            let _ = std::fs::write(path, old);
        }
    }
}

/// No workload can fill the neighbour-failure map for all: one namespace makes 5000 failures
/// (more addresses than the map holds), and another's single failure is still counted, by
/// address; the first one's total stays exact.
#[test]
fn one_namespace_cannot_crowd_out_anothers_neighbour_failure() -> Result<()> {
    require_root();
    let _room = NeighbourTableRoom::raise("16384")?;
    let mut lab = Lab::new()?;
    let loud = lab.node("loud", "10.236.0.2/16", None)?;
    let quiet = lab.node("quiet", "10.236.0.3/16", None)?;
    for n in [&loud, &quiet] {
        n.sysctl("net.ipv4.neigh.eth0.retrans_time_ms", "100")?;
    }
    let trace = Trace::start(&[
        "--netns",
        &loud.netns,
        "--netns",
        &quiet.netns,
        "--probes",
        "neighbours",
        "-o",
        "json",
    ])?;
    let res_failed_before = arp_res_failed()?;
    // 5000 addresses nobody owns, one datagram each.
    let addresses: Vec<std::net::Ipv4Addr> = (0..5000u32)
        .map(|i| std::net::Ipv4Addr::new(10, 236, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
        .collect();
    loud.enter(|| -> Result<()> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for a in &addresses {
            // EAGAIN-like refusals while the queue is full do not matter: one is enough.
            let _ = s.send_to(b"anyone?", SocketAddr::from((*a, 9)));
        }
        Ok(())
    })??;
    let failed = |node: &Node| -> Result<usize> {
        Ok(node
            .run(&["ip", "-4", "neigh", "show", "nud", "failed"])?
            .lines()
            .count())
    };
    let mut loud_failed = 0;
    for _ in 0..100 {
        loud_failed = failed(&loud)?;
        if loud_failed >= addresses.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        loud_failed,
        addresses.len(),
        "ip neigh: not every address failed"
    );

    // Now the map is full of the loud namespace's addresses; the quiet one asks for one.
    let nobody = std::net::Ipv4Addr::new(10, 236, 250, 250);
    udp_burst(&quiet, SocketAddr::from((nobody, 9)), 1)?;
    let mut state = String::new();
    for _ in 0..50 {
        state = neigh_state(&quiet, &nobody.to_string())?;
        if state == "FAILED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state, "FAILED");
    std::thread::sleep(Duration::from_millis(300));
    let loud_failed_at_end = failed(&loud)?;
    let res_failed = arp_res_failed()?.saturating_sub(res_failed_before);
    let done = trace.stop()?;
    let lines = done.json()?;
    let s = summary(&lines)?;

    // What the kernel did not run the probe for is counted, never lost: the namespaces'
    // totals and what the probe never saw add up to the ARP table's own res_failed.
    let unseen = s["health"]["neighbour_failures_not_seen"]
        .as_u64()
        .context("no neighbour_failures_not_seen in health")?;
    let q = &workload(s, quiet.inode()?)?["neighbours"];
    let quiet_total = q["total_failures"].as_u64().unwrap_or(0);
    let l = &workload(s, loud.inode()?)?["neighbours"];
    let total = l["total_failures"].as_u64().unwrap_or(0);
    assert_eq!(
        total + quiet_total + unseen,
        res_failed,
        "the kernel's res_failed grew by {res_failed}; health: {}",
        s["health"]
    );
    assert!(total as usize <= loud_failed_at_end, "{l}");
    if unseen == 0 {
        assert_eq!(total as usize, loud_failed_at_end, "{}", s["health"]);
    } else {
        eprintln!("the kernel did not run the probe for {unseen} failures");
    }
    if quiet_total == 1 || unseen == 0 {
        assert_eq!(quiet_total, 1, "{q}");
        let listed = q["failures"].as_array().context("no failures")?;
        assert_eq!(listed.len(), 1, "{q}");
        assert_eq!(listed[0]["address"], nobody.to_string());
        assert_eq!(listed[0]["failures"], 1);
    }

    let kept: u64 = l["failures"]
        .as_array()
        .context("no failures")?
        .iter()
        .filter_map(|f| f["failures"].as_u64())
        .sum();
    assert!(kept < total, "the map holds fewer addresses than 5000");
    assert_eq!(l["failures_elsewhere"].as_u64(), Some(total - kept), "{l}");
    let pushed_out = s["health"]["neighbour_addresses_pushed_out"]
        .as_u64()
        .unwrap_or(0);
    assert!(pushed_out >= total + 1 - kept - 1, "{}", s["health"]);
    eprintln!(
        "loud: {total} failures ({kept} listed by address, {} elsewhere); quiet: 1; pushed out: {pushed_out}",
        total - kept
    );
    Ok(())
}

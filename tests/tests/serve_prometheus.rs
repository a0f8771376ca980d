//! A real Prometheus (Debian's `prometheus`) scrapes a real agent the way deploy/prometheus.yml
//! says (HTTPS with a client certificate, `honor_labels`, a `node` label), every second, while
//! a lab stages the five classic problems and a Podman pod drops what a client container sends
//! it. What Prometheus answers over its HTTP API is checked against what the kernel and the
//! test counted themselves:
//! - `sum by (pod, reason) (nettools_drops_total)` equals the pod's iptables rule counter (and
//!   `sum by (netns, reason)` a lab namespace's, which has no pod label);
//! - `rate(...)` over a steady drop rate the test sends equals the rate the rule counted
//!   within 5 %;
//! - `histogram_quantile(0.5, ...)` of `nettools_dns_duration_seconds` for a DNS server that
//!   answers 200 ms late lands in the bucket of the delay the server measured itself.
//!
//! The same Prometheus evaluates deploy/alerts.yml: every rule evaluates without error, each
//! staged problem's alert goes pending for the workload that has it, none names a healthy
//! workload. Every PromQL expression of deploy/grafana-dashboard.json is evaluated too: it
//! must be valid and return series (the lab produces data for every panel), so a renamed
//! metric breaks this test, not the dashboard.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use nettools::lab::demo;
use nettools_tests::{
    agent::Agent,
    manifest,
    nsexec::input_rule_packets,
    prom::{self, Prometheus, Series},
    runtimes::Podman,
    *,
};
use serde_json::{Value, json};

/// The lab's traffic threads, stopped and joined when dropped (also when the test fails).
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Seconds since the epoch, as Prometheus stamps samples.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sends UDP datagrams from inside the namespace at `from` to `dst` at `rate` per second for
/// `duration`, each at its own time on a fixed schedule (a late one does not shift the
/// others), and returns how many it sent.
fn steady_udp(from: &str, dst: SocketAddr, rate: u32, duration: Duration) -> Result<u64> {
    nettools::lab::in_netns(std::path::Path::new(from), move || -> Result<u64> {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let start = Instant::now();
        let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            socket.send_to(b"nettools steady", dst)?;
        }
        Ok(total)
    })?
}

/// Waits (at most `within`) until Prometheus holds a scrape of the agent (`job`) that began
/// after `after` (seconds since the epoch): what it answers then counts all the kernel
/// counted before `after`.
fn scraped_after(prometheus: &Prometheus, job: &str, after: f64, within: Duration) -> Result<()> {
    prometheus.sample_after(
        &format!("nettools_build_info{{job=\"{job}\"}}"),
        after,
        within,
    )
}

/// The one series of `result` whose labels include `want`.
fn one<'a>(result: &'a [Series], want: &[(&str, &str)], what: &str) -> Result<&'a Series> {
    let matching: Vec<&Series> = result
        .iter()
        .filter(|s| want.iter().all(|(k, v)| s.label(k) == *v))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        other => bail!(
            "{what}: {} series match {want:?} in {result:?}",
            other.len()
        ),
    }
}

/// The histogram bucket (index into the agent's bounds, the last one is +Inf) a duration in
/// seconds falls in: buckets are (previous bound, bound].
fn bucket(seconds: f64) -> usize {
    nettools::serve::metrics::BUCKETS
        .iter()
        .position(|&le| seconds <= le)
        .unwrap_or(nettools::serve::metrics::BUCKETS.len())
}

#[test]
fn prometheus_answers_what_the_kernel_counted_and_the_rules_and_dashboard_hold() -> Result<()> {
    need!(&[
        "prometheus",
        "promtool",
        "openssl",
        "podman",
        "runc",
        "conmon",
        "nsenter",
        "iptables",
    ]);
    let began = Instant::now();
    let dir = Scratch::new("prometheus-lab")?;
    prom::certificates(&dir.0, prom::KeyFormat::Pkcs8)?;

    // A Podman pod (a real pod label) whose firewall drops UDP port 7790, and a client.
    let podman = Podman::start()?;
    let (pod, client_ns) = podman.dropping_pod_and_client("ntalert", 7790)?;
    let pod_ns = pod.path.clone();
    let dst = SocketAddr::from((pod.ip, 7790));
    let pod_netns = pod.netns.to_string();

    // The lab: a firewall, a lossy link, an address nobody owns, DNS servers slow and failing,
    // a namespace that answers late, a missing route.
    let mut lab = Lab::new()?;
    let (staged, delays, servers) = demo::stage(&mut lab)?;
    let netns_of = |n: &Node| -> Result<String> { Ok(n.inode()?.to_string()) };
    let (firewall, lossy, arp, dns, dns_slow, slow) = (
        netns_of(&staged.firewall)?,
        netns_of(&staged.lossy)?,
        netns_of(&staged.arp)?,
        netns_of(&staged.dns)?,
        netns_of(&staged.dns_slow)?,
        netns_of(&staged.slow)?,
    );
    eprintln!(
        "set-up (podman, lab) took {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // The agent with its built-in TLS, every probe, Podman's API for names.
    let agent = Agent::start_mutual_tls(
        &dir.0,
        &[
            "--docker-socket",
            &podman.socket.display().to_string(),
            "--refresh",
            "1s",
            "--timeout",
            "1s",
            "--probes",
            "drops,retransmits,neighbours,traffic,handshake,dns,icmp,transit",
            "--transit-sample",
            "1",
        ],
    )?;

    // The lab's traffic from now on, so the agent sees all of it (the oracles count from 0).
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Traffic {
        threads: demo::traffic(&staged, &stop)?,
        stop,
    };

    // deploy/prometheus.yml's job, scraping every second, with deploy/alerts.yml loaded.
    let mut config = prom::documented_config(agent.addr, &dir.0)?;
    config["rule_files"] = json!([manifest::path("alerts.yml")
        .canonicalize()?
        .display()
        .to_string()]);
    let job_name = config["scrape_configs"][0]["job_name"]
        .as_str()
        .context("no job name")?
        .to_string();
    let node = config["scrape_configs"][0]["static_configs"][0]["labels"]["node"]
        .as_str()
        .context("no node label")?
        .to_string();
    let prometheus = Prometheus::start(&config, &dir.0)?;
    prometheus.up(&job_name, Duration::from_secs(30))?;

    // The pod is named (the agent asked Podman) and every lab namespace is there.
    let waited = Instant::now();
    loop {
        let info = prometheus.query("nettools_workload_info")?;
        let named = info
            .iter()
            .any(|s| s.label("pod") == "ntalertpod" && s.label("netns") == pod_netns);
        let lab_seen = [&firewall, &dns_slow]
            .iter()
            .all(|n| info.iter().any(|s| s.label("netns") == n.as_str()));
        if named && lab_seen {
            break;
        }
        if waited.elapsed() > Duration::from_secs(20) {
            bail!(
                "Prometheus never saw the pod and the lab: {info:?}\n{}",
                agent.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let drops_by_pod = "sum by (pod, reason) (nettools_drops_total)";
    let pod_drop = [("pod", "ntalertpod"), ("reason", "NETFILTER_DROP")];

    // 1. A staged firewall drop: Prometheus' sum equals the rule's counter.
    udp_from_ns(&client_ns, dst, 300)?;
    std::thread::sleep(Duration::from_millis(300));
    let counted = input_rule_packets(&pod_ns, 1)?;
    // (A datagram may be lost on its way, elsewhere than the rule: the rule is the oracle.)
    assert!(
        (290..=300).contains(&counted),
        "the set-up itself misbehaved: {counted} of 300 counted"
    );
    scraped_after(&prometheus, &job_name, now(), Duration::from_secs(10))?;
    let answer = prometheus.query(drops_by_pod)?;
    let summed = one(&answer, &pod_drop, drops_by_pod)?.value;
    assert_eq!(summed, counted as f64, "{answer:?}");
    eprintln!("{drops_by_pod} -> {summed} for pod ntalertpod (iptables counted {counted})");

    // 2. A steady 200 drops/s for 12 s: rate() against the rule's own count over the 9 s the
    //    test read it in the middle of the stream.
    let rate = 200;
    let sender = {
        let client_ns = client_ns.clone();
        std::thread::spawn(move || steady_udp(&client_ns, dst, rate, Duration::from_secs(12)))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (k1, t1) = (input_rule_packets(&pod_ns, 1)?, now());
    std::thread::sleep(Duration::from_secs(9));
    let (k2, t2) = (input_rule_packets(&pod_ns, 1)?, now());
    let counted_rate = (k2 - k1) as f64 / (t2 - t1);
    // rate() over the stretch between the first sample at or after t1 and the last at or
    // before t2, evaluated at that last sample: the window's ends are samples, so rate()'s
    // extrapolation towards the window's edges (which depends on where scrapes fall in a
    // short window, and on scrapes a loaded machine let time out) plays no part.
    scraped_after(&prometheus, &job_name, t2, Duration::from_secs(5))?;
    let series = prometheus.samples_at(
        "nettools_drops_total{pod=\"ntalertpod\", reason=\"NETFILTER_DROP\"}[20s]",
        t2,
    )?;
    let [(_, points)] = series.as_slice() else {
        bail!("not one series of the pod's drops: {series:?}");
    };
    let first = points
        .iter()
        .find(|(t, _)| *t >= t1)
        .context("no sample after t1")?;
    let last = points
        .iter()
        .rev()
        .find(|(t, _)| *t <= t2)
        .context("no sample before t2")?;
    if last.0 - first.0 < 5.0 {
        bail!("too few samples between t1 and t2 (scrapes failed?): {points:?}");
    }
    let window_ms = ((last.0 - first.0) * 1000.0).round() as u64 + 1;
    let rate_query = format!("sum by (pod, reason) (rate(nettools_drops_total[{window_ms}ms]))");
    let answer = prometheus.query_at(&rate_query, last.0)?;
    let prom_rate = one(&answer, &pod_drop, &rate_query)?.value;
    // What a dashboard would show at t2 over 8 s (extrapolated at the edges), for the record.
    let dashboard_query = "sum by (pod, reason) (rate(nettools_drops_total[8s]))";
    let dashboard_rate = prometheus
        .query_at(dashboard_query, t2)
        .ok()
        .and_then(|a| one(&a, &pod_drop, dashboard_query).ok().map(|s| s.value));
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    eprintln!(
        "{rate_query} -> {prom_rate:.2}/s for pod ntalertpod ({} samples over {:.1} s); \
         iptables counted {counted_rate:.2}/s over {:.1} s; sent {rate}/s; \
         {dashboard_query} at t2 -> {dashboard_rate:.2?}/s",
        points
            .iter()
            .filter(|(t, _)| *t >= first.0 && *t <= last.0)
            .count(),
        last.0 - first.0,
        t2 - t1
    );
    assert!(
        (counted_rate - f64::from(rate)).abs() < 0.05 * f64::from(rate),
        "the sender did not keep its rate: {counted_rate}/s"
    );
    assert!(
        (prom_rate - counted_rate).abs() <= 0.05 * counted_rate,
        "Prometheus' rate {prom_rate}/s, the rule counted {counted_rate}/s"
    );

    // After the steady stretch: the sum equals the counter again.
    std::thread::sleep(Duration::from_millis(300));
    let counted = input_rule_packets(&pod_ns, 1)?;
    // (A datagram may be lost on its way, elsewhere than the rule: the rule is the oracle.)
    assert!(
        counted <= 300 + sent && counted * 100 >= (300 + sent) * 99,
        "the set-up itself misbehaved: {counted} of {} counted",
        300 + sent
    );
    scraped_after(&prometheus, &job_name, now(), Duration::from_secs(10))?;
    let answer = prometheus.query(drops_by_pod)?;
    let summed = one(&answer, &pod_drop, drops_by_pod)?.value;
    assert_eq!(summed, counted as f64);
    eprintln!("{drops_by_pod} -> {summed} after the stream (iptables counted {counted})");

    // 3. DNS: the median of the slow server's answer time, from the histogram, lands in the
    //    bucket of the time the server itself held its queries.
    let held: Vec<f64> = servers[0]
        .held
        .lock()
        .map_err(|_| anyhow::anyhow!("the DNS server's record is poisoned"))?
        .iter()
        .map(|(_, _, _, after)| after.as_secs_f64())
        .collect();
    let mut sorted = held.clone();
    sorted.sort_by(f64::total_cmp);
    let held_median = sorted
        .get(sorted.len() / 2)
        .copied()
        .context("no DNS query answered")?;
    let dns_query = format!(
        "histogram_quantile(0.5, sum by (le) (rate(nettools_dns_duration_seconds_bucket{{netns=\"{dns_slow}\", role=\"server\"}}[1m])))"
    );
    let answer = prometheus.query(&dns_query)?;
    let [estimate] = answer.as_slice() else {
        bail!("{dns_query}: {answer:?}");
    };
    eprintln!(
        "{dns_query} -> {:.4} s; the server held {} queries, median {:.4} s (delay {:?})",
        estimate.value,
        held.len(),
        held_median,
        demo::DNS_DELAY
    );
    assert_eq!(
        bucket(estimate.value),
        bucket(held_median),
        "the median {} s is not in the bucket of {held_median} s",
        estimate.value
    );

    // 4. The alerting rules: all evaluate without error; each staged problem's alert goes
    //    pending (its `for` is longer than the test) for the workload that has the problem,
    //    and none names a healthy workload.
    let expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "NettoolsDropsRising",
            vec![("pod", "ntalertpod"), ("reason", "NETFILTER_DROP")],
        ),
        (
            "NettoolsTcpRetransmitsHigh",
            vec![("netns", lossy.as_str())],
        ),
        (
            "NettoolsNeighbourFailures",
            vec![("netns", arp.as_str()), ("protocol", "arp")],
        ),
        ("NettoolsDnsServfail", vec![("netns", dns.as_str())]),
        ("NettoolsDnsUnanswered", vec![("netns", dns.as_str())]),
        (
            "NettoolsTcpAcceptSlow",
            vec![("netns", slow.as_str()), ("role", "accept")],
        ),
    ];
    let waited = Instant::now();
    let alerts = loop {
        let alerts = prometheus.alerts()?;
        let missing: Vec<&(&str, Vec<(&str, &str)>)> = expected
            .iter()
            .filter(|(name, want)| {
                !alerts.iter().any(|a| {
                    a.label("alertname") == *name && want.iter().all(|(k, v)| a.label(k) == *v)
                })
            })
            .collect();
        if missing.is_empty() {
            break alerts;
        }
        if waited.elapsed() > Duration::from_secs(15) {
            bail!(
                "the alerts of staged problems that did not go pending: {missing:?}; \
                 pending: {alerts:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Silent where nothing is wrong: the healthy sink and client (whose connections wait
    // 50 ms for slow, far below NettoolsTcpConnectSlow's 0.5 s).
    let (sink, client) = (netns_of(&staged.sink)?, netns_of(&staged.client)?);
    let role_of: BTreeMap<String, String> = staged
        .all()
        .iter()
        .filter_map(|(n, _)| {
            let role = n.netns.strip_prefix(&format!("{}-", lab.id))?.to_string();
            Some((n.inode().ok()?.to_string(), role))
        })
        .collect();
    for a in &alerts {
        let netns = a.label("netns");
        assert!(
            netns != sink && netns != client && a.label("alertname") != "NettoolsTcpConnectSlow",
            "an alert where nothing is wrong: {a:?}"
        );
        if !netns.is_empty() {
            assert_eq!(a.state, "pending", "{a:?}");
        }
        assert_eq!(a.label("node"), node, "{a:?}");
        let workload = match (a.label("pod"), role_of.get(netns)) {
            ("", Some(role)) => format!("lab namespace {role}"),
            ("", None) => format!("{} {netns}", a.label("kind")),
            (pod, _) => format!("pod {pod}"),
        };
        eprintln!(
            "alert {} {}: {workload} {}, value {:.4}",
            a.state,
            a.label("alertname"),
            [a.label("reason"), a.label("protocol"), a.label("role")].concat(),
            a.value
        );
    }
    // The retransmit ratio's estimate of the segments sent, against the kernel's own counts
    // in the lossy namespace (nstat: TcpRetransSegs / TcpOutSegs since it was made; the agent
    // saw all of its traffic).
    let sel = format!("{{netns=\"{lossy}\"}}");
    let sent = |what: &str| {
        format!(
            "sum without (direction) (nettools_veth_{what}_total{{netns=\"{lossy}\", direction=\"sent\"}})"
        )
    };
    let ratio_query = format!(
        "nettools_tcp_retransmitted_segments_total{sel} / ({} / 1500 > {} or {})",
        sent("bytes"),
        sent("packets"),
        sent("packets")
    );
    let estimated = prometheus.query(&ratio_query)?;
    let (retrans, out) = (
        nstat(&staged.lossy, "TcpRetransSegs")?,
        nstat(&staged.lossy, "TcpOutSegs")?,
    );
    let kernel_ratio = retrans as f64 / out as f64;
    let [estimated] = estimated.as_slice() else {
        bail!("{ratio_query}: {estimated:?}");
    };
    eprintln!(
        "{ratio_query} -> {:.4}; the kernel's TcpRetransSegs/TcpOutSegs {retrans}/{out} = \
         {kernel_ratio:.4}",
        estimated.value
    );
    assert!(
        (estimated.value - kernel_ratio).abs() < 0.2 * kernel_ratio,
        "the estimated retransmit ratio {} is far from the kernel's {kernel_ratio}",
        estimated.value
    );
    let rules = prometheus.alerting_rules()?;
    let documented_rules = manifest::documents("alerts.yml")?;
    let documented_alerts: BTreeSet<String> = documented_rules[0]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    let evaluated: BTreeSet<String> = rules.iter().map(|r| r.1.clone()).collect();
    assert_eq!(evaluated, documented_alerts);
    for (group, name, health, error) in &rules {
        assert_eq!(health, "ok", "{group}/{name}: {error}");
    }

    // 5. Every expression of the dashboard: valid, and series where the lab produced data.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(manifest::path(
        "grafana-dashboard.json",
    ))?)?;
    let exprs = prom::dashboard_expressions(&dashboard);
    let variables = prom::dashboard_variables(&dashboard);
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let mut names = BTreeSet::new();
    for (what, expr) in &exprs {
        let sent = prom::as_grafana_sends(expr, &variables);
        let answer = prometheus
            .query(&sent)
            .with_context(|| format!("{what} of the dashboard"))?;
        assert!(
            !answer.is_empty(),
            "{what} of the dashboard returned nothing: {sent}"
        );
        names.extend(prom::metric_names(expr));
        eprintln!("dashboard {what}: {} series", answer.len());
    }
    // The heatmaps show latencies the lab produced in the last seconds, not only empty buckets.
    for p in dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "heatmap")
    {
        let expr = p["targets"][0]["expr"]
            .as_str()
            .context("a heatmap without expr")?;
        let answer = prometheus.query(&prom::as_grafana_sends(expr, &variables))?;
        assert!(
            answer.iter().any(|s| s.value > 0.0),
            "the heatmap {} is empty while the lab runs: {answer:?}",
            p["title"]
        );
    }
    // Every nettools metric the rules and the dashboard read is one Prometheus stored.
    let stored: BTreeSet<String> = prometheus
        .api("label/__name__/values")?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let rules_text = std::fs::read_to_string(manifest::path("alerts.yml"))?;
    names.extend(prom::metric_names(&rules_text));
    for name in &names {
        assert!(
            stored.contains(name),
            "{name} is read by the rules or the dashboard but Prometheus stored no such series"
        );
    }

    // 6. The lab's firewall namespace (no pod label: its netns) after its traffic stopped.
    traffic.stop();
    std::thread::sleep(Duration::from_millis(300));
    let counted = iptables_packets(&staged.firewall, "INPUT", 1)?;
    scraped_after(&prometheus, &job_name, now(), Duration::from_secs(10))?;
    let by_netns = "sum by (netns, reason) (nettools_drops_total)";
    let answer = prometheus.query(by_netns)?;
    let got = one(
        &answer,
        &[("netns", firewall.as_str()), ("reason", "NETFILTER_DROP")],
        by_netns,
    )?;
    assert_eq!(got.value, counted as f64);
    eprintln!(
        "{by_netns} -> {} for the lab's firewall namespace (iptables counted {counted})",
        got.value
    );
    drop(servers);
    for d in delays {
        let _ = d.stop();
    }
    eprintln!("the test took {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

/// `count` UDP datagrams from inside the namespace at `from` to `dst`, 300 µs apart.
fn udp_from_ns(from: &str, dst: SocketAddr, count: u32) -> Result<()> {
    nettools_tests::nsexec::udp_from(Some(from), dst, count, Duration::from_micros(300))
}

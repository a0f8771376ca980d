//! The alerting rules and the dashboard of deploy/, checked without a lab (no root needed):
//! - `promtool check rules` accepts deploy/alerts.yml and `promtool test rules` runs its unit
//!   tests (deploy/alerts_test.yml: synthetic series, each alert firing and silent);
//! - every alert of alerts.yml has a test where it fires and one where it stays silent;
//! - deploy/prometheusrule.yaml holds the same rule groups as alerts.yml, and promtool accepts
//!   them too;
//! - deploy/grafana-dashboard.json is a well-formed Grafana dashboard whose expressions read
//!   only metrics the agent exports (serve/metrics.rs) and use only variables it defines.
//!
//! serve_prometheus.rs evaluates the same rules and every dashboard expression in a real
//! Prometheus scraping a real agent over a lab.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use nettools_tests::{
    TempFile, in_vmtest_guest, manifest,
    prom::{self, promtool},
    runtimes::missing,
    skip,
};
use serde_json::{Value, json};

/// Why these tests cannot run here, if they cannot: the vmtest guest has neither the
/// sources nor promtool.
fn cannot_run(programs: &[&str]) -> Option<String> {
    if in_vmtest_guest() {
        return Some("the vmtest guest has neither deploy/ nor promtool".to_string());
    }
    missing(programs)
}

/// The alert names of a rule file's groups.
fn alert_names(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() -> Result<()> {
    if let Some(reason) = cannot_run(&["promtool"]) {
        skip(&reason);
        return Ok(());
    }
    let rules = manifest::path("alerts.yml").display().to_string();
    let (ok, said) = promtool(&["check", "rules", &rules])?;
    assert!(ok, "promtool check rules {rules}: {said}");
    let tests = manifest::path("alerts_test.yml").display().to_string();
    let (ok, said) = promtool(&["test", "rules", &tests])?;
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool test rules {tests}: {said}"
    );
    eprintln!("{}", said.trim());
    Ok(())
}

#[test]
fn every_alert_is_tested_firing_and_silent() -> Result<()> {
    if let Some(reason) = cannot_run(&[]) {
        skip(&reason);
        return Ok(());
    }
    let rules = manifest::documents("alerts.yml")?;
    let [rules] = rules.as_slice() else {
        bail!("alerts.yml is not one document");
    };
    let alerts = alert_names(&rules["groups"]);
    let unique: BTreeSet<&String> = alerts.iter().collect();
    assert_eq!(
        unique.len(),
        alerts.len(),
        "an alert name is used twice: {alerts:?}"
    );
    let tests = manifest::documents("alerts_test.yml")?;
    let [tests] = tests.as_slice() else {
        bail!("alerts_test.yml is not one document");
    };
    assert_eq!(tests["rule_files"], json!(["alerts.yml"]));
    // For each alert: (tests where it fires, tests where it is expected silent).
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_array().context("no tests")? {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"]
                .as_str()
                .context("a case without alertname")?;
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = seen.entry(name.to_string()).or_default();
            if fires {
                entry.0 += 1;
                // A firing expectation names its workload or agent and its annotations.
                for a in case["exp_alerts"].as_array().into_iter().flatten() {
                    assert!(
                        a["exp_labels"]["node"].is_string()
                            && a["exp_annotations"]["summary"].is_string()
                            && a["exp_annotations"]["description"].is_string(),
                        "{name}: {a}"
                    );
                }
            } else {
                entry.1 += 1;
            }
        }
    }
    for alert in &alerts {
        let (firing, silent) = seen.get(alert).copied().unwrap_or_default();
        assert!(
            firing > 0 && silent > 0,
            "{alert} must be tested firing and silent in alerts_test.yml (firing in {firing} \
             cases, silent in {silent})"
        );
    }
    let tested: BTreeSet<&String> = seen.keys().collect();
    assert_eq!(
        tested, unique,
        "alerts_test.yml tests alerts alerts.yml does not have"
    );
    Ok(())
}

#[test]
fn the_prometheusrule_holds_the_same_rules_as_alerts_yml() -> Result<()> {
    if let Some(reason) = cannot_run(&["promtool"]) {
        skip(&reason);
        return Ok(());
    }
    let rules = manifest::documents("alerts.yml")?;
    let docs = manifest::documents("prometheusrule.yaml")?;
    let rule = manifest::one(&docs, "PrometheusRule")?;
    assert_eq!(docs.len(), 1, "prometheusrule.yaml holds other documents");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "nettools");
    assert!(rule["metadata"]["name"].is_string());
    let spec_keys: Vec<&String> = rule["spec"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(spec_keys, vec!["groups"], "{}", rule["spec"]);
    if let Some(difference) =
        first_difference(&rules[0]["groups"], &rule["spec"]["groups"], "groups")
    {
        bail!(
            "prometheusrule.yaml and alerts.yml hold different rules (change both together): \
             {difference}"
        );
    }
    // And promtool reads the PrometheusRule's groups as Prometheus would (JSON is YAML).
    let file = TempFile::new("-prometheusrule.yml");
    std::fs::write(
        &file.0,
        serde_json::to_string_pretty(&json!({ "groups": rule["spec"]["groups"] }))?,
    )?;
    let (ok, said) = promtool(&["check", "rules", &file.0.display().to_string()])?;
    assert!(ok, "{said}");
    Ok(())
}

/// Where two JSON values first differ (a path such as `groups[0].rules[2].expr`, and both
/// values), or `None` when they are equal.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!(
            "{path}: alerts.yml has {a}, prometheusrule.yaml {b}"
        )),
    }
}

/// The metric names the agent exports: every `"nettools_…"` literal of serve/metrics.rs,
/// histograms with their `_bucket`, `_count` and `_sum` series.
fn exported_metrics() -> Result<BTreeSet<String>> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nettools/src/serve/metrics.rs");
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let mut out = BTreeSet::new();
    for piece in text.split('"').skip(1).step_by(2) {
        if piece.starts_with("nettools_")
            && piece
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.insert(piece.to_string());
            if piece.ends_with("_seconds") {
                for s in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{piece}{s}"));
                }
            }
        }
    }
    if out.len() < 20 {
        bail!(
            "found only {} metric names in {}",
            out.len(),
            source.display()
        );
    }
    Ok(out)
}

#[test]
fn the_rules_and_the_dashboard_read_only_metrics_the_agent_exports() -> Result<()> {
    if let Some(reason) = cannot_run(&[]) {
        skip(&reason);
        return Ok(());
    }
    let exported = exported_metrics()?;
    for file in [
        "alerts.yml",
        "prometheusrule.yaml",
        "grafana-dashboard.json",
    ] {
        let text = std::fs::read_to_string(manifest::path(file))?;
        let read = prom::metric_names(&text);
        assert!(!read.is_empty(), "{file} reads no nettools metric");
        let unknown: Vec<&String> = read.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} reads metrics the agent does not export: {unknown:?}"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_is_a_well_formed_grafana_dashboard() -> Result<()> {
    if let Some(reason) = cannot_run(&[]) {
        skip(&reason);
        return Ok(());
    }
    let text = std::fs::read_to_string(manifest::path("grafana-dashboard.json"))?;
    let d: Value = serde_json::from_str(&text).context("grafana-dashboard.json is not JSON")?;
    assert!(
        d["uid"].is_string() && d["title"].is_string(),
        "no uid or title"
    );
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let variables = prom::dashboard_variables(&d);
    assert_eq!(
        variables,
        ["datasource", "job", "node", "kind", "namespace", "pod"],
        "the dashboard's variables"
    );
    // Panels: unique ids, on the 24-column grid without overlapping, each with a title, a
    // description and the dashboard's data source; targets with unique refIds.
    let mut ids = BTreeSet::new();
    let mut cells: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for p in d["panels"].as_array().context("no panels")? {
        let id = p["id"].as_u64().context("a panel without id")?;
        assert!(ids.insert(id), "panel id {id} is used twice");
        let title = p["title"].as_str().context("a panel without title")?;
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().context("no x")?,
            g["y"].as_u64().context("no y")?,
            g["w"].as_u64().context("no w")?,
            g["h"].as_u64().context("no h")?,
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        let ty = p["type"].as_str().context("a panel without type")?;
        *kinds.entry(ty.to_string()).or_default() += 1;
        if ty == "row" {
            continue;
        }
        assert!(
            p["description"].as_str().is_some_and(|s| s.len() > 20),
            "{title} has no description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().context("a panel without targets")?;
        assert!(!targets.is_empty(), "{title} has no targets");
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            if ty == "heatmap" {
                assert_eq!(t["format"], "heatmap", "{title}: a heatmap of buckets");
                assert!(
                    t["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains("_bucket") && e.contains("by (le)")),
                    "{title}: {}",
                    t["expr"]
                );
            }
        }
    }
    // Heatmaps of the five latency histograms' kinds, rows per node, workload, agent.
    assert_eq!(kinds.get("heatmap"), Some(&5), "{kinds:?}");
    assert_eq!(kinds.get("row"), Some(&3), "{kinds:?}");
    // Every `$variable` an expression uses is one the dashboard defines (or Grafana's own).
    for (what, expr) in prom::dashboard_expressions(&d) {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find('$') {
            let name: String = rest[i + 1..]
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || variables.contains(&name),
                "{what} uses ${name}, which the dashboard does not define"
            );
            rest = &rest[i + 1..];
        }
    }
    // What issue 19 asks to see, each on the dashboard.
    let read = prom::metric_names(&text);
    for metric in [
        "nettools_drops_total",
        "nettools_tcp_retransmitted_segments_total",
        "nettools_neighbour_failures_total",
        "nettools_dns_duration_seconds_bucket",
        "nettools_dns_responses_total",
        "nettools_dns_unanswered_queries_total",
        "nettools_tcp_handshake_duration_seconds_bucket",
        "nettools_icmp_echo_duration_seconds_bucket",
        "nettools_transit_duration_seconds_bucket",
        "nettools_veth_bytes_total",
        "nettools_events_lost_total",
        "nettools_map_full_total",
        "nettools_probe_runs_skipped_total",
        "nettools_runtime_up",
    ] {
        assert!(
            read.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
    Ok(())
}

//! Latency histograms for people (`--output histogram`: percentiles and an ASCII distribution
//! per workload and kind) and for plotters (`--hgrm DIR`: HdrHistogram percentile files).

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Result;
use hdrhistogram::Histogram;

use super::{LatencyDistribution, Summary, text::Safe};

/// Width of the longest bar.
const BAR: usize = 40;
/// Rows of the distribution.
const ROWS: usize = 12;

/// `1.234 ms`, `56.7 us`, `2.50 s`.
pub fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The distribution as rows of `low .. high |#####     | count`: logarithmic buckets when the
/// samples span more than a factor of four, linear ones otherwise.
pub fn ascii(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    if h.is_empty() {
        return out;
    }
    let (lo, hi) = (
        h.min().max(1) as f64,
        (h.max().max(1) as f64) * 1.000_001 + 1.0,
    );
    let log = hi / lo > 4.0;
    let edge = |i: usize| -> f64 {
        let t = i as f64 / ROWS as f64;
        if log {
            lo * (hi / lo).powf(t)
        } else {
            lo + (hi - lo) * t
        }
    };
    // Each recorded value goes to exactly one row, so the rows add up to the sample count.
    let mut rows: Vec<(f64, f64, u64)> = (0..ROWS).map(|i| (edge(i), edge(i + 1), 0)).collect();
    for v in h.iter_recorded() {
        let value = h.median_equivalent(v.value_iterated_to()) as f64;
        let row = rows
            .iter()
            .position(|(a, b, _)| value >= *a && value < *b)
            .unwrap_or(if value < lo { 0 } else { ROWS - 1 });
        rows[row].2 += v.count_at_value();
    }
    let peak = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    for (a, b, n) in rows {
        let len = ((n as f64 / peak as f64) * BAR as f64).round() as usize;
        let bar = "#".repeat(if n > 0 { len.max(1) } else { 0 });
        let _ = writeln!(
            out,
            "    {:>10} .. {:<10} |{bar:<BAR$}| {n}",
            duration(a),
            duration(b)
        );
    }
    out
}

fn distribution(out: &mut String, d: &LatencyDistribution) {
    samples(out, d.kind.describe(), d.count, &d.histogram);
}

/// A titled distribution: its sample count, quantiles and bars.
fn samples(out: &mut String, title: &str, count: u64, h: &Histogram<u64>) {
    let _ = writeln!(out, "  {title}: {count} samples");
    let q = |x: f64| duration(h.value_at_quantile(x) as f64);
    let _ = writeln!(
        out,
        "    min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        duration(h.min() as f64),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        duration(h.max() as f64)
    );
    out.push_str(&ascii(h));
}

/// A workload's TCP RTT distributions (the `connections` probe): (file-name kind, title,
/// histogram) for the smoothed and the minimum RTT samples.
fn rtt_distributions(
    w: &super::WorkloadSummary,
) -> Vec<(&'static str, &'static str, &Histogram<u64>)> {
    let Some(c) = &w.connections else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(r) = &c.rtt {
        out.push(("tcp_srtt", "TCP smoothed RTT (srtt)", &r.histogram));
    }
    if let Some(r) = &c.min_rtt {
        out.push(("tcp_min_rtt", "TCP minimum RTT", &r.histogram));
    }
    out
}

/// `--output histogram`.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nettools latency histograms, {:.1} s, kernel {}",
        s.duration_s,
        Safe(&s.kernel)
    );
    let mut any = false;
    for w in &s.workloads {
        let latency = w.latency.as_ref().map_or(&[][..], |l| &l.distributions[..]);
        let rtt = rtt_distributions(w);
        if latency.is_empty() && rtt.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "\n== {}  (netns {})", Safe(&w.name), w.netns);
        for d in latency {
            distribution(&mut out, d);
        }
        for (_, title, h) in rtt {
            samples(&mut out, title, h.len(), h);
        }
    }
    if !any {
        let _ = writeln!(
            out,
            "\nno latency samples (no handshakes, DNS queries, pings, transit or TCP RTT seen)"
        );
    }
    out
}

/// The classic HdrHistogram percentile distribution (`.hgrm`), values in milliseconds, as
/// HdrHistogram's own `outputPercentileDistribution` writes it and plotters read it.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let ms = |ns: u64| ns as f64 / 1e6;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>2.12} {:>10} {inverse}",
            ms(v.value_iterated_to()),
            q,
            // Total count up to here.
            h.count_between(0, v.value_iterated_to())
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1e6,
        h.stdev() / 1e6
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// Bytes of a workload's name kept in a file name (a file name has 255 at most).
const FILE_PART: usize = 160;

/// A file name part from a workload name: letters, digits, `-`, `_`, `.`; nothing else from
/// the name reaches the file system (no `/`, no control character, no leading `.`).
fn file_part(name: &str) -> String {
    let part: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(FILE_PART)
        .collect();
    match part.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => part,
    }
}

/// The `.hgrm` files of a summary: (file name, contents), one per workload and latency kind.
/// Workloads whose names map to the same file name are told apart by their namespace inode.
pub fn hgrm_files(s: &Summary) -> Vec<(String, String)> {
    let mut used = std::collections::HashSet::new();
    let mut files = Vec::new();
    for w in &s.workloads {
        let latency = w.latency.as_ref().map_or(&[][..], |l| &l.distributions[..]);
        let kinds = latency
            .iter()
            .map(|d| (d.kind.name(), &d.histogram))
            .chain(rtt_distributions(w).into_iter().map(|(k, _, h)| (k, h)));
        for (kind, h) in kinds {
            let mut name = format!("{}-{kind}.hgrm", file_part(&w.name));
            if !used.insert(name.clone()) {
                name = format!("{}-{}-{kind}.hgrm", file_part(&w.name), w.netns);
                used.insert(name.clone());
            }
            files.push((name, hgrm(h)));
        }
    }
    files
}

/// `--hgrm DIR`: one `.hgrm` file per workload and latency kind, each replaced whole (see
/// [`super::file`]). Every name is checked before the first is written.
pub fn write_hgrm(dir: &super::file::Dir, s: &Summary) -> Result<Vec<PathBuf>> {
    let files = hgrm_files(s);
    for (name, _) in &files {
        dir.check_replace(name.as_ref())?;
    }
    files
        .iter()
        .map(|(name, text)| dir.replace(name.as_ref(), text.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::latency::new_histogram;

    #[test]
    fn ascii_distribution_counts_every_sample() {
        let mut h = new_histogram();
        for i in 0..100u64 {
            h.saturating_record(1_000_000 + i * 10_000);
        }
        h.saturating_record(50_000_000);
        let text = ascii(&h);
        let total: u64 = text
            .lines()
            .filter_map(|l| l.rsplit('|').next()?.trim().parse::<u64>().ok())
            .sum();
        assert_eq!(total, 101, "{text}");
        assert_eq!(text.lines().count(), ROWS);
        assert!(text.contains("#"));

        // Tightly clustered samples (a ping on a veth), where bucket edges fall between
        // HdrHistogram's equivalent values: every sample is still counted once.
        let mut h = new_histogram();
        for v in [
            29_900u64, 34_600, 35_000, 35_900, 36_100, 36_400, 36_800, 37_000, 37_900, 38_600,
            38_700, 43_900,
        ] {
            h.saturating_record(v);
        }
        let total: u64 = ascii(&h)
            .lines()
            .filter_map(|l| l.rsplit('|').next()?.trim().parse::<u64>().ok())
            .sum();
        assert_eq!(total, 12);
    }

    #[test]
    fn hgrm_file_shape() {
        let mut h = new_histogram();
        for v in [1_000_000u64, 2_000_000, 3_000_000, 4_000_000] {
            h.saturating_record(v);
        }
        let text = hgrm(&h);
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.contains("Value") && first.contains("Percentile") && first.contains("TotalCount")
        );
        assert!(text.contains("#[Max     ="), "{text}");
        assert!(text.contains("Total count    =            4"), "{text}");
        // Every data line: value, percentile in [0,1], a count.
        let data: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(!data.is_empty());
        for l in data {
            let f: Vec<&str> = l.split_whitespace().collect();
            let p: f64 = f[1].parse().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&p), "{l}");
        }
        assert_eq!(duration(1_500_000.0), "1.500 ms");
        assert_eq!(file_part("pod default/web"), "pod_default_web");
        assert_eq!(file_part("../../etc/x"), "_._.._etc_x");
        assert_eq!(file_part("\x1b[2J"), "__2J");
        assert_eq!(file_part(&"é".repeat(300)).len(), FILE_PART);
    }
}

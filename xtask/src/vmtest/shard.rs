//! Splitting one kernel's test binaries over several guests, and putting their verdicts back
//! together.
//!
//! Guests run `--jobs` at a time. With whole kernels as the unit, five kernels on two slots
//! leave the last kernel running alone for a whole guest's time (CI, 5 kernels: 966 s where
//! 5/2 guests' worth is ~780 s). Halves of kernels fill the slots evenly. Each shard is a list
//! of binaries (`/vmtest/shards/K.list`, chosen by `vmtest.shard=K` on the kernel command
//! line); binaries are dealt heaviest first to the lightest shard. A binary's weight is its
//! time in the last logs where one says, else its number of tests.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
};

use super::serial::Outcome;

/// Seconds one test is assumed to take when no log says how long its binary took (the guests'
/// median is about 4 s a test).
const SECONDS_PER_TEST: f64 = 4.0;

/// How long each binary took in the guests' logs under `logs` (the longest seen).
pub fn logged_seconds(logs: &Path) -> HashMap<String, f64> {
    let mut seconds: HashMap<String, f64> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(logs) else {
        return seconds;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for (binary, secs) in binary_times(&text) {
            let e = seconds.entry(binary).or_insert(0.0);
            *e = e.max(secs);
        }
    }
    seconds
}

/// (binary, seconds) from one log: libtest's "finished in 12.34s" after "@@vmtest run NAME".
fn binary_times(log: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut running: Option<String> = None;
    for line in log.lines() {
        if let Some(i) = line.find("@@vmtest run ") {
            running = line[i + "@@vmtest run ".len()..]
                .split_whitespace()
                .next()
                .map(str::to_string);
        } else if let (Some(b), Some(i)) = (&running, line.find("finished in ")) {
            let secs = line[i + "finished in ".len()..]
                .trim()
                .trim_end_matches('s')
                .parse::<f64>();
            if let Ok(secs) = secs {
                out.push((b.clone(), secs));
                running = None;
            }
        }
    }
    out
}

/// How many tests a binary has (`--list`), at least 1.
pub fn test_count(binary: &Path) -> usize {
    let out = Command::new(binary)
        .args(["--list", "--format", "terse"])
        .stderr(Stdio::null())
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.ends_with(": test"))
            .count()
    })
    .unwrap_or(0)
    .max(1)
}

/// Deals the binaries (name, weight) into `n` shards, heaviest first to the lightest shard;
/// each shard keeps the binaries' original order. Empty shards are dropped.
pub fn partition(binaries: &[(String, f64)], n: usize) -> Vec<Vec<String>> {
    let n = n.max(1);
    let mut order: Vec<usize> = (0..binaries.len()).collect();
    order.sort_by(|&a, &b| binaries[b].1.total_cmp(&binaries[a].1).then(a.cmp(&b)));
    let mut load = vec![0.0_f64; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in order {
        let lightest = (0..n)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .unwrap_or(0);
        load[lightest] += binaries[i].1;
        members[lightest].push(i);
    }
    members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|mut m| {
            m.sort_unstable();
            m.into_iter().map(|i| binaries[i].0.clone()).collect()
        })
        .collect()
}

/// The weight of each binary: logged seconds, else tests × SECONDS_PER_TEST.
pub fn weights(tests: &[(String, std::path::PathBuf)], logs: &Path) -> Vec<(String, f64)> {
    let logged = logged_seconds(logs);
    tests
        .iter()
        .map(|(name, path)| {
            let w = logged
                .get(name)
                .copied()
                .unwrap_or_else(|| test_count(path) as f64 * SECONDS_PER_TEST);
            (name.clone(), w.max(0.01))
        })
        .collect()
}

/// One kernel's verdict from its shards' outcomes (in shard order).
pub fn merge(parts: Vec<Outcome>) -> Outcome {
    let mut o = Outcome {
        done: !parts.is_empty(),
        ..Outcome::default()
    };
    for p in parts {
        // Each shard's release is checked against the kernel's on its own (run_shard).
        o.release = o.release.or(p.release);
        for m in p.modules_failed {
            if !o.modules_failed.contains(&m) {
                o.modules_failed.push(m);
            }
        }
        o.results.extend(p.results);
        o.passed.extend(p.passed);
        o.failed.extend(p.failed);
        o.skipped.extend(p.skipped);
        o.ignored.extend(p.ignored);
        o.done &= p.done;
        o.running = o.running.or(p.running);
        o.timed_out_after = o.timed_out_after.or(p.timed_out_after);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heaviest_first_to_the_lightest_shard() {
        let b = |n: &str, w: f64| (n.to_string(), w);
        let shards = partition(
            &[
                b("alerts", 0.1),
                b("cli", 30.0),
                b("drops", 50.0),
                b("latency", 60.0),
                b("traffic", 35.0),
            ],
            2,
        );
        // latency → 0; drops → 1; traffic → 1 (50 < 60); cli → 0 (60 < 85); alerts → 1
        // (85 < 90).
        assert_eq!(
            shards,
            [vec!["cli", "latency"], vec!["alerts", "drops", "traffic"]]
        );
        assert_eq!(partition(&[b("one", 1.0)], 2), [vec!["one"]]);
        assert!(partition(&[], 3).is_empty());
    }

    #[test]
    fn times_come_from_libtest_lines() {
        let log = "@@vmtest run cli\nrunning 3 tests\n\
                   test result: ok. 3 passed; 0 failed; finished in 30.08s\n\
                   @@vmtest result cli 0\n@@vmtest run kernel\n\
                   test result: ok. 1 passed; finished in 8.29s\n";
        assert_eq!(
            binary_times(log),
            [("cli".to_string(), 30.08), ("kernel".to_string(), 8.29)]
        );
    }

    #[test]
    fn a_kernel_passes_only_if_every_shard_did() {
        let shard = |test: &str, done: bool| Outcome {
            release: Some("6.1.0".into()),
            results: vec![(test.into(), 0)],
            passed: vec![format!("{test}::a")],
            done,
            ..Outcome::default()
        };
        let both = merge(vec![shard("cli", true), shard("drops", true)]);
        assert!(both.passed());
        assert_eq!(both.passed, ["cli::a", "drops::a"]);
        assert!(!merge(vec![shard("cli", true), shard("drops", false)]).passed());
        assert!(!merge(Vec::new()).passed());
    }
}

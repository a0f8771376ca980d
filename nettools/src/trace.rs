//! `nettools trace`: load the probes, attach them, collect until the duration ends or Ctrl-C,
//! then report, with the probes of a [`Session`]. Pods and containers are followed while traced
//! ([`follow`]).

pub mod follow;

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    discover::Workload,
    probe::{self, ProbeKind},
    report::{
        self, Output,
        file::{Commit, Destination},
        json,
        text::Safe,
    },
    session::{self, Session, Status, Step, Stop},
};

/// Everything a trace needs to know.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    /// Namespaces to trace (empty with `all`).
    pub workloads: Vec<Workload>,
    /// Trace every namespace on the node.
    pub all: bool,
    /// Stop after this long; `None` runs until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    pub probes: Vec<ProbeKind>,
    pub output: Output,
    /// Write the report here instead of stdout.
    pub out: Option<PathBuf>,
    /// Also write the table report here.
    pub table: Option<PathBuf>,
    /// What counts as a problem.
    pub thresholds: report::problems::Thresholds,
    pub ring_buffer_bytes: u32,
    /// How tc programs attach (tcx, clsact or whichever the kernel has).
    pub tc_mode: probe::tc::Mode,
    /// How long a request (SYN, DNS query, echo request) may wait before it counts as
    /// unanswered.
    pub timeout: Duration,
    /// The transit probe follows one packet in 2^n.
    pub transit_sample_shift: u32,
    /// Write HdrHistogram percentile files (`.hgrm`) here.
    pub hgrm_dir: Option<PathBuf>,
    /// Write the folded stacks here.
    pub folded: Option<PathBuf>,
    /// Which stacks the flame graph and the folded file show.
    pub stacks: report::flamegraph::Stacks,
    /// Show the live view while tracing (`None`: when the table goes to stdout).
    pub live: Option<bool>,
    /// Forward kernel-side debug messages.
    pub verbose: bool,
    /// Pods and containers: names for `--all`, and the ones to follow.
    pub runtime: follow::RuntimeTrace,
}

/// Where the report goes: stdout, or a temporary file next to `--out` that becomes it once
/// the report is complete ([`report::file`]), so the old file stays as it was until then.
fn open_output(out: &Option<PathBuf>) -> Result<(Box<dyn Write>, Commit)> {
    Ok(match out {
        Some(path) => {
            let (file, commit) = Destination::new(path)?.open()?;
            (Box::new(std::io::BufWriter::new(file)), commit)
        }
        None => (
            Box::new(std::io::BufWriter::new(std::io::stdout())),
            Commit::none(),
        ),
    })
}

/// Human description of what is traced, for the status line (names escaped).
fn describe_targets(spec: &TraceSpec) -> String {
    if spec.all {
        return "every network namespace".to_string();
    }
    let names: Vec<String> = spec
        .workloads
        .iter()
        .map(|w| Safe(&w.name).to_string())
        .collect();
    match names.len() {
        1 => names[0].clone(),
        n => format!("{n} namespaces ({})", names.join(", ")),
    }
}

/// Runs a trace to its end and writes the report.
pub async fn run(mut spec: TraceSpec) -> Result<()> {
    // Signals first: from here on Ctrl-C and SIGTERM end the trace cleanly, also while the
    // probes load and attach.
    let mut stop = Stop::install()?;
    // Every file is checked before anything is attached; none is replaced before the report
    // is complete.
    let (output, commit) = open_output(&spec.out)?;
    let table_file = spec.table.as_deref().map(Destination::new).transpose()?;
    let folded_file = spec.folded.as_deref().map(Destination::new).transpose()?;
    let hgrm_dir = spec
        .hgrm_dir
        .as_deref()
        .map(report::file::Dir::for_own_files)
        .transpose()?;
    let status = Status::new();
    let labels: BTreeMap<u32, Workload> = if spec.all {
        let mut labels = crate::discover::netns::labels();
        labels.extend(spec.runtime.labels.clone());
        labels
    } else {
        BTreeMap::new()
    };
    let mut session = Session::start(
        session::Options {
            probes: spec.probes.clone(),
            all: spec.all,
            ring_buffer_bytes: spec.ring_buffer_bytes,
            tc_mode: spec.tc_mode,
            timeout: spec.timeout,
            transit_sample_shift: spec.transit_sample_shift,
            stacks: spec.output == Output::Flamegraph || spec.folded.is_some(),
            verbose: spec.verbose,
        },
        spec.workloads.clone(),
        labels,
        output,
        spec.output == Output::Json,
        &status,
    )?;
    status.clear();
    let started = Instant::now();
    let probe_names: Vec<&str> = spec.probes.iter().map(|p| p.name()).collect();
    eprintln!(
        "nettools: tracing {} in {}{}",
        probe_names.join(", "),
        describe_targets(&spec),
        match spec.duration {
            Some(d) => format!(
                " for {}; Ctrl-C stops early and prints the report",
                humantime(d)
            ),
            None => "; Ctrl-C stops and prints the report".to_string(),
        }
    );

    let deadline = spec.duration.map(|d| tokio::time::Instant::now() + d);
    let show_live = spec
        .live
        .unwrap_or(spec.output == Output::Table && spec.out.is_none());
    let mut live = show_live.then(report::live::Live::new);
    // The followed pods move out of the spec, so the rest of it can be read while they change.
    let mut runtime = std::mem::take(&mut spec.runtime);
    loop {
        tokio::select! {
            step = session.step() => {
                if step? == Step::Tick {
                    let session::Probes { loaded, collector, .. } = &mut session.probes;
                    if !follow::tick(&mut runtime, &spec, loaded, &mut collector.traced, started).await? {
                        break;
                    }
                    if let Some(live) = live.as_mut() {
                        let elapsed = started.elapsed().as_secs_f64();
                        let mut summary = session.summarize(elapsed)?;
                        summary.find_problems(spec.thresholds);
                        live.show(&summary, elapsed);
                    }
                }
            }
            _ = stop.requested() => break,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
        }
    }

    session.finish()?;
    let duration_s = started.elapsed().as_secs_f64();
    let mut summary = session.summarize(duration_s)?;
    summary.find_problems(spec.thresholds);
    if let Some(live) = live.as_mut() {
        live.finish();
    }
    let session::Probes {
        loaded, collector, ..
    } = session.probes;
    let session::Collector {
        mut out,
        traced,
        labels,
        kallsyms,
        ..
    } = collector;
    let folded = if spec.output == Output::Flamegraph || spec.folded.is_some() {
        let names = |netns: u32| report::workload_for(netns, &traced, &labels);
        let drops = if spec.stacks.drops() {
            probe::stacks::drop_counts(&loaded.ebpf)?
        } else {
            Vec::new()
        };
        let retransmits = if spec.stacks.retransmits() {
            probe::stacks::retransmit_counts(&loaded.ebpf)?
        } else {
            Vec::new()
        };
        report::flamegraph::folded(
            &drops,
            &retransmits,
            &probe::stacks::read(&loaded.ebpf)?,
            &names,
            &loaded.kernel,
            &kallsyms,
        )
    } else {
        Vec::new()
    };
    match spec.output {
        Output::Table => write!(out, "{}", report::table::render(&summary, spec.verbose)),
        Output::Json => writeln!(out, "{}", json::summary(&summary)),
        Output::Histogram => write!(out, "{}", report::histogram::render(&summary)),
        Output::Flamegraph => {
            let svg = report::flamegraph::svg(&folded, spec.stacks.title())?;
            out.write_all(&svg)
        }
    }
    .and_then(|()| out.flush())
    .context("cannot write the report")?;
    drop(out);
    commit.commit()?;
    if let Some(file) = &table_file {
        file.write(report::table::render(&summary, spec.verbose).as_bytes())?;
    }
    if let Some(file) = &folded_file {
        let mut text = folded.join("\n");
        text.push('\n');
        file.write(text.as_bytes())?;
    }
    if let Some(dir) = &hgrm_dir {
        let files = report::histogram::write_hgrm(dir, &summary)?;
        eprintln!(
            "nettools: wrote {} histogram file(s) to {}",
            files.len(),
            dir.path().display()
        );
    }
    Ok(())
}

/// `5s`, `1m30s`, `250ms`.
pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// The longest duration any flag takes: a year. Longer ones are refused with one sentence
/// rather than overflowing a timer.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `30s`, `500ms`, `2m`, `1h`, `1m30s` or a plain number of seconds, from 1 ms to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let too_long =
        || format!("{text:?} is longer than the longest duration nettools takes (365 days)");
    let mut positive = false;
    let mut seconds = |secs: f64| {
        positive |= secs > 0.0;
        if secs.is_nan() {
            Err(format!(
                "{text:?} is not a duration such as 30s, 500ms or 2m"
            ))
        } else if secs < 0.0 {
            Err(format!("{text:?} is not a positive duration"))
        } else {
            Duration::try_from_secs_f64(secs).map_err(|_| too_long())
        }
    };
    let total = if let Ok(secs) = text.parse::<f64>() {
        seconds(secs)?
    } else {
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("{text:?} needs a unit: ms, s, m or h (e.g. 30s)"))?;
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a duration such as 30s, 500ms or 2m"
                ));
            }
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?} is not a duration such as 30s, 500ms or 2m"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let secs = match unit {
                "ms" => value / 1000.0,
                "s" => value,
                "m" => value * 60.0,
                "h" => value * 3600.0,
                other => {
                    return Err(format!(
                        "unknown unit {other:?} in {text:?}: use ms, s, m or h"
                    ));
                }
            };
            total = total.checked_add(seconds(secs)?).ok_or_else(too_long)?;
        }
        total
    };
    if total > MAX_DURATION {
        return Err(too_long());
    }
    if total < Duration::from_millis(1) {
        return Err(if positive {
            format!("{text:?} is shorter than a millisecond")
        } else {
            format!("{text:?} is not a positive duration")
        });
    }
    Ok(total)
}

/// Parses a size such as `4M`, `256K` or `1048576` (bytes).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1u64),
    };
    let n: u64 = num
        .trim_end_matches(['i', 'I'])
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4M"))?;
    let refused =
        || format!("the ring buffer must be a power of two between 4K and 1G, not {text}");
    let bytes = n.checked_mul(mult).ok_or_else(refused)?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(refused());
    }
    u32::try_from(bytes).map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        // Regression (issue 14): these panicked converting float seconds to a Duration.
        for huge in [
            "1e20",
            "1e400",
            "inf",
            "99999999999999999999h",
            "366d",
            "8761h",
            "1e10m",
        ] {
            let e = parse_duration(huge).err().unwrap_or_default();
            assert!(
                e.contains("longer than the longest duration") || e.contains("unknown unit"),
                "{huge}: {e}"
            );
        }
        assert!(parse_duration("8760h").is_ok());
        assert!(parse_duration("8759h59m60s").is_ok());
        assert!(parse_duration("4380h4380h1s").is_err());
        for bad in ["nan", "-5", "-1s", "1e-20", "0.0000001s", "0ms", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("1e-20"),
            Err("\"1e-20\" is shorter than a millisecond".into())
        );
        assert_eq!(humantime(Duration::from_secs(90)), "1m30s");
        assert_eq!(humantime(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("1K").is_err());
        assert!(parse_size("lots").is_err());
        // Regression (issue 14): the multiplication overflowed.
        assert!(parse_size("99999999999999999G").is_err());
        assert!(parse_size("18446744073709551615K").is_err());
        assert!(parse_size("2G").is_err());
        assert_eq!(parse_size("1G"), Ok(1 << 30));
    }
}

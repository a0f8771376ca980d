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
    collect,
    discover::Workload,
    probe,
    report::{
        self, Output,
        file::{Commit, Destination},
        json,
        text::Safe,
    },
    session::{self, Session, Status, Step, Stop},
    units::humantime,
};

/// Everything a trace needs to know.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    /// Namespaces to trace (empty with `session.all`).
    pub workloads: Vec<Workload>,
    /// What to load and how ([`run`] sets `stacks` from the output asked for).
    pub session: session::Options,
    /// Stop after this long; `None` runs until Ctrl-C / SIGTERM.
    pub duration: Option<Duration>,
    pub output: Output,
    /// Write the report here instead of stdout.
    pub out: Option<PathBuf>,
    /// Also write the table report here.
    pub table: Option<PathBuf>,
    /// What counts as a problem.
    pub thresholds: report::problems::Thresholds,
    /// Write HdrHistogram percentile files (`.hgrm`) here.
    pub hgrm_dir: Option<PathBuf>,
    /// Write the folded stacks here.
    pub folded: Option<PathBuf>,
    /// Which stacks the flame graph and the folded file show.
    pub stacks: report::flamegraph::Stacks,
    /// Show the live view while tracing (`None`: when the table goes to stdout).
    pub live: Option<bool>,
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
    if spec.session.all {
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
    let labels: BTreeMap<u32, Workload> = if spec.session.all {
        let mut labels = crate::discover::netns::labels();
        labels.extend(spec.runtime.labels.clone());
        labels
    } else {
        BTreeMap::new()
    };
    let mut session = Session::start(
        session::Options {
            stacks: spec.output == Output::Flamegraph || spec.folded.is_some(),
            ..spec.session.clone()
        },
        spec.workloads.clone(),
        labels,
        output,
        spec.output == Output::Json,
        &status,
    )?;
    status.clear();
    let started = Instant::now();
    let probe_names: Vec<&str> = spec.session.probes.iter().map(|p| p.name()).collect();
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

    // The trace's length: until now, when the probes start to detach (tracepoints first);
    // detaching the tc links of many veths takes a while that is no part of it.
    let duration_s = started.elapsed().as_secs_f64();
    session.finish()?;
    let grown = session
        .probes
        .rules
        .as_ref()
        .map(collect::rules::Watched::grown_drops);
    let mut summary = session.summarize(duration_s)?;
    if let Some(grown) = &grown {
        for w in &mut summary.workloads {
            w.drops.rules = grown.get(&w.netns).cloned();
        }
    }
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
        Output::Table => write!(
            out,
            "{}",
            report::table::render(&summary, spec.session.verbose)
        ),
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
        file.write(report::table::render(&summary, spec.session.verbose).as_bytes())?;
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

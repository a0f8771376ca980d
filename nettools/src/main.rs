//! The `nettools` command. Errors end the program with one sentence on stderr and exit code 1
//! (`--verbose` adds their causes); nothing here panics on bad input.

use std::process::ExitCode;

use clap::Parser as _;
use nettools::{
    cli::{Cli, Command},
    discover::{self, Workload},
    doctor, lab,
    report::text,
    trace::{self, TraceSpec},
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let level = if cli.verbose {
        "debug,aya=info,aya_obj=info"
    } else {
        "warn"
    };
    // Log lines may quote names from outside (an interface, a runtime's answer): escaped like
    // every other text nettools prints (line breaks kept: the verifier's log has them).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, record| {
            use std::io::Write as _;
            writeln!(
                buf,
                "[{} {}] {}",
                record.level(),
                record.target(),
                text::escape_lines(&record.args().to_string())
            )
        })
        .init();
    // The agent serves HTTP on every core while its own threads drain the kernel's events and
    // ask the runtimes; the other commands run on one thread.
    let runtime = match &cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_multi_thread()
            .max_blocking_threads(16)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nettools: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = cli.verbose;
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Errors quote names from outside (namespaces, pods, interfaces): escaped.
            if verbose {
                eprintln!("nettools: {}", text::escape_lines(&format!("{e:#}")));
            } else {
                eprintln!("nettools: {}", text::escape(&e.to_string()));
            }
            // tcpdump's status for a filter it cannot compile; check's usage errors.
            if e.downcast_ref::<nettools::capture::FilterError>().is_some()
                || e.downcast_ref::<nettools::check::UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `--help` and `--version` print as clap prints them; a usage error (an unknown option, a
/// value out of range) is one sentence and exit code 1, like every other error.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        _ => {
            let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            eprintln!("nettools: {}", nettools::cli::one_sentence(e, &args));
            // `check` keeps 1 for a failure verdict: its usage errors are 2.
            if args
                .iter()
                .skip(1)
                .find(|a| !a.to_string_lossy().starts_with('-'))
                == Some(&std::ffi::OsString::from("check"))
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace(args) => {
            let mut workloads: Vec<Workload> = Vec::new();
            for spec in &args.targets.netns {
                workloads.push(discover::netns::by_name_or_path(spec)?);
            }
            for pid in &args.targets.pid {
                workloads.push(discover::netns::by_pid(*pid)?);
            }
            for iface in &args.targets.iface {
                workloads.push(discover::netns::by_interface(iface)?);
            }
            let mut runtime = trace::follow::RuntimeTrace::default();
            if !args.targets.pod.is_empty() || !args.targets.container.is_empty() {
                let (found, watches) = discover::watch::lookup(
                    &args.targets.pod,
                    args.namespace.as_deref(),
                    &args.targets.container,
                    &args.runtime.sources(),
                    args.follow,
                )
                .await?;
                workloads.extend(found);
                runtime.watches = watches;
            }
            if args.targets.all {
                runtime.labels = discover::inventory::Inventory::gather(&args.runtime.sources())
                    .await
                    .labels();
            }
            // The same namespace named twice is traced once (interfaces are kept apart).
            let mut seen = std::collections::HashSet::new();
            workloads
                .retain(|w| w.kind == discover::WorkloadKind::Interface || seen.insert(w.netns));
            let mut probes = if args.probes.is_empty() {
                nettools::probe::ProbeKind::DEFAULT.to_vec()
            } else {
                args.probes.clone()
            };
            probes.sort();
            probes.dedup();
            trace::run(TraceSpec {
                workloads,
                session: nettools::session::Options {
                    probes,
                    all: args.targets.all,
                    ring_buffer_bytes: args.ring_buffer,
                    tc_mode: args.tc_mode,
                    timeout: args.timeout,
                    transit_sample_shift: args.transit_sample.trailing_zeros(),
                    stacks: false,
                    verbose: cli.verbose,
                    rules: args.rules,
                },
                duration: args.duration,
                output: args.output,
                out: args.out,
                table: args.table.clone(),
                thresholds: args.thresholds.thresholds(),
                hgrm_dir: args.hgrm.clone(),
                folded: args.folded.clone(),
                stacks: args.stacks,
                live: match (args.live, args.no_live) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                runtime,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => {
            nettools::list::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => Ok(if doctor::run() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Serve(args) => {
            nettools::serve::run(&args, cli.verbose).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => {
            lab::demo::run(&args, cli.verbose).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Capture(args) => {
            nettools::capture::run_command(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => Ok(if nettools::check::run(&args, cli.verbose).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    }
}

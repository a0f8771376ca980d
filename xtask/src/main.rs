//! `cargo xtask`: everything a developer or CI runs, each command setting up what it needs first.
//!
//! - `setup`: install the BPF toolchain and the lab tools on a fresh Debian machine (no-op when
//!   everything is present).
//! - `build [--release]`: build nettools (the eBPF object is built once, by nettools/build.rs).
//! - `test [--quick] [--no-vm]`: formatting, clippy, unit tests, then the integration tests as
//!   root, one at a time (they build real network labs in this kernel), then the same tests on
//!   the kernel matrix under QEMU.
//! - `vmtest [--kernel VERSION]…`: the integration tests on other kernels, under QEMU.
//! - `image [--arch x86_64|arm64|all] [--no-import]`: build the container image offline and
//!   import it into Podman (arm64 and a manifest list of both too).
//! - `lab [ARGS…]`: build and run `nettools lab`, the demo.
//! - `fuzz [SECONDS]`: fuzz the DNS parser.
//! - `bench [--quick] [--only SECTION]`: what tracing costs, next to tcpdump and bpftrace (BENCHMARKS.md).

mod bench;
mod cross;
mod emulation;
mod fuzz;
mod image;
mod process;
mod setup;
mod test;
mod vmtest;

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup [--arch arm64]
                   install what building and testing need (apt packages, bpf-linker); no-op when
                   present. --arch arm64 also what building for arm64 needs (dpkg's arm64
                   architecture, gcc-aarch64-linux-gnu, Debian's arm64 Rust library, libpcap)
  build [--release] [--target aarch64-unknown-linux-gnu]
                   build nettools (and its eBPF object); --target: a static arm64 binary under
                   target/aarch64/ (the same eBPF object)
  test [--quick] [--no-vm]
                   fmt + clippy + unit tests + integration tests (root; real network labs), then
                   the kernel matrix (vmtest). --quick skips fmt and clippy, --no-vm the matrix
                   (also NETTOOLS_NO_VM=1)
  vmtest [--arch x86_64|arm64|all] [--kernel VERSION]... [--jobs N] [--shards N]
         [--timeout SECONDS] [--verbose] [-- TEST-ARGS...]
                   the integration tests on Debian kernels booted under QEMU (-accel tcg).
                   VERSION: a series (5.10, 6.1, 6.12, 6.18, 7.3), an exact release or `newest`;
                   default 5.10 6.1 6.12 6.18 newest (arm64: 6.1 newest). --arch arm64 boots
                   Debian's arm64 cloud kernels under qemu-system-aarch64 with the static arm64
                   build (setup --arch arm64). --jobs: guests at a time (default 2);
                   --shards: guests per kernel, each running part of the test binaries (default 2).
                   TEST-ARGS go to every test binary
  image [--arch x86_64|arm64|all] [--no-import]
                   build the container image offline (debootstrap + toolbox + release nettools)
                   and import it into Podman as localhost/nettools:latest. --arch arm64: the
                   arm64 image (debootstrap's second stage under qemu-user-static, ~10 min),
                   imported as localhost/nettools:latest-arm64; all: both, and the manifest list
                   localhost/nettools:multiarch naming them (push it with podman manifest push)
  lab [ARGS...]    build and run `nettools lab ARGS...`: a throwaway lab with a firewall drop, traced
  fuzz [SECONDS]   fuzz the DNS parser (cargo-fuzz on nightly; default 60 s)
  bench [--quick] [--only throughput|costs|capture|storm|memory|scale|pipeline]
         [--nettools PATH]
                   root: overhead next to tcpdump and bpftrace, per-program cost, drop storm,
                   memory, attach time, in a throwaway lab (a few minutes; --quick: a smoke run)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The value after `name` in `args`, if `name` is there.
fn option_value<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .map(|v| Some(v.as_str()))
            .with_context(|| format!("{name} needs a value")),
    }
}

fn run(args: &[String]) -> Result<()> {
    let (command, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => {
            eprint!("{USAGE}");
            bail!("no command given");
        }
    };
    // `cargo xtask COMMAND --help` prints the usage (but `lab --help` is nettools' own).
    if command != "lab"
        && rest
            .iter()
            .take_while(|a| *a != "--")
            .any(|a| a == "--help" || a == "-h")
    {
        print!("{USAGE}");
        return Ok(());
    }
    let known = |allowed: &[&str]| -> Result<()> {
        match rest.iter().find(|a| !allowed.contains(&a.as_str())) {
            Some(a) => {
                eprint!("{USAGE}");
                bail!("{command}: unknown option {a:?}")
            }
            None => Ok(()),
        }
    };
    match command {
        "setup" => {
            known(&["--arch", "arm64"])?;
            setup::run()?;
            if rest.iter().any(|a| a == "--arch") {
                setup::arm64()?;
            }
            Ok(())
        }
        "build" => {
            let target = option_value(rest, "--target")?;
            let release = rest.iter().any(|a| a == "--release");
            match target {
                Some(target) => {
                    known(&["--release", "--target", target])?;
                    cross::check_target(target)?;
                    setup::run()?;
                    setup::arm64()?;
                    let bin = cross::build(release)?;
                    eprintln!("xtask: arm64 binary: {}", bin.display());
                    Ok(())
                }
                None => {
                    known(&["--release"])?;
                    setup::run()?;
                    process::build_nettools(release).map(|_| ())
                }
            }
        }
        "test" => {
            known(&["--quick", "--no-vm"])?;
            setup::run()?;
            let no_vm = rest.iter().any(|a| a == "--no-vm")
                || std::env::var_os("NETTOOLS_NO_VM").is_some_and(|v| v != "0" && !v.is_empty());
            test::run(rest.iter().any(|a| a == "--quick"), !no_vm)
        }
        "vmtest" => {
            setup::run()?;
            vmtest::run(rest)
        }
        "image" => {
            setup::run()?;
            image::run(rest)
        }
        "lab" => {
            setup::run()?;
            let bin = process::build_nettools(true)?;
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("lab").args(rest);
            process::status(&mut cmd)
        }
        "fuzz" => {
            setup::run()?;
            let seconds = rest.first().and_then(|s| s.parse().ok()).unwrap_or(60);
            fuzz::run(seconds)
        }
        "bench" => {
            if !setup::is_root() {
                bail!("the bench builds network labs and loads eBPF: run it as root");
            }
            setup::run()?;
            setup::install(bench::PACKAGES)?;
            bench::check_tools()?;
            // --nettools PATH measures another build (e.g. the last release, for before/after
            // figures from one machine); by default this tree's release build.
            let bin = match rest.iter().position(|a| a == "--nettools") {
                Some(i) => {
                    let path = rest
                        .get(i + 1)
                        .context("--nettools takes the path of a nettools binary")?;
                    std::path::PathBuf::from(path)
                }
                None => process::build_nettools(true)?,
            };
            let only = rest
                .iter()
                .position(|a| a == "--only")
                .map(|i| rest.get(i + 1).map(String::as_str).unwrap_or(""));
            if let Some(o) = only
                && !bench::SECTIONS.contains(&o)
            {
                bail!("--only takes one of {}", bench::SECTIONS.join(", "));
            }
            bench::run(&bin, rest.iter().any(|a| a == "--quick"), only)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

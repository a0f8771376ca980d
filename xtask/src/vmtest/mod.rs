//! `cargo xtask vmtest`: the same nettools binary and integration tests, run on other kernels.
//!
//! For each kernel (by default 5.10, 6.1, 6.12, 6.18 and the newest Debian has): fetch the
//! Debian cloud kernel through apt (kernel.rs), build an initramfs with the tools, the nettools
//! binary, the test binaries and the kernel's modules (image.rs), boot it under
//! `qemu-system-x86_64 -accel tcg` and read the verdict from the serial console (serial.rs).
//! Everything lives under `target/vmtest/`: `apt/` (private apt state), `kernels/<release>/`
//! (unpacked kernels), `images/` (initramfs parts, reused while their inputs are unchanged) and
//! `logs/<release>.log` (each guest's whole serial output).

pub mod arch;
mod cpio;
mod image;
mod kernel;
mod root;
mod serial;
mod shard;

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::process::{cargo, step};

/// Time one kernel may take to boot and run every test before it counts as failed.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Guests at a time: one per core of a 2-core CI machine. A guest runs one test at a time, so
/// one virtual CPU keeps it as fast as two (measured: 124–150 s against 146–183 s for 6.12 on a
/// shared machine), and two guests use both cores. Multi-CPU behaviour (per-CPU maps) is covered
/// by the host's own run.
const DEFAULT_JOBS: usize = 2;
/// Guests per kernel, each running part of the test binaries (shard.rs says why).
const DEFAULT_SHARDS: usize = 2;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Kernels asked for; empty: each architecture's defaults (Arch::default_kernels).
    pub kernels: Vec<String>,
    /// Architectures, each with its own guests (x86_64 by default).
    pub arches: Vec<arch::Arch>,
    pub timeout: Duration,
    pub verbose: bool,
    pub test_args: Vec<String>,
    /// Guests booted at the same time, each with one virtual CPU.
    pub jobs: usize,
    /// Guests per kernel, each running its share of the test binaries.
    pub shards: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            arches: vec![arch::Arch::X86_64],
            timeout: DEFAULT_TIMEOUT,
            verbose: false,
            test_args: Vec::new(),
            jobs: DEFAULT_JOBS,
            shards: DEFAULT_SHARDS,
        }
    }
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut kernels = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--kernel" | "-k" => kernels.push(
                    it.next()
                        .context("--kernel needs a version, e.g. --kernel 5.10")?
                        .clone(),
                ),
                "--timeout" => {
                    let v = it.next().context("--timeout needs a number of seconds")?;
                    let secs: u64 = v
                        .parse()
                        .with_context(|| format!("--timeout {v:?} is not a number of seconds"))?;
                    o.timeout = Duration::from_secs(secs);
                }
                "--verbose" | "-v" => o.verbose = true,
                "--arch" => {
                    o.arches =
                        arch::Arch::parse(it.next().context("--arch needs x86_64, arm64 or all")?)?;
                }
                "--jobs" | "-j" => {
                    let v = it.next().context("--jobs needs a number of guests")?;
                    o.jobs = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--jobs {v:?} is not a number of guests"))?;
                }
                "--shards" => {
                    let v = it
                        .next()
                        .context("--shards needs a number of guests per kernel")?;
                    o.shards = v.parse().ok().filter(|n| *n > 0).with_context(|| {
                        format!("--shards {v:?} is not a number of guests per kernel")
                    })?;
                }
                "--" => {
                    o.test_args = it.cloned().collect();
                    break;
                }
                other => bail!("vmtest: unknown option {other:?}"),
            }
        }
        o.kernels = kernels;
        Ok(o)
    }

    /// The kernels to boot for `arch`.
    fn kernels_for(&self, arch: arch::Arch) -> Vec<String> {
        if self.kernels.is_empty() {
            arch.default_kernels()
                .iter()
                .map(|k| k.to_string())
                .collect()
        } else {
            self.kernels.clone()
        }
    }
}

/// The outcome for one kernel.
enum Verdict {
    Passed(serial::Outcome),
    Failed(String, Option<serial::Outcome>),
    Skipped(String),
}

struct Row {
    spec: String,
    release: String,
    /// Debian package version.
    version: String,
    verdict: Verdict,
    seconds: f64,
    log: Option<PathBuf>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::process::workspace().join("target"))
}

fn display(path: &Path) -> String {
    let ws = crate::process::workspace();
    path.strip_prefix(&ws).unwrap_or(path).display().to_string()
}

/// Builds the integration test binaries (for `arch`, with the eBPF object of the host's build
/// when it is foreign) and returns them by name.
fn build_tests(arch: arch::Arch, ebpf_object: Option<&Path>) -> Result<image::TestBinaries> {
    // A foreign architecture's tests are built like its nettools: release, with the host's
    // eBPF object, reusing that build's dependencies.
    let (mut cmd, extra): (Command, &[&str]) = match (arch, ebpf_object) {
        (arch::Arch::X86_64, _) => (cargo(), &[]),
        (arch::Arch::Arm64, Some(object)) => (
            crate::cross::cargo_arm64(object)?,
            &["--release", "--target", crate::cross::ARM64],
        ),
        (arch::Arch::Arm64, None) => bail!("the arm64 tests need the host's eBPF object"),
    };
    let out = cmd
        .args([
            "test",
            "--package",
            "nettools-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            tests.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if tests.is_empty() {
        bail!("cargo built no integration test binaries for nettools-tests");
    }
    tests.sort();
    Ok(tests)
}

/// A key that changes whenever one of these files (or the extra text) changes.
fn fingerprint(files: &[&Path], extra: &str) -> String {
    let mut h = DefaultHasher::new();
    extra.hash(&mut h);
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    format!("{:016x}", h.finish())
}

/// The userspace archive, rebuilt only when nettools, a test binary or the guest init changed.
fn userspace_image(
    dirs: &Dirs,
    root: &Path,
    nettools: &Path,
    tests: &image::TestBinaries,
    test_args: &[String],
    shards: &[Vec<String>],
) -> Result<PathBuf> {
    let mut files: Vec<&Path> = vec![nettools];
    files.extend(tests.iter().map(|(_, p)| p.as_path()));
    let key = fingerprint(
        &files,
        &format!("{}{tests:?}{test_args:?}{shards:?}", image::userspace_key()),
    );
    let images = &dirs.images;
    let path = images.join(format!("userspace-{key}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    let scratch = images.join("scratch");
    let mut bytes = match dirs.arch {
        arch::Arch::X86_64 => image::userspace(nettools, tests, &scratch)?,
        arch => {
            let guest_root = root::make(arch, root, &kernel::mirror())?;
            image::userspace_foreign(arch, &guest_root, nettools, tests, &scratch)?
        }
    };
    if !test_args.is_empty() {
        let mut args = cpio::Archive::new();
        args.file(
            "vmtest/test-args",
            (test_args.join("\n") + "\n").into_bytes(),
            false,
        )?;
        bytes.extend(args.to_bytes()?);
    }
    let mut lists = cpio::Archive::new();
    for (k, binaries) in shards.iter().enumerate() {
        lists.file(
            &format!("vmtest/shards/{k}.list"),
            (binaries.join("\n") + "\n").into_bytes(),
            false,
        )?;
    }
    bytes.extend(lists.to_bytes()?);
    remove_matching(images, "userspace-", ".cpio");
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The modules archive of one kernel, built once per kernel and module list.
fn modules_image(images: &Path, k: &kernel::Kernel) -> Result<PathBuf> {
    let key = fingerprint(&[], &image::modules_key());
    let path = images.join(format!("modules-{}-{key}.cpio", k.release));
    if path.exists() {
        return Ok(path);
    }
    let (bytes, _) = image::modules(k)?;
    remove_matching(images, &format!("modules-{}-", k.release), ".cpio");
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Removes modules archives of kernels no longer in the cache (superseded by a newer release).
fn remove_orphan_images(images: &Path, kernels: &Path) {
    let Ok(entries) = std::fs::read_dir(images) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // modules-<release>-<key>.cpio
        let release = name
            .strip_prefix("modules-")
            .and_then(|r| r.strip_suffix(".cpio"))
            .and_then(|r| r.rsplit_once('-'))
            .map(|(release, _)| release);
        if let Some(release) = release
            && !kernels.join(release).is_dir()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn remove_matching(dir: &Path, prefix: &str, suffix: &str) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(suffix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Boots one kernel with this initramfs and collects its serial output.
fn boot(
    arch: arch::Arch,
    k: &kernel::Kernel,
    initrd: &Path,
    log_path: &Path,
    shard: usize,
    opts: &Options,
) -> Result<serial::Outcome> {
    let qemu = arch.qemu();
    let mut child = Command::new(qemu)
        // /dev/kvm here hangs QEMU (see NOTES.md); CI machines may lack it anyway.
        .args([
            "-accel",
            "tcg",
            "-m",
            "1536",
            "-smp",
            "1",
            "-nodefaults",
            "-nographic",
        ])
        .args(arch.machine())
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console={} panic=-1 quiet mitigations=off vmtest.shard={shard}",
            arch.console()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {qemu} (cargo xtask setup installs {})",
                arch.qemu_package()
            )
        })?;
    let log = Arc::new(Mutex::new(String::new()));
    let mut file = std::fs::File::create(log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let stdout = child.stdout.take().context("no pipe from QEMU")?;
    let stderr = child.stderr.take().context("no pipe from QEMU")?;
    let (sink, verbose, release) = (log.clone(), opts.verbose, guest_name(k, shard, opts));
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            let _ = writeln!(file, "{line}");
            if verbose {
                eprintln!("[{release}] {line}");
            } else if line.starts_with("@@vmtest result")
                || (line.starts_with("test ") && line.ends_with("FAILED"))
            {
                eprintln!(
                    "xtask: vmtest: {release}: {}",
                    line.trim_start_matches("@@vmtest ")
                );
            }
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let started = Instant::now();
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > opts.timeout {
            // Our own QEMU, by its PID (Child::kill).
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = reader.join();
    let qemu_errors = errors.join().unwrap_or_default();
    let text = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut outcome = serial::parse(&text);
    if timed_out {
        outcome.timed_out_after = Some(opts.timeout.as_secs());
    }
    if outcome.release.is_none() && !qemu_errors.trim().is_empty() {
        bail!("QEMU failed: {}", qemu_errors.trim());
    }
    Ok(outcome)
}

/// The part of the log that says why tests failed (libtest's failure reports), for CI output.
fn failure_excerpt(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "failures:" {
            inside = true;
        } else if line.starts_with("test result:") {
            inside = false;
        }
        if inside || line.starts_with("@@vmtest module-failed") {
            out.push(line);
        }
    }
    if out.is_empty() {
        // No libtest report: the last lines say how the guest ended.
        out = text.lines().rev().take(30).collect();
        out.reverse();
    }
    let total = out.len();
    let shown: Vec<&str> = out.into_iter().take(150).collect();
    let mut s = shown.join("\n");
    if total > shown.len() {
        s.push_str(&format!(
            "\n… ({} more lines in the log)",
            total - shown.len()
        ));
    }
    s
}

/// A kernel fetched and imaged, ready to boot.
struct Ready {
    arch: arch::Arch,
    kernel: kernel::Kernel,
    initrd: PathBuf,
}

/// One kernel, first half: fetch and image (sequential: apt's state is shared). A kernel that
/// cannot be had gets its row now, as skipped.
fn prepare(
    spec: &str,
    apt: &Result<kernel::Apt>,
    dirs: &Dirs,
    userspace: &Path,
    done: &[String],
) -> (Row, Option<Ready>) {
    let mut row = Row {
        spec: spec.to_string(),
        release: "-".to_string(),
        version: String::new(),
        verdict: Verdict::Skipped(String::new()),
        seconds: 0.0,
        log: None,
    };
    let k = match kernel::fetch(spec, apt, &dirs.kernels) {
        Ok(k) => k,
        Err(e) => {
            row.verdict = Verdict::Skipped(format!("cannot fetch kernel {spec}: {e:#}"));
            return (row, None);
        }
    };
    row.release = k.release.clone();
    row.version = k.package_version.clone();
    if done.contains(&k.release) {
        row.verdict = Verdict::Skipped(format!("same kernel as above ({})", k.release));
        return (row, None);
    }
    match modules_image(&dirs.images, &k).and_then(|modules| {
        let path = dirs.images.join(format!("initrd-{}.cpio", k.release));
        let mut bytes = std::fs::read(&modules)?;
        bytes.extend(std::fs::read(userspace)?);
        std::fs::write(&path, bytes)?;
        Ok(path)
    }) {
        Ok(initrd) => (
            row,
            Some(Ready {
                arch: dirs.arch,
                kernel: k,
                initrd,
            }),
        ),
        Err(e) => {
            row.verdict = Verdict::Skipped(format!("cannot build its initramfs: {e:#}"));
            (row, None)
        }
    }
}

/// A guest's name in messages and its log's: the release, with its shard when a kernel has
/// several guests.
fn guest_name(k: &kernel::Kernel, shard: usize, opts: &Options) -> String {
    if opts.shards > 1 {
        format!("{}#{shard}", k.release)
    } else {
        k.release.clone()
    }
}

/// What one guest (one shard of one kernel) did.
struct ShardRun {
    outcome: std::result::Result<serial::Outcome, String>,
    seconds: f64,
    log: PathBuf,
}

/// One kernel, second half: boot one of its guests and read its verdict.
fn run_shard(ready: &Ready, shard: usize, dirs: &Dirs, opts: &Options) -> ShardRun {
    let k = &ready.kernel;
    let name = guest_name(k, shard, opts);
    let log = dirs
        .logs
        .join(format!("{}.log", name.replace('#', "-shard")));
    eprintln!("xtask: vmtest: booting {name} under QEMU (TCG)");
    let booted = Instant::now();
    let outcome = match boot(ready.arch, k, &ready.initrd, &log, shard, opts) {
        Err(e) => Err(format!("{e:#}")),
        Ok(o) if o.release.as_deref().is_some_and(|r| r != k.release) => Err(format!(
            "the guest runs {} instead of {}",
            o.release.clone().unwrap_or_default(),
            k.release
        )),
        Ok(o) => Ok(o),
    };
    let run = ShardRun {
        outcome,
        seconds: booted.elapsed().as_secs_f64(),
        log,
    };
    if !run.outcome.as_ref().is_ok_and(serial::Outcome::passed) {
        eprintln!(
            "xtask: vmtest: {name} failed; from {}:\n{}",
            display(&run.log),
            failure_excerpt(&run.log)
        );
    }
    run
}

/// A kernel's row from its guests: passed only if every guest finished and passed.
fn finish(row: &mut Row, runs: Vec<ShardRun>) {
    row.seconds = runs.iter().map(|r| r.seconds).sum();
    let mut outcomes = Vec::new();
    let mut broken = None;
    for run in runs {
        match run.outcome {
            Ok(o) => {
                if !o.passed() && row.log.is_none() {
                    row.log = Some(run.log.clone());
                }
                outcomes.push(o);
            }
            Err(e) => {
                row.log.get_or_insert(run.log);
                broken.get_or_insert(e);
            }
        }
    }
    let merged = shard::merge(outcomes);
    row.verdict = match broken {
        Some(why) => Verdict::Failed(why, Some(merged)),
        None if merged.passed() => Verdict::Passed(merged),
        None => Verdict::Failed(merged.problem(), Some(merged)),
    };
}

struct Dirs {
    arch: arch::Arch,
    kernels: PathBuf,
    images: PathBuf,
    logs: PathBuf,
}

/// Runs one architecture's kernels with an already built nettools binary for it: their rows.
fn run_arch(
    arch: arch::Arch,
    nettools: &Path,
    ebpf_object: Option<&Path>,
    opts: &Options,
) -> Result<Vec<Row>> {
    let root = target_dir().join("vmtest").join(arch.subdir());
    let dirs = Dirs {
        arch,
        kernels: root.join("kernels"),
        images: root.join("images"),
        logs: root.join("logs"),
    };
    for d in [&dirs.kernels, &dirs.images, &dirs.logs] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let tests = build_tests(arch, ebpf_object)?;
    // An architecture's first run weighs its binaries by x86_64's logs: the same tests, in
    // proportion (arm64's first run, by test counts alone, put 350 s in one guest and the heavy
    // binaries, 1200 s and more, in the other).
    let x86_logs = target_dir().join("vmtest").join("logs");
    let has_logs = |d: &Path| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some());
    let weigh_by = if has_logs(&dirs.logs) {
        &dirs.logs
    } else {
        &x86_logs
    };
    let shards = shard::partition(&shard::weights(&tests, weigh_by), opts.shards);
    let mut userspace = PathBuf::new();
    step("vmtest: guest userspace image", || {
        userspace = userspace_image(&dirs, &root, nettools, &tests, &opts.test_args, &shards)?;
        Ok(())
    })?;
    let apt = kernel::Apt::new(&root.join("apt"), arch).and_then(|a| a.update().map(|()| a));
    if let Err(e) = &apt {
        eprintln!("xtask: vmtest: {e:#}; only cached kernels can run");
    }
    let mut prepared: Vec<(Row, Option<Ready>)> = Vec::new();
    for spec in &opts.kernels_for(arch) {
        let done: Vec<String> = prepared
            .iter()
            .filter(|(_, ready)| ready.is_some())
            .map(|(r, _)| r.release.clone())
            .collect();
        prepared.push(prepare(spec, &apt, &dirs, &userspace, &done));
    }
    // Guests run `opts.jobs` at a time, each on one virtual CPU; each kernel has one guest per
    // shard, taken in order so that a kernel's guests run side by side.
    let work: Vec<(usize, usize)> = prepared
        .iter()
        .enumerate()
        .filter(|(_, (_, ready))| ready.is_some())
        .flat_map(|(i, _)| (0..shards.len()).map(move |k| (i, k)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let runs: Vec<Mutex<Option<ShardRun>>> = work.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (Some(&(i, k)), Some(slot)) = (work.get(n), runs.get(n)) else {
                        break;
                    };
                    if let Some((_, Some(ready))) = prepared.get(i) {
                        let run = run_shard(ready, k, &dirs, opts);
                        if let Ok(mut slot) = slot.lock() {
                            *slot = Some(run);
                        }
                    }
                }
            });
        }
    });
    let mut runs: Vec<Option<ShardRun>> = runs
        .into_iter()
        .map(|m| m.into_inner().ok().flatten())
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    for (i, (mut row, ready)) in prepared.into_iter().enumerate() {
        if let Some(ready) = ready {
            let mine: Vec<ShardRun> = work
                .iter()
                .zip(runs.iter_mut())
                .filter(|((w, _), _)| *w == i)
                .filter_map(|(_, r)| r.take())
                .collect();
            if mine.len() == shards.len() {
                finish(&mut row, mine);
            } else {
                row.verdict = Verdict::Failed("a guest runner thread panicked".into(), None);
            }
            let _ = std::fs::remove_file(&ready.initrd);
        }
        rows.push(row);
    }
    remove_orphan_images(&dirs.images, &dirs.kernels);
    // A kernel asked for twice (e.g. `newest` is also 6.18's release) is not a skip.
    rows.retain(|r| !matches!(&r.verdict, Verdict::Skipped(w) if w.starts_with("same kernel")));
    Ok(rows)
}

/// Runs the matrix for every architecture asked for; fails unless every kernel passed.
fn run_with(opts: &Options) -> Result<()> {
    let started = Instant::now();
    let mut rows = Vec::new();
    for arch in &opts.arches {
        let (nettools, object) = match arch {
            arch::Arch::X86_64 => (crate::process::build_nettools(true)?, None),
            arch::Arch::Arm64 => {
                crate::setup::arm64()?;
                crate::setup::install(&[arch.qemu_package()])?;
                let object = crate::cross::ebpf_object(true)?;
                (crate::cross::build(true)?, Some(object))
            }
        };
        rows.extend(run_arch(*arch, &nettools, object.as_deref(), opts)?);
    }
    print_summary(&rows, started.elapsed());
    let bad = rows
        .iter()
        .filter(|r| !matches!(r.verdict, Verdict::Passed(_)))
        .count();
    if bad > 0 {
        bail!("{bad} of {} kernels did not pass (see above)", rows.len());
    }
    Ok(())
}

/// Skipped tests grouped by reason: one line per reason.
fn skipped_lines(skipped: &[(String, String)]) -> Vec<String> {
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (test, reason) in skipped {
        match reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, tests)) => tests.push(test),
            None => reasons.push((reason, vec![test])),
        }
    }
    reasons
        .into_iter()
        .map(|(reason, tests)| match tests.as_slice() {
            [one] => format!("skipped {one}: {reason}"),
            [first, ..] => format!("skipped {} tests ({first}, …): {reason}", tests.len()),
            [] => String::new(),
        })
        .collect()
}

fn print_summary(rows: &[Row], elapsed: Duration) {
    println!("kernel matrix (QEMU -accel tcg, integration tests one at a time):");
    let width = rows.iter().map(|r| r.release.len()).max().unwrap_or(1);
    for r in rows {
        let (word, detail) = match &r.verdict {
            Verdict::Passed(o) => (
                "passed",
                format!(
                    "{} tests{}",
                    o.passed.len(),
                    if o.skipped.is_empty() {
                        String::new()
                    } else {
                        format!(", {} skipped in the guest", o.skipped.len())
                    }
                ),
            ),
            Verdict::Failed(why, _) => ("FAILED", why.clone()),
            Verdict::Skipped(why) => ("skipped", why.clone()),
        };
        let time = if r.seconds > 0.0 {
            format!("{:>5.0} s  ", r.seconds)
        } else {
            "         ".to_string()
        };
        let version = if r.version.is_empty() {
            String::new()
        } else {
            format!("  [Debian {}]", r.version)
        };
        println!(
            "  {:<7} {:<width$}  {word:<7}  {time}{detail}{version}",
            r.spec, r.release
        );
        if let Verdict::Passed(o) | Verdict::Failed(_, Some(o)) = &r.verdict {
            for line in skipped_lines(&o.skipped) {
                println!("            {line}");
            }
            for m in &o.modules_failed {
                println!("            module {m} did not load");
            }
        }
        if let (Verdict::Failed(..), Some(log)) = (&r.verdict, &r.log) {
            println!("            log: {}", display(log));
        }
    }
    let count = |f: fn(&Verdict) -> bool| rows.iter().filter(|r| f(&r.verdict)).count();
    println!(
        "kernel matrix: {} passed, {} failed, {} skipped in {:.0} s",
        count(|v| matches!(v, Verdict::Passed(_))),
        count(|v| matches!(v, Verdict::Failed(..))),
        count(|v| matches!(v, Verdict::Skipped(_))),
        elapsed.as_secs_f64()
    );
}

/// `cargo xtask vmtest`: builds nettools and runs the matrix. The guest runs the release build:
/// it is what ships, and under software emulation it is five times faster than the debug build
/// (nettools parses the kernel's BTF at every start: 83 s against 17 s for the same tests).
pub fn run(args: &[String]) -> Result<()> {
    let opts = Options::parse(args)?;
    run_with(&opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_grouped_by_reason() {
        let s = |t: &str, r: &str| (t.to_string(), r.to_string());
        let lines = skipped_lines(&[
            s("runtimes::a", "no runtimes"),
            s("traffic::x", "no tcx"),
            s("runtimes::b", "no runtimes"),
        ]);
        assert_eq!(
            lines,
            [
                "skipped 2 tests (runtimes::a, …): no runtimes",
                "skipped traffic::x: no tcx"
            ]
        );
    }

    #[test]
    fn options() -> Result<()> {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = Options::parse(&[])?;
        assert!(o.kernels.is_empty());
        assert_eq!(
            o.kernels_for(arch::Arch::X86_64),
            arch::Arch::X86_64.default_kernels()
        );
        assert_eq!(o.arches, [arch::Arch::X86_64]);
        assert_eq!(
            Options::parse(&args(&["--arch", "all"]))?.arches,
            [arch::Arch::X86_64, arch::Arch::Arm64]
        );
        assert!(Options::parse(&args(&["--arch", "mips"])).is_err());
        let o = Options::parse(&args(&[
            "--kernel", "5.10", "-k", "newest", "--", "drops", "--exact",
        ]))?;
        assert_eq!(o.kernels, ["5.10", "newest"]);
        assert_eq!(o.test_args, ["drops", "--exact"]);
        assert_eq!(o.jobs, DEFAULT_JOBS);
        assert_eq!(Options::parse(&args(&["-j", "1"]))?.jobs, 1);
        assert!(Options::parse(&args(&["--jobs", "0"])).is_err());
        assert_eq!(o.shards, DEFAULT_SHARDS);
        assert_eq!(Options::parse(&args(&["--shards", "3"]))?.shards, 3);
        assert!(Options::parse(&args(&["--shards", "0"])).is_err());
        assert!(Options::parse(&args(&["--kernel"])).is_err());
        assert!(Options::parse(&args(&["--timeout", "soon"])).is_err());
        assert!(Options::parse(&args(&["--bogus"])).is_err());
        Ok(())
    }
}

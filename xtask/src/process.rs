//! Running commands (their output shown, or captured), and building nettools.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command with inherited stdio and fails when it fails.
pub fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    output_bytes(cmd).map(|out| String::from_utf8_lossy(&out).into_owned())
}

/// Runs a command and returns its stdout as bytes (a decompressed file, say), failing with its
/// stderr.
pub fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Runs one named step, printing how long it took.
pub fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("xtask: == {name}");
    let started = Instant::now();
    let result = f();
    eprintln!(
        "xtask: == {name}: {} in {:.1} s",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    result.with_context(|| format!("step `{name}` failed"))
}

/// `cargo` from the toolchain running xtask.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

/// Builds the nettools binary and returns its path.
pub fn build_nettools(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "nettools"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("nettools"))
}

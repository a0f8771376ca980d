//! Bad inputs end with one plain sentence and a non-zero exit, never a panic or a raw errno.

use anyhow::Result;
use nettools_tests::*;

fn assert_one_sentence(out: &std::process::Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("os error"), "raw errno: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one sentence expected, got: {stderr}");
    assert!(
        lines[0].starts_with("nettools: ") && lines[0].contains(expected),
        "{stderr}"
    );
}

#[test]
fn unknown_namespace() -> Result<()> {
    require_root();
    let out = nettools(&["trace", "--netns", "no-such-namespace-here", "-d", "1s"])?;
    assert_one_sentence(
        &out,
        "no network namespace named \"no-such-namespace-here\"",
    );
    let out = nettools(&["trace", "--netns", "/etc/hostname", "-d", "1s"])?;
    assert_one_sentence(&out, "is not a network namespace");
    let out = nettools(&["trace", "--pid", "999999999", "-d", "1s"])?;
    assert_one_sentence(&out, "there is no process with pid 999999999");
    Ok(())
}

#[test]
fn not_privileged() -> Result<()> {
    require_root();
    // Root without any capability: what a non-root user or an unprivileged container has.
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(nettools_bin())
        .args(["trace", "--all", "-d", "1s"])
        .output()?;
    assert_one_sentence(&out, "nettools needs root");
    Ok(())
}

#[test]
fn no_btf() -> Result<()> {
    require_root();
    let out = std::process::Command::new(nettools_bin())
        .args(["trace", "--all", "-d", "1s"])
        .env("NETTOOLS_BTF", "/nonexistent/vmlinux")
        .output()?;
    assert_one_sentence(&out, "no BTF");
    Ok(())
}

#[test]
fn bad_duration_is_refused_by_the_parser() -> Result<()> {
    let out = nettools(&["trace", "--all", "-d", "ten"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not a duration such as 30s"), "{stderr}");
    Ok(())
}

#[test]
fn doctor_passes_here() -> Result<()> {
    require_root();
    let out = nettools(&["doctor"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok    eBPF programs: every probe loads and passes the verifier"),
        "{stdout}"
    );
    Ok(())
}

/// The verifier sees different code for each probe set (disabled probes are pruned), so each
/// probe must load on its own too, not only all together.
#[test]
fn every_probe_loads_on_its_own() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.239.0.1/24", None)?;
    for probe in [
        "drops",
        "retransmits",
        "neighbours",
        "traffic",
        "handshake",
        "dns",
        "icmp",
        "transit",
    ] {
        let out = nettools(&[
            "trace", "--netns", &a.netns, "--probes", probe, "-d", "200ms",
        ])?;
        assert!(
            out.status.success(),
            "{probe}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

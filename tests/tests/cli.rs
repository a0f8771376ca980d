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
    assert_one_sentence(&out, "is not a duration such as 30s");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("; see `nettools trace --help`\n"),
        "{stderr}"
    );
    Ok(())
}

/// Regression (issue 14): `--duration 1e20` panicked converting float seconds to a Duration,
/// a huge `--ring-buffer` overflowed. Every duration and size flag of every command: one
/// sentence, exit code 1, before anything is done.
#[test]
fn overflowing_durations_and_sizes_are_one_sentence() -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (
            &["trace", "--all", "--duration", "1e20"],
            "longer than the longest duration",
        ),
        (
            &["trace", "--all", "-d", "99999999999999999999h"],
            "longer than the longest duration",
        ),
        (
            &["trace", "--all", "-d", "4380h4380h1s"],
            "longer than the longest duration",
        ),
        (
            &["trace", "--all", "-d", "1e-20"],
            "shorter than a millisecond",
        ),
        (
            &["trace", "--all", "--timeout", "1e20"],
            "longer than the longest duration",
        ),
        (
            &["trace", "--all", "--timeout", "inf"],
            "longer than the longest duration",
        ),
        (
            &["trace", "--all", "--ring-buffer", "99999999999999999G"],
            "power of two between 4K and 1G",
        ),
        (
            &["trace", "--all", "--ring-buffer", "18446744073709551615K"],
            "power of two between 4K and 1G",
        ),
        (
            &["trace", "--all", "--transit-sample", "1e20"],
            "is not a power of two",
        ),
        (
            &["serve", "--refresh", "1e20"],
            "longer than the longest duration",
        ),
        (
            &["serve", "--timeout", "1e300"],
            "longer than the longest duration",
        ),
        (
            &["serve", "--ring-buffer", "99999999999999999G"],
            "power of two between 4K and 1G",
        ),
        (
            &["serve", "--transit-sample", "4294967296"],
            "is not a power of two",
        ),
        (
            &["serve", "--max-workloads", "99999999999999999999999"],
            "--max-workloads",
        ),
        (
            &["lab", "--duration", "1e20"],
            "longer than the longest duration",
        ),
        (&["trace", "--pid", "99999999999"], "--pid"),
    ];
    for (args, expected) in cases {
        let out = nettools(args)?;
        assert_one_sentence(&out, expected);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    Ok(())
}

/// Regression (issue 14): the live view cut a name at a byte offset inside a character and
/// panicked (`nettools trace --netns ééééééééééééééé` on a terminal). Now names are cut by
/// columns, keeping their end, on a real terminal with a real namespace.
#[test]
fn the_live_view_cuts_long_multibyte_names_by_columns() -> Result<()> {
    require_root();
    let mut lab = Lab::new()?;
    let node = lab.node("ééééééééééééééé", "10.239.3.1/24", None)?;
    assert!(node.netns.len() > 28 && node.netns.ends_with("ééééééééééééééé"));
    let args = ["trace", "--netns", node.netns.as_str(), "-d", "2500ms"];
    let Some(term) = pty::Terminal::start(&args, pty::Side::Stdout, 100)? else {
        skip("no pseudo-terminals here (devpts is not mounted)");
        return Ok(());
    };
    let (status, shown) = term.wait(std::time::Duration::from_secs(60))?;
    assert!(status.success(), "{status}: {shown}");
    assert!(!shown.contains("panicked"), "{shown}");
    pty::assert_only_own_escapes(&shown);
    // Live frames were drawn (redrawn in place) with the name's end in 28 columns…
    assert!(shown.contains("\x1b[J"), "no live frame: {shown:?}");
    let cut: String = std::iter::once('…')
        .chain(
            node.netns
                .chars()
                .rev()
                .take(27)
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        )
        .collect();
    assert!(
        shown.contains(&format!("{cut} ")),
        "{cut:?} not in {shown:?}"
    );
    // …and the final report names it whole.
    assert!(
        shown.contains(&format!("== {}  (netns", node.netns)),
        "{shown}"
    );
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

//! The guest's verdict, read from its serial console (see init.sh for the `@@vmtest` lines).
//! QEMU's own exit status is never used: it exits 0 whatever happened inside.

/// One test that passed, failed or was skipped, `binary::name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `uname -r` the guest reported (proves which kernel ran).
    pub release: Option<String>,
    pub modules_failed: Vec<String>,
    /// Binaries that ran to the end, with their exit code.
    pub results: Vec<(String, i32)>,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// Tests that decided this kernel cannot run them: (test, reason).
    pub skipped: Vec<(String, String)>,
    /// `#[ignore]`d tests.
    pub ignored: Vec<String>,
    /// Every binary ran and the guest said so.
    pub done: bool,
    /// The binary running when the output stopped.
    pub running: Option<String>,
    /// The host stopped the guest after this many seconds (set by the runner, not the log).
    pub timed_out_after: Option<u64>,
}

/// How a test's output line says it was skipped, and why (`nettools_tests::skip`).
pub const SKIP_MARKER: &str = "SKIPPED: ";

impl Outcome {
    /// Whether this kernel passed: the guest finished, every binary exited 0, nothing failed
    /// and at least one test passed (a filter that matches nothing proves nothing).
    pub fn passed(&self) -> bool {
        self.done
            && self.failed.is_empty()
            && !self.passed.is_empty()
            && !self.results.is_empty()
            && self.results.iter().all(|(_, rc)| *rc == 0)
    }

    /// Why it did not pass, in one line.
    pub fn problem(&self) -> String {
        const SHOWN: usize = 6;
        let failed = match self.failed.len() {
            0 => String::new(),
            n if n <= SHOWN => format!("failed: {}", self.failed.join(", ")),
            n => format!(
                "{n} failed: {}, … (all in the log)",
                self.failed[..SHOWN].join(", ")
            ),
        };
        if let Some(secs) = self.timed_out_after {
            let when = match (&self.release, &self.running) {
                (None, _) => " before the guest started its tests".to_string(),
                (Some(_), Some(b)) => format!(" while running {b}"),
                (Some(_), None) => String::new(),
            };
            let also = if failed.is_empty() {
                String::new()
            } else {
                format!("; {failed}")
            };
            return format!("timed out after {secs} s{when}{also}");
        }
        if self.release.is_none() {
            return "the guest never started its tests (kernel did not boot or /init failed)"
                .to_string();
        }
        if !failed.is_empty() {
            return failed;
        }
        if let Some((binary, rc)) = self.results.iter().find(|(_, rc)| *rc != 0) {
            return format!("test binary {binary} exited with {rc}");
        }
        if !self.done {
            return match &self.running {
                Some(b) => format!("the guest stopped while running {b} (crashed?)"),
                None => "the guest stopped before finishing".to_string(),
            };
        }
        if self.results.is_empty() {
            return "no test binary ran".to_string();
        }
        "no test ran (does the test filter match any test?)".to_string()
    }
}

/// Parses the serial log. Tolerates kernel messages and `\r` in between.
pub fn parse(log: &str) -> Outcome {
    let mut o = Outcome::default();
    // "---- name stdout ----" section of libtest's --show-output / failure report.
    let mut section: Option<String> = None;
    let mut pending: Option<String> = None;
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        // Terminal escapes from the firmware may precede a marker on its line.
        if let Some(rest) = line
            .find("@@vmtest ")
            .map(|i| &line[i + "@@vmtest ".len()..])
        {
            let mut words = rest.split_whitespace();
            match words.next() {
                Some("begin") => o.release = words.next().map(str::to_string),
                Some("module-failed") => o.modules_failed.extend(words.next().map(str::to_string)),
                Some("run") => o.running = words.next().map(str::to_string),
                Some("result") => {
                    if let (Some(b), Some(rc)) = (words.next(), words.next()) {
                        o.results.push((b.to_string(), rc.parse().unwrap_or(-1)));
                        o.running = None;
                    }
                }
                Some("done") => o.done = true,
                _ => {}
            }
            section = None;
            pending = None;
            continue;
        }
        let binary = o.running.clone().unwrap_or_default();
        // "test name ... ok"; the verdict may come lines later when the test or the kernel
        // printed something in between.
        let mut verdict = None;
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, v)) = rest.split_once(" ... ")
        {
            pending = Some(format!("{binary}::{}", name.trim()));
            verdict = Some(v.trim());
        } else if pending.is_some() {
            verdict = Some(line.trim());
        }
        if let Some(v) = verdict {
            let list = match v {
                "ok" => Some(&mut o.passed),
                "FAILED" => Some(&mut o.failed),
                v if v.starts_with("ignored") => Some(&mut o.ignored),
                _ => None,
            };
            if let (Some(list), Some(test)) = (list, pending.clone()) {
                list.push(test);
                pending = None;
                continue;
            }
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            section = Some(format!("{binary}::{name}"));
            continue;
        }
        if let (Some(test), Some(reason)) = (&section, line.strip_prefix(SKIP_MARKER)) {
            o.skipped.push((test.clone(), reason.trim().to_string()));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "SeaBIOS\r
\x1bc\x1b[?7l\x1b[2J@@vmtest begin 5.10.0-46-cloud-amd64\r
@@vmtest module-failed act_bpf
@@vmtest run cli

running 2 tests
test doctor_passes_here ... ok
test no_btf ... ok

successes:

---- no_btf stdout ----
SKIPPED: this kernel has no BTF to hide

test result: ok. 2 passed; 0 failed
@@vmtest result cli 0
@@vmtest run drops
running 2 tests
test firewall ... [   12.3] bridge: some kernel message
FAILED
test filtered ... ok
test slow ... ignored, needs a day
@@vmtest result drops 101
@@vmtest done
";

    #[test]
    fn reads_the_markers_and_libtest_lines() {
        let o = parse(LOG);
        assert_eq!(o.release.as_deref(), Some("5.10.0-46-cloud-amd64"));
        assert_eq!(o.modules_failed, ["act_bpf"]);
        assert_eq!(
            o.results,
            [("cli".to_string(), 0), ("drops".to_string(), 101)]
        );
        assert_eq!(
            o.passed,
            ["cli::doctor_passes_here", "cli::no_btf", "drops::filtered"]
        );
        assert_eq!(o.ignored, ["drops::slow"]);
        assert_eq!(
            o.skipped,
            [(
                "cli::no_btf".to_string(),
                "this kernel has no BTF to hide".to_string()
            )]
        );
        assert!(o.done);
        assert!(!o.passed(), "a test failed");
        assert_eq!(o.problem(), "failed: drops::firewall");
    }

    #[test]
    fn a_guest_that_stops_early_did_not_pass() {
        let o = parse("@@vmtest begin 6.1.0\n@@vmtest run drops\ntest a ... ok\n");
        assert!(!o.passed());
        assert!(
            o.problem().contains("while running drops"),
            "{}",
            o.problem()
        );
        let mut o = parse("@@vmtest begin 6.1.0\n@@vmtest run drops\ntest a ... FAILED\n");
        o.timed_out_after = Some(60);
        assert_eq!(
            o.problem(),
            "timed out after 60 s while running drops; failed: drops::a"
        );
        let o = parse("Kernel panic - not syncing\n");
        assert!(!o.passed());
        assert!(o.problem().contains("never started"));
        let o = parse("@@vmtest begin 6.1.0\n@@vmtest done\n");
        assert!(!o.passed(), "no binary ran at all");
        let o = parse("@@vmtest begin 6.1\n@@vmtest run a\n@@vmtest result a 0\n@@vmtest done\n");
        assert!(!o.passed(), "no test ran");
        assert!(o.problem().contains("no test ran"), "{}", o.problem());
        let ok = parse(
            "@@vmtest begin 6.1\n@@vmtest run a\ntest t ... ok\n@@vmtest result a 0\n@@vmtest done\n",
        );
        assert!(ok.passed());
    }
}

//! Processes the bench starts (tracers, iperf3): started with a parent-death signal so they never
//! outlive the bench, stopped by their own PID, and reaped with `wait4` for their peak RSS.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What the kernel says a finished process used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Peak resident set size, KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// Whether it exited with status 0 (or died of the signal we sent it).
    pub ok: bool,
}

/// A process we started, with its stderr collected line by line.
pub struct Proc {
    pub pid: i32,
    pub name: String,
    stderr: Arc<Mutex<Vec<String>>>,
    reaped: bool,
}

impl Proc {
    /// Starts `cmd` with its stderr collected (and its stdout, when the caller piped it).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. A bench that dies takes its children along.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = i32::try_from(child.id())?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            collect(pipe, stderr.clone());
        }
        if let Some(pipe) = child.stdout.take() {
            collect(pipe, stderr.clone());
        }
        // `child` is dropped without waiting: this Proc reaps it with wait4.
        Ok(Self {
            pid,
            name: name.to_string(),
            stderr,
            reaped: false,
        })
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits until a stderr line contains `needle`; fails if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if self.stderr_text().contains(needle) {
                return Ok(started.elapsed());
            }
            if let Some(u) = self.try_reap()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "{} exited (ok: {}) before it was ready: {}",
                    self.name,
                    u.ok,
                    self.stderr_text()
                );
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} was not ready within {timeout:?}: {}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// CPU time used so far (user + system, from /proc/PID/stat), seconds.
    pub fn cpu_s(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // utime and stime are fields 14 and 15 of stat; here 0 is field 3 (state).
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok((ticks(11) + ticks(12)) as f64 / hz)
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status.lines().find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    }

    fn try_reap(&mut self) -> Result<Option<Usage>> {
        self.wait4(libc::WNOHANG)
    }

    fn wait4(&mut self, flags: i32) -> Result<Option<Usage>> {
        if self.reaped {
            return Ok(Some(Usage::default()));
        }
        let mut status = 0;
        // SAFETY: rusage is plain old data, filled in by the kernel.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child, by its PID.
        let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            bail!(
                "waiting for {} failed: {}",
                self.name,
                std::io::Error::last_os_error()
            );
        }
        self.reaped = true;
        let ok = (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
            || (libc::WIFSIGNALED(status)
                && matches!(libc::WTERMSIG(status), libc::SIGINT | libc::SIGTERM));
        Ok(Some(Usage {
            max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
            ok,
        }))
    }

    /// Sends `signal` and waits up to `timeout` for the process to end (then SIGKILL).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<Usage> {
        if !self.reaped {
            // SAFETY: signalling our own child, by its PID.
            unsafe { libc::kill(self.pid, signal) };
        }
        let started = Instant::now();
        loop {
            if let Some(u) = self.try_reap()? {
                return Ok(u);
            }
            if started.elapsed() > timeout {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let _ = self.wait4(0);
                bail!(
                    "{} did not stop within {timeout:?}: {}",
                    self.name,
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Collects the lines of a pipe into `lines`, on a thread of its own.
fn collect(pipe: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, by its PID.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.wait4(0);
        }
    }
}

//! nettools on a pseudo-terminal: what an operator's terminal receives (the live view on
//! stdout, the status line on stderr), read from the terminal's master side.

use std::{
    fs::File,
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{dies_with_test, nettools_bin};

/// Which of nettools' outputs is the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Stdout,
    Stderr,
}

/// A nettools process with one output on a pseudo-terminal.
pub struct Terminal {
    pub child: Child,
    received: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    /// The other output, collected.
    other: Arc<Mutex<Vec<u8>>>,
}

/// Opens a pseudo-terminal of `cols` columns: (master, slave). `None` where there is none
/// (no devpts, as in the kernel matrix's initramfs).
fn open_pty(cols: u16) -> Option<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: both descriptors were just opened and nothing else owns them.
    Some(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn collect(
    mut from: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A pty's master reads EIO once every slave descriptor is closed: the end.
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut r) = into.lock() {
                r.extend_from_slice(&buf[..n]);
            }
        }
    })
}

impl Terminal {
    /// Starts `nettools ARGS` with `side` on a terminal of `cols` columns. `Ok(None)` when this
    /// machine has no pseudo-terminals.
    pub fn start(args: &[&str], side: Side, cols: u16) -> Result<Option<Self>> {
        let Some((master, slave)) = open_pty(cols) else {
            return Ok(None);
        };
        let mut cmd = dies_with_test(nettools_bin());
        cmd.args(args).stdin(Stdio::null());
        match side {
            Side::Stdout => cmd.stdout(Stdio::from(slave)).stderr(Stdio::piped()),
            Side::Stderr => cmd.stderr(Stdio::from(slave)).stdout(Stdio::piped()),
        };
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", nettools_bin().display()))?;
        // The slave end now lives only in the child (Command dropped its copy).
        drop(cmd);
        let received = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        let reader = collect(File::from(master), received.clone());
        let pipe: Box<dyn std::io::Read + Send> = match side {
            Side::Stdout => Box::new(child.stderr.take().context("no stderr pipe")?),
            Side::Stderr => Box::new(child.stdout.take().context("no stdout pipe")?),
        };
        collect(pipe, other.clone());
        Ok(Some(Self {
            child,
            received,
            reader: Some(reader),
            other,
        }))
    }

    /// What the terminal received so far.
    pub fn received(&self) -> String {
        self.received
            .lock()
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default()
    }

    /// The other output so far.
    pub fn other(&self) -> String {
        self.other
            .lock()
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the terminal shows `text` (false when nettools exited or `timeout` passed).
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            if self.received().contains(text) {
                return Ok(true);
            }
            if self.child.try_wait()?.is_some() || started.elapsed() > timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends `signal` to nettools, by the PID this test started.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: signalling the child this test started, by its PID.
        unsafe { libc::kill(pid, signal) };
        Ok(())
    }

    /// Waits for nettools to exit (killing it after `timeout`): its status and everything the
    /// terminal received.
    pub fn wait(mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "nettools did not finish within {timeout:?}: {}{}",
                    self.received(),
                    self.other()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        std::thread::sleep(Duration::from_millis(50));
        Ok((status, self.received()))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Fails unless every escape sequence in `text` is one nettools writes itself (cursor up,
/// erase below, erase line) and no other control character than CR, LF and those ESCs is in
/// it: what a workload's name could smuggle to the terminal.
pub fn assert_only_own_escapes(text: &str) {
    let mut rest = text;
    while let Some(at) = rest.find('\x1b') {
        let seq = &rest[at + 1..];
        let own = seq
            .strip_prefix('[')
            .map(|s| s.trim_start_matches(|c: char| c.is_ascii_digit()))
            .is_some_and(|s| s.starts_with(['A', 'J', 'K']));
        assert!(
            own,
            "an escape sequence nettools does not write: {:?}\nin: {text:?}",
            &rest[at..rest.len().min(at + 12)]
        );
        rest = seq;
    }
    if let Some(c) = text
        .chars()
        .find(|&c| nettools::report::text::is_unsafe(c) && !matches!(c, '\r' | '\n' | '\x1b'))
    {
        panic!("{c:?} reached the terminal raw: {text:?}");
    }
}

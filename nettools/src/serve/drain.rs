//! The agent's drain thread: it alone reads the kernel's ring buffer, on a thread of its own,
//! so that no scrape, render, refresh or runtime that hangs can keep events from being read.
//! It wakes when the kernel signals a batch, or every [`DRAIN_EVERY`], decodes what waits
//! (freeing the ring buffer's space at once), and adds the events to the aggregate when the
//! agent's lock is free. When a render holds the lock, the decoded events wait in memory for
//! the next round; only past [`PENDING_MAX`] of them does the thread wait for the lock.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc, Mutex, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::sync::oneshot;

use super::core::{Core, lock};
use crate::{
    collect::{self, Event},
    session::DRAIN_EVERY,
};

/// Decoded events that may wait for the lock before the thread waits for it (6 MiB, at 96
/// bytes each: more than a 4 MiB ring buffer holds, so the kernel's buffer fills first only if
/// a lock holder takes seconds).
pub const PENDING_MAX: usize = 65_536;

/// Room for decoded events kept between bursts (a burst past it gives the rest back).
const KEEP: usize = 4096;

/// The kernel-side log of `--verbose`, forwarded as it comes.
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Starts the drain thread. It ends when `stop` is set (having added what it read) or when
/// the ring buffer cannot be polled, and says how on `done`.
pub fn spawn(
    events: RingBuf<MapData>,
    kernel_log: Option<KernelLog>,
    core: Arc<Mutex<Core>>,
    stop: Arc<AtomicBool>,
    done: oneshot::Sender<Result<()>>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nettools-drain".into())
        .spawn(move || {
            let _ = done.send(run(events, kernel_log, &core, &stop));
        })
        .context("cannot start the thread that reads the kernel's events")
}

fn run(
    mut events: RingBuf<MapData>,
    mut kernel_log: Option<KernelLog>,
    core: &Mutex<Core>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut pending = Pending::default();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        wait(&events, kernel_log.as_ref(), DRAIN_EVERY)?;
        if let Some(l) = kernel_log.as_mut() {
            l.flush();
        }
        loop {
            let more = pending.read(&mut events);
            let guard = if more || stopping {
                Some(lock(core))
            } else {
                match core.try_lock() {
                    Ok(g) => Some(g),
                    Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    Err(TryLockError::WouldBlock) => None,
                }
            };
            if let Some(mut c) = guard {
                pending.add_to(&mut c)?;
            }
            if !more {
                break;
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// Events read from the ring buffer, not yet in the aggregate.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    undecodable: u64,
}

impl Pending {
    /// Reads the ring buffer until it is empty or [`PENDING_MAX`] events wait; returns whether
    /// it stopped because of the cap.
    fn read(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        while self.events.len() < PENDING_MAX {
            let Some(record) = ring.next() else {
                return false;
            };
            match collect::decode(&record) {
                Ok(ev) => self.events.push(ev),
                Err(e) => {
                    self.undecodable += 1;
                    log::debug!("undecodable event: {e:?}");
                }
            }
        }
        true
    }

    fn add_to(&mut self, core: &mut Core) -> Result<()> {
        let collector = &mut core.probes.collector;
        collector.agg.undecodable += std::mem::take(&mut self.undecodable);
        for ev in self.events.drain(..) {
            collector.add(ev)?;
        }
        // A burst that filled the buffer does not keep its memory for good.
        self.events.shrink_to(KEEP);
        Ok(())
    }
}

/// Waits until the ring buffer (or the kernel log) has something, or `timeout` passes.
fn wait(events: &RingBuf<MapData>, log: Option<&KernelLog>, timeout: Duration) -> Result<()> {
    let mut fds = vec![libc::pollfd {
        fd: events.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(l) = log {
        fds.push(libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call, and the
    // descriptors stay open (their owners outlive the call).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("polling the ring buffer failed");
        }
    }
    Ok(())
}

//! What the agent's threads share, behind one lock: the loaded probes, the aggregate the drain
//! thread fills, the names the refresh gives the namespaces, and what the exposition says
//! besides. Every holder keeps it briefly: the drain thread never waits for it (see
//! [`super::drain`]), a render holds it while it reads the kernel's counts and builds the
//! summary, and encodes the exposition after letting go.

use std::{
    collections::HashSet,
    io::Sink,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::metrics;
use crate::session::Probes;

/// The agent's state.
pub struct Core {
    pub probes: Probes<Sink>,
    pub ctx: metrics::Context,
    /// When the probes were attached.
    pub started: Instant,
    /// The agent is stopping: its probes are detached, nothing may attach again.
    pub stopping: bool,
}

/// The lock on the agent's state. No holder panics; should one ever, the state is still the
/// best there is, so the others go on with it.
pub fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One exposition: the kernel's counts at this moment, in Prometheus text format.
pub fn render(core: &Mutex<Core>) -> Result<String> {
    let started = Instant::now();
    let (summary, ctx, known) = {
        let mut c = lock(core);
        let duration_s = c.started.elapsed().as_secs_f64();
        let summary = c.probes.summarize(duration_s)?;
        let known: HashSet<u32> = c.probes.collector.labels.keys().copied().collect();
        (summary, c.ctx.clone(), known)
    };
    let locked = started.elapsed();
    let families = metrics::families(&summary, &|netns| known.contains(&netns), &ctx);
    let text = metrics::render(&families).context("encoding the exposition failed")?;
    log::debug!(
        "rendered {} bytes in {:.1} ms ({:.1} ms holding the lock)",
        text.len(),
        started.elapsed().as_secs_f64() * 1e3,
        locked.as_secs_f64() * 1e3
    );
    Ok(text)
}

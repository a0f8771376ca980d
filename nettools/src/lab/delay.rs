//! Exact added latency without netem: packets matching an iptables rule go to an NFQUEUE, and a
//! thread inside the namespace holds each one for a fixed time before accepting it. Removing
//! the [`Delay`] stops the holder and removes its rule.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use super::Node;

/// A running delay: packets matched by `rule` in `node` are held for `delay`.
pub struct Delay {
    node: Node,
    iptables: &'static str,
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
    holder: Option<JoinHandle<Result<Vec<Duration>>>>,
}

impl Delay {
    /// Queues packets matching `matcher` (iptables arguments after the chain, e.g.
    /// `["-p", "icmp", "--icmp-type", "echo-request"]`) in `chain` of `node` to NFQUEUE
    /// `queue`, and holds each for `delay`. `ipv6` uses ip6tables.
    pub fn start(
        node: &Node,
        ipv6: bool,
        chain: &str,
        matcher: &[&str],
        queue: u16,
        delay: Duration,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let holder_node = node.clone();
        let holder_stop = stop.clone();
        let holder = std::thread::spawn(move || -> Result<Vec<Duration>> {
            holder_node.enter(|| hold(queue, delay, &holder_stop, ready_tx))?
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the NFQUEUE holder did not start"))??;
        let iptables = if ipv6 { "ip6tables" } else { "iptables" };
        let mut rule: Vec<String> = vec!["-A".into(), chain.into()];
        rule.extend(matcher.iter().map(|s| s.to_string()));
        rule.extend(
            ["-j", "NFQUEUE", "--queue-num"]
                .iter()
                .map(|s| s.to_string()),
        );
        rule.push(queue.to_string());
        let delay = Self {
            node: node.clone(),
            iptables,
            rule,
            stop,
            holder: Some(holder),
        };
        let mut args = vec![iptables];
        args.extend(delay.rule.iter().map(String::as_str));
        delay
            .node
            .run(&args)
            .context("cannot add the NFQUEUE rule")?;
        Ok(delay)
    }

    /// Stops: removes the rule, then releases what is held. Returns how long each packet was
    /// really held (from its arrival in the queue to its release): the oracle for tests.
    pub fn stop(mut self) -> Result<Vec<Duration>> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<Duration>> {
        let mut del: Vec<String> = self.rule.clone();
        if let Some(first) = del.first_mut() {
            *first = "-D".into();
        }
        let mut args = vec![self.iptables];
        args.extend(del.iter().map(String::as_str));
        let removed = self.node.run(&args);
        self.stop.store(true, Ordering::Relaxed);
        let held = match self.holder.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the NFQUEUE holder panicked"))??,
            None => Vec::new(),
        };
        removed.context("cannot remove the NFQUEUE rule")?;
        Ok(held)
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if self.holder.is_some()
            && let Err(e) = self.finish()
        {
            eprintln!("nettools: {e:#}");
        }
    }
}

/// The holder loop, in the namespace's thread: receive, wait until each packet's time, accept.
fn hold(
    queue_num: u16,
    delay: Duration,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<()>>,
) -> Result<Vec<Duration>> {
    let setup = || -> Result<nfq::Queue> {
        let mut q = nfq::Queue::open().context("cannot open an NFQUEUE socket")?;
        q.bind(queue_num).context("cannot bind the NFQUEUE")?;
        // Metadata only: the verdict does not need the payload.
        q.set_copy_range(queue_num, 0)
            .context("cannot configure the NFQUEUE")?;
        q.set_nonblocking(true);
        Ok(q)
    };
    let mut q = match setup() {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            return Err(anyhow!(msg));
        }
    };
    // (arrival, due, packet). The arrival is when this thread read the packet, at most one
    // nap (200 us) after the kernel queued it on an idle machine. (nfq's own timestamp reader
    // dereferences a misaligned pointer, so it is not used.)
    let mut held: VecDeque<(Instant, Instant, nfq::Message)> = VecDeque::new();
    let mut holds = Vec::new();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    let arrived = Instant::now();
                    held.push_back((arrived, arrived + delay, msg));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(anyhow!("reading the NFQUEUE failed: {e}")),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(_, due, _)| *due <= now) {
            if let Some((arrived, _, msg)) = held.pop_front() {
                q.verdict(msg).context("cannot accept a held packet")?;
                holds.push(arrived.elapsed());
            }
        }
        if stop.load(Ordering::Relaxed) {
            // Release everything still held rather than leave it to time out.
            for (arrived, _, msg) in held.drain(..) {
                let _ = q.verdict(msg);
                holds.push(arrived.elapsed());
            }
            return Ok(holds);
        }
        // Sleep at most until the next packet is due, and briefly enough to see new ones.
        let nap = held
            .front()
            .map_or(Duration::from_micros(200), |(_, due, _)| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_micros(200));
        std::thread::sleep(nap);
    }
}

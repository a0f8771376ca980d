//! Section 4: the collector's memory.

use std::{
    fmt::Write as _,
    net::SocketAddrV4,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    CONN_PORT, DROP_PORT, DROP_PORTS, Plan, check_interrupted,
    lab::Lab,
    load, progress,
    tracers::{self, Running},
};

pub struct Memory {
    idle_kib: u64,
    after_connections_kib: u64,
    connections: u32,
    connections_s: f64,
    dns_names: u32,
    dns_s: f64,
    after_dns_kib: u64,
    /// (seconds into the long run, RSS KiB)
    long: Vec<(f64, u64)>,
    long_connections: u32,
    long_drops: u64,
    long_names: u32,
    peak_kib: u64,
}

pub fn memory(bin: &Path, lab: &Lab, plan: &Plan, attach: &mut Vec<f64>) -> Result<Memory> {
    // A DNS server in b answering NXDOMAIN for the whole phase.
    let dns_stop = AtomicBool::new(false);
    let dns_ready = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<Memory> {
        let server = scope.spawn(|| load::nxdomain_server(&lab.b, &dns_stop, &dns_ready));
        while !dns_ready.load(Ordering::SeqCst) && !server.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let result = memory_with_dns(bin, lab, plan, attach);
        dns_stop.store(true, Ordering::SeqCst);
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the DNS server thread panicked"))??;
        result
    })
}

fn memory_with_dns(bin: &Path, lab: &Lab, plan: &Plan, attach: &mut Vec<f64>) -> Result<Memory> {
    let running = tracers::start_nettools(bin, lab, &[], "memory")?;
    attach.push(running.attach.as_secs_f64());
    std::thread::sleep(Duration::from_secs(1));
    let rss = |r: &Running| r.proc.status_kib("VmRSS").unwrap_or(0);
    let idle_kib = rss(&running);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let made = load::connections(&lab.a, &lab.b, CONN_PORT, plan.connections, &stop)?;
    let connections_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let after_connections_kib = rss(&running);
    progress(&format!(
        "  {made} connections in {connections_s:.1} s: RSS {idle_kib} KiB idle, {after_connections_kib} KiB after"
    ));

    // Names that fail, each one different, as from a bad search path or a DGA.
    check_interrupted()?;
    let t0 = Instant::now();
    let answered = load::dns_queries(&lab.a, lab.b.ipv4, 0, plan.dns_names)?;
    let dns_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let after_dns_kib = rss(&running);
    progress(&format!(
        "  {answered} failing DNS names in {dns_s:.1} s: RSS {after_dns_kib} KiB"
    ));

    // The long run: connections, drops to ever new ports and new failing names (more distinct
    // flows and names than nettools keeps), sampled at regular moments.
    let mut long = Vec::new();
    let mut long_connections = 0;
    let mut long_drops = 0;
    let mut long_names = 0;
    let samples = 6;
    let slice = plan.long / samples;
    let started = Instant::now();
    for _ in 0..samples {
        check_interrupted()?;
        let t = Instant::now();
        long_drops += load::flood(
            &lab.a,
            SocketAddrV4::new(lab.b.ipv4, DROP_PORT),
            20_000,
            slice / 3,
            DROP_PORTS,
        )?;
        long_names += load::dns_queries(
            &lab.a,
            lab.b.ipv4,
            plan.dns_names + long_names,
            plan.dns_names / 6,
        )?;
        while t.elapsed() < slice {
            long_connections += load::connections(&lab.a, &lab.b, CONN_PORT, 200, &stop)?;
        }
        long.push((started.elapsed().as_secs_f64(), rss(&running)));
    }
    let stopped = running.stop()?;
    progress(&format!(
        "  long run: {long_connections} connections, {long_drops} drops, {long_names} names; peak RSS {} KiB",
        stopped.usage.max_rss_kib
    ));
    Ok(Memory {
        idle_kib,
        after_connections_kib,
        connections: made,
        connections_s,
        dns_names: answered,
        dns_s,
        after_dns_kib,
        long,
        long_connections,
        long_drops,
        long_names,
        peak_kib: stopped.usage.max_rss_kib,
    })
}

pub fn write_memory(out: &mut String, m: &Memory, plan: &Plan) {
    let mib = |k: u64| k as f64 / 1024.0;
    let _ = writeln!(
        out,
        "## 4. Collector memory\n\n\
         nettools tracing both pods with the default probes (resident set of the nettools process; the \
         BPF maps are kernel memory, see section 2).\n"
    );
    let _ = writeln!(out, "| moment | RSS (MiB) |");
    let _ = writeln!(out, "|---|---|");
    let _ = writeln!(out, "| attached, idle 1 s | {:.1} |", mib(m.idle_kib));
    let _ = writeln!(
        out,
        "| after {} short TCP connections ({:.1} s) | {:.1} |",
        m.connections,
        m.connections_s,
        mib(m.after_connections_kib)
    );
    let _ = writeln!(
        out,
        "| after {} distinct DNS names answered NXDOMAIN ({:.1} s) | {:.1} |",
        m.dns_names,
        m.dns_s,
        mib(m.after_dns_kib)
    );
    for (t, k) in &m.long {
        let _ = writeln!(out, "| long run, {t:.0} s in | {:.1} |", mib(*k));
    }
    let _ = writeln!(
        out,
        "| peak over the whole trace (`ru_maxrss`) | {:.1} |",
        mib(m.peak_kib)
    );
    let _ = writeln!(
        out,
        "\nThe long run ({:.0} s): {} more connections, {} drops at 20k/s to {} different \
         ports and {} more failing names, i.e. more distinct dropped flows and names than \
         nettools keeps.\n",
        plan.long.as_secs_f64(),
        m.long_connections,
        m.long_drops,
        DROP_PORTS,
        m.long_names
    );
}

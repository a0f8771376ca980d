//! Section 7: from start to probes attached.

use std::fmt::Write as _;

use super::{stats::fmt_spread, tracers::Tracer};

pub fn write_attach(out: &mut String, all: &[f64], drops: &[f64], peers: &[(Tracer, f64)]) {
    if all.is_empty() && drops.is_empty() && peers.is_empty() {
        return;
    }
    let ms = |v: &[f64]| v.iter().map(|s| s * 1000.0).collect::<Vec<f64>>();
    let _ = writeln!(
        out,
        "## 7. From start to probes attached\n\n\
         From spawning the process to the line it prints once its probes are attached: nettools' \
         \"nettools: tracing\", tcpdump's \"listening on\", the bpftrace script's first interval-probe output (it \
         is attached last); \
         over every start in this bench.\n"
    );
    let _ = writeln!(out, "| tracer | starts | ms, median (min–max) |");
    let _ = writeln!(out, "|---|---|---|");
    let peer = |tracer: Tracer| -> Vec<f64> {
        peers
            .iter()
            .filter(|(t, _)| *t == tracer)
            .map(|(_, a)| *a)
            .collect()
    };
    let rows = [
        (
            "nettools, default probes (2 namespaces, 2 veths)",
            all.to_vec(),
        ),
        ("nettools, drops only", drops.to_vec()),
        (Tracer::Tcpdump.label(), peer(Tracer::Tcpdump)),
        (Tracer::Bpftrace.label(), peer(Tracer::Bpftrace)),
    ];
    for (label, v) in rows.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = writeln!(out, "| {label} | {} | {} |", v.len(), fmt_spread(&ms(v), 0));
    }
    let _ = writeln!(out);
}

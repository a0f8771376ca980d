//! The tracers compared: nothing, nettools, tcpdump, bpftrace.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    lab::Lab,
    proc::{Proc, Usage},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracer {
    Untraced,
    /// `nettools trace` on both namespaces, default probes.
    Nettools,
    /// `tcpdump -i <client's host veth> -w /dev/null`.
    Tcpdump,
    /// A bpftrace script counting what nettools counts, as far as bpftrace can.
    Bpftrace,
}

impl Tracer {
    pub const ALL: [Self; 4] = [
        Self::Untraced,
        Self::Nettools,
        Self::Tcpdump,
        Self::Bpftrace,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::Nettools => "nettools (default probes)",
            Self::Tcpdump => "tcpdump -w /dev/null",
            Self::Bpftrace => "bpftrace (counting)",
        }
    }
}

/// The bpftrace script: per-veth packets and bytes each way (the net tracepoints every packet
/// crosses on a veth), drops by reason and location, retransmits per flow, neighbour timer
/// events. It is what a bpftrace user would write to count what nettools counts; it does no
/// latency pairing (nettools' handshake/DNS/ICMP/transit probes have no bpftrace peer here).
fn bpftrace_script(veth_a: &str, veth_b: &str) -> String {
    let on_veth = format!("str(args->name) == \"{veth_a}\" || str(args->name) == \"{veth_b}\"");
    format!(
        r#"tracepoint:net:netif_receive_skb /{on_veth}/ {{ @rx_packets[str(args->name)] = count(); @rx_bytes[str(args->name)] = sum(args->len); }}
tracepoint:net:net_dev_queue /{on_veth}/ {{ @tx_packets[str(args->name)] = count(); @tx_bytes[str(args->name)] = sum(args->len); }}
tracepoint:skb:kfree_skb /args->reason > 2/ {{ @drops[args->reason, args->location] = count(); }}
tracepoint:tcp:tcp_retransmit_skb {{ @retransmits[ntop(args->saddr), args->sport, ntop(args->daddr), args->dport] = count(); }}
tracepoint:neigh:neigh_timer_handler {{ @neigh_timer = count(); }}
interval:ms:20 /@attached == 0/ {{ @attached = 1; printf("bpftrace: attached\n"); }}
"#
    )
}

/// A tracer running.
pub struct Running {
    pub tracer: Tracer,
    pub proc: Proc,
    /// From start to probes attached (nettools: its "tracing" line; others: their ready line).
    pub attach: Duration,
    report: Option<PathBuf>,
}

/// What a stopped tracer left.
pub struct Stopped {
    pub usage: Usage,
    /// nettools' report (the table).
    pub report: String,
}

/// Where the bench keeps its files.
pub fn workdir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::process::workspace().join("target"))
        .join("bench")
}

/// Starts `nettools trace` on both namespaces with `extra` arguments.
pub fn start_nettools(bin: &Path, lab: &Lab, extra: &[&str], tag: &str) -> Result<Running> {
    start_nettools_on(bin, &[&lab.a.netns, &lab.b.netns], extra, tag)
}

/// Starts `nettools trace` on these namespaces with `extra` arguments.
pub fn start_nettools_on(
    bin: &Path,
    namespaces: &[&String],
    extra: &[&str],
    tag: &str,
) -> Result<Running> {
    start_nettools_env(bin, namespaces, extra, tag, &[])
}

/// The same, with these environment variables.
pub fn start_nettools_env(
    bin: &Path,
    namespaces: &[&String],
    extra: &[&str],
    tag: &str,
    env: &[(&str, &str)],
) -> Result<Running> {
    let report = workdir().join(format!("nettools-{tag}.txt"));
    let mut cmd = Command::new(bin);
    cmd.arg("trace");
    for ns in namespaces {
        cmd.args(["--netns", ns.as_str()]);
    }
    cmd.envs(env.iter().copied())
        .arg("--no-live")
        .args(extra)
        .arg("--out")
        .arg(&report)
        .stdout(Stdio::null());
    let mut proc = Proc::spawn("nettools", &mut cmd)?;
    let attach = proc.wait_for("nettools: tracing", Duration::from_secs(60))?;
    Ok(Running {
        tracer: Tracer::Nettools,
        proc,
        attach,
        report: Some(report),
    })
}

/// Starts a tracer (None for [`Tracer::Untraced`]).
pub fn start(tracer: Tracer, bin: &Path, lab: &Lab) -> Result<Option<Running>> {
    match tracer {
        Tracer::Untraced => Ok(None),
        Tracer::Nettools => start_nettools(bin, lab, &[], "throughput").map(Some),
        Tracer::Tcpdump => {
            let mut cmd = Command::new("tcpdump");
            cmd.args(["-i", &lab.a.host_veth, "-n", "-w", "/dev/null"])
                .stdout(Stdio::null());
            let mut proc = Proc::spawn("tcpdump", &mut cmd)?;
            let attach = proc.wait_for("listening on", Duration::from_secs(30))?;
            Ok(Some(Running {
                tracer,
                proc,
                attach,
                report: None,
            }))
        }
        Tracer::Bpftrace => {
            let script = workdir().join("count.bt");
            std::fs::write(&script, bpftrace_script(&lab.a.host_veth, &lab.b.host_veth))
                .with_context(|| format!("cannot write {}", script.display()))?;
            let mut cmd = Command::new("bpftrace");
            // bpftrace fires BEGIN before it attaches the other probes, and attaches tracepoint
            // and interval probes in the order of the script: the interval probe, last, says
            // when everything is attached.
            cmd.arg(&script).stdout(Stdio::piped());
            let mut proc = Proc::spawn("bpftrace", &mut cmd)?;
            let attach = proc.wait_for("bpftrace: attached", Duration::from_secs(60))?;
            Ok(Some(Running {
                tracer,
                proc,
                attach,
                report: None,
            }))
        }
    }
}

impl Running {
    /// Stops the tracer (SIGINT, as Ctrl-C) and collects what it left. nettools must stop
    /// cleanly; a peer that does not exit within 20 s is killed, with a warning (bpftrace once
    /// hung on exit here), since its measurement is already taken.
    pub fn stop(mut self) -> Result<Stopped> {
        let label = self.tracer.label();
        let usage = match self.tracer {
            Tracer::Nettools => {
                let u = self
                    .proc
                    .stop(libc::SIGINT, Duration::from_secs(60))
                    .with_context(|| format!("stopping {label}"))?;
                if !u.ok {
                    bail!("nettools failed: {}", self.proc.stderr_text());
                }
                u
            }
            _ => match self.proc.stop(libc::SIGINT, Duration::from_secs(20)) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("xtask bench: warning: {label} was killed: {e:#}");
                    Usage::default()
                }
            },
        };
        let report = match &self.report {
            Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
            None => String::new(),
        };
        Ok(Stopped { usage, report })
    }
}

/// From nettools' table report: events lost, and drops counted (all namespaces).
pub fn parse_report(report: &str) -> (Option<u64>, u64) {
    let lost = report.lines().find_map(|l| {
        l.trim()
            .strip_prefix("events lost: ")
            .and_then(|r| r.split(';').next())
            .and_then(|n| n.trim().parse().ok())
    });
    let drops = report
        .lines()
        .filter_map(|l| l.strip_prefix("  drops: "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum();
    (lost, drops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts() {
        let r = "nettools trace: 2 namespaces\nevents lost: 12; undecodable events: 1\n\n== b\n  drops: 30\n  \
                 retransmits: none\n== a\n  drops: none\n";
        assert_eq!(parse_report(r), (Some(12), 30));
    }
}

//! The live view while tracing: on a terminal, one compact table redrawn in place about once a
//! second, worst workload first, with the five problem areas and lost events in sight; when
//! stdout is not a terminal, one plain line per workload whose problems grew since the last
//! line.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{IsTerminal as _, Write},
};

use super::{
    LatencySummary, Summary, WorkloadSummary,
    histogram::duration,
    text::{self, Safe},
};
use crate::collect::latency::LatencyKind;

/// How the live view shows itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Redraw a table in place (a terminal).
    Redraw,
    /// Append plain lines (a pipe or a file).
    Lines,
}

/// Problem counters of one workload, to see what grew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Problems {
    drops: u64,
    retransmits: u64,
    neighbours: u64,
    dns_failed: u64,
    tcp_failed: u64,
    ping_lost: u64,
}

fn problems(w: &WorkloadSummary) -> Problems {
    let l = w.latency.as_ref();
    Problems {
        drops: w.drops.total,
        retransmits: w.retransmits.as_ref().map_or(0, |r| r.total),
        neighbours: w
            .neighbours
            .as_ref()
            .map_or(0, |n| n.total_failures + n.unanswered.len() as u64),
        dns_failed: l.map_or(0, |l| {
            l.dns.unanswered
                + l.dns
                    .rcodes
                    .iter()
                    .filter(|(k, _)| k.as_str() != "NOERROR")
                    .map(|(_, v)| v)
                    .sum::<u64>()
        }),
        tcp_failed: l.map_or(0, |l| {
            l.connect.refused + l.connect.unanswered + l.accept.unanswered
        }),
        ping_lost: l.map_or(0, |l| l.icmp_unanswered),
    }
}

/// How bad a workload looks: problems first, then the slowest p99.
fn badness(w: &WorkloadSummary) -> (u64, u64) {
    let p = problems(w);
    let score =
        p.drops + p.retransmits + 10 * (p.neighbours + p.dns_failed + p.tcp_failed + p.ping_lost);
    let worst_p99 = w.latency.as_ref().map_or(0.0, |l| {
        l.distributions.iter().map(|d| d.p99_ms).fold(0.0, f64::max)
    });
    (score, (worst_p99 * 1000.0) as u64)
}

fn p50_p99(l: Option<&LatencySummary>, kind: LatencyKind) -> String {
    l.and_then(|l| l.distributions.iter().find(|d| d.kind == kind))
        .map_or_else(
            || "-".to_string(),
            |d| format!("{}/{}", duration(d.p50_ms * 1e6), duration(d.p99_ms * 1e6)),
        )
}

/// Columns of the workload's name.
const NAME: usize = 28;
/// Columns of the top drop reason.
const REASON: usize = 18;

/// One frame of the live table, no line wider than `width` columns (40 at least). Names from
/// outside are escaped and cut by columns, keeping their end (where lab, pod and namespace
/// names differ).
pub fn frame(s: &Summary, elapsed_s: f64, width: usize) -> String {
    let width = width.max(40);
    let mut lines = Vec::new();
    lines.push(format!(
        "nettools live  {:.0}s  {} workload{}  events lost {}  (Ctrl-C: final report)",
        elapsed_s,
        s.workloads.len(),
        if s.workloads.len() == 1 { "" } else { "s" },
        s.health.events_lost
    ));
    problem_lines(&mut lines, s);
    // With the connections probe: each workload's TCP srtt p50 and resets (sent + received).
    let connections = s.workloads.iter().any(|w| w.connections.is_some());
    let mut header = format!(
        "{:<NAME$} {:>7} {:<REASON$} {:>7} {:>5} {:>21} {:>5} {:>21} {:>10} {:>5}",
        "WORKLOAD",
        "DROPS",
        "TOP REASON",
        "RETRANS",
        "NEIGH",
        "DNS p50/p99",
        "FAIL",
        "TCP CONNECT p50/p99",
        "PING p50",
        "LOST"
    );
    if connections {
        let _ = write!(header, " {:>10} {:>6}", "SRTT p50", "RST");
    }
    lines.push(header);
    let mut ws: Vec<&WorkloadSummary> = s.workloads.iter().collect();
    ws.sort_by(|a, b| badness(b).cmp(&badness(a)).then(a.name.cmp(&b.name)));
    for w in ws {
        let p = problems(w);
        let l = w.latency.as_ref();
        let name = text::pad(&text::fit_tail(&w.name, NAME), NAME);
        let reason = text::pad(
            &text::fit(
                w.drops.by_reason.first().map_or("-", |r| r.reason.as_str()),
                REASON,
            ),
            REASON,
        );
        let ping = l
            .and_then(|l| {
                l.distributions
                    .iter()
                    .find(|d| d.kind == LatencyKind::IcmpEcho)
            })
            .map_or_else(|| "-".to_string(), |d| duration(d.p50_ms * 1e6));
        let mut row = format!(
            "{} {:>7} {} {:>7} {:>5} {:>21} {:>5} {:>21} {:>10} {:>5}",
            name,
            p.drops,
            reason,
            p.retransmits,
            p.neighbours,
            p50_p99(l, LatencyKind::Dns),
            p.dns_failed,
            p50_p99(l, LatencyKind::TcpConnect),
            ping,
            p.ping_lost,
        );
        if connections {
            let c = w.connections.as_ref();
            let srtt = c
                .and_then(|c| c.rtt.as_ref())
                .map_or_else(|| "-".to_string(), |r| duration(r.p50_ms * 1e6));
            let resets = c.map_or(0, |c| c.resets_sent + c.resets_received);
            let _ = write!(row, " {srtt:>10} {resets:>6}");
        }
        lines.push(row);
    }
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{}", text::truncate(&line, width));
    }
    out
}

/// Problems the live view's header shows: the worst few, the rest counted.
const TOP_PROBLEMS: usize = 3;

/// The header's problems: `problems (5):` and the worst [`TOP_PROBLEMS`], or `no problems
/// found` (escaped; the caller cuts lines to the terminal's width).
fn problem_lines(lines: &mut Vec<String>, s: &Summary) {
    if s.problems.is_empty() {
        lines.push("no problems found".to_string());
        return;
    }
    let more = s.problems.len().saturating_sub(TOP_PROBLEMS);
    lines.push(format!(
        "problems ({}){}",
        s.problems.len(),
        if more > 0 {
            format!(", the worst {TOP_PROBLEMS}:")
        } else {
            ":".to_string()
        }
    ));
    for p in s.problems.iter().take(TOP_PROBLEMS) {
        lines.push(format!(
            "  {:<8}  {}  {}",
            p.kind.name(),
            text::pad(&text::fit_tail(&p.workload, NAME), NAME),
            Safe(&p.sentence)
        ));
    }
}

/// The live view's state.
pub struct Live {
    mode: Mode,
    /// Lines of the last frame (to redraw over them).
    drawn: usize,
    last: HashMap<u32, Problems>,
}

impl Live {
    /// A live view for stdout: redrawn on a terminal, plain lines otherwise.
    pub fn new() -> Self {
        Self {
            mode: if std::io::stdout().is_terminal() {
                Mode::Redraw
            } else {
                Mode::Lines
            },
            drawn: 0,
            last: HashMap::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Shows the state of the trace now.
    pub fn show(&mut self, s: &Summary, elapsed_s: f64) {
        let mut stdout = std::io::stdout().lock();
        match self.mode {
            Mode::Redraw => {
                let text = frame(s, elapsed_s, terminal_width());
                // Back to the top of the previous frame, clear below, draw.
                if self.drawn > 0 {
                    let _ = write!(stdout, "\x1b[{}A\x1b[J", self.drawn);
                }
                let _ = write!(stdout, "{text}");
                self.drawn = text.lines().count();
            }
            Mode::Lines => {
                for w in &s.workloads {
                    let now = problems(w);
                    let before = self.last.insert(w.netns, now).unwrap_or_default();
                    if let Some(line) = growth(&w.name, before, now, elapsed_s) {
                        let _ = writeln!(stdout, "{line}");
                    }
                }
            }
        }
        let _ = stdout.flush();
    }

    /// Removes the live table before the final report.
    pub fn finish(&mut self) {
        if self.mode == Mode::Redraw && self.drawn > 0 {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\x1b[{}A\x1b[J", self.drawn);
            let _ = stdout.flush();
            self.drawn = 0;
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

/// `[  5s] web: +12 drops, +3 retransmits` when something grew.
fn growth(name: &str, before: Problems, now: Problems, elapsed_s: f64) -> Option<String> {
    let parts: Vec<String> = [
        (now.drops - before.drops.min(now.drops), "drops"),
        (
            now.retransmits - before.retransmits.min(now.retransmits),
            "retransmits",
        ),
        (
            now.neighbours - before.neighbours.min(now.neighbours),
            "neighbour failures",
        ),
        (
            now.dns_failed - before.dns_failed.min(now.dns_failed),
            "DNS failures",
        ),
        (
            now.tcp_failed - before.tcp_failed.min(now.tcp_failed),
            "failed connects",
        ),
        (
            now.ping_lost - before.ping_lost.min(now.ping_lost),
            "lost pings",
        ),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("+{n} {what}"))
    .collect();
    (!parts.is_empty()).then(|| format!("[{elapsed_s:>5.0}s] {}: {}", Safe(name), parts.join(", ")))
}

fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        160
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DropSummary, ReasonCount, RetransmitSummary};

    fn w(name: &str, netns: u32, drops: u64, retrans: u64) -> WorkloadSummary {
        WorkloadSummary {
            name: name.into(),
            kind: Default::default(),
            netns,
            netns_path: None,
            pid: None,
            interfaces: vec![],
            drops: DropSummary {
                total: drops,
                by_reason: if drops > 0 {
                    vec![ReasonCount {
                        reason: "NETFILTER_DROP".into(),
                        code: 12,
                        count: drops,
                        locations: vec![],
                    }]
                } else {
                    vec![]
                },
                top_flows: vec![],
                rules: None,
            },
            retransmits: Some(RetransmitSummary {
                total: retrans,
                top_flows: vec![],
            }),
            neighbours: None,
            latency: None,
            connections: None,
            pod: None,
            containers: vec![],
            host_network: false,
            stale: false,
        }
    }

    proptest::proptest! {
        #[test]
        fn growth_lines_are_one_safe_line(name in crate::report::hostile_tests::hostile()) {
            let now = Problems { drops: 3, ..Default::default() };
            let line = growth(&name, Problems::default(), now, 4.0).unwrap_or_default();
            crate::report::hostile_tests::assert_terminal_safe("live line", &line);
            proptest::prop_assert_eq!(line.lines().count(), 1);
        }
    }

    /// A one-second summary of `workloads`.
    fn summary(workloads: Vec<WorkloadSummary>) -> Summary {
        Summary {
            kind: "summary",
            duration_s: 1.0,
            kernel: "x".into(),
            probes: vec![],
            all_namespaces: false,
            health: Default::default(),
            problems: vec![],
            thresholds: Default::default(),
            notes: vec![],
            pairing: Default::default(),
            waiting: Default::default(),
            workloads,
        }
    }

    #[test]
    fn worst_first_and_growth_lines() {
        let mut s = summary(vec![w("quiet", 1, 0, 0), w("bad", 2, 40, 7)]);
        s.find_problems(Default::default());
        let text = frame(&s, 3.0, 200);
        // The header names the problem first, then the table, worst first.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "problems (1):", "{text}");
        assert_eq!(
            lines[2],
            format!(
                "  firewall  {:<NAME$}  40 packets dropped by netfilter (NETFILTER_DROP)",
                "bad"
            ),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().skip(4).collect();
        assert!(
            rows[0].starts_with("bad") && rows[0].contains("NETFILTER_DROP"),
            "{text}"
        );
        assert!(rows[1].starts_with("quiet"), "{text}");
        let before = problems(&w("bad", 2, 10, 7));
        let now = problems(&w("bad", 2, 40, 7));
        assert_eq!(
            growth("bad", before, now, 4.0).as_deref(),
            Some("[    4s] bad: +30 drops")
        );
        assert_eq!(growth("bad", now, now, 5.0), None);
        assert!(
            !text.contains("SRTT"),
            "no connections probe, no column: {text}"
        );
    }

    #[test]
    fn with_the_connections_probe_rows_have_srtt_and_resets() {
        let mut busy = w("busy", 2, 0, 0);
        busy.connections = Some(crate::report::connections::ConnectionSummary {
            resets_sent: 2,
            resets_received: 5,
            rtt: Some(crate::report::connections::RttSummary {
                count: 9,
                min_ms: 1.0,
                p50_ms: 20.5,
                p90_ms: 21.0,
                p99_ms: 22.0,
                max_ms: 22.0,
                histogram: crate::collect::latency::new_histogram(),
            }),
            ..Default::default()
        });
        let s = summary(vec![busy, w("quiet", 1, 0, 0)]);
        let text = frame(&s, 3.0, 300);
        let header = text
            .lines()
            .find(|l| l.starts_with("WORKLOAD"))
            .unwrap_or("");
        assert!(header.ends_with("  SRTT p50    RST"), "{text}");
        let busy = text.lines().find(|l| l.starts_with("busy")).unwrap_or("");
        assert!(
            busy.ends_with(&format!("{:>10} {:>6}", duration(20.5e6), 7)),
            "{text}"
        );
        let quiet = text.lines().find(|l| l.starts_with("quiet")).unwrap_or("");
        assert!(quiet.ends_with(&format!("{:>10} {:>6}", "-", 0)), "{text}");
    }
}

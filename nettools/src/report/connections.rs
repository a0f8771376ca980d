//! The connections section of a workload's report: resets sent and received, and the errors
//! its applications saw on their sockets, per errno and per flow.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use nettools_common::{
    config::ABSENT,
    connections::{ConnectionEvent, ROLE_CLIENT, ROLE_SERVER},
};
use serde::Serialize;

use std::fmt::Write as _;

use super::{TOP_FLOWS, format_flow, text::Safe};
use crate::{
    collect::connections::ConnectionStats,
    probe::{
        connections::{errno_name, how_name},
        retransmits::state_name,
    },
};

/// Resets of one flow in one direction, state and reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetFlow {
    /// `sent` or `received`.
    pub direction: &'static str,
    pub flow: String,
    /// TCP state of the socket (`NONE` for a reset sent without a socket, e.g. a closed port).
    pub state: &'static str,
    /// The kernel's reset reason (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`, …; Linux 6.10+).
    pub reason: Option<String>,
    pub resets: u64,
}

/// Errors with one errno on one flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketErrorFlow {
    pub error: String,
    pub errno: u32,
    pub flow: String,
    pub count: u64,
    /// The process that connected the socket, where known.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// A finished connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConnectionLine {
    pub flow: String,
    /// `client` (it connected), `server` (a listener accepted it), `null` when it was opened
    /// before the trace.
    pub role: Option<&'static str>,
    /// `fin`, `rst_received`, `rst_sent`, `timeout`, `error`.
    pub how: &'static str,
    pub retransmits: u32,
    pub srtt_ms: f64,
    pub min_rtt_ms: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// RTT samples (smoothed or minimum) of a workload's connections.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RttSummary {
    pub count: u64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The samples (nanoseconds), for Prometheus.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// TCP resets, socket errors and finished connections in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ConnectionSummary {
    /// Exact resets sent by this namespace's stack (like nstat TcpOutRsts).
    pub resets_sent: u64,
    /// Exact resets received by its sockets.
    pub resets_received: u64,
    /// Flows with the most resets.
    pub reset_flows: Vec<ResetFlow>,
    /// Exact errors reported on its sockets, by errno name.
    pub socket_errors: BTreeMap<String, u64>,
    /// Flows with the most socket errors.
    pub error_flows: Vec<SocketErrorFlow>,
    /// Exact finished connections by how they ended (established ones only).
    pub closed: BTreeMap<&'static str, u64>,
    /// Smoothed RTT samples of open and finished connections.
    pub rtt: Option<RttSummary>,
    /// The kernel's minimum RTT at the same samples.
    pub min_rtt: Option<RttSummary>,
    /// Finished connections with the most retransmitted segments, and the slowest.
    pub top_by_retransmits: Vec<ConnectionLine>,
    pub top_by_rtt: Vec<ConnectionLine>,
}

/// Who opened a connection.
pub fn role_text(role: u32) -> Option<&'static str> {
    match role {
        ROLE_CLIENT => Some("client"),
        ROLE_SERVER => Some("server"),
        _ => None,
    }
}

fn line(e: &ConnectionEvent) -> ConnectionLine {
    ConnectionLine {
        flow: format_flow(&e.flow),
        role: role_text(e.start.role),
        how: how_name(e.how),
        retransmits: e.total_retrans,
        srtt_ms: f64::from(e.srtt_us) / 1e3,
        min_rtt_ms: f64::from(e.min_rtt_us) / 1e3,
        bytes_sent: e.bytes_sent,
        bytes_received: e.bytes_received,
    }
}

pub(crate) fn rtt_summary(h: &Histogram<u64>) -> RttSummary {
    let ms = |ns: u64| ns as f64 / 1e6;
    RttSummary {
        count: h.len(),
        min_ms: ms(h.min()),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
        histogram: h.clone(),
    }
}

/// The name of an errno as a C programmer spells it (`ECONNREFUSED`), `errno N` otherwise.
pub fn errno_text(errno: u32) -> String {
    match errno_name(errno) {
        "other" => match errno as i32 {
            libc::EACCES => "EACCES".into(),
            libc::EPERM => "EPERM".into(),
            libc::EPROTO => "EPROTO".into(),
            libc::EMSGSIZE => "EMSGSIZE".into(),
            libc::ENOPROTOOPT => "ENOPROTOOPT".into(),
            libc::EHOSTDOWN => "EHOSTDOWN".into(),
            libc::ENONET => "ENONET".into(),
            _ => format!("errno {errno}"),
        },
        name => name.into(),
    }
}

/// The name of a reset reason, from this kernel's `enum sk_rst_reason`.
pub fn reason_text(reason: u32, names: &[(u32, String)]) -> Option<String> {
    if reason == ABSENT {
        return None;
    }
    Some(
        names
            .iter()
            .find(|(v, _)| *v == reason)
            .map_or_else(|| format!("reason {reason}"), |(_, n)| n.clone()),
    )
}

/// The name of a socket's TCP state, `NONE` for no socket.
pub fn state_text(state: u32) -> &'static str {
    if state == 0 {
        "NONE"
    } else {
        state_name(state)
    }
}

pub fn summary(c: &ConnectionStats, reset_reasons: &[(u32, String)]) -> ConnectionSummary {
    let mut reset_flows: Vec<ResetFlow> = c
        .reset_flows
        .iter()
        .map(|(&(direction, state, reason, flow), &resets)| ResetFlow {
            direction: if direction == nettools_common::connections::SENT {
                "sent"
            } else {
                "received"
            },
            flow: format_flow(&flow.0),
            state: state_text(state),
            reason: reason_text(reason, reset_reasons),
            resets,
        })
        .collect();
    reset_flows.sort_by(|a, b| b.resets.cmp(&a.resets).then(a.flow.cmp(&b.flow)));
    reset_flows.truncate(TOP_FLOWS);
    let mut error_flows: Vec<SocketErrorFlow> = c
        .error_flows
        .iter()
        .map(|(key, &count)| {
            let owner = c.owners.get(key);
            SocketErrorFlow {
                error: errno_text(key.0),
                errno: key.0,
                flow: format_flow(&key.1.0),
                count,
                pid: owner.map(|o| o.pid),
                comm: owner.map(|o| o.comm.clone()),
            }
        })
        .collect();
    error_flows.sort_by(|a, b| b.count.cmp(&a.count).then(a.flow.cmp(&b.flow)));
    error_flows.truncate(TOP_FLOWS);
    ConnectionSummary {
        resets_sent: c.resets_sent,
        resets_received: c.resets_received,
        reset_flows,
        socket_errors: c
            .errors
            .iter()
            .map(|(&errno, &n)| (errno_text(errno), n))
            .collect(),
        error_flows,
        closed: c.closed.iter().map(|(&h, &n)| (how_name(h), n)).collect(),
        rtt: c.rtt.as_ref().map(rtt_summary),
        min_rtt: c.min_rtt.as_ref().map(rtt_summary),
        top_by_retransmits: c.top_by_retransmits.iter().map(line).collect(),
        top_by_rtt: c.top_by_rtt.iter().map(line).collect(),
    }
}

/// The table's lines for a workload's finished connections (totals, the top ones) and its RTT
/// samples (open connections have them too).
fn finished(out: &mut String, c: &ConnectionSummary) {
    if !c.closed.is_empty() {
        let closed: Vec<String> = c.closed.iter().map(|(h, n)| format!("{h} {n}")).collect();
        let _ = writeln!(out, "  connections closed: {}", closed.join(", "));
    }
    if let Some(r) = &c.rtt {
        let _ = write!(
            out,
            "  TCP RTT: srtt p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            r.p50_ms, r.p99_ms, r.max_ms
        );
        if let Some(m) = &c.min_rtt {
            let _ = write!(out, "; min RTT p50 {:.3} ms", m.p50_ms);
        }
        let _ = writeln!(out, " ({} samples)", r.count);
    }
    for (title, top) in [
        ("most retransmits", &c.top_by_retransmits),
        ("highest srtt", &c.top_by_rtt),
    ] {
        if top.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "    {title}: {:>7} {:>10} {:>10} {:>12} {:>12}  FLOW (role, end)",
            "RETRANS", "SRTT ms", "MIN ms", "SENT", "RECEIVED"
        );
        for l in top {
            let _ = writeln!(
                out,
                "    {:>width$} {:>7} {:>10.3} {:>10.3} {:>12} {:>12}  {}  ({}, {})",
                "",
                l.retransmits,
                l.srtt_ms,
                l.min_rtt_ms,
                l.bytes_sent,
                l.bytes_received,
                Safe(&l.flow),
                l.role.unwrap_or("?"),
                l.how,
                width = title.len() + 1
            );
        }
    }
}

/// The table's lines for a workload's resets, socket errors and finished connections.
pub fn table(out: &mut String, c: &ConnectionSummary) {
    finished(out, c);
    if c.resets_sent + c.resets_received == 0 && c.socket_errors.is_empty() {
        let _ = writeln!(out, "  connections: no resets, no socket errors");
        return;
    }
    let _ = writeln!(
        out,
        "  TCP resets: {} sent, {} received",
        c.resets_sent, c.resets_received
    );
    for f in &c.reset_flows {
        let reason = f
            .reason
            .as_deref()
            .map(|r| format!(", {}", Safe(r)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {:>8}  {:<8}  {}  ({}{reason})",
            f.resets,
            f.direction,
            Safe(&f.flow),
            f.state
        );
    }
    if c.socket_errors.is_empty() {
        return;
    }
    let errors: Vec<String> = c
        .socket_errors
        .iter()
        .map(|(e, n)| format!("{} {n}", Safe(e)))
        .collect();
    let _ = writeln!(out, "  socket errors: {}", errors.join(", "));
    for f in &c.error_flows {
        let owner = match (&f.comm, f.pid) {
            (Some(comm), Some(pid)) => format!("  ({} pid {pid})", Safe(comm)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "    {:>8}  {:<12}  {}{owner}",
            f.count,
            Safe(&f.error),
            Safe(&f.flow)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_errnos_states_and_reasons() {
        assert_eq!(errno_text(111), "ECONNREFUSED");
        assert_eq!(errno_text(13), "EACCES");
        assert_eq!(errno_text(999), "errno 999");
        assert_eq!(state_text(0), "NONE");
        assert_eq!(state_text(2), "SYN_SENT");
        let names = vec![(1, "NO_SOCKET".to_string())];
        assert_eq!(reason_text(1, &names).as_deref(), Some("NO_SOCKET"));
        assert_eq!(reason_text(7, &names).as_deref(), Some("reason 7"));
        assert_eq!(reason_text(ABSENT, &names), None);
    }
}

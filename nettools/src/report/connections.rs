//! The connections section of a workload's report: resets sent and received, and the errors
//! its applications saw on their sockets, per errno and per flow.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use nettools_common::{
    config::ABSENT,
    connections::{ConnectionEvent, ROLE_CLIENT, ROLE_SERVER},
    flow::Flow,
};
use serde::Serialize;

use std::fmt::Write as _;

use super::{TOP_FLOWS, format_flow, text::Safe};
use crate::{
    collect::{connections::ConnectionStats, flow::FlowOrd},
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

/// Flows that differ only in one side's port are one line, that port shown as `*`: a client
/// that opens a socket per attempt is one flow to a person, whichever end the flow is seen
/// from (a reset sent to a client's ephemeral port, an error on the client's own socket). The
/// port that varies is the one collapsed, so a server port stays. Counts are summed under
/// the same `rest` (direction, state, errno…); most first.
fn collapse_ports<R: Ord + Clone>(items: Vec<(Flow, R, u64)>) -> Vec<(String, R, u64)> {
    let without = |f: &Flow, source: bool| {
        let mut f = *f;
        if source {
            f.sport = 0;
        } else {
            f.dport = 0;
        }
        FlowOrd(f)
    };
    // How many different flows share each flow with its source (or destination) port unset.
    let mut sharing: BTreeMap<(bool, FlowOrd, R), u64> = BTreeMap::new();
    for (flow, rest, _) in &items {
        for source in [true, false] {
            *sharing
                .entry((source, without(flow, source), rest.clone()))
                .or_default() += 1;
        }
    }
    let mut groups: BTreeMap<(String, R), u64> = BTreeMap::new();
    for (flow, rest, count) in items {
        let ported = matches!(flow.l4_proto, 6 | 17 | 132) && flow.family != 0;
        let shared = |source: bool| {
            sharing
                .get(&(source, without(&flow, source), rest.clone()))
                .is_some_and(|n| *n > 1)
        };
        let text = if ported && shared(true) {
            format_flow(&without(&flow, true).0).replacen(":0 ->", ":* ->", 1)
        } else if ported && shared(false) {
            let t = format_flow(&without(&flow, false).0);
            match t.rsplit_once(":0") {
                Some((head, tail)) if !tail.contains(':') => format!("{head}:*{tail}"),
                _ => t,
            }
        } else {
            format_flow(&flow)
        };
        *groups.entry((text, rest)).or_default() += count;
    }
    let mut out: Vec<(String, R, u64)> = groups.into_iter().map(|((t, r), n)| (t, r, n)).collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    out
}

pub fn summary(c: &ConnectionStats, reset_reasons: &[(u32, String)]) -> ConnectionSummary {
    let resets = c
        .reset_flows
        .iter()
        .map(|(&(direction, state, reason, flow), &resets)| {
            (flow.0, (direction, state, reason), resets)
        })
        .collect();
    let mut reset_flows: Vec<ResetFlow> = collapse_ports(resets)
        .into_iter()
        .map(|(flow, (direction, state, reason), resets)| ResetFlow {
            direction: if direction == nettools_common::connections::SENT {
                "sent"
            } else {
                "received"
            },
            flow,
            state: state_text(state),
            reason: reason_text(reason, reset_reasons),
            resets,
        })
        .collect();
    reset_flows.truncate(TOP_FLOWS);
    // The process of a collapsed line: the first flow's owner with that errno, where known.
    let errors = c
        .error_flows
        .iter()
        .map(|(key, &count)| {
            let owner = c.owners.get(key).map(|o| (o.pid, o.comm.clone()));
            (key.1.0, (key.0, owner), count)
        })
        .collect();
    let mut error_flows: Vec<SocketErrorFlow> = Vec::new();
    for (flow, (errno, owner), count) in collapse_ports(errors) {
        // Lines that differ only by owner are one, with the owner of the first.
        if let Some(same) = error_flows
            .iter_mut()
            .find(|e| e.errno == errno && e.flow == flow)
        {
            same.count += count;
            continue;
        }
        error_flows.push(SocketErrorFlow {
            error: errno_text(errno),
            errno,
            flow,
            count,
            pid: owner.as_ref().map(|o| o.0),
            comm: owner.map(|o| o.1),
        });
    }
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

/// A workload's connections in a few words, for its one-line entry when no problem names it:
/// `TCP srtt p50 50.3 ms, 22 resets received, ECONNREFUSED 21` (`None` when nothing happened).
pub fn in_brief(c: &ConnectionSummary) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(r) = &c.rtt {
        parts.push(format!("TCP srtt p50 {:.1} ms", r.p50_ms));
    }
    for (n, what) in [(c.resets_sent, "sent"), (c.resets_received, "received")] {
        if n > 0 {
            parts.push(format!(
                "{n} {} {what}",
                if n == 1 { "reset" } else { "resets" }
            ));
        }
    }
    parts.extend(
        c.socket_errors
            .iter()
            .map(|(e, n)| format!("{} {n}", Safe(e))),
    );
    (!parts.is_empty()).then(|| parts.join(", "))
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

    fn tcp4(s: [u8; 4], sport: u16, d: [u8; 4], dport: u16) -> Flow {
        let mut f = Flow {
            family: nettools_common::flow::AF_INET,
            l4_proto: 6,
            sport,
            dport,
            ..Flow::default()
        };
        f.saddr[..4].copy_from_slice(&s);
        f.daddr[..4].copy_from_slice(&d);
        f
    }

    #[test]
    fn flows_differing_in_one_port_are_one_line_with_the_varying_port_as_a_star() {
        let (srv, cli, other) = ([10, 0, 0, 10], [10, 0, 0, 11], [10, 0, 0, 12]);
        let got = collapse_ports(vec![
            // Resets sent from the server's port to the client's ephemeral ones.
            (tcp4(srv, 8080, cli, 40001), "sent", 1),
            (tcp4(srv, 8080, cli, 40002), "sent", 2),
            // Seen from the client: its ephemeral port is the source.
            (tcp4(cli, 40001, srv, 8080), "received", 1),
            (tcp4(cli, 40002, srv, 8080), "received", 1),
            // One flow alone keeps both ports; the same flow under another `rest` too.
            (tcp4(cli, 40003, other, 443), "received", 4),
            (tcp4(cli, 40001, other, 443), "sent", 1),
        ]);
        assert_eq!(
            got,
            vec![
                (
                    "tcp 10.0.0.11:40003 -> 10.0.0.12:443".to_string(),
                    "received",
                    4
                ),
                ("tcp 10.0.0.10:8080 -> 10.0.0.11:*".to_string(), "sent", 3),
                (
                    "tcp 10.0.0.11:* -> 10.0.0.10:8080".to_string(),
                    "received",
                    2
                ),
                (
                    "tcp 10.0.0.11:40001 -> 10.0.0.12:443".to_string(),
                    "sent",
                    1
                ),
            ]
        );
    }

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

//! The connections section of a workload's report: resets sent and received, and the errors
//! its applications saw on their sockets, per errno and per flow.

use std::collections::BTreeMap;

use nettools_common::config::ABSENT;
use serde::Serialize;

use std::fmt::Write as _;

use super::{TOP_FLOWS, format_flow, text::Safe};
use crate::{
    collect::connections::ConnectionStats,
    probe::{connections::errno_name, retransmits::state_name},
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

/// TCP resets and socket errors in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
    }
}

/// The table's lines for a workload's resets and socket errors.
pub fn table(out: &mut String, c: &ConnectionSummary) {
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

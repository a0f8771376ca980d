//! JSON lines for machines: one object per event as it happens, then one summary object.
//! The schema is documented in the README ("JSON output").

use serde::Serialize;

use super::{Summary, addr, format_flow, l4_name};
use crate::{collect::Clock, collect::kallsyms::Kallsyms, discover::Workload, probe::KernelInfo};
use nettools_common::{
    drops::DropEvent,
    latency::{DnsEvent, DnsKey, DnsPending, HandshakeEvent, IcmpEvent},
    neighbours::NeighbourEvent,
    retransmits::RetransmitEvent,
};

use crate::collect::dns::DnsMessage;

/// One dropped packet (`"type": "drop"`).
#[derive(Serialize)]
pub struct DropJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Unix time of the drop, nanoseconds.
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    pub reason: String,
    pub reason_code: u32,
    pub location: String,
    pub address: String,
    /// `ipv4`, `ipv6`, `arp` or the EtherType in hex.
    pub protocol: String,
    pub l4: Option<String>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub flow: String,
    pub ifindex: u32,
    pub cpu: u32,
}

/// One retransmission (`"type": "retransmit"`).
#[derive(Serialize)]
pub struct RetransmitJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    pub flow: String,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub sport: u16,
    pub dport: u16,
    pub state: &'static str,
    pub segments: u32,
    pub synack: bool,
}

pub fn retransmit_event(
    ev: &RetransmitEvent,
    workload: &Workload,
    clock: &Clock,
) -> RetransmitJson {
    let f = &ev.key.flow;
    RetransmitJson {
        kind: "retransmit",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.key.netns,
        workload: workload.name.clone(),
        flow: format_flow(f),
        src: addr(f.family, &f.saddr).map(|a| a.to_string()),
        dst: addr(f.family, &f.daddr).map(|a| a.to_string()),
        sport: f.sport,
        dport: f.dport,
        state: crate::probe::retransmits::state_name(ev.key.state),
        segments: ev.segs,
        synack: ev.synack != 0,
    }
}

/// A neighbour entry that went to FAILED (`"type": "neighbour_failure"`).
#[derive(Serialize)]
pub struct NeighbourJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    pub address: Option<String>,
    /// `arp` or `ndp`.
    pub protocol: &'static str,
    pub device: String,
    pub ifindex: u32,
}

pub fn neighbour_event(ev: &NeighbourEvent, workload: &Workload, clock: &Clock) -> NeighbourJson {
    let end = ev.dev.iter().position(|&b| b == 0).unwrap_or(ev.dev.len());
    NeighbourJson {
        kind: "neighbour_failure",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.key.netns,
        workload: workload.name.clone(),
        address: addr(ev.key.family, &ev.key.addr).map(|a| a.to_string()),
        protocol: if ev.key.family == nettools_common::flow::AF_INET6 {
            "ndp"
        } else {
            "arp"
        },
        device: String::from_utf8_lossy(&ev.dev[..end]).into_owned(),
        ifindex: ev.key.ifindex,
    }
}

fn role_name(role: u8) -> &'static str {
    if role == nettools_common::latency::role::CLIENT {
        "client"
    } else {
        "server"
    }
}

/// A TCP handshake (`"type": "tcp_handshake"`).
#[derive(Serialize)]
pub struct HandshakeJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub workload: String,
    /// `client` (the workload connected) or `server` (it accepted).
    pub role: &'static str,
    /// `answered` or `refused` (RST).
    pub outcome: &'static str,
    pub latency_ms: f64,
    pub syns: u32,
    pub flow: String,
    pub ifindex: u32,
}

pub fn handshake_event(ev: &HandshakeEvent, w: &Workload, clock: &Clock) -> HandshakeJson {
    HandshakeJson {
        kind: "tcp_handshake",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        workload: w.name.clone(),
        role: role_name(ev.role),
        outcome: if ev.outcome == nettools_common::latency::outcome::RESET {
            "refused"
        } else {
            "answered"
        },
        latency_ms: ev.latency_ns as f64 / 1e6,
        syns: ev.syns,
        flow: format_flow(&ev.flow),
        ifindex: ev.ifindex,
    }
}

/// A DNS response (`"type": "dns"`) or a query never answered (`"type": "dns_unanswered"`).
#[derive(Serialize)]
pub struct DnsJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub workload: String,
    pub role: &'static str,
    pub transport: &'static str,
    pub client: String,
    pub server: String,
    pub id: u16,
    pub name: Option<String>,
    pub qtype: Option<String>,
    /// `null` for an unanswered query.
    pub rcode: Option<String>,
    /// Query → response; for an unanswered query, how long it was waited for.
    pub latency_ms: f64,
    pub ifindex: u32,
}

fn dns_ends(k: &DnsKey) -> (String, String) {
    let f = &k.flow;
    let end = |raw: &[u8; 16], port: u16| match addr(f.family, raw) {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => String::new(),
    };
    (end(&f.saddr, f.sport), end(&f.daddr, f.dport))
}

pub fn dns_event(
    ev: &DnsEvent,
    parsed: Option<&DnsMessage>,
    w: &Workload,
    clock: &Clock,
) -> DnsJson {
    let (client, server) = dns_ends(&ev.key);
    DnsJson {
        kind: "dns",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        workload: w.name.clone(),
        role: role_name(ev.role),
        transport: if ev.key.flow.l4_proto == 6 {
            "tcp"
        } else {
            "udp"
        },
        client,
        server,
        id: ev.key.id,
        name: parsed.and_then(|m| m.qname.clone()),
        qtype: parsed
            .and_then(|m| m.qtype)
            .map(crate::collect::dns::qtype_name),
        rcode: parsed.map(|m| crate::collect::dns::rcode_name(m.rcode)),
        latency_ms: ev.latency_ns as f64 / 1e6,
        ifindex: ev.key.ifindex,
    }
}

pub fn dns_unanswered(
    k: &DnsKey,
    v: &DnsPending,
    w: &Workload,
    clock: &Clock,
    timeout: std::time::Duration,
) -> DnsJson {
    let (client, server) = dns_ends(k);
    let len = usize::from(v.len).min(v.message.len());
    let q = crate::collect::dns::question(&v.message[..len]).ok();
    DnsJson {
        kind: "dns_unanswered",
        time_unix_ns: clock.unix_ns(v.ts_ns),
        workload: w.name.clone(),
        role: role_name(v.role),
        transport: if k.flow.l4_proto == 6 { "tcp" } else { "udp" },
        client,
        server,
        id: k.id,
        name: q.as_ref().map(|(n, _)| n.clone()),
        qtype: q.map(|(_, t)| crate::collect::dns::qtype_name(t)),
        rcode: None,
        latency_ms: timeout.as_secs_f64() * 1e3,
        ifindex: k.ifindex,
    }
}

/// An echo reply (`"type": "icmp_echo"`).
#[derive(Serialize)]
pub struct IcmpJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub workload: String,
    pub role: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: u16,
    pub seq: u16,
    pub latency_ms: f64,
    pub ifindex: u32,
}

pub fn icmp_event(ev: &IcmpEvent, w: &Workload, clock: &Clock) -> IcmpJson {
    let f = &ev.flow;
    IcmpJson {
        kind: "icmp_echo",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        workload: w.name.clone(),
        role: role_name(ev.role),
        from: addr(f.family, &f.saddr).map(|a| a.to_string()),
        to: addr(f.family, &f.daddr).map(|a| a.to_string()),
        id: f.sport,
        seq: f.dport,
        latency_ms: ev.latency_ns as f64 / 1e6,
        ifindex: ev.ifindex,
    }
}

/// Name of an EtherType.
pub fn ethertype(p: u16) -> String {
    match p {
        0x0800 => "ipv4".into(),
        0x86dd => "ipv6".into(),
        0x0806 => "arp".into(),
        other => format!("{other:#06x}"),
    }
}

pub fn drop_event(
    ev: &DropEvent,
    workload: &Workload,
    kernel: &KernelInfo,
    kallsyms: &Kallsyms,
    clock: &Clock,
) -> DropJson {
    let f = &ev.flow;
    let ports = matches!(f.l4_proto, 6 | 17 | 132) && f.family != 0;
    DropJson {
        kind: "drop",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.key.netns,
        workload: workload.name.clone(),
        reason: kernel.drop_reasons.name(ev.key.reason),
        reason_code: ev.key.reason,
        location: kallsyms.describe(ev.key.location),
        address: format!("{:#x}", ev.key.location),
        protocol: ethertype(ev.protocol),
        l4: (f.family != 0).then(|| l4_name(f.l4_proto)),
        src: addr(f.family, &f.saddr).map(|a| a.to_string()),
        dst: addr(f.family, &f.daddr).map(|a| a.to_string()),
        sport: ports.then_some(f.sport),
        dport: ports.then_some(f.dport),
        flow: format_flow(f),
        ifindex: ev.ifindex,
        cpu: ev.header.cpu,
    }
}

/// One JSON line.
pub fn line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}

/// The summary as one JSON line.
pub fn summary(s: &Summary) -> String {
    line(s)
}

/// A TCP reset sent or received (`"type": "tcp_reset"`).
#[derive(Serialize)]
pub struct ResetJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    /// `sent` or `received`.
    pub direction: &'static str,
    pub flow: String,
    /// TCP state of the socket (`NONE`: sent without a socket, e.g. to a closed port).
    pub state: &'static str,
    /// The kernel's reason for a sent reset (Linux 6.10+).
    pub reason: Option<String>,
}

pub fn reset_event(
    ev: &nettools_common::connections::ResetEvent,
    workload: &Workload,
    reasons: &[(u32, String)],
    clock: &Clock,
) -> ResetJson {
    use super::connections::{reason_text, state_text};
    ResetJson {
        kind: "tcp_reset",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.key.netns,
        workload: workload.name.clone(),
        direction: if ev.key.direction == nettools_common::connections::SENT {
            "sent"
        } else {
            "received"
        },
        flow: format_flow(&ev.key.flow),
        state: state_text(ev.key.state),
        reason: reason_text(ev.key.reason, reasons),
    }
}

/// An error reported on a socket (`"type": "socket_error"`): what the application's next call
/// on it returned.
#[derive(Serialize)]
pub struct SocketErrorJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    /// `ECONNREFUSED`, `ECONNRESET`, `ETIMEDOUT`, …
    pub error: String,
    pub errno: u32,
    pub flow: String,
    /// TCP state when the error was reported.
    pub state: &'static str,
    /// The process that connected the socket, where known.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

pub fn socket_error_event(
    ev: &nettools_common::connections::SocketErrorEvent,
    workload: &Workload,
    clock: &Clock,
) -> SocketErrorJson {
    use super::connections::{errno_text, state_text};
    let known = ev.owner.pid != 0;
    SocketErrorJson {
        kind: "socket_error",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.key.netns,
        workload: workload.name.clone(),
        error: errno_text(ev.key.errno),
        errno: ev.key.errno,
        flow: format_flow(&ev.key.flow),
        state: state_text(ev.state),
        pid: known.then_some(ev.owner.pid),
        comm: known.then(|| crate::collect::connections::comm_text(&ev.owner.comm)),
    }
}

/// A finished TCP connection (`"type": "tcp_connection"`), like tcplife.
#[derive(Serialize)]
pub struct ConnectionJson {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time_unix_ns: i128,
    pub netns: u32,
    pub workload: String,
    pub flow: String,
    /// `client`, `server`, or `null` when it was opened before the trace.
    pub role: Option<&'static str>,
    /// `fin`, `rst_received`, `rst_sent`, `timeout`, `error`.
    pub how: &'static str,
    /// The state it left for CLOSE, and the error set on it (`null`: none).
    pub last_state: &'static str,
    pub error: Option<String>,
    /// From the state change to SYN_SENT/SYN_RECV to CLOSE (`null`: opened before the trace).
    pub duration_ms: Option<f64>,
    /// Data bytes (retransmissions not counted twice; SYN and FIN not counted).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    pub srtt_ms: f64,
    pub min_rtt_ms: f64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

pub fn connection_event(
    ev: &nettools_common::connections::ConnectionEvent,
    workload: &Workload,
    clock: &Clock,
) -> ConnectionJson {
    use super::connections::{errno_text, role_text, state_text};
    let known = ev.start.pid != 0;
    ConnectionJson {
        kind: "tcp_connection",
        time_unix_ns: clock.unix_ns(ev.header.ts_ns),
        netns: ev.netns,
        workload: workload.name.clone(),
        flow: format_flow(&ev.flow),
        role: role_text(ev.start.role),
        how: crate::probe::connections::how_name(ev.how),
        last_state: state_text(ev.oldstate),
        error: (ev.errno != 0).then(|| errno_text(ev.errno)),
        duration_ms: (ev.start.start_ns != 0 && ev.header.ts_ns >= ev.start.start_ns)
            .then(|| (ev.header.ts_ns - ev.start.start_ns) as f64 / 1e6),
        bytes_sent: ev.bytes_sent,
        bytes_received: ev.bytes_received,
        retransmits: ev.total_retrans,
        srtt_ms: f64::from(ev.srtt_us) / 1e3,
        min_rtt_ms: f64::from(ev.min_rtt_us) / 1e3,
        pid: known.then_some(ev.start.pid),
        comm: known.then(|| crate::collect::connections::comm_text(&ev.start.comm)),
    }
}

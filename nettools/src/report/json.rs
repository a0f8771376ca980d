//! JSON lines for machines: one object per event as it happens, then one summary object.
//! The schema is documented in the README ("JSON output").

use serde::Serialize;

use super::{Summary, addr, format_flow, l4_name};
use crate::{collect::Clock, collect::kallsyms::Kallsyms, discover::Workload, probe::KernelInfo};
use nettools_common::{drops::DropEvent, neighbours::NeighbourEvent, retransmits::RetransmitEvent};

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

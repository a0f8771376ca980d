//! The connections probe's userspace side: record layouts from tracefs, socket offsets from BTF,
//! attaching what this kernel has (a sentence for what it lacks), and the exact counts of resets
//! and socket errors.

use anyhow::{Result, bail};
use aya::Ebpf;
use nettools_common::{
    config::ABSENT,
    connections::{
        ClosedKey, ConnectionsConfig, ErrorTotalKey, ResetKey, ResetLayout, ResetTotalKey,
        RttConfig, SetStateLayout, SockOffsets, SocketErrorKey, TcpSockOffsets, how,
    },
};

use super::{btf::Btf, tracefs::Format};

/// Size of the `saddr`/`daddr` buffers of 6.10+ `tcp_send_reset` records (a `sockaddr_in6`).
const SOCKADDR_BYTES: u32 = 28;

/// The layout of `tcp:tcp_send_reset` or `tcp:tcp_receive_reset`.
pub fn reset_layout(f: &Format) -> Result<ResetLayout> {
    let at = |name: &str, size: u32| f.offset(name, size);
    let l = ResetLayout {
        skbaddr: at("skbaddr", 8),
        skaddr: at("skaddr", 8),
        state: at("state", 4),
        reason: at("reason", 4),
        sport: at("sport", 2),
        dport: at("dport", 2),
        family: at("family", 2),
        saddr: at("saddr", 4),
        daddr: at("daddr", 4),
        saddr_v6: at("saddr_v6", 16),
        daddr_v6: at("daddr_v6", 16),
        saddr_sa: at("saddr", SOCKADDR_BYTES),
        daddr_sa: at("daddr", SOCKADDR_BYTES),
    };
    if l.skaddr == ABSENT {
        bail!("this kernel's TCP reset tracepoint has no skaddr field");
    }
    if (l.saddr_sa == ABSENT) != (l.daddr_sa == ABSENT) {
        bail!("this kernel's tcp_send_reset record has only one of its two addresses");
    }
    if l.saddr_sa == ABSENT && l.sport == ABSENT {
        bail!("this kernel's TCP reset tracepoint has neither ports nor socket addresses");
    }
    Ok(l)
}

/// The layout of `sock:inet_sock_set_state`.
pub fn set_state_layout(f: &Format) -> Result<SetStateLayout> {
    let at = |name: &str, size: u32| f.offset(name, size);
    let l = SetStateLayout {
        record: reset_layout(f)?,
        oldstate: at("oldstate", 4),
        newstate: at("newstate", 4),
        protocol: at("protocol", 2),
        _pad: 0,
    };
    if l.newstate == ABSENT {
        bail!("this kernel's sock:inet_sock_set_state record has no newstate");
    }
    Ok(l)
}

/// The `struct sock` offsets the socket-error program reads; `err` stays [`ABSENT`] (the
/// program then does nothing) when one it needs is missing, and the error says which.
pub fn sock_offsets(btf: &mut Btf) -> Result<SockOffsets> {
    let mut get = |path: &str, size: u32, required: bool| -> Result<u32> {
        match btf.field("sock", path) {
            Ok(loc) if loc.size == size => Ok(loc.offset),
            Ok(loc) if required => bail!(
                "struct sock.{path} is {} bytes on this kernel, nettools expects {size}",
                loc.size
            ),
            Err(e) if required => Err(e),
            _ => Ok(ABSENT),
        }
    };
    Ok(SockOffsets {
        err: get("sk_err", 4, true)?,
        family: get("__sk_common.skc_family", 2, true)?,
        state: get("__sk_common.skc_state", 1, true)?,
        protocol: get("sk_protocol", 2, false)?,
        num: get("__sk_common.skc_num", 2, true)?,
        dport: get("__sk_common.skc_dport", 2, true)?,
        rcv_saddr: get("__sk_common.skc_rcv_saddr", 4, true)?,
        daddr: get("__sk_common.skc_daddr", 4, true)?,
        v6_rcv_saddr: get("__sk_common.skc_v6_rcv_saddr", 16, false)?,
        v6_daddr: get("__sk_common.skc_v6_daddr", 16, false)?,
    })
}

/// The `struct tcp_sock` offsets read when a connection closes, and the names of those this
/// kernel lacks (their figures are then 0).
pub fn tcp_sock_offsets(btf: &mut Btf) -> (TcpSockOffsets, Vec<&'static str>) {
    let mut missing = Vec::new();
    let mut get = |strukt: &str, path: &'static str, size: u32| match btf.field(strukt, path) {
        Ok(loc) if loc.size == size => loc.offset,
        _ => {
            missing.push(path);
            ABSENT
        }
    };
    let rtt_min = get("tcp_sock", "rtt_min", 24);
    let mut offsets = TcpSockOffsets {
        bytes_sent: get("tcp_sock", "bytes_sent", 8),
        bytes_retrans: get("tcp_sock", "bytes_retrans", 8),
        bytes_received: get("tcp_sock", "bytes_received", 8),
        total_retrans: get("tcp_sock", "total_retrans", 4),
        srtt_us: get("tcp_sock", "srtt_us", 4),
        // struct minmax { struct minmax_sample { u32 t; u32 v; } s[3]; }: the current minimum
        // is s[0].v.
        rtt_min: if rtt_min == ABSENT {
            ABSENT
        } else {
            rtt_min + 4
        },
        sk_flags: ABSENT,
        sock_done_bit: 0,
    };
    // `sk_flags` is `__sk_common.skc_flags` since 6.x, a member of its own before.
    offsets.sk_flags = ["__sk_common.skc_flags", "sk_flags"]
        .iter()
        .find_map(|path| match btf.field("sock", path) {
            Ok(loc) if loc.size == 8 => Some(loc.offset),
            _ => None,
        })
        .unwrap_or(ABSENT);
    if offsets.sk_flags == ABSENT {
        missing.push("sk_flags");
    }
    let done = btf
        .enum_values("sock_flags")
        .and_then(|v| v.into_iter().find(|(name, _)| name == "SOCK_DONE"))
        .and_then(|(_, bit)| u32::try_from(bit).ok().filter(|b| *b < 64));
    match done {
        Some(bit) => offsets.sock_done_bit = bit,
        None => {
            offsets.sk_flags = ABSENT;
            missing.push("SOCK_DONE");
        }
    }
    (offsets, missing)
}

/// What this kernel offers the connections probe: the configuration for the programs, and a
/// sentence for each part that cannot run (those parts are not attached).
pub fn config(btf: &mut Btf, notes: &mut Vec<String>) -> ConnectionsConfig {
    let mut c = ConnectionsConfig::UNSET;
    match super::tracefs::format("tcp", "tcp_send_reset").and_then(|f| reset_layout(&f)) {
        Ok(l) => {
            if l.saddr_sa == ABSENT {
                notes.push(
                    "this kernel's tcp:tcp_send_reset has the pre-6.10 record (no sockaddr, no \
                     reason): resets sent without a socket (to a closed port) may be missing \
                     from the sent resets, and no reset reason is given"
                        .into(),
                );
            }
            c.send_reset = l;
        }
        Err(e) => notes.push(format!("{e:#}: sent TCP resets are not counted")),
    }
    match super::tracefs::format("tcp", "tcp_receive_reset").and_then(|f| reset_layout(&f)) {
        Ok(l) => c.receive_reset = l,
        Err(e) => notes.push(format!("{e:#}: received TCP resets are not counted")),
    }
    // Received resets read the socket's state through these offsets too, and finished
    // connections its error: without the tracepoint only the socket-error program stays off.
    match sock_offsets(btf) {
        Ok(s) => c.sock = s,
        Err(e) => notes.push(format!(
            "{e:#}: errors reported on sockets are not counted, and received resets have no state"
        )),
    }
    if let Err(e) = super::tracefs::format("sock", "inet_sk_error_report") {
        notes.push(format!(
            "{e:#}: errors reported on sockets (connection refused, reset, timed out, …) are \
             not counted"
        ));
    }
    let (tcp, mut missing) = tcp_sock_offsets(btf);
    let fin_unknown = missing
        .iter()
        .any(|m| *m == "sk_flags" || *m == "SOCK_DONE");
    missing.retain(|m| *m != "sk_flags" && *m != "SOCK_DONE");
    if fin_unknown {
        notes.push(
            "this kernel's BTF lacks sock.sk_flags or SOCK_DONE: a finished connection's \
             bytes_received counts the peer's FIN as one byte"
                .into(),
        );
    }
    if !missing.is_empty() {
        notes.push(format!(
            "this kernel's BTF lacks {} of struct tcp_sock/sock: finished connections report 0 \
             for them",
            missing.join(", ")
        ));
    }
    c.tcp = tcp;
    c.rtt = rtt_config(
        &mut *notes,
        c.tcp.srtt_us != ABSENT && c.sock.family != ABSENT,
    );
    {
        match super::tracefs::format("sock", "inet_sock_set_state")
            .and_then(|f| set_state_layout(&f))
        {
            Ok(l) => c.set_state = l,
            Err(e) => notes.push(format!(
                "{e:#}: finished connections are not reported, the process behind a socket \
                 error is not known, and neither is the local port of a socket its error closed"
            )),
        }
    }
    c
}

/// How often an open connection that carries traffic is sampled (`tcp:tcp_probe`).
pub const RTT_SAMPLE_INTERVAL_MS: u64 = 1000;

/// Where the RTT samplers find the socket; a sentence for each that cannot run. `socket_ok`:
/// the socket offsets they read (srtt, addresses) are known.
fn rtt_config(notes: &mut Vec<String>, socket_ok: bool) -> RttConfig {
    let mut r = RttConfig {
        interval_ns: RTT_SAMPLE_INTERVAL_MS * 1_000_000,
        ..RttConfig::UNSET
    };
    if !socket_ok {
        notes.push(
            "this kernel's BTF lacks tcp_sock.srtt_us or the socket's address fields: open \
             connections are not sampled for RTT (finished ones report theirs)"
                .into(),
        );
        return r;
    }
    let skaddr = |group: &str, name: &str| -> Result<u32> {
        let f = super::tracefs::format(group, name)?;
        match f.offset("skaddr", 8) {
            ABSENT => bail!("this kernel's {group}:{name} record has no skaddr field"),
            at => Ok(at),
        }
    };
    match skaddr("tcp", "tcp_probe") {
        Ok(at) => r.probe_skaddr = at,
        Err(e) => notes.push(format!(
            "{e:#}: open connections are sampled for RTT only when established, when they \
             retransmit and when they close, not while they carry traffic"
        )),
    }
    match skaddr("tcp", "tcp_retransmit_skb") {
        Ok(at) => r.retransmit_skaddr = at,
        Err(e) => notes.push(format!("{e:#}: no RTT sample is taken at retransmissions")),
    }
    r
}

/// The maps only the connections programs write (the kernel side's per-CPU scratch slots are
/// one entry already): sized to one entry when the probe is off.
pub const MAPS: [&str; 7] = [
    "RESET_TOTALS",
    "RESET_FLOWS",
    "SOCKET_ERROR_TOTALS",
    "SOCKET_ERROR_FLOWS",
    "CONN_CLOSED_TOTALS",
    "CONN_STARTS",
    "CLOSED_WITH_ERROR",
];

/// Attaches the programs whose part of [`ConnectionsConfig`] is set.
pub fn attach(ebpf: &mut Ebpf, c: &ConnectionsConfig) -> Result<()> {
    if c.send_reset.skaddr != ABSENT {
        super::attach_tracepoint(ebpf, "tcp_send_reset", "tcp", "tcp_send_reset")?;
    }
    if c.receive_reset.skaddr != ABSENT {
        super::attach_tracepoint(ebpf, "tcp_receive_reset", "tcp", "tcp_receive_reset")?;
    }
    if c.sock.err != ABSENT && super::tracefs::format("sock", "inet_sk_error_report").is_ok() {
        super::attach_raw_tracepoint(ebpf, "inet_sk_error_report", "inet_sk_error_report")?;
    }
    if c.set_state.record.skaddr != ABSENT {
        super::attach_tracepoint(ebpf, "connections_set_state", "sock", "inet_sock_set_state")?;
    }
    if c.rtt.probe_skaddr != ABSENT {
        super::attach_tracepoint(ebpf, "connections_tcp_probe", "tcp", "tcp_probe")?;
    }
    if c.rtt.retransmit_skaddr != ABSENT {
        super::attach_tracepoint(ebpf, "connections_retransmit", "tcp", "tcp_retransmit_skb")?;
    }
    Ok(())
}

/// The kernel's exact counts: resets per (namespace, direction) and per flow, socket errors per
/// (namespace, errno) and per flow.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub reset_totals: Vec<(ResetTotalKey, u64)>,
    pub reset_flows: Vec<(ResetKey, u64)>,
    pub error_totals: Vec<(ErrorTotalKey, u64)>,
    pub error_flows: Vec<(SocketErrorKey, u64)>,
    pub closed_totals: Vec<(ClosedKey, u64)>,
}

/// Reads [`Counts`].
pub fn read_counts(ebpf: &Ebpf) -> Result<Counts> {
    Ok(Counts {
        reset_totals: super::sum_per_cpu(ebpf, "RESET_TOTALS")?,
        reset_flows: super::sum_per_cpu(ebpf, "RESET_FLOWS")?,
        error_totals: super::sum_per_cpu(ebpf, "SOCKET_ERROR_TOTALS")?,
        error_flows: super::sum_per_cpu(ebpf, "SOCKET_ERROR_FLOWS")?,
        closed_totals: super::sum_per_cpu(ebpf, "CONN_CLOSED_TOTALS")?,
    })
}

/// How a connection ended, as reports and metrics name it.
pub fn how_name(h: u32) -> &'static str {
    match h {
        how::FIN => "fin",
        how::RST_RECEIVED => "rst_received",
        how::RST_SENT => "rst_sent",
        how::TIMEOUT => "timeout",
        _ => "error",
    }
}

/// The closed set of [`how_name`] values.
pub const HOW_NAMES: [&str; 5] = ["fin", "rst_received", "rst_sent", "timeout", "error"];

/// The names of `enum sk_rst_reason` on this kernel (6.10+), without their `SK_RST_REASON_`
/// prefix; empty where the kernel gives no reasons.
pub fn reset_reasons(btf: &Btf) -> Vec<(u32, String)> {
    btf.enum_values("sk_rst_reason")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| {
            let v = u32::try_from(value).ok()?;
            Some((
                v,
                name.strip_prefix("SK_RST_REASON_")
                    .unwrap_or(&name)
                    .to_string(),
            ))
        })
        .collect()
}

/// The name of an errno a socket error carries (`ECONNREFUSED`), the label Prometheus gets:
/// the six a TCP application meets, or `other`.
pub fn errno_name(errno: u32) -> &'static str {
    match errno as i32 {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EPIPE => "EPIPE",
        _ => "other",
    }
}

/// The closed set of [`errno_name`] values, for metrics that list every label.
pub const ERRNO_NAMES: [&str; 7] = [
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "EPIPE",
    "other",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_before_and_after_6_10() -> Result<()> {
        let new = Format::parse(
            "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
             \tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\
             \tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n",
        );
        let l = reset_layout(&new)?;
        assert_eq!((l.skbaddr, l.skaddr, l.state, l.reason), (8, 16, 24, 28));
        assert_eq!((l.saddr_sa, l.daddr_sa), (32, 60));
        assert_eq!((l.saddr, l.sport, l.family), (ABSENT, ABSENT, ABSENT));
        // 5.10's tcp_event_sk_skb: separate fields, no family, no reason.
        let old = Format::parse(
            "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
             \tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
             \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
             \tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n",
        );
        let l = reset_layout(&old)?;
        assert_eq!((l.sport, l.saddr, l.daddr_v6), (28, 32, 56));
        assert_eq!((l.saddr_sa, l.reason, l.family), (ABSENT, ABSENT, ABSENT));
        assert!(reset_layout(&Format::default()).is_err());
        let set_state = Format::parse(
            "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
             \tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
             \tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
             \tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n",
        );
        let l = set_state_layout(&set_state)?;
        assert_eq!(
            (l.record.skaddr, l.oldstate, l.newstate, l.protocol),
            (8, 16, 20, 30)
        );
        assert_eq!(
            (l.record.sport, l.record.family, l.record.saddr),
            (24, 28, 32)
        );
        assert!(set_state_layout(&Format::default()).is_err());
        Ok(())
    }

    #[test]
    fn errno_labels_are_a_closed_set() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(32), "EPIPE");
        assert_eq!(errno_name(5), "other");
        for e in 0..200 {
            assert!(ERRNO_NAMES.contains(&errno_name(e)));
            assert!(HOW_NAMES.contains(&how_name(e)));
        }
        assert_eq!(how_name(how::RST_SENT), "rst_sent");
    }
}

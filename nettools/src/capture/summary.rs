//! One line per packet, in the spirit of `tcpdump -n`: time, protocol, addresses and ports, and
//! what the packet is (TCP flags, ICMP type, length). The bytes come from the wire: every field
//! is read through bounds-checked slices, and a packet cut short says so instead of guessing.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// LINKTYPE_ETHERNET and LINKTYPE_RAW (an IPv4 or IPv6 packet, no link header).
pub const LINKTYPE_ETHERNET: u16 = 1;
pub const LINKTYPE_RAW: u16 = 101;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// `HH:MM:SS.ffffff` (UTC) of a time in nanoseconds since the epoch.
pub fn clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ns % 1_000_000_000 / 1000
    )
}

/// The line for one packet (without the time), `len` being its length on the wire.
pub fn describe(linktype: u16, data: &[u8], len: u32) -> String {
    let text = match linktype {
        LINKTYPE_ETHERNET => ethernet(data),
        LINKTYPE_RAW => match data.first().map(|b| b >> 4) {
            Some(4) => ipv4(data),
            Some(6) => ipv6(data),
            _ => None,
        },
        _ => None,
    };
    text.unwrap_or_else(|| format!("link type {linktype}, length {len}"))
}

fn ethernet(data: &[u8]) -> Option<String> {
    let mut ethertype = be16(data, 12)?;
    let mut at = 14;
    // 802.1Q / 802.1ad tags.
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(data, at + 2)?;
        at += 4;
    }
    let payload = data.get(at..)?;
    Some(match ethertype {
        0x0800 => ipv4(payload).unwrap_or_else(|| "IP, truncated".into()),
        0x86dd => ipv6(payload).unwrap_or_else(|| "IP6, truncated".into()),
        0x0806 => arp(payload).unwrap_or_else(|| "ARP, truncated".into()),
        other => format!("ethertype 0x{other:04x}, length {}", data.len()),
    })
}

fn arp(p: &[u8]) -> Option<String> {
    let op = be16(p, 6)?;
    let sender = Ipv4Addr::from(be32(p, 14)?);
    let target = Ipv4Addr::from(be32(p, 24)?);
    Some(match op {
        1 => format!(
            "ARP, Request who-has {target} tell {sender}, length {}",
            p.len()
        ),
        2 => {
            let mac = p.get(8..14)?;
            let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "ARP, Reply {sender} is-at {}, length {}",
                mac.join(":"),
                p.len()
            )
        }
        _ => format!("ARP, op {op}, length {}", p.len()),
    })
}

fn ipv4(p: &[u8]) -> Option<String> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    let total = usize::from(be16(p, 2)?);
    let proto = *p.get(9)?;
    let src = Ipv4Addr::from(be32(p, 12)?);
    let dst = Ipv4Addr::from(be32(p, 16)?);
    let fragment = be16(p, 6)? & 0x1fff;
    let payload_len = total.saturating_sub(ihl);
    let payload = p.get(ihl..).unwrap_or(&[]);
    if fragment != 0 {
        return Some(format!(
            "IP {src} > {dst}: fragment, proto {proto}, length {payload_len}"
        ));
    }
    Some(format!(
        "IP {}",
        transport(
            proto,
            &src.to_string(),
            &dst.to_string(),
            payload,
            payload_len,
            false
        )
    ))
}

fn ipv6(p: &[u8]) -> Option<String> {
    let mut payload_len = usize::from(be16(p, 4)?);
    let mut next = *p.get(6)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
    let mut at = 40;
    // Extension headers (hop-by-hop, routing, destination options, fragment), at most a few.
    for _ in 0..8 {
        let len = match next {
            0 | 43 | 60 => (usize::from(*p.get(at + 1)?) + 1) * 8,
            44 => 8,
            _ => break,
        };
        next = *p.get(at)?;
        at += len;
        payload_len = payload_len.saturating_sub(len);
    }
    let payload = p.get(at..).unwrap_or(&[]);
    Some(format!(
        "IP6 {}",
        transport(
            next,
            &src.to_string(),
            &dst.to_string(),
            payload,
            payload_len,
            true
        )
    ))
}

/// `SRC.PORT > DST.PORT: …` for TCP and UDP, `SRC > DST: …` for the rest.
fn transport(proto: u8, src: &str, dst: &str, p: &[u8], len: usize, v6: bool) -> String {
    let ports = (be16(p, 0), be16(p, 2));
    match (proto, ports) {
        (6, (Some(sp), Some(dp))) => {
            let mut line = format!("{src}.{sp} > {dst}.{dp}: Flags [");
            let header = p.get(12).map_or(20, |b| usize::from(b >> 4) * 4);
            if let Some(flags) = p.get(13) {
                for (bit, c) in [
                    (0x02, 'S'),
                    (0x01, 'F'),
                    (0x04, 'R'),
                    (0x08, 'P'),
                    (0x20, 'U'),
                    (0x40, 'E'),
                    (0x80, 'W'),
                ] {
                    if flags & bit != 0 {
                        line.push(c);
                    }
                }
                if flags & 0x10 != 0 {
                    line.push('.');
                }
            }
            line.push(']');
            if let Some(seq) = be32(p, 4) {
                let _ = write!(line, ", seq {seq}");
            }
            let _ = write!(line, ", length {}", len.saturating_sub(header));
            line
        }
        (17, (Some(sp), Some(dp))) => {
            format!(
                "{src}.{sp} > {dst}.{dp}: UDP, length {}",
                len.saturating_sub(8)
            )
        }
        (1, _) if !v6 => format!("{src} > {dst}: ICMP {}, length {len}", icmp(p, false)),
        (58, _) if v6 => format!("{src} > {dst}: ICMP6 {}, length {len}", icmp(p, true)),
        _ => format!("{src} > {dst}: ip-proto-{proto} {len}"),
    }
}

fn icmp(p: &[u8], v6: bool) -> String {
    let (Some(&kind), Some(&code)) = (p.first(), p.get(1)) else {
        return "truncated".into();
    };
    let echo = |what: &str| match (be16(p, 4), be16(p, 6)) {
        (Some(id), Some(seq)) => format!("{what}, id {id}, seq {seq}"),
        _ => what.to_string(),
    };
    match (v6, kind) {
        (false, 8) | (true, 128) => echo("echo request"),
        (false, 0) | (true, 129) => echo("echo reply"),
        (false, 3) => format!("unreachable, code {code}"),
        (false, 11) | (true, 3) => format!("time exceeded, code {code}"),
        (true, 1) => format!("unreachable, code {code}"),
        (true, 130) => "multicast listener query".into(),
        (true, 131) => "multicast listener report".into(),
        (true, 143) => "multicast listener report v2".into(),
        (true, 135) => "neighbor solicitation".into(),
        (true, 136) => "neighbor advertisement".into(),
        (true, 133) => "router solicitation".into(),
        (true, 134) => "router advertisement".into(),
        _ => format!("type {kind}, code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.extend_from_slice(&ethertype.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&[10, 200, 0, 1, 10, 200, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn echo_request() {
        let icmp = [8, 0, 0, 0, 0, 7, 0, 3, 1, 2, 3, 4];
        let line = describe(LINKTYPE_ETHERNET, &eth(0x0800, &ipv4(1, &icmp)), 46);
        assert_eq!(
            line,
            "IP 10.200.0.1 > 10.200.0.2: ICMP echo request, id 7, seq 3, length 12"
        );
        // The same without Ethernet header.
        assert_eq!(describe(LINKTYPE_RAW, &ipv4(1, &icmp), 32), line);
    }

    #[test]
    fn tcp_syn() {
        let mut tcp = vec![0x1f, 0x90, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02];
        tcp.resize(20, 0);
        let line = describe(LINKTYPE_ETHERNET, &eth(0x0800, &ipv4(6, &tcp)), 54);
        assert_eq!(
            line,
            "IP 10.200.0.1.8080 > 10.200.0.2.80: Flags [S], seq 1, length 0"
        );
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // An MLDv2 report: hop-by-hop options (router alert), then ICMPv6 type 143.
        let mut p = vec![0x60, 0, 0, 0, 0, 36, 0, 1];
        p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16]);
        p.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        p.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1]);
        p.resize(40 + 36, 0);
        assert_eq!(
            describe(LINKTYPE_RAW, &p, 76),
            "IP6 fe80::1 > ff02::16: ICMP6 multicast listener report v2, length 28"
        );
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Every prefix of every packet kind, and garbage.
        let mut tcp = vec![0u8; 20];
        tcp[12] = 0xf0;
        for packet in [
            eth(0x0800, &ipv4(6, &tcp)),
            eth(0x0800, &ipv4(17, &[0; 8])),
            eth(0x86dd, &[0x60; 60]),
            eth(0x0806, &[1; 28]),
            eth(0x8100, &[0x81, 0, 0x81, 0, 0x81, 0]),
            vec![0xff; 80],
        ] {
            for n in 0..=packet.len() {
                let _ = describe(LINKTYPE_ETHERNET, &packet[..n], 9999);
                let _ = describe(LINKTYPE_RAW, &packet[..n], 9999);
            }
        }
        assert_eq!(describe(228, &[], 0), "link type 228, length 0");
    }

    #[test]
    fn clock_is_utc_with_microseconds() {
        assert_eq!(
            clock(86_400_000_000_000 + 3_723_000_456_789),
            "01:02:03.000456"
        );
    }
}

//! The probes `nettools check` sends, from a thread inside the source's network namespace:
//! TCP connects, UDP datagrams that wait for any answer, ICMP/ICMPv6 echo requests (raw
//! sockets: ping sockets need `ping_group_range`, which is the namespace owner's setting).
//! Also where the source's route to the destination leads (`ip route get`, by rtnetlink).

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::RawFd,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use serde::Serialize;

use crate::{cli::CheckProto, discover::netlink};

/// What one probe got.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeResult {
    /// 1-based.
    pub n: u32,
    /// `answered`, `refused`, `unreachable`, `timeout` or `error`.
    pub outcome: &'static str,
    /// The error the source's socket got (`ECONNREFUSED`, `EHOSTUNREACH`, …), or an ICMP
    /// error's name for echo probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Time from sending to the answer (or to the error), in milliseconds.
    pub ms: f64,
    /// `--proto dns`: the name asked last and its answer (`db.lab: 10.0.0.7`, `db.lab:
    /// SERVFAIL`, `db.lab: no answer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// Who sent the ICMP error the probe got (a router on the way, or the destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_from: Option<IpAddr>,
    /// The MTU an ICMP "fragmentation needed" / ICMPv6 "packet too big" named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// What an ICMP error says beyond its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct IcmpDetail {
    from: Option<IpAddr>,
    mtu: Option<u32>,
}

/// A probe's outcome, the error it got, and the ICMP error's detail.
type Outcome = (&'static str, Option<String>, IcmpDetail);

/// The source's route to the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The interface the route leaves by.
    pub interface: Option<String>,
    /// The next hop, when not on the link.
    pub via: Option<IpAddr>,
    /// The source address the kernel picks.
    pub source: Option<IpAddr>,
}

/// Sends `count` probes to `dst` (`port` for TCP and UDP), one after the other, each waiting
/// at most `timeout`; with `size`, ICMP and UDP probes are IP packets of that many bytes with
/// Don't Fragment set. Runs in the caller's network namespace.
pub fn send(
    proto: CheckProto,
    dst: IpAddr,
    port: Option<u16>,
    count: u32,
    timeout: Duration,
    size: Option<u32>,
) -> Vec<ProbeResult> {
    let mut out = Vec::new();
    let mut icmp = None;
    for n in 1..=count {
        let started = Instant::now();
        let (outcome, error, detail) = match (proto, port) {
            (CheckProto::Tcp, Some(port)) => {
                let (o, e) = tcp(SocketAddr::new(dst, port), timeout);
                (o, e, IcmpDetail::default())
            }
            (CheckProto::Udp, Some(port)) => {
                let (o, e) = udp(SocketAddr::new(dst, port), timeout, size);
                (o, e, IcmpDetail::default())
            }
            (CheckProto::Icmp, _) => {
                if icmp.is_none() {
                    icmp = Some(Echo::open(dst, size.is_some()));
                }
                match icmp.as_ref() {
                    Some(Ok(echo)) => echo.ping(dst, n as u16, timeout, size),
                    Some(Err(e)) => ("error", Some(format!("{e:#}")), IcmpDetail::default()),
                    None => ("error", None, IcmpDetail::default()),
                }
            }
            _ => (
                "error",
                Some("tcp and udp need a port".to_string()),
                IcmpDetail::default(),
            ),
        };
        out.push(ProbeResult {
            n,
            outcome,
            error,
            // Microseconds are what a clock read around a syscall can tell.
            ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            dns: None,
            icmp_from: detail.from,
            mtu: detail.mtu,
        });
        // Probes a little apart, so each one's packets are told from the next one's.
        std::thread::sleep(Duration::from_millis(50));
    }
    out
}

/// The outcome of a socket error.
fn classify(e: &std::io::Error) -> (&'static str, Option<String>) {
    let name = e.raw_os_error().map(errno_name);
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ("refused", name),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM) => {
            ("unreachable", name)
        }
        Some(libc::ETIMEDOUT | libc::EAGAIN) => ("timeout", None),
        _ if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            ("timeout", None)
        }
        _ => ("error", Some(name.unwrap_or_else(|| e.to_string()))),
    }
}

/// The symbolic name of the errnos a probe can get.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        other => return format!("errno {other}"),
    }
    .to_string()
}

fn tcp(dst: SocketAddr, timeout: Duration) -> (&'static str, Option<String>) {
    match TcpStream::connect_timeout(&dst, timeout) {
        Ok(_) => ("answered", None),
        Err(e) => classify(&e),
    }
}

/// Sets Don't Fragment on `fd`'s packets and ignores the path MTU the kernel has learnt (as
/// `tracepath` probes): each probe of a given size goes out as that size and meets the path.
fn dont_fragment(fd: RawFd, v6: bool) -> std::io::Result<()> {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: an int option on a valid socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if v6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        set(
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

/// The payload that makes an IP packet of `size` bytes with an 8-byte ICMP or UDP header.
fn payload(size: Option<u32>, v6: bool, default: &[u8]) -> Vec<u8> {
    match size {
        Some(size) => {
            let headers = if v6 { 48 } else { 28 };
            vec![0x6e; (size as usize).saturating_sub(headers)]
        }
        None => default.to_vec(),
    }
}

fn udp(dst: SocketAddr, timeout: Duration, size: Option<u32>) -> (&'static str, Option<String>) {
    let bind: SocketAddr = if dst.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    // Connected: an ICMP error for the datagram comes back as the socket's error.
    let sent = socket
        .connect(dst)
        .and_then(|()| match size {
            Some(_) => dont_fragment(socket.as_raw_fd(), dst.is_ipv6()),
            None => Ok(()),
        })
        .and_then(|()| socket.set_read_timeout(Some(timeout)))
        .and_then(|()| socket.send(&payload(size, dst.is_ipv6(), b"nettools check")));
    if let Err(e) = sent {
        return classify(&e);
    }
    let mut buf = [0u8; 512];
    match socket.recv(&mut buf) {
        Ok(_) => ("answered", None),
        Err(e) => classify(&e),
    }
}

/// A raw ICMP or ICMPv6 socket for echo requests.
struct Echo {
    fd: OwnedFd,
    v6: bool,
    id: u16,
}

impl Echo {
    fn open(dst: IpAddr, dont_fragment_packets: bool) -> Result<Self> {
        let v6 = dst.is_ipv6();
        let (family, proto) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        // SAFETY: plain socket(2) call; the descriptor is owned below.
        let raw = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if raw < 0 {
            bail!(
                "cannot open a raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a descriptor socket(2) just returned, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if dont_fragment_packets {
            dont_fragment(fd.as_raw_fd(), v6)
                .map_err(|e| anyhow::anyhow!("cannot set Don't Fragment: {e}"))?;
        }
        Ok(Self {
            fd,
            v6,
            id: (std::process::id() as u16) ^ 0x6e74,
        })
    }

    /// Sends echo request `seq` (an IP packet of `size` bytes when given) and waits for its
    /// reply, or an ICMP error about it.
    fn ping(&self, dst: IpAddr, seq: u16, timeout: Duration, size: Option<u32>) -> Outcome {
        let mut packet = vec![if self.v6 { 128 } else { 8 }, 0, 0, 0];
        packet.extend_from_slice(&self.id.to_be_bytes());
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&payload(size, self.v6, b"nettools check.."));
        if !self.v6 {
            let sum = checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let addr = sockaddr(SocketAddr::new(dst, 0));
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                addr.0.as_ptr().cast(),
                addr.1,
            )
        };
        if sent < 0 {
            let (o, e) = classify(&std::io::Error::last_os_error());
            return (o, e, IcmpDetail::default());
        }
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ("timeout", None, IcmpDetail::default());
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready <= 0 {
                continue;
            }
            let mut from = [0u8; 128];
            let mut from_len = from.len() as libc::socklen_t;
            // SAFETY: buffers valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    from.as_mut_ptr().cast(),
                    &mut from_len,
                )
            };
            if n <= 0 {
                continue;
            }
            let data = &buf[..n as usize];
            let sender = sender_of(&from, from_len);
            if let Some(answer) = answer(self.v6, self.id, data, dst, seq, sender) {
                return answer;
            }
        }
    }
}

/// The address in a `recvfrom` source address.
fn sender_of(from: &[u8; 128], len: libc::socklen_t) -> Option<IpAddr> {
    let family = u16::from_ne_bytes([from[0], from[1]]);
    match (i32::from(family), len as usize) {
        (libc::AF_INET, l) if l >= 8 => Some(IpAddr::from([from[4], from[5], from[6], from[7]])),
        (libc::AF_INET6, l) if l >= 24 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&from[8..24]);
            Some(IpAddr::from(a))
        }
        _ => None,
    }
}

/// An echo reply to `seq` from `dst`, or an ICMP error quoting our request (sent by `sender`):
/// its outcome, with the MTU a "fragmentation needed" / "packet too big" names.
fn answer(
    v6: bool,
    id: u16,
    data: &[u8],
    dst: IpAddr,
    seq: u16,
    sender: Option<IpAddr>,
) -> Option<Outcome> {
    // IPv4 raw sockets get the IP header; ICMPv6 raw sockets do not.
    let (icmp, from) = if v6 {
        (data, None)
    } else {
        let ihl = usize::from(*data.first()? & 0x0f) * 4;
        let src = IpAddr::from([
            *data.get(12)?,
            *data.get(13)?,
            *data.get(14)?,
            *data.get(15)?,
        ]);
        (data.get(ihl..)?, Some(src))
    };
    let ours = |echo: &[u8]| {
        echo.get(4..6) == Some(&id.to_be_bytes()[..])
            && echo.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    let (reply, error_types): (u8, &[u8]) = if v6 { (129, &[1, 2, 3]) } else { (0, &[3, 11]) };
    let kind = *icmp.first()?;
    let code = *icmp.get(1)?;
    if kind == reply && ours(icmp) && from.is_none_or(|f| f == dst) {
        return Some(("answered", None, IcmpDetail::default()));
    }
    if error_types.contains(&kind) {
        // The quoted request: after the 8-byte error header, its IP header, then the echo.
        let quoted = icmp.get(8..)?;
        let inner = if v6 {
            quoted.get(40..)?
        } else {
            let ihl = usize::from(*quoted.first()? & 0x0f) * 4;
            quoted.get(ihl..)?
        };
        if ours(inner) {
            // IPv4 "fragmentation needed" names the next hop's MTU in bytes 6-7, ICMPv6
            // "packet too big" the MTU in bytes 4-7.
            let mtu = match (v6, kind, code) {
                (false, 3, 4) => icmp
                    .get(6..8)
                    .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
                (true, 2, _) => icmp
                    .get(4..8)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                _ => None,
            };
            let mut name = icmp_error_name(v6, kind, code);
            if let Some(m) = mtu {
                name.push_str(&format!(" (mtu {m})"));
            }
            return Some((
                "unreachable",
                Some(name),
                IcmpDetail {
                    from: sender.or(from),
                    mtu,
                },
            ));
        }
    }
    None
}

/// `ICMP net unreachable`, `ICMPv6 no route`, …
pub fn icmp_error_name(v6: bool, kind: u8, code: u8) -> String {
    let name = match (v6, kind, code) {
        (false, 3, 0) => "ICMP net unreachable",
        (false, 3, 1) => "ICMP host unreachable",
        (false, 3, 3) => "ICMP port unreachable",
        (false, 3, 4) => "ICMP fragmentation needed",
        (false, 3, 9 | 10 | 13) => "ICMP administratively prohibited",
        (false, 11, _) => "ICMP time exceeded",
        (true, 1, 0) => "ICMPv6 no route",
        (true, 1, 1) => "ICMPv6 administratively prohibited",
        (true, 1, 3) => "ICMPv6 address unreachable",
        (true, 1, 4) => "ICMPv6 port unreachable",
        (true, 2, _) => "ICMPv6 packet too big",
        (true, 3, _) => "ICMPv6 time exceeded",
        _ => {
            return format!(
                "{} type {kind} code {code}",
                if v6 { "ICMPv6" } else { "ICMP" }
            );
        }
    };
    name.to_string()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A socket address as the kernel takes it: bytes and length.
fn sockaddr(addr: SocketAddr) -> ([u8; 28], libc::socklen_t) {
    let mut out = [0u8; 28];
    match addr {
        SocketAddr::V4(a) => {
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            (out, 16)
        }
        SocketAddr::V6(a) => {
            out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            (out, 28)
        }
    }
}

/// `ip route get DST` in the calling thread's namespace.
pub fn route_to(dst: IpAddr) -> Result<Route> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    let answers = netlink::exchange(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )?;
    let links = netlink::links().unwrap_or_default();
    let mut route = Route::default();
    for answer in answers {
        let RouteNetlinkMessage::NewRoute(r) = answer else {
            continue;
        };
        for attr in r.attributes {
            match attr {
                RouteAttribute::Oif(index) => {
                    route.interface = Some(
                        links
                            .iter()
                            .find(|l| l.index == index)
                            .map_or_else(|| format!("ifindex {index}"), |l| l.name.clone()),
                    );
                }
                RouteAttribute::Gateway(a) => route.via = address(&a),
                RouteAttribute::PrefSource(a) => route.source = address(&a),
                _ => {}
            }
        }
    }
    Ok(route)
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request() {
        // Type 8, id 1, seq 1, no payload: 0xf7fd (as ping computes it).
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
        // An odd length pads with zero.
        assert_eq!(checksum(&[0xff]), 0x00ff);
    }

    #[test]
    fn icmp_errors_about_our_request_are_recognised() {
        let dst: IpAddr = "10.9.9.9".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 9, 9, 9, 10, 0, 0, 1,
        ];
        let mut reply = ip.clone();
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        assert_eq!(
            answer(false, 0x1234, &reply, dst, 7, None),
            Some(("answered", None, IcmpDetail::default()))
        );
        assert_eq!(answer(false, 0x1234, &reply, dst, 8, None), None);
        // A router's "net unreachable" quoting request 7.
        ip[12..16].copy_from_slice(&[10, 0, 0, 254]);
        let mut error = ip.clone();
        error.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        error.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1]);
        error.extend_from_slice(&[10, 9, 9, 9, 8, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let router = Some(IpAddr::from([10, 0, 0, 254]));
        assert_eq!(
            answer(false, 0x1234, &error, dst, 7, None),
            Some((
                "unreachable",
                Some("ICMP net unreachable".to_string()),
                IcmpDetail {
                    from: router,
                    mtu: None
                }
            ))
        );
        // "Fragmentation needed" names the next hop's MTU (bytes 6-7): 1280.
        let mut too_big = error.clone();
        too_big[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0x00]);
        assert_eq!(
            answer(false, 0x1234, &too_big, dst, 7, router),
            Some((
                "unreachable",
                Some("ICMP fragmentation needed (mtu 1280)".to_string()),
                IcmpDetail {
                    from: router,
                    mtu: Some(1280)
                }
            ))
        );
        // Truncated packets are no answer, never a panic.
        for cut in 0..error.len() {
            let _ = answer(false, 0x1234, &error[..cut], dst, 7, None);
        }
    }
}

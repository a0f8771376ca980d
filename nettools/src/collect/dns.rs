//! Reading what userspace needs from a captured DNS message: id, response flag, rcode, and the
//! first question's name and type. Messages come from the wire through a 256-byte capture, so
//! anything may be cut or malformed: every read is bounds-checked and a bad message is a clear
//! error, never a panic.

use std::fmt;

/// Why a message could not be read completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// Shorter than the 12-byte header.
    NoHeader,
    /// The question runs past the captured bytes.
    Truncated,
    /// A label is longer than 63 bytes, a compression pointer loops, or the name is too long.
    BadName,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoHeader => "shorter than a DNS header",
            Self::Truncated => "the question is cut off",
            Self::BadName => "malformed name",
        })
    }
}

/// The parts of a DNS message nettools reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    pub questions: u16,
    pub answers: u16,
    /// First question's name (`example.com`, `.` for the root), when it could be read.
    pub qname: Option<String>,
    pub qtype: Option<u16>,
}

/// Parses a message; the header alone is enough for a result, the question is best effort
/// (`qname`/`qtype` are `None` when it is cut or malformed; [`question`] says why).
pub fn parse(msg: &[u8]) -> Result<DnsMessage, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::NoHeader);
    }
    let be16 = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let mut m = DnsMessage {
        id: be16(0),
        response: msg[2] & 0x80 != 0,
        rcode: msg[3] & 0x0f,
        questions: be16(4),
        answers: be16(6),
        qname: None,
        qtype: None,
    };
    if m.questions > 0
        && let Ok((name, qtype)) = question(msg)
    {
        m.qname = Some(name);
        m.qtype = Some(qtype);
    }
    Ok(m)
}

/// The first question's name and type.
pub fn question(msg: &[u8]) -> Result<(String, u16), DnsError> {
    question_with_end(msg).map(|(n, t, _)| (n, t))
}

/// The first question's name, type, and the offset just after it (after its class).
pub fn question_with_end(msg: &[u8]) -> Result<(String, u16, usize), DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::NoHeader);
    }
    let (name, end) = read_name(msg, 12)?;
    let t = msg.get(end..end + 4).ok_or(DnsError::Truncated)?;
    Ok((name, u16::from_be_bytes([t[0], t[1]]), end + 4))
}

/// A response to `query` with `rcode` and, when given, one A record for the question's name
/// (used by the lab's DNS server). `None` when the query cannot be read.
pub fn build_response(
    query: &[u8],
    rcode: u8,
    answer: Option<std::net::Ipv4Addr>,
) -> Option<Vec<u8>> {
    let (_, _, end) = question_with_end(query).ok()?;
    let mut r = query[..end].to_vec();
    r[2] = 0x80 | (query[2] & 0x01) | 0x04; // QR, RD echoed, AA
    r[3] = 0x80 | (rcode & 0x0f); // RA
    r[4..6].copy_from_slice(&1u16.to_be_bytes());
    let answers: u16 = u16::from(answer.is_some() && rcode == 0);
    r[6..8].copy_from_slice(&answers.to_be_bytes());
    r[8..12].copy_from_slice(&[0, 0, 0, 0]);
    if answers == 1
        && let Some(a) = answer
    {
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        r.extend_from_slice(&a.octets());
    }
    Some(r)
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn read_name(msg: &[u8], at: usize) -> Result<(String, usize), DnsError> {
    let mut labels: Vec<String> = Vec::new();
    let mut pos = at;
    let mut end = None;
    let mut jumps = 0;
    let mut total = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    let after = end.unwrap_or(pos + 1);
                    let name = if labels.is_empty() {
                        ".".to_string()
                    } else {
                        labels.join(".")
                    };
                    return Ok((name, after));
                }
                let len = len as usize;
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(DnsError::Truncated)?;
                total += len + 1;
                if total > 255 {
                    return Err(DnsError::BadName);
                }
                labels.push(label.iter().map(|&b| printable(b)).collect());
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated)?;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                if jumps > 16 {
                    return Err(DnsError::BadName);
                }
                let target = (((len & 0x3f) as usize) << 8) | low as usize;
                if target >= pos {
                    // Pointers only go backwards; anything else loops or is garbage.
                    return Err(DnsError::BadName);
                }
                pos = target;
            }
            _ => return Err(DnsError::BadName),
        }
    }
}

/// A label byte as shown to people: printable ASCII as is, the rest escaped like dig does.
fn printable(b: u8) -> String {
    if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
        (b as char).to_string()
    } else {
        format!("\\{b:03}")
    }
}

/// The rcode's name (RFC 1035, 2136, 6895).
pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        other => format!("RCODE{other}"),
    }
}

/// The query type's name.
pub fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        other => format!("TYPE{other}"),
    }
}

/// The addresses of a response's A and AAAA answer records (class IN), in order. Records of
/// other types (a CNAME before the address) are stepped over; a record cut short is an error.
pub fn answer_addresses(msg: &[u8]) -> Result<Vec<std::net::IpAddr>, DnsError> {
    let m = parse(msg)?;
    let (_, _, mut pos) = question_with_end(msg)?;
    let mut out = Vec::new();
    for _ in 0..m.answers {
        let (_, after) = read_name(msg, pos)?;
        let fixed = msg.get(after..after + 10).ok_or(DnsError::Truncated)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg
            .get(after + 10..after + 10 + len)
            .ok_or(DnsError::Truncated)?;
        match (rtype, class, data.len()) {
            (1, 1, 4) => {
                out.push(std::net::Ipv4Addr::new(data[0], data[1], data[2], data[3]).into())
            }
            (28, 1, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                out.push(std::net::Ipv6Addr::from(a).into());
            }
            _ => {}
        }
        pos = after + 10 + len;
    }
    Ok(out)
}

/// Builds a query for `name` (used by tests and the lab, and by `check --proto dns`).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[cfg(test)]
mod tests {

    #[test]
    fn answer_addresses_are_read_and_cut_records_refused() {
        let q = build_query(7, "db.lab", 1);
        let r = build_response(&q, 0, Some(std::net::Ipv4Addr::new(10, 0, 0, 7)));
        let r = r.unwrap_or_default();
        assert_eq!(
            answer_addresses(&r),
            Ok(vec![std::net::Ipv4Addr::new(10, 0, 0, 7).into()])
        );
        // An AAAA record after it (compressed name, class IN, 16 bytes).
        let mut two = r.clone();
        two[7] = 2;
        two.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 30, 0, 16]);
        two.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let v6: std::net::IpAddr = "fd00::7"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST.into());
        assert_eq!(answer_addresses(&two).map(|a| a.len()), Ok(2));
        assert_eq!(
            answer_addresses(&two).ok().and_then(|a| a.get(1).copied()),
            Some(v6)
        );
        // Cut anywhere inside the record: an error, never a panic.
        for end in r.len() - 15..r.len() {
            assert!(answer_addresses(&r[..end]).is_err(), "cut at {end}");
        }
        // No answer (SERVFAIL): no addresses.
        let fail = build_response(&q, 2, None).unwrap_or_default();
        assert_eq!(answer_addresses(&fail), Ok(vec![]));
    }

    use super::*;

    #[test]
    fn reads_a_query_and_a_response() {
        let q = build_query(0x1234, "www.example.com", 28);
        let m = parse(&q).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((m.id, m.response, m.rcode), (0x1234, false, 0));
        assert_eq!(m.qname.as_deref(), Some("www.example.com"));
        assert_eq!(m.qtype, Some(28));

        let mut r = q.clone();
        r[2] |= 0x80;
        r[3] = 0x03;
        // An answer whose name is a pointer back to the question (offset 12).
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        let m = parse(&r).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.response);
        assert_eq!(rcode_name(m.rcode), "NXDOMAIN");
        assert_eq!(m.answers, 1);
        assert_eq!(m.qname.as_deref(), Some("www.example.com"));
        assert_eq!(qtype_name(28), "AAAA");
    }

    #[test]
    fn builds_responses_the_parser_reads() {
        let q = build_query(42, "slow.test", 1);
        let r =
            build_response(&q, 0, Some(std::net::Ipv4Addr::new(10, 0, 0, 7))).unwrap_or_default();
        let m = parse(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((m.id, m.response, m.rcode, m.answers), (42, true, 0, 1));
        assert_eq!(m.qname.as_deref(), Some("slow.test"));
        let nx = build_response(&q, 3, None).unwrap_or_default();
        assert_eq!(parse(&nx).map(|m| (m.rcode, m.answers)), Ok((3, 0)));
        assert_eq!(build_response(&q[..14], 0, None), None);
    }

    #[test]
    fn malformed_and_truncated_messages_are_clear_errors() {
        assert_eq!(parse(&[]), Err(DnsError::NoHeader));
        assert_eq!(parse(&[0; 11]), Err(DnsError::NoHeader));
        let q = build_query(7, "example.com", 1);
        // Cut anywhere in the question: the header still reads, the name does not.
        for cut in 12..q.len() {
            let m = parse(&q[..cut]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.id, 7);
            assert_eq!(m.qname, None, "cut at {cut}");
            assert_eq!(question(&q[..cut]).err(), Some(DnsError::Truncated));
        }
        // A pointer to itself (a loop) and a forward pointer.
        let mut looped = q[..12].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(question(&looped).err(), Some(DnsError::BadName));
        // Reserved label type 0x40.
        let mut reserved = q[..12].to_vec();
        reserved.extend_from_slice(&[0x41, b'a', 0, 0, 1]);
        assert_eq!(question(&reserved).err(), Some(DnsError::BadName));
        // A name longer than 255 bytes.
        let mut long = q[..12].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.push(0);
        assert_eq!(question(&long).err(), Some(DnsError::BadName));
        // Odd bytes are escaped, not trusted.
        let mut odd = q[..12].to_vec();
        odd.extend_from_slice(&[3, b'a', b'.', 0xff, 0, 0, 1, 0, 1]);
        assert_eq!(
            question(&odd).map(|(n, _)| n),
            Ok("a\\046\\255".to_string())
        );
        assert_eq!(parse(&q[..12]).map(|m| m.qname), Ok(None));
    }

    /// The parser's contract under arbitrary input: no panic, whatever the bytes (the fuzz
    /// target in nettools/fuzz explores further).
    #[test]
    fn survives_random_and_mutated_input() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = build_query(1, "a.b.example.org", 1);
        for i in 0..200_000 {
            let len = (next() % 300) as usize;
            let mut buf: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut b = seed.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b.truncate(len.max(1).min(b.len()));
                b
            };
            let _ = parse(&buf);
            let _ = question(&buf);
            buf.clear();
        }
    }
}

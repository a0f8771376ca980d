//! Names resolved as the source's applications resolve them: its own resolv.conf (for a
//! namespace made with `ip netns`, `/etc/netns/NAME/resolv.conf` when it exists, as `ip netns
//! exec` puts it in place; for a process, the file in its own root), its first nameserver, its
//! search domains and `ndots`; the queries sent from inside the source's network namespace.
//! The file is untrusted input: read up to 64 KiB, anything not understood is skipped.

use std::{
    io::Read as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::probes::{ProbeResult, errno_name};
use crate::{collect::dns, discover::Workload};

/// What resolv.conf says, as the C library reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    pub file: PathBuf,
    /// At most three, as the C library uses (MAXNS).
    pub servers: Vec<IpAddr>,
    pub search: Vec<String>,
    /// Names with fewer dots than this are tried with the search domains first.
    pub ndots: usize,
}

/// The most of a resolv.conf that is read.
const MAX_FILE: u64 = 64 << 10;

impl ResolvConf {
    /// The resolv.conf the source's applications read.
    pub fn of(source: &Workload) -> anyhow::Result<Self> {
        let file = file_for(source);
        let mut text = Vec::new();
        std::fs::File::open(&file)
            .and_then(|f| f.take(MAX_FILE).read_to_end(&mut text))
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {}, the resolver configuration of {}: {e}",
                    file.display(),
                    source.name
                )
            })?;
        Ok(Self::parse(file, &String::from_utf8_lossy(&text)))
    }

    pub fn parse(file: PathBuf, text: &str) -> Self {
        let mut c = Self {
            file,
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") if c.servers.len() < 3 => {
                    // `fe80::1%eth0`: the scope is the interface, not part of the address.
                    if let Some(ip) = words
                        .next()
                        .and_then(|w| w.split('%').next())
                        .and_then(|w| w.parse().ok())
                    {
                        c.servers.push(ip);
                    }
                }
                // The last of `search` and `domain` wins, as in the C library.
                Some("search" | "domain") => {
                    c.search = words
                        .filter(|w| !w.is_empty() && w.len() <= 253)
                        .take(6)
                        .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                        .collect();
                }
                Some("options") => {
                    for w in words {
                        if let Some(n) = w.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            c.ndots = usize::min(n, 15);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The names tried for `name`, in order: a name with a trailing dot as it is; one with at
    /// least `ndots` dots first as it is, then with each search domain; one with fewer, the
    /// other way round.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|s| format!("{name}.{s}"));
        let mut out: Vec<String> = if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        };
        out.dedup();
        out
    }
}

/// The file for the source: an `ip netns` namespace's own, else the process's, else the host's.
fn file_for(source: &Workload) -> PathBuf {
    if let Some(path) = &source.netns_path
        && matches!(
            path.parent().and_then(Path::to_str),
            Some("/run/netns" | "/var/run/netns")
        )
        && let Some(name) = path.file_name()
    {
        let own = Path::new("/etc/netns").join(name).join("resolv.conf");
        if own.is_file() {
            return own;
        }
    }
    if let Some(pid) = source.pid {
        let own = PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf"));
        if own.is_file() {
            return own;
        }
    }
    PathBuf::from("/etc/resolv.conf")
}

/// What one query got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<IpAddr>),
    /// An error rcode (NXDOMAIN, SERVFAIL, REFUSED, …).
    Rcode(u8),
    /// NOERROR without an address record.
    NoRecord,
    /// Nothing within the timeout.
    NoAnswer,
    /// The socket's error (ECONNREFUSED: an ICMP port unreachable came back).
    Error(String),
}

/// One query for `name` (`qtype` 1 A, 28 AAAA) to `server`, port 53, over UDP from the calling
/// thread's network namespace; the answer and the milliseconds until it.
pub fn query(server: IpAddr, name: &str, qtype: u16, timeout: Duration) -> (Answer, f64) {
    let started = Instant::now();
    let answer = (|| -> std::io::Result<Answer> {
        let any: SocketAddr = match server {
            IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = UdpSocket::bind(any)?;
        socket.connect(SocketAddr::new(server, 53))?;
        // An id nobody else picks for the same name: the clock's low bits.
        let id = (started.elapsed().as_nanos() as u16) ^ (std::process::id() as u16);
        socket.send(&dns::build_query(id, name, qtype))?;
        let deadline = started + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Answer::NoAnswer);
            }
            socket.set_read_timeout(Some(left))?;
            let n = socket.recv(&mut buf)?;
            let reply = &buf[..n];
            // Only the answer to this query: same id, a response, the same question.
            let Ok(m) = dns::parse(reply) else { continue };
            if m.id != id
                || !m.response
                || !m
                    .qname
                    .as_deref()
                    .is_some_and(|q| q.eq_ignore_ascii_case(name))
            {
                continue;
            }
            if m.rcode != 0 {
                return Ok(Answer::Rcode(m.rcode));
            }
            return Ok(match dns::answer_addresses(reply) {
                Ok(a) if !a.is_empty() => Answer::Addresses(a),
                _ => Answer::NoRecord,
            });
        }
    })()
    .unwrap_or_else(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Answer::NoAnswer,
        _ => Answer::Error(e.raw_os_error().map_or_else(|| e.to_string(), errno_name)),
    });
    (
        answer,
        (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
    )
}

/// A name looked up as the C library would: each candidate, A then AAAA, until one has an
/// address. NXDOMAIN and a name without address records go on to the next candidate; any
/// other failure ends the lookup. Returns the last candidate asked and its answer.
pub fn resolve(conf: &ResolvConf, name: &str, timeout: Duration) -> (String, Answer, f64) {
    let Some(&server) = conf.servers.first() else {
        return (
            name.to_string(),
            Answer::Error(format!("no nameserver in {}", conf.file.display())),
            0.0,
        );
    };
    let mut total = 0.0;
    let mut last = (name.to_string(), Answer::NoRecord);
    for candidate in conf.candidates(name) {
        for qtype in [1, 28] {
            let (answer, ms) = query(server, &candidate, qtype, timeout);
            total += ms;
            match answer {
                Answer::Addresses(_) => return (candidate, answer, total),
                Answer::NoRecord => last = (candidate.clone(), answer),
                Answer::Rcode(3) => {
                    last = (candidate.clone(), answer);
                    break;
                }
                other => return (candidate, other, total),
            }
        }
    }
    (last.0, last.1, total)
}

/// `10.0.0.7, fd00::7` / `SERVFAIL` / `no A or AAAA record` / `no answer`.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Addresses(a) => a
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        Answer::Rcode(r) => dns::rcode_name(*r),
        Answer::NoRecord => "no A or AAAA record".to_string(),
        Answer::NoAnswer => "no answer".to_string(),
        Answer::Error(e) => e.clone(),
    }
}

/// `count` lookups of `name`, one after the other, as the probes of `check --proto dns`.
pub fn send(conf: &ResolvConf, name: &str, count: u32, timeout: Duration) -> Vec<ProbeResult> {
    (1..=count)
        .map(|n| {
            let (asked, answer, ms) = resolve(conf, name, timeout);
            let (outcome, error) = match &answer {
                Answer::Addresses(_) => ("answered", None),
                Answer::Rcode(_) | Answer::NoRecord => ("dns_error", None),
                Answer::NoAnswer => ("timeout", None),
                Answer::Error(e) if e == "ECONNREFUSED" => ("refused", Some(e.clone())),
                Answer::Error(e) => ("error", Some(e.clone())),
            };
            let result = ProbeResult {
                n,
                outcome,
                error,
                ms,
                dns: Some(format!("{asked}: {}", describe(&answer))),
                icmp_from: None,
                mtu: None,
            };
            std::thread::sleep(Duration::from_millis(50));
            result
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_the_c_library_reads_it() {
        let c = ResolvConf::parse(
            "/etc/resolv.conf".into(),
            "# generated\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver bad\n\
             domain old.example\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 timeout:2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n",
        );
        assert_eq!(
            c.servers,
            ["10.96.0.10", "fe80::1", "10.0.0.3"]
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .collect::<Vec<_>>()
        );
        assert_eq!(c.search.len(), 3);
        assert_eq!(c.ndots, 5);
        // Fewer dots than ndots: the search domains first, as a pod asks for `db`.
        assert_eq!(
            c.candidates("db")[..2],
            ["db.shop.svc.cluster.local", "db.svc.cluster.local"]
        );
        assert_eq!(c.candidates("db").last().map(String::as_str), Some("db"));
        assert_eq!(c.candidates("db.example.com."), ["db.example.com"]);
        let plain = ResolvConf::parse("/x".into(), "search lab\n");
        assert_eq!(plain.candidates("db.lab"), ["db.lab", "db.lab.lab"]);
        assert!(plain.servers.is_empty());
    }

    #[test]
    fn garbage_is_skipped_not_trusted() {
        let c = ResolvConf::parse(
            "/x".into(),
            "nameserver\nsearch\noptions ndots:99999999999 ndots:-1\n\u{1b}[2J nameserver 1.1.1.1\n",
        );
        assert!(c.servers.is_empty());
        assert!(c.search.is_empty());
        // A huge ndots is the C library's cap, a negative one is skipped.
        assert_eq!(c.ndots, 15);
    }
}

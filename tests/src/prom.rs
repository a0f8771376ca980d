//! Reading a Prometheus exposition as Prometheus would: a scrape over HTTP, Prometheus' own
//! linter (`promtool check metrics`), and samples looked up by name and labels.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// An HTTP answer: status code, head (status line and headers) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on `addr` in plain HTTP/1.1, with extra header lines, on a connection of its own
/// (waits at most `timeout` for the whole answer).
pub fn get(addr: SocketAddr, path: &str, headers: &[&str], timeout: Duration) -> Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8(response).context("the answer is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP response: {response}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head}"))?;
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Whether an answer is a scrape: 200 in Prometheus text format 0.0.4.
pub fn exposition(answer: Answer) -> Result<String> {
    if answer.status != 200 {
        bail!("scrape failed: {}\n{}", answer.head, answer.body);
    }
    if !answer
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    {
        bail!("not Prometheus text format 0.0.4: {}", answer.head);
    }
    Ok(answer.body)
}

/// `GET /metrics` on `addr`: the body, when the answer is 200 in Prometheus text format 0.0.4.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    exposition(get(addr, "/metrics", &[], Duration::from_secs(30))?)
}

/// `promtool check metrics` (Prometheus' own linter) accepts the exposition.
pub fn promtool_accepts(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run promtool (Debian's prometheus package; cargo xtask setup)")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics refused the exposition: {said}");
    }
    Ok(())
}

/// The samples of metric `name`: labels and value.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.rsplit_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let mut labels = BTreeMap::new();
        let mut chars = labels_text.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            if chars.next() != Some('"') {
                break;
            }
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim_start_matches(',').to_string(), value);
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        if let Ok(v) = value.trim().parse() {
            out.push((labels, v));
        }
    }
    out
}

/// The one sample of `name` whose labels include `want` (`None` when there is none).
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Result<Option<f64>> {
    let matching: Vec<f64> = samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => bail!("{} samples of {name} match {want:?}: {many:?}", many.len()),
    }
}

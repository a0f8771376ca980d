//! Reading a Prometheus exposition as Prometheus would: a scrape over HTTP, Prometheus' own
//! linter (`promtool check metrics`), and samples looked up by name and labels.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

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
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    exchange(addr, &request, timeout)
}

/// `GET path` in HTTP/1.0 (so the answer is never chunked), as Prometheus' HTTP API is read.
fn get_plain(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Answer> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
        timeout,
    )
}

/// Sends `request` on a connection of its own and reads the answer until the server closes
/// it (at most `timeout` for each step).
fn exchange(addr: SocketAddr, request: &str, timeout: Duration) -> Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
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

/// The samples of metric `name` whose labels include `want`.
pub fn samples_with(
    text: &str,
    name: &str,
    want: &[(&str, &str)],
) -> Vec<(BTreeMap<String, String>, f64)> {
    samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one sample of `name` whose labels include `want` (`None` when there is none).
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> Result<Option<f64>> {
    let matching: Vec<f64> = samples_with(text, name, want)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => bail!("{} samples of {name} match {want:?}: {many:?}", many.len()),
    }
}

/// A query string's value, percent-encoded (RFC 3986: only unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A series' labels, by name.
pub type Labels = BTreeMap<String, String>;

/// A series' raw samples: (timestamp in seconds since the epoch, value), oldest first.
pub type Points = Vec<(f64, f64)>;

/// One series of a PromQL answer: its labels and its value (the latest, for an instant query).
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: Labels,
    pub value: f64,
}

impl Series {
    /// The value of label `name` ("" when absent, as PromQL treats it).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A real Prometheus server (Debian's `prometheus`) on a loopback port of its own, with its
/// configuration and storage in `dir`; stopped with SIGTERM, by PID, when dropped.
pub struct Prometheus {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Prometheus {
    /// Writes `config` (JSON is YAML) to `dir/prometheus.yml` and starts Prometheus on it; returns
    /// once its HTTP API answers `/-/ready` (at most 30 s).
    pub fn start(config: &serde_json::Value, dir: &std::path::Path) -> Result<Self> {
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_json::to_string_pretty(config)?)?;
        let addr = crate::agent::free_port()?;
        let log = dir.join("prometheus.log");
        let child = crate::dies_with_test("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start prometheus (Debian's prometheus package; cargo xtask setup)")?;
        let mut p = Self { child, addr, log };
        let started = std::time::Instant::now();
        loop {
            if get_plain(addr, "/-/ready", Duration::from_secs(2)).is_ok_and(|a| a.status == 200) {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}): {}", p.log_text());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("prometheus was not ready within 30 s: {}", p.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What Prometheus logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/PATH`: the answer's `data`, when its status is `success`.
    pub fn api(&self, path: &str) -> Result<serde_json::Value> {
        let a = get_plain(
            self.addr,
            &format!("/api/v1/{path}"),
            Duration::from_secs(10),
        )?;
        let v: serde_json::Value = serde_json::from_str(&a.body)
            .with_context(|| format!("/api/v1/{path} answered no JSON: {}", a.body))?;
        if v["status"] != "success" {
            bail!(
                "/api/v1/{path}: {} ({})",
                v["error"].as_str().unwrap_or(&a.body),
                v["errorType"].as_str().unwrap_or("")
            );
        }
        Ok(v["data"].clone())
    }

    /// An instant query, evaluated now: its series (a scalar is one series without labels).
    pub fn query(&self, expr: &str) -> Result<Vec<Series>> {
        self.query_path(&format!("query?query={}", url_encode(expr)))
            .with_context(|| format!("the query {expr}"))
    }

    /// An instant query evaluated at `time` (seconds since the epoch).
    pub fn query_at(&self, expr: &str, time: f64) -> Result<Vec<Series>> {
        self.query_path(&format!("query?query={}&time={time:.3}", url_encode(expr)))
            .with_context(|| format!("the query {expr} at {time:.3}"))
    }

    fn query_path(&self, path: &str) -> Result<Vec<Series>> {
        let data = self.api(path)?;
        let value = |v: &serde_json::Value| -> Result<f64> {
            let text = v[1].as_str().with_context(|| format!("no value in {v}"))?;
            // Prometheus writes NaN and infinities as strings Rust parses too.
            text.parse()
                .with_context(|| format!("not a number: {text}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    Ok(Series {
                        labels: s["metric"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect(),
                        value: value(&s["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Series {
                labels: BTreeMap::new(),
                value: value(&data["result"])?,
            }]),
            other => bail!("an answer of type {other:?}: {data}"),
        }
    }

    /// The raw samples of each series a range selector (`metric{…}[30s]`) selects at `time`:
    /// labels and (timestamp, value) pairs, oldest first.
    pub fn samples_at(&self, selector: &str, time: f64) -> Result<Vec<(Labels, Points)>> {
        let data = self
            .api(&format!(
                "query?query={}&time={time:.3}",
                url_encode(selector)
            ))
            .with_context(|| format!("the samples of {selector}"))?;
        if data["resultType"] != "matrix" {
            bail!("{selector} is not a range selector: {data}");
        }
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let points = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| -> Result<(f64, f64)> {
                        let t = p[0].as_f64().with_context(|| format!("no time in {p}"))?;
                        let v = p[1]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .with_context(|| format!("no value in {p}"))?;
                        Ok((t, v))
                    })
                    .collect::<Result<_>>()?;
                Ok((labels, points))
            })
            .collect()
    }

    /// The active scrape targets of `job`: health and last error.
    pub fn targets(&self, job: &str) -> Result<Vec<(String, String)>> {
        let data = self.api("targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["labels"]["job"] == job)
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Waits until `job`'s one target was scraped (health up or down), at most `within`.
    pub fn scraped(&self, job: &str, within: Duration) -> Result<(String, String)> {
        let started = std::time::Instant::now();
        loop {
            if let Ok(t) = self.targets(job)
                && let [(health, error)] = t.as_slice()
                && health != "unknown"
            {
                return Ok((health.clone(), error.clone()));
            }
            if started.elapsed() > within {
                bail!("prometheus never scraped {job}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `job`'s one target is up (its last scrape succeeded), at most `within`.
    pub fn up(&self, job: &str, within: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let t = self.targets(job)?;
            if let [(health, _)] = t.as_slice()
                && health == "up"
            {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!("{job} was not up within {within:?}: {t:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until Prometheus holds a sample of `series` (a selector) scraped after `after`
    /// (seconds since the epoch), at most `within`.
    pub fn sample_after(&self, series: &str, after: f64, within: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let latest = self
                .query(&format!("max(timestamp({series}))"))?
                .first()
                .map(|s| s.value);
            if latest.is_some_and(|t| t > after) {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!(
                    "no sample of {series} after {after:.3} within {within:?}: latest {latest:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The alerting rules Prometheus evaluates: (group, name, health, last error).
    pub fn alerting_rules(&self) -> Result<Vec<(String, String, String, String)>> {
        let data = self.api("rules?type=alert")?;
        let mut out = Vec::new();
        for g in data["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((
                    g["name"].as_str().unwrap_or_default().to_string(),
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["health"].as_str().unwrap_or_default().to_string(),
                    r["lastError"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let data = self.api("alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| Alert {
                labels: a["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect(),
                state: a["state"].as_str().unwrap_or_default().to_string(),
                value: a["value"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }
}

/// An alert Prometheus holds: its labels (`alertname` among them), state (`pending`,
/// `firing`) and the value of its expression.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: Labels,
    pub state: String,
    pub value: f64,
}

impl Alert {
    /// The value of label `name` ("" when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling the child this process started, by its PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool ARGS`: its exit status and everything it printed.
pub fn promtool(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .context("cannot run promtool (Debian's prometheus package; cargo xtask setup)")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// deploy/prometheus.yml as the tests run it: scraping and evaluating every second, its one
/// job pointed at the agent at `agent` with the client certificate [`certificates`] made in
/// `dir` (`good-ca.pem`, `client.pem`, `client.key`).
pub fn documented_config(agent: SocketAddr, dir: &Path) -> Result<serde_json::Value> {
    let docs = crate::manifest::documents("prometheus.yml")?;
    let [documented] = docs.as_slice() else {
        bail!("deploy/prometheus.yml is not one document");
    };
    let mut config = documented.clone();
    for interval in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
        config["global"][interval] = json!("1s");
    }
    let job = &mut config["scrape_configs"][0];
    job["tls_config"]["ca_file"] = json!(file(dir, "good-ca.pem"));
    job["tls_config"]["cert_file"] = json!(file(dir, "client.pem"));
    job["tls_config"]["key_file"] = json!(file(dir, "client.key"));
    job["static_configs"][0]["targets"] = json!([agent.to_string()]);
    Ok(config)
}

/// How the keys of [`certificates`] are written; `--tls-key` reads both, and each TLS test
/// uses one so that both are loaded by a real agent.
#[derive(Clone, Copy, Debug)]
pub enum KeyFormat {
    /// PKCS#8 (`PRIVATE KEY`), what `openssl genpkey` and `req -newkey` write.
    Pkcs8,
    /// SEC1 (`EC PRIVATE KEY`), what `openssl ecparam -genkey` writes.
    Sec1,
}

/// Test certificates made by `openssl` in `dir` (P-256 keys in `keys`' format, valid 2 days):
/// - two CAs, `good-ca.pem`/`good-ca.key` and `other-ca.pem`/`other-ca.key`;
/// - signed by the good CA, a server certificate for 127.0.0.1 (`server.pem`/`server.key`)
///   and a client certificate (`client.pem`/`client.key`);
/// - signed by the other CA, a client certificate (`stranger.pem`/`stranger.key`).
pub fn certificates(dir: &Path, keys: KeyFormat) -> Result<()> {
    ca(dir, "good")?;
    ca(dir, "other")?;
    leaf(dir, "server", "good", true, keys)?;
    leaf(dir, "client", "good", false, keys)?;
    leaf(dir, "stranger", "other", false, keys)
}

/// `openssl ARGS`, failing with what it said.
fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The path of `name` in `dir`, as an argument.
fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// A CA, `NAME-ca.pem` with its key `NAME-ca.key`.
fn ca(dir: &Path, name: &str) -> Result<()> {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &file(dir, &format!("{name}-ca.key")),
        "-out",
        &file(dir, &format!("{name}-ca.pem")),
        "-days",
        "2",
        "-subj",
        &format!("/CN=nettools test {name} CA"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])
}

/// A certificate `NAME.pem` with its key `NAME.key`, signed by CA `by`, for a server (on
/// 127.0.0.1) or a client.
fn leaf(dir: &Path, name: &str, by: &str, server: bool, keys: KeyFormat) -> Result<()> {
    let key = file(dir, &format!("{name}.key"));
    let csr = file(dir, &format!("{name}.csr"));
    let ext = file(dir, &format!("{name}.ext"));
    match keys {
        KeyFormat::Pkcs8 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            &key,
        ])?,
        KeyFormat::Sec1 => openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ])?,
    }
    openssl(&[
        "req",
        "-new",
        "-key",
        &key,
        "-out",
        &csr,
        "-subj",
        &format!("/CN=nettools test {name}"),
    ])?;
    std::fs::write(
        &ext,
        if server {
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        } else {
            "subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth\n"
        },
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &file(dir, &format!("{by}-ca.pem")),
        "-CAkey",
        &file(dir, &format!("{by}-ca.key")),
        "-set_serial",
        "0x2a",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &file(dir, &format!("{name}.pem")),
    ])
}

/// Every PromQL expression of a Grafana dashboard, with where it comes from: its panels'
/// targets (rows' panels too) and its query variables (`label_values(SELECTOR, LABEL)`).
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("?")),
                        expr.to_string(),
                    ));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            out.push((
                format!("variable {}", v["name"].as_str().unwrap_or("?")),
                q.to_string(),
            ));
        }
    }
    out
}

/// The names of a dashboard's variables.
pub fn dashboard_variables(dashboard: &serde_json::Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect()
}

/// A dashboard expression as Grafana sends it to a Prometheus that scrapes every second, with
/// every variable in `variables` at "All" (`.*`): `$__rate_interval` is then 4 scrape
/// intervals. A variable's `label_values(SELECTOR, LABEL)` becomes SELECTOR, the series
/// Grafana asks for.
pub fn as_grafana_sends(expr: &str, variables: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "4s")
        .replace("$__interval", "1s")
        .replace("$__range", "1m");
    // Longest names first, so `$pod` does not eat the start of `$pods`.
    let mut names: Vec<&String> = variables.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        e = e
            .replace(&format!("${{{name}}}"), ".*")
            .replace(&format!("${name}"), ".*");
    }
    if let Some(inner) = e
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        && let Some((selector, _label)) = inner.rsplit_once(',')
    {
        return selector.trim().to_string();
    }
    e
}

/// The `nettools_…` metric names a text (a PromQL expression, a rule file) reads, as written
/// (a histogram's `_bucket`, `_count`, `_sum` included).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("nettools_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

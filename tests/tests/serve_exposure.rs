//! Who may read the agent: TLS with client certificates, bearer tokens, and what stays open.
//! The client is a real TLS client (curl, on OpenSSL), the certificates are made by openssl in
//! the test, the exposition is checked by `promtool` and against an iptables rule's counter.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};
use nettools_tests::{
    agent::{Agent, free_port},
    prom::*,
    *,
};
use serde_json::json;

/// What curl got: its exit code, the HTTP status (0 when none), the body and its stderr.
struct Curl {
    code: i32,
    status: u16,
    body: String,
    stderr: String,
}

fn curl(url: &str, args: &[&str]) -> Result<Curl> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok(Curl {
        code: out.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Refused during the TLS handshake: curl failed, no HTTP status, the server's alert named.
fn refused_in_handshake(c: &Curl, who: &str) {
    assert_ne!(c.code, 0, "{who} was let in: {}", c.body);
    assert_eq!(c.status, 0, "{who} got an HTTP answer: {}", c.body);
    assert!(
        c.stderr.to_ascii_lowercase().contains("alert"),
        "{who} was not refused by a TLS alert: {}",
        c.stderr
    );
}

#[test]
fn only_clients_with_a_certificate_from_the_client_ca_get_in() -> Result<()> {
    need!(&["openssl", "curl", "iptables", "promtool"]);
    let dir = Scratch::new("tls")?;
    certificates(&dir.0, KeyFormat::Sec1)?;
    let mut lab = Lab::new()?;
    let a = lab.node("a", "10.238.0.1/24", None)?;
    let b = lab.node("b", "10.238.0.2/24", None)?;
    b.drop_input("udp", 7792)?;
    let agent = Agent::start_mutual_tls(&dir.0, &["--probes", "drops"])?;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.addr.port());
    let ca = dir.file("good-ca.pem");
    let with_client = [
        "--cacert",
        ca.as_str(),
        "--cert",
        &dir.file("client.pem"),
        "--key",
        &dir.file("client.key"),
    ];
    let with_client: Vec<&str> = with_client.iter().map(|s| s.as_ref()).collect();

    // The right certificate: a valid exposition, with the lab's drops as the kernel counted.
    let netns = b.inode()?.to_string();
    udp_burst(&a, SocketAddr::from((b.ipv4, 7792)), 40)?;
    std::thread::sleep(Duration::from_millis(300));
    let counted = iptables_packets(&b, "INPUT", 1)?;
    assert_eq!(counted, 40, "the lab itself misbehaved");
    let mut scraped = None;
    for _ in 0..75 {
        let c = curl(&url("/metrics"), &with_client)?;
        assert_eq!((c.code, c.status), (0, 200), "{}{}", c.stderr, c.body);
        let drops = value(
            &c.body,
            "nettools_drops_total",
            &[("netns", netns.as_str()), ("reason", "NETFILTER_DROP")],
        )?;
        if drops.is_some() {
            scraped = Some((c.body, drops));
            break;
        }
        // The lab's namespace is named at the agent's first refresh.
        std::thread::sleep(Duration::from_millis(200));
    }
    let (text, drops) = scraped.context("the lab's namespace never appeared")?;
    promtool_accepts(&text)?;
    assert_eq!(drops, Some(counted as f64), "{text}");
    let health = curl(&url("/healthz"), &with_client)?;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // No certificate, or one from another CA: refused during the handshake, /healthz too.
    let no_cert = curl(&url("/metrics"), &["--cacert", &ca])?;
    refused_in_handshake(&no_cert, "a client without a certificate");
    let no_cert = curl(&url("/healthz"), &["--cacert", &ca])?;
    refused_in_handshake(&no_cert, "a client without a certificate (/healthz)");
    let stranger = curl(
        &url("/metrics"),
        &[
            "--cacert",
            &ca,
            "--cert",
            &dir.file("stranger.pem"),
            "--key",
            &dir.file("stranger.key"),
        ],
    )?;
    refused_in_handshake(&stranger, "a client with another CA's certificate");
    // The client checks the server too: the agent presents the chain it was given.
    let wrong_ca = curl(&url("/healthz"), &["--cacert", &dir.file("other-ca.pem")])?;
    assert_eq!(
        wrong_ca.code, 60,
        "curl trusted a server it should not: {}",
        wrong_ca.stderr
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = get(agent.addr, "/metrics", &[], Duration::from_secs(10));
    assert!(
        plain.as_ref().map_or(true, |a| a.status != 200),
        "plain HTTP was answered: {plain:?}"
    );
    eprintln!(
        "TLS: the client certificate's scrape passed promtool with {drops:?} drops ({counted} \
         counted by iptables); without a certificate: {}; another CA's: {}",
        no_cert.stderr.trim(),
        stranger.stderr.trim()
    );
    Ok(())
}

#[test]
fn a_bearer_token_is_required_where_the_listener_is_not_plain_loopback() -> Result<()> {
    need!(&["openssl", "curl", "promtool"]);
    let dir = Scratch::new("token")?;
    let token_file = dir.file("token");
    std::fs::write(&token_file, "Zm9vYmFyLXNlY3JldC10b2tlbg\n")?;
    let right = "Authorization: Bearer Zm9vYmFyLXNlY3JldC10b2tlbg";
    let timeout = Duration::from_secs(20);

    // Plain HTTP on loopback: /metrics and / need the token, /healthz does not.
    let agent = Agent::start(&["--bearer-token-file", &token_file, "--probes", "drops"])?;
    let missing_token = get(agent.addr, "/metrics", &[], timeout)?;
    assert_eq!(missing_token.status, 401, "{}", missing_token.head);
    assert_eq!(
        missing_token.header("www-authenticate"),
        Some("Bearer realm=\"nettools\"")
    );
    for wrong in [
        "Authorization: Bearer Zm9vYmFyLXNlY3JldC10b2tlbh",
        "Authorization: Bearer Zm9vYmFyLXNlY3JldC10b2tl",
        "Authorization: Basic Zm9vYmFyLXNlY3JldC10b2tlbg",
    ] {
        let a = get(agent.addr, "/metrics", &[wrong], timeout)?;
        assert_eq!(a.status, 401, "{wrong}: {}", a.head);
    }
    assert_eq!(get(agent.addr, "/", &[], timeout)?.status, 401);
    let text = exposition(get(agent.addr, "/metrics", &[right], timeout)?)?;
    promtool_accepts(&text)?;
    assert_eq!(get(agent.addr, "/healthz", &[], timeout)?.status, 200);
    drop(agent);

    // TLS with the token: /healthz needs it too; --health-listen serves it alone, open.
    certificates(&dir.0, KeyFormat::Sec1)?;
    let health = free_port()?.to_string();
    let agent = Agent::start(&[
        "--tls-cert",
        &dir.file("server.pem"),
        "--tls-key",
        &dir.file("server.key"),
        "--bearer-token-file",
        &token_file,
        "--health-listen",
        &health,
        "--probes",
        "drops",
    ])?;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.addr.port());
    let ca = dir.file("good-ca.pem");
    let c = curl(&url("/metrics"), &["--cacert", &ca, "-H", right])?;
    assert_eq!((c.code, c.status), (0, 200), "{}", c.stderr);
    promtool_accepts(&c.body)?;
    let c = curl(&url("/metrics"), &["--cacert", &ca])?;
    assert_eq!(c.status, 401, "{}", c.body);
    let c = curl(
        &url("/metrics"),
        &["--cacert", &ca, "-H", "Authorization: Bearer nope"],
    )?;
    assert_eq!(c.status, 401, "{}", c.body);
    let c = curl(&url("/healthz"), &["--cacert", &ca])?;
    assert_eq!(
        c.status, 401,
        "/healthz over TLS without the token: {}",
        c.body
    );
    let health: SocketAddr = health.parse()?;
    let h = get(health, "/healthz", &[], timeout)?;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert_eq!(get(health, "/metrics", &[], timeout)?.status, 404);
    Ok(())
}

/// One line on stderr, exit code 1, starting with `expected`.
fn one_sentence(args: &[&str], expected: &str) -> Result<()> {
    let out = nettools(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with(&format!("nettools: {expected}")),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    Ok(())
}

#[test]
fn certificate_key_ca_and_token_problems_are_one_sentence() -> Result<()> {
    need!(&["openssl"]);
    let dir = Scratch::new("tls-errors")?;
    certificates(&dir.0, KeyFormat::Sec1)?;
    let listen = free_port()?.to_string();
    let check = |extra: &[&str], expected: &str| -> Result<()> {
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        one_sentence(&args, expected)
    };
    let (cert, key) = (dir.file("server.pem"), dir.file("server.key"));
    let nowhere = dir.file("nowhere.pem");
    let empty = dir.file("empty.pem");
    std::fs::write(&empty, "")?;
    let garbage = dir.file("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )?;
    // One file wrong at a time, the others right: the sentence names the file and its problem.
    let bad_cert = |file: &str, problem: &str| {
        check(
            &["--tls-cert", file, "--tls-key", &key],
            &format!("the TLS certificate {file} {problem}"),
        )
    };
    let bad_key = |file: &str, problem: &str| {
        check(
            &["--tls-cert", &cert, "--tls-key", file],
            &format!("the TLS key {file} {problem}"),
        )
    };
    let bad_client_ca = |file: &str, problem: &str| {
        check(
            &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", file],
            &format!("the client CA file {file} {problem}"),
        )
    };
    let bad_token = |file: &str, problem: &str| {
        check(
            &["--bearer-token-file", file],
            &format!("the bearer token file {file} {problem}"),
        )
    };
    bad_cert(&nowhere, "does not exist")?;
    bad_cert(&empty, "holds no PEM certificate")?;
    bad_cert(&garbage, "is not valid PEM")?;
    let not_x509 = dir.file("not-x509.pem");
    std::fs::write(
        &not_x509,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    bad_cert(&not_x509, "is not valid X.509")?;
    bad_client_ca(&not_x509, "holds a certificate that is not valid X.509")?;
    bad_key(&nowhere, "does not exist")?;
    // A certificate where the key should be.
    bad_key(&cert, "holds no PEM private key")?;
    bad_key(
        &dir.file("client.key"),
        &format!("does not belong to the certificate {cert}"),
    )?;
    bad_client_ca(&nowhere, "does not exist")?;
    bad_client_ca(&key, "holds no PEM certificate")?;
    bad_client_ca(&dir.0.display().to_string(), "is not a file")?;
    bad_token(&empty, "is empty")?;
    bad_token(&nowhere, "does not exist")?;
    check(
        &["--health-listen", "0.0.0.0:9978"],
        "--health-listen 0.0.0.0:9978 is not a loopback address",
    )?;
    // A key without its certificate is refused by the command line itself: a usage error, one
    // sentence and exit code 1 like every other.
    let out = nettools(&["serve", "--tls-key", &key])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(Path::new(&cert).is_file());
    Ok(())
}

/// How long Prometheus may take to scrape a target for the first time.
const SCRAPED_WITHIN: Duration = Duration::from_secs(60);

/// deploy/prometheus.yml's job, as a real Prometheus runs it against a real agent: up with
/// the client certificate; down, refused in the handshake, without it.
#[test]
fn prometheus_scrapes_the_agent_with_the_documented_tls_settings() -> Result<()> {
    need!(&["openssl", "prometheus"]);
    let dir = Scratch::new("prometheus")?;
    certificates(&dir.0, KeyFormat::Sec1)?;
    let agent = Agent::start_mutual_tls(&dir.0, &["--probes", "drops"])?;
    let mut config = documented_config(agent.addr, &dir.0)?;
    let job = config["scrape_configs"][0].clone();
    assert_eq!(job["scheme"], "https", "{job}");
    let mut with_cert = job.clone();
    with_cert["job_name"] = json!("with-cert");
    let mut without = with_cert.clone();
    without["job_name"] = json!("without-cert");
    if let Some(tls) = without["tls_config"].as_object_mut() {
        tls.remove("cert_file");
        tls.remove("key_file");
    }
    config["scrape_configs"] = json!([with_cert, without]);
    let prometheus = Prometheus::start(&config, &dir.0)?;
    let (health, error) = prometheus.scraped("with-cert", SCRAPED_WITHIN)?;
    assert_eq!(health, "up", "{error}");
    // What it stored: the agent's own series, with the labels deploy/prometheus.yml adds.
    let result = prometheus.query("nettools_build_info")?;
    assert!(
        result
            .iter()
            .any(|s| s.label("job") == "with-cert" && s.label("node") == "node1"),
        "{result:?}"
    );
    let (health, error) = prometheus.scraped("without-cert", SCRAPED_WITHIN)?;
    assert_eq!(health, "down");
    assert!(error.contains("certificate"), "{error}");
    eprintln!("prometheus: with the client certificate up; without it down ({error})");
    Ok(())
}

//! The Kubernetes manifests of `deploy/` keep the agent to what it uses, and their pieces fit
//! together: the proxy forwards to where the agent listens, probes reach an unauthenticated
//! /healthz, the Service and ServiceMonitor name ports that exist, RBAC binds what the pods run
//! as, and the README's table explains every capability. (They are also checked against the
//! Kubernetes API's schemas with `kubernetes-validate --strict` when it is installed.)

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use nettools_tests::{in_vmtest_guest, manifest::*, runtimes::missing, skip};
use serde_json::Value;

/// What the agent may add, and nothing else: CAP_SYSLOG is gone (serve never names kernel
/// functions, so it does not read /proc/kallsyms).
const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// The host paths the agent may mount: the CRI runtime's socket directory, the pods' network
/// namespace mounts, tracefs. Not /run as a whole, not /sys/fs/bpf (nothing is pinned).
const HOST_PATHS: [&str; 3] = ["/run/containerd", "/run/netns", "/sys/kernel/tracing"];

/// The value of `--flag=value` or `--flag value` in a command line.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(String::from)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

fn command(c: &Value) -> Vec<String> {
    let mut all = strings(&c["command"]);
    all.extend(strings(&c["args"]));
    all
}

/// The agent of a DaemonSet: only its capabilities, read-only mounts of its host paths, no
/// privilege, no token; its probes reach /healthz where it is open.
fn check_agent(file: &str, docs: &[Value]) -> Result<Vec<String>> {
    let ds = one(docs, "DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "{file}");
    assert_eq!(pod["hostPID"], true, "{file}");
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{file}: the agent's container must hold no Kubernetes token"
    );
    let agent = container(ds, "nettools")?;
    let mut caps = capabilities(agent);
    caps.sort();
    let mut want: Vec<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    want.sort();
    assert_eq!(caps, want, "{file}: the agent's capabilities");
    assert_eq!(
        strings(&agent["securityContext"]["capabilities"]["drop"]),
        vec!["ALL"]
    );
    assert_eq!(agent["securityContext"]["privileged"], false, "{file}");
    assert_eq!(
        agent["securityContext"]["readOnlyRootFilesystem"], true,
        "{file}"
    );
    for m in host_mounts(ds, agent)? {
        assert!(
            HOST_PATHS.contains(&m.host.as_str()),
            "{file}: the agent mounts {} from the host",
            m.host
        );
        assert!(m.read_only, "{file}: {} is mounted writable", m.host);
        assert_eq!(
            m.host, m.container,
            "{file}: runtimes look at the host's paths"
        );
    }
    // Nothing else mounted from the host, and no token in the agent.
    for m in agent["volumeMounts"].as_array().into_iter().flatten() {
        let name = &m["name"];
        let volume = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == *name))
            .context("a mount without volume")?;
        assert!(
            volume.get("hostPath").is_some() || volume.get("secret").is_some(),
            "{file}: the agent mounts {volume}"
        );
        assert_ne!(
            m["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount",
            "{file}"
        );
    }
    // The probes ask /healthz on loopback, on a port where it needs no authentication.
    let args = command(agent);
    assert_eq!(
        args.get(..2),
        Some(&["nettools".to_string(), "serve".to_string()][..])
    );
    let listen = flag(&args, "--listen").context("no --listen")?;
    let tls = flag(&args, "--tls-cert").is_some();
    let open_health_port = match flag(&args, "--health-listen") {
        Some(h) => h.rsplit_once(':').map(|(_, p)| p.to_string()),
        None if listen.starts_with("127.0.0.1:") && !tls => {
            listen.rsplit_once(':').map(|(_, p)| p.to_string())
        }
        None => None,
    }
    .with_context(|| format!("{file}: /healthz is served nowhere without authentication"))?;
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["host"], "127.0.0.1", "{file} {probe}");
        assert_eq!(get["path"], "/healthz", "{file} {probe}");
        assert_eq!(get["port"].to_string(), open_health_port, "{file} {probe}");
    }
    Ok(args)
}

#[test]
fn the_proxied_daemonset_keeps_the_agent_on_loopback_behind_kube_rbac_proxy() -> Result<()> {
    if in_vmtest_guest() {
        skip("the manifests are files of the repository, checked on the host");
        return Ok(());
    }
    let file = "daemonset.yaml";
    let docs = documents(file)?;
    let args = check_agent(file, &docs)?;
    let ds = one(&docs, "DaemonSet")?;
    let listen = flag(&args, "--listen").context("no --listen")?;
    assert!(
        listen.starts_with("127.0.0.1:"),
        "the agent listens on {listen}"
    );
    assert!(flag(&args, "--tls-cert").is_none());

    // The proxy: TLS on the node's address, forwarding /metrics only, to the agent.
    let proxy = container(ds, "kube-rbac-proxy")?;
    let pargs = command(proxy);
    assert_eq!(
        flag(&pargs, "--upstream").as_deref(),
        Some(format!("http://{listen}/").as_str())
    );
    assert_eq!(flag(&pargs, "--allow-paths").as_deref(), Some("/metrics"));
    let secure = flag(&pargs, "--secure-listen-address").context("no secure address")?;
    let port = proxy["ports"][0]["containerPort"].clone();
    assert!(
        secure.ends_with(&format!(":{port}")),
        "{secure} vs port {port}"
    );
    assert_eq!(proxy["ports"][0]["name"], "https");
    let psc = &proxy["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&psc["capabilities"]["drop"]), vec!["ALL"]);
    assert!(capabilities(proxy).is_empty());
    // The token is the proxy's alone.
    let token_mount = proxy["volumeMounts"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        })
        .context("the proxy has no service account token")?;
    let volume = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == token_mount["name"]))
        .context("no token volume")?;
    assert!(
        volume["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
    );

    // RBAC: the proxy's service account may create token and access reviews, nothing more.
    let sa = one(&docs, "ServiceAccount")?;
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    let role = one(&docs, "ClusterRole")?;
    let mut rules: Vec<(String, String, String)> = Vec::new();
    for r in role["rules"].as_array().into_iter().flatten() {
        for g in strings(&r["apiGroups"]) {
            for res in strings(&r["resources"]) {
                for v in strings(&r["verbs"]) {
                    rules.push((g.clone(), res.clone(), v));
                }
            }
        }
    }
    rules.sort();
    assert_eq!(
        rules,
        vec![
            (
                "authentication.k8s.io".into(),
                "tokenreviews".into(),
                "create".into()
            ),
            (
                "authorization.k8s.io".into(),
                "subjectaccessreviews".into(),
                "create".into()
            ),
        ]
    );
    let binding = one(&docs, "ClusterRoleBinding")?;
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );

    // The Service and the ServiceMonitor reach the proxy's port, over HTTPS with a token.
    let service = one(&docs, "Service")?;
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
    let sm_docs = documents("servicemonitor.yaml")?;
    let sm = one(&sm_docs, "ServiceMonitor")?;
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["scheme"], "https");
    assert!(endpoint["bearerTokenFile"].is_string());
    // Prometheus may read /metrics through the proxy.
    let reader = one(&sm_docs, "ClusterRole")?;
    assert_eq!(
        strings(&reader["rules"][0]["nonResourceURLs"]),
        vec!["/metrics"]
    );
    assert_eq!(strings(&reader["rules"][0]["verbs"]), vec!["get"]);
    Ok(())
}

#[test]
fn the_built_in_tls_daemonset_asks_for_client_certificates() -> Result<()> {
    if in_vmtest_guest() {
        skip("the manifests are files of the repository, checked on the host");
        return Ok(());
    }
    let file = "daemonset-tls.yaml";
    let docs = documents(file)?;
    let args = check_agent(file, &docs)?;
    for f in ["--tls-cert", "--tls-key", "--client-ca", "--health-listen"] {
        assert!(flag(&args, f).is_some(), "{file}: no {f}");
    }
    assert!(
        flag(&args, "--health-listen").is_some_and(|h| h.starts_with("127.0.0.1:")),
        "{file}"
    );
    let ds = one(&docs, "DaemonSet")?;
    // No proxy, no token, no RBAC: the agent authenticates by certificate.
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole"));
    let sm = one(&docs, "ServiceMonitor")?;
    let tls = &sm["spec"]["endpoints"][0]["tlsConfig"];
    assert!(tls["cert"].is_object() && tls["keySecret"].is_object() && tls["ca"].is_object());
    assert_eq!(tls.get("insecureSkipVerify"), None);
    Ok(())
}

#[test]
fn the_readme_says_why_the_agent_needs_each_capability_and_mount() -> Result<()> {
    if in_vmtest_guest() {
        skip("the manifests are files of the repository, checked on the host");
        return Ok(());
    }
    let readme = std::fs::read_to_string(path("../README.md"))?;
    let section = readme
        .split("### What the agent needs")
        .nth(1)
        .context("README has no \"What the agent needs\" section")?;
    let table: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    for c in CAPABILITIES {
        assert!(
            table.iter().any(|row| row.contains(&format!("`CAP_{c}`"))),
            "the README's table does not explain CAP_{c}"
        );
    }
    for p in HOST_PATHS {
        assert!(
            table.iter().any(|row| row.contains(&format!("`{p}`"))),
            "the README's table does not explain {p}"
        );
    }
    Ok(())
}

#[test]
fn the_manifests_pass_the_kubernetes_api_schemas() -> Result<()> {
    if missing(&["kubernetes-validate"]).is_some() {
        skip(
            "kubernetes-validate is not installed (PyPI's kubernetes-validate: the Kubernetes \
             API's schemas, offline)",
        );
        return Ok(());
    }
    for file in [
        "daemonset.yaml",
        "daemonset-tls.yaml",
        "servicemonitor.yaml",
    ] {
        // 1.30: the oldest release with appArmorProfile.
        for version in ["1.30", "1.37"] {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .arg(path(file))
                .output()?;
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            // The ServiceMonitor is a CRD: no schema in the API's own set.
            let problems: Vec<&str> = said
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.contains("kind ServiceMonitor"))
                .collect();
            if !out.status.success() || !problems.is_empty() {
                bail!("{file} against Kubernetes {version}: {said}");
            }
        }
    }
    Ok(())
}

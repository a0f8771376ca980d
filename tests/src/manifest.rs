//! The Kubernetes manifests of `deploy/`, read as JSON values (YAML 1.2 by yaml-rust2), and
//! what the tests need from them: the agent's container, its capabilities and mounts.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// A file of `deploy/`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn json(y: &Yaml) -> Result<Value> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => Value::from(
            r.parse::<f64>()
                .with_context(|| format!("not a number: {r}"))?,
        ),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(json).collect::<Result<_>>()?),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => bail!("a mapping key that is not a scalar: {other:?}"),
                };
                if m.insert(key.clone(), json(v)?).is_some() {
                    bail!("the key {key} is given twice");
                }
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => bail!("an alias or bad value: {y:?}"),
    })
}

/// Every document of a `deploy/` file (empty ones left out).
pub fn documents(name: &str) -> Result<Vec<Value>> {
    let p = path(name);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let docs = YamlLoader::load_from_str(&text).with_context(|| format!("{name} is not YAML"))?;
    docs.iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .map(|d| json(d).with_context(|| format!("in {name}")))
        .collect()
}

/// The one document of `kind` in `docs`.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    let of: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    match of.as_slice() {
        [one] => Ok(one),
        other => bail!("{} documents of kind {kind}", other.len()),
    }
}

/// A container of a DaemonSet's pod, by name.
pub fn container<'a>(daemonset: &'a Value, name: &str) -> Result<&'a Value> {
    daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no container {name}"))
}

/// Strings of a JSON array.
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The capabilities a container adds.
pub fn capabilities(container: &Value) -> Vec<String> {
    strings(&container["securityContext"]["capabilities"]["add"])
}

/// A container's host path mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMount {
    pub host: String,
    pub container: String,
    pub read_only: bool,
    /// `mountPropagation: HostToContainer`: mounts made on the host later appear.
    pub follows_host: bool,
}

/// The host paths a DaemonSet's container mounts.
pub fn host_mounts(daemonset: &Value, container: &Value) -> Result<Vec<HostMount>> {
    let volumes = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .context("no volumes")?;
    let mut out = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .with_context(|| format!("no volume {}", m["name"]))?;
        let Some(host) = volume["hostPath"]["path"].as_str() else {
            continue;
        };
        out.push(HostMount {
            host: host.to_string(),
            container: m["mountPath"]
                .as_str()
                .context("a mount without mountPath")?
                .to_string(),
            read_only: m["readOnly"] == true,
            follows_host: m["mountPropagation"] == "HostToContainer",
        });
    }
    Ok(out)
}

//! Podman without its API service (the default where nobody enabled `podman.socket`): the
//! names of its containers and pods, read from the files Podman itself keeps them in, and put
//! on the containers the cgroup scan found.
//!
//! - libpod's state database, `<graphroot>/libpod/bolt_state.db` (BoltDB, Podman 4 and the
//!   default until Podman 5): container and pod names (buckets `all-ctrs`, `allPods`), each
//!   container's pod (`ctr/<id>/pod-id`) and each pod's infra container
//!   (`pod/<id>/state`, `InfraContainerID`). Exactly what `podman ps` and `podman pod ps` show.
//! - Without it (Podman 5's SQLite `db.sql`), containers/storage's container records,
//!   `<graphroot>/<driver>-containers/containers.json` (`id`, `names`): container names only;
//!   pods keep the id the cgroup path gives.
//!
//! The graph root is Podman's: `graphroot` in `storage.conf` (`$CONTAINERS_STORAGE_CONF`, else
//! `/etc/containers/storage.conf`, else `/usr/share/containers/storage.conf`), by default
//! `/var/lib/containers/storage`. Nothing is written or locked; the files are read once,
//! bounded in size, and everything in them is untrusted: ids must be 64 hex digits, names are
//! cut to [`MAX_NAME`] bytes (reports escape them), and a container is only named when the
//! cgroup scan found a process in that container's own cgroup (so a stale record names
//! nothing, and a pid in the database is never trusted).

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{NamedBy, PodRef, bolt, found::Found};

/// The largest state database read (a node with thousands of containers stays far below).
pub const MAX_DB: u64 = 256 << 20;
/// The largest `containers.json` or `storage.conf` read.
pub const MAX_FILE: u64 = 64 << 20;
/// Names longer than this are cut (Podman's own limit is far lower).
pub const MAX_NAME: usize = 253;

/// What Podman's files say about its containers and pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Container id → name.
    pub containers: HashMap<String, String>,
    /// Container id → the id of its pod.
    pub pod_of: HashMap<String, String>,
    /// Pod id → name.
    pub pods: HashMap<String, String>,
    /// The pods' infra containers (they hold the pod's namespace: not containers a person named).
    pub infra: HashSet<String>,
}

/// Where Podman keeps its files, and which of them were read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub graphroot: PathBuf,
    /// The file the names come from (the state database, or the container records).
    pub file: PathBuf,
    /// Whether that file names pods (the state database) or only containers.
    pub pods: bool,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A name from the files: lossy UTF-8, cut to [`MAX_NAME`] bytes on a character boundary.
fn name(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Reads at most `max` bytes of a file; larger is an error.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if data.len() as u64 > max {
        bail!("{} is larger than {} bytes", path.display(), max);
    }
    Ok(data)
}

/// `graphroot` (and `driver`) from a `storage.conf`'s `[storage]` table: `(graphroot, driver)`.
pub fn parse_storage_conf(text: &str) -> (Option<String>, Option<String>) {
    let mut table = String::new();
    let (mut root, mut driver) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            table = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        if table != "storage" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let quoted = value
            .strip_prefix('"')
            .and_then(|v| v.split_once('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.split_once('\'')))
            .map(|(v, _)| v.to_string());
        match key.trim() {
            "graphroot" => root = quoted.filter(|v| !v.is_empty()),
            "driver" => driver = quoted.filter(|v| !v.is_empty()),
            _ => {}
        }
    }
    (root, driver)
}

/// Podman's graph root and storage driver, from the `storage.conf` Podman itself would read.
pub fn graphroot() -> (PathBuf, String) {
    let candidates: Vec<PathBuf> = match std::env::var_os("CONTAINERS_STORAGE_CONF") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            PathBuf::from("/etc/containers/storage.conf"),
            PathBuf::from("/usr/share/containers/storage.conf"),
        ],
    };
    let conf = candidates
        .iter()
        .find_map(|p| read_bounded(p, MAX_FILE).ok())
        .map(|b| parse_storage_conf(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    (
        PathBuf::from(
            conf.0
                .unwrap_or_else(|| "/var/lib/containers/storage".to_string()),
        ),
        conf.1.unwrap_or_else(|| "overlay".to_string()),
    )
}

/// The file to read under a graph root: the state database when there is one, else the
/// container records. `None` when Podman has never run with this root.
pub fn store(graphroot: &Path, driver: &str) -> Option<Store> {
    let db = graphroot.join("libpod/bolt_state.db");
    if db.is_file() {
        return Some(Store {
            graphroot: graphroot.to_path_buf(),
            file: db,
            pods: true,
        });
    }
    // A driver name is a word (`overlay`, `vfs`); anything else in the configuration is not
    // put into a path.
    let driver = if driver.bytes().all(|b| b.is_ascii_alphanumeric()) {
        driver
    } else {
        "overlay"
    };
    let records = graphroot.join(format!("{driver}-containers/containers.json"));
    records.is_file().then(|| Store {
        graphroot: graphroot.to_path_buf(),
        file: records,
        pods: false,
    })
}

/// Names from libpod's state database.
pub fn from_bolt(db: &bolt::Db) -> Result<Names> {
    let root = db.root();
    let mut names = Names::default();
    let pairs = |bucket: &[u8]| -> Result<Vec<(String, String)>> {
        let Some(b) = root.bucket(bucket)? else {
            return Ok(Vec::new());
        };
        Ok(b.entries()?
            .into_iter()
            .filter_map(|(k, v)| match v {
                bolt::Value::Bytes(v) => Some((String::from_utf8_lossy(k).into_owned(), name(v))),
                bolt::Value::Bucket(_) => None,
            })
            .filter(|(id, _)| is_id(id))
            .collect())
    };
    names.containers = pairs(b"all-ctrs")?.into_iter().collect();
    names.pods = pairs(b"allPods")?.into_iter().collect();
    if let Some(ctrs) = root.bucket(b"ctr")? {
        for (id, v) in ctrs.entries()? {
            let (bolt::Value::Bucket(c), Ok(id)) = (v, std::str::from_utf8(id)) else {
                continue;
            };
            if let Some(pod) = c.bytes(b"pod-id")?
                && let Ok(pod) = std::str::from_utf8(pod)
                && is_id(id)
                && is_id(pod)
            {
                names.pod_of.insert(id.to_string(), pod.to_string());
            }
        }
    }
    if let Some(pods) = root.bucket(b"pod")? {
        #[derive(Deserialize)]
        struct PodState {
            #[serde(rename = "InfraContainerID", default)]
            infra: String,
        }
        for (_, v) in pods.entries()? {
            let bolt::Value::Bucket(p) = v else { continue };
            if let Some(state) = p.bytes(b"state")?
                && let Ok(state) = serde_json::from_slice::<PodState>(state)
                && is_id(&state.infra)
            {
                names.infra.insert(state.infra);
            }
        }
    }
    Ok(names)
}

/// Names from containers/storage's container records (`containers.json`): containers only.
pub fn from_records(json: &[u8]) -> Result<Names> {
    #[derive(Deserialize)]
    struct Record {
        #[serde(default)]
        id: String,
        #[serde(default)]
        names: Vec<String>,
    }
    let records: Vec<Record> =
        serde_json::from_slice(json).context("its container records are not a JSON list")?;
    let containers = records
        .into_iter()
        .filter(|r| is_id(&r.id))
        .filter_map(|r| Some((r.id, name(r.names.first()?.as_bytes()))))
        .collect();
    Ok(Names {
        containers,
        ..Default::default()
    })
}

/// Reads the names from a store's file.
pub fn read(store: &Store) -> Result<Names> {
    if store.pods {
        let db = bolt::Db::open(&store.file, MAX_DB)?;
        from_bolt(&db).with_context(|| format!("cannot read {}", store.file.display()))
    } else {
        from_records(&read_bounded(&store.file, MAX_FILE)?)
            .with_context(|| format!("cannot read {}", store.file.display()))
    }
}

/// The containers the cgroup scan found that Podman's files name: named, with their pod, and
/// each pod's infra container as its sandbox.
pub fn name_scanned(names: &Names, scanned: &[Found]) -> Vec<Found> {
    scanned
        .iter()
        .filter_map(|f| {
            let c = f.container.as_ref()?;
            let container_name = names.containers.get(&c.id)?;
            let mut out = f.clone();
            // The database's pod, else the one the cgroup path gives.
            let pod_id = names
                .pod_of
                .get(&c.id)
                .cloned()
                .or_else(|| f.pod.as_ref().and_then(|p| p.sandbox_id.clone()));
            out.pod = pod_id.map(|id| PodRef {
                name: names
                    .pods
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("podman pod {}", id.get(..12).unwrap_or(&id))),
                namespace: None,
                uid: None,
                sandbox_id: Some(id),
            });
            out.sandbox = names.infra.contains(&c.id);
            out.named_by = NamedBy::Storage;
            if let Some(c) = out.container.as_mut() {
                c.name = container_name.clone();
                c.runtime = "podman".to_string();
            }
            Some(out)
        })
        .collect()
}

/// The store at this node's graph root, if Podman has one.
pub fn local() -> Option<Store> {
    let (root, driver) = graphroot();
    store(&root, &driver)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{
        ContainerRef,
        bolt::tests::{Builder, Entry, bytes, inline, leaf},
    };

    const POD: &str = "701394b7997d9627a03d91e1a114a02389d66243f5483b8f2130e2a60ea712c0";
    const WEB: &str = "2fae68adbed61cbc9d211631dbd998f669534a1f55c228aa1d1efbfbe55f2f95";
    const INFRA: &str = "33f1efeb5681b20ba58655f3ae42444f170768553b6451d0e71767140e9450d7";
    const SOLO: &str = "1743f5c36cea17978a3e53ff78fb7353b7f85aa28e7493263dae594ab7acb71a";

    /// A state database laid out as Podman 4.3 lays out a pod `xpod` (infra + `xweb`) and a
    /// container `xsolo`, plus an entry whose id is not one.
    fn podman_db() -> Result<bolt::Db> {
        let file = Builder::file(
            4096,
            2,
            vec![leaf(
                2,
                &[
                    inline(
                        "all-ctrs",
                        vec![
                            bytes(SOLO, "xsolo"),
                            bytes(WEB, "xweb"),
                            bytes(INFRA, "701394b7997d-infra"),
                            bytes("../../etc", "evil"),
                        ],
                    ),
                    inline("allPods", vec![bytes(POD, "xpod")]),
                    inline(
                        "ctr",
                        vec![
                            inline(SOLO, vec![bytes("config", "{}")]),
                            inline(WEB, vec![bytes("config", "{}"), bytes("pod-id", POD)]),
                            inline(INFRA, vec![bytes("pod-id", POD)]),
                        ],
                    ),
                    inline(
                        "pod",
                        vec![inline(
                            POD,
                            vec![
                                bytes("config", "{\"name\":\"xpod\"}"),
                                Entry::Bytes(
                                    b"state".to_vec(),
                                    format!("{{\"cgroupPath\":\"/libpod_parent/{POD}\",\"InfraContainerID\":\"{INFRA}\"}}").into_bytes(),
                                ),
                            ],
                        )],
                    ),
                ],
            )],
        );
        bolt::Db::parse(file)
    }

    #[test]
    fn names_and_pods_from_the_state_database() -> Result<()> {
        let names = from_bolt(&podman_db()?)?;
        assert_eq!(names.containers.len(), 3);
        assert_eq!(names.containers.get(WEB).map(String::as_str), Some("xweb"));
        assert_eq!(names.pods.get(POD).map(String::as_str), Some("xpod"));
        assert_eq!(names.pod_of.get(WEB).map(String::as_str), Some(POD));
        assert_eq!(names.pod_of.get(SOLO), None);
        assert!(names.infra.contains(INFRA) && names.infra.len() == 1);
        Ok(())
    }

    fn scanned(id: &str, netns: u32, pod: Option<&str>) -> Found {
        Found {
            netns,
            netns_path: Some(format!("/proc/{netns}/ns/net").into()),
            pid: Some(netns),
            pod: pod.map(|p| PodRef {
                name: format!("podman pod {}", &p[..12]),
                sandbox_id: Some(p.to_string()),
                ..Default::default()
            }),
            container: Some(ContainerRef {
                id: id.to_string(),
                name: id[..12].to_string(),
                runtime: "podman (cgroup scan)".to_string(),
            }),
            named_by: NamedBy::CgroupScan,
            ..Default::default()
        }
    }

    #[test]
    fn scanned_containers_get_their_names_and_pods() -> Result<()> {
        let names = from_bolt(&podman_db()?)?;
        let other = "ab".repeat(32);
        let named = name_scanned(
            &names,
            &[
                scanned(INFRA, 10, Some(POD)),
                scanned(WEB, 10, Some(POD)),
                scanned(SOLO, 20, None),
                // Not Podman's: left to the cgroup scan.
                scanned(&other, 30, None),
            ],
        );
        assert_eq!(named.len(), 3);
        let by = |id: &str| {
            named
                .iter()
                .find(|f| f.container.as_ref().is_some_and(|c| c.id == id))
        };
        let infra = by(INFRA).context("infra")?;
        assert!(infra.sandbox);
        assert_eq!(infra.pod.as_ref().map(|p| p.name.as_str()), Some("xpod"));
        let web = by(WEB).context("web")?;
        assert!(!web.sandbox);
        assert_eq!(web.named_by, NamedBy::Storage);
        assert_eq!(
            web.container
                .as_ref()
                .map(|c| (c.name.as_str(), c.runtime.as_str())),
            Some(("xweb", "podman"))
        );
        assert_eq!(
            web.pod.as_ref().and_then(|p| p.sandbox_id.as_deref()),
            Some(POD)
        );
        let solo = by(SOLO).context("solo")?;
        assert!(solo.pod.is_none());
        assert_eq!(
            solo.container.as_ref().map(|c| c.name.as_str()),
            Some("xsolo")
        );
        // Grouped, the pod is one workload named as `podman pod ps` names it.
        let ws = crate::discover::inventory::group(named);
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["pod xpod (containers: xweb)", "container xsolo"]);
        assert_eq!(ws[0].named_by, Some(NamedBy::Storage));
        Ok(())
    }

    #[test]
    fn container_records_name_containers_only() -> Result<()> {
        let json = format!(
            r#"[{{"id":"{WEB}","names":["xweb"],"metadata":"{{}}"}},
                {{"id":"{SOLO}","names":[]}},
                {{"id":"not-an-id","names":["x"]}},
                {{"id":"{INFRA}","names":["{long}"]}}]"#,
            long = "é".repeat(300)
        );
        let names = from_records(json.as_bytes())?;
        assert_eq!(names.containers.get(WEB).map(String::as_str), Some("xweb"));
        assert_eq!(names.containers.len(), 2);
        let long = names.containers.get(INFRA).context("infra")?;
        assert!(long.len() <= MAX_NAME && long.starts_with('é'), "{long}");
        assert!(names.pods.is_empty());
        assert!(from_records(b"{\"not\":\"a list\"}").is_err());
        Ok(())
    }

    #[test]
    fn storage_conf_graphroot() {
        let conf = "# comment\n[storage]\ndriver = \"overlay\"\n  graphroot = \"/srv/podman\" # x\nrunroot = \"/run/x\"\n[storage.options]\ngraphroot = \"/wrong\"\n";
        assert_eq!(
            parse_storage_conf(conf),
            (Some("/srv/podman".into()), Some("overlay".into()))
        );
        assert_eq!(parse_storage_conf("graphroot = \"/top\"\n"), (None, None));
        assert_eq!(
            parse_storage_conf("[storage]\ngraphroot = '/single'\n").0,
            Some("/single".into())
        );
    }
}

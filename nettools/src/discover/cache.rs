//! A runtime's hiccup never resets a workload: [`RuntimeCache`] keeps each source's last good
//! answer, and while that source fails (a timeout, a restart, its socket gone for a moment)
//! the containers and sandboxes it last reported stand in for its answer, marked stale, as
//! long as their network namespaces still exist. So a pod keeps its name, its kind and its
//! identity — and `serve` keeps its counts, histograms and tc attachments — until the runtime
//! answers again (then its fresh answer counts) or the namespace really disappears.
//!
//! The runtimes can be asked in the background ([`RuntimeCache::ask`] then
//! [`RuntimeCache::answer`]), so a loop that must not stall (draining the kernel's events,
//! answering scrapes) waits for them only as long as it chooses.

use std::{collections::BTreeMap, time::Duration};

use tokio::task::JoinHandle;

use super::{
    found,
    inventory::{self, Answer, Inventory, SourceReport, Sources},
};

/// What identifies a source from one question to the next: its kind and socket.
type SourceKey = (&'static str, Option<String>);

/// A source's last good answer.
#[derive(Clone, Debug)]
struct Remembered {
    /// The runtime that gave it, e.g. `containerd 1.6.20~ds1`.
    runtime: Option<String>,
    found: Vec<found::Found>,
}

/// The runtimes' inventory, with the last good answer of each source that fails now.
#[derive(Debug)]
pub struct RuntimeCache {
    sources: Sources,
    last: BTreeMap<SourceKey, Remembered>,
    /// The newest inventory.
    current: Inventory,
    /// A question out to the runtimes.
    asking: Option<JoinHandle<Vec<Answer>>>,
}

impl Clone for RuntimeCache {
    /// The same memory of answers, without the question in flight (it stays with the original).
    fn clone(&self) -> Self {
        Self {
            sources: self.sources.clone(),
            last: self.last.clone(),
            current: self.current.clone(),
            asking: None,
        }
    }
}

impl Drop for RuntimeCache {
    fn drop(&mut self) {
        if let Some(task) = self.asking.take() {
            task.abort();
        }
    }
}

impl RuntimeCache {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            last: BTreeMap::new(),
            current: Inventory::default(),
            asking: None,
        }
    }

    /// The newest inventory (empty before the first answer).
    pub fn inventory(&self) -> &Inventory {
        &self.current
    }

    /// Asks the runtimes and waits for their answer (each within its deadlines).
    pub async fn gather(&mut self) -> &Inventory {
        self.ask();
        self.answer(None).await;
        &self.current
    }

    /// Puts a question to the runtimes in the background, unless one is out already.
    pub fn ask(&mut self) {
        if self.asking.is_none() {
            let sources = self.sources.clone();
            self.asking = Some(tokio::spawn(async move { inventory::ask(&sources).await }));
        }
    }

    /// Whether a question is out.
    pub fn asking(&self) -> bool {
        self.asking.is_some()
    }

    /// Waits up to `wait` (`None`: until it comes) for the answer to the question out, and
    /// takes it in. Returns whether the inventory is new.
    pub async fn answer(&mut self, wait: Option<Duration>) -> bool {
        let Some(task) = self.asking.as_mut() else {
            return false;
        };
        let done = match wait {
            None => task.await,
            Some(_) if task.is_finished() => task.await,
            Some(w) => match tokio::time::timeout(w, task).await {
                Ok(done) => done,
                // Still asking: the answer is taken in by a later call.
                Err(_) => return false,
            },
        };
        self.asking = None;
        match done {
            Ok(answers) => {
                self.current = self.merge(answers);
                true
            }
            Err(e) => {
                log::warn!("asking the container runtimes failed: {e}");
                false
            }
        }
    }

    /// The inventory from fresh answers, a failed source's last good answer standing in for
    /// it (marked stale, only what still has its namespace). A source that is no longer asked
    /// at all (its default socket vanished, as when a runtime restarts) counts as failed
    /// while what it last reported lives.
    pub fn merge(&mut self, answers: Vec<Answer>) -> Inventory {
        let mut out: Vec<Answer> = Vec::new();
        let mut scans: Vec<Answer> = Vec::new();
        let mut seen: Vec<SourceKey> = Vec::new();
        for mut a in answers {
            if a.report.source == "cgroup-scan" {
                scans.push(a);
                continue;
            }
            let key = (a.report.source, a.report.socket.clone());
            seen.push(key.clone());
            if a.report.error.is_none() {
                self.last.insert(
                    key,
                    Remembered {
                        runtime: a.report.runtime.clone(),
                        found: a.found.clone(),
                    },
                );
            } else if let Some(kept) = self.keep(&key) {
                a.report.runtime = kept.runtime;
                a.report.kept = kept.found.len();
                a.found = kept.found;
            }
            out.push(a);
        }
        let gone: Vec<SourceKey> = self
            .last
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(kept) = self.keep(&key) {
                out.push(Answer {
                    report: SourceReport {
                        source: key.0,
                        socket: key.1.clone(),
                        runtime: kept.runtime,
                        found: 0,
                        error: Some("its socket is gone".to_string()),
                        kept: kept.found.len(),
                    },
                    found: kept.found,
                });
            }
        }
        // The cgroup scan last: it only adds containers no runtime (fresh or stale) named.
        out.extend(scans);
        Inventory::from_answers(out)
    }

    /// The last good answer of a failing source, narrowed to what still has its namespace
    /// and marked stale; forgotten once nothing of it is left.
    fn keep(&mut self, key: &SourceKey) -> Option<Remembered> {
        let remembered = self.last.get_mut(key)?;
        remembered.found.retain(found::Found::still_there);
        if remembered.found.is_empty() {
            self.last.remove(key);
            return None;
        }
        let mut kept = remembered.clone();
        for f in &mut kept.found {
            f.stale = true;
        }
        Some(kept)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::discover::{ContainerRef, PodRef, WorkloadKind, netns};

    /// A pod in this process's own namespace (a namespace that exists), or in one that does
    /// not (`alive` false).
    fn pod(id: &str, alive: bool) -> Vec<found::Found> {
        let me = netns::inode_of(std::path::Path::new("/proc/self/ns/net")).unwrap_or(1);
        let (netns, path) = if alive {
            (me, PathBuf::from("/proc/self/ns/net"))
        } else {
            (me, PathBuf::from("/nonexistent/netns/cni-gone"))
        };
        let pod = Some(PodRef {
            name: format!("web-{id}"),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{id}")),
            sandbox_id: Some(format!("sb-{id}")),
        });
        vec![
            found::Found {
                netns,
                netns_path: Some(path.clone()),
                pid: Some(std::process::id()),
                pod: pod.clone(),
                container: Some(ContainerRef {
                    id: format!("sb-{id}"),
                    name: "sandbox".into(),
                    runtime: "containerd".into(),
                }),
                sandbox: true,
                ..Default::default()
            },
            found::Found {
                netns,
                netns_path: Some(path),
                pod,
                container: Some(ContainerRef {
                    id: format!("c-{id}"),
                    name: "app".into(),
                    runtime: "containerd".into(),
                }),
                ..Default::default()
            },
        ]
    }

    fn cri(found: Vec<found::Found>, error: Option<&str>) -> Answer {
        Answer {
            report: SourceReport {
                source: "cri",
                socket: Some("/run/containerd/containerd.sock".into()),
                runtime: error.is_none().then(|| "containerd 1.6.20".to_string()),
                found: found.len(),
                error: error.map(String::from),
                kept: 0,
            },
            found: if error.is_none() { found } else { Vec::new() },
        }
    }

    /// The cgroup scan sees the pod's sandbox too, by its cgroup: it must not rename it.
    fn scan(id: &str) -> Answer {
        let mut seen = pod(id, true).swap_remove(0);
        seen.pod = Some(PodRef {
            name: format!("uid-{id}"),
            uid: Some(format!("uid-{id}")),
            ..Default::default()
        });
        seen.sandbox = false;
        if let Some(c) = seen.container.as_mut() {
            c.runtime = "containerd (cgroup scan)".into();
        }
        Answer {
            report: SourceReport {
                source: "cgroup-scan",
                socket: None,
                runtime: None,
                found: 1,
                error: None,
                kept: 0,
            },
            found: vec![seen],
        }
    }

    #[test]
    fn a_failed_source_keeps_its_workloads_marked_stale() {
        let mut cache = RuntimeCache::new(Sources::default());
        let fresh = cache.merge(vec![cri(pod("a", true), None), scan("a")]);
        assert_eq!(fresh.workloads.len(), 1);
        let before = fresh.workloads[0].clone();
        // (The test's namespace may be the host's: then the name says "host network" too.)
        assert!(
            before.name.starts_with("pod shop/web-a (containers: app)"),
            "{}",
            before.name
        );
        assert!(!before.stale);

        // The runtime times out: same name, kind, sandbox, path; marked stale; the report
        // says it failed and what stands in for it.
        let hiccup = cache.merge(vec![
            cri(
                Vec::new(),
                Some("no answer to the CRI Version call within 5 s"),
            ),
            scan("a"),
        ]);
        assert_eq!(hiccup.workloads.len(), 1);
        let during = &hiccup.workloads[0];
        assert!(during.stale);
        assert_eq!(during.name, before.name);
        assert_eq!(during.kind, WorkloadKind::Pod);
        assert_eq!(during.pod, before.pod);
        assert_eq!(during.netns_path, before.netns_path);
        assert_eq!(during.containers, before.containers);
        let report = &hiccup.sources[0];
        assert!(!report.answered());
        assert_eq!(report.kept, 2);
        assert_eq!(
            report.describe(),
            "cri (containerd 1.6.20) at /run/containerd/containerd.sock failed: no answer to \
             the CRI Version call within 5 s; its last answer stands for 2 containers and \
             sandboxes whose namespaces still exist (marked stale)"
        );

        // Its socket vanishes for a moment (the runtime restarting): still there, failed.
        let restarting = cache.merge(vec![scan("a")]);
        assert_eq!(restarting.workloads[0].name, before.name);
        assert!(restarting.workloads[0].stale);
        assert_eq!(
            restarting.sources[0].error.as_deref(),
            Some("its socket is gone")
        );

        // It answers again: fresh, not stale.
        let back = cache.merge(vec![cri(pod("a", true), None), scan("a")]);
        assert!(!back.workloads[0].stale);
        assert_eq!(back.sources[0].kept, 0);
        assert_eq!(
            back.sources[0].describe(),
            "containerd 1.6.20 at /run/containerd/containerd.sock"
        );
    }

    #[test]
    fn a_stale_workload_goes_when_its_namespace_does() {
        let mut cache = RuntimeCache::new(Sources::default());
        cache.merge(vec![cri(pod("b", false), None)]);
        let after = cache.merge(vec![cri(Vec::new(), Some("no answer"))]);
        assert!(after.workloads.is_empty(), "{:?}", after.workloads);
        assert_eq!(after.sources[0].kept, 0);
        assert_eq!(
            after.sources[0].describe(),
            "cri at /run/containerd/containerd.sock failed: no answer"
        );
        // Nothing left to stand in: a source no longer asked is forgotten.
        assert!(cache.merge(Vec::new()).sources.is_empty());
    }

    #[test]
    fn a_fresh_answer_replaces_the_last_one() {
        let mut cache = RuntimeCache::new(Sources::default());
        cache.merge(vec![cri(pod("a", true), None)]);
        // The pod was deleted while the runtime answered: no stale ghost afterwards.
        cache.merge(vec![cri(Vec::new(), None)]);
        let after = cache.merge(vec![cri(Vec::new(), Some("no answer"))]);
        assert!(after.workloads.is_empty());
    }
}

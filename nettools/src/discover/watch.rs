//! Following a pod or container while it is traced: every couple of seconds the runtimes are
//! asked again. A workload that is gone ends the trace (it is reported); one that came back
//! with a new sandbox — a new network namespace — is followed with `--follow`.
//!
//! The runtimes are asked in the background: the trace's loop (which drains the kernel's
//! events) never waits for them, and their answer is looked at on a later tick. A runtime
//! that fails keeps its last answer ([`RuntimeCache`]), so a hiccup neither ends nor restarts
//! a trace; only the namespace itself disappearing does.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::{
    Workload,
    cache::RuntimeCache,
    found,
    inventory::{self, Inventory, Sources},
};

/// How often the runtimes are asked.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What was asked for on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod {
        name: String,
        namespace: Option<String>,
    },
    Container(String),
}

impl Target {
    /// `pod default/web`, `container ntc1`.
    pub fn describe(&self) -> String {
        match self {
            Target::Pod {
                name,
                namespace: Some(ns),
            } => format!("pod {ns}/{name}"),
            Target::Pod { name, .. } => format!("pod {name}"),
            Target::Container(c) => format!("container {c}"),
        }
    }

    /// Looks the target up in an inventory.
    pub fn find(&self, inv: &Inventory) -> Result<Workload> {
        match self {
            Target::Pod { name, namespace } => inv.find_pod(name, namespace.as_deref()),
            Target::Container(c) => inv.find_container(c),
        }
    }
}

/// What changed since the last look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Still there, in the same namespace (or the runtimes could not tell).
    Same,
    /// Gone: with `--follow` the trace waits for it, otherwise it ends.
    Gone(String),
    /// Back in a new namespace (a new sandbox), already described (veths, addresses).
    Replaced(Box<Workload>),
}

/// A pod or container being followed.
#[derive(Clone, Debug)]
pub struct Watch {
    pub target: Target,
    /// The runtimes, with their last good answers.
    pub runtimes: RuntimeCache,
    /// Follow a new sandbox (`--follow`) instead of ending the trace.
    pub follow: bool,
    /// The namespace being traced now.
    pub current: Workload,
    /// Whether "gone" was already said for the current namespace.
    pub reported_gone: bool,
    /// When the runtimes were last asked.
    last: Option<Instant>,
}

impl Watch {
    pub fn new(target: Target, runtimes: RuntimeCache, follow: bool, current: Workload) -> Self {
        Self {
            target,
            runtimes,
            follow,
            current,
            reported_gone: false,
            // The workload was just looked up.
            last: Some(Instant::now()),
        }
    }

    /// Asks the runtimes again when [`INTERVAL`] has passed since the last time (in the
    /// background), and looks at their answer once it is in. Never waits for them.
    pub async fn check(&mut self) -> Change {
        if !self.runtimes.asking() {
            if self.last.is_some_and(|l| l.elapsed() < INTERVAL) {
                return Change::Same;
            }
            self.last = Some(Instant::now());
            self.runtimes.ask();
        }
        if !self.runtimes.answer(Some(Duration::ZERO)).await {
            return Change::Same;
        }
        let inv = self.runtimes.inventory().clone();
        self.decide_on(&inv)
    }

    /// What the inventory `inv` means for the workload followed.
    fn decide_on(&mut self, inv: &Inventory) -> Change {
        let answered = inv.sources.iter().any(inventory::SourceReport::answered);
        let alive = self
            .current
            .netns_path
            .as_deref()
            .is_some_and(|p| found::still_there(p, self.current.netns));
        let change = decide(
            &self.target,
            &self.current,
            self.target.find(inv),
            answered,
            alive,
        );
        match change {
            Change::Replaced(mut w) => {
                inventory::describe(&mut w);
                self.current = (*w).clone();
                self.reported_gone = false;
                Change::Replaced(w)
            }
            Change::Gone(_) if self.reported_gone => Change::Same,
            Change::Gone(sentence) => {
                self.reported_gone = true;
                Change::Gone(sentence)
            }
            Change::Same => Change::Same,
        }
    }
}

/// Whether two looks at a workload are the same sandbox. The namespace inode alone does not
/// tell: the kernel reuses a freed namespace's inode number at once, so a pod restarted with a
/// new sandbox often gets its old inode back. The sandbox id (pods) and the namespace's path
/// (the runtime's bind mount, new for every sandbox) do tell.
pub fn same_sandbox(a: &Workload, b: &Workload) -> bool {
    let sandbox = |w: &Workload| w.pod.as_ref().and_then(|p| p.sandbox_id.clone());
    a.netns == b.netns && sandbox(a) == sandbox(b) && a.netns_path == b.netns_path
}

/// Decides what a new look at the runtimes means for the workload being traced.
/// `found` is the target looked up again; `answered` whether a runtime API answered at all;
/// `alive` whether the traced namespace still exists.
pub fn decide(
    target: &Target,
    current: &Workload,
    found: Result<Workload>,
    answered: bool,
    alive: bool,
) -> Change {
    match found {
        Ok(w) if same_sandbox(&w, current) => Change::Same,
        Ok(w) => Change::Replaced(Box::new(w)),
        // No API answered (a runtime restarting, say): trust the namespace itself.
        Err(_) if !answered && alive => Change::Same,
        Err(_) => Change::Gone(format!(
            "{} was deleted{}",
            target.describe(),
            if alive {
                ""
            } else {
                " (its network namespace is gone)"
            }
        )),
    }
}

/// `--pod` and `--container`: the workloads to trace (veths and addresses filled in), each with
/// a [`Watch`] that follows it during the trace.
pub async fn lookup(
    pods: &[String],
    namespace: Option<&str>,
    containers: &[String],
    sources: &Sources,
    follow: bool,
) -> Result<(Vec<Workload>, Vec<Watch>)> {
    let mut cache = RuntimeCache::new(sources.clone());
    let inv = cache.gather().await.clone();
    let targets = pods
        .iter()
        .map(|p| Target::Pod {
            name: p.clone(),
            namespace: namespace.map(String::from),
        })
        .chain(containers.iter().map(|c| Target::Container(c.clone())));
    let mut workloads = Vec::new();
    let mut watches = Vec::new();
    for t in targets {
        let mut w = t.find(&inv)?;
        inventory::describe(&mut w);
        watches.push(Watch::new(t, cache.clone(), follow, w.clone()));
        workloads.push(w);
    }
    Ok((workloads, watches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    fn w(netns: u32) -> Workload {
        Workload {
            name: "pod default/web".into(),
            netns,
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let t = Target::Pod {
            name: "web".into(),
            namespace: Some("default".into()),
        };
        let now = w(10);
        assert_eq!(decide(&t, &now, Ok(w(10)), true, true), Change::Same);
        // A new sandbox that got the old inode number back is still a new sandbox.
        let mut reused = w(10);
        reused.netns_path = Some("/run/netns/netns-new".into());
        assert_eq!(
            decide(&t, &now, Ok(reused.clone()), true, true),
            Change::Replaced(Box::new(reused))
        );
        assert_eq!(
            decide(&t, &now, Ok(w(11)), true, false),
            Change::Replaced(Box::new(w(11)))
        );
        assert_eq!(
            decide(&t, &now, Err(anyhow!("no pod")), true, false),
            Change::Gone("pod default/web was deleted (its network namespace is gone)".into())
        );
        assert_eq!(
            decide(&t, &now, Err(anyhow!("no pod")), true, true),
            Change::Gone("pod default/web was deleted".into())
        );
        // A runtime that does not answer is not a deletion while the namespace lives.
        assert_eq!(
            decide(&t, &now, Err(anyhow!("down")), false, true),
            Change::Same
        );
        assert_eq!(
            Target::Container("ntc1".into()).describe(),
            "container ntc1"
        );
    }
}

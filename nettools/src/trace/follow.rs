//! Pods and containers during a trace: their names for `--all`, and following the ones traced.
//! On the trace's tick each followed pod or container is looked up again ([`Watch`]); one that
//! was deleted ends the trace with its final report (or, with `--follow`, is waited for), and
//! one restarted with a new sandbox has its new namespace added to the kernel filter and its
//! new veth attached, so its events keep being attributed to it.

use std::{collections::BTreeMap, time::Instant};

use anyhow::Result;

use super::TraceSpec;
use crate::{
    discover::{
        Workload,
        watch::{Change, Watch},
    },
    probe::{self, Loaded},
    report::text::Safe,
};

/// What a trace knows from the container runtimes.
#[derive(Clone, Debug, Default)]
pub struct RuntimeTrace {
    /// Names of pods' and containers' namespaces, for `--all`.
    pub labels: BTreeMap<u32, Workload>,
    /// The pods and containers traced by name (`--pod`, `--container`).
    pub watches: Vec<Watch>,
}

/// Runs on every tick of the trace. Returns `false` when the trace should end.
pub async fn tick(
    runtime: &mut RuntimeTrace,
    spec: &TraceSpec,
    loaded: &mut Loaded,
    traced: &mut Vec<Workload>,
    started: Instant,
) -> Result<bool> {
    let on_veth = spec.session.probes.iter().any(|p| p.on_veth());
    let mut keep_going = true;
    for watch in &mut runtime.watches {
        let previous = watch.current.netns;
        let at = format!("{:.1} s into the trace", started.elapsed().as_secs_f64());
        match watch.check().await {
            Change::Same => {}
            Change::Gone(sentence) if watch.follow => {
                eprintln!(
                    "nettools: {}; waiting for it to come back (--follow)",
                    Safe(&sentence)
                );
                loaded
                    .kernel
                    .notes
                    .push(format!("{sentence} {at}; waited for it (--follow)"));
            }
            Change::Gone(sentence) => {
                eprintln!("nettools: {}: ending the trace", Safe(&sentence));
                loaded.kernel.notes.push(format!("{sentence} {at}"));
                keep_going = false;
            }
            Change::Replaced(w) if !watch.follow => {
                let sentence = format!(
                    "{} was restarted in a new network namespace ({}); not followed without --follow",
                    watch.target.describe(),
                    w.netns
                );
                eprintln!("nettools: {}: ending the trace", Safe(&sentence));
                loaded.kernel.notes.push(format!("{sentence} ({at})"));
                keep_going = false;
            }
            Change::Replaced(w) => {
                loaded.trace_netns(w.netns)?;
                if on_veth {
                    let targets: Vec<probe::tc::Target> = w
                        .veths
                        .iter()
                        .map(|v| probe::tc::Target {
                            ifname: v.name.clone(),
                            ifindex: v.ifindex,
                            direct: false,
                        })
                        .collect();
                    loaded.attach_tc(&targets, spec.session.tc_mode)?;
                }
                let sentence = if w.netns == previous {
                    // The kernel gave the new namespace the old one's inode: one entry.
                    traced.retain(|t| t.netns != previous);
                    format!(
                        "{} has a new sandbox (its network namespace reuses inode {previous}): \
                         following it",
                        watch.target.describe()
                    )
                } else {
                    for old in traced.iter_mut().filter(|t| t.netns == previous) {
                        old.name.push_str(" (previous sandbox)");
                    }
                    format!(
                        "{} has a new sandbox (netns {}, was {previous}): following it",
                        watch.target.describe(),
                        w.netns
                    )
                };
                eprintln!("nettools: {}", Safe(&sentence));
                loaded.kernel.notes.push(format!("{sentence} ({at})"));
                traced.push(*w);
            }
        }
    }
    Ok(keep_going)
}

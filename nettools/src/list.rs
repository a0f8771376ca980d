//! `nettools list`: every pod and container on this node, one row per network namespace, with
//! what tracing it needs (namespace inode, host-side veth) and what a person recognises it by
//! (names, addresses, runtime) and which kind of source named it (a runtime's API, Podman's
//! storage, the cgroup scan).

use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use crate::{
    cli::ListArgs,
    cli::ListFormat as Output,
    discover::{NamedBy, Workload, inventory::Inventory},
    report::text,
};

/// Runs `nettools list`.
pub async fn run(args: &ListArgs) -> Result<()> {
    let mut inventory = Inventory::gather(&args.runtime.sources()).await;
    inventory.describe();
    let text = match args.output {
        Output::Table => table(&inventory),
        Output::Json => {
            serde_json::to_string_pretty(&inventory).context("cannot encode the list as JSON")?
                + "\n"
        }
    };
    print!("{text}");
    Ok(())
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() { "-".to_string() } else { s }
}

/// The name column: `default/web` for a pod, the first container's name otherwise.
fn name(w: &Workload) -> String {
    match &w.pod {
        Some(p) => p.display(),
        None => w
            .containers
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_else(|| w.name.clone()),
    }
}

/// The table for people. Every cell is escaped ([`text::escape`]: names come from the runtimes
/// and the workloads) and padded by display columns.
pub fn table(inv: &Inventory) -> String {
    let header = [
        "KIND",
        "NAME",
        "CONTAINERS",
        "NETNS",
        "PID",
        "HOST VETH",
        "ADDRESSES",
        "NAMED BY",
        "RUNTIME",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for w in &inv.workloads {
        let cells = row(w);
        rows.push(cells.map(|c| text::escape(&c).into_owned()));
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(text::width(cell));
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&text::pad(cell, *w));
                l.push_str("  ");
            }
        }
        let _ = writeln!(out, "{l}");
    };
    if rows.is_empty() {
        let _ = writeln!(out, "no pods or containers found on this node");
    } else {
        line(&mut out, &header);
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            line(&mut out, &cells);
        }
    }
    let _ = writeln!(out, "\nasked: {}", text::escape(&inv.asked()));
    out
}

/// One workload's cells, raw.
fn row(w: &Workload) -> [String; 9] {
    let mut runtimes: Vec<&str> = w.containers.iter().map(|c| c.runtime.as_str()).collect();
    runtimes.dedup();
    // Named from a failing runtime's last answer.
    let stale = if w.stale { " (stale)" } else { "" };
    [
        if w.pod.is_some() { "pod" } else { "container" }.to_string(),
        name(w),
        dash_if_empty(
            w.containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        if w.host_network {
            format!("{} (host)", w.netns)
        } else {
            w.netns.to_string()
        },
        w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        if w.host_network {
            "host network".to_string()
        } else {
            dash_if_empty(
                w.veths
                    .iter()
                    .map(|v| match &v.bridge {
                        Some(b) => format!("{} ({b})", v.name),
                        None => v.name.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        },
        dash_if_empty(w.addresses.join(", ")),
        w.named_by.map_or("-", NamedBy::words).to_string(),
        dash_if_empty(runtimes.join(", ")) + stale,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{
        ContainerRef, PodRef, WorkloadKind, inventory::SourceReport, veth::HostVeth,
    };

    proptest::proptest! {
        /// Names from the runtimes and the workloads: escaped, one line per workload, and
        /// every column starting where its header does.
        #[test]
        fn hostile_names_keep_the_table_whole(
            names in proptest::collection::vec(crate::report::hostile_tests::hostile(), 12),
        ) {
            let w = |i: usize| Workload {
                name: names[i].clone(),
                kind: WorkloadKind::Pod,
                netns: 4026532253 + i as u32,
                pid: Some(14052),
                pod: Some(PodRef {
                    name: names[i + 1].clone(),
                    namespace: Some(names[i + 2].clone()),
                    ..Default::default()
                }),
                containers: vec![ContainerRef {
                    id: "a".into(),
                    name: names[i + 3].clone(),
                    runtime: names[i + 4].clone(),
                }],
                veths: vec![HostVeth {
                    name: names[i + 5].clone(),
                    ifindex: 9,
                    bridge: Some(names[i + 6].clone()),
                    inner_name: "eth0".into(),
                    inner_ifindex: 2,
                }],
                addresses: vec![names[i + 7].clone()],
                ..Default::default()
            };
            let inv = Inventory {
                sources: vec![SourceReport {
                    source: "docker-api",
                    socket: Some(names[8].clone()),
                    runtime: Some(names[9].clone()),
                    found: 2,
                    error: Some(names[10].clone()),
                    kept: 0,
                }],
                workloads: vec![w(0), w(4)],
            };
            let t = table(&inv);
            crate::report::hostile_tests::assert_terminal_safe("list", &t);
            let lines: Vec<&str> = t.lines().collect();
            proptest::prop_assert_eq!(lines.len(), 5, "{}", t);
            // Everything before the last column (RUNTIME) is as wide on every line.
            let last = |i: usize| -> String {
                match i {
                    0 => "RUNTIME".to_string(),
                    _ => text::escape(&super::dash_if_empty(names[(i - 1) * 4 + 4].clone())).into_owned(),
                }
            };
            let before: Vec<usize> = (0..3)
                .map(|i| text::width(lines[i]) - text::width(&last(i)))
                .collect();
            proptest::prop_assert!(before.iter().all(|b| *b == before[0]), "{:?}\n{}", before, t);
        }
    }

    #[test]
    fn one_row_per_namespace() {
        let inv = Inventory {
            sources: vec![SourceReport {
                source: "docker-api",
                socket: Some("/run/podman/podman.sock".into()),
                runtime: Some("podman 4.3.1".into()),
                found: 3,
                error: None,
                kept: 0,
            }],
            workloads: vec![
                Workload {
                    name: "pod ntpod1 (containers: web, side)".into(),
                    kind: WorkloadKind::Pod,
                    netns: 4026532253,
                    pid: Some(14052),
                    pod: Some(PodRef {
                        name: "ntpod1".into(),
                        ..Default::default()
                    }),
                    containers: vec![
                        ContainerRef {
                            id: "a".into(),
                            name: "web".into(),
                            runtime: "podman".into(),
                        },
                        ContainerRef {
                            id: "b".into(),
                            name: "side".into(),
                            runtime: "podman".into(),
                        },
                    ],
                    veths: vec![HostVeth {
                        name: "veth1".into(),
                        ifindex: 9,
                        bridge: Some("podman1".into()),
                        inner_name: "eth0".into(),
                        inner_ifindex: 2,
                    }],
                    addresses: vec!["10.233.0.3/24".into()],
                    named_by: Some(NamedBy::RuntimeApi),
                    ..Default::default()
                },
                Workload {
                    name: "container agent (host network)".into(),
                    kind: WorkloadKind::Container,
                    netns: 4026531840,
                    host_network: true,
                    containers: vec![ContainerRef {
                        id: "c".into(),
                        name: "agent".into(),
                        runtime: "podman".into(),
                    }],
                    named_by: Some(NamedBy::Storage),
                    ..Default::default()
                },
                Workload {
                    name: "container 0123456789ab".into(),
                    kind: WorkloadKind::Container,
                    netns: 4026532300,
                    containers: vec![ContainerRef {
                        id: "0123456789ab".repeat(5),
                        name: "0123456789ab".into(),
                        runtime: "docker (cgroup scan)".into(),
                    }],
                    named_by: Some(NamedBy::CgroupScan),
                    ..Default::default()
                },
            ],
        };
        let t = table(&inv);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "KIND       NAME          CONTAINERS    NETNS              PID    HOST VETH        ADDRESSES      NAMED BY     RUNTIME"
        );
        assert_eq!(
            lines[1],
            "pod        ntpod1        web, side     4026532253         14052  veth1 (podman1)  10.233.0.3/24  API          podman"
        );
        assert_eq!(
            lines[2],
            "container  agent         agent         4026531840 (host)  -      host network     -              storage      podman"
        );
        assert_eq!(
            lines[3],
            "container  0123456789ab  0123456789ab  4026532300         -      -                -              cgroup scan  docker (cgroup scan)"
        );
        assert_eq!(lines[5], "asked: podman 4.3.1 at /run/podman/podman.sock");
        // JSON says the same, in words for programs.
        let json = serde_json::to_value(&inv.workloads).unwrap_or_default();
        let named: Vec<&str> = (0..3)
            .filter_map(|i| json[i]["named_by"].as_str())
            .collect();
        assert_eq!(named, ["runtime-api", "storage", "cgroup-scan"]);
    }

    #[test]
    fn a_workload_from_a_failing_runtimes_last_answer_is_marked_stale() {
        let inv = Inventory {
            sources: vec![SourceReport {
                source: "cri",
                socket: Some("/run/containerd/containerd.sock".into()),
                runtime: Some("containerd 1.6.20".into()),
                found: 0,
                error: Some("no answer to the CRI Version call within 5 s".into()),
                kept: 2,
            }],
            workloads: vec![Workload {
                kind: WorkloadKind::Pod,
                netns: 4026532253,
                pod: Some(PodRef {
                    name: "web".into(),
                    namespace: Some("shop".into()),
                    ..Default::default()
                }),
                containers: vec![ContainerRef {
                    id: "a".into(),
                    name: "app".into(),
                    runtime: "containerd".into(),
                }],
                stale: true,
                ..Default::default()
            }],
        };
        let t = table(&inv);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].ends_with("containerd (stale)"), "{t}");
        assert_eq!(
            lines[3],
            "asked: cri (containerd 1.6.20) at /run/containerd/containerd.sock failed: no answer \
             to the CRI Version call within 5 s; its last answer stands for 2 containers and \
             sandboxes whose namespaces still exist (marked stale)"
        );
    }
}

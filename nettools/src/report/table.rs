//! The report for people: per namespace, what is going wrong and where.

use std::fmt::Write as _;

use super::{Health, Summary};

/// Renders the summary as text.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let probes: Vec<&str> = s.probes.iter().map(|p| p.name()).collect();
    let _ = writeln!(
        out,
        "nettools trace: {} for {:.1} s, probes: {}, kernel {}",
        match (s.all_namespaces, s.workloads.len()) {
            (true, _) => "every namespace".to_string(),
            (false, 1) => "1 namespace".to_string(),
            (false, n) => format!("{n} namespaces"),
        },
        s.duration_s,
        probes.join(", "),
        s.kernel
    );
    for note in &s.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "{}", health_line(&s.health));
    if s.workloads.is_empty() {
        let _ = writeln!(out, "\nno drops in any network namespace");
    }
    for w in &s.workloads {
        let _ = writeln!(out);
        let mut title = format!("== {}  (netns {}", w.name, w.netns);
        if let Some(p) = &w.netns_path
            && !w.name.contains(p.as_str())
        {
            let _ = write!(title, ", {p}");
        }
        title.push(')');
        let _ = writeln!(out, "{title}");
        let d = &w.drops;
        if d.total == 0 {
            let _ = writeln!(out, "  drops: none");
            continue;
        }
        let _ = writeln!(out, "  drops: {}", d.total);
        let width = d
            .by_reason
            .iter()
            .map(|r| r.reason.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "    {:<width$}  {:>8}  WHERE IN THE KERNEL",
            "REASON", "PACKETS"
        );
        for r in &d.by_reason {
            let locs: Vec<String> = r
                .locations
                .iter()
                .map(|l| format!("{} ({})", l.location, l.count))
                .collect();
            let _ = writeln!(
                out,
                "    {:<width$}  {:>8}  {}",
                r.reason,
                r.count,
                locs.join(", ")
            );
        }
        if !d.top_flows.is_empty() {
            let _ = writeln!(out, "    top dropped flows:");
            for f in &d.top_flows {
                let _ = writeln!(out, "      {:>8}  {}  [{}]", f.count, f.flow, f.reason);
            }
        }
    }
    out
}

/// One line on the pipeline's health: lost events are never silent.
fn health_line(h: &Health) -> String {
    let mut line = format!("events lost: {}", h.events_lost);
    let extras = [
        (h.drop_count_map_full, "drops not counted (count map full)"),
        (h.drops_netns_unknown, "drops with unknown namespace"),
        (h.undecodable_events, "undecodable events"),
    ];
    for (n, what) in extras {
        if n > 0 {
            let _ = write!(line, "; {what}: {n}");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DropSummary, LocationCount, ReasonCount, WorkloadSummary};

    #[test]
    fn shows_reasons_locations_and_quiet_namespaces() {
        let s = Summary {
            kind: "summary",
            duration_s: 2.0,
            kernel: "6.18.0".into(),
            probes: vec![crate::probe::ProbeKind::Drops],
            all_namespaces: false,
            health: Health {
                events_lost: 3,
                ..Default::default()
            },
            notes: vec![],
            workloads: vec![
                WorkloadSummary {
                    name: "web".into(),
                    netns: 4026532000,
                    netns_path: Some("/run/netns/web".into()),
                    pid: None,
                    drops: DropSummary {
                        total: 12,
                        by_reason: vec![ReasonCount {
                            reason: "NETFILTER_DROP".into(),
                            code: 12,
                            count: 12,
                            locations: vec![LocationCount {
                                location: "nf_hook_slow+0x9c".into(),
                                address: "0xffffffff81a0009c".into(),
                                count: 12,
                            }],
                        }],
                        top_flows: vec![],
                    },
                },
                WorkloadSummary {
                    name: "db".into(),
                    netns: 4026532001,
                    netns_path: None,
                    pid: None,
                    drops: DropSummary::default(),
                },
            ],
        };
        let text = render(&s);
        assert!(text.contains("events lost: 3"), "{text}");
        assert!(
            text.contains("== web  (netns 4026532000, /run/netns/web)"),
            "{text}"
        );
        assert!(
            text.contains("NETFILTER_DROP        12  nf_hook_slow+0x9c (12)"),
            "{text}"
        );
        assert!(
            text.contains("== db  (netns 4026532001)\n  drops: none"),
            "{text}"
        );
    }
}

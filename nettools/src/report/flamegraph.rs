//! Where packets die, as a flame graph: one tower per workload and drop reason (and one for TCP
//! retransmissions), then the kernel stack from the outermost caller to the function that
//! freed the packet. `--folded FILE` writes the folded-stack text other tools read;
//! `--output flamegraph` renders it to SVG with inferno.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use crate::{
    collect::kallsyms::Kallsyms,
    discover::Workload,
    probe::{KernelInfo, stacks::Stacks as StackTraces},
};
use nettools_common::{drops::DropStackKey, retransmits::RetransmitStackKey};

/// Which stacks a flame graph shows. Drops count packets and retransmits count segments, so
/// they are not drawn together unless asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Stacks {
    /// Dropped packets, by workload, drop reason and kernel stack.
    #[default]
    Drops,
    /// Retransmitted TCP segments, by workload and kernel stack (RTO timer or fast retransmit).
    Retransmits,
    /// Both, side by side.
    All,
}

impl Stacks {
    pub fn drops(self) -> bool {
        self != Self::Retransmits
    }

    pub fn retransmits(self) -> bool {
        self != Self::Drops
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Drops => "Where packets die: drops by workload, reason and kernel stack",
            Self::Retransmits => "TCP retransmissions by workload and kernel stack",
            Self::All => "Where packets die: drops (packets) and TCP retransmissions (segments)",
        }
    }
}

/// Frames that belong to the tracing machinery, not to the packet's path.
fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "perf_trace_",
        "trace_event_raw_event_",
        "__traceiter_",
        "bpf_get_stackid",
        "__bpf_prog_run",
        "trace_call_bpf",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The kernel path of a stack, outermost caller first, tracing frames removed.
pub fn path(frames: &[u64], kallsyms: &Kallsyms) -> Vec<String> {
    let mut names: Vec<String> = frames
        .iter()
        .map(|&ip| {
            kallsyms
                .function(ip)
                .map(super::text::frame)
                .unwrap_or_else(|| format!("{ip:#x}"))
        })
        .collect();
    // Innermost first as recorded: drop the tracing frames at the top, then reverse.
    while names.first().is_some_and(|n| is_tracing_frame(n)) {
        names.remove(0);
    }
    names.reverse();
    names
}

/// Folded stacks (`frame;frame;frame count`), sorted, from the exact per-stack counts.
pub fn folded(
    drops: &[(DropStackKey, u64)],
    retransmits: &[(RetransmitStackKey, u64)],
    stacks: &StackTraces,
    name_of: &dyn Fn(u32) -> Workload,
    kernel: &KernelInfo,
    kallsyms: &Kallsyms,
) -> Vec<String> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |root: String, what: String, stack_id: i32, n: u64| {
        if n == 0 {
            return;
        }
        let mut frames = vec![super::text::frame(&root), super::text::frame(&what)];
        match stacks.get(&stack_id) {
            Some(ips) if stack_id >= 0 => frames.extend(path(ips, kallsyms)),
            _ => frames.push("[stack_unavailable]".to_string()),
        }
        *lines.entry(frames.join(";")).or_default() += n;
    };
    for (k, n) in drops {
        add(
            name_of(k.netns).name,
            kernel.drop_reasons.name(k.reason),
            k.stack_id,
            *n,
        );
    }
    for (k, n) in retransmits {
        add(
            name_of(k.netns).name,
            "TCP_RETRANSMIT".to_string(),
            k.stack_id,
            *n,
        );
    }
    lines
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}"))
        .collect()
}

/// Renders folded stacks as an SVG flame graph.
pub fn svg(folded: &[String], title: &str) -> Result<Vec<u8>> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "packets".to_string();
    opts.deterministic = true;
    let mut out = Vec::new();
    if folded.is_empty() {
        // inferno refuses empty input; an empty graph still says so.
        let placeholder = ["no_drops_or_retransmits_seen 1".to_string()];
        inferno::flamegraph::from_lines(&mut opts, placeholder.iter().map(String::as_str), &mut out)
    } else {
        inferno::flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut out)
    }
    .context("rendering the flame graph failed")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYMS: &str = "\
ffffffff81000000 T bpf_trace_run2
ffffffff81000100 T perf_trace_kfree_skb
ffffffff81001000 T sk_skb_reason_drop
ffffffff81002000 T nf_hook_slow
ffffffff81003000 T ip_local_deliver
ffffffff81004000 T ip_rcv
";

    #[test]
    fn stacks_fold_root_first_without_tracing_frames() {
        let k = Kallsyms::parse(SYMS);
        let stacks: StackTraces = [(
            7,
            vec![
                0xffffffff81000010,
                0xffffffff81000110,
                0xffffffff81001010,
                0xffffffff81002010,
                0xffffffff81003010,
                0xffffffff81004010,
            ],
        )]
        .into_iter()
        .collect();
        let drops = [
            (
                DropStackKey {
                    netns: 1,
                    reason: 12,
                    stack_id: 7,
                    _pad: 0,
                },
                30,
            ),
            (
                DropStackKey {
                    netns: 1,
                    reason: 12,
                    stack_id: -17,
                    _pad: 0,
                },
                2,
            ),
        ];
        let kernel = KernelInfo {
            drop_reasons: crate::probe::drops::DropReasons::from_pairs(&[(
                "SKB_DROP_REASON_NETFILTER_DROP",
                12,
            )]),
            ..Default::default()
        };
        let name = |netns: u32| Workload {
            name: format!("pod web {netns}"),
            netns,
            ..Default::default()
        };
        let lines = folded(&drops, &[], &stacks, &name, &kernel, &k);
        assert_eq!(
            lines,
            vec![
                "pod_web_1;NETFILTER_DROP;[stack_unavailable] 2".to_string(),
                "pod_web_1;NETFILTER_DROP;ip_rcv;ip_local_deliver;nf_hook_slow;sk_skb_reason_drop 30".to_string(),
            ]
        );
        let total: u64 = lines
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(total, 32);
        let svg = svg(&lines, "drops").unwrap_or_default();
        let text = String::from_utf8_lossy(&svg);
        assert!(text.starts_with("<?xml") && text.contains("nf_hook_slow"));
    }
}

//! Every text renderer against names from outside: arbitrary Unicode mixed with control, bidi
//! and format characters, quotes, `;`, spaces and wide characters, in every string a report
//! shows. Whatever the names, a renderer must not panic, must not emit a control character
//! (the only one allowed is the line feed that ends its own lines), must not gain or lose
//! lines (a name cannot forge one) and must keep its columns.

use proptest::prelude::*;

use super::{
    DnsFailure, DnsSummary, DropSummary, FlowCount, HandshakeOutcomes, InterfaceSummary,
    LatencyDistribution, LatencySummary, LocationCount, NeighbourFailure, NeighbourLookup,
    NeighbourSummary, ReasonCount, RetransmitFlow, RetransmitSummary, Summary, TransitSource,
    WorkloadSummary, text,
};
use crate::collect::latency::{LatencyKind, new_histogram};

/// Characters that have broken terminals, parsers and layouts.
const NASTY: &[char] = &[
    '\x1b',
    '\n',
    '\r',
    '\t',
    '\x07',
    '\x00',
    '\x08',
    '\x7f',
    '\u{85}',
    '\u{9b}',
    '\u{9d}',
    '\u{202e}',
    '\u{202d}',
    '\u{2066}',
    '\u{2069}',
    '\u{200b}',
    '\u{200d}',
    '\u{feff}',
    '\u{2028}',
    '\u{2029}',
    '\u{e0041}',
    '\u{ad}',
    ';',
    ' ',
    '\u{a0}',
    '\u{3000}',
    '<',
    '&',
    '"',
    '\'',
    '\\',
    '[',
    ']',
    'é',
    '東',
    '😀',
    '\u{301}',
    '\u{fe0f}',
    '\u{fffd}',
    '…',
];

/// A name a workload could choose.
pub(crate) fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>(),
            3 => prop::sample::select(NASTY),
            2 => prop::char::range('a', 'z'),
        ],
        0..48,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// What must never reach a terminal: any unsafe character except the renderer's own line feeds.
pub(crate) fn assert_terminal_safe(what: &str, out: &str) {
    if let Some(c) = out.chars().find(|&c| c != '\n' && text::is_unsafe(c)) {
        panic!("{what} emitted {c:?} raw:\n{out}");
    }
}

/// Strings to build a summary from: `names[i]` for the i-th string it shows.
const NAMES: usize = 24;

fn distribution(kind: LatencyKind, base: u64) -> LatencyDistribution {
    let mut h = new_histogram();
    for i in 0..20u64 {
        h.saturating_record(base + i * 1_000);
    }
    LatencyDistribution::new(kind, h)
}

/// A summary with every section filled, every string taken from `names`.
fn summary(names: &[String]) -> Summary {
    let n = |i: usize| names[i % names.len()].clone();
    let workload = |first: usize, netns: u32| WorkloadSummary {
        name: n(first),
        kind: Default::default(),
        netns,
        netns_path: Some(n(first + 1)),
        pid: Some(42),
        pod: None,
        containers: vec![],
        host_network: false,
        stale: false,
        interfaces: vec![InterfaceSummary {
            name: n(first + 2),
            ifindex: 9,
            peer: Some(n(first + 3)),
            bridge: Some(n(first + 4)),
            attached: Some("tcx"),
            received: Default::default(),
            sent: Default::default(),
            by_protocol: vec![],
            unanswered: vec![],
            too_big: vec![],
        }],
        drops: DropSummary {
            total: 12,
            by_reason: vec![ReasonCount {
                reason: n(first + 5),
                code: 2,
                count: 12,
                locations: vec![LocationCount {
                    location: n(first + 6),
                    address: "0xffffffff81000000".into(),
                    count: 12,
                }],
            }],
            top_flows: vec![FlowCount {
                flow: n(first + 7),
                reason: n(first + 5),
                count: 12,
            }],
            rules: None,
        },
        retransmits: Some(RetransmitSummary {
            total: 3,
            top_flows: vec![RetransmitFlow {
                flow: n(first + 8),
                segments: 3,
                states: [("ESTABLISHED", 3)].into_iter().collect(),
            }],
        }),
        neighbours: Some(NeighbourSummary {
            total_failures: 1,
            failures_elsewhere: 0,
            failures: vec![NeighbourFailure {
                address: n(first + 9),
                protocol: "arp",
                device: n(first + 10),
                ifindex: 2,
                failures: 1,
            }],
            unanswered: vec![NeighbourLookup {
                address: n(first + 11),
                protocol: "arp",
                requests: 3,
                replies: 0,
            }],
        }),
        latency: Some(LatencySummary {
            distributions: vec![
                distribution(LatencyKind::Dns, 200_000),
                distribution(LatencyKind::TcpConnect, 50_000_000),
            ],
            connect: HandshakeOutcomes {
                refused: 1,
                unanswered: 1,
                syn_retransmits: 1,
            },
            accept: HandshakeOutcomes::default(),
            dns: DnsSummary {
                responses: 2,
                rcodes: [(n(first + 12), 1), ("NOERROR".into(), 1)]
                    .into_iter()
                    .collect(),
                transports: [("udp", 2)].into_iter().collect(),
                unanswered: 1,
                unanswered_by_server: [(n(first + 13), 1)].into_iter().collect(),
                unanswered_by_name: [(n(first + 14), 1)].into_iter().collect(),
                failures: vec![DnsFailure {
                    name: n(first + 15),
                    rcode: n(first + 12),
                    count: 1,
                }],
                undecodable: 0,
            },
            icmp_unanswered: 1,
            icmp_unanswered_to_it: 1,
            transit_from: vec![TransitSource {
                from: n(first + 16),
                packets: 4,
            }],
        }),
        connections: Some(super::connections::ConnectionSummary {
            resets_sent: 1,
            resets_received: 2,
            reset_flows: vec![super::connections::ResetFlow {
                direction: "sent",
                flow: n(first + 17),
                state: "ESTABLISHED",
                reason: Some(n(first + 18)),
                resets: 1,
            }],
            socket_errors: [(n(first + 19), 2)].into_iter().collect(),
            error_flows: vec![super::connections::SocketErrorFlow {
                error: n(first + 19),
                errno: 111,
                flow: n(first + 20),
                count: 2,
                pid: Some(7),
                comm: Some(n(first + 21)),
            }],
            closed: [("fin", 1)].into_iter().collect(),
            rtt: Some(super::connections::rtt_summary(
                &distribution(LatencyKind::Dns, 20_000_000).histogram,
            )),
            min_rtt: Some(super::connections::rtt_summary(
                &distribution(LatencyKind::Dns, 19_000_000).histogram,
            )),
            top_by_retransmits: vec![super::connections::ConnectionLine {
                flow: n(first + 22),
                role: Some("client"),
                how: "fin",
                retransmits: 3,
                srtt_ms: 20.5,
                min_rtt_ms: 20.1,
                bytes_sent: 10,
                bytes_received: 20,
            }],
            top_by_rtt: vec![],
        }),
    };
    let mut s = Summary {
        kind: "summary",
        duration_s: 2.0,
        kernel: n(17),
        probes: vec![crate::probe::ProbeKind::Drops],
        all_namespaces: false,
        health: Default::default(),
        problems: vec![],
        thresholds: Default::default(),
        notes: vec![n(18), n(19)],
        pairing: Default::default(),
        waiting: Default::default(),
        workloads: vec![workload(0, 1), workload(20, 2)],
    };
    s.find_problems(Default::default());
    s
}

/// The table and the histogram text with every name `x`: the lines a report has.
static PLAIN: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
    let plain = summary(&vec!["x".to_string(); NAMES]);
    (
        super::table::render(&plain, true),
        super::histogram::render(&plain),
    )
});

proptest! {
    // Each case builds two summaries with histograms: 128 keep the unit tests quick.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn table_and_histograms(names in prop::collection::vec(hostile(), NAMES)) {
        let s = summary(&names);
        for (what, out, expected) in [
            ("table", super::table::render(&s, true), &PLAIN.0),
            ("histogram", super::histogram::render(&s), &PLAIN.1),
        ] {
            assert_terminal_safe(what, &out);
            prop_assert_eq!(out.lines().count(), expected.lines().count(), "{}:\n{}", what, out);
        }
        // The drop table's columns: PACKETS ends in the same column on its row as in its
        // header, whatever the width of the reason before it.
        let table = super::table::render(&s, true);
        let lines: Vec<&str> = table.lines().collect();
        let headers = lines.iter().enumerate().filter(|(_, l)| l.contains("  PACKETS  "));
        // The two workloads' reasons: names[5] and names[25 % NAMES].
        for ((i, header), reason) in headers.zip([&names[5], &names[25 % NAMES]]) {
            let row = lines[i + 1];
            let reason = text::escape(reason);
            prop_assert!(row.starts_with(&format!("    {reason}")), "{}", row);
            let rest = &row[4 + reason.len()..];
            let count = rest.len() - rest.trim_start().len() + 2;
            prop_assert!(rest.trim_start().starts_with("12"), "{}", row);
            let header_end = header.find("PACKETS").unwrap_or(0) + "PACKETS".len();
            prop_assert_eq!(
                text::width(&header[..header_end]),
                text::width(&row[..4 + reason.len() + count]),
                "{}\n{}", header, row
            );
        }
        // The .hgrm files: names safe for any file system, never two the same.
        let files = super::histogram::hgrm_files(&s);
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &files {
            prop_assert!(name.len() < 256 && !name.starts_with('.'), "{}", name);
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{}", name);
            prop_assert!(seen.insert(name.clone()), "{} twice", name);
        }
        // Each workload's TCP RTT distributions have files of their own, and a section.
        for kind in ["-tcp_srtt.hgrm", "-tcp_min_rtt.hgrm"] {
            prop_assert_eq!(files.iter().filter(|(n, _)| n.ends_with(kind)).count(), 2);
        }
        let rendered = super::histogram::render(&s);
        prop_assert!(rendered.contains("TCP smoothed RTT (srtt): 20 samples"), "{}", rendered);
        prop_assert!(rendered.contains("TCP minimum RTT: 20 samples"), "{}", rendered);
    }

    #[test]
    fn live_frames_fit_the_terminal(
        names in prop::collection::vec(hostile(), NAMES),
        width in 0usize..220,
    ) {
        let s = summary(&names);
        let out = super::live::frame(&s, 3.0, width);
        assert_terminal_safe("live frame", &out);
        // The title, the problems (at most three, under their own line), the column headers,
        // a row per workload.
        let problems = 1 + s.problems.len().min(3);
        prop_assert_eq!(out.lines().count(), 2 + problems + s.workloads.len());
        for line in out.lines() {
            prop_assert!(text::width(line) <= width.max(40), "{} > {}: {}", text::width(line), width, line);
        }
        // The names' column is 28 wide whatever the name (when the terminal shows it all).
        if width >= 160 {
            for line in out.lines().skip(2 + problems) {
                let drops = line.char_indices().map(|(i, _)| i).find(|&i| text::width(&line[..i]) == 29);
                prop_assert!(drops.is_some_and(|i| line[i..].trim_start().starts_with("12")), "{}", line);
            }
        }
    }

}

proptest! {
    // A flame graph takes a few milliseconds to render.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn folded_stacks_and_flame_graphs(
        names in prop::collection::vec(hostile(), 4),
    ) {
        use crate::probe::{KernelInfo, drops::DropReasons};
        use nettools_common::drops::DropStackKey;
        let kallsyms = crate::collect::kallsyms::Kallsyms::parse(
            "ffffffff81001000 T sk_skb_reason_drop\nffffffff81002000 T nf_hook_slow\n",
        );
        let stacks: crate::probe::stacks::Stacks =
            [(7, vec![0xffffffff81001010, 0xffffffff81002010])].into_iter().collect();
        let reason = format!("SKB_DROP_REASON_{}", names[1]);
        let kernel = KernelInfo {
            drop_reasons: DropReasons::from_pairs(&[(reason.as_str(), 12)]),
            ..Default::default()
        };
        let name_of = |netns: u32| crate::discover::Workload {
            name: names[(netns as usize) % 4].clone(),
            netns,
            ..Default::default()
        };
        let key = |netns: u32, stack_id: i32| DropStackKey { netns, reason: 12, stack_id, _pad: 0 };
        let drops = [(key(0, 7), 30), (key(2, 7), 5), (key(3, -14), 2)];
        let lines = super::flamegraph::folded(&drops, &[], &stacks, &name_of, &kernel, &kallsyms);
        let mut total = 0;
        for line in &lines {
            assert_terminal_safe("folded", line);
            prop_assert!(!line.contains('\n'));
            let (frames, count) = line.rsplit_once(' ').unwrap_or_default();
            prop_assert!(!frames.contains(char::is_whitespace), "{}", line);
            let n = frames.split(';').count();
            prop_assert!(n == 4 || n == 3, "{} frames: {}", n, line);
            prop_assert!(frames.split(';').all(|f| !f.is_empty()), "{}", line);
            total += count.parse::<u64>().unwrap_or(0);
        }
        prop_assert_eq!(total, 37);
        let svg = super::flamegraph::svg(&lines, "drops").unwrap_or_default();
        let svg = String::from_utf8_lossy(&svg);
        assert_terminal_safe("flame graph", &svg.replace(['\t', '\r'], " "));
        // No name opens or closes markup: one document, one script, every title closed
        // once, and inside titles every `&` starts an entity.
        let base = super::flamegraph::svg(&["a;b 1".to_string()], "drops").unwrap_or_default();
        let base = String::from_utf8_lossy(&base);
        for tag in ["<svg", "<script", "<style", "<!"] {
            prop_assert_eq!(svg.matches(tag).count(), base.matches(tag).count(), "{}", tag);
        }
        prop_assert_eq!(svg.matches("<title>").count(), svg.matches("</title>").count());
        for title in svg.split("<title>").skip(1) {
            let title = title.split("</title>").next().unwrap_or_default();
            prop_assert!(!title.contains(['<', '>']), "{}", title);
            for (i, _) in title.match_indices('&') {
                prop_assert!(
                    ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;", "&#"].iter().any(|e| title[i..].starts_with(e)),
                    "raw & in {}", title
                );
            }
        }
    }

    #[test]
    fn json_stays_valid_and_raw(names in prop::collection::vec(hostile(), NAMES)) {
        let s = summary(&names);
        let line = super::json::summary(&s);
        prop_assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(v["workloads"][0]["name"].as_str(), Some(names[0].as_str()));
        prop_assert_eq!(v["kernel"].as_str(), Some(names[17].as_str()));
    }
}

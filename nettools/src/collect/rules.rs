//! Which firewall rule dropped a packet: every rule's packet counter in a namespace, read before
//! and after (by `check` around its probes, by `trace --rules` around the trace). The rules whose
//! counter grew are the candidates.
//!
//! Two sources, run inside the namespace:
//! - `iptables-save -c` / `ip6tables-save -c` (the nf_tables backend, where iptables-nft's rules
//!   live: kube-proxy's `KUBE-…`, Calico's `cali-…`) and their `-legacy` twins when installed;
//! - `nft -j list ruleset` for native nftables tables (kube-proxy's nftables mode, firewalld,
//!   hand-written rulesets): the rules, their handles and counters from nft's JSON, the text
//!   people read from `nft -a list ruleset`, matched by handle. Tables iptables-save already
//!   showed are skipped. A native rule counts packets only with a `counter` statement: drop
//!   rules without one are reported as uncounted, never guessed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;
use serde_json::Value;

/// One rule and its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `nf_tables` or `legacy` (iptables' backend, from the save file's header), or `nftables`
    /// (a native nftables rule).
    pub backend: String,
    /// `ipv4` or `ipv6` (iptables); for nftables its family: `ip` → `ipv4`, `ip6` → `ipv6`,
    /// `inet`, `bridge`, `netdev`, `arp`.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// 1-based position in its chain (as `iptables -L --line-numbers` counts).
    pub position: usize,
    /// The nftables handle (`nft -a`), for native rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule as iptables-save or `nft -a list ruleset` writes it, without its counters.
    pub text: String,
    /// Whether the rule counts packets (iptables rules always do; nftables rules with a
    /// `counter` statement).
    pub counted: bool,
    /// Whether the rule ends the packet: `-j DROP`, `-j REJECT`, nftables `drop`, `reject`.
    pub drops: bool,
    /// Whether it answers the packet with an ICMP error or a reset: `-j REJECT`, `reject`.
    pub rejects: bool,
    /// Which cluster component made its chain or table, from the names they give them
    /// ([`owner`]): `kube-proxy`, `kube-router network policy`, `Calico network policy`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<&'static str>,
    pub packets: u64,
    pub bytes: u64,
}

impl Rule {
    fn key(&self) -> (&str, &str, &str, &str, usize, Option<u64>, &str) {
        (
            &self.backend,
            self.family,
            &self.table,
            &self.chain,
            self.position,
            self.handle,
            &self.text,
        )
    }

    /// `ipv4 table filter, chain INPUT` / `nftables inet table fw, chain input, handle 2`, with
    /// the chain's owner where known: `…, chain KUBE-NWPLCY-X (kube-router network policy)`
    /// (raw: escape it when printing).
    pub fn place(&self) -> String {
        let place = self.place_only();
        match self.owner {
            Some(owner) => format!("{place} ({owner})"),
            None => place,
        }
    }

    fn place_only(&self) -> String {
        match self.handle {
            Some(h) => format!(
                "{} {} table {}, chain {}, handle {h}",
                self.backend, self.family, self.table, self.chain
            ),
            None => format!("{} table {}, chain {}", self.family, self.table, self.chain),
        }
    }
}

/// A rule whose packet counter grew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grown {
    #[serde(flatten)]
    pub rule: Rule,
    /// Packets it counted in between.
    pub delta: u64,
}

/// Chain (or nftables table) name prefixes of the components that write a node's firewall, most
/// specific first.
const OWNERS: [(&str, &str); 11] = [
    ("KUBE-NWPLCY-", "kube-router network policy"),
    ("KUBE-POD-FW-", "kube-router network policy"),
    ("KUBE-FIREWALL", "kubelet"),
    ("KUBE-", "kube-proxy"),
    ("cali-pi-", "Calico network policy"),
    ("cali-po-", "Calico network policy"),
    ("cali-", "Calico"),
    ("CILIUM_", "Cilium"),
    ("ANTREA-", "Antrea"),
    ("WEAVE-NPC", "Weave Net network policy"),
    ("FLANNEL-", "Flannel"),
];

/// Which component made a chain, by the name it gave it (or, for kube-proxy's nftables mode,
/// its table `kube-proxy`).
pub fn owner(table: &str, chain: &str) -> Option<&'static str> {
    if table == "kube-proxy" {
        return Some("kube-proxy");
    }
    OWNERS
        .iter()
        .find(|(prefix, _)| chain.starts_with(prefix))
        .map(|(_, owner)| *owner)
}

/// The save commands, each for one family.
const SAVES: [(&str, &str); 4] = [
    ("iptables-save", "ipv4"),
    ("ip6tables-save", "ipv6"),
    ("iptables-legacy-save", "ipv4"),
    ("ip6tables-legacy-save", "ipv6"),
];

/// Runs `program args` (in the calling thread's namespace); its stdout when it succeeds.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every rule of the namespace at `path` (nothing when no command works there).
pub fn snapshot(path: &Path) -> Vec<Rule> {
    crate::discover::enter::in_netns(path, || {
        let mut rules: Vec<Rule> = Vec::new();
        for (program, family) in SAVES {
            // A process started from this thread is in its namespace.
            let Some(text) = output(program, &["-c"]) else {
                continue;
            };
            for r in parse(&text, family) {
                // `iptables-save` may itself be the legacy one: each rule once.
                if !rules.iter().any(|o| o.key() == r.key()) {
                    rules.push(r);
                }
            }
        }
        if let Some(json) = output("nft", &["-j", "list", "ruleset"]) {
            let text = output("nft", &["-a", "list", "ruleset"]).unwrap_or_default();
            // iptables-nft's tables are nftables tables too: shown once, as iptables rules.
            let iptables: BTreeSet<(&str, &str)> = rules
                .iter()
                .filter(|r| r.backend == "nf_tables")
                .map(|r| (r.family, r.table.as_str()))
                .collect();
            let native: Vec<Rule> = parse_nft(&json, &text)
                .into_iter()
                .filter(|r| !iptables.contains(&(r.family, r.table.as_str())))
                .collect();
            rules.extend(native);
        }
        rules
    })
    .unwrap_or_default()
}

/// Parses `iptables-save -c` output.
pub fn parse(text: &str, family: &'static str) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut backend = "unknown".to_string();
    let mut table = String::new();
    let mut positions: std::collections::HashMap<String, usize> = Default::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix("# Generated by") {
            if let (Some(open), Some(close)) = (comment.find('('), comment.find(')'))
                && open < close
            {
                backend = comment[open + 1..close].to_string();
            }
        } else if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            positions.clear();
        } else if let Some(rest) = line.strip_prefix('[') {
            let Some((counters, rule)) = rest.split_once("] ") else {
                continue;
            };
            let Some((packets, bytes)) = counters.split_once(':') else {
                continue;
            };
            let (Ok(packets), Ok(bytes)) = (packets.parse(), bytes.parse()) else {
                continue;
            };
            let Some(chain) = rule
                .strip_prefix("-A ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let position = positions.entry(chain.to_string()).or_default();
            *position += 1;
            let target = rule.split(" -j ").nth(1).unwrap_or("");
            let rejects = target.starts_with("REJECT");
            out.push(Rule {
                backend: backend.clone(),
                family,
                table: table.clone(),
                chain: chain.to_string(),
                position: *position,
                handle: None,
                text: rule.to_string(),
                counted: true,
                drops: rejects || target.starts_with("DROP"),
                rejects,
                owner: owner(&table, chain),
                packets,
                bytes,
            });
        }
    }
    out
}

/// The family names nettools reports (iptables' where they mean the same).
fn nft_family(family: &str) -> &'static str {
    match family {
        "ip" => "ipv4",
        "ip6" => "ipv6",
        "inet" => "inet",
        "bridge" => "bridge",
        "netdev" => "netdev",
        "arp" => "arp",
        _ => "unknown",
    }
}

/// Parses `nft -j list ruleset` (the truth: rules, handles, counters, verdicts), naming each
/// rule with its line of `nft -a list ruleset` (`text`), found by family, table, chain and
/// handle, its counter values taken out. A rule whose line is not found is named by its handle.
pub fn parse_nft(json: &str, text: &str) -> Vec<Rule> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return Vec::new();
    };
    let lines = nft_lines(text);
    let mut positions: std::collections::HashMap<(String, String, String), usize> =
        Default::default();
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let r = &item["rule"];
        let (Some(family), Some(table), Some(chain), Some(handle)) = (
            r["family"].as_str(),
            r["table"].as_str(),
            r["chain"].as_str(),
            r["handle"].as_u64(),
        ) else {
            continue;
        };
        let exprs = r["expr"].as_array().map(Vec::as_slice).unwrap_or_default();
        let has = |key: &str| exprs.iter().any(|e| e.get(key).is_some());
        let counter = exprs.iter().find_map(|e| e.get("counter"));
        let position = positions
            .entry((family.to_string(), table.to_string(), chain.to_string()))
            .or_default();
        *position += 1;
        let rejects = has("reject");
        out.push(Rule {
            backend: "nftables".to_string(),
            family: nft_family(family),
            table: table.to_string(),
            chain: chain.to_string(),
            position: *position,
            handle: Some(handle),
            text: lines
                .iter()
                .find(|(f, t, c, h, _)| f == family && t == table && c == chain && *h == handle)
                .map_or_else(|| format!("handle {handle}"), |l| l.4.clone()),
            counted: counter.is_some(),
            drops: rejects || has("drop"),
            rejects,
            owner: owner(table, chain),
            packets: counter.and_then(|c| c["packets"].as_u64()).unwrap_or(0),
            bytes: counter.and_then(|c| c["bytes"].as_u64()).unwrap_or(0),
        });
    }
    out
}

/// `(family, table, chain, handle, text)` of every rule line of `nft -a list ruleset`.
fn nft_lines(text: &str) -> Vec<(String, String, String, u64, String)> {
    let mut out = Vec::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", f, t, "{", ..] => {
                family = (*f).to_string();
                table = (*t).to_string();
            }
            ["chain", c, "{", ..] => chain = (*c).to_string(),
            _ => {
                let Some((rule, handle)) = line.rsplit_once(" # handle ") else {
                    continue;
                };
                let Ok(handle) = handle.trim().parse() else {
                    continue;
                };
                out.push((
                    family.clone(),
                    table.clone(),
                    chain.clone(),
                    handle,
                    without_counter_values(rule),
                ));
            }
        }
    }
    out
}

/// `tcp dport 5432 counter packets 6 bytes 360 drop` → `tcp dport 5432 counter drop`.
fn without_counter_values(rule: &str) -> String {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while let Some(w) = words.get(i) {
        out.push(w);
        i += 1;
        if *w == "counter" && words.get(i) == Some(&"packets") && words.get(i + 2) == Some(&"bytes")
        {
            i += 4;
        }
    }
    out.join(" ")
}

/// The rules whose packet counter grew from `before` to `after`, dropping rules first.
pub fn grown(before: &[Rule], after: &[Rule]) -> Vec<Grown> {
    let mut out: Vec<Grown> = after
        .iter()
        .filter(|a| a.counted)
        .filter_map(|a| {
            let was = before
                .iter()
                .find(|b| b.key() == a.key())
                .map_or(0, |b| b.packets);
            let delta = a.packets.checked_sub(was)?;
            (delta > 0).then(|| Grown {
                rule: a.clone(),
                delta,
            })
        })
        .collect();
    out.sort_by_key(|g| (!g.rule.drops, std::cmp::Reverse(g.delta)));
    out
}

/// The rules of the traced namespaces, read at the start of a trace (`trace --rules`), to name
/// at the end the rules that dropped packets in between.
#[derive(Debug, Default)]
pub struct Watched {
    before: BTreeMap<u32, (PathBuf, Vec<Rule>)>,
}

/// Namespaces whose rules are read at once (each read runs a few short commands).
const READ_AT_ONCE: usize = 8;

/// The rules of each namespace, read [`READ_AT_ONCE`] at a time, so that the reads of many
/// namespaces take little longer than one.
pub fn snapshots(paths: &[&Path]) -> Vec<Vec<Rule>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(READ_AT_ONCE) {
        std::thread::scope(|scope| {
            let reads: Vec<_> = chunk
                .iter()
                .map(|path| scope.spawn(move || snapshot(path)))
                .collect();
            // A read that panicked has no rules.
            out.extend(reads.into_iter().map(|r| r.join().unwrap_or_default()));
        });
    }
    out
}

impl Watched {
    /// Reads the rules of the namespaces (inode, path) not read yet.
    pub fn read_new<'a>(&mut self, namespaces: impl IntoIterator<Item = (u32, &'a Path)>) {
        let mut new: Vec<(u32, &Path)> = Vec::new();
        for (netns, path) in namespaces {
            if netns != 0 && !self.before.contains_key(&netns) && !new.iter().any(|n| n.0 == netns)
            {
                new.push((netns, path));
            }
        }
        let paths: Vec<&Path> = new.iter().map(|n| n.1).collect();
        for ((netns, path), rules) in new.iter().zip(snapshots(&paths)) {
            self.before.insert(*netns, (path.to_path_buf(), rules));
        }
    }

    /// Per namespace, the rules that drop and whose counters grew since they were read.
    pub fn grown_drops(&self) -> BTreeMap<u32, Vec<Grown>> {
        let paths: Vec<&Path> = self.before.values().map(|(p, _)| p.as_path()).collect();
        self.before
            .iter()
            .zip(snapshots(&paths))
            .map(|((&netns, (_, before)), after)| {
                let mut g = grown(before, &after);
                g.retain(|g| g.rule.drops);
                (netns, g)
            })
            .collect()
    }
}

/// Rules that drop but count nothing (native nftables rules without a `counter` statement):
/// what a drop could also have been, when no counted rule grew.
pub fn uncounted_drops(rules: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .filter(|r| r.drops && !r.counted)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Wed Dec  2 04:00:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[2:120] -A INPUT -s 10.0.0.9/32 -j ACCEPT
[3:180] -A INPUT -p tcp -m tcp --dport 8080 -j DROP
[0:0] -A OUTPUT -j ACCEPT
COMMIT
# Completed on Wed Dec  2 04:00:00 2026
*nat
[7:420] -A PREROUTING -j DNAT --to-destination 10.0.0.1
COMMIT
";

    #[test]
    fn parses_rules_with_their_counters_and_positions() {
        let rules = parse(SAVED, "ipv4");
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[1].backend, "nf_tables");
        assert_eq!(
            (
                rules[1].table.as_str(),
                rules[1].chain.as_str(),
                rules[1].position
            ),
            ("filter", "INPUT", 2)
        );
        assert_eq!(rules[1].text, "-A INPUT -p tcp -m tcp --dport 8080 -j DROP");
        assert_eq!((rules[1].packets, rules[1].bytes), (3, 180));
        assert!(rules[1].drops && !rules[0].drops && !rules[1].rejects);
        assert!(rules.iter().all(|r| r.counted && r.handle.is_none()));
        assert_eq!((rules[3].table.as_str(), rules[3].position), ("nat", 1));
        // Garbage is skipped, never a panic.
        assert!(parse("[x:y] -A INPUT\n[1:2]\n[1:2] junk\n*\n[", "ipv4").is_empty());
    }

    #[test]
    fn the_rules_that_grew_dropping_ones_first() {
        let before = parse(SAVED, "ipv4");
        let after = parse(
            &SAVED
                .replace("[3:180]", "[6:360]")
                .replace("[2:120]", "[9:540]"),
            "ipv4",
        );
        let g = grown(&before, &after);
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].rule.position, g[0].delta), (2, 3));
        assert_eq!((g[1].rule.position, g[1].delta), (1, 7));
        assert!(grown(&after, &after).is_empty());
    }

    const NFT_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "fw", "handle": 1}}, {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 5432}}, {"counter": {"packets": 6, "bytes": 360}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"reject": {"type": "icmpx", "expr": "port-unreachable"}}]}}, {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "comment": "hello world", "expr": [{"counter": {"packets": 5, "bytes": 300}}, {"accept": null}]}}, {"table": {"family": "ip", "name": "filter", "handle": 2}}, {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;
    const NFT_TEXT: &str = "\
table inet fw { # handle 1
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\ttcp dport 5432 counter packets 6 bytes 360 drop # handle 2
\t\tudp dport 53 reject # handle 3
\t\tip saddr 10.0.0.0/8 counter packets 5 bytes 300 accept comment \"hello world\" # handle 4
\t}
}
table ip filter { # handle 2
\tchain INPUT { # handle 1
\t\ttcp dport 80 counter packets 0 bytes 0 drop # handle 2
\t}
}
";

    #[test]
    fn nftables_rules_with_handles_counters_and_their_text() {
        let rules = parse_nft(NFT_JSON, NFT_TEXT);
        assert_eq!(rules.len(), 4);
        let r = &rules[0];
        assert_eq!(
            (
                r.family,
                r.table.as_str(),
                r.chain.as_str(),
                r.handle,
                r.position
            ),
            ("inet", "fw", "input", Some(2), 1)
        );
        assert_eq!(r.text, "tcp dport 5432 counter drop");
        assert!(r.counted && r.drops && !r.rejects);
        assert_eq!((r.packets, r.bytes), (6, 360));
        assert_eq!(r.place(), "nftables inet table fw, chain input, handle 2");
        // A reject without a counter counts nothing: it is an uncounted drop.
        assert!(rules[1].rejects && rules[1].drops && !rules[1].counted);
        assert_eq!(uncounted_drops(&rules), vec![rules[1].clone()]);
        assert_eq!(
            rules[2].text,
            "ip saddr 10.0.0.0/8 counter accept comment \"hello world\""
        );
        assert_eq!(
            (rules[3].family, rules[3].text.as_str()),
            ("ipv4", "tcp dport 80 counter drop")
        );
        // Without its text, a rule is named by its handle; garbage is nothing, never a panic.
        assert_eq!(parse_nft(NFT_JSON, "")[0].text, "handle 2");
        assert!(parse_nft("{", NFT_TEXT).is_empty());
        assert!(parse_nft(r#"{"nftables": [{"rule": {"family": 1}}, 7, null]}"#, "").is_empty());
        // Counters that grew: only counted rules, dropping ones first.
        let after = parse_nft(
            &NFT_JSON.replace("\"packets\": 6", "\"packets\": 9"),
            NFT_TEXT,
        );
        let g = grown(&rules, &after);
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].rule.handle, g[0].delta), (Some(2), 3));
    }

    #[test]
    fn chains_of_cluster_components_are_named_with_their_owner() {
        let saved = "*filter\n[4:240] -A KUBE-NWPLCY-LAB -p tcp -m comment --comment \"default/deny-db\" -j DROP\n[1:60] -A INPUT -j ACCEPT\nCOMMIT\n";
        let rules = parse(saved, "ipv4");
        assert_eq!(rules[0].owner, Some("kube-router network policy"));
        assert_eq!(
            rules[0].place(),
            "ipv4 table filter, chain KUBE-NWPLCY-LAB (kube-router network policy)"
        );
        assert_eq!(
            (rules[1].owner, rules[1].place().as_str()),
            (None, "ipv4 table filter, chain INPUT")
        );
        assert_eq!(owner("filter", "KUBE-SVC-ABCDEF"), Some("kube-proxy"));
        assert_eq!(owner("filter", "KUBE-FIREWALL"), Some("kubelet"));
        assert_eq!(
            owner("filter", "cali-pi-_abc"),
            Some("Calico network policy")
        );
        assert_eq!(owner("filter", "cali-FORWARD"), Some("Calico"));
        assert_eq!(owner("kube-proxy", "filter-forward"), Some("kube-proxy"));
        assert_eq!(owner("filter", "CILIUM_INPUT"), Some("Cilium"));
        assert_eq!(owner("filter", "kube-lowercase"), None);
    }
}

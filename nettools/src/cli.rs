//! The command line: what a person types, with help that teaches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{probe::ProbeKind, report::Output, units};

/// Per-container network tracing with eBPF: which packets die, where in the kernel and why.
///
/// nettools attaches observe-only eBPF probes to this kernel and attributes everything it sees
/// to network namespaces, the way containers and pods are isolated. Run it as root on the node
/// (or as a privileged container with the host's PID and network namespaces).
#[derive(Debug, Parser)]
#[command(name = "nettools", version, propagate_version = true)]
pub struct Cli {
    /// Show debug logs, the kernel programs' own messages and full error causes.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per run: the size of the trace arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace network namespaces: traffic, drops, retransmits and ARP/NDP failures per namespace.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// List the pods and containers on this node: network namespace, host-side veth, addresses.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Check what this kernel and these privileges allow, and what to do about what is missing.
    Doctor,
    /// The node agent: trace every namespace and serve Prometheus metrics per pod/container.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Build a throwaway lab staging the five classic problems, trace it, tear it down.
    #[command(after_help = LAB_EXAMPLES)]
    Lab(LabArgs),
    /// Capture a workload's packets on its veth: tcpdump-style lines, or pcapng for Wireshark.
    #[command(after_help = CAPTURE_EXAMPLES)]
    Capture(CaptureArgs),
    /// Why can A not reach B? Send a few probes from a workload and say what the kernel did to
    /// them: one verdict with its evidence.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
}

const TRACE_EXAMPLES: &str = "\
Examples:
  nettools trace --netns web                 a namespace from `ip netns list`
  nettools trace --pid 4242 --duration 30s   the namespace of process 4242, for 30 seconds
  nettools trace --all -o json --out t.json  every namespace, JSON lines to t.json
  nettools trace --iface cni0 --probes traffic one interface's traffic and ARP
  nettools trace --netns web -o flamegraph --out drops.svg   where packets die, as a flame graph
  nettools trace --netns web -o histogram --hgrm hgrm/       latency distributions
  nettools trace --pod web -n shop           a Kubernetes pod, found through the node's CRI runtime
  nettools trace --container db --follow     a Docker/Podman container, followed across restarts

The report starts with what is wrong, worst first, one line each (\"problems (N):\" or \"no
problems found\"): firewall and routing drops, neighbours that never answer, failing or slow
DNS, other drops, lossy TCP, slow answers, each naming the workload and its evidence; the
options under \"What counts as a problem\" set the thresholds. Then, per namespace (a healthy
one in one line unless --verbose): traffic on its veth; packets dropped by reason (from this
kernel's own list of drop reasons) and kernel location, with the flows dropped most; TCP
segments retransmitted, per flow; and neighbours (ARP/NDP) that never answered (\"incomplete
ARP\").

\"events lost\" counts events that did not fit in the ring buffer: totals stay exact (they are
counted in the kernel), only per-event detail is missing then; raise --ring-buffer.";

const LIST_EXAMPLES: &str = "\
Pods come from the node's CRI runtime (containerd, CRI-O), containers from the Docker-compatible
API (Docker, `podman system service`), both found at their standard sockets; a scan of /proc and
the cgroups finds the rest. Containers sharing one network namespace (a pod's, `--net
container:X`) are one row. Host-network pods are marked: their traffic is the host's.

Examples:
  nettools list                            a table
  nettools list -o json                    JSON, with what each runtime answered
  nettools list --cri-socket /run/k3s/containerd/containerd.sock";

const SERVE_EXAMPLES: &str = "\
Every network namespace of the node is traced; pods and containers are named through the
container runtimes (asked again every --refresh, so pods are followed as they come and go).
Each scrape of /metrics reads the kernel's counts at that moment: drops by reason, TCP
retransmits, ARP/NDP failures, veth traffic, TCP handshake / DNS / ping latency histograms,
DNS rcodes, and the agent's own health (lost events, full maps, attached probes).

Series are labelled kind, namespace, pod, container, netns; at most --max-workloads workloads
get their own (the rest are summed into kind=\"overflow\").

What is protected: /metrics (the node's workload inventory) and / need a client certificate
signed by --client-ca (checked during the TLS handshake) and/or the bearer token of
--bearer-token-file, whichever are given. /healthz needs them too, except on a plain-HTTP
loopback --listen, where it is open for the kubelet's probe; --health-listen serves /healthz
alone, unauthenticated, on a loopback address of its own. Without TLS or a token, listen on
loopback (the default) and put an authenticating proxy in front (deploy/: kube-rbac-proxy).

The listener answers /healthz as soon as it is up, before the probes are loaded and before
the runtimes are asked; /metrics answers 503 until the probes are loaded. Tracing never waits
for HTTP or the runtimes: a thread of its own drains the kernel's events. At most 64
connections are served at once (more wait their turn); concurrent scrapes share one render.

Examples:
  nettools serve                              plain HTTP on 127.0.0.1:9977 (behind a proxy)
  nettools serve --listen 0.0.0.0:9977 --tls-cert tls.crt --tls-key tls.key \\
      --client-ca prometheus-ca.crt           HTTPS; only Prometheus' client certificate
  nettools serve --listen 0.0.0.0:9977 --tls-cert tls.crt --tls-key tls.key \\
      --bearer-token-file /etc/nettools/token HTTPS with a bearer token
  nettools serve --probes drops,retransmits,neighbours
  curl -s localhost:9977/metrics | promtool check metrics";

const LAB_EXAMPLES: &str = "\
The lab is eleven namespaces on a bridge, like pods on a node, each classic problem staged in
its own: a firewall drop (firewall), a lossy link (lossy: retransmits), an address nobody
answers (arp: incomplete ARP), a slow and a failing DNS server (dns), added latency (slow), and
a missing route (router); the rest are healthy peers. nettools traces them all with every probe
and its report starts with the problems, each at the namespace that has it (the thresholds
under \"What counts as a problem\" are trace's). Everything is removed
afterwards (--keep leaves the namespaces up and prints how to trace them by hand).

Examples:
  nettools lab                          the report, about 10 seconds
  nettools lab -o json --out lab.json   the same as JSON lines
  nettools lab -o flamegraph --out lab.svg   where the lab's packets die";

const CAPTURE_EXAMPLES: &str = "\
The packets are captured on the workload's host-side veth, both directions, with libpcap (the
library tcpdump uses: an AF_PACKET socket with the filter in the kernel), with the kernel's
timestamps. FILTER is pcap-filter syntax, exactly as tcpdump takes it (man 7 pcap-filter).
At the end, \"N packets captured, M packets dropped by kernel\" on stderr, as tcpdump says it:
M counts packets the capture buffer had no room for. The pcapng file ends with an interface
statistics block holding the same counts.

Packets the kernel dropped in the workload's network namespace (a firewall rule, no route, a
full socket buffer…) are captured too, from the kfree_skb tracepoint, and matched against the
same FILTER: in pcapng as packets of a second interface, \"nettools-drops\" (raw IP, link type
101: the bytes start at the IP header), each with a comment such as \"dropped: NETFILTER_DROP at
nft_do_chain+0x46f (netns 4026532320)\"; without -w as lines starting with \"DROPPED\". The
summary then adds \"K dropped packets captured, L drop events lost\" (events the ring buffer had
no room for), and the drops interface's statistics block holds them. --no-drops leaves them
out.

Exit status: 0, 1 for an error (an unwritable file, a workload without veth), 2 for a filter
libpcap cannot compile.

Examples:
  nettools capture --netns web                          one line per packet, like tcpdump -n
  nettools capture --pod web -n shop tcp port 8080 -w web.pcapng
  nettools capture --container db -c 100 -w - | tshark -r -
  nettools capture --netns web icmp -w ping.pcapng    pings, and those a firewall dropped
  nettools capture --pod web -w - | wireshark -k -i -   live in Wireshark
  nettools capture --iface cni0 arp --duration 30s";

const CHECK_EXAMPLES: &str = "\
Every namespace of the node (and the host) is traced while the probes are sent from inside the
source: TCP connects (with a port), UDP datagrams, or ICMP echo requests (without a port).
Then those probes' packets are followed through the drops, resets, ARP/NDP failures and
routing failures the kernel reported, and one verdict is printed with its evidence:
  ok                     answered: latency p50/max over the probes
  firewall               dropped by a firewall rule: the namespace, the drop reason and kernel
                         location, and the rule(s) whose packet counter grew (iptables-save -c)
  refused                a TCP reset (or ICMP port unreachable) came back: nothing listens there
  no_route               a namespace had no route (IP_INNOROUTES, or the source's ENETUNREACH)
  neighbour_unreachable  ARP/NDP for the next hop went unanswered: address, device, requests
  dropped                dropped for another reason (named)
  timeout                no answer and nothing dropped on this node: the interface they left by

Exit status: 0 for ok, 1 for any other verdict or an error, 2 for a usage error (a bad option,
an unknown source, a port out of range).

Examples:
  nettools check --netns web --to 10.233.0.7:8080        TCP connects to a port
  nettools check --pod web -n shop --to 10.233.1.4       pings
  nettools check --pid 4242 --to [fd00::7]:53 --proto udp -o json";

/// What to capture: one workload.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CaptureTarget {
    /// A network namespace by name (`ip netns list`) or path (e.g. /proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// The network namespace of a process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// An interface of this (the host's) namespace, captured directly.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// A pod by name (or UID), found through the node's container runtimes.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// A container by name or id (a unique prefix is enough).
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
}

/// Where `nettools check` sends its probes from: one workload, named as `trace` names them.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CheckSource {
    /// A network namespace by name (`ip netns list`) or path (e.g. /proc/PID/ns/net).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// The network namespace of a process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// A pod by name (or UID), found through the node's container runtimes.
    #[arg(long, value_name = "NAME")]
    pub pod: Option<String>,
    /// A container by name or id (a unique prefix is enough).
    #[arg(long, value_name = "ID|NAME")]
    pub container: Option<String>,
}

/// The protocols `nettools check` probes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckProto {
    /// TCP connects (needs a port).
    Tcp,
    /// UDP datagrams, answered by any datagram back (needs a port).
    Udp,
    /// ICMP/ICMPv6 echo requests.
    Icmp,
    /// DNS queries for the --to name to the source's own resolver (the first nameserver of its
    /// resolv.conf), as its applications would ask.
    Dns,
}

/// Formats of `nettools check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// The verdict and its evidence for people.
    Table,
    /// One JSON object: verdict, evidence[], probes[], path[].
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: CheckSource,
    /// The Kubernetes namespace of --pod [default: any, when the name is unique].
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "pod")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Where to: an IPv4 or IPv6 address, with a port for TCP and UDP (10.0.0.7:8080,
    /// [fd00::7]:53); a host name (db.shop.svc:5432), resolved from inside the source as its
    /// applications would (its resolv.conf, its nameserver, its search domains); or a
    /// workload of this node, netns/NAME[:PORT], pod/[NAMESPACE/]NAME[:PORT] or
    /// container/NAME[:PORT] (its first IPv4 address, else its first global IPv6 one).
    #[arg(long, value_name = "ADDRESS[:PORT]", value_parser = parse_destination)]
    pub to: Destination,
    /// The probes' protocol [default: tcp when --to has a port, else icmp; dns looks the
    /// --to name up, nothing more].
    #[arg(long, value_enum)]
    pub proto: Option<CheckProto>,
    /// ICMP and UDP probes as IP packets of this many bytes with Don't Fragment set (the path
    /// MTU the kernel learnt is ignored, as tracepath does): finds where a path's MTU is too
    /// small for what is sent (the `mtu` verdict).
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(64..=65_000))]
    pub size: Option<u32>,
    /// How many probes to send.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub count: u32,
    /// How long each probe waits for its answer.
    #[arg(long, value_parser = units::parse_duration, default_value = "2s")]
    pub timeout: std::time::Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: CheckFormat,
}

/// `--to`: an address and maybe a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The address given, or (with `netns`) the unspecified address until the namespace's
    /// own address is looked up.
    pub ip: std::net::IpAddr,
    pub port: Option<u16>,
    /// `netns/NAME`: a network namespace of this node, whose address is the destination.
    pub netns: Option<String>,
    /// A host name, resolved from inside the source (its resolv.conf, its resolver).
    pub name: Option<String>,
    /// `pod/[NAMESPACE/]NAME` or `container/NAME`: a workload of this node, found through the
    /// container runtimes as a source is, whose address is the destination.
    pub workload: Option<DestinationWorkload>,
}

/// A pod or container of this node as a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestinationWorkload {
    Pod {
        namespace: Option<String>,
        name: String,
    },
    Container(String),
}

/// `10.0.0.7`, `10.0.0.7:80`, `fd00::7`, `[fd00::7]`, `[fd00::7]:53`, `netns/NAME[:PORT]`.
pub fn parse_destination(text: &str) -> Result<Destination, String> {
    let text = text.trim();
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            Ok(_) => Err(format!("port {p} is out of range (1 to 65535)")),
            Err(_) => Err(format!("{p:?} is not a port number")),
        }
    };
    for (prefix, pod) in [("pod/", true), ("container/", false)] {
        let Some(rest) = text.strip_prefix(prefix) else {
            continue;
        };
        let (spec, p) = match rest.rsplit_once(':') {
            Some((spec, p)) => (spec, Some(port(p)?)),
            None => (rest, None),
        };
        let workload = match (pod, spec.split_once('/')) {
            (true, Some((ns, name)))
                if !ns.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                DestinationWorkload::Pod {
                    namespace: Some(ns.to_string()),
                    name: name.to_string(),
                }
            }
            (true, None) if !spec.is_empty() => DestinationWorkload::Pod {
                namespace: None,
                name: spec.to_string(),
            },
            (false, None) if !spec.is_empty() => DestinationWorkload::Container(spec.to_string()),
            _ => {
                return Err(format!(
                    "{text:?}: give pod/NAME, pod/NAMESPACE/NAME or container/NAME, with :PORT \
                     for tcp and udp"
                ));
            }
        };
        return Ok(Destination {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: p,
            netns: None,
            name: None,
            workload: Some(workload),
        });
    }
    if let Some(rest) = text.strip_prefix("netns/") {
        let (name, p) = match rest.rsplit_once(':') {
            Some((name, p)) => (name, Some(port(p)?)),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err("netns/ needs a namespace name: netns/NAME[:PORT]".to_string());
        }
        return Ok(Destination {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: p,
            netns: Some(name.to_string()),
            name: None,
            workload: None,
        });
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(Destination {
            ip,
            port: None,
            netns: None,
            name: None,
            workload: None,
        });
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?} has no closing ']'"))?;
        let ip: std::net::Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(port(p)?),
                None => return Err(format!("{text:?} is not [ADDRESS]:PORT")),
            },
        };
        return Ok(Destination {
            ip: ip.into(),
            port,
            netns: None,
            name: None,
            workload: None,
        });
    }
    if let Some((addr, p)) = text.rsplit_once(':')
        && let Ok(ip) = addr.parse::<std::net::Ipv4Addr>()
    {
        return Ok(Destination {
            ip: ip.into(),
            port: Some(port(p)?),
            netns: None,
            name: None,
            workload: None,
        });
    }
    let (host, p) = match text.rsplit_once(':') {
        Some((host, p)) => (host, Some(port(p)?)),
        None => (text, None),
    };
    if is_host_name(host) {
        return Ok(Destination {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: p,
            netns: None,
            // A trailing dot stays: the name is then absolute, no search domain is tried.
            name: Some(host.to_ascii_lowercase()),
            workload: None,
        });
    }
    Err(format!(
        "{text:?} is not an address: give an IPv4 or IPv6 address, a host name or netns/NAME, \
         with :PORT for tcp and udp"
    ))
}

/// A name DNS can carry: dot-separated labels of letters, digits, `-` and `_`, each 1 to 63
/// bytes, 253 in all, not all digits (that would be a mistyped address).
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub target: CaptureTarget,
    /// The Kubernetes namespace of --pod [default: any, when the name is unique].
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "pod")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Write pcapng to FILE (`-`: to stdout, for `| tshark -r -` or `| wireshark -k -i -`)
    /// instead of printing one line per packet.
    #[arg(short = 'w', long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Keep at most N bytes of each packet.
    #[arg(short = 's', long, value_name = "N", default_value_t = 262_144,
          value_parser = clap::value_parser!(u32).range(14..=262_144))]
    pub snaplen: u32,
    /// Stop after COUNT packets.
    #[arg(short = 'c', long, value_name = "COUNT",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this long, e.g. 30s, 500ms, 2m [default: until Ctrl-C or COUNT].
    #[arg(short, long, value_parser = units::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Leave out the packets the kernel dropped in the workload's namespace (then no eBPF
    /// program is loaded: the capture is libpcap's alone).
    #[arg(long)]
    pub no_drops: bool,
    /// pcap-filter expression, as tcpdump takes it: `tcp port 8080 and host 10.0.0.7` (options
    /// may come after it, as with tcpdump; `--` before a filter word that starts with `-`).
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// What to trace.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct Targets {
    /// A network namespace by name (`ip netns list`) or path (e.g. /proc/PID/ns/net). Repeatable.
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Vec<String>,
    /// The network namespace of a process. Repeatable.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// One interface of this namespace, traced directly (traffic and ARP/NDP as the interface
    /// sees them; drops, retransmits and neighbour failures of this namespace). Repeatable.
    #[arg(long, value_name = "IFACE")]
    pub iface: Vec<String>,
    /// A pod by name (or UID), found through the node's container runtimes. Repeatable.
    #[arg(long, value_name = "NAME")]
    pub pod: Vec<String>,
    /// A container by name or id (a unique prefix is enough). Repeatable.
    #[arg(long, value_name = "ID|NAME")]
    pub container: Vec<String>,
    /// Every network namespace on this node, each labelled by pod, container, name or process.
    #[arg(long, conflicts_with_all = ["netns", "pid", "iface", "pod", "container"])]
    pub all: bool,
}

/// What counts as a problem in the report's `problems` section (README: "Problems first").
#[derive(Debug, Args, Clone, Copy)]
#[command(next_help_heading = "What counts as a problem")]
pub struct ThresholdArgs {
    /// A workload whose SYN-ACKs or ping replies take longer than this (p90) is slow (on one
    /// node a healthy answer takes well under a millisecond).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "20ms")]
    pub slow_answer: std::time::Duration,
    /// DNS answers slower than this (p90) are a DNS problem (a cluster's DNS cache answers in
    /// about a millisecond, a recursive lookup in tens).
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "100ms")]
    pub slow_dns: std::time::Duration,
    /// A workload whose retransmitted TCP segments are at least this share of the TCP
    /// segments it sent (in percent)…
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0, value_parser = parse_percent)]
    pub lossy: f64,
    /// …and at least this many segments, is lossy (a few retransmits are ordinary TCP).
    #[arg(long, value_name = "SEGMENTS", default_value_t = 10)]
    pub lossy_min: u64,
}

impl ThresholdArgs {
    pub fn thresholds(&self) -> crate::report::problems::Thresholds {
        crate::report::problems::Thresholds {
            slow_answer_ms: self.slow_answer.as_secs_f64() * 1e3,
            slow_dns_ms: self.slow_dns.as_secs_f64() * 1e3,
            lossy_percent: self.lossy,
            lossy_min_segments: self.lossy_min,
        }
    }
}

/// A percentage from 0 to 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage such as 1 or 0.5"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{text:?} is not a percentage from 0 to 100"));
    }
    Ok(v)
}

/// Where the container runtimes listen.
#[derive(Debug, Args, Clone, Default)]
pub struct RuntimeArgs {
    /// The CRI socket (containerd, CRI-O) [default: $CONTAINER_RUNTIME_ENDPOINT, then
    /// /run/containerd/containerd.sock, /run/crio/crio.sock, … whichever exist].
    #[arg(long, value_name = "PATH")]
    pub cri_socket: Option<PathBuf>,
    /// The Docker-compatible API socket (Docker, `podman system service`) [default:
    /// $DOCKER_HOST, then /var/run/docker.sock, /run/podman/podman.sock, whichever exist].
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<PathBuf>,
}

impl RuntimeArgs {
    pub fn sources(&self) -> crate::discover::inventory::Sources {
        crate::discover::inventory::Sources {
            cri_socket: self.cri_socket.clone(),
            docker_socket: self.docker_socket.clone(),
        }
    }
}

/// Formats of `nettools list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// One row per network namespace.
    Table,
    /// One JSON document, with what each runtime answered.
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: ListFormat,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub targets: Targets,
    /// The Kubernetes namespace of --pod [default: any, when the name is unique].
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "pod")]
    pub namespace: Option<String>,
    /// Keep following a --pod or --container that is deleted or restarted with a new sandbox
    /// (new network namespace) instead of ending the trace.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// How long to trace, e.g. 30s, 500ms, 2m [default: until Ctrl-C].
    #[arg(short, long, value_parser = units::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Which probes to run, comma-separated [default: all but transit, which costs the most per
    /// packet].
    #[arg(long, value_delimiter = ',')]
    pub probes: Vec<ProbeKind>,
    /// Report format (flamegraph: an SVG, best written with --out FILE.svg).
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write the table report to FILE (with -o json: both from one trace).
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
    /// Size of the kernel-to-userspace event ring buffer (power of two: 256K, 4M, …).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = units::parse_size)]
    pub ring_buffer: u32,
    /// How long a SYN, DNS query or echo request may wait for its answer before it counts as
    /// unanswered.
    #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
    pub timeout: std::time::Duration,
    /// The transit probe follows one packet in N through the host (a power of two; 1 = all).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_power_of_two)]
    pub transit_sample: u32,
    /// Also write the folded kernel stacks (for flame graph tools) to FILE.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Which stacks the flame graph and --folded show.
    #[arg(long, value_enum, default_value = "drops")]
    pub stacks: crate::report::flamegraph::Stacks,
    /// Show the live table while tracing even when the report goes to a file.
    #[arg(long, conflicts_with = "no_live")]
    pub live: bool,
    /// No live table while tracing (it is on when the table report goes to stdout).
    #[arg(long)]
    pub no_live: bool,
    /// Also write one HdrHistogram percentile file (.hgrm) per workload and latency kind to DIR.
    #[arg(long, value_name = "DIR")]
    pub hgrm: Option<PathBuf>,
    /// How to attach tc programs: tcx where the kernel has it (6.6+), else clsact.
    #[arg(long, value_enum, default_value = "auto")]
    pub tc_mode: crate::probe::tc::Mode,
    /// Name the firewall rules that dropped: read every traced namespace's rule counters
    /// (iptables-save -c, nft -j) at the start and the end, and list the DROP/REJECT rules whose
    /// counters grew next to the drops (off by default: it runs those tools in each namespace).
    #[arg(long)]
    pub rules: bool,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve /metrics. Keep it on loopback unless TLS or a bearer token protects it.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9977")]
    pub listen: std::net::SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept only clients with a certificate signed by one of these CAs (PEM); the others are
    /// refused during the TLS handshake. Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN`, TOKEN being this file's content (read at start;
    /// surrounding whitespace ignored). A missing or wrong token gets 401.
    #[arg(long, value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Also serve /healthz alone, plain and unauthenticated, on this loopback address (for the
    /// kubelet's probes when --listen needs a client certificate).
    #[arg(long, value_name = "ADDR:PORT")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// Which probes to run, comma-separated [default: all but transit, which costs the most per
    /// packet].
    #[arg(long, value_delimiter = ',')]
    pub probes: Vec<ProbeKind>,
    /// How often to ask the container runtimes (and the namespaces) what runs on the node.
    #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
    pub refresh: std::time::Duration,
    /// At most this many workloads get series of their own; the rest are summed into one
    /// series with kind="overflow".
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub max_workloads: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Size of the kernel-to-userspace event ring buffer (power of two: 256K, 4M, …).
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = units::parse_size)]
    pub ring_buffer: u32,
    /// How long a SYN, DNS query or echo request may wait for its answer before it counts as
    /// unanswered.
    #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
    pub timeout: std::time::Duration,
    /// The transit probe follows one packet in N through the host (a power of two; 1 = all).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = parse_power_of_two)]
    pub transit_sample: u32,
    /// How to attach tc programs. The agent's auto is clsact: attaching a tcx link waits for an
    /// RCU grace period while holding the kernel's RTNL lock (about 15 ms each here: 7.7 s
    /// for 250 pods, with the node's own network changes waiting meanwhile), where 250 pods'
    /// clsact filters attach in 0.25 s. Filters a killed agent leaves are removed by its next
    /// start. tcx (6.6+) on request.
    #[arg(long, value_enum, default_value = "auto")]
    pub tc_mode: crate::probe::tc::Mode,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// How long to trace the lab.
    #[arg(short, long, value_parser = units::parse_duration, default_value = "8s")]
    pub duration: std::time::Duration,
    /// Report format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Write the report to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write the table report to FILE (with -o json: both from one run).
    #[arg(long, value_name = "FILE")]
    pub table: Option<PathBuf>,
    /// Also write the folded kernel stacks to FILE.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Which stacks the flame graph and --folded show.
    #[arg(long, value_enum, default_value = "drops")]
    pub stacks: crate::report::flamegraph::Stacks,
    /// Leave the lab up after the trace and print how to trace it and remove it by hand.
    #[arg(long)]
    pub keep: bool,
    /// No checks after the report (with the table, the lab runs `nettools check` from each
    /// problem's namespace and prints the command and its verdict: about 25 s more).
    #[arg(long)]
    pub no_checks: bool,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

/// A usage error as the one sentence every nettools error is: clap's message, its tip, and
/// where help is (`nettools trace --help`, the subcommand found in `args`), on one line,
/// escaped.
pub fn one_sentence<S: AsRef<std::ffi::OsStr>>(e: &clap::Error, args: &[S]) -> String {
    use clap::CommandFactory as _;
    let rendered = e.render().to_string();
    let mut message = Vec::new();
    let mut tips = Vec::new();
    let cli = Cli::command();
    let mut command = match args.iter().find_map(|a| {
        cli.get_subcommands()
            .find(|s| std::ffi::OsStr::new(s.get_name()) == a.as_ref())
    }) {
        Some(sub) => format!("nettools {}", sub.get_name()),
        None => "nettools".to_string(),
    };
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(usage) = line.strip_prefix("Usage:") {
            // `Usage: nettools trace [OPTIONS] <…>`: the command's words.
            let words: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect();
            if !words.is_empty() {
                command = words.join(" ");
            }
        } else if let Some(tip) = line.strip_prefix("tip:") {
            tips.push(tip.trim().to_string());
        } else if !line.starts_with("For more information") {
            message.push(
                line.strip_prefix("error:")
                    .unwrap_or(line)
                    .trim()
                    .to_string(),
            );
        }
    }
    let mut sentence = message.join(" ");
    for tip in tips {
        sentence.push_str("; ");
        sentence.push_str(&tip);
    }
    sentence.push_str(&format!("; see `{command} --help`"));
    crate::report::text::escape(&sentence).into_owned()
}

/// 1, 2, 4, … 65536.
fn parse_power_of_two(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 1 << 16 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a power of two between 1 and 65536"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trace_needs_a_target() {
        assert!(Cli::try_parse_from(["nettools", "trace"]).is_err());
        assert!(Cli::try_parse_from(["nettools", "trace", "--all", "--netns", "x"]).is_err());
        let ok = Cli::try_parse_from([
            "nettools", "trace", "--netns", "a", "--netns", "b", "-d", "2s",
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn pods_and_containers() {
        let ok = Cli::try_parse_from([
            "nettools", "trace", "--pod", "web", "-n", "shop", "--follow",
        ]);
        assert!(ok.is_ok());
        assert!(Cli::try_parse_from(["nettools", "trace", "--container", "db"]).is_ok());
        // -n only means something with --pod; --all takes no pod.
        assert!(Cli::try_parse_from(["nettools", "trace", "--netns", "a", "-n", "x"]).is_err());
        assert!(Cli::try_parse_from(["nettools", "trace", "--all", "--pod", "web"]).is_err());
        assert!(Cli::try_parse_from(["nettools", "list", "-o", "json"]).is_ok());
    }

    #[test]
    fn usage_errors_are_one_sentence() {
        let sentence = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(_) => String::new(),
            Err(e) => one_sentence(&e, args),
        };
        assert_eq!(
            sentence(&["nettools", "trace", "--netns", "a", "-d", "1e20"]),
            "invalid value '1e20' for '--duration <DURATION>': \"1e20\" is longer than the \
             longest duration nettools takes (365 days); see `nettools trace --help`"
        );
        assert_eq!(
            sentence(&["nettools", "trace", "--netns", "a", "--foo"]),
            "unexpected argument '--foo' found; a similar argument exists: '--follow'; see \
             `nettools trace --help`"
        );
        assert!(
            sentence(&["nettools", "trace"])
                .starts_with("the following required arguments were not provided: <--netns")
        );
        assert_eq!(
            sentence(&[
                "nettools",
                "trace",
                "--netns",
                "a",
                "--ring-buffer",
                "99999999999999999G"
            ]),
            "invalid value '99999999999999999G' for '--ring-buffer <SIZE>': the ring buffer must \
             be a power of two between 4K and 1G, not 99999999999999999G; see `nettools trace \
             --help`"
        );
        // What was typed never comes back raw (clap drops control characters, the rest is
        // escaped) nor on two lines.
        let odd = sentence(&[
            "nettools",
            "trace",
            "--netns",
            "a",
            "-o",
            "x\x07\n\u{202e}\x1b[2J",
        ]);
        assert!(odd.starts_with("invalid value 'x"), "{odd}");
        assert!(!odd.contains(['\x1b', '\x07', '\n', '\u{202e}']), "{odd}");
        for args in [
            &["nettools", "serve", "--refresh", "1e20"][..],
            &["nettools", "serve", "--timeout", "99999999999h"],
            &["nettools", "lab", "--duration", "inf"],
            &["nettools", "trace", "--all", "--timeout", "1e20"],
            &["nettools", "trace", "--all", "--transit-sample", "1e20"],
            &[
                "nettools",
                "serve",
                "--ring-buffer",
                "18446744073709551615K",
            ],
        ] {
            let s = sentence(args);
            assert!(
                s.starts_with("invalid value") && !s.contains('\n'),
                "{args:?}: {s}"
            );
        }
    }

    #[test]
    fn capture_takes_one_target_and_a_filter() {
        let Ok(cli) = Cli::try_parse_from([
            "nettools", "capture", "--netns", "web", "-c", "5", "tcp", "port", "8080",
        ]) else {
            panic!("capture with a filter")
        };
        let Command::Capture(args) = cli.command else {
            panic!("not capture")
        };
        assert_eq!(args.filter.join(" "), "tcp port 8080");
        assert_eq!(args.count, Some(5));
        assert!(Cli::try_parse_from(["nettools", "capture"]).is_err());
        // Options after the filter, as tcpdump takes them.
        let Ok(cli) = Cli::try_parse_from([
            "nettools", "capture", "--netns", "web", "tcp", "port", "80", "-w", "-", "-c", "2",
        ]) else {
            panic!("options after the filter")
        };
        let Command::Capture(args) = cli.command else {
            panic!("not capture")
        };
        assert_eq!(args.filter.join(" "), "tcp port 80");
        assert_eq!(args.count, Some(2));
        assert_eq!(args.write.as_deref(), Some(std::path::Path::new("-")));
        assert!(
            Cli::try_parse_from(["nettools", "capture", "--netns", "a", "--pid", "1"]).is_err()
        );
        assert!(Cli::try_parse_from(["nettools", "capture", "--netns", "a", "-c", "0"]).is_err());
    }

    #[test]
    fn check_destinations_and_sources() {
        let d = |t: &str| parse_destination(t);
        assert_eq!(
            d("10.1.2.3:80").map(|d| (d.ip.to_string(), d.port)),
            Ok(("10.1.2.3".to_string(), Some(80)))
        );
        assert_eq!(d("10.1.2.3").map(|d| d.port), Ok(None));
        assert_eq!(
            d("[fd00::7]:53").map(|d| (d.ip.to_string(), d.port)),
            Ok(("fd00::7".to_string(), Some(53)))
        );
        assert_eq!(d("fd00::7").map(|d| d.port), Ok(None));
        assert_eq!(d("[fd00::7]").map(|d| d.port), Ok(None));
        for bad in [
            "10.1.2.3:0",
            "10.1.2.3:65536",
            "10.1.2.3:x",
            "[fd00::7]x",
            "10.1.2",
            "we b",
            "a..b",
            "web:0",
            "",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        // Workloads of this node, found through the runtimes later.
        assert_eq!(
            d("pod/web:8080").map(|d| (d.workload, d.port)),
            Ok((
                Some(DestinationWorkload::Pod {
                    namespace: None,
                    name: "web".into()
                }),
                Some(8080)
            ))
        );
        assert_eq!(
            d("pod/shop/web").map(|d| d.workload),
            Ok(Some(DestinationWorkload::Pod {
                namespace: Some("shop".into()),
                name: "web".into()
            }))
        );
        assert_eq!(
            d("container/db:5432").map(|d| d.workload),
            Ok(Some(DestinationWorkload::Container("db".into())))
        );
        for bad in [
            "pod/",
            "pod/a/b/c",
            "container/",
            "container/a/b",
            "pod/web:0",
        ] {
            assert!(d(bad).is_err(), "{bad}");
        }
        // Host names, resolved later from inside the source.
        assert_eq!(
            d("DB.shop.svc:5432").map(|d| (d.name, d.port)),
            Ok((Some("db.shop.svc".to_string()), Some(5432)))
        );
        assert_eq!(d("web").map(|d| d.name), Ok(Some("web".to_string())));
        assert_eq!(
            d("db.lab.").map(|d| d.name),
            Ok(Some("db.lab.".to_string()))
        );
        assert!(d("10.1.2.3:70000").is_err_and(|e| e.contains("out of range")));
        assert_eq!(
            d("netns/web:8080").map(|d| (d.netns, d.port)),
            Ok((Some("web".to_string()), Some(8080)))
        );
        assert_eq!(d("netns/web").map(|d| d.port), Ok(None));
        assert!(d("netns/").is_err() && d("netns/web:0").is_err());
        assert!(
            Cli::try_parse_from(["nettools", "check", "--netns", "a", "--to", "10.0.0.1:80"])
                .is_ok()
        );
        // One source, and a destination.
        assert!(Cli::try_parse_from(["nettools", "check", "--to", "10.0.0.1"]).is_err());
        assert!(
            Cli::try_parse_from([
                "nettools", "check", "--netns", "a", "--pid", "1", "--to", "10.0.0.1"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["nettools", "check", "--netns", "a"]).is_err());
    }

    #[test]
    fn serve_options() {
        assert!(Cli::try_parse_from(["nettools", "serve"]).is_ok());
        let ok = Cli::try_parse_from([
            "nettools",
            "serve",
            "--listen",
            "127.0.0.1:9100",
            "--refresh",
            "1s",
        ]);
        assert!(ok.is_ok());
        assert!(Cli::try_parse_from(["nettools", "serve", "--listen", "localhost"]).is_err());
        // Loopback unless told otherwise.
        let Ok(cli) = Cli::try_parse_from(["nettools", "serve"]) else {
            panic!("serve without arguments")
        };
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:9977");
        // A certificate needs its key and the client CA needs the certificate.
        for incomplete in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--client-ca", "ca.pem"],
            &["--client-ca", "ca.pem", "--tls-key", "k.pem"],
        ] {
            let mut argv = vec!["nettools", "serve"];
            argv.extend(incomplete);
            assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
        assert!(
            Cli::try_parse_from([
                "nettools",
                "serve",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--client-ca",
                "ca.pem",
                "--bearer-token-file",
                "t",
                "--health-listen",
                "127.0.0.1:9978",
            ])
            .is_ok()
        );
    }
}

//! `nettools capture`: a workload's packets, as tcpdump would show them, or as pcapng for
//! Wireshark.
//!
//! The capture is libpcap's own: it opens an AF_PACKET socket bound to the workload's host-side
//! veth, maps a TPACKET_V3 ring, attaches the filter it compiled with SO_ATTACH_FILTER (so
//! packets the filter rejects never leave the kernel) and reads the kernel's drop count with
//! PACKET_STATISTICS. That is exactly the mechanism tcpdump uses, so both see the same packets
//! with the same kernel timestamps; nettools adds finding the veth ([`target`]), the pcapng
//! file ([`pcapng`]) and the one-line summaries ([`summary`]), and the packets the kernel
//! dropped in the workload's namespace, from the drop probe ([`drops`]).

pub mod drops;
pub mod pcapng;
pub mod summary;
pub mod target;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    os::fd::{AsRawFd as _, RawFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use nettools_common::drops::DROP_PACKET_MAX;

use crate::{report::text::Safe, session::Stop};

/// Everything a capture needs.
#[derive(Clone, Debug)]
pub struct CaptureSpec {
    /// The interface in this (the host's) namespace, and who it belongs to (for messages).
    pub interface: String,
    pub owner: String,
    /// pcap-filter expression (empty: every packet).
    pub filter: String,
    /// Where pcapng goes: a file, `-` for stdout, `None` for one line per packet.
    pub write: Option<PathBuf>,
    pub snaplen: u32,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    /// The network namespace whose dropped packets are captured too (`None`: `--no-drops`).
    pub drops_netns: Option<u32>,
}

/// The filter does not compile: libpcap's own message. The command exits with 2 for it, as
/// tcpdump does.
#[derive(Debug)]
pub struct FilterError(pub String);

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

fn filter_error(filter: &str, e: &pcap::Error) -> anyhow::Error {
    anyhow!(FilterError(format!(
        "invalid filter {:?}: {}",
        filter,
        pcap_message(e)
    )))
}

/// libpcap's message, without the library's own wrapping.
fn pcap_message(e: &pcap::Error) -> String {
    match e {
        pcap::Error::PcapError(m) => m.trim().to_string(),
        other => other.to_string(),
    }
}

/// Checks the filter the way the capture will compile it (for Ethernet, what a veth is),
/// before anything is opened.
pub fn check_filter(filter: &str) -> Result<()> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET)
        .map_err(|e| anyhow!("libpcap cannot start: {}", pcap_message(&e)))?;
    dead.compile(filter, true)
        .map_err(|e| filter_error(filter, &e))?;
    Ok(())
}

/// `nettools capture ARGS`: finds the interface, then captures.
pub async fn run_command(args: &crate::cli::CaptureArgs) -> Result<()> {
    let filter = args.filter.join(" ");
    // A filter libpcap rejects is the first error, before any lookup.
    check_filter(&filter)?;
    let mut workload = target::workload(args).await?;
    let interface = target::interface(&mut workload)?;
    run(CaptureSpec {
        interface,
        owner: workload.name.clone(),
        filter,
        write: args.write.clone(),
        snaplen: args.snaplen,
        count: args.count,
        duration: args.duration,
        drops_netns: (!args.no_drops).then_some(workload.netns),
    })
    .await
}

/// Where packets go.
enum Sink {
    /// pcapng, to a file or stdout.
    Pcapng {
        writer: pcapng::Writer<Box<dyn Write + Send>>,
        interface: u32,
        /// The interface the dropped packets are written on, when they are captured.
        drops_interface: Option<u32>,
        to: String,
    },
    /// One line per packet on stdout.
    Lines(BufWriter<io::Stdout>),
}

/// What ended the capture loop early.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Count, duration or a signal: a normal end.
    Done,
    /// The reader of stdout went away (`| head`, a closed Wireshark): a normal end too.
    ReaderGone,
}

/// Runs a capture to its end and prints tcpdump's summary on stderr.
pub async fn run(spec: CaptureSpec) -> Result<()> {
    check_filter(&spec.filter)?;
    let mut stop = Stop::install()?;
    // The output first: an unwritable file fails before anything is opened on the interface.
    let out: Option<(Box<dyn Write + Send>, String)> = match &spec.write {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some((Box::new(io::stdout()), "stdout".into())),
        Some(p) => {
            let f = File::create(p)
                .map_err(|e| anyhow!("cannot write {}: {}", p.display(), io_reason(&e)))?;
            Some((Box::new(f), p.display().to_string()))
        }
    };
    let mut live = pcap::Capture::from_device(spec.interface.as_str())
        .map_err(|e| open_error(&spec, &e))?
        .snaplen(i32::try_from(spec.snaplen).unwrap_or(i32::MAX))
        .promisc(false)
        // As tcpdump: packet by packet only for lines a person reads. Writing pcapng, the
        // kernel hands over a ring block when it is full or 100 ms old; immediate mode woke
        // the process for every packet (measured: 1.3 µs per packet in nettools against
        // tcpdump's 0.04, `cargo xtask bench --only capture`).
        .immediate_mode(spec.write.is_none())
        .timeout(100)
        .precision(pcap::Precision::Nano)
        .open()
        .map_err(|e| open_error(&spec, &e))?;
    live.filter(&spec.filter, true)
        .map_err(|e| filter_error(&spec.filter, &e))?;
    // Non-blocking, waited for with poll(2) in steps of 100 ms: with a TPACKET_V3 ring libpcap
    // itself would block until a packet comes, however long that takes, and never see the
    // count, duration or Ctrl-C.
    let mut live = live.setnonblock().map_err(|e| open_error(&spec, &e))?;
    let linktype = u16::try_from(live.get_datalink().0).unwrap_or(0);
    let ts_decimals = if nanosecond_timestamps(&live) { 9 } else { 6 };
    let mut drops = match spec.drops_netns {
        None => None,
        Some(netns) => match drops::RawFilter::compile(&spec.filter) {
            Err(why) => {
                eprintln!("nettools: {}", drops::filter_note(&spec.filter, &why));
                None
            }
            Ok(raw) => Some(drops::Drops::open(netns, raw, spec.snaplen).context(
                "cannot capture the packets the kernel drops (--no-drops captures without them)",
            )?),
        },
    };
    let mut sink = match out {
        Some((w, to)) => {
            let mut writer = pcapng::Writer::new(Box::new(BufWriter::new(w)) as Box<_>)
                .with_context(|| format!("cannot write {to}"))?;
            let interface = writer
                .interface(&pcapng::Interface {
                    name: spec.interface.clone(),
                    linktype,
                    snaplen: spec.snaplen,
                    ts_decimals,
                })
                .with_context(|| format!("cannot write {to}"))?;
            let drops_interface = match drops {
                Some(_) => Some(
                    writer
                        .interface(&pcapng::Interface {
                            name: drops::INTERFACE.to_string(),
                            linktype: summary::LINKTYPE_RAW,
                            snaplen: spec.snaplen.min(DROP_PACKET_MAX as u32),
                            ts_decimals,
                        })
                        .with_context(|| format!("cannot write {to}"))?,
                ),
                None => None,
            };
            writer
                .flush()
                .with_context(|| format!("cannot write {to}"))?;
            Sink::Pcapng {
                writer,
                interface,
                drops_interface,
                to,
            }
        }
        None => Sink::Lines(BufWriter::new(io::stdout())),
    };
    let link_name = live
        .get_datalink()
        .get_name()
        .unwrap_or_else(|_| linktype.to_string());
    eprintln!(
        "nettools: capturing on {} ({}), link-type {}, snapshot length {} bytes{}",
        Safe(&spec.interface),
        Safe(&spec.owner),
        link_name,
        spec.snaplen,
        if spec.filter.is_empty() {
            String::new()
        } else {
            format!(", filter {:?}", spec.filter)
        }
    );
    if drops.is_some() {
        eprintln!(
            "nettools: and the packets the kernel drops in {} (kfree_skb), as raw IP{}",
            Safe(&spec.owner),
            match &spec.write {
                Some(_) => format!(" on interface {}", drops::INTERFACE),
                None => String::new(),
            }
        );
    }

    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    let batched = spec.write.is_some();
    let (count, duration) = (spec.count, spec.duration);
    let started_ns = now_ns();
    let reader = tokio::task::spawn_blocking(move || {
        let end = read_loop(
            &mut live,
            &mut drops,
            &mut sink,
            Format {
                linktype,
                ts_decimals,
                batched,
            },
            count,
            duration,
            &flag,
        );
        (live, drops, sink, end)
    });
    tokio::pin!(reader);
    let joined = tokio::select! {
        r = &mut reader => r,
        _ = stop.requested() => {
            stopping.store(true, Ordering::Relaxed);
            reader.await
        }
    };
    let (mut live, drops, mut sink, end) = joined.context("the capture thread failed")?;
    let (written, end) = end?;
    let captured = written.packets;
    let stats = live.stats().ok();
    let dropped = stats.map_or(0, |s| u64::from(s.dropped));
    let lost = drops.as_ref().map_or(0, drops::Drops::lost);
    if let Sink::Pcapng {
        writer,
        interface,
        drops_interface,
        to,
    } = &mut sink
        && end != End::ReaderGone
    {
        let scale = |ns: u64| if ts_decimals == 9 { ns } else { ns / 1000 };
        let end_ns = now_ns();
        let mut written_stats = writer.statistics(
            *interface,
            scale(end_ns),
            &pcapng::Statistics {
                start: scale(started_ns),
                end: scale(end_ns),
                received: stats.map_or(0, |s| u64::from(s.received)),
                if_dropped: stats.map_or(0, |s| u64::from(s.if_dropped)),
                os_dropped: dropped,
                delivered: captured,
            },
        );
        if let (Some(id), Some(d)) = (drops_interface, &drops) {
            // For the drops interface: the kernel's dropped packets seen in the namespace
            // (received), the events the ring buffer had no room for (dropped by the OS) and
            // those written after the filter (delivered).
            written_stats = written_stats.and_then(|()| {
                writer.statistics(
                    *id,
                    scale(end_ns),
                    &pcapng::Statistics {
                        start: scale(started_ns),
                        end: scale(end_ns),
                        received: d.seen + lost,
                        if_dropped: 0,
                        os_dropped: lost,
                        delivered: written.drops,
                    },
                )
            });
        }
        let written = written_stats.and_then(|()| writer.flush());
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            r => r.with_context(|| format!("cannot write {to}"))?,
        }
    }
    match &drops {
        Some(_) => eprintln!(
            "{captured} packets captured, {dropped} packets dropped by kernel, {} dropped packets \
             captured, {lost} drop events lost",
            written.drops
        ),
        None => eprintln!("{captured} packets captured, {dropped} packets dropped by kernel"),
    }
    Ok(())
}

/// An I/O error's reason without the `(os error N)` suffix.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn open_error(spec: &CaptureSpec, e: &pcap::Error) -> anyhow::Error {
    anyhow!(
        "cannot capture on {} ({}): {}",
        spec.interface,
        spec.owner,
        pcap_message(e)
    )
}

/// Whether libpcap gives nanosecond timestamps (asked for; Linux has them).
fn nanosecond_timestamps(live: &pcap::Capture<pcap::Active>) -> bool {
    unsafe extern "C" {
        fn pcap_get_tstamp_precision(p: *mut std::ffi::c_void) -> std::ffi::c_int;
    }
    // SAFETY: the handle is a live pcap_t owned by `live` for the duration of the call;
    // pcap_get_tstamp_precision only reads it.
    let precision = unsafe { pcap_get_tstamp_precision(live.as_ptr().cast()) };
    precision == pcap::Precision::Nano as std::ffi::c_int
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How the captured packets' bytes and times are written.
#[derive(Clone, Copy, Debug)]
struct Format {
    /// The capture's link type (the veth's).
    linktype: u16,
    /// 9: timestamps in nanoseconds, 6: in microseconds.
    ts_decimals: u8,
    /// Packets come in ring blocks (not immediate mode): on stopping, the block the kernel
    /// still fills is waited for. In immediate mode, what the rings already hold is read.
    batched: bool,
}

/// How long a stopping capture keeps reading in batched mode: the kernel hands over a partly
/// filled block after the 100 ms block timeout; the packets in it were seen before the stop.
/// In immediate mode it reads until a pass finds nothing (a reader that lags, as in an
/// emulated guest, otherwise left a packet the kernel had already handed over unread), at most
/// this long.
const DRAIN: Duration = Duration::from_millis(250);

/// How many packets a capture wrote.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    /// From the interface.
    packets: u64,
    /// Dropped by the kernel (from the drop probe, after the filter).
    drops: u64,
}

/// Reads packets (and dropped packets) until `count`, `duration` or `stopping`; returns how
/// many were written.
/// Packets taken from the ring in one call, and dropped packets written after each call at most.
const BATCH: u64 = 64;

fn read_loop(
    live: &mut pcap::Capture<pcap::Active>,
    drops: &mut Option<drops::Drops>,
    sink: &mut Sink,
    format: Format,
    count: Option<u64>,
    duration: Option<Duration>,
    stopping: &AtomicBool,
) -> Result<(Written, End)> {
    let started = Instant::now();
    let mut n = Written::default();
    let mut flushed = Instant::now();
    let mut drain_until: Option<Instant> = None;
    // Whether the last pass took nothing from either ring.
    let mut drained = false;
    loop {
        let total = n.packets + n.drops;
        if count.is_some_and(|c| total >= c) {
            break;
        }
        if stopping.load(Ordering::Relaxed) || duration.is_some_and(|d| started.elapsed() >= d) {
            // Draining already: the last pass was made after the stop.
            let draining = drain_until.is_some();
            if Instant::now() >= *drain_until.get_or_insert_with(|| Instant::now() + DRAIN)
                || (!format.batched && draining && drained)
            {
                break;
            }
        }
        // A batch of packets from the interface, handed over in place from the ring (as
        // tcpdump's pcap_loop does; `pcap_next_ex` would copy each one out of it first), then
        // the packets the kernel dropped meanwhile: a dropped packet crossed the veth before it
        // died, so it is written after the veth's copy.
        let room = count.map_or(BATCH, |c| c.saturating_sub(total).min(BATCH));
        let mut failed: Option<io::Error> = None;
        let got = live
            .dispatch(Some(usize::try_from(room).unwrap_or(1).max(1)), |packet| {
                if failed.is_none()
                    && let Err(e) = write_packet(sink, &packet, format)
                {
                    failed = Some(e);
                }
            })
            .map_err(|e| anyhow!("the capture failed: {}", pcap_message(&e)))?;
        n.packets += got as u64;
        let idle = got == 0;
        let drops_before = n.drops;
        let wait = drain_until.is_none();
        let written = failed.map_or(Ok(()), Err).and_then(|()| {
            let mut taken = 0;
            while taken < BATCH && count.is_none_or(|c| n.packets + n.drops < c) {
                let Some(packet) = drops.as_mut().and_then(drops::Drops::next_matching) else {
                    if idle && taken == 0 && wait {
                        let ring = drops.as_ref().map(drops::Drops::fd);
                        wait_readable(live, ring, Duration::from_millis(100));
                    }
                    break;
                };
                n.drops += 1;
                taken += 1;
                write_drop(sink, &packet, format.ts_decimals)?;
            }
            Ok(())
        });
        drained = idle && n.drops == drops_before;
        // Streams stay live for Wireshark reading stdout: flushed at least every 100 ms.
        let written = written.and_then(|()| {
            if flushed.elapsed() >= Duration::from_millis(100) || count == Some(n.packets + n.drops)
            {
                flushed = Instant::now();
                flush(sink)
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Ok((n, End::ReaderGone));
            }
            Err(e) => return Err(e).context(format!("cannot write {}", sink_name(sink))),
        }
    }
    match flush(sink) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok((n, End::ReaderGone)),
        r => {
            r.with_context(|| format!("cannot write {}", sink_name(sink)))?;
            Ok((n, End::Done))
        }
    }
}

/// Writes one packet from the interface.
fn write_packet(sink: &mut Sink, packet: &pcap::Packet<'_>, format: Format) -> io::Result<()> {
    let h = packet.header;
    let sub = u64::try_from(h.ts.tv_usec).unwrap_or(0);
    let ns = u64::try_from(h.ts.tv_sec).unwrap_or(0) * 1_000_000_000
        + if format.ts_decimals == 9 {
            sub
        } else {
            sub * 1000
        };
    match sink {
        Sink::Pcapng {
            writer, interface, ..
        } => {
            let ts = if format.ts_decimals == 9 {
                ns
            } else {
                ns / 1000
            };
            writer.packet(*interface, ts, packet.data, h.len, None)
        }
        Sink::Lines(out) => writeln!(
            out,
            "{} {}",
            summary::clock(ns),
            summary::describe(format.linktype, packet.data, h.len)
        ),
    }
}

/// Writes one packet the kernel dropped: on the drops interface with its comment, or as a line
/// that starts with `DROPPED` and the reason.
fn write_drop(sink: &mut Sink, packet: &drops::Dropped, ts_decimals: u8) -> io::Result<()> {
    match sink {
        Sink::Pcapng {
            writer,
            drops_interface: Some(id),
            ..
        } => {
            let ts = if ts_decimals == 9 {
                packet.unix_ns
            } else {
                packet.unix_ns / 1000
            };
            writer.packet(*id, ts, &packet.data, packet.len, Some(&packet.comment))
        }
        Sink::Pcapng { .. } => Ok(()),
        Sink::Lines(out) => writeln!(
            out,
            "{} DROPPED {} [{}]",
            summary::clock(packet.unix_ns),
            summary::describe(summary::LINKTYPE_RAW, &packet.data, packet.len),
            packet
                .comment
                .strip_prefix("dropped: ")
                .unwrap_or(&packet.comment)
        ),
    }
}

/// Waits until the capture socket (or the drops' ring buffer) has something, at most `limit`.
fn wait_readable(live: &pcap::Capture<pcap::Active>, ring: Option<RawFd>, limit: Duration) {
    let poll_fd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [poll_fd(live.as_raw_fd()), poll_fd(ring.unwrap_or(-1))];
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: valid pollfds on the stack for the duration of the call (a negative descriptor is
    // ignored by poll); the descriptors are owned by `live` and the drop probe's ring buffer,
    // which outlive it. A failure (EINTR) only ends the wait early.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
}

fn flush(sink: &mut Sink) -> io::Result<()> {
    match sink {
        Sink::Pcapng { writer, .. } => writer.flush(),
        Sink::Lines(out) => out.flush(),
    }
}

fn sink_name(sink: &Sink) -> String {
    match sink {
        Sink::Pcapng { to, .. } => to.clone(),
        Sink::Lines(_) => "stdout".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked_by_libpcap() {
        assert!(check_filter("").is_ok());
        assert!(check_filter("tcp port 8080 and host 10.200.0.2").is_ok());
        let Err(e) = check_filter("tcp port") else {
            panic!("an incomplete filter compiled");
        };
        assert!(e.downcast_ref::<FilterError>().is_some());
        let message = e.to_string();
        assert!(
            message.starts_with("invalid filter \"tcp port\": "),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}

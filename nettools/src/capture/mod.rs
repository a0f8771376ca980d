//! `nettools capture`: a workload's packets, as tcpdump would show them, or as pcapng for
//! Wireshark.
//!
//! The capture is libpcap's own: it opens an AF_PACKET socket bound to the workload's host-side
//! veth, maps a TPACKET_V3 ring, attaches the filter it compiled with SO_ATTACH_FILTER (so
//! packets the filter rejects never leave the kernel) and reads the kernel's drop count with
//! PACKET_STATISTICS. That is exactly the mechanism tcpdump uses, so both see the same packets
//! with the same kernel timestamps; nettools adds finding the veth ([`target`]), the pcapng
//! file ([`pcapng`]) and the one-line summaries ([`summary`]).

pub mod pcapng;
pub mod summary;
pub mod target;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

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
    })
    .await
}

/// Where packets go.
enum Sink {
    /// pcapng, to a file or stdout.
    Pcapng {
        writer: pcapng::Writer<Box<dyn Write + Send>>,
        interface: u32,
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
        .immediate_mode(true)
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
            writer
                .flush()
                .with_context(|| format!("cannot write {to}"))?;
            Sink::Pcapng {
                writer,
                interface,
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

    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    let (count, duration) = (spec.count, spec.duration);
    let started_ns = now_ns();
    let reader = tokio::task::spawn_blocking(move || {
        let end = read_loop(
            &mut live,
            &mut sink,
            linktype,
            ts_decimals,
            count,
            duration,
            &flag,
        );
        (live, sink, end)
    });
    tokio::pin!(reader);
    let joined = tokio::select! {
        r = &mut reader => r,
        _ = stop.requested() => {
            stopping.store(true, Ordering::Relaxed);
            reader.await
        }
    };
    let (mut live, mut sink, end) = joined.context("the capture thread failed")?;
    let (captured, end) = end?;
    let stats = live.stats().ok();
    let dropped = stats.map_or(0, |s| u64::from(s.dropped));
    if let Sink::Pcapng {
        writer,
        interface,
        to,
    } = &mut sink
        && end != End::ReaderGone
    {
        let scale = |ns: u64| if ts_decimals == 9 { ns } else { ns / 1000 };
        let end_ns = now_ns();
        let written = writer
            .statistics(
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
            )
            .and_then(|()| writer.flush());
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            r => r.with_context(|| format!("cannot write {to}"))?,
        }
    }
    eprintln!("{captured} packets captured, {dropped} packets dropped by kernel");
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

/// Reads packets until `count`, `duration` or `stopping`; returns how many were written.
fn read_loop(
    live: &mut pcap::Capture<pcap::Active>,
    sink: &mut Sink,
    linktype: u16,
    ts_decimals: u8,
    count: Option<u64>,
    duration: Option<Duration>,
    stopping: &AtomicBool,
) -> Result<(u64, End)> {
    let started = Instant::now();
    let mut captured = 0u64;
    let mut flushed = Instant::now();
    loop {
        if stopping.load(Ordering::Relaxed)
            || count.is_some_and(|c| captured >= c)
            || duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        let written = match live.next_packet() {
            Ok(packet) => {
                let h = packet.header;
                let sub = u64::try_from(h.ts.tv_usec).unwrap_or(0);
                let ns = u64::try_from(h.ts.tv_sec).unwrap_or(0) * 1_000_000_000
                    + if ts_decimals == 9 { sub } else { sub * 1000 };
                captured += 1;
                match sink {
                    Sink::Pcapng {
                        writer, interface, ..
                    } => {
                        let ts = if ts_decimals == 9 { ns } else { ns / 1000 };
                        writer.packet(*interface, ts, packet.data, h.len, None)
                    }
                    Sink::Lines(out) => writeln!(
                        out,
                        "{} {}",
                        summary::clock(ns),
                        summary::describe(linktype, packet.data, h.len)
                    ),
                }
            }
            Err(pcap::Error::TimeoutExpired) => {
                wait_readable(live, Duration::from_millis(100));
                Ok(())
            }
            Err(e) => bail!("the capture failed: {}", pcap_message(&e)),
        };
        // Streams stay live for Wireshark reading stdout: flushed at least every 100 ms.
        let written = written.and_then(|()| {
            if flushed.elapsed() >= Duration::from_millis(100) || count == Some(captured) {
                flushed = Instant::now();
                flush(sink)
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                return Ok((captured, End::ReaderGone));
            }
            Err(e) => return Err(e).context(format!("cannot write {}", sink_name(sink))),
        }
    }
    match flush(sink) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok((captured, End::ReaderGone)),
        r => {
            r.with_context(|| format!("cannot write {}", sink_name(sink)))?;
            Ok((captured, End::Done))
        }
    }
}

/// Waits until the capture socket has packets, at most `limit`.
fn wait_readable(live: &pcap::Capture<pcap::Active>, limit: Duration) {
    use std::os::fd::AsRawFd as _;
    let mut fd = libc::pollfd {
        fd: live.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd on the stack for the duration of the call; the descriptor is
    // owned by `live`, which outlives it. A failure (EINTR) only ends the wait early.
    unsafe { libc::poll(&mut fd, 1, ms) };
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

//! Collecting what the probes report: decoding ring-buffer events and aggregating them per
//! network namespace, next to the exact counts the kernel keeps in its maps.

pub mod aggregate;
pub mod connections;
pub mod dns;
pub mod flow;
pub mod kallsyms;
pub mod latency;
pub mod rules;

use bytes::Buf as _;
use nettools_common::{
    connections::{ConnectionEvent, ResetEvent, RttSampleEvent, SocketErrorEvent},
    drops::DropEvent,
    event::kind,
    latency::{DnsEvent, HandshakeEvent, IcmpEvent, TransitEvent},
    neighbours::NeighbourEvent,
    retransmits::RetransmitEvent,
};

/// One decoded ring-buffer event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Drop(DropEvent),
    Retransmit(RetransmitEvent),
    NeighbourFailed(NeighbourEvent),
    Handshake(HandshakeEvent),
    Dns(Box<DnsEvent>),
    Icmp(IcmpEvent),
    Transit(TransitEvent),
    Reset(ResetEvent),
    SocketError(SocketErrorEvent),
    Connection(Box<ConnectionEvent>),
    RttSample(RttSampleEvent),
}

/// Why a ring-buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the event type it claims to be.
    Truncated { kind: u32, len: usize },
    /// A kind this build does not know (object and binary out of step).
    UnknownKind(u32),
}

/// Copies a `#[repr(C)]` plain-data event out of the record.
pub fn pod<T: aya::Pod>(data: &[u8]) -> Option<T> {
    if data.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is plain data (any bit pattern valid); unaligned read.
    Some(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(data: &[u8]) -> Result<Event, DecodeError> {
    let mut header = data;
    if header.remaining() < 4 {
        return Err(DecodeError::Truncated {
            kind: 0,
            len: data.len(),
        });
    }
    let k = header.get_u32_le();
    let truncated = DecodeError::Truncated {
        kind: k,
        len: data.len(),
    };
    match k {
        kind::DROP => pod::<DropEvent>(data).map(Event::Drop).ok_or(truncated),
        kind::RETRANSMIT => pod::<RetransmitEvent>(data)
            .map(Event::Retransmit)
            .ok_or(truncated),
        kind::NEIGHBOUR_FAILED => pod::<NeighbourEvent>(data)
            .map(Event::NeighbourFailed)
            .ok_or(truncated),
        kind::HANDSHAKE => pod::<HandshakeEvent>(data)
            .map(Event::Handshake)
            .ok_or(truncated),
        kind::DNS => pod::<DnsEvent>(data)
            .map(|d| Event::Dns(Box::new(d)))
            .ok_or(truncated),
        kind::ICMP => pod::<IcmpEvent>(data).map(Event::Icmp).ok_or(truncated),
        kind::TRANSIT => pod::<TransitEvent>(data)
            .map(Event::Transit)
            .ok_or(truncated),
        kind::RESET => pod::<ResetEvent>(data).map(Event::Reset).ok_or(truncated),
        kind::SOCKET_ERROR => pod::<SocketErrorEvent>(data)
            .map(Event::SocketError)
            .ok_or(truncated),
        kind::CONNECTION => pod::<ConnectionEvent>(data)
            .map(|c| Event::Connection(Box::new(c)))
            .ok_or(truncated),
        kind::RTT_SAMPLE => pod::<RttSampleEvent>(data)
            .map(Event::RttSample)
            .ok_or(truncated),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Registers a map-backed reader (ring buffer, kernel log) with the tokio reactor.
pub fn pollable<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the readers own their map's file descriptor for their whole lifetime and always
    // return the same one, which is what registration requires.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}

/// Converts the kernel's monotonic timestamps (`bpf_ktime_get_ns`) to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid pointer to a timespec.
            unsafe { libc::clock_gettime(id, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Self {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    /// The kernel's monotonic clock now (what `bpf_ktime_get_ns` returns).
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Unix time in nanoseconds of a kernel timestamp.
    pub fn unix_ns(&self, ktime_ns: u64) -> i128 {
        i128::from(ktime_ns) + self.offset_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nettools_common::{drops::DropKey, event::EventHeader};

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is plain data.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_drop_events_and_refuses_short_or_unknown_records() {
        let ev = DropEvent {
            header: EventHeader {
                kind: kind::DROP,
                cpu: 1,
                ts_ns: 42,
            },
            key: DropKey {
                netns: 7,
                reason: 12,
                location: 0xffff_ffff_8100_0000,
            },
            ..Default::default()
        };
        let raw = bytes_of(&ev);
        assert_eq!(decode(&raw), Ok(Event::Drop(ev)));
        assert_eq!(
            decode(&raw[..raw.len() - 1]),
            Err(DecodeError::Truncated {
                kind: kind::DROP,
                len: raw.len() - 1
            })
        );
        assert_eq!(
            decode(&[1, 2]),
            Err(DecodeError::Truncated { kind: 0, len: 2 })
        );
        let mut other = raw.clone();
        other[0] = 99;
        assert_eq!(decode(&other), Err(DecodeError::UnknownKind(99)));
    }
}

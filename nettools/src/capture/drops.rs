//! The packets the kernel dropped in the captured workload's namespace: the drop probe
//! (`kfree_skb`) loaded with its packet copy on and filtered to that namespace, each dropped
//! packet matched against the capture's FILTER with libpcap's own offline filter.
//!
//! The kernel copies the packet from its network header on (the link-layer header is often gone
//! by the time a packet dies), so the bytes are a raw IPv4 or IPv6 packet: libpcap compiles the
//! FILTER for link type RAW (101) to match them, and pcapng gets them on an interface of that
//! link type.

use std::os::fd::{AsRawFd as _, RawFd};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use nettools_common::{
    counters,
    drops::{DROP_PACKET_MAX, DropPacketEvent},
    event::kind,
};

use crate::{
    collect::{self, Clock, kallsyms::Kallsyms},
    probe::{self, LoadOptions, ProbeKind, drops::DropReasons},
};

/// The name of the pcapng interface the dropped packets are written on.
pub const INTERFACE: &str = "nettools-drops";

/// EtherTypes of the packets that can be written as raw IP.
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// libpcap's own number for raw IP (`DLT_RAW` on Linux); files call it link type 101
/// (`LINKTYPE_RAW`), which libpcap translates to this when it opens one.
const DLT_RAW: i32 = 12;

/// The ring buffer's size: room for about 2600 dropped packets between two reads.
const RING_BYTES: u32 = 1 << 22;

/// A FILTER compiled by libpcap for raw IP packets.
pub struct RawFilter(pcap::BpfProgram);

// SAFETY: the compiled program is a heap array of cBPF instructions owned by this value alone
// (libpcap frees it in `pcap_freecode` on drop); nothing else refers to it, so moving it to the
// capture thread is sound.
unsafe impl Send for RawFilter {}

impl RawFilter {
    /// Compiles `filter` for link type RAW; `Err` holds libpcap's message (a filter on
    /// link-layer fields, such as `ether host` or `arp`, has no meaning for raw IP).
    pub fn compile(filter: &str) -> std::result::Result<Self, String> {
        let dead =
            pcap::Capture::dead(pcap::Linktype(DLT_RAW)).map_err(|e| super::pcap_message(&e))?;
        dead.compile(filter, true)
            .map(Self)
            .map_err(|e| super::pcap_message(&e))
    }

    /// Whether the packet's captured bytes match.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.0.filter(data)
    }
}

/// One dropped packet, ready to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// When the kernel dropped it, Unix time in nanoseconds.
    pub unix_ns: u64,
    /// The packet from its IP header on, at most the snap length.
    pub data: Vec<u8>,
    /// Its length from the IP header to its end.
    pub len: u32,
    /// `dropped: REASON at function+0xoff (netns N)`.
    pub comment: String,
}

/// The drop probe, loaded and attached for one namespace.
pub struct Drops {
    loaded: probe::Loaded,
    ring: RingBuf<MapData>,
    filter: RawFilter,
    kallsyms: Kallsyms,
    clock: Clock,
    snaplen: usize,
    /// Drops the kernel reported in the namespace, before the filter.
    pub seen: u64,
    /// Drops that are not IP packets, or whose bytes the kernel could not read: not written.
    pub unwritable: u64,
}

impl Drops {
    /// Loads the drop probe with its packet copy on, for the namespace with inode `netns`.
    pub fn open(netns: u32, filter: RawFilter, snaplen: u32) -> Result<Self> {
        let bytes = snaplen.min(DROP_PACKET_MAX as u32);
        let mut loaded = probe::load_capturing_drops(
            &LoadOptions {
                probes: vec![ProbeKind::Drops],
                all_namespaces: false,
                kernel_debug: false,
                ring_buffer_bytes: RING_BYTES,
                transit_sample_shift: 0,
                stacks: false,
            },
            bytes,
        )?;
        loaded.trace_netns(netns)?;
        let ring = loaded.take_events()?;
        loaded.attach(ProbeKind::Drops)?;
        let kallsyms = Kallsyms::when_needed();
        Ok(Self {
            loaded,
            ring,
            filter,
            kallsyms,
            clock: Clock::now(),
            snaplen: bytes as usize,
            seen: 0,
            unwritable: 0,
        })
    }

    /// The ring buffer's descriptor, readable when events wait.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// The next dropped packet that matches the filter, if one waits.
    pub fn next_matching(&mut self) -> Option<Dropped> {
        loop {
            let event = {
                let record = self.ring.next()?;
                decode(&record)
            };
            let Some(event) = event else {
                continue;
            };
            self.seen += 1;
            match self.accept(&event) {
                Some(d) => return Some(d),
                None => continue,
            }
        }
    }

    fn accept(&mut self, e: &DropPacketEvent) -> Option<Dropped> {
        let captured = (e.captured as usize).min(DROP_PACKET_MAX).min(self.snaplen);
        let data = e.data.get(..captured)?;
        let version = data.first().map(|b| b >> 4);
        let ip = matches!(
            (e.protocol, version),
            (ETH_P_IP, Some(4)) | (ETH_P_IPV6, Some(6))
        );
        if !ip {
            self.unwritable += 1;
            return None;
        }
        if !self.filter.matches(data) {
            return None;
        }
        Some(Dropped {
            unix_ns: u64::try_from(self.clock.unix_ns(e.header.ts_ns)).unwrap_or(0),
            data: data.to_vec(),
            len: e.orig_len.max(captured as u32),
            comment: comment(&self.loaded.kernel.drop_reasons, &self.kallsyms, e),
        })
    }

    /// Drop events the ring buffer had no room for.
    pub fn lost(&self) -> u64 {
        self.loaded
            .counters()
            .map_or(0, |c| c[counters::EVENTS_LOST as usize])
    }
}

/// A `DropPacketEvent` out of a ring-buffer record; `None` for other kinds (the drop probe also
/// sends its plain drop events) and short records.
fn decode(record: &[u8]) -> Option<DropPacketEvent> {
    let k = u32::from_le_bytes(record.get(..4)?.try_into().ok()?);
    if k != kind::DROP_PACKET {
        return None;
    }
    collect::pod(record)
}

/// `dropped: NETFILTER_DROP at nft_do_chain+0x46f (netns 4026532320)`.
fn comment(reasons: &DropReasons, kallsyms: &Kallsyms, e: &DropPacketEvent) -> String {
    format!(
        "dropped: {} at {} (netns {})",
        reasons.name(e.key.reason),
        kallsyms.describe(e.key.location),
        e.key.netns
    )
}

/// Why dropped packets cannot be captured with this filter, as a note for the user.
pub fn filter_note(filter: &str, why: &str) -> anyhow::Error {
    anyhow!(
        "the filter {filter:?} does not apply to raw IP packets ({why}): dropped packets are not \
         captured"
    )
}

/// Loads the drop probe for `netns`, or says why not in one sentence.
pub fn start(netns: u32, filter: &str, snaplen: u32) -> Result<Drops> {
    let raw = RawFilter::compile(filter).map_err(|why| filter_note(filter, &why))?;
    Drops::open(netns, raw, snaplen).context("cannot capture the packets the kernel drops")
}

#[cfg(test)]
mod tests {
    use nettools_common::{drops::DropKey, event::EventHeader};

    use super::*;

    fn event(reason: u32, data: &[u8]) -> DropPacketEvent {
        let mut e = DropPacketEvent {
            header: EventHeader {
                kind: kind::DROP_PACKET,
                cpu: 0,
                ts_ns: 5,
            },
            key: DropKey {
                netns: 4026532320,
                reason,
                location: 0xffff_ffff_8100_046f,
            },
            ifindex: 2,
            protocol: ETH_P_IP,
            _pad: 0,
            orig_len: 84,
            captured: data.len() as u32,
            data: [0xaa; DROP_PACKET_MAX],
        };
        e.data[..data.len()].copy_from_slice(data);
        e
    }

    fn bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: reads the plain-data value's own bytes.
        unsafe {
            std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()).to_vec()
        }
    }

    #[test]
    fn decodes_only_whole_packet_events() {
        let e = event(12, &[0x45, 0, 0, 84]);
        let record = bytes(&e);
        assert_eq!(decode(&record), Some(e));
        assert_eq!(decode(&record[..record.len() - 1]), None);
        let mut other = record.clone();
        other[..4].copy_from_slice(&kind::DROP.to_le_bytes());
        assert_eq!(decode(&other), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn comments_name_reason_location_and_namespace() {
        let reasons = DropReasons::from_pairs(&[("SKB_DROP_REASON_NETFILTER_DROP", 12)]);
        let kallsyms = Kallsyms::parse("ffffffff81000000 T nft_do_chain\n");
        assert_eq!(
            comment(&reasons, &kallsyms, &event(12, &[])),
            "dropped: NETFILTER_DROP at nft_do_chain+0x46f (netns 4026532320)"
        );
    }

    #[test]
    fn raw_filters_match_ip_packets_and_reject_link_layer_ones() -> Result<()> {
        // An ICMP echo request 10.200.0.1 -> 10.200.0.2.
        let mut ping = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 200, 0, 1, 10, 200, 0, 2,
        ];
        ping.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        let icmp = RawFilter::compile("icmp and host 10.200.0.2").map_err(|e| anyhow!(e))?;
        assert!(icmp.matches(&ping));
        let tcp = RawFilter::compile("tcp port 8080").map_err(|e| anyhow!(e))?;
        assert!(!tcp.matches(&ping));
        assert!(
            RawFilter::compile("")
                .map_err(|e| anyhow!(e))?
                .matches(&ping)
        );
        assert!(RawFilter::compile("ether host 02:00:00:00:00:01").is_err());
        Ok(())
    }
}

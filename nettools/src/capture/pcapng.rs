//! A pcapng writer (the format Wireshark and tshark read natively): one section header, one
//! interface description per capture interface, enhanced packet blocks (with an optional
//! comment), and interface statistics blocks at the end. Little-endian, as the byte-order magic
//! says; every block is padded to 32 bits as the format requires.
//!
//! Only what nettools writes is here: <https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html>.

use std::io::{self, Write};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const ISB: u32 = 0x0000_0005;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;
const ISB_OSDROP: u16 = 7;
const ISB_USRDELIV: u16 = 8;

/// One capture interface as the file describes it.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    /// LINKTYPE_* (1 = Ethernet, 101 = raw IP).
    pub linktype: u16,
    pub snaplen: u32,
    /// Timestamps are in 10^-`ts_decimals` seconds (6: microseconds, 9: nanoseconds).
    pub ts_decimals: u8,
}

/// What an interface statistics block says (pcapng's isb_* options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Start and end of the capture, in the interface's timestamp units.
    pub start: u64,
    pub end: u64,
    /// Packets the kernel passed the filter (libpcap's ps_recv).
    pub received: u64,
    /// Packets dropped by the interface (libpcap's ps_ifdrop).
    pub if_dropped: u64,
    /// Packets the kernel dropped because the capture buffer was full (libpcap's ps_drop:
    /// tcpdump's "dropped by kernel").
    pub os_dropped: u64,
    /// Packets written to the file.
    pub delivered: u64,
}

/// A block under construction: its body, then the options.
struct Block {
    kind: u32,
    body: Vec<u8>,
    options: Vec<u8>,
}

impl Block {
    fn new(kind: u32) -> Self {
        Self {
            kind,
            body: Vec::new(),
            options: Vec::new(),
        }
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.body.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn timestamp(&mut self, ts: u64) -> &mut Self {
        // High 32 bits first, each in the section's byte order.
        self.u32((ts >> 32) as u32).u32(ts as u32)
    }

    /// Bytes padded to 32 bits.
    fn padded(&mut self, data: &[u8]) -> &mut Self {
        self.body.extend_from_slice(data);
        self.body.resize(self.body.len().next_multiple_of(4), 0);
        self
    }

    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        // An option longer than u16::MAX bytes is cut: only comments and names could be.
        let value = &value[..value.len().min(usize::from(u16::MAX) & !3)];
        self.options.extend_from_slice(&code.to_le_bytes());
        self.options
            .extend_from_slice(&(value.len() as u16).to_le_bytes());
        self.options.extend_from_slice(value);
        self.options
            .resize(self.options.len().next_multiple_of(4), 0);
        self
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let end = if self.options.is_empty() { 0 } else { 4 };
        let total = 12 + self.body.len() + self.options.len() + end;
        let total = u32::try_from(total)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pcapng block too large"))?;
        let mut bytes = Vec::with_capacity(total as usize);
        bytes.extend_from_slice(&self.kind.to_le_bytes());
        bytes.extend_from_slice(&total.to_le_bytes());
        bytes.extend_from_slice(&self.body);
        bytes.extend_from_slice(&self.options);
        if end != 0 {
            bytes.extend_from_slice(&OPT_END.to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes());
        }
        bytes.extend_from_slice(&total.to_le_bytes());
        out.write_all(&bytes)
    }
}

/// Writes a pcapng stream to `out`.
pub struct Writer<W: Write> {
    out: W,
    interfaces: u32,
}

impl<W: Write> Writer<W> {
    /// Starts a section (the section header block, naming nettools as the writer).
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut shb = Block::new(SHB);
        shb.u32(BYTE_ORDER_MAGIC).u16(1).u16(0);
        // Section length unknown (-1): the file is written as a stream.
        shb.body.extend_from_slice(&(-1i64).to_le_bytes());
        shb.option(
            SHB_USERAPPL,
            format!("nettools {}", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        shb.write(&mut out)?;
        Ok(Self { out, interfaces: 0 })
    }

    /// Describes the next interface; returns its id for [`Writer::packet`].
    pub fn interface(&mut self, i: &Interface) -> io::Result<u32> {
        let mut idb = Block::new(IDB);
        idb.u16(i.linktype).u16(0).u32(i.snaplen);
        idb.option(IF_NAME, i.name.as_bytes());
        idb.option(IF_TSRESOL, &[i.ts_decimals]);
        idb.write(&mut self.out)?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// One packet: `data` are the captured bytes (at most the snap length), `len` its length
    /// on the wire, `ts` in the interface's units.
    pub fn packet(
        &mut self,
        interface: u32,
        ts: u64,
        data: &[u8],
        len: u32,
        comment: Option<&str>,
    ) -> io::Result<()> {
        let caplen = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too large"))?;
        if comment.is_none() {
            // Every packet of the interface: written in place, no block built (the same bytes
            // as the general path below, which the tests read back with tshark).
            let padded = data.len().next_multiple_of(4);
            let total = u32::try_from(12 + 20 + padded)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too large"))?;
            let mut head = [0u8; 28];
            for (i, v) in [
                EPB,
                total,
                interface,
                (ts >> 32) as u32,
                ts as u32,
                caplen,
                len.max(caplen),
            ]
            .into_iter()
            .enumerate()
            {
                head[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            self.out.write_all(&head)?;
            self.out.write_all(data)?;
            self.out.write_all(&[0u8; 3][..padded - data.len()])?;
            return self.out.write_all(&total.to_le_bytes());
        }
        let mut epb = Block::new(EPB);
        epb.u32(interface)
            .timestamp(ts)
            .u32(caplen)
            .u32(len.max(caplen))
            .padded(data);
        if let Some(c) = comment {
            epb.option(OPT_COMMENT, c.as_bytes());
        }
        epb.write(&mut self.out)
    }

    /// The interface's counters, at the end of the capture.
    pub fn statistics(&mut self, interface: u32, ts: u64, s: &Statistics) -> io::Result<()> {
        let mut isb = Block::new(ISB);
        isb.u32(interface).timestamp(ts);
        let ts_option = |t: u64| {
            let mut v = ((t >> 32) as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&(t as u32).to_le_bytes());
            v
        };
        isb.option(ISB_STARTTIME, &ts_option(s.start))
            .option(ISB_ENDTIME, &ts_option(s.end))
            .option(ISB_IFRECV, &s.received.to_le_bytes())
            .option(ISB_IFDROP, &s.if_dropped.to_le_bytes())
            .option(ISB_OSDROP, &s.os_dropped.to_le_bytes())
            .option(ISB_USRDELIV, &s.delivered.to_le_bytes());
        isb.write(&mut self.out)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_written_in_place_is_the_block_the_general_path_builds() -> io::Result<()> {
        let data = [1u8, 2, 3, 4, 5];
        let mut fast = Vec::new();
        Writer {
            out: &mut fast,
            interfaces: 1,
        }
        .packet(0, 0x1_0000_0002, &data, 60, None)?;
        let mut block = Block::new(EPB);
        block
            .u32(0)
            .timestamp(0x1_0000_0002)
            .u32(5)
            .u32(60)
            .padded(&data);
        let mut general = Vec::new();
        block.write(&mut general)?;
        assert_eq!(fast, general);
        Ok(())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Walks the blocks: every block's two length fields agree and are multiples of 4.
    fn blocks(b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let kind = u32_at(b, at);
            let len = u32_at(b, at + 4) as usize;
            assert_eq!(len % 4, 0);
            assert_eq!(u32_at(b, at + len - 4) as usize, len);
            out.push((kind, b[at + 8..at + len - 4].to_vec()));
            at += len;
        }
        assert_eq!(at, b.len());
        out
    }

    #[test]
    fn blocks_are_framed_and_padded() -> io::Result<()> {
        let mut w = Writer::new(Vec::new())?;
        let id = w.interface(&Interface {
            name: "veth0".into(),
            linktype: 1,
            snaplen: 262144,
            ts_decimals: 9,
        })?;
        assert_eq!(id, 0);
        w.packet(id, 0x1_0000_0002, &[1, 2, 3, 4, 5], 60, None)?;
        w.packet(id, 7, &[9; 3], 3, Some("dropped: X at y (netns 1)"))?;
        w.statistics(
            id,
            8,
            &Statistics {
                os_dropped: 3,
                ..Default::default()
            },
        )?;
        let bytes = w.into_inner();
        let b = blocks(&bytes);
        let kinds: Vec<u32> = b.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [SHB, IDB, EPB, EPB, ISB]);
        assert_eq!(u32_at(&b[0].1, 0), BYTE_ORDER_MAGIC);
        // EPB: interface, ts high, ts low, caplen, len, data padded to 8 bytes.
        let epb = &b[2].1;
        assert_eq!(
            [0, 1, 2, 5, 60].map(|v: u32| v),
            [0, 4, 8, 12, 16].map(|at| u32_at(epb, at))
        );
        assert_eq!(&epb[20..28], &[1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(epb.len(), 28);
        // The comment option, padded, then the end of options.
        let commented = &b[3].1;
        let opt = &commented[24..];
        assert_eq!(u16::from_le_bytes([opt[0], opt[1]]), OPT_COMMENT);
        let n = usize::from(u16::from_le_bytes([opt[2], opt[3]]));
        assert_eq!(&opt[4..4 + n], b"dropped: X at y (netns 1)");
        assert_eq!(&opt[opt.len() - 4..], &[0, 0, 0, 0]);
        Ok(())
    }
}

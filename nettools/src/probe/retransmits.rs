//! The retransmit probe's userspace side: record layouts from tracefs, attaching, and the exact
//! per-namespace and per-flow segment counts.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use aya::Ebpf;
use nettools_common::{
    config::{ABSENT, RetransmitLayout},
    retransmits::RetransmitKey,
};

use super::tracefs::Format;

/// The layout of `tcp:tcp_retransmit_skb` or `tcp:tcp_retransmit_synack` (fields the record
/// lacks stay `ABSENT`).
pub fn layout(f: &Format) -> Result<RetransmitLayout> {
    let at = |name: &str, size: u32| f.offset(name, size);
    let l = RetransmitLayout {
        skbaddr: at("skbaddr", 8),
        skaddr: at("skaddr", 8),
        state: at("state", 4),
        sport: at("sport", 2),
        dport: at("dport", 2),
        family: at("family", 2),
        saddr: at("saddr", 4),
        daddr: at("daddr", 4),
        saddr_v6: at("saddr_v6", 16),
        daddr_v6: at("daddr_v6", 16),
        err: at("err", 4),
    };
    if l.skaddr == ABSENT {
        bail!("this kernel's TCP retransmit tracepoint has no skaddr field");
    }
    Ok(l)
}

/// Loads and attaches both retransmit programs (the SYN-ACK one where the kernel has it).
pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    super::attach_tracepoint(ebpf, "tcp_retransmit_skb", "tcp", "tcp_retransmit_skb")?;
    if super::tracefs::format("tcp", "tcp_retransmit_synack").is_ok() {
        super::attach_tracepoint(
            ebpf,
            "tcp_retransmit_synack",
            "tcp",
            "tcp_retransmit_synack",
        )?;
    }
    Ok(())
}

/// Exact retransmitted segments per namespace, and per (namespace, state, flow).
pub type Counts = (BTreeMap<u32, u64>, Vec<(RetransmitKey, u64)>);

/// Reads the kernel's exact retransmit counts.
pub fn read_counts(ebpf: &Ebpf) -> Result<Counts> {
    let totals = super::sum_per_cpu::<u32>(ebpf, "RETRANSMIT_TOTALS")?
        .into_iter()
        .collect();
    Ok((totals, super::sum_per_cpu(ebpf, "RETRANSMIT_FLOWS")?))
}

/// Name of a TCP state (`include/net/tcp_states.h`).
pub fn state_name(state: u32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_of_both_records() -> Result<()> {
        let skb = Format::parse(
            "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
             \tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
             \tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
             \tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n\
             \tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
             \tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;\n\
             \tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n",
        );
        let l = layout(&skb)?;
        assert_eq!((l.skbaddr, l.skaddr, l.state, l.family), (8, 16, 24, 32));
        assert_eq!((l.saddr, l.daddr_v6, l.err), (34, 58, 76));
        let synack = Format::parse(
            "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:const void * req;\toffset:16;\tsize:8;\tsigned:0;\n",
        );
        let l = layout(&synack)?;
        assert_eq!(
            (l.skaddr, l.skbaddr, l.state, l.err),
            (8, ABSENT, ABSENT, ABSENT)
        );
        assert!(layout(&Format::default()).is_err());
        assert_eq!(state_name(1), "ESTABLISHED");
        Ok(())
    }
}

//! The drop probe's userspace side: attaches `skb:kfree_skb`, names drop reasons from this
//! kernel's BTF, decodes `DropEvent`s and reads the exact in-kernel counts.

use std::collections::HashMap;

use anyhow::{Result, bail};
use aya::Ebpf;
use nettools_common::{
    config::{ABSENT, KfreeSkbLayout},
    drops::{DropKey, REASON_UNAVAILABLE},
};

use super::{btf::Btf, tracefs::Format};

/// Names of `enum skb_drop_reason` values, read from the running kernel's BTF: every kernel adds
/// reasons and some renumber them, so no table is compiled in.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// Values that mean "not a drop" on this kernel.
    not_drops: Vec<u32>,
}

impl DropReasons {
    /// Reads the enum from BTF. A kernel without it (before 5.17) gives an empty table.
    pub fn from_btf(btf: &Btf) -> Self {
        let mut reasons = Self::default();
        let Some(values) = btf.enum_values("skb_drop_reason") else {
            return reasons;
        };
        for (name, value) in values {
            let Ok(value) = u32::try_from(value) else {
                continue;
            };
            let short = name
                .strip_prefix("SKB_DROP_REASON_")
                .or_else(|| name.strip_prefix("SKB_"))
                .unwrap_or(&name)
                .to_string();
            if matches!(
                name.as_str(),
                "SKB_NOT_DROPPED_YET" | "SKB_CONSUMED" | "SKB_DROP_REASON_NOT_SPECIFIED"
            ) {
                reasons.not_drops.push(value);
            }
            reasons.names.insert(value, short);
        }
        reasons
    }

    /// Builds a table from (name, value) pairs as they appear in the kernel's enum.
    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, u32)]) -> Self {
        let mut b = super::btf::tests::Builder::new();
        b.enumeration("skb_drop_reason", pairs);
        match Btf::parse(&b.build()) {
            Ok(btf) => Self::from_btf(&btf),
            Err(_) => Self::default(),
        }
    }

    /// Whether this kernel names drop reasons at all.
    pub fn available(&self) -> bool {
        !self.names.is_empty()
    }

    /// The reason's name without its `SKB_DROP_REASON_` prefix, e.g. `NETFILTER_DROP`.
    pub fn name(&self, reason: u32) -> String {
        if reason == REASON_UNAVAILABLE {
            return "UNAVAILABLE".to_string();
        }
        if let Some(name) = self.names.get(&reason) {
            return name.clone();
        }
        // Subsystem-specific reasons carry the subsystem in the high 16 bits.
        let subsys = reason >> 16;
        if subsys != 0 {
            format!("SUBSYS_{subsys}_{}", reason & 0xffff)
        } else {
            format!("UNKNOWN_{reason}")
        }
    }
}

/// The `skb:kfree_skb` record layout for the kernel program.
pub fn kfree_skb_layout(format: &Format, reasons: &DropReasons) -> Result<KfreeSkbLayout> {
    let offset = |name: &str, size: u32| -> Option<u32> {
        format
            .field(name)
            .filter(|f| f.size == size)
            .map(|f| f.offset)
    };
    let (Some(skbaddr), Some(location)) = (offset("skbaddr", 8), offset("location", 8)) else {
        bail!("this kernel's skb:kfree_skb tracepoint has no skbaddr/location fields");
    };
    let mut not_drops = [ABSENT; 3];
    for (slot, value) in not_drops.iter_mut().zip(&reasons.not_drops) {
        *slot = *value;
    }
    Ok(KfreeSkbLayout {
        skbaddr,
        location,
        protocol: offset("protocol", 2).unwrap_or(ABSENT),
        reason: offset("reason", 4).unwrap_or(ABSENT),
        rx_sk: offset("rx_sk", 8).unwrap_or(ABSENT),
        not_drops,
    })
}

/// Loads and attaches the `kfree_skb` program.
pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    super::attach_tracepoint(ebpf, "kfree_skb", "skb", "kfree_skb")
}

/// Exact drop counts per (namespace, reason, location), summed over CPUs.
pub fn read_counts(ebpf: &Ebpf) -> Result<Vec<(DropKey, u64)>> {
    super::sum_per_cpu(ebpf, "DROP_COUNTS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reasons_and_finds_non_drops() {
        let r = DropReasons::from_pairs(&[
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NETFILTER_DROP", 12),
            ("SKB_DROP_REASON_MAX", 128),
        ]);
        assert!(r.available());
        assert_eq!(r.name(12), "NETFILTER_DROP");
        assert_eq!(r.name(1), "CONSUMED");
        assert_eq!(r.name(500), "UNKNOWN_500");
        assert_eq!(r.name(0x3_0005), "SUBSYS_3_5");
        assert_eq!(r.name(REASON_UNAVAILABLE), "UNAVAILABLE");
        let mut nd = r.not_drops.clone();
        nd.sort();
        assert_eq!(nd, vec![0, 1, 2]);
    }

    #[test]
    fn layout_follows_the_format_file() -> Result<()> {
        let f = Format::parse(
            "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
             \tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
             \tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n",
        );
        let r = DropReasons::from_pairs(&[("SKB_DROP_REASON_NOT_SPECIFIED", 0)]);
        let l = kfree_skb_layout(&f, &r)?;
        assert_eq!(
            (l.skbaddr, l.location, l.rx_sk, l.protocol, l.reason),
            (8, 16, 24, 32, 36)
        );
        assert_eq!(l.not_drops, [0, ABSENT, ABSENT]);

        let old = Format::parse(
            "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n",
        );
        let l = kfree_skb_layout(&old, &DropReasons::default())?;
        assert_eq!((l.reason, l.rx_sk, l.protocol), (ABSENT, ABSENT, 24));
        assert!(kfree_skb_layout(&Format::default(), &r).is_err());
        Ok(())
    }
}

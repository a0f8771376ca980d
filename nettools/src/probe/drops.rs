//! The drop probe's userspace side: attaches the `kfree_skb` raw tracepoint, names drop reasons
//! from this kernel's BTF, decodes `DropEvent`s and reads the exact in-kernel counts.

use std::collections::HashMap;

use anyhow::{Result, bail};
use aya::Ebpf;
use nettools_common::{
    config::{ABSENT, KernelOffsets, KfreeSkbLayout},
    drops::{DropCapture, DropKey, REASON_UNAVAILABLE},
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

/// The `kfree_skb` raw tracepoint's arguments on this kernel, for the kernel program: from the
/// BTF prototype `btf_trace_kfree_skb` where the kernel has it, else from the fields of the
/// tracepoint's tracefs record (a field `reason` or `rx_sk` exists exactly when the argument
/// does). Fails with one sentence when the prototype is not one nettools knows.
pub fn kfree_skb_layout(
    btf: &Btf,
    format: Option<&Format>,
    reasons: &DropReasons,
) -> Result<KfreeSkbLayout> {
    let (has_reason, has_rx_sk) = match btf.func_proto_params("btf_trace_kfree_skb") {
        Some(params) => {
            // The first parameter is the tracepoint's own data pointer.
            let types: Vec<&str> = params.iter().skip(1).map(String::as_str).collect();
            match types.as_slice() {
                ["struct sk_buff *", "void *"] => (false, false),
                ["struct sk_buff *", "void *", "enum skb_drop_reason"] => (true, false),
                [
                    "struct sk_buff *",
                    "void *",
                    "enum skb_drop_reason",
                    "struct sock *",
                ] => (true, true),
                other => bail!(
                    "this kernel's kfree_skb tracepoint takes ({}), which nettools does not know: \
                     please report the kernel version (uname -r) to the nettools project",
                    other.join(", ")
                ),
            }
        }
        None => {
            let Some(format) = format else {
                bail!(
                    "this kernel describes its kfree_skb tracepoint neither in BTF nor in tracefs"
                );
            };
            if format.field("skbaddr").is_none() || format.field("location").is_none() {
                bail!("this kernel's skb:kfree_skb tracepoint has no skbaddr/location fields");
            }
            (
                format.field("reason").is_some(),
                format.field("rx_sk").is_some(),
            )
        }
    };
    let mut not_drops = [ABSENT; 3];
    for (slot, value) in not_drops.iter_mut().zip(&reasons.not_drops) {
        *slot = *value;
    }
    Ok(KfreeSkbLayout {
        has_reason: u32::from(has_reason),
        has_rx_sk: u32::from(has_rx_sk),
        not_drops,
    })
}

/// What the drop probe needs to copy dropped packets (`nettools capture`): the `sk_buff` fields
/// that say where the packet and its linear part end, from this kernel's BTF. Fails with one
/// sentence when the kernel lacks one of them or the packet's start.
pub fn capture_layout(btf: &mut Btf, offsets: &KernelOffsets) -> Result<DropCapture> {
    if offsets.skb_head == ABSENT || offsets.skb_network_header == ABSENT {
        bail!("this kernel's struct sk_buff has no head or network_header that nettools can read");
    }
    let mut get = |field: &str, size: u32| -> Result<u32> {
        let loc = btf.field("sk_buff", field)?;
        if loc.size != size {
            bail!(
                "struct sk_buff.{field} is {} bytes on this kernel, nettools expects {size}",
                loc.size
            );
        }
        Ok(loc.offset)
    };
    Ok(DropCapture {
        skb_len: get("len", 4)?,
        skb_data_len: get("data_len", 4)?,
        skb_data: get("data", 8)?,
        _pad: 0,
    })
}

/// Loads and attaches the `kfree_skb` program (a raw tracepoint: the kernel hands it the
/// arguments directly instead of filling a trace record first).
pub fn attach(ebpf: &mut Ebpf) -> Result<()> {
    super::attach_raw_tracepoint(ebpf, "kfree_skb", "kfree_skb")
}

/// Exact drop counts per (namespace, reason, location), summed over CPUs.
pub fn read_counts(ebpf: &Ebpf) -> Result<Vec<(DropKey, u64)>> {
    super::sum_per_cpu(ebpf, "DROP_COUNTS")
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

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
    fn layout_follows_the_btf_prototype_then_the_format_file() -> Result<()> {
        let r = DropReasons::from_pairs(&[("SKB_DROP_REASON_NOT_SPECIFIED", 0)]);
        // void (*)(void *, struct sk_buff *, void *[, enum skb_drop_reason[, struct sock *]])
        let btf_with = |params: &[&str]| -> Result<Btf> {
            let mut b = crate::probe::btf::tests::Builder::new();
            let skb = b.composite(false, "sk_buff", 232, &[]);
            let sock = b.composite(false, "sock", 760, &[]);
            let reason = b.enumeration("skb_drop_reason", &[("SKB_CONSUMED", 1)]);
            let long = b.int("long int", 8);
            let types: Vec<u32> = params
                .iter()
                .map(|p| match *p {
                    "void *" => b.ptr(0),
                    "struct sk_buff *" => b.ptr(skb),
                    "struct sock *" => b.ptr(sock),
                    "enum skb_drop_reason" => reason,
                    _ => long,
                })
                .collect();
            let proto = b.func_proto(&types);
            let to_proto = b.ptr(proto);
            b.typedef("btf_trace_kfree_skb", to_proto);
            Btf::parse(&b.build())
        };
        let (data, skb, loc) = ("void *", "struct sk_buff *", "void *");
        for (params, expected) in [
            (&[data, skb, loc][..], (0, 0)),
            (&[data, skb, loc, "enum skb_drop_reason"][..], (1, 0)),
            (
                &[data, skb, loc, "enum skb_drop_reason", "struct sock *"][..],
                (1, 1),
            ),
        ] {
            let l = kfree_skb_layout(&btf_with(params)?, None, &r)?;
            assert_eq!((l.has_reason, l.has_rx_sk), expected, "{params:?}");
            assert_eq!(l.not_drops, [0, ABSENT, ABSENT]);
        }
        let strange = kfree_skb_layout(&btf_with(&[data, skb, "long"])?, None, &r);
        assert!(
            format!("{:#}", strange.err().context("accepted")?).contains("(struct sk_buff *, ?)")
        );

        // Without the prototype in BTF: the tracefs fields say which arguments exist.
        let no_proto = Btf::parse(&crate::probe::btf::tests::Builder::new().build())?;
        let f = Format::parse(
            "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
             \tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
             \tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n",
        );
        let l = kfree_skb_layout(&no_proto, Some(&f), &r)?;
        assert_eq!((l.has_reason, l.has_rx_sk), (1, 1));
        let old = Format::parse(
            "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
             \tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n",
        );
        let l = kfree_skb_layout(&no_proto, Some(&old), &DropReasons::default())?;
        assert_eq!((l.has_reason, l.has_rx_sk), (0, 0));
        assert!(kfree_skb_layout(&no_proto, Some(&Format::default()), &r).is_err());
        assert!(kfree_skb_layout(&no_proto, None, &r).is_err());
        Ok(())
    }
}

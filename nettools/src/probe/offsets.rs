//! Kernel struct offsets for the probes, resolved from this kernel's BTF at start-up.

use anyhow::{Context as _, Result, bail};
use nettools_common::config::{ABSENT, KernelOffsets};

use super::btf::Btf;

/// A field the probes read: where it lives and how big it must be.
struct Wanted {
    strukt: &'static str,
    path: &'static str,
    /// Expected size in bytes; `None` for flexible arrays (`u8 primary_key[0]`).
    size: Option<u32>,
    /// Without a required field nettools cannot attribute events to namespaces at all.
    required: bool,
}

const fn wanted(strukt: &'static str, path: &'static str, size: u32, required: bool) -> Wanted {
    Wanted {
        strukt,
        path,
        size: Some(size),
        required,
    }
}

/// A flexible array member at the end of a struct: any size is fine.
const fn flexible(strukt: &'static str, path: &'static str) -> Wanted {
    Wanted {
        strukt,
        path,
        size: None,
        required: false,
    }
}

/// Resolves every offset in [`KernelOffsets`]. Optional fields a kernel lacks are set to
/// `ABSENT` and reported in the returned notes; a missing required field is an error.
pub fn resolve(btf: &mut Btf) -> Result<(KernelOffsets, Vec<String>)> {
    let mut notes = Vec::new();
    let mut get = |w: Wanted| -> Result<u32> {
        match btf.field(w.strukt, w.path) {
            Ok(loc) if w.size.is_none_or(|s| s == loc.size) => Ok(loc.offset),
            Ok(loc) => {
                let msg = format!(
                    "struct {}.{} is {} bytes on this kernel, nettools expects {}",
                    w.strukt,
                    w.path,
                    loc.size,
                    w.size.unwrap_or(0)
                );
                if w.required {
                    bail!(msg);
                }
                notes.push(msg);
                Ok(ABSENT)
            }
            Err(e) if w.required => Err(e),
            Err(e) => {
                notes.push(format!("{e:#}"));
                Ok(ABSENT)
            }
        }
    };
    let offsets = KernelOffsets {
        skb_dev: get(wanted("sk_buff", "dev", 8, true))?,
        skb_sk: get(wanted("sk_buff", "sk", 8, true))?,
        skb_head: get(wanted("sk_buff", "head", 8, false))?,
        skb_network_header: get(wanted("sk_buff", "network_header", 2, false))?,
        skb_transport_header: get(wanted("sk_buff", "transport_header", 2, false))?,
        dev_ifindex: get(wanted("net_device", "ifindex", 4, false))?,
        dev_net: get(wanted("net_device", "nd_net.net", 8, true))?,
        sk_net: get(wanted("sock", "__sk_common.skc_net.net", 8, true))?,
        net_inum: get(wanted("net", "ns.inum", 4, true))?,
        skb_cb: get(wanted("sk_buff", "cb", 48, false))?,
        tcp_cb_gso_segs: get(wanted("tcp_skb_cb", "tcp_gso_segs", 2, false))?,
        dev_name: get(wanted("net_device", "name", 16, false))?,
        skb_protocol: get(wanted("sk_buff", "protocol", 2, false))?,
        neigh_dev: get(wanted("neighbour", "dev", 8, false))?,
        neigh_nud_state: get(wanted("neighbour", "nud_state", 1, false))?,
        neigh_primary_key: get(flexible("neighbour", "primary_key"))?,
        neigh_tbl: get(wanted("neighbour", "tbl", 8, false))?,
        neigh_table_family: get(wanted("neigh_table", "family", 4, false))?,
    };
    Ok((offsets, notes))
}

/// Loads this kernel's BTF and resolves the offsets, with a sentence a user can act on when the
/// kernel lacks what nettools needs.
pub fn for_running_kernel(btf: &mut Btf) -> Result<(KernelOffsets, Vec<String>)> {
    resolve(btf).context(
        "this kernel's BTF lacks a struct field nettools needs to attribute packets to network \
         namespaces; please report the kernel version (uname -r) to the nettools project",
    )
}

#[cfg(test)]
mod tests {
    use super::super::btf::tests::Builder;
    use super::*;

    /// A miniature kernel: just the structs and fields the probes read.
    fn kernel(with_headers: bool) -> Vec<u8> {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("__u16", 2);
        let u8t = b.int("u8", 1);
        let ns = b.composite(
            false,
            "ns_common",
            24,
            &[("ops", u32t, 0, 0), ("inum", u32t, 128, 0)],
        );
        let net = b.composite(
            false,
            "net",
            200,
            &[("passive", u32t, 0, 0), ("ns", ns, 1024, 0)],
        );
        let netp = b.ptr(net);
        let possible = b.composite(false, "", 8, &[("net", netp, 0, 0)]);
        let possible_t = b.typedef("possible_net_t", possible);
        let name_t = b.array(u8t, 16);
        let dev = b.composite(
            false,
            "net_device",
            2048,
            &[
                ("name", name_t, 0, 0),
                ("ifindex", u32t, 1792, 0),
                ("nd_net", possible_t, 4096, 0),
            ],
        );
        let devp = b.ptr(dev);
        let skc = b.composite(
            false,
            "sock_common",
            136,
            &[("skc_net", possible_t, 384, 0)],
        );
        let sock = b.composite(false, "sock", 800, &[("__sk_common", skc, 0, 0)]);
        let sockp = b.ptr(sock);
        let u8p = b.ptr(u32t);
        let cb = b.array(u8t, 48);
        let mut members = vec![
            ("dev", devp, 128, 0),
            ("sk", sockp, 192, 0),
            ("cb", cb, 320, 0),
            ("head", u8p, 1536, 0),
            ("protocol", u16t, 1440, 0),
        ];
        if with_headers {
            members.push(("network_header", u16t, 1472, 0));
            members.push(("transport_header", u16t, 1456, 0));
        }
        b.composite(false, "sk_buff", 232, &members);
        let segs = b.composite(
            false,
            "",
            4,
            &[("tcp_gso_segs", u16t, 0, 0), ("tcp_gso_size", u16t, 16, 0)],
        );
        let u = b.composite(true, "", 4, &[("tcp_tw_isn", u32t, 0, 0), ("", segs, 0, 0)]);
        b.composite(
            false,
            "tcp_skb_cb",
            48,
            &[
                ("seq", u32t, 0, 0),
                ("end_seq", u32t, 32, 0),
                ("", u, 64, 0),
            ],
        );
        let int = b.int("int", 4);
        let tbl = b.composite(false, "neigh_table", 64, &[("family", int, 0, 0)]);
        let tblp = b.ptr(tbl);
        let key = b.array(u8t, 0);
        b.composite(
            false,
            "neighbour",
            400,
            &[
                ("tbl", tblp, 128, 0),
                ("nud_state", u8t, 800, 0),
                ("dev", devp, 3008, 0),
                ("primary_key", key, 3136, 0),
            ],
        );
        b.build()
    }

    #[test]
    fn resolves_all_offsets() -> Result<()> {
        let mut btf = Btf::parse(&kernel(true))?;
        let (o, notes) = resolve(&mut btf)?;
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((o.skb_dev, o.skb_sk, o.skb_head), (16, 24, 192));
        assert_eq!((o.skb_network_header, o.skb_transport_header), (184, 182));
        assert_eq!(o.skb_protocol, 180);
        assert_eq!(
            (o.dev_ifindex, o.dev_net, o.sk_net, o.net_inum),
            (224, 512, 48, 144)
        );
        Ok(())
    }

    #[test]
    fn optional_fields_missing_are_absent_with_a_note() -> Result<()> {
        let mut btf = Btf::parse(&kernel(false))?;
        let (o, notes) = resolve(&mut btf)?;
        assert_eq!(o.skb_network_header, ABSENT);
        assert_eq!(o.skb_transport_header, ABSENT);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            o.neigh_primary_key, 392,
            "a flexible array has no fixed size"
        );
        Ok(())
    }

    #[test]
    fn missing_required_field_is_an_error() -> Result<()> {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        b.composite(false, "sk_buff", 8, &[("len", u32t, 0, 0)]);
        let mut btf = Btf::parse(&b.build())?;
        assert!(resolve(&mut btf).is_err());
        Ok(())
    }
}

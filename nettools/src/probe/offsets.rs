//! Kernel struct offsets for the probes, resolved from this kernel's BTF at start-up.

use anyhow::{Context as _, Result, bail};
use nettools_common::config::{ABSENT, KernelOffsets};

use super::btf::Btf;

/// A field the probes read: where it lives and how big it must be.
struct Wanted {
    strukt: &'static str,
    path: &'static str,
    size: u32,
    /// Without a required field nettools cannot attribute events to namespaces at all.
    required: bool,
}

const fn wanted(strukt: &'static str, path: &'static str, size: u32, required: bool) -> Wanted {
    Wanted {
        strukt,
        path,
        size,
        required,
    }
}

/// Resolves every offset in [`KernelOffsets`]. Optional fields a kernel lacks are set to
/// `ABSENT` and reported in the returned notes; a missing required field is an error.
pub fn resolve(btf: &mut Btf) -> Result<(KernelOffsets, Vec<String>)> {
    let mut notes = Vec::new();
    let mut get = |w: Wanted| -> Result<u32> {
        match btf.field(w.strukt, w.path) {
            Ok(loc) if loc.size == w.size => Ok(loc.offset),
            Ok(loc) => {
                let msg = format!(
                    "struct {}.{} is {} bytes on this kernel, nettools expects {}",
                    w.strukt, w.path, loc.size, w.size
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
        _pad: 0,
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
        let dev = b.composite(
            false,
            "net_device",
            2048,
            &[("ifindex", u32t, 1792, 0), ("nd_net", possible_t, 4096, 0)],
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
        let mut members = vec![
            ("dev", devp, 128, 0),
            ("sk", sockp, 192, 0),
            ("head", u8p, 1536, 0),
        ];
        if with_headers {
            members.push(("network_header", u16t, 1472, 0));
            members.push(("transport_header", u16t, 1456, 0));
        }
        b.composite(false, "sk_buff", 232, &members);
        b.build()
    }

    #[test]
    fn resolves_all_offsets() -> Result<()> {
        let mut btf = Btf::parse(&kernel(true))?;
        let (o, notes) = resolve(&mut btf)?;
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((o.skb_dev, o.skb_sk, o.skb_head), (16, 24, 192));
        assert_eq!((o.skb_network_header, o.skb_transport_header), (184, 182));
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

//! Ownership of clsact filters (kernels without tcx, or `--tc-mode clsact`). A clsact filter,
//! unlike a tcx link, outlives the process that attached it, so two questions come up:
//!
//! - **Whose is a filter named like nettools'?** Another nettools running on the same veth (an
//!   agent and a `trace`) has its own, which must stay. A filter holds its BPF program; a live
//!   nettools also holds that program through a file descriptor, a dead one does not. So a
//!   filter is stale — its owner provably gone — exactly when no process holds its program
//!   (`prog_id` in no `/proc/PID/fdinfo`), and only such filters are removed.
//! - **Whose is the clsact qdisc?** The process that created it (its add succeeded) removes it
//!   on exit, when no filter is left on either hook; a qdisc that was there before, or that
//!   another program's filters use, stays.

use std::collections::BTreeSet;

use anyhow::{Context as _, Result};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
};

use crate::discover::netlink;

/// The clsact qdisc's handle (`ffff:`) and its two hooks' parents (`ffff:fff2`, `ffff:fff3`).
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff2,
};
const EGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0xfff3,
};

/// A BPF filter on one hook of an interface's clsact qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub ingress: bool,
    /// TC_H_MAJ of `info`: the filter's priority, and its protocol in the low 16 bits.
    pub info: u32,
    pub handle: TcHandle,
    /// The filter's name (the program's, as attached).
    pub name: String,
    /// The program it runs.
    pub prog_id: u32,
}

fn header(ifindex: u32, parent: TcHandle, handle: TcHandle, info: u32) -> TcHeader {
    TcHeader {
        index: ifindex as i32,
        parent,
        handle,
        info,
        ..TcHeader::default()
    }
}

/// The BPF filters on both hooks of `ifindex`'s clsact qdisc (none when it has no clsact).
pub fn filters(ifindex: u32) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    for (ingress, parent) in [(true, INGRESS_PARENT), (false, EGRESS_PARENT)] {
        let msg = TcMessage::from_parts(header(ifindex, parent, TcHandle::UNSPEC, 0), Vec::new());
        let answers = match netlink::exchange(
            RouteNetlinkMessage::GetTrafficFilter(msg),
            NLM_F_DUMP | NLM_F_REQUEST,
        ) {
            Ok(a) => a,
            // No clsact qdisc on this interface: no filters.
            Err(_) => continue,
        };
        for a in answers {
            let RouteNetlinkMessage::NewTrafficFilter(m) = a else {
                continue;
            };
            let mut name = String::new();
            let mut prog_id = 0;
            for attr in &m.attributes {
                if let TcAttribute::Options(options) = attr {
                    for o in options {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = n.clone(),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => prog_id = *id,
                            _ => {}
                        }
                    }
                }
            }
            // A chain's head entry carries no program.
            if prog_id != 0 {
                out.push(Filter {
                    ingress,
                    info: m.header.info,
                    handle: m.header.handle,
                    name,
                    prog_id,
                });
            }
        }
    }
    Ok(out)
}

/// Removes one filter.
pub fn remove(ifindex: u32, f: &Filter) -> Result<()> {
    let parent = if f.ingress {
        INGRESS_PARENT
    } else {
        EGRESS_PARENT
    };
    let msg = TcMessage::from_parts(
        header(ifindex, parent, f.handle, f.info),
        vec![TcAttribute::Kind("bpf".into())],
    );
    netlink::exchange(
        RouteNetlinkMessage::DelTrafficFilter(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .with_context(|| {
        format!(
            "cannot remove the clsact filter {} (ifindex {ifindex})",
            f.name
        )
    })?;
    Ok(())
}

/// Removes `ifindex`'s clsact qdisc.
pub fn remove_qdisc(ifindex: u32) -> Result<()> {
    // The clsact qdisc sits at TC_H_CLSACT (`ffff:fff1`) with handle `ffff:`.
    let msg = TcMessage::from_parts(
        header(ifindex, TcHandle::from(0xffff_fff1_u32), CLSACT_HANDLE, 0),
        vec![TcAttribute::Kind("clsact".into())],
    );
    netlink::exchange(
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .with_context(|| format!("cannot remove the clsact qdisc of ifindex {ifindex}"))?;
    Ok(())
}

/// Ids of the BPF programs some process holds a file descriptor to (`prog_id:` lines of every
/// `/proc/PID/fdinfo/FD`). A process that vanishes while it is read is skipped.
pub fn held_programs() -> BTreeSet<u32> {
    let mut held = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(text) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some(id) =
                super::fdinfo_field(&text, "prog_id").and_then(|id| id.try_into().ok())
            {
                held.insert(id);
            }
        }
    }
    held
}

/// Whether a filter is a nettools one whose owner is gone: named like nettools' programs and
/// running a program no process holds.
pub fn stale(f: &Filter, names: &[&str], held: &BTreeSet<u32>) -> bool {
    names.iter().any(|n| f.name.starts_with(n)) && !held.contains(&f.prog_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_filters_of_gone_owners_are_stale() {
        let f = |name: &str, prog_id| Filter {
            ingress: true,
            info: 0xc000_0300,
            handle: TcHandle { major: 0, minor: 1 },
            name: name.into(),
            prog_id,
        };
        let held: BTreeSet<u32> = [7, 9].into();
        let ours = ["nettools_ingress", "nettools_egress"];
        assert!(stale(&f("nettools_ingress", 5), &ours, &held));
        // Another nettools (an agent) holds its program: its filter stays.
        assert!(!stale(&f("nettools_ingress", 7), &ours, &held));
        // Not nettools': never touched.
        assert!(!stale(&f("cilium_from_container", 5), &ours, &held));
    }
}

//! `nettools doctor`: every check, one line each, with what to do about what is missing.

use crate::{
    collect::kallsyms::Kallsyms,
    preflight,
    probe::{self, LoadOptions, btf::Btf, drops::DropReasons, offsets, tracefs},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// Works, with a limitation worth knowing.
    Info,
    /// nettools cannot trace until this is fixed.
    Fail,
}

struct Check {
    status: Status,
    what: &'static str,
    detail: String,
}

fn check(status: Status, what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        status,
        what,
        detail: detail.into(),
    }
}

/// Runs every check and prints the results; returns whether nettools can trace here.
pub fn run() -> bool {
    let (release, version) = preflight::kernel_release();
    let checks = checks(version);
    println!(
        "nettools doctor: Linux {release} ({})",
        std::env::consts::ARCH
    );
    for c in &checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Info => "note",
            Status::Fail => "FAIL",
        };
        println!("  {tag}  {}: {}", c.what, c.detail);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed == 0 {
        println!("verdict: nettools can trace on this machine");
        true
    } else {
        println!("verdict: {failed} problem(s) above stop nettools from tracing here");
        false
    }
}

fn checks(version: (u32, u32)) -> Vec<Check> {
    let mut out = Vec::new();
    let caps = preflight::effective_capabilities();
    let privileged = preflight::privileged(caps);
    out.push(if privileged {
        check(Status::Ok, "privileges", "can load and attach eBPF programs")
    } else {
        check(
            Status::Fail,
            "privileges",
            "not root and missing CAP_BPF/CAP_PERFMON/CAP_NET_ADMIN: run with sudo or as a privileged container",
        )
    });

    let mut btf_ok = false;
    let mut reasons_check = None;
    let btf_check = match Btf::from_sys_fs() {
        Err(e) => check(Status::Fail, "BTF", e.to_string()),
        Ok(mut btf) => match offsets::resolve(&mut btf) {
            Err(e) => check(Status::Fail, "BTF", format!("{e:#}")),
            Ok((_, notes)) => {
                btf_ok = true;
                let reasons = DropReasons::from_btf(&btf);
                let mut detail =
                    "/sys/kernel/btf/vmlinux has every struct field the probes read".to_string();
                if !notes.is_empty() {
                    detail = format!("{detail} except: {}", notes.join("; "));
                }
                reasons_check = Some(if reasons.available() {
                    check(
                        Status::Ok,
                        "drop reasons",
                        "named from this kernel's enum skb_drop_reason",
                    )
                } else {
                    check(
                        Status::Info,
                        "drop reasons",
                        "this kernel has none (Linux < 5.17): drops are reported without a reason",
                    )
                });
                check(
                    if notes.is_empty() {
                        Status::Ok
                    } else {
                        Status::Info
                    },
                    "BTF",
                    detail,
                )
            }
        },
    };
    out.push(btf_check);
    out.extend(reasons_check);

    out.push(match tracefs::root() {
        Err(e) => check(Status::Fail, "tracefs", e.to_string()),
        Ok(root) => check(Status::Ok, "tracefs", root.display().to_string()),
    });
    // The drop probe's raw tracepoint: which arguments this kernel passes.
    let format = tracefs::format("skb", "kfree_skb");
    let layout = Btf::from_sys_fs().and_then(|btf| {
        probe::drops::kfree_skb_layout(&btf, format.as_ref().ok(), &DropReasons::from_btf(&btf))
    });
    out.push(match (layout, format) {
        (Err(e), _) | (_, Err(e)) => check(Status::Fail, "drop probe", format!("{e:#}")),
        (Ok(l), Ok(_)) if l.has_reason != 0 => check(
            Status::Ok,
            "drop probe",
            format!(
                "raw tracepoint kfree_skb with a reason field (skb, location, reason{})",
                if l.has_rx_sk != 0 { ", rx_sk" } else { "" }
            ),
        ),
        (Ok(_), Ok(_)) => check(
            Status::Info,
            "drop probe",
            "kfree_skb has no reason field on this kernel (skb, location)",
        ),
    });

    out.push(if preflight::has_tcx(version) {
        check(
            Status::Ok,
            "tcx",
            "tc programs attach as BPF links (Linux >= 6.6)",
        )
    } else {
        check(
            Status::Info,
            "tcx",
            "not available before Linux 6.6: tc programs use clsact filters, removed on exit",
        )
    });
    out.push(if preflight::bpffs_mounted() {
        check(Status::Ok, "bpffs", "mounted at /sys/fs/bpf")
    } else {
        check(
            Status::Info,
            "bpffs",
            "not mounted; nettools does not need it (mount -t bpf bpf /sys/fs/bpf to inspect programs with bpftool)",
        )
    });
    out.push(match Kallsyms::load() {
        Ok(k) if !k.is_empty() => check(Status::Ok, "kallsyms", "kernel locations will be named"),
        Ok(_) => check(
            Status::Info,
            "kallsyms",
            "addresses are hidden (kptr_restrict): locations are shown as addresses; run as root",
        ),
        Err(e) => check(Status::Info, "kallsyms", e.to_string()),
    });

    if privileged && btf_ok {
        let loaded = probe::load(&LoadOptions {
            probes: probe::ProbeKind::ALL.to_vec(),
            all_namespaces: false,
            kernel_debug: false,
            ring_buffer_bytes: 1 << 16,
            transit_sample_shift: 0,
            stacks: true,
        })
        .and_then(|mut l| {
            // Loading (not attaching) runs the verifier on every probe.
            l.verify_all()
        });
        out.push(match loaded {
            Ok(()) => check(
                Status::Ok,
                "eBPF programs",
                "every probe loads and passes the verifier",
            ),
            Err(e) => check(Status::Fail, "eBPF programs", format!("{e:#}")),
        });
    }
    out
}

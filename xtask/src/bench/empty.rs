//! The floor: programs that return at once, attached exactly where nettools' programs are, so
//! the kernel's run-time statistics of the same packets (and drops) give what merely running a
//! program there costs, in the same run.
//!
//! Two instructions each, loaded and attached through the bpf(2) and perf_event_open(2) system
//! calls directly (xtask cannot depend on nettools or build eBPF itself):
//! - a tc classifier `r0 = TC_ACT_UNSPEC; exit`, attached as a tcx link (`BPF_LINK_CREATE`,
//!   `BPF_TCX_INGRESS`/`BPF_TCX_EGRESS`) like nettools' own on kernels with tcx;
//! - a tracepoint program `r0 = 0; exit` on `skb:kfree_skb` (perf event + `PERF_EVENT_IOC_SET_BPF`).
//!
//! Everything is file descriptors owned by this value: the kernel detaches and frees it all when
//! the bench drops it or dies.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

use super::kernel::bpf;

// uapi constants (include/uapi/linux/bpf.h, perf_event.h): stable ABI, not kernel layouts.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// Names of the empty tc programs (ingress, egress), as `bpftool prog show` and the cost tables
/// print them.
pub const TC_INGRESS: &str = "empty_ingress";
pub const TC_EGRESS: &str = "empty_egress";
/// Name of the empty tracepoint program (`skb:kfree_skb`, which fills a trace record first).
pub const TP_NAME: &str = "empty_kfree_skb";
/// Name of the empty raw tracepoint program (`kfree_skb`, the hook nettools' drop probe uses).
pub const RAW_TP_NAME: &str = "empty_raw_kfree";
/// Name of the empty tracepoint program on `sock:inet_sock_set_state` (the connections probe's
/// per-connection hook).
pub const SET_STATE_NAME: &str = "empty_set_state";
/// Name of the empty tracepoint program on `tcp:tcp_probe` (every received TCP segment).
pub const TCP_PROBE_NAME: &str = "empty_tcp_probe";

/// `r0 = imm; exit`, as two eBPF instructions.
fn return_imm(imm: i32) -> [u64; 2] {
    // mov64 r0, imm: opcode 0xb7 (BPF_ALU64 | BPF_MOV | BPF_K), dst r0, imm in the high word.
    let mov = 0xb7u64 | (u64::from(imm as u32) << 32);
    // exit: opcode 0x95.
    [mov, 0x95]
}

fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Loads a program of `prog_type` that returns `imm`.
fn load(prog_type: u32, imm: i32, name: &str) -> Result<OwnedFd> {
    let insns = return_imm(imm);
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    // union bpf_attr, BPF_PROG_LOAD: prog_type u32 @0, insn_cnt u32 @4, insns u64 @8,
    // license u64 @16, log_level u32 @24, log_size u32 @28, log_buf u64 @32, kern_version u32
    // @40, prog_flags u32 @44, prog_name [16] @48.
    put(&mut attr, 0, &prog_type.to_ne_bytes());
    put(&mut attr, 4, &(insns.len() as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    put(&mut attr, 48, &prog_name);
    bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("cannot load the empty program {name}"))
}

/// Empty programs attached next to nettools' (dropped: detached).
#[derive(Default)]
pub struct Empty {
    programs: Vec<OwnedFd>,
    attachments: Vec<OwnedFd>,
}

impl Empty {
    /// An empty tc program on both hooks of each interface (tcx links), one per direction like
    /// nettools' own.
    pub fn attach_tc(&mut self, ifnames: &[&str]) -> Result<()> {
        for (name, attach_type) in [(TC_INGRESS, BPF_TCX_INGRESS), (TC_EGRESS, BPF_TCX_EGRESS)] {
            let prog = load(BPF_PROG_TYPE_SCHED_CLS, -1, name)?;
            for ifname in ifnames {
                let ifindex = ifindex(ifname)?;
                let mut attr = [0u8; 128];
                // BPF_LINK_CREATE: prog_fd u32 @0, target_ifindex u32 @4, attach_type u32 @8,
                // flags u32 @12 (0: after the programs already there).
                put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
                put(&mut attr, 4, &ifindex.to_ne_bytes());
                put(&mut attr, 8, &attach_type.to_ne_bytes());
                let link = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
                    format!("cannot attach the empty tc program to {ifname} (tcx, Linux 6.6+)")
                })?;
                self.attachments.push(link);
            }
            self.programs.push(prog);
        }
        Ok(())
    }

    /// The empty tracepoint program on `skb:kfree_skb`.
    pub fn attach_kfree_skb(&mut self) -> Result<()> {
        self.attach_tracepoint("skb", "kfree_skb", TP_NAME)
    }

    /// The empty tracepoint program on `sock:inet_sock_set_state`.
    pub fn attach_set_state(&mut self) -> Result<()> {
        self.attach_tracepoint("sock", "inet_sock_set_state", SET_STATE_NAME)
    }

    /// The empty tracepoint program on `tcp:tcp_probe`.
    pub fn attach_tcp_probe(&mut self) -> Result<()> {
        self.attach_tracepoint("tcp", "tcp_probe", TCP_PROBE_NAME)
    }

    /// An empty tracepoint program named `name` on `category:event`.
    fn attach_tracepoint(&mut self, category: &str, tracepoint: &str, name: &str) -> Result<()> {
        let prog = load(BPF_PROG_TYPE_TRACEPOINT, 0, name)?;
        let id_file = format!("/sys/kernel/tracing/events/{category}/{tracepoint}/id");
        let id: u64 = std::fs::read_to_string(&id_file)
            .with_context(|| format!("cannot read {id_file}"))?
            .trim()
            .parse()
            .with_context(|| format!("{id_file} is not a number"))?;
        let mut attr = [0u8; 128];
        // perf_event_attr: type u32 @0, size u32 @4, config u64 @8, sample_period u64 @16.
        put(&mut attr, 0, &PERF_TYPE_TRACEPOINT.to_ne_bytes());
        put(&mut attr, 4, &128u32.to_ne_bytes());
        put(&mut attr, 8, &id.to_ne_bytes());
        put(&mut attr, 16, &1u64.to_ne_bytes());
        // One event on CPU 0: a tracepoint's BPF program runs on every CPU regardless.
        // SAFETY: attr is a zero-padded perf_event_attr of the size it declares.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1 as libc::pid_t,
                0 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "cannot open a perf event on {category}:{tracepoint}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a new file descriptor, owned from here on.
        let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: ioctls on our perf event with a program fd / no argument.
        let attached = unsafe {
            libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) == 0
                && libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) == 0
        };
        if !attached {
            bail!(
                "cannot attach the empty program to {category}:{tracepoint}: {}",
                std::io::Error::last_os_error()
            );
        }
        self.attachments.push(event);
        self.programs.push(prog);
        Ok(())
    }

    /// The empty raw tracepoint program on `kfree_skb`.
    pub fn attach_raw_kfree_skb(&mut self) -> Result<()> {
        let prog = load(BPF_PROG_TYPE_RAW_TRACEPOINT, 0, RAW_TP_NAME)?;
        let name = b"kfree_skb\0";
        let mut attr = [0u8; 128];
        // BPF_RAW_TRACEPOINT_OPEN: name u64 @0, prog_fd u32 @8.
        put(&mut attr, 0, &(name.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 8, &(prog.as_raw_fd() as u32).to_ne_bytes());
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .context("cannot attach the empty program to the kfree_skb raw tracepoint")?;
        self.attachments.push(link);
        self.programs.push(prog);
        Ok(())
    }

    /// Run-time statistics of the empty programs, by name (they are this process's).
    pub fn stats(&self) -> BTreeMap<String, super::kernel::ProgStats> {
        super::kernel::prog_stats(std::process::id() as i32)
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| {
                [
                    TC_INGRESS,
                    TC_EGRESS,
                    TP_NAME,
                    RAW_TP_NAME,
                    SET_STATE_NAME,
                    TCP_PROBE_NAME,
                ]
                .contains(&name.as_str())
            })
            .collect()
    }
}

/// The index of an interface of this namespace.
pub fn ifindex(ifname: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{ifname}/ifindex");
    std::fs::read_to_string(&path)
        .with_context(|| format!("no interface {ifname}"))?
        .trim()
        .parse()
        .with_context(|| format!("{path} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::return_imm;

    #[test]
    fn encodes_return_immediate() {
        // mov64 r0, -1 ; exit
        assert_eq!(return_imm(-1), [0xffff_ffff_0000_00b7, 0x95]);
        assert_eq!(return_imm(0), [0xb7, 0x95]);
    }
}

//! What this kernel and these privileges allow: shared by `nettools doctor`, which reports every
//! check, and `nettools trace`, which stops at the first one it cannot do without.

use std::path::Path;

use anyhow::{Result, bail};

/// Linux capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Whether these capabilities can load and attach nettools' programs.
pub fn privileged(caps: u64) -> bool {
    has(caps, CAP_SYS_ADMIN)
        || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON) && has(caps, CAP_NET_ADMIN))
}

/// Fails with a sentence saying what to do when the process cannot load eBPF programs.
pub fn require_privileges() -> Result<()> {
    if privileged(effective_capabilities()) {
        return Ok(());
    }
    bail!(
        "nettools needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load its eBPF probes: \
         run it with sudo, or as a privileged container"
    )
}

/// Whether the kernel exposes its BTF.
pub fn has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// Kernel release (`uname -r`) and its (major, minor).
pub fn kernel_release() -> (String, (u32, u32)) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let version = parse_version(&release);
    (release, version)
}

fn parse_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// tcx (BPF links on tc hooks) exists from Linux 6.6.
pub fn has_tcx(version: (u32, u32)) -> bool {
    version >= (6, 6)
}

/// Whether bpffs is mounted at /sys/fs/bpf.
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                    && l.split_whitespace().nth(2) == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// Raises RLIMIT_MEMLOCK for kernels that still account BPF memory to it (before 5.11).
/// Newer kernels account to the cgroup, so failure is not an error.
pub fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap_or(0);
        assert!(privileged(caps));
        assert!(!privileged(0));
        let bpf_only = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        assert!(!privileged(bpf_only), "CAP_NET_ADMIN is needed for tc");
        assert!(privileged(bpf_only | (1 << CAP_NET_ADMIN)));
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.18.44-fc-v669"), (6, 18));
        assert_eq!(parse_version("5.10.0-32-cloud-amd64"), (5, 10));
        assert_eq!(parse_version(""), (0, 0));
        assert!(has_tcx((6, 6)) && !has_tcx((6, 1)));
    }
}

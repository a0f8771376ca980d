//! The kernel's own figures: BPF program run-time statistics, and what this machine is.

use std::{collections::BTreeMap, os::fd::FromRawFd as _, os::fd::OwnedFd, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::process::output;

/// `BPF_ENABLE_STATS` (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics switched on for as long as this value lives.
///
/// This is the `BPF_ENABLE_STATS` syscall rather than writing `kernel.bpf_stats_enabled`: the
/// kernel counts the holders of this file descriptor and turns the statistics off again when the
/// last one is closed, also when the bench is killed, so the setting is restored whatever
/// happens (the sysctl shows 1 meanwhile). It fails on kernels before 5.8.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self> {
        // union bpf_attr for BPF_ENABLE_STATS is one u32 (`type`); pass the usual padded size.
        let mut attr = [0u8; 128];
        attr[..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        Ok(Self {
            _fd: bpf(BPF_ENABLE_STATS, &mut attr).context("BPF_ENABLE_STATS failed")?,
        })
    }
}

/// The bpf(2) system call with a zero-padded `union bpf_attr`: its return value.
pub fn bpf_call(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr large enough for the commands the bench uses.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// bpf(2) for a command that returns a new file descriptor.
pub fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: a new file descriptor the kernel just returned, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `kernel.bpf_stats_enabled` as it reads now.
pub fn stats_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One program's cumulative statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// The `key:\tvalue` lines of every BPF file descriptor a process holds (`/proc/PID/fdinfo`):
/// programs carry `prog_id`, `run_cnt`, `run_time_ns`; maps `map_id`, `memlock`.
fn bpf_fdinfo(pid: i32, marker: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        if fields.contains_key(marker) {
            found.push(fields);
        }
    }
    Ok(found)
}

/// Program names by id (`bpftool prog show`; fdinfo has no names).
fn prog_names() -> Result<BTreeMap<u64, String>> {
    let out = output(Command::new("bpftool").args(["--json", "prog", "show"]))?;
    let progs: Value = serde_json::from_str(&out).context("bpftool's JSON does not parse")?;
    Ok(progs
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
        .collect())
}

/// Statistics of the programs a process holds, by program name (a tc program attached to two
/// veths is one program with two links).
pub fn prog_stats(pid: i32) -> Result<BTreeMap<String, ProgStats>> {
    let names = prog_names()?;
    let num = |f: &BTreeMap<String, String>, k: &str| {
        f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    };
    let mut stats: BTreeMap<String, ProgStats> = BTreeMap::new();
    for f in bpf_fdinfo(pid, "prog_id")? {
        let id = num(&f, "prog_id");
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("prog {id}"));
        let s = stats.entry(name).or_default();
        s.run_cnt += num(&f, "run_cnt");
        s.run_time_ns += num(&f, "run_time_ns");
    }
    Ok(stats)
}

/// Kernel memory charged for each map a process holds (`memlock` in fdinfo), largest first:
/// (name, bytes).
pub fn map_bytes(pid: i32) -> Result<Vec<(String, u64)>> {
    let out = Command::new("bpftool")
        .args(["--json", "map", "show"])
        .output()
        .context("cannot run bpftool")?;
    let all: Value =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON does not parse")?;
    let names: BTreeMap<u64, String> = all
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| Some((m["id"].as_u64()?, m["name"].as_str()?.to_string())))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut maps: Vec<(String, u64)> = bpf_fdinfo(pid, "map_id")?
        .iter()
        .filter_map(|f| {
            let id: u64 = f.get("map_id")?.parse().ok()?;
            let bytes: u64 = f.get("memlock")?.parse().ok()?;
            seen.insert(id).then(|| {
                (
                    names
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| format!("map {id}")),
                    bytes,
                )
            })
        })
        .collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.1));
    Ok(maps)
}

/// Raw (key, value) entries by map name.
pub type MapEntries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// The entries of every hash map a process holds (and of its slot tables `IF_SLOTS` and
/// `TRACED_NETNS_DIRECT`, whose used entries are those with a non-zero value), by map name: each
/// entry's key and (first CPU's) value as raw bytes. Other arrays are fixed-size and left out.
pub fn map_entries(pid: i32) -> Result<MapEntries> {
    let out = output(Command::new("bpftool").args(["--json", "map", "show"]))?;
    let all: Value = serde_json::from_str(&out).context("bpftool's JSON does not parse")?;
    let ours: std::collections::BTreeSet<u64> = bpf_fdinfo(pid, "map_id")?
        .iter()
        .filter_map(|f| f.get("map_id")?.parse().ok())
        .collect();
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    let mut maps = Vec::new();
    for m in all.as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(name), Some(ty)) =
            (m["id"].as_u64(), m["name"].as_str(), m["type"].as_str())
        else {
            continue;
        };
        let slot_table = name == "IF_SLOTS" || name == "TRACED_NETNS_DI";
        if !ours.contains(&id) || !(ty.contains("hash") || slot_table) {
            continue;
        }
        let dump = output(
            Command::new("bpftool")
                .args(["--json", "map", "dump", "id"])
                .arg(id.to_string()),
        )?;
        let entries: Value = serde_json::from_str(&dump)
            .with_context(|| format!("bpftool's dump of map {name} does not parse"))?;
        let mut kept = Vec::new();
        for e in entries.as_array().map(Vec::as_slice).unwrap_or_default() {
            let key = bytes(&e["key"]);
            // Per-CPU maps: the first CPU's value.
            let value = if e["values"].is_array() {
                bytes(&e["values"][0]["value"])
            } else {
                bytes(&e["value"])
            };
            if slot_table && value.iter().all(|b| *b == 0) {
                continue;
            }
            kept.push((key, value));
        }
        maps.push((name.to_string(), kept));
    }
    maps.sort();
    Ok(maps)
}

/// What this machine is, for the record.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
            memory_gib,
        }
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Busy and total jiffies of all CPUs (from /proc/stat), to tell how busy the machine was.
pub fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

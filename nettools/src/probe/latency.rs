//! The latency probes' userspace side: expiring requests that waited past the timeout in the
//! kernel's pairing maps (handshakes, DNS, ICMP), and accounting for every entry so evictions
//! are counted, not guessed.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHashMap, MapData},
};
use nettools_common::{
    counters,
    latency::{DnsKey, DnsPending, Pending, PendingKey, TransitKey, TransitValue},
    traffic::{NeighProbeKey, NeighProbeValue},
};

/// Entries that waited past the timeout, removed from the maps.
#[derive(Default)]
pub struct Swept {
    pub handshakes: Vec<(PendingKey, Pending)>,
    pub icmp: Vec<(PendingKey, Pending)>,
    pub dns: Vec<(DnsKey, DnsPending)>,
}

/// Entries still waiting (younger than the timeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    pub handshakes: u64,
    pub dns: u64,
    pub icmp: u64,
}

/// Removes from `map` the entries whose timestamp is older than `deadline_ns`, returning them
/// and how many younger ones remain. An entry the kernel answers meanwhile is left to it.
fn sweep_map<K: Pod, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    deadline_ns: u64,
    ts: impl Fn(&V) -> u64,
) -> Result<(Vec<(K, V)>, u64)> {
    let Some(map) = ebpf.map_mut(name) else {
        return Ok((Vec::new(), 0));
    };
    let mut map: BpfHashMap<&mut MapData, K, V> =
        BpfHashMap::try_from(map).with_context(|| format!("{name} is not a hash map"))?;
    let mut old = Vec::new();
    let mut young = 0;
    for item in map.iter() {
        let Ok((k, v)) = item else {
            // The kernel removed the entry while we iterated.
            continue;
        };
        if ts(&v) < deadline_ns {
            old.push((k, v));
        } else {
            young += 1;
        }
    }
    let mut removed = Vec::with_capacity(old.len());
    for (k, v) in old {
        if map.remove(&k).is_ok() {
            removed.push((k, v));
        }
    }
    Ok((removed, young))
}

/// Expires what waited longer than `timeout_ns` at kernel time `now_ns`.
pub fn sweep(ebpf: &mut Ebpf, now_ns: u64, timeout_ns: u64) -> Result<(Swept, Waiting)> {
    let deadline = now_ns.saturating_sub(timeout_ns);
    let (handshakes, hw) =
        sweep_map::<PendingKey, Pending>(ebpf, "HANDSHAKES", deadline, |v| v.ts_ns)?;
    let (icmp, iw) = sweep_map::<PendingKey, Pending>(ebpf, "ICMP_PENDING", deadline, |v| v.ts_ns)?;
    let (dns, dw) = sweep_map::<DnsKey, DnsPending>(ebpf, "DNS_PENDING", deadline, |v| v.ts_ns)?;
    Ok((
        Swept {
            handshakes,
            icmp,
            dns,
        },
        Waiting {
            handshakes: hw,
            dns: dw,
            icmp: iw,
        },
    ))
}

/// Entries of one pairing map: how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapAccount {
    pub inserted: u64,
    /// Paired (or reset) by the kernel.
    pub answered: u64,
    /// Expired by userspace after the timeout.
    pub expired: u64,
    /// Still in the map at the end.
    pub remaining: u64,
    /// Pushed out by the LRU when the map was full: inserted − answered − expired − remaining.
    pub evicted: u64,
}

impl MapAccount {
    pub fn new(inserted: u64, answered: u64, expired: u64, remaining: u64) -> Self {
        Self {
            inserted,
            answered,
            expired,
            remaining,
            evicted: inserted.saturating_sub(answered + expired + remaining),
        }
    }
}

/// Counts the entries left in a pairing map (an error names the map the object lacks).
fn count<K: Pod, V: Pod>(ebpf: &Ebpf, name: &str) -> Result<u64> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("the eBPF object has no {name} map"))?;
    let m = BpfHashMap::<&MapData, K, V>::try_from(map)
        .with_context(|| format!("the {name} map is not the hash map nettools expects"))?;
    Ok(m.keys().filter(Result::is_ok).count() as u64)
}

/// [`count`] for a per-CPU map (`NEIGH_PROBES`).
fn count_per_cpu<K: Pod, V: Pod>(ebpf: &Ebpf, name: &str) -> Result<u64> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("the eBPF object has no {name} map"))?;
    let m = aya::maps::PerCpuHashMap::<&MapData, K, V>::try_from(map)
        .with_context(|| format!("the {name} map is not the per-CPU hash map nettools expects"))?;
    Ok(m.keys().filter(Result::is_ok).count() as u64)
}

/// Counts of pairing-map entries userspace expired after the timeout, per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expired {
    pub handshakes: u64,
    pub dns: u64,
    pub icmp: u64,
}

/// How each pairing map's entries ended, from the kernel's counters and what userspace expired.
pub fn accounts(
    ebpf: &Ebpf,
    c: &[u64; counters::COUNT as usize],
    expired: &Expired,
) -> Result<Accounts> {
    let at = |i: u32| c[i as usize];
    Ok(Accounts {
        handshakes: MapAccount::new(
            at(counters::HANDSHAKE_INSERTED),
            at(counters::HANDSHAKE_REMOVED),
            expired.handshakes,
            count::<PendingKey, Pending>(ebpf, "HANDSHAKES")?,
        ),
        dns: MapAccount::new(
            at(counters::DNS_INSERTED),
            at(counters::DNS_REMOVED),
            expired.dns,
            count::<DnsKey, DnsPending>(ebpf, "DNS_PENDING")?,
        ),
        icmp: MapAccount::new(
            at(counters::ICMP_INSERTED),
            at(counters::ICMP_REMOVED),
            expired.icmp,
            count::<PendingKey, Pending>(ebpf, "ICMP_PENDING")?,
        ),
        transit: MapAccount::new(
            at(counters::TRANSIT_INSERTED),
            at(counters::TRANSIT_REMOVED),
            0,
            count::<TransitKey, TransitValue>(ebpf, "TRANSIT")?,
        ),
        neighbour_lookups: MapAccount::new(
            at(counters::NEIGH_PROBES_INSERTED),
            0,
            0,
            count_per_cpu::<NeighProbeKey, NeighProbeValue>(ebpf, "NEIGH_PROBES")?,
        ),
    })
}

/// Every pairing map's account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounts {
    pub handshakes: MapAccount,
    pub dns: MapAccount,
    pub icmp: MapAccount,
    /// Packets followed through the host: `remaining` and `evicted` are packets that left a
    /// traced workload for somewhere untraced (or were not seen arriving).
    pub transit: MapAccount,
    /// ARP/NDP lookups seen on veths (kept for the whole trace; `evicted` ones are forgotten).
    pub neighbour_lookups: MapAccount,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_is_unaccounted_for() {
        let a = MapAccount::new(100, 60, 10, 5);
        assert_eq!(a.evicted, 25);
        assert_eq!(MapAccount::new(3, 3, 0, 0).evicted, 0);
        assert_eq!(MapAccount::new(3, 4, 0, 0).evicted, 0, "never negative");
    }
}

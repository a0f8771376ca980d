//! The host side of a workload's veth: the interface in this (the host's) namespace whose peer
//! is inside the workload's namespace. Found through netlink (IFLA_LINK / IFLA_LINK_NETNSID), the
//! way `ip -d link` knows it, and checked from both ends.

use std::{net::IpAddr, path::Path};

use anyhow::{Result, anyhow};

use super::netlink::{self, Link};

/// A workload's interface and its host-side peer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostVeth {
    /// Name and index of the host-side end (where nettools attaches its tc programs).
    pub name: String,
    pub ifindex: u32,
    /// The bridge the host end is enslaved to, if any.
    pub bridge: Option<String>,
    /// Name and index of the end inside the workload's namespace (`eth0`, …).
    pub inner_name: String,
    pub inner_ifindex: u32,
}

/// What the workload's namespace looks like from inside.
#[derive(Clone, Debug, Default)]
pub struct Inside {
    pub links: Vec<Link>,
    pub addresses: Vec<(u32, IpAddr, u8)>,
}

/// Dumps links and addresses inside the namespace at `netns_path`.
pub fn inside(netns_path: &Path) -> Result<Inside> {
    super::enter::in_netns(netns_path, || -> Result<Inside> {
        Ok(Inside {
            links: netlink::links()?,
            addresses: netlink::addresses()?,
        })
    })?
    .map_err(|e| {
        anyhow!(
            "cannot list the interfaces in {}: {e:#}",
            netns_path.display()
        )
    })
}

/// Pairs the workload's veths with their host ends, given both sides' link lists.
pub fn pair(inside: &[Link], host: &[Link]) -> Vec<HostVeth> {
    let mut out = Vec::new();
    for inner in inside.iter().filter(|l| l.kind.as_deref() == Some("veth")) {
        // A peer in another namespace has a link-netnsid; without one the peer is local.
        let (Some(peer), Some(_)) = (inner.peer_index, inner.peer_netnsid) else {
            continue;
        };
        // The host link must be a veth that points back at the inner end.
        let Some(h) = host.iter().find(|h| {
            h.index == peer
                && h.kind.as_deref() == Some("veth")
                && h.peer_index == Some(inner.index)
                && h.peer_netnsid.is_some()
        }) else {
            continue;
        };
        out.push(HostVeth {
            name: h.name.clone(),
            ifindex: h.index,
            bridge: h
                .master
                .and_then(|m| host.iter().find(|b| b.index == m))
                .map(|b| b.name.clone()),
            inner_name: inner.name.clone(),
            inner_ifindex: inner.index,
        });
    }
    out
}

/// The host-side veths of the workload whose namespace is at `netns_path`.
pub fn host_veths(netns_path: &Path) -> Result<Vec<HostVeth>> {
    host_veths_among(netns_path, &netlink::links()?)
}

/// The same, given the host's links (dumped once for many workloads: on a node with hundreds of
/// pods, one dump per pod made finding every veth quadratic).
pub fn host_veths_among(netns_path: &Path, host: &[Link]) -> Result<Vec<HostVeth>> {
    let inside = inside(netns_path)?;
    Ok(pair(&inside.links, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: &str, peer: Option<u32>, nsid: Option<i32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            peer_index: peer,
            peer_netnsid: nsid,
            master: None,
        }
    }

    #[test]
    fn pairs_only_reciprocal_veths() {
        // Two pods both have eth0 = ifindex 2; only the host veth pointing back at the
        // right index with a netnsid is theirs.
        let inside = vec![
            link(1, "lo", "", None, None),
            link(2, "eth0", "veth", Some(7), Some(0)),
            link(3, "veth-local", "veth", Some(4), None),
        ];
        let mut host_a = link(7, "vethA", "veth", Some(2), Some(3));
        host_a.master = Some(5);
        let host = vec![
            link(5, "cni0", "bridge", None, None),
            link(6, "vethB", "veth", Some(2), Some(4)),
            host_a,
            link(8, "eth0", "device", None, None),
        ];
        let found = pair(&inside, &host);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "vethA");
        assert_eq!(found[0].ifindex, 7);
        assert_eq!(found[0].bridge.as_deref(), Some("cni0"));
        assert_eq!(
            (found[0].inner_name.as_str(), found[0].inner_ifindex),
            ("eth0", 2)
        );

        // A host link at the right index that does not point back is not the peer.
        let wrong = vec![link(7, "other", "veth", Some(9), Some(3))];
        assert!(pair(&inside, &wrong).is_empty());
    }
}

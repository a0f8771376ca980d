//! A small synchronous rtnetlink client: link and address dumps of the network namespace the
//! calling thread is in (enter another one with `enter::in_netns`).

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A network interface as rtnetlink describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `veth`, `bridge`, … (IFLA_INFO_KIND), when the kernel says.
    pub kind: Option<String>,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, as an id local to this namespace.
    pub peer_netnsid: Option<i32>,
    /// IFLA_MASTER: the bridge (or bond) this link is enslaved to.
    pub master: Option<u32>,
}

/// Sends one dump request and collects the answers.
fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    exchange(request, NLM_F_DUMP | NLM_F_REQUEST)
}

/// Sends one request with `flags` and collects the answers until the end of a dump or the
/// kernel's acknowledgement (with `NLM_F_ACK`).
pub(crate) fn exchange(
    request: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("cannot open a netlink socket")?;
    socket.bind_auto().context("cannot bind a netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("cannot connect a netlink socket")?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    packet.header.flags = flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket
        .send(&buf[..], 0)
        .context("cannot send a netlink request")?;

    let mut out = Vec::new();
    let mut receive = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut receive[..], 0)
            .context("cannot read the netlink answer")?;
        let mut offset = 0;
        while offset < size {
            let msg: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&receive[offset..size])
                    .context("cannot decode a netlink message")?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    bail!("the kernel refused a netlink request: {e}")
                }
                // An acknowledgement: the request is done.
                NetlinkPayload::Error(_) => return Ok(out),
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// Every link of the current namespace.
pub fn links() -> Result<Vec<Link>> {
    let msgs = dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from(&l)),
            _ => None,
        })
        .collect())
}

fn link_from(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        ..Default::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Link(i) => link.peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind_name(kind));
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Every address of the current namespace, as (ifindex, address, prefix length).
pub fn addresses() -> Result<Vec<(u32, IpAddr, u8)>> {
    let msgs = dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => {
                let addr = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((a.header.index, addr, a.header.prefix_len))
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_this_namespace() -> Result<()> {
        let links = links()?;
        let lo = links
            .iter()
            .find(|l| l.name == "lo")
            .context("no loopback")?;
        assert_eq!(lo.index, 1);
        let addrs = addresses()?;
        assert!(
            addrs.iter().any(|(i, a, _)| *i == 1 && a.is_loopback()),
            "{addrs:?}"
        );
        Ok(())
    }
}

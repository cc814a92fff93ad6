//! Interface discovery over rtnetlink: the links present at start, then every link that appears
//! or goes, in the agent's network namespace.
//!
//! Takes: nothing but the netns the agent runs in. Gives: [`LinkEvent`]s on a channel. Must never:
//! attach anything itself (capture decides), or poll (events arrive as the kernel sends them).

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use rtnetlink::{MulticastGroup, new_multicast_connection};
use tokio::sync::mpsc;

use crate::model::IfaceRole;

/// A link appeared (or was listed at start), or went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link exists with this name and role.
    Present {
        /// ifindex.
        index: u32,
        /// Name.
        name: String,
        /// Role, from the link kind.
        role: IfaceRole,
    },
    /// The link was deleted.
    Gone {
        /// ifindex.
        index: u32,
    },
    /// The initial listing is complete.
    Listed,
}

/// Subscribes to link events, lists the current links, and forwards both.
pub fn watch() -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    // Subscribe before listing, so a link created in between is not missed.
    let (conn, handle, mut messages) = new_multicast_connection(&[MulticastGroup::Link])?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut links = handle.link().get().execute();
        loop {
            match links.try_next().await {
                Ok(Some(msg)) => {
                    if let Some(ev) = present(&msg) {
                        let _ = tx.send(ev);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(message = "Listing network links failed.", %error);
                    break;
                }
            }
        }
        if tx.send(LinkEvent::Listed).is_err() {
            return;
        }
        while let Some((msg, _)) = messages.next().await {
            let ev = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => present(&m),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    Some(LinkEvent::Gone { index: m.header.index })
                }
                _ => None,
            };
            if let Some(ev) = ev
                && tx.send(ev).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

fn present(msg: &LinkMessage) -> Option<LinkEvent> {
    let mut name = None;
    let mut role = IfaceRole::Host;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(InfoKind::Veth | InfoKind::Netkit) = info {
                        role = IfaceRole::Pod;
                    }
                }
            }
            _ => {}
        }
    }
    Some(LinkEvent::Present { index: msg.header.index, name: name?, role })
}

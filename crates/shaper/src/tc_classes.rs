//! An interface's traffic classes, read from the kernel through rtnetlink
//! (netlink-packet-route over a netlink-sys socket): iproute2 6.1's
//! `tc -json class show` prints htb classes as text, so classes are the one
//! piece of tc state not read as `tc -json` (crate::tc_json). The socket is
//! made in the calling thread's network namespace, like the `ip` and `tc`
//! that crate::iproute runs.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::ingress_queue::QueueError;

/// The handles (major, minor) of the classes on the interface `dev`.
pub(crate) fn class_handles(dev: &str) -> Result<Vec<(u16, u16)>, QueueError> {
    let index = nix::net::if_::if_nametoindex(dev).map_err(|e| QueueError::Interface {
        name: dev.to_string(),
        source: e.into(),
    })?;
    let failed = |source: io::Error| QueueError::Netlink {
        what: "the traffic classes",
        dev: dev.to_string(),
        source,
    };
    let index = i32::try_from(index)
        .map_err(|_| failed(io::Error::other(format!("interface index {index}"))))?;
    let classes = dump(TcMessage::with_index(index)).map_err(failed)?;
    Ok(classes
        .into_iter()
        .filter(|c| c.header.index == index)
        .map(|c| {
            let TcHandle { major, minor } = c.header.handle;
            (major, minor)
        })
        .collect())
}

/// Sends an RTM_GETTCLASS dump request for `request` and collects the
/// classes the kernel answers with, up to its NLMSG_DONE.
fn dump(request: TcMessage) -> io::Result<Vec<TcMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetTrafficClass(request)),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut classes = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the kernel ended the dump without NLMSG_DONE",
            ));
        }
        let mut offset = 0;
        while offset < data.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(classes),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficClass(class)) => {
                    classes.push(class)
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

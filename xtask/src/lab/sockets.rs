//! Client sockets of the lab's probes, connections, flows and HTTP requests, opened with what the
//! source asks for: a local address (`--from node/n1:10.0.0.20`, `--from external:203.0.113.2`), a
//! fixed source port (`--source-port`, to follow one 5-tuple over time) and a routing mark (`--via`:
//! the external client's policy routing picks the node by mark, see `external.rs`).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOpts {
    /// Local address to bind (source address of the traffic); `None`: the kernel picks by route.
    #[serde(default)]
    pub bind: Option<Ipv4Addr>,
    /// Fixed local port; `None`: an ephemeral port per socket.
    #[serde(default)]
    pub source_port: Option<u16>,
    /// SO_MARK for the socket's packets (policy routing in the external client).
    #[serde(default)]
    pub mark: Option<u32>,
}

impl SocketOpts {
    fn local(&self) -> Option<SocketAddrV4> {
        match (self.bind, self.source_port) {
            (None, None) => None,
            (ip, port) => Some(SocketAddrV4::new(
                ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                port.unwrap_or(0),
            )),
        }
    }

    fn prepare(&self, socket: &Socket) -> std::io::Result<()> {
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        if let Some(local) = self.local() {
            // A fixed port is reused by every attempt of a probe and may still be held by the socket
            // of the previous one for a moment.
            socket.set_reuse_address(true)?;
            socket.bind(&SockAddr::from(local))?;
        }
        Ok(())
    }
}

/// A TCP connection to `addr` from a socket prepared with `opts`.
pub fn tcp_connect(addr: SocketAddrV4, opts: &SocketOpts, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    opts.prepare(&socket)?;
    if opts.source_port.is_some() {
        // Closing with a reset leaves no TIME_WAIT behind, so the next attempt can reuse the very
        // same 4-tuple at once (the kernel refuses connect() over a TIME_WAIT of the same tuple).
        socket.set_linger(Some(Duration::ZERO))?;
    }
    socket.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(socket.into())
}

/// A UDP socket prepared with `opts` and connected to `addr`: an ICMP port unreachable comes back as
/// ECONNREFUSED, and only `addr` itself can answer (a reply with an un-rewritten source is dropped,
/// as for a real client).
pub fn udp_connect(addr: SocketAddrV4, opts: &SocketOpts) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    opts.prepare(&socket)?;
    if opts.local().is_none() {
        socket.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
    }
    socket.connect(&SockAddr::from(addr))?;
    Ok(socket.into())
}

/// Applies the local address and mark to a raw (SCTP) socket; the source port of raw SCTP is in the
/// packet the caller builds.
pub fn prepare_raw(socket: &Socket, opts: &SocketOpts) -> std::io::Result<()> {
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    if let Some(ip) = opts.bind {
        socket.bind(&SockAddr::from(SocketAddrV4::new(ip, 0)))?;
    }
    Ok(())
}

/// `ip:port` of a connected std socket, for reports.
pub fn local_text(addr: std::io::Result<SocketAddr>) -> Option<String> {
    addr.ok().map(|a| a.to_string())
}

//! SCTP with real packets though this kernel has no SCTP stack (`CONFIG_IP_SCTP` off): raw IPv4 sockets
//! of protocol 132 see every SCTP packet of their netns (the IP header included), and whatever is sent
//! on them goes out with an IP header the kernel builds. There is no association: a probe is one
//! packet with a DATA chunk, the answer one packet with a DATA chunk carrying the responder's JSON line.
//! Ports and the verification tag identify the flow; the CRC32c must verify both ways, so a datapath
//! that rewrites a port without fixing the checksum is caught.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::sockets::{self, SocketOpts};

pub const IPPROTO_SCTP: i32 = 132;
const COMMON_HEADER: usize = 12;
const DATA_HEADER: usize = 16;
const CHUNK_DATA: u8 = 0;
/// DATA chunk flags: beginning and end of an unfragmented message.
const DATA_BE: u8 = 0x03;
/// Packets read per probe at most (others' traffic in the netns included), besides the time bound.
const MAX_READS: usize = 4096;
/// Chunks looked at per packet at most.
const MAX_CHUNKS: usize = 64;

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

const CRC_TABLE: [u32; 256] = crc_table();

/// CRC32c (Castagnoli), one table lookup per byte.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// One SCTP packet (common header and a DATA chunk with `payload`), CRC32c stored as the kernel does
/// (little-endian).
pub fn packet(sport: u16, dport: u16, vtag: u32, tsn: u32, payload: &[u8]) -> Vec<u8> {
    let chunk_len = DATA_HEADER + payload.len();
    let mut p = Vec::with_capacity(COMMON_HEADER + chunk_len + 3);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, filled below
    p.extend_from_slice(&[CHUNK_DATA, DATA_BE]);
    p.extend_from_slice(&u16::try_from(chunk_len).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(&tsn.to_be_bytes());
    p.extend_from_slice(&[0; 2]); // stream identifier
    p.extend_from_slice(&[0; 2]); // stream sequence number
    p.extend_from_slice(&[0; 4]); // payload protocol identifier
    p.extend_from_slice(payload);
    while p.len() % 4 != 0 {
        p.push(0);
    }
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// An SCTP packet as read from a raw socket (IPv4 header first), its CRC32c verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    /// The user data of the first DATA chunk, if any.
    pub data: Option<&'a [u8]>,
}

/// Parses an IPv4 packet carrying SCTP; `None` when it is not one or its CRC32c does not verify.
pub fn parse(ip: &[u8]) -> Option<Received<'_>> {
    let first = *ip.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || ip.len() < ihl + COMMON_HEADER || ip[9] != IPPROTO_SCTP as u8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let end = if total >= ihl + COMMON_HEADER && total <= ip.len() {
        total
    } else {
        ip.len()
    };
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let s = &ip[ihl..end];
    let stored = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let mut copy = s.to_vec();
    copy[8..12].fill(0);
    if crc32c(&copy) != stored {
        return None;
    }
    let mut data = None;
    let mut at = COMMON_HEADER;
    for _ in 0..MAX_CHUNKS {
        if at + 4 > s.len() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([s[at + 2], s[at + 3]]));
        if len < 4 || at + len > s.len() {
            break;
        }
        if s[at] == CHUNK_DATA && len >= DATA_HEADER {
            data = Some(&s[at + DATA_HEADER..at + len]);
            break;
        }
        at += len.div_ceil(4) * 4;
    }
    Some(Received {
        src,
        dst,
        sport: u16::from_be_bytes([s[0], s[1]]),
        dport: u16::from_be_bytes([s[2], s[3]]),
        vtag: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
        data,
    })
}

pub fn raw_socket() -> std::io::Result<Socket> {
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_SCTP)))
}

/// Random bytes from the kernel, for source ports and verification tags.
fn random_u64() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// One probe: a DATA chunk "probe\n" to `dst`, then the answer's user data (the responder's JSON
/// line). The socket is connected, so only packets from `dst` itself are read (an answer from a VIP
/// must come back from the VIP: reverse NAT), and an ICMP port or protocol unreachable about the probe
/// comes back as ECONNREFUSED / ENOPROTOOPT. Nothing matching within `timeout`: `TimedOut`.
pub fn exchange(dst: SocketAddrV4, timeout: Duration, opts: &SocketOpts) -> std::io::Result<String> {
    let start = Instant::now();
    let r = random_u64()?;
    // Source port in the kernel's ephemeral range, 32768..=60999 (unless fixed); a non-zero tag.
    let sport = opts
        .source_port
        .unwrap_or(32768 + u16::try_from(r % 28232).expect("fits"));
    let vtag = u32::try_from(r >> 32).expect("fits").max(1);
    let socket = raw_socket()?;
    sockets::prepare_raw(&socket, opts)?;
    socket.connect(&SockAddr::from(SocketAddrV4::new(*dst.ip(), 0)))?;
    socket.send(&packet(sport, dst.port(), vtag, 1, b"probe\n"))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..MAX_READS {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let n = match (&socket).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some(p) = parse(&buf[..n]) else { continue };
        if p.src != *dst.ip() || p.sport != dst.port() || p.dport != sport || p.vtag != vtag {
            continue;
        }
        let Some(data) = p.data else { continue };
        return Ok(String::from_utf8_lossy(data).into_owned());
    }
    Err(ErrorKind::TimedOut.into())
}

/// The responder's side: answers every SCTP packet to one of `ports` whose CRC32c verifies with one
/// DATA chunk carrying `answer(client, port)`, ports swapped and the tag copied. Packets to other ports
/// are ignored (a real stack would ABORT). Runs until the process ends.
pub fn serve(pod: &str, socket: &Socket, ports: &BTreeSet<u16>, answer: impl Fn(SocketAddr, u16) -> Vec<u8>) {
    let mut buf = vec![0u8; 65536];
    let mut tsn: u32 = 1;
    loop {
        let n = match (&*socket).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("responder {pod}: raw sctp receive: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(p) = parse(&buf[..n]) else { continue };
        if !ports.contains(&p.dport) {
            continue;
        }
        let client = SocketAddr::V4(SocketAddrV4::new(p.src, p.sport));
        let reply = packet(p.dport, p.sport, p.vtag, tsn, &answer(client, p.dport));
        tsn = tsn.wrapping_add(1);
        if let Err(e) = socket.send_to(&reply, &SockAddr::from(SocketAddrV4::new(p.src, 0))) {
            eprintln!("responder {pod}: {}/sctp reply to {client}: {e}", p.dport);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn crc32c_matches_the_standard_check_value_and_the_bitwise_form() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(crc32c(&data), bitwise(&data));
    }

    #[test]
    fn a_built_packet_parses_back_and_a_flipped_bit_is_refused() {
        let sctp = packet(40000, 77, 0xdead_beef, 7, b"probe\n");
        assert_eq!(sctp.len() % 4, 0);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let total = u16::try_from(20 + sctp.len()).unwrap();
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&sctp);
        let p = parse(&ip).expect("valid packet");
        assert_eq!(
            (p.src, p.dst, p.sport, p.dport, p.vtag),
            (
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                40000,
                77,
                0xdead_beef
            )
        );
        assert_eq!(p.data, Some(&b"probe\n"[..]));
        ip[20 + 2] ^= 1; // destination port changed without fixing the checksum
        assert!(parse(&ip).is_none());
    }
}

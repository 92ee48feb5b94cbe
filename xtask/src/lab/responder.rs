//! The per-pod responder (`xtask lab-responder`), started inside the pod's netns and cgroup. It answers
//! on every declared port number, TCP and UDP, with one JSON line naming the pod and the client address
//! it saw, so probes show who answered and whether the source was rewritten:
//! `{"pod":"ns/name","client":"10.244.1.5:40312","port":8080,"proto":"tcp"}`
//!
//! TCP: one answer per line received, the connection stays open until the client closes it (so
//! long-lived connections can be tested across endpoint changes); a connection whose first line is an
//! HTTP request line gets one HTTP response instead (see `http.rs`). UDP: one answer per datagram.
//! A pod without ports (a client only) runs a responder too, which just waits: every pod has one
//! process, so `lab status` tells a dead pod from an idle one.
//! SCTP (this kernel has no SCTP stack): one raw socket of protocol 132 for the pod, answering every
//! packet to a served port with one packet carrying the line in a DATA chunk (see `sctp.rs`).

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
};

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{http, sctp};

#[derive(Debug, Args)]
pub struct ResponderArgs {
    /// The pod this responder speaks for, `namespace/name`.
    #[arg(long)]
    pub pod: String,
    /// A port number to answer on, TCP and UDP (repeat for more).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Ports declared as SCTP. SCTP is answered on these and on every `--port` (through one raw
    /// socket: this kernel has no SCTP sockets).
    #[arg(long = "sctp-port")]
    pub sctp_ports: Vec<u16>,
    /// Written once every socket is bound, so `lab up` knows the pod answers.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// One answer, as the responder sends it and probes read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    pub pod: String,
    pub client: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub proto: String,
    /// The request path, for HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn answer_line(pod: &str, client: SocketAddr, port: u16, proto: &str) -> Vec<u8> {
    let a = Answer {
        pod: pod.to_string(),
        client: client.to_string(),
        port,
        proto: proto.to_string(),
        path: None,
    };
    let mut line = serde_json::to_vec(&a).expect("answer serializes");
    line.push(b'\n');
    line
}

/// Longest line a TCP client may send; longer input is cut into several "lines".
const MAX_LINE: u64 = 64 * 1024;

pub fn run(args: ResponderArgs) -> Result<()> {
    let pod = args.pod.clone();
    let sctp_ports: BTreeSet<u16> = args.ports.iter().chain(&args.sctp_ports).copied().collect();
    let mut ports = args.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let mut handles = Vec::new();
    for port in ports {
        let tcp = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding {port}/tcp"))?;
        let udp = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding {port}/udp"))?;
        let p = pod.clone();
        handles.push(std::thread::spawn(move || serve_tcp(&p, port, tcp)));
        let p = pod.clone();
        handles.push(std::thread::spawn(move || serve_udp(&p, port, udp)));
        eprintln!("responder {pod}: answering on {port}/tcp and {port}/udp");
    }
    if !sctp_ports.is_empty() {
        let raw = sctp::raw_socket().context("opening a raw SCTP socket (protocol 132)")?;
        eprintln!("responder {pod}: answering SCTP (raw socket) on {sctp_ports:?}");
        let p = pod.clone();
        handles.push(std::thread::spawn(move || {
            sctp::serve(&p, &raw, &sctp_ports, |client, port| {
                answer_line(&p, client, port, "sctp")
            })
        }));
    }
    if let Some(ready) = &args.ready_file {
        if let Some(dir) = ready.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(ready, std::process::id().to_string()).context("writing the ready file")?;
    }
    if handles.is_empty() {
        eprintln!("responder {pod}: no ports declared, a client only");
        loop {
            std::thread::park();
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve_tcp(pod: &str, port: u16, listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let pod = pod.to_string();
                std::thread::spawn(move || {
                    if let Err(e) = answer_tcp(&pod, port, stream) {
                        eprintln!("responder {pod}: {port}/tcp connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("responder {pod}: accept on {port}/tcp: {e}"),
        }
    }
}

fn answer_tcp(pod: &str, port: u16, stream: TcpStream) -> std::io::Result<()> {
    let client = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(()); // the client closed
        }
        if first {
            let text = String::from_utf8_lossy(&line).into_owned();
            if let Some((method, path)) = http::request_line(&text) {
                return answer_http(
                    pod,
                    port,
                    client,
                    &mut reader,
                    &mut writer,
                    method == "HEAD",
                    path,
                );
            }
            first = false;
        }
        writer.write_all(&answer_line(pod, client, port, "tcp"))?;
    }
}

/// One HTTP response (after the request's headers), then the connection is closed.
fn answer_http(
    pod: &str,
    port: u16,
    client: SocketAddr,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    head: bool,
    path: &str,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    for _ in 0..http::MAX_HEADER_LINES {
        line.clear();
        let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 || line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let answer = Answer {
        pod: pod.to_string(),
        client: client.to_string(),
        port,
        proto: "tcp".into(),
        path: Some(path.to_string()),
    };
    let mut body = serde_json::to_vec(&answer).expect("answer serializes");
    body.push(b'\n');
    let client = client.to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Strait-Pod", pod),
        ("X-Strait-Client", client.as_str()),
    ];
    writer.write_all(&http::response(http::status_for(path), &headers, &body, head))
}

fn serve_udp(pod: &str, port: u16, socket: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, client)) => {
                if let Err(e) = socket.send_to(&answer_line(pod, client, port, "udp"), client) {
                    eprintln!("responder {pod}: {port}/udp reply to {client}: {e}");
                }
            }
            Err(e) => eprintln!("responder {pod}: {port}/udp receive: {e}"),
        }
    }
}

//! `lab conn open|check|close|list`: a TCP connection held open in the background (one daemon per
//! label, see `control.rs`), so a test can show what happens to an established connection across
//! endpoint changes: `check` sends one line over the same connection and reports who answered, or
//! that the connection broke (and how).

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::unix::net::UnixListener,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    control::{self, Kind},
    probe::{self, Attempt, Outcome},
    sockets::{self, SocketOpts},
    source,
    spec::Proto,
    state::{Paths, State},
};

/// Lifetime of a connection nobody closes.
const DEFAULT_MAX_SECONDS: u64 = 3600;

#[derive(Debug, Subcommand)]
pub enum ConnCommand {
    /// Open a TCP connection from SRC to DST and keep it open in the background.
    Open(OpenArgs),
    /// Send one request over the open connection: who answered, or that it broke.
    Check(CheckArgs),
    /// Close the connection and stop its daemon.
    Close(LabelArgs),
    /// Connections of the lab and their state.
    List(super::JsonArgs),
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    /// `ns/pod`, a unique pod name, `node/NAME[:IP]` or `external[:IP]`.
    #[arg(long)]
    pub from: String,
    /// `DST:PORT`: DST is `ns/pod`, a pod name, `node/NAME` or any IPv4; PORT a number or port name.
    #[arg(long)]
    pub to: String,
    /// Name of the connection for `check` and `close` (1-32 of a-z, 0-9, '-', '_').
    #[arg(long)]
    pub label: String,
    /// For `--from external`: the node service addresses are routed to (default: the first node).
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub source_port: Option<u16>,
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// The daemon closes the connection and exits after this long, if nobody did before.
    #[arg(long, default_value_t = DEFAULT_MAX_SECONDS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_seconds: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub label: String,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    pub label: String,
    #[arg(long)]
    pub json: bool,
}

/// What the daemon is told to do (one JSON argument, so nothing is parsed twice).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSpec {
    pub lab: String,
    pub label: String,
    pub from: String,
    pub to: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub socket: SocketOpts,
    pub via: Option<String>,
    pub timeout_ms: u64,
    pub max_seconds: u64,
}

pub fn command(paths: &Paths, cmd: ConnCommand) -> Result<()> {
    match cmd {
        ConnCommand::Open(a) => open(paths, a),
        ConnCommand::Check(a) => check(paths, a),
        ConnCommand::Close(a) => close(paths, a),
        ConnCommand::List(a) => list(paths, a.json),
    }
}

fn open(paths: &Paths, args: OpenArgs) -> Result<()> {
    control::check_label(&args.label)?;
    let state = State::load(paths)?;
    let mut src = source::resolve(&state, &args.from, args.via.as_deref())?;
    src.socket.source_port = args.source_port;
    let (ip, port, proto) = probe::resolve_target(&state, &args.to)?;
    if proto != Proto::Tcp {
        anyhow::bail!(
            "--to {}: long-lived connections are TCP (for UDP see `lab flow`)",
            args.to
        );
    }
    let spec = ConnSpec {
        lab: paths.lab.clone(),
        label: args.label.clone(),
        from: src.label.clone(),
        to: format!("{ip}:{port}"),
        ip,
        port,
        socket: src.socket,
        via: src.via.clone(),
        timeout_ms: args.timeout_ms,
        max_seconds: args.max_seconds,
    };
    let argv: Vec<OsString> = vec![
        std::env::current_exe()?.into(),
        "lab".into(),
        "--name".into(),
        paths.lab.clone().into(),
        "conn-daemon".into(),
        serde_json::to_string(&spec)?.into(),
    ];
    let within = Duration::from_millis(args.timeout_ms) + Duration::from_secs(5);
    let st = control::start(paths, Kind::Conn, &args.label, &src, &argv, within)?;
    if st["state"] != "open" {
        control::wait_exit(paths, Kind::Conn, &args.label, Duration::from_secs(2));
        control::forget(paths, Kind::Conn, &args.label);
        anyhow::bail!(
            "conn {}: {} -> {} did not connect: {} ({})",
            args.label,
            spec.from,
            spec.to,
            st["outcome"].as_str().unwrap_or("error"),
            st["error"].as_str().unwrap_or("")
        );
    }
    let human = format!(
        "conn {} open: {} ({}) -> {}\n",
        args.label,
        spec.from,
        st["local"].as_str().unwrap_or("?"),
        spec.to
    );
    super::output(args.json, &human, &st)
}

fn check(paths: &Paths, args: CheckArgs) -> Result<()> {
    let reply = control::request(
        paths,
        Kind::Conn,
        &args.label,
        &json!({"op": "check", "timeout_ms": args.timeout_ms}),
        Duration::from_millis(args.timeout_ms) + Duration::from_secs(3),
    )?;
    let human = match reply["outcome"].as_str() {
        Some("answered") => format!(
            "conn {}: answered by {} (saw client {}) in {} ms\n",
            args.label,
            reply["answered_by"].as_str().unwrap_or("?"),
            reply["client_seen"].as_str().unwrap_or("?"),
            reply["ms"]
        ),
        other => format!(
            "conn {}: {} ({}), connection {}\n",
            args.label,
            other.unwrap_or("?"),
            reply["error"].as_str().unwrap_or(""),
            reply["connection"].as_str().unwrap_or("?")
        ),
    };
    super::output(args.json, &human, &reply)
}

fn close(paths: &Paths, args: LabelArgs) -> Result<()> {
    let before = control::read_state(paths, Kind::Conn, &args.label);
    let reply = if control::running(paths, Kind::Conn, &args.label) {
        let r = control::request(
            paths,
            Kind::Conn,
            &args.label,
            &json!({"op": "close"}),
            Duration::from_secs(3),
        )?;
        control::wait_exit(paths, Kind::Conn, &args.label, Duration::from_secs(2));
        r
    } else if before.is_some() {
        json!({"label": args.label, "closed": true, "connection": "gone"})
    } else {
        anyhow::bail!("no conn labelled {} in lab {}", args.label, paths.lab);
    };
    control::forget(paths, Kind::Conn, &args.label);
    let human = format!(
        "conn {} closed (it was {})\n",
        args.label,
        reply["connection"].as_str().unwrap_or("?")
    );
    super::output(args.json, &human, &reply)
}

fn list(paths: &Paths, json_out: bool) -> Result<()> {
    let mut items = Vec::new();
    let mut human = String::new();
    for label in control::labels(paths, Kind::Conn) {
        let mut st = control::read_state(paths, Kind::Conn, &label).unwrap_or(Value::Null);
        if !control::running(paths, Kind::Conn, &label) {
            st["state"] = "gone".into();
        }
        human.push_str(&format!(
            "{label:<16} {:<8} {} ({}) -> {}\n",
            st["state"].as_str().unwrap_or("?"),
            st["from"].as_str().unwrap_or("?"),
            st["local"].as_str().unwrap_or("?"),
            st["to"].as_str().unwrap_or("?")
        ));
        items.push(st);
    }
    if items.is_empty() {
        human = format!("no connections in lab {}\n", paths.lab);
    }
    super::output(json_out, &human, &json!({"connections": items}))
}

/// The daemon: connects, says so in its state file, then serves `check` and `close`.
pub fn daemon(spec_json: &str) -> Result<()> {
    let spec: ConnSpec = serde_json::from_str(spec_json).context("reading the connection spec")?;
    let paths = Paths::new(&spec.lab);
    let state_path = control::state_file(&paths, Kind::Conn, &spec.label);
    let sock_path = control::socket_file(&paths, Kind::Conn, &spec.label);
    let mut st = json!({
        "label": spec.label, "from": spec.from, "to": spec.to,
        "pid": std::process::id(), "state": "starting",
    });
    if let Some(via) = &spec.via {
        st["via"] = via.as_str().into();
    }
    control::write_state(&state_path, &st)?;
    let _ = std::fs::remove_file(&sock_path);
    let listener =
        UnixListener::bind(&sock_path).with_context(|| format!("binding {}", sock_path.display()))?;
    let addr = SocketAddrV4::new(spec.ip, spec.port);
    let stream = match sockets::tcp_connect(addr, &spec.socket, Duration::from_millis(spec.timeout_ms)) {
        Ok(s) => s,
        Err(e) => {
            let a = probe::classify(&e);
            st["state"] = "failed".into();
            st["outcome"] = serde_json::to_value(a.outcome)?;
            st["error"] = a.error.unwrap_or_else(|| e.to_string()).into();
            control::write_state(&state_path, &st)?;
            let _ = std::fs::remove_file(&sock_path);
            return Ok(());
        }
    };
    stream.set_nodelay(true)?;
    st["local"] = sockets::local_text(stream.local_addr()).into();
    st["state"] = "open".into();
    control::write_state(&state_path, &st)?;
    eprintln!("conn {}: {} -> {} open", spec.label, st["local"], spec.to);
    control::exit_after(Duration::from_secs(spec.max_seconds), sock_path.clone());

    let mut conn = Held {
        reader: BufReader::new(stream.try_clone()?),
        stream,
        broken: None,
    };
    control::serve(&listener, |req| match req["op"].as_str() {
        Some("check") => {
            let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(1000).max(1));
            let attempt = conn.check(timeout);
            if conn.broken.is_some() && st["state"] == "open" {
                st["state"] = "broken".into();
                let _ = control::write_state(&state_path, &st);
            }
            let mut reply = st.clone();
            reply["connection"] = st["state"].clone();
            if let Value::Object(fields) = serde_json::to_value(&attempt).unwrap_or_default() {
                reply.as_object_mut().expect("object").extend(fields);
            }
            (reply, false)
        }
        Some("close") => {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
            let was = if conn.broken.is_some() { "broken" } else { "open" };
            (
                json!({"label": spec.label, "closed": true, "connection": was}),
                true,
            )
        }
        _ => (json!({"error": format!("unknown request {req}")}), false),
    });
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&state_path);
    Ok(())
}

/// The open connection and whether (how) it broke.
struct Held {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    broken: Option<String>,
}

impl Held {
    /// One line out, one answer back. An answer that arrives after a check timed out is dropped
    /// before the next check, so answers never shift by one.
    fn check(&mut self, timeout: Duration) -> Attempt {
        if let Some(why) = &self.broken {
            return attempt(Outcome::Refused, why.clone());
        }
        if let Err(e) = self.drain() {
            return self.broke(&e);
        }
        let start = Instant::now();
        if let Err(e) = self.stream.write_all(b"check\n") {
            return self.broke(&e);
        }
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut line = String::new();
        match self.reader.by_ref().take(64 * 1024).read_line(&mut line) {
            Ok(0) => self.broke(&ErrorKind::UnexpectedEof.into()),
            Ok(_) => probe::answer(Ok(line), start),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                attempt(Outcome::Timeout, "no answer on the open connection".into())
            }
            Err(e) => self.broke(&e),
        }
    }

    fn broke(&mut self, e: &std::io::Error) -> Attempt {
        let mut a = probe::classify(e);
        let why = match e.kind() {
            ErrorKind::UnexpectedEof => "the connection was closed by the other end".to_string(),
            _ => a.error.clone().unwrap_or_else(|| e.to_string()),
        };
        self.broken = Some(why.clone());
        if a.outcome != Outcome::Error {
            a.outcome = Outcome::Refused;
        }
        a.error = Some(why);
        a
    }

    /// Reads whatever is pending without waiting: late answers are dropped, an end or an error
    /// means the connection broke.
    fn drain(&mut self) -> std::io::Result<()> {
        let pending = self.reader.buffer().len();
        self.reader.consume(pending);
        self.stream.set_nonblocking(true)?;
        let mut buf = [0u8; 4096];
        // Late answers are a few lines; the bound only guards against a peer that never stops.
        let mut result = Ok(());
        for _ in 0..1024 {
            match self.reader.get_mut().read(&mut buf) {
                Ok(0) => result = Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => result = Err(e),
            }
            break;
        }
        self.stream.set_nonblocking(false)?;
        result
    }
}

fn attempt(outcome: Outcome, error: String) -> Attempt {
    Attempt {
        outcome,
        answered_by: None,
        client_seen: None,
        ms: None,
        error: Some(error),
    }
}

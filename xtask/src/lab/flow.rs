//! `lab flow start|check|stop|list`: a UDP flow that keeps sending from one socket (one 5-tuple when
//! `--source-port` is given) in the background, one daemon per label (see `control.rs`); `check`
//! reports which backends answered in the last window, so a test can see a flow stay on one backend
//! and move when that backend goes.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    ffi::OsString,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::UnixListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    control::{self, Kind},
    probe,
    responder::Answer,
    sockets::{self, SocketOpts},
    source,
    spec::Proto,
    state::{Paths, State},
};

const DEFAULT_MAX_SECONDS: u64 = 3600;
/// Events kept per flow (sent datagrams, answers): enough for any window at the shortest interval
/// for minutes, bounded whatever the flow's lifetime.
const KEPT: usize = 100_000;

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Start sending datagrams from SRC to DST every interval, in the background.
    Start(StartArgs),
    /// Which backends answered the flow in the last window.
    Check(CheckArgs),
    /// Stop the flow (and its daemon).
    Stop(super::conn::LabelArgs),
    /// Flows of the lab.
    List(super::JsonArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// `ns/pod`, a unique pod name, `node/NAME[:IP]` or `external[:IP]`.
    #[arg(long)]
    pub from: String,
    /// `DST:PORT[/udp]`: DST is `ns/pod`, a pod name, `node/NAME` or any IPv4.
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub label: String,
    /// Fixed source port (one 5-tuple for the whole flow); default: one ephemeral port, also fixed
    /// for the flow's life.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub source_port: Option<u16>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub interval_ms: u64,
    /// For `--from external`: the node service addresses are routed to (default: the first node).
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    #[arg(long, default_value_t = DEFAULT_MAX_SECONDS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_seconds: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub label: String,
    /// The window looked at, ending now (default: 1 s or 5 intervals, whichever is longer).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub window_ms: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSpec {
    pub lab: String,
    pub label: String,
    pub from: String,
    pub to: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub socket: SocketOpts,
    pub via: Option<String>,
    pub interval_ms: u64,
    pub max_seconds: u64,
}

pub fn command(paths: &Paths, cmd: FlowCommand) -> Result<()> {
    match cmd {
        FlowCommand::Start(a) => start(paths, a),
        FlowCommand::Check(a) => check(paths, a),
        FlowCommand::Stop(a) => stop(paths, a),
        FlowCommand::List(a) => list(paths, a.json),
    }
}

fn start(paths: &Paths, args: StartArgs) -> Result<()> {
    control::check_label(&args.label)?;
    let state = State::load(paths)?;
    let mut src = source::resolve(&state, &args.from, args.via.as_deref())?;
    src.socket.source_port = args.source_port;
    let to = if args.to.ends_with("/udp") {
        args.to.clone()
    } else if args.to.contains("/tcp") || args.to.contains("/sctp") {
        bail!("--to {}: flows are UDP (for TCP see `lab conn`)", args.to);
    } else {
        format!("{}/udp", args.to)
    };
    let (ip, port, proto) = probe::resolve_target(&state, &to)?;
    debug_assert_eq!(proto, Proto::Udp);
    let spec = FlowSpec {
        lab: paths.lab.clone(),
        label: args.label.clone(),
        from: src.label.clone(),
        to: format!("{ip}:{port}/udp"),
        ip,
        port,
        socket: src.socket,
        via: src.via.clone(),
        interval_ms: args.interval_ms,
        max_seconds: args.max_seconds,
    };
    let argv: Vec<OsString> = vec![
        std::env::current_exe()?.into(),
        "lab".into(),
        "--name".into(),
        paths.lab.clone().into(),
        "flow-daemon".into(),
        serde_json::to_string(&spec)?.into(),
    ];
    let st = control::start(
        paths,
        Kind::Flow,
        &args.label,
        &src,
        &argv,
        Duration::from_secs(5),
    )?;
    if st["state"] != "running" {
        control::wait_exit(paths, Kind::Flow, &args.label, Duration::from_secs(2));
        control::forget(paths, Kind::Flow, &args.label);
        bail!(
            "flow {}: {} -> {} did not start: {}",
            args.label,
            spec.from,
            spec.to,
            st["error"].as_str().unwrap_or("")
        );
    }
    let human = format!(
        "flow {} started: {} ({}) -> {} every {} ms\n",
        args.label,
        spec.from,
        st["local"].as_str().unwrap_or("?"),
        spec.to,
        spec.interval_ms
    );
    super::output(args.json, &human, &st)
}

fn check(paths: &Paths, args: CheckArgs) -> Result<()> {
    let reply = control::request(
        paths,
        Kind::Flow,
        &args.label,
        &json!({"op": "check", "window_ms": args.window_ms}),
        Duration::from_secs(3),
    )?;
    let backends: Vec<String> = reply["backends"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let human = format!(
        "flow {} over the last {} ms: sent {}, answered {}, refused {}; backends {}; client seen {}\n",
        args.label,
        reply["window_ms"],
        reply["sent"],
        reply["answered"],
        reply["refused"],
        if backends.is_empty() {
            "none".to_string()
        } else {
            backends.join(", ")
        },
        reply["client_seen"]
    );
    super::output(args.json, &human, &reply)
}

fn stop(paths: &Paths, args: super::conn::LabelArgs) -> Result<()> {
    let reply = if control::running(paths, Kind::Flow, &args.label) {
        let r = control::request(
            paths,
            Kind::Flow,
            &args.label,
            &json!({"op": "stop"}),
            Duration::from_secs(3),
        )?;
        control::wait_exit(paths, Kind::Flow, &args.label, Duration::from_secs(2));
        r
    } else if control::read_state(paths, Kind::Flow, &args.label).is_some() {
        json!({"label": args.label, "stopped": true, "state": "gone"})
    } else {
        bail!("no flow labelled {} in lab {}", args.label, paths.lab);
    };
    control::forget(paths, Kind::Flow, &args.label);
    let human = format!("flow {} stopped\n", args.label);
    super::output(args.json, &human, &reply)
}

fn list(paths: &Paths, json_out: bool) -> Result<()> {
    let mut items = Vec::new();
    let mut human = String::new();
    for label in control::labels(paths, Kind::Flow) {
        let mut st = control::read_state(paths, Kind::Flow, &label).unwrap_or(Value::Null);
        if !control::running(paths, Kind::Flow, &label) {
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
        human = format!("no flows in lab {}\n", paths.lab);
    }
    super::output(json_out, &human, &json!({"flows": items}))
}

/// What the flow saw: send times and answers (or refusals), the newest last.
#[derive(Default)]
struct Log {
    sent: VecDeque<Instant>,
    answers: VecDeque<(Instant, Result<Answer, String>)>,
}

impl Log {
    fn sent(&mut self, at: Instant) {
        if self.sent.len() == KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back(at);
    }

    fn answer(&mut self, at: Instant, a: Result<Answer, String>) {
        if self.answers.len() == KEPT {
            self.answers.pop_front();
        }
        self.answers.push_back((at, a));
    }

    fn window(&self, now: Instant, window: Duration) -> Value {
        let since = now.checked_sub(window).unwrap_or(now);
        let sent = self.sent.iter().filter(|t| **t >= since).count();
        let mut backends: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let (mut answered, mut refused) = (0u64, 0u64);
        let mut errors: BTreeSet<String> = BTreeSet::new();
        for (_, a) in self.answers.iter().filter(|(t, _)| *t >= since) {
            match a {
                Ok(a) => {
                    answered += 1;
                    *backends.entry(a.pod.clone()).or_default() += 1;
                    seen.insert(a.client.clone());
                }
                Err(e) => {
                    refused += 1;
                    errors.insert(e.clone());
                }
            }
        }
        let last = self.answers.iter().rev().find_map(|(t, a)| {
            a.as_ref().ok().map(|a| {
                json!({"answered_by": a.pod, "client_seen": a.client,
                       "ago_ms": now.duration_since(*t).as_millis() as u64})
            })
        });
        json!({
            "window_ms": window.as_millis() as u64,
            "sent": sent, "answered": answered, "refused": refused,
            "backends": backends, "client_seen": seen, "errors": errors,
            "last_answer": last,
        })
    }
}

/// The daemon: one connected UDP socket, a sender, a receiver, and the control socket.
pub fn daemon(spec_json: &str) -> Result<()> {
    let spec: FlowSpec = serde_json::from_str(spec_json).context("reading the flow spec")?;
    let paths = Paths::new(&spec.lab);
    let state_path = control::state_file(&paths, Kind::Flow, &spec.label);
    let sock_path = control::socket_file(&paths, Kind::Flow, &spec.label);
    let mut st = json!({
        "label": spec.label, "from": spec.from, "to": spec.to,
        "interval_ms": spec.interval_ms, "pid": std::process::id(), "state": "starting",
    });
    if let Some(via) = &spec.via {
        st["via"] = via.as_str().into();
    }
    control::write_state(&state_path, &st)?;
    let _ = std::fs::remove_file(&sock_path);
    let listener =
        UnixListener::bind(&sock_path).with_context(|| format!("binding {}", sock_path.display()))?;
    let socket = match sockets::udp_connect(SocketAddrV4::new(spec.ip, spec.port), &spec.socket) {
        Ok(s) => s,
        Err(e) => {
            st["state"] = "failed".into();
            st["error"] = e.to_string().into();
            control::write_state(&state_path, &st)?;
            let _ = std::fs::remove_file(&sock_path);
            return Ok(());
        }
    };
    st["local"] = sockets::local_text(socket.local_addr()).into();
    st["state"] = "running".into();
    control::write_state(&state_path, &st)?;
    eprintln!("flow {}: {} -> {} running", spec.label, st["local"], spec.to);
    control::exit_after(Duration::from_secs(spec.max_seconds), sock_path.clone());

    let started = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let receiver = socket.try_clone()?;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let result = match receiver.recv(&mut buf) {
                    Ok(n) => serde_json::from_slice::<Answer>(&buf[..n])
                        .map_err(|_| format!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n]))),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                    Err(e) => Err(probe::classify(&e).error.unwrap_or_else(|| e.to_string())),
                };
                log.lock().expect("flow log").answer(Instant::now(), result);
            }
        });
    }
    {
        let log = log.clone();
        let interval = Duration::from_millis(spec.interval_ms);
        std::thread::spawn(move || {
            for seq in 0u64.. {
                let now = Instant::now();
                log.lock().expect("flow log").sent(now);
                if let Err(e) = socket.send(format!("flow {seq}\n").as_bytes()) {
                    // A pending ICMP error shows up on the next send as well as on receive.
                    let text = probe::classify(&e).error.unwrap_or_else(|| e.to_string());
                    log.lock().expect("flow log").answer(now, Err(text));
                }
                std::thread::sleep(interval.saturating_sub(now.elapsed()));
            }
        });
    }
    let default_window = Duration::from_millis((spec.interval_ms * 5).max(1000));
    control::serve(&listener, |req| match req["op"].as_str() {
        Some("check") => {
            let window = req["window_ms"]
                .as_u64()
                .map(Duration::from_millis)
                .unwrap_or(default_window);
            let now = Instant::now();
            let mut reply = st.clone();
            reply["running_ms"] = (now.duration_since(started).as_millis() as u64).into();
            if let Value::Object(fields) = log.lock().expect("flow log").window(now, window) {
                reply.as_object_mut().expect("object").extend(fields);
            }
            (reply, false)
        }
        Some("stop") => {
            let now = Instant::now();
            let total = log
                .lock()
                .expect("flow log")
                .window(now, now.duration_since(started));
            (
                json!({"label": spec.label, "stopped": true, "sent": total["sent"],
                       "answered": total["answered"], "backends": total["backends"]}),
                true,
            )
        }
        _ => (json!({"error": format!("unknown request {req}")}), false),
    });
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&state_path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pod: &str) -> Result<Answer, String> {
        Ok(Answer {
            pod: pod.into(),
            client: "10.244.1.21:40000".into(),
            port: 5353,
            proto: "udp".into(),
            path: None,
        })
    }

    #[test]
    fn the_window_counts_only_recent_events() {
        let mut log = Log::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(2000);
        log.sent(t0);
        log.answer(t0, answer("x/a"));
        log.sent(later);
        log.answer(later, answer("x/b"));
        log.answer(later, Err("connection refused".into()));
        let w = log.window(later + Duration::from_millis(10), Duration::from_millis(500));
        assert_eq!(w["sent"], 1);
        assert_eq!(w["answered"], 1);
        assert_eq!(w["refused"], 1);
        assert_eq!(w["backends"], json!({"x/b": 1}));
        assert_eq!(w["client_seen"], json!(["10.244.1.21:40000"]));
        assert_eq!(w["last_answer"]["answered_by"], "x/b");
        let all = log.window(later, Duration::from_millis(5000));
        assert_eq!(all["backends"], json!({"x/a": 1, "x/b": 1}));
    }
}

//! `lab http --from SRC --to DST:PORT[/path]`: one HTTP GET from inside the lab, reported with its
//! status, headers and body, and (when a responder answered) the pod and the client address it saw.
//! Meant for health-check ports and the agent's endpoints as well as for pods.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{
    cgroup, http, netns,
    probe::{self, Outcome},
    sockets::{self, SocketOpts},
    source,
    state::{Paths, State},
};

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// `ns/pod`, a unique pod name, `node/NAME[:IP]` or `external[:IP]`.
    #[arg(long)]
    pub from: String,
    /// `DST:PORT[/path]`: DST is `ns/pod`, a pod name, `node/NAME` or any IPv4; PORT a number or a
    /// pod's port name; the path defaults to `/`.
    #[arg(long)]
    pub to: String,
    /// For `--from external`: the node service addresses are routed to (default: the first node).
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub source_port: Option<u16>,
    /// For connecting and for the whole response.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpJob {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub path: String,
    pub timeout_ms: u64,
    pub socket: SocketOpts,
}

/// The result, in the shape `lab http --json` prints (after `from`, `to`, `path`, `via`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HttpResult {
    /// `answered` (any HTTP status), `refused`, `timeout` or `error` (no HTTP response: the text says
    /// why), as for probes.
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub body_truncated: bool,
    /// The responder's `X-Strait-Pod` header: the pod that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// The responder's `X-Strait-Client` header: the client address it saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_seen: Option<String>,
    /// The client's own address of the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `DST:PORT[/path]` split into `DST:PORT` and the path.
pub fn split_target(to: &str) -> Result<(String, String)> {
    let (dst, rest) = to
        .split_once(':')
        .with_context(|| format!("--to {to}: expected DST:PORT[/path]"))?;
    let (port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if port.is_empty() || dst.is_empty() {
        anyhow::bail!("--to {to}: expected DST:PORT[/path]");
    }
    Ok((format!("{dst}:{port}"), path.to_string()))
}

pub fn command(paths: &Paths, args: HttpArgs) -> Result<()> {
    let state = State::load(paths)?;
    let mut src = source::resolve(&state, &args.from, args.via.as_deref())?;
    src.socket.source_port = args.source_port;
    let (dst, path) = split_target(&args.to)?;
    let (ip, port, _) = probe::resolve_target(&state, &format!("{dst}/tcp"))?;
    let job = HttpJob {
        ip,
        port,
        path: path.clone(),
        timeout_ms: args.timeout_ms,
        socket: src.socket,
    };
    let out = source::run_worker(paths, &src, "http-worker", &[], &serde_json::to_vec(&job)?)?;
    let result: HttpResult = serde_json::from_slice(&out).context("reading the http worker's result")?;
    let report = serde_json::json!({
        "from": src.label,
        "to": format!("{ip}:{port}"),
        "path": path,
        "via": src.via,
    });
    let mut report = report.as_object().cloned().unwrap_or_default();
    if report["via"].is_null() {
        report.remove("via");
    }
    if let serde_json::Value::Object(fields) = serde_json::to_value(&result)? {
        report.extend(fields);
    }
    let human = render(&src.label, &format!("{ip}:{port}{path}"), &result);
    super::output(args.json, &human, &report)
}

fn render(from: &str, to: &str, r: &HttpResult) -> String {
    let mut s = format!("{from} -> http://{to}\n");
    match (r.outcome, r.status) {
        (Outcome::Answered, Some(status)) => {
            s.push_str(&format!(
                "  {status} {} in {:.2} ms",
                r.reason.as_deref().unwrap_or(""),
                r.ms.unwrap_or(0.0)
            ));
            if let Some(by) = &r.answered_by {
                s.push_str(&format!(
                    ", answered by {by} (saw client {})",
                    r.client_seen.as_deref().unwrap_or("?")
                ));
            }
            s.push('\n');
            for (k, v) in r.headers.iter().flatten() {
                s.push_str(&format!("  {k}: {v}\n"));
            }
            if let Some(body) = &r.body {
                s.push_str(&format!("\n{}\n", body.trim_end()));
            }
        }
        (outcome, _) => s.push_str(&format!(
            "  {} {}\n",
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            r.error.as_deref().unwrap_or("")
        )),
    }
    s
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

/// `http-worker`: one HttpJob as JSON on stdin, the HttpResult as JSON on stdout.
pub fn worker(args: WorkerArgs) -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let job: HttpJob = serde_json::from_str(&input).context("reading the http job")?;
    netns::enter(&args.netns)?;
    if let Some(cg) = &args.cgroup {
        cgroup::join(cg)?;
    }
    serde_json::to_writer(std::io::stdout(), &get(&job))?;
    Ok(())
}

/// One GET from the current netns.
pub fn get(job: &HttpJob) -> HttpResult {
    let start = Instant::now();
    let timeout = Duration::from_millis(job.timeout_ms.max(1));
    let addr = SocketAddrV4::new(job.ip, job.port);
    let failed = |e: &std::io::Error| {
        let a = probe::classify(e);
        HttpResult {
            outcome: a.outcome,
            error: a.error,
            ..Default::default()
        }
    };
    let stream = match sockets::tcp_connect(addr, &job.socket, timeout) {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    let local = sockets::local_text(stream.local_addr());
    let exchange = || -> std::io::Result<(Vec<u8>, bool)> {
        stream.set_read_timeout(Some(timeout))?;
        (&stream).write_all(&http::request(&addr.to_string(), &job.path))?;
        let mut raw = Vec::new();
        (&stream)
            .take(http::MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)?;
        let cut = raw.len() > http::MAX_RESPONSE;
        raw.truncate(http::MAX_RESPONSE);
        Ok((raw, cut))
    };
    let (raw, cut) = match exchange() {
        Ok(r) => r,
        Err(e) => {
            return HttpResult { local, ..failed(&e) };
        }
    };
    let ms = probe::ms_since(start);
    match http::parse_response(&raw) {
        Ok(r) => HttpResult {
            outcome: Outcome::Answered,
            status: Some(r.status),
            reason: Some(r.reason),
            answered_by: r.headers.get(http::POD_HEADER).cloned(),
            client_seen: r.headers.get(http::CLIENT_HEADER).cloned(),
            body: Some(String::from_utf8_lossy(&r.body).into_owned()),
            body_truncated: cut,
            headers: Some(r.headers),
            local,
            ms: Some(ms),
            error: None,
        },
        Err(e) if raw.is_empty() => HttpResult {
            outcome: Outcome::Refused,
            error: Some(format!("closed without a response ({e})")),
            local,
            ..Default::default()
        },
        Err(e) => HttpResult {
            outcome: Outcome::Error,
            error: Some(format!("not an HTTP response: {e}")),
            local,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            split_target("127.0.0.1:9970/healthz").unwrap(),
            ("127.0.0.1:9970".into(), "/healthz".into())
        );
        assert_eq!(
            split_target("shop/web-1:http").unwrap(),
            ("shop/web-1:http".into(), "/".into())
        );
        assert_eq!(
            split_target("x/a:8080/status/503").unwrap(),
            ("x/a:8080".into(), "/status/503".into())
        );
        assert!(split_target("10.0.0.1").is_err());
        assert!(split_target("10.0.0.1:/x").is_err());
    }
}

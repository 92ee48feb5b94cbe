//! Every pod to every pod on one port/protocol, the upstream network-policy e2e way: rows are sources,
//! columns the pods that serve the port; `.` allowed, `X` denied. One probe worker per source row
//! (a few at a time), each probing its columns in parallel, so a 9-pod matrix takes about a timeout.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{
    probe::{self, Job, Outcome},
    sockets::SocketOpts,
    source::Source,
    spec::Proto,
    state::{Paths, PodState, State},
};

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Port to probe (default: the first port the pods declare).
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long, default_value = "tcp")]
    pub proto: Proto,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
    /// Attempts per cell; a cell is allowed when any attempt is answered.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    #[arg(long)]
    pub json: bool,
}

/// Rows probed at once, and probes at once within a row: 4 x 8 sockets in flight at most.
const ROWS_AT_ONCE: usize = 4;
const PROBES_PER_ROW: usize = 8;

#[derive(Debug, Serialize, PartialEq)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Proto,
    /// Columns: the pods serving port/protocol.
    pub pods: Vec<String>,
    /// Rows (sources): every pod, in the lab's order.
    pub sources: Vec<String>,
    /// source -> destination -> `allowed` | `denied`
    pub results: BTreeMap<String, BTreeMap<String, String>>,
    /// source -> destination -> the pod that answered (allowed cells only).
    pub answered_by: BTreeMap<String, BTreeMap<String, String>>,
    /// source -> destination -> what failed in the lab (probe outcome `error`); absent when none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, BTreeMap<String, String>>,
}

/// Pods that answer on `port`/`proto`: the responder serves TCP, UDP and SCTP on every declared port
/// number.
pub fn serves(p: &PodState, port: u16) -> bool {
    p.ports.iter().any(|d| d.port == port)
}

pub fn command(paths: &Paths, args: MatrixArgs) -> Result<()> {
    let state = State::load(paths)?;
    let port = match args.port {
        Some(p) => p,
        None => state
            .pods
            .iter()
            .flat_map(|p| p.ports.first())
            .map(|p| p.port)
            .next()
            .context("no pod declares a port")?,
    };
    let columns: Vec<&PodState> = state.pods.iter().filter(|p| serves(p, port)).collect();
    if columns.is_empty() {
        bail!("no pod serves {port}/{}", args.proto);
    }
    let jobs: Vec<Job> = columns
        .iter()
        .enumerate()
        .map(|(id, p)| Job {
            id,
            ip: p.ip,
            port,
            proto: args.proto,
            count: args.attempts,
            timeout_ms: args.timeout_ms,
            socket: SocketOpts::default(),
        })
        .collect();

    let mut matrix = Matrix {
        port,
        protocol: args.proto,
        pods: columns.iter().map(|p| p.name.clone()).collect(),
        sources: state.pods.iter().map(|p| p.name.clone()).collect(),
        results: BTreeMap::new(),
        answered_by: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    for rows in state.pods.chunks(ROWS_AT_ONCE) {
        let outcomes: Vec<Result<Vec<probe::JobResult>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = rows
                .iter()
                .map(|row| {
                    let source = Source {
                        label: row.name.clone(),
                        netns: row.netns.clone(),
                        cgroup: Some(row.cgroup.clone()),
                        socket: SocketOpts::default(),
                        via: None,
                    };
                    let jobs = &jobs;
                    scope.spawn(move || probe::run_worker(paths, &source, jobs, PROBES_PER_ROW))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("matrix row thread"))
                .collect()
        });
        for (row, outcome) in rows.iter().zip(outcomes) {
            for r in outcome? {
                let dst = &columns[r.id].name;
                let answered = r.attempts.iter().find(|a| a.answered());
                let verdict = if answered.is_some() { "allowed" } else { "denied" };
                matrix
                    .results
                    .entry(row.name.clone())
                    .or_default()
                    .insert(dst.clone(), verdict.into());
                if let Some(by) = answered.and_then(|a| a.answered_by.clone()) {
                    matrix
                        .answered_by
                        .entry(row.name.clone())
                        .or_default()
                        .insert(dst.clone(), by);
                }
                if answered.is_none() {
                    if let Some(e) = r.attempts.iter().find(|a| a.outcome == Outcome::Error) {
                        let text = e.error.clone().unwrap_or_default();
                        matrix
                            .errors
                            .entry(row.name.clone())
                            .or_default()
                            .insert(dst.clone(), text);
                    }
                }
            }
        }
    }

    let human = render(&matrix);
    if args.json {
        eprint!("{human}");
        println!("{}", serde_json::to_string_pretty(&matrix)?);
    } else {
        print!("{human}");
    }
    if !matrix.errors.is_empty() {
        bail!("some probes failed in the lab itself (see errors); their cells are not verdicts");
    }
    Ok(())
}

/// The human table: sources down, destinations across, `.` allowed, `X` denied, `E` lab error.
pub fn render(m: &Matrix) -> String {
    let rows: Vec<&String> = m.sources.iter().filter(|r| m.results.contains_key(*r)).collect();
    let width = m
        .sources
        .iter()
        .chain(&m.pods)
        .map(String::len)
        .max()
        .unwrap_or(1);
    let mut s = format!("{}/{}: . allowed, X denied\n", m.port, m.protocol);
    s.push_str(&format!("{:width$}", "-"));
    for c in &m.pods {
        s.push_str(&format!(" {c:>width$}"));
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("{r:width$}"));
        for c in &m.pods {
            let cell = if m.errors.get(r).is_some_and(|e| e.contains_key(c)) {
                "E"
            } else {
                match m.results[r].get(c).map(String::as_str) {
                    Some("allowed") => ".",
                    Some(_) => "X",
                    None => "?",
                }
            };
            s.push_str(&format!(" {cell:>width$}"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_style() {
        let mut results = BTreeMap::new();
        for (src, cells) in [
            ("x/a", [("x/a", "allowed"), ("x/b", "denied")]),
            ("x/b", [("x/a", "allowed"), ("x/b", "allowed")]),
        ] {
            results.insert(
                src.to_string(),
                cells
                    .iter()
                    .map(|(d, v)| (d.to_string(), v.to_string()))
                    .collect(),
            );
        }
        let m = Matrix {
            port: 80,
            protocol: Proto::Tcp,
            pods: vec!["x/a".into(), "x/b".into()],
            sources: vec!["x/a".into(), "x/b".into()],
            results,
            answered_by: BTreeMap::new(),
            errors: BTreeMap::new(),
        };
        assert_eq!(
            render(&m),
            "80/tcp: . allowed, X denied\n-   x/a x/b\nx/a   .   X\nx/b   .   .\n"
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["results"]["x/a"]["x/b"], "denied");
        assert!(json.get("errors").is_none());
    }
}

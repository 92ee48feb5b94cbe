//! Conformance scenarios: the upstream NetworkPolicy e2e model (`testdata/policy/model.yaml`) plus one
//! file per case (`testdata/policy/*.yaml`) holding the policies, optional label changes, and expected
//! truth tables printed the way the upstream e2e suite prints them (rows from, columns to, `.` allowed,
//! `X` denied). The lab reads the same files to check real traffic.
//!
//! As upstream (`ignoreLoopback`), a checker of real traffic should ignore the diagonal (a pod to
//! itself never leaves the pod); the tables still give the policy answer for it, which `explain` checks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;

use crate::explain::Peer;
use crate::model::{PodRef, PolicyInput, Protocol};
use crate::selector::Labels;

/// One conformance case.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// The upstream e2e test this restates, if any.
    pub upstream: Option<String>,
    /// Labels merged into namespaces before the policies apply (label-update cases).
    pub namespace_labels: BTreeMap<String, Labels>,
    /// Labels merged into pods (`ns/name` → labels).
    pub pod_labels: BTreeMap<String, Labels>,
    pub policies: Vec<NetworkPolicy>,
    pub expect: Vec<Expectation>,
}

/// The expected reachability for one destination port and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub port: u16,
    pub protocol: Protocol,
    pub table: TruthTable,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    pod_labels: BTreeMap<String, Labels>,
    #[serde(default)]
    policies: Vec<NetworkPolicy>,
    expect: Vec<RawExpectation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    port: u16,
    protocol: String,
    table: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("yaml: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("expect[{index}]: {message}")]
    Expect { index: usize, message: String },
}

impl Scenario {
    pub fn from_yaml(text: &str) -> Result<Self, ScenarioError> {
        let raw: RawScenario = serde_yaml::from_str(text)?;
        let mut expect = Vec::new();
        for (index, e) in raw.expect.into_iter().enumerate() {
            let fail = |message| ScenarioError::Expect { index, message };
            expect.push(Expectation {
                port: e.port,
                protocol: e.protocol.parse().map_err(fail)?,
                table: e.table.parse().map_err(fail)?,
            });
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            upstream: raw.upstream,
            namespace_labels: raw.namespace_labels,
            pod_labels: raw.pod_labels,
            policies: raw.policies,
            expect,
        })
    }

    /// The model with this scenario's label changes and policies applied.
    pub fn apply(&self, model: &PolicyInput) -> PolicyInput {
        let mut input = model.clone();
        for ns in &mut input.namespaces {
            if let Some(extra) = ns
                .metadata
                .name
                .as_ref()
                .and_then(|n| self.namespace_labels.get(n))
            {
                Arc::make_mut(ns)
                    .metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .extend(extra.clone());
            }
        }
        for pod in &mut input.pods {
            let key = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            if let Some(extra) = self.pod_labels.get(&key) {
                let pod = Arc::make_mut(pod);
                let mut labels = pod.labels.to_map();
                labels.extend(extra.clone());
                pod.labels = labels.into();
            }
        }
        input.policies.extend(self.policies.iter().cloned().map(Arc::new));
        input
    }
}

/// Rows are sources (pods, or bare addresses for traffic from outside), columns are destination pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthTable {
    pub columns: Vec<PodRef>,
    pub rows: Vec<(Peer, Vec<bool>)>,
}

impl TruthTable {
    pub fn get(&self, from: &Peer, to: &PodRef) -> Option<bool> {
        let col = self.columns.iter().position(|c| c == to)?;
        self.rows
            .iter()
            .find(|(p, _)| p == from)
            .map(|(_, cells)| cells[col])
    }

    /// Every (from, to, expected) cell.
    pub fn cells(&self) -> impl Iterator<Item = (&Peer, &PodRef, bool)> {
        self.rows.iter().flat_map(move |(from, cells)| {
            self.columns
                .iter()
                .zip(cells)
                .map(move |(to, ok)| (from, to, *ok))
        })
    }

    /// A table with the same rows and columns, filled by `f`.
    pub fn fill(&self, mut f: impl FnMut(&Peer, &PodRef) -> bool) -> TruthTable {
        let rows = self
            .rows
            .iter()
            .map(|(from, _)| (from.clone(), self.columns.iter().map(|to| f(from, to)).collect()))
            .collect();
        TruthTable {
            columns: self.columns.clone(),
            rows,
        }
    }
}

impl std::str::FromStr for TruthTable {
    type Err = String;

    /// Whitespace-separated: a header row starting with `-` naming the destination pods, then one row
    /// per source (`ns/pod` or an IPv4 address) of `.` (allowed) or `X` (denied).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
        let header = lines.next().ok_or("empty table")?;
        let mut head = header.split_whitespace();
        if head.next() != Some("-") {
            return Err(format!("header must start with '-': {header:?}"));
        }
        let columns = head.map(str::parse).collect::<Result<Vec<PodRef>, _>>()?;
        let mut rows = Vec::new();
        for line in lines {
            let mut words = line.split_whitespace();
            let from = words.next().ok_or("empty row")?;
            let peer = match from.parse::<Ipv4Addr>() {
                Ok(ip) => Peer::Ip(ip),
                Err(_) => Peer::Pod(from.parse()?),
            };
            let cells = words
                .map(|w| match w {
                    "." => Ok(true),
                    "X" => Ok(false),
                    other => Err(format!("row {from}: cell {other:?} is neither '.' nor 'X'")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if cells.len() != columns.len() {
                return Err(format!(
                    "row {from}: {} cells for {} columns",
                    cells.len(),
                    columns.len()
                ));
            }
            rows.push((peer, cells));
        }
        Ok(Self { columns, rows })
    }
}

impl fmt::Display for TruthTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.rows.iter().map(|(p, _)| p.to_string()).collect();
        let w0 = names.iter().map(String::len).max().unwrap_or(1).max(1);
        let widths: Vec<usize> = self.columns.iter().map(|c| c.to_string().len()).collect();
        write!(f, "{:<w0$}", "-")?;
        for c in &self.columns {
            write!(f, " {c}")?;
        }
        writeln!(f)?;
        for (name, (_, cells)) in names.iter().zip(&self.rows) {
            write!(f, "{name:<w0$}")?;
            for (ok, w) in cells.iter().zip(&widths) {
                write!(f, " {:<w$}", if *ok { "." } else { "X" })?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

//! Where cluster objects come from: the API server (in a cluster, the default) or manifests
//! (standalone). Both produce a [`crate::snapshot::Snapshot`]; nothing downstream knows which.

pub mod kube;
pub mod manifests;

use std::path::Path;

use anyhow::Result;

use crate::{metrics::AgentCounters, snapshot::Snapshot};

/// An object a source cannot use: reported once with its kind, namespace/name and field, counted,
/// and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The file it was read from, or the API server.
    pub origin: String,
    /// `Kind namespace/name`.
    pub object: String,
    /// The field first, then what is wrong with it.
    pub reason: String,
}

impl Rejected {
    pub fn kind(&self) -> &str {
        self.object.split_whitespace().next().unwrap_or("unknown")
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.object, self.reason)
    }
}

/// A new snapshot and the objects left out of it.
#[derive(Debug, Default)]
pub struct Update {
    pub snapshot: Snapshot,
    pub rejected: Vec<Rejected>,
}

pub enum Source {
    Manifests(manifests::ManifestsSource),
    Kube(kube::KubeSource),
}

impl Source {
    /// `--manifests` selects standalone mode; otherwise the API server of `--kubeconfig`, the
    /// in-cluster configuration, or the default kubeconfig. Needs a Tokio runtime.
    pub async fn start(manifests: Option<&Path>, kubeconfig: Option<&Path>) -> Result<Self> {
        if let Some(path) = manifests {
            return Ok(Self::Manifests(manifests::ManifestsSource::new(path)));
        }
        let (client, url) = kube::config::connect(kubeconfig).await?;
        tracing::info!(%url, "watching the API server");
        Ok(Self::Kube(kube::KubeSource::start(client, url)))
    }

    /// For `status`: `manifests PATH` or `api-server URL`.
    pub fn describe(&self) -> String {
        match self {
            Self::Manifests(m) => format!("manifests {}", m.path().display()),
            Self::Kube(k) => format!("api-server {}", k.url()),
        }
    }

    /// A new snapshot if the objects changed since the last one, or `resync` asks for one anyway.
    /// Never a partial one: the API-server source gives nothing until every kind is listed.
    pub fn poll(&mut self, resync: bool) -> Result<Option<Update>> {
        match self {
            Self::Manifests(m) => m.poll(resync),
            Self::Kube(k) => Ok(k.poll(resync).map(|snapshot| Update {
                snapshot,
                rejected: k.rejected(),
            })),
        }
    }

    /// Every object has been read once.
    pub fn synced(&self) -> bool {
        match self {
            Self::Manifests(m) => m.loaded(),
            Self::Kube(k) => k.synced(),
        }
    }

    /// In a cluster the EndpointSlice controller writes slices; standalone, the agent plays it.
    pub fn derives_endpoint_slices(&self) -> bool {
        matches!(self, Self::Manifests(_))
    }

    /// The source's own numbers for `/metrics`.
    pub fn export(&self, counters: &mut AgentCounters) {
        counters.source_synced = self.synced();
        if let Self::Kube(k) = self {
            for (kind, objects, errors, _) in k.kinds() {
                counters.source_objects.insert(kind, objects);
                counters.source_watch_errors.insert(kind, errors);
            }
        }
    }
}

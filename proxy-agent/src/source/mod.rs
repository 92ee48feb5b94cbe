//! Where cluster objects come from: the API server (in a cluster, the default) or manifests
//! (standalone). Both produce a [`crate::snapshot::Snapshot`]; nothing downstream knows which.

pub mod dir_scan;
pub mod file_watch;
pub mod kinds;
pub mod kube;
pub mod manifests;

use std::path::Path;

use anyhow::Result;

pub use self::kinds::Kinds;
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

/// What a poll brought into the caller's snapshot: which kinds may have changed (all of them on a
/// resync), and the objects left out.
#[derive(Debug, Default)]
pub struct Update {
    pub changed: Kinds,
    pub rejected: Vec<Rejected>,
}

pub enum Source {
    /// With the directory's inotify watch, when one could be set up (else the periodic poll alone).
    Manifests(manifests::ManifestsSource, Option<file_watch::FileWatch>),
    Kube(kube::KubeSource),
}

impl Source {
    /// `--manifests` selects standalone mode; otherwise the API server of `--kubeconfig`, the
    /// in-cluster configuration, or the default kubeconfig. Needs a Tokio runtime.
    pub async fn start(manifests: Option<&Path>, kubeconfig: Option<&Path>) -> Result<Self> {
        if let Some(path) = manifests {
            let watch = file_watch::FileWatch::new(path)
                .inspect_err(|e| {
                    tracing::warn!(error = %format!("{e:#}"), "changes are seen on the periodic poll only")
                })
                .ok();
            let mut source = manifests::ManifestsSource::new(path);
            if let Some(w) = &watch {
                source = source.with_scan_signal(w.signal());
            }
            return Ok(Self::Manifests(source, watch));
        }
        let (client, url) = kube::config::connect(kubeconfig).await?;
        tracing::info!(%url, "watching the API server");
        Ok(Self::Kube(kube::KubeSource::start(client, url)))
    }

    /// For `status`: `manifests PATH` or `api-server URL`.
    pub fn describe(&self) -> String {
        match self {
            Self::Manifests(m, _) => format!("manifests {}", m.path().display()),
            Self::Kube(k) => format!("api-server {}", k.url()),
        }
    }

    /// Brings `snapshot` (the one the previous poll left) up to date if the objects changed since, or
    /// `resync` asks for a full read anyway. Never a partial one: the API-server source gives nothing
    /// until every kind is listed. `scan_all`: have every manifest file's metadata looked at (off
    /// this thread; a later poll reads what it found), not only the files inotify said were written
    /// (a file may change without an event in its directory: a symlink to elsewhere, a ConfigMap
    /// volume's swap).
    pub fn poll(&mut self, resync: bool, snapshot: &mut Snapshot, scan_all: bool) -> Result<Option<Update>> {
        match self {
            Self::Manifests(m, watch) => {
                let dirty = watch.as_ref().and_then(file_watch::FileWatch::take_dirty);
                m.poll(resync, snapshot, dirty, scan_all)
            }
            Self::Kube(k) => Ok(k.poll_into(resync, snapshot).map(|changed| Update {
                changed,
                rejected: k.rejected(),
            })),
        }
    }

    /// Waits until the source has something new: a store changed, a manifest file was written.
    /// Returns at once if that happened since the last poll; never returns for a source that cannot
    /// tell (its changes are found by the periodic poll).
    pub async fn changed(&mut self) {
        match self {
            Self::Manifests(_, Some(w)) => w.changed().await,
            Self::Manifests(_, None) => std::future::pending().await,
            Self::Kube(k) => k.changed().await,
        }
    }

    /// Every object has been read once.
    pub fn synced(&self) -> bool {
        match self {
            Self::Manifests(m, _) => m.loaded(),
            Self::Kube(k) => k.synced(),
        }
    }

    /// In a cluster the EndpointSlice controller writes slices; standalone, the agent plays it.
    pub fn derives_endpoint_slices(&self) -> bool {
        matches!(self, Self::Manifests(..))
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

//! Standalone source: Kubernetes objects from YAML files (one file or every `*.yaml`/`*.yml`/`*.json` in a
//! directory), re-read when a file changes. An object the agent cannot use is reported with its
//! kind/namespace/name and skipped; the rest keeps working.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context, Result};

use crate::snapshot::Snapshot;

pub use super::Rejected;
use super::Update;

/// Re-reads the files that change (or all of them when a resync asks for it). Each file's parsed objects
/// are kept, so editing one file costs parsing that file, not the whole directory: YAML parsing is
/// most of a pass at scale.
pub struct ManifestsSource {
    path: PathBuf,
    files: BTreeMap<PathBuf, ParsedFile>,
    loaded: bool,
}

struct ParsedFile {
    len: u64,
    modified: Option<SystemTime>,
    snapshot: Snapshot,
    rejected: Vec<Rejected>,
}

impl ManifestsSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            files: BTreeMap::new(),
            loaded: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn loaded(&self) -> bool {
        self.loaded
    }

    pub fn poll(&mut self, resync: bool) -> Result<Option<Update>> {
        let current = fingerprint(&self.path)?;
        let mut changed = !self.loaded || current.len() != self.files.len();
        let mut files = BTreeMap::new();
        for (path, len, modified) in current {
            let cached = self.files.remove(&path);
            let parsed = match cached {
                Some(f) if !resync && f.len == len && f.modified == modified => f,
                _ => {
                    changed = true;
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let (mut snapshot, mut rejected) = (Snapshot::default(), Vec::new());
                    parse_into(&text, &path, &mut snapshot, &mut rejected);
                    ParsedFile {
                        len,
                        modified,
                        snapshot,
                        rejected,
                    }
                }
            };
            files.insert(path, parsed);
        }
        // A file that disappeared leaves `self.files` non-empty here.
        changed |= !self.files.is_empty();
        self.files = files;
        self.loaded = true;
        if !changed && !resync {
            return Ok(None);
        }
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        for f in self.files.values() {
            snapshot.extend_from(&f.snapshot);
            rejected.extend(f.rejected.iter().cloned());
        }
        Ok(Some(Update { snapshot, rejected }))
    }
}

/// Files to read, in a stable order.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading manifests directory {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A cheap fingerprint of the files (names, sizes, mtimes): when it changes, the snapshot is re-read.
pub fn fingerprint(path: &Path) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    Ok(manifest_files(path)?
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            Some((p, meta.len(), meta.modified().ok()))
        })
        .collect())
}

pub fn load(path: &Path) -> Result<(Snapshot, Vec<Rejected>)> {
    let mut snapshot = Snapshot::default();
    let mut rejected = Vec::new();
    for file in manifest_files(path)? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        parse_into(&text, &file, &mut snapshot, &mut rejected);
    }
    Ok((snapshot, rejected))
}

/// The documents of a multi-document YAML text, split on `---` lines. Done by hand because serde_yaml's
/// document iterator cannot continue past a syntax error, and one broken document must not hide the
/// others.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed.starts_with("---#") {
            docs.push(String::new());
            continue;
        }
        let current = docs.last_mut().expect("never empty");
        current.push_str(line);
        current.push('\n');
    }
    docs
}

/// Adds every object of a multi-document YAML text to `snapshot`.
pub fn parse_into(text: &str, file: &Path, snapshot: &mut Snapshot, rejected: &mut Vec<Rejected>) {
    for (index, document) in split_documents(text).iter().enumerate() {
        let value = match serde_yaml::from_str::<serde_yaml::Value>(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                rejected.push(Rejected {
                    origin: file.display().to_string(),
                    object: format!("document {}", index + 1),
                    reason: format!("not valid YAML: {e}"),
                });
                continue;
            }
        };
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let name = object_name(&value, &kind, index);
        let result = match kind.as_str() {
            "Node" => push(value, &mut snapshot.nodes),
            "Namespace" => push(value, &mut snapshot.namespaces),
            "Pod" => push(value, &mut snapshot.pods),
            "Service" => push(value, &mut snapshot.services),
            "EndpointSlice" => push(value, &mut snapshot.endpoint_slices),
            "NetworkPolicy" => push(value, &mut snapshot.network_policies),
            "List" => {
                // `kubectl get -o yaml` output: a List whose items are objects.
                if let Some(serde_yaml::Value::Sequence(items)) = value.get("items") {
                    for item in items {
                        let doc = serde_yaml::to_string(item).unwrap_or_default();
                        parse_into(&doc, file, snapshot, rejected);
                    }
                }
                Ok(())
            }
            "" => Err("field kind is missing".to_string()),
            other => Err(format!("kind {other} is not one the agent reads")),
        };
        if let Err(reason) = result {
            rejected.push(Rejected {
                origin: file.display().to_string(),
                object: name,
                reason,
            });
        }
    }
}

/// Deserializes one object; the error names the field path (`spec.containers: invalid type ...`).
fn push<T: serde::de::DeserializeOwned>(value: serde_yaml::Value, into: &mut Vec<T>) -> Result<(), String> {
    serde_path_to_error::deserialize(value)
        .map(|o| into.push(o))
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn object_name(value: &serde_yaml::Value, kind: &str, index: usize) -> String {
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str());
    let ns = meta.and_then(|m| m.get("namespace")).and_then(|n| n.as_str());
    match (name, ns) {
        (Some(n), Some(ns)) => format!("{kind} {ns}/{n}"),
        (Some(n), None) => format!("{kind} {n}"),
        _ => format!(
            "{} (document {})",
            if kind.is_empty() { "object" } else { kind },
            index + 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 192.168.50.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {nodeName: node-a, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: app}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: app}
spec: {containers: "not a list"}
"#;

    #[test]
    fn reads_known_kinds_and_reports_the_rest_by_name() {
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        parse_into(OBJECTS, Path::new("objects.yaml"), &mut snapshot, &mut rejected);
        assert_eq!(snapshot.nodes.len(), 1);
        assert_eq!(snapshot.pods.len(), 1);
        assert_eq!(snapshot.pods[0].metadata.name.as_deref(), Some("web"));
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert_eq!(rejected[0].object, "ConfigMap app/cfg");
        assert!(rejected[0].reason.contains("ConfigMap"));
        assert_eq!(rejected[1].object, "Pod app/broken");
        assert!(
            rejected[1].reason.contains("containers"),
            "{}",
            rejected[1].reason
        );
    }

    #[test]
    fn a_broken_document_does_not_hide_the_others() {
        let text = "kind: Node\nmetadata: {name: a}\n---\n: : :\n---\nkind: Node\nmetadata: {name: b}\n";
        let mut snapshot = Snapshot::default();
        let mut rejected = Vec::new();
        parse_into(text, Path::new("f.yaml"), &mut snapshot, &mut rejected);
        assert_eq!(snapshot.nodes.len(), 2, "{rejected:?}");
        assert_eq!(rejected.len(), 1);
    }

    fn ns(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    }

    fn names(u: &Update) -> Vec<String> {
        let mut v: Vec<String> = u
            .snapshot
            .namespaces
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_changed_files_are_read_again_and_removed_files_take_their_objects() {
        let dir = std::env::temp_dir().join(format!("strait-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), ns("a")).unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b")).unwrap();
        let mut src = ManifestsSource::new(&dir);
        let first = src.poll(false).unwrap().expect("first read");
        assert_eq!(names(&first), ["a", "b"]);
        assert!(src.poll(false).unwrap().is_none(), "nothing changed");
        // a.yaml rewritten behind the source's back with the same size and mtime: only a re-read would
        // see "z", so still seeing "a" shows that changing b.yaml re-reads b.yaml alone.
        let a = dir.join("a.yaml");
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, ns("z")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::write(dir.join("b.yaml"), ns("b2") + "---\n" + &ns("b3")).unwrap();
        let second = src.poll(false).unwrap().expect("b.yaml changed");
        assert_eq!(names(&second), ["a", "b2", "b3"]);
        assert_eq!(
            names(&src.poll(true).unwrap().unwrap()),
            ["b2", "b3", "z"],
            "a resync reads all"
        );
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        let third = src.poll(false).unwrap().expect("a.yaml went away");
        assert_eq!(names(&third), ["b2", "b3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `lab apply FILE` / `lab delete FILE` on a running lab. The merged object set is validated as a whole
//! before anything changes; then removed (or changed) pods are torn down, new (or changed) pods are
//! built on their node with routes on every other node, and the manifests are rewritten so the agents
//! pick the change up. Label-only pod changes touch no wiring. Nodes are fixed while the lab runs.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{
    api, external, layout, manifests, netns, pods,
    spec::{self, Object},
    state::{Paths, PodState, State},
    topology,
};

#[derive(Debug, Args)]
pub struct FileArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Delete,
}

#[derive(Debug, Serialize)]
struct Report {
    name: String,
    /// Objects of the file, `Kind ns/name`.
    objects: Vec<String>,
    pods_added: Vec<String>,
    pods_rebuilt: Vec<String>,
    pods_removed: Vec<String>,
    /// Objects `delete` was given that the lab did not have.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_found: Vec<String>,
}

pub fn command(paths: &Paths, args: FileArgs, mode: Mode) -> Result<()> {
    let old = State::load(paths)?;
    let base = manifests::read_user_objects(paths).context("reading the lab's objects")?;
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let incoming = spec::parse(&text).with_context(|| format!("{} is refused", args.file.display()))?;
    let objects: Vec<String> = incoming.iter().map(|o| o.key().to_string()).collect();
    let given = incoming.clone();
    let (merged, not_found) = match mode {
        Mode::Apply => (spec::merge(&base, incoming), Vec::new()),
        Mode::Delete => {
            let (kept, missing) = spec::remove(&base, &incoming);
            (kept, missing.iter().map(ToString::to_string).collect())
        }
    };
    let cluster = spec::validate(merged).context("the lab would not be valid after this change")?;
    check_nodes_unchanged(&old, &cluster.objects)?;
    let mut new = layout::layout(paths, &cluster, Some(&old))?;

    let same = |a: &PodState, b: &PodState| a.ip == b.ip && a.node == b.node && a.ports == b.ports;
    let gone: Vec<&PodState> = old
        .pods
        .iter()
        .filter(|o| !new.pods.iter().any(|n| n.name == o.name && same(o, n)))
        .collect();
    let fresh: Vec<String> = new
        .pods
        .iter()
        .filter(|n| !old.pods.iter().any(|o| o.name == n.name && same(o, n)))
        .map(|n| n.name.clone())
        .collect();
    let mut report = Report {
        name: paths.lab.clone(),
        objects,
        pods_added: fresh
            .iter()
            .filter(|n| !old.pods.iter().any(|o| &o.name == *n))
            .cloned()
            .collect(),
        pods_rebuilt: fresh
            .iter()
            .filter(|n| old.pods.iter().any(|o| &o.name == *n))
            .cloned()
            .collect(),
        pods_removed: gone
            .iter()
            .filter(|o| !new.pods.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect(),
        not_found,
    };

    for p in &gone {
        eprintln!("removing pod {}", p.name);
        pods::remove(paths, &old, p)?;
    }
    // Pods being rebuilt were just removed above; the new ones have no netns yet.
    for name in &fresh {
        let p = new
            .pods
            .iter()
            .find(|p| &p.name == name)
            .expect("fresh pods are in the new state");
        eprintln!("building pod {name} on {}", p.node);
        topology::add_pod(&new, p)?;
    }
    pods::start_all(paths, &mut new, &fresh)?;
    netns::ip_batch(
        &new.external.netns,
        &external::service_routes(&new, &external::routed(&old)),
    )?;
    let (ext, node) = external::address_changes(&new, &old.external.addresses);
    netns::ip_batch(&new.external.netns, &ext)?;
    for n in &new.nodes {
        netns::ip_batch(&n.netns, &node)?;
    }
    manifests::write_user_objects(paths, &cluster.objects)?;
    match &new.control_plane {
        None => manifests::write(paths, &cluster.objects)?,
        // Through the API; the EndpointSlice controller follows, and `apply` returns once it has,
        // as a manifests write is read by the agents within their next tick.
        Some(cp) => {
            match mode {
                Mode::Apply => api::apply(cp, &new, &given, &report.pods_rebuilt)?,
                Mode::Delete => api::delete(cp, &given)?,
            }
            api::wait_endpoint_slices(cp, &cluster.objects)?;
        }
    }
    new.save(paths)?;

    report.objects.sort();
    let verb = if mode == Mode::Apply { "applied" } else { "deleted" };
    let human = format!(
        "{verb} {} objects in lab {}: pods added {:?}, rebuilt {:?}, removed {:?}{}\n",
        report.objects.len(),
        paths.lab,
        report.pods_added,
        report.pods_rebuilt,
        report.pods_removed,
        if report.not_found.is_empty() {
            String::new()
        } else {
            format!("; not in the lab: {:?}", report.not_found)
        }
    );
    super::output(args.json, &human, &report)
}

/// Nodes (and their addresses) are the lab's frame: changing them means a new lab.
fn check_nodes_unchanged(state: &State, objects: &[Object]) -> Result<()> {
    let nodes: Vec<&Object> = objects.iter().filter(|o| matches!(o, Object::Node(_))).collect();
    for o in &nodes {
        let name = o.key().name;
        if state.node(&name).is_none() {
            bail!(
                "Node {name}: nodes cannot be added to a running lab (lab down, then lab up with the new file)"
            );
        }
    }
    for n in &state.nodes {
        if !nodes.iter().any(|o| o.key().name == n.name) {
            bail!(
                "Node {}: nodes cannot be removed from a running lab (lab down, then lab up)",
                n.name
            );
        }
    }
    Ok(())
}

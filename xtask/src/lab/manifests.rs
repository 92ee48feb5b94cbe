//! `<state dir>/manifests/objects.yaml`: the lab's objects as the agents read them (standalone mode).
//! The lab plays the API server here: every namespace in use exists as a Namespace carrying the
//! `kubernetes.io/metadata.name` label. EndpointSlices for Services with a selector and none in the file
//! are derived by the agents themselves (standalone mode plays the EndpointSlice controller), so the
//! lab exercises that code instead of keeping a second copy of it. Replaced atomically, so an agent
//! never reads half a file.

use std::collections::BTreeSet;

use anyhow::Result;
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::{
    spec::Object,
    state::{Paths, write_atomically},
};

pub const FILE: &str = "objects.yaml";

/// The objects as the agents get them: the lab's own kinds (ExternalClient) are not theirs.
pub fn complete(objects: &[Object]) -> Vec<Object> {
    let mut out: Vec<Object> = objects
        .iter()
        .filter(|o| !matches!(o, Object::ExternalClient(_)))
        .cloned()
        .collect();
    let declared: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let used: BTreeSet<String> = objects.iter().filter_map(|o| o.key().namespace).collect();
    for ns in used.difference(&declared) {
        out.push(Object::Namespace(Box::new(Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        })));
    }
    for o in &mut out {
        if let Object::Namespace(n) = o {
            let name = n.metadata.name.clone().unwrap_or_default();
            n.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("kubernetes.io/metadata.name".into(), name);
        }
    }
    out
}

pub fn render(objects: &[Object]) -> Result<String> {
    let mut text = String::from("# Written by `cargo xtask lab`; replaced on every apply/delete.\n");
    for o in objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(&o.to_value())?);
    }
    Ok(text)
}

pub fn write(paths: &Paths, objects: &[Object]) -> Result<()> {
    let text = render(&complete(objects))?;
    write_atomically(&paths.manifests().join(FILE), text.as_bytes())
}

/// The objects as the user gave them (without what `complete` added), to merge `apply`/`delete` into.
pub fn read_user_objects(paths: &Paths) -> Result<Vec<Object>> {
    let text = std::fs::read_to_string(paths.dir.join("objects.user.yaml"))?;
    super::spec::parse(&text)
}

pub fn write_user_objects(paths: &Paths, objects: &[Object]) -> Result<()> {
    write_atomically(&paths.dir.join("objects.user.yaml"), render(objects)?.as_bytes())
}

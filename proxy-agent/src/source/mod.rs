//! Where cluster objects come from. Standalone mode reads manifests; the API-server source comes with
//! the agent issue. Both produce a [`crate::snapshot::Snapshot`].

pub mod manifests;

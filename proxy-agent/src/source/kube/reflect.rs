//! One reflector: list+watch of one kind into its store, with the objects cut down before they are
//! stored, unusable objects set aside by name, and the kind's health (ready, errors, count) kept
//! where the source can read it without waiting on the task.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use ::kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{self as core, Namespace, Node},
        discovery::v1 as discovery,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    store::{Change, Key, ObjectStore},
    strip::Strip,
};
use crate::slim::{self, EndpointSlice, Pod, Service};

/// `(namespace, name)` → why the object was set aside.
type Rejections = BTreeMap<Key, String>;

/// What the source knows about one kind's reflector.
#[derive(Debug)]
pub struct KindState {
    pub kind: &'static str,
    /// The first full list has been stored; stays true through later relists, because the store
    /// keeps its previous contents until a relist is complete.
    ready: AtomicBool,
    errors: AtomicU64,
    objects: AtomicU64,
    /// Bumped on every change to this kind's store, so a pass can tell which kinds changed.
    generation: AtomicU64,
    rejected: Mutex<RejectedObjects>,
}

#[derive(Debug, Default)]
struct RejectedObjects {
    current: Rejections,
    /// Filled during a relist and swapped in when it completes, as the store does with objects.
    relisting: Rejections,
}

impl KindState {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            ready: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            rejected: Mutex::default(),
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The objects of this kind that are set aside now: `(namespace, name, reason)`.
    pub fn rejected(&self) -> Vec<(String, String, String)> {
        self.lock()
            .current
            .iter()
            .map(|((ns, name), reason)| (ns.clone(), name.clone(), reason.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RejectedObjects> {
        self.rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A kind the source stores: read from the API type `Api` (its URL and identity), with the
/// metadata set after the rest of the object is read (see [`convert`]).
pub trait Kind: Strip + DeserializeOwned + Debug + Send + Sync + 'static {
    type Api: Resource<DynamicType = ()>;
    fn set_metadata(&mut self, metadata: ObjectMeta);
}

/// A kind stored as the API type `$api` itself or as a compact type read from it; `$metadata` turns the
/// API's metadata into the stored kind's.
macro_rules! kind {
    ($kind:ty, $api:ty, $metadata:expr) => {
        impl Kind for $kind {
            type Api = $api;
            fn set_metadata(&mut self, metadata: ObjectMeta) {
                self.metadata = $metadata(metadata);
            }
        }
    };
}

kind!(Node, Node, std::convert::identity);
kind!(Namespace, Namespace, std::convert::identity);
kind!(NetworkPolicy, NetworkPolicy, std::convert::identity);
kind!(Service, core::Service, slim::ObjectMeta::from);
kind!(EndpointSlice, discovery::EndpointSlice, slim::ObjectMeta::from);
kind!(Pod, core::Pod, slim::ObjectMeta::from);

/// Starts the reflector of kind `K`; every change to its store bumps `changed`.
pub fn spawn<K: Kind>(
    client: Client,
    state: Arc<KindState>,
    changed: Arc<watch::Sender<u64>>,
) -> (ObjectStore<K>, JoinHandle<()>) {
    let store = ObjectStore::default();
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<K::Api>(&()));
    // The watcher relists by itself after a 410 Gone or a broken watch; the backoff spaces out
    // retries while the API server is away. Objects arrive untyped so that one object that does not
    // fit its type is set aside alone instead of failing the whole list.
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let writer = store.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    let Some(change) = typed::<K>(event, &state) else {
                        continue;
                    };
                    let listing = matches!(change, Change::Relist | Change::Listed(..));
                    let listed = matches!(change, Change::RelistDone);
                    writer.apply(change);
                    if listing {
                        continue;
                    }
                    if listed {
                        state.ready.store(true, Ordering::Release);
                        tracing::debug!(kind = state.kind, objects = writer.count(), "listed");
                    }
                    state.objects.store(writer.count() as u64, Ordering::Relaxed);
                    // Before the shared counter, so a pass woken by it sees this kind as changed.
                    state.generation.fetch_add(1, Ordering::Release);
                    changed.send_modify(|generation| *generation += 1);
                }
                Err(e) => {
                    state.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(kind = state.kind, error = %e, "watch failed; the store keeps its objects and the watch is retried");
                }
            }
        }
    });
    (store, task)
}

/// The typed, stripped change; `None` for an object listed during a relist that cannot be used (it
/// is simply absent from the new list). An unusable object in a watch event becomes a delete, so that
/// an earlier usable version of it does not linger in the store.
fn typed<K: Kind>(event: Event<DynamicObject>, state: &KindState) -> Option<Change<K>> {
    match event {
        Event::Init => {
            state.lock().relisting.clear();
            Some(Change::Relist)
        }
        Event::InitDone => {
            let mut rejected = state.lock();
            let relisted = std::mem::take(&mut rejected.relisting);
            rejected.current = relisted;
            Some(Change::RelistDone)
        }
        Event::InitApply(obj) => match convert::<K>(obj) {
            Ok((key, k)) => Some(Change::Listed(key, k)),
            Err((key, reason)) => {
                state.lock().relisting.insert(key, reason);
                None
            }
        },
        Event::Apply(obj) => match convert::<K>(obj) {
            Ok((key, k)) => {
                state.lock().current.remove(&key);
                Some(Change::Applied(key, k))
            }
            Err((key, reason)) => {
                state.lock().current.insert(key.clone(), reason);
                Some(Change::Deleted(key))
            }
        },
        Event::Delete(obj) => {
            let key = (obj.namespace().unwrap_or_default(), obj.name_any());
            state.lock().current.remove(&key);
            Some(Change::Deleted(key))
        }
    }
}

/// The object's key and the object as `K`, stripped; or its key and why it cannot be used (the field
/// path first).
pub fn convert<K: Kind>(obj: DynamicObject) -> Result<(Key, K), (Key, String)> {
    let DynamicObject {
        mut metadata, data, ..
    } = obj;
    let key = (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    );
    if metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err((key, "metadata.name: missing".into()));
    }
    // The metadata is already typed; its largest parts go before anything is copied.
    metadata.managed_fields = None;
    metadata.annotations = None;
    let mut k: K = serde_path_to_error::deserialize(data)
        .map_err(|e| (key.clone(), format!("{}: {}", e.path(), e.inner())))?;
    k.set_metadata(metadata);
    k.strip();
    Ok((key, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn converts_and_strips() {
        let obj = dynamic(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "namespace": "x", "annotations": {"k": "v"}, "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.0.0.1", "hostIP": "192.168.0.1"}
        }));
        let (key, pod): (_, Pod) = convert(obj).unwrap();
        assert_eq!(key, ("x".to_owned(), "a".to_owned()));
        assert_eq!(pod.metadata.name.as_deref(), Some("a"));
        assert_eq!(
            pod.metadata,
            crate::slim::ObjectMeta {
                name: Some("a".into()),
                namespace: Some("x".into()),
                ..Default::default()
            },
            "no annotations, labels read out"
        );
        assert_eq!(pod.labels.get("app"), Some("a"));
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n1"));
        let status = pod.status.unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn an_unusable_object_is_named_with_the_field() {
        let obj = dynamic(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": [{"port": "eighty"}]}
        }));
        let (key, reason) = convert::<Service>(obj).unwrap_err();
        assert_eq!(key, ("shop".to_owned(), "web".to_owned()));
        assert!(reason.starts_with("spec.ports[0].port: invalid type"), "{reason}");
        let nameless = dynamic(serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {}}));
        assert_eq!(
            convert::<Service>(nameless).unwrap_err().1,
            "metadata.name: missing"
        );
    }

    #[test]
    fn rejected_objects_follow_relists_and_updates() {
        let state = KindState::new("Service");
        let bad = || {
            dynamic(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": "x"}
            }))
        };
        let good = || {
            dynamic(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}
            }))
        };
        // A relist: the bad object is absent from the list and set aside once the list is complete.
        assert!(matches!(
            typed::<Service>(Event::Init, &state),
            Some(Change::Relist)
        ));
        assert!(typed::<Service>(Event::InitApply(bad()), &state).is_none());
        assert!(state.rejected().is_empty(), "not before the list is complete");
        typed::<Service>(Event::InitDone, &state);
        assert_eq!(state.rejected().len(), 1);
        assert_eq!(state.rejected()[0].1, "web");
        // Fixed by an update.
        assert!(matches!(
            typed::<Service>(Event::Apply(good()), &state),
            Some(Change::Applied(..))
        ));
        assert!(state.rejected().is_empty());
        // Broken again: a delete of the stored version.
        match typed::<Service>(Event::Apply(bad()), &state) {
            Some(Change::Deleted(key)) => assert_eq!(key, ("shop".to_owned(), "web".to_owned())),
            other => panic!("{other:?}"),
        }
        assert_eq!(state.rejected().len(), 1);
        // Deleted: nothing left to report.
        typed::<Service>(Event::Delete(bad()), &state);
        assert!(state.rejected().is_empty());
    }
}

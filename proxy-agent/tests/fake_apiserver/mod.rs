//! A list+watch API server for the source's tests, faithful where kube-rs's watcher depends on it:
//! - LIST with a resourceVersion, `limit`/`continue` pages served from the snapshot the first page
//!   was cut from;
//! - WATCH from a resourceVersion as newline-delimited JSON events (ADDED, MODIFIED, DELETED), with
//!   BOOKMARKs when `allowWatchBookmarks` is set, closed after `timeoutSeconds`;
//! - an event log that can be compacted: a watch from before the compaction point gets an ERROR event
//!   with a 410 "Expired" Status, as etcd compaction makes the real one answer;
//! - watches that can be closed (watch restart), lists that can be made to fail, and a full outage
//!   (connections cut, port closed) with the same address afterwards.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle, time::Instant};

/// How often an open watch with bookmarks enabled is sent one.
const BOOKMARK_EVERY: Duration = Duration::from_millis(200);

/// (resource, path, apiVersion, kind)
const RESOURCES: [(&str, &str, &str, &str); 6] = [
    ("nodes", "/api/v1/nodes", "v1", "Node"),
    ("namespaces", "/api/v1/namespaces", "v1", "Namespace"),
    ("pods", "/api/v1/pods", "v1", "Pod"),
    ("services", "/api/v1/services", "v1", "Service"),
    (
        "endpointslices",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    ),
    (
        "networkpolicies",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
        "NetworkPolicy",
    ),
];

fn resource_of_kind(kind: &str) -> &'static str {
    RESOURCES
        .iter()
        .find(|r| r.3 == kind)
        .unwrap_or_else(|| panic!("kind {kind} is not served"))
        .0
}

#[derive(Clone)]
struct Change {
    rv: u64,
    resource: &'static str,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    /// Changes at or below this resourceVersion are gone from the log.
    compacted: u64,
    close_epoch: u64,
    /// Watches hold their events back (a batch of changes is being made).
    paused: bool,
    fail_lists: BTreeSet<&'static str>,
    /// Continuation pages are answered this late (a slow relist).
    page_delay: Duration,
    /// First pages served (a relist each), by resource.
    lists: BTreeMap<&'static str, u64>,
    /// Continuation pages served, by resource.
    pages: BTreeMap<&'static str, u64>,
    watches: BTreeMap<&'static str, u64>,
    gone_sent: BTreeMap<&'static str, u64>,
    last_bookmark: BTreeMap<&'static str, u64>,
    continues: HashMap<String, (u64, Vec<Value>)>,
    next_token: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every change, compaction and close: open watches look again.
    wake: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let (wake, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            inner: Mutex::default(),
            wake,
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().unwrap();
        let server = Self {
            shared,
            addr,
            accept: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new().fallback(handle).with_state(self.shared.clone());
        let task = tokio::spawn(async move {
            // Connection tasks belong to the accept loop: aborting it cuts every open connection,
            // as a dead API server would.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// The API server goes away: open connections are cut and the port refuses new ones.
    pub async fn down(&self) {
        let task = self.accept.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.close_watches();
    }

    /// Back on the same address.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebinding the fake API server");
        self.serve(listener);
    }

    /// Adds or replaces an object (by kind, namespace and name), as ADDED or MODIFIED.
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"].as_str().expect("object without kind").to_owned();
        let resource = resource_of_kind(&kind);
        let key = key_of(&object);
        let mut inner = self.shared.lock();
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.1, rv));
        }
        let existed = inner
            .objects
            .entry(resource)
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let type_ = if existed { "MODIFIED" } else { "ADDED" };
        inner.history.push(Change {
            rv,
            resource,
            type_,
            object,
        });
        drop(inner);
        self.shared.wake();
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = resource_of_kind(kind);
        let mut inner = self.shared.lock();
        let Some(mut object) = inner
            .objects
            .entry(resource)
            .or_default()
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            panic!("delete of {kind} {namespace}/{name}, which does not exist");
        };
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.history.push(Change {
            rv,
            resource,
            type_: "DELETED",
            object,
        });
        drop(inner);
        self.shared.wake();
    }

    /// Forgets the event log up to now: any watch that has not seen every change gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        drop(inner);
        self.shared.wake();
    }

    /// Changes applied and compacted in one step, so that no open watch sees them as events: they
    /// happened while the client was away.
    pub fn while_away(&self, changes: impl FnOnce(&Self)) {
        // Watches deliver nothing while paused, so none sees part of the batch.
        self.shared.lock().paused = true;
        changes(self);
        let mut inner = self.shared.lock();
        inner.compacted = inner.rv;
        inner.history.clear();
        inner.paused = false;
        drop(inner);
        self.shared.wake();
    }

    /// Ends every open watch stream normally (a watch restart).
    pub fn close_watches(&self) {
        self.shared.lock().close_epoch += 1;
        self.shared.wake();
    }

    pub fn fail_lists(&self, resource: &'static str, fail: bool) {
        let mut inner = self.shared.lock();
        if fail {
            inner.fail_lists.insert(resource);
        } else {
            inner.fail_lists.remove(resource);
        }
    }

    pub fn delay_pages(&self, delay: Duration) {
        self.shared.lock().page_delay = delay;
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    pub fn lists(&self, resource: &str) -> u64 {
        self.shared.lock().lists.get(resource).copied().unwrap_or(0)
    }

    pub fn pages(&self, resource: &str) -> u64 {
        self.shared.lock().pages.get(resource).copied().unwrap_or(0)
    }

    pub fn watches(&self, resource: &str) -> u64 {
        self.shared.lock().watches.get(resource).copied().unwrap_or(0)
    }

    pub fn gone_sent(&self, resource: &str) -> u64 {
        self.shared.lock().gone_sent.get(resource).copied().unwrap_or(0)
    }

    pub fn last_bookmark(&self, resource: &str) -> u64 {
        self.shared
            .lock()
            .last_bookmark
            .get(resource)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.close_watches();
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().expect("object without a name").to_owned(),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(&(resource, _, api_version, kind)) = RESOURCES.iter().find(|r| r.1 == uri.path()) else {
        let body = status(404, "NotFound", &format!("{} is not served here", uri.path()));
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
        let from = query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok());
        return watch(shared, resource, api_version, kind, from, timeout, bookmarks);
    }
    if query.contains_key("continue") {
        let delay = shared.lock().page_delay;
        tokio::time::sleep(delay).await;
    }
    list(&shared, resource, api_version, kind, &query)
}

fn list(
    shared: &Shared,
    resource: &'static str,
    api_version: &str,
    kind: &str,
    query: &HashMap<String, String>,
) -> Response {
    let mut inner = shared.lock();
    if inner.fail_lists.contains(resource) {
        let body = status(500, "InternalError", "etcdserver: request timed out");
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    let (rv, mut items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some(rest) = inner.continues.remove(token) else {
                let body = status(410, "Expired", "the provided continue parameter is too old");
                return (StatusCode::GONE, axum::Json(body)).into_response();
            };
            *inner.pages.entry(resource).or_default() += 1;
            rest
        }
        None => {
            *inner.lists.entry(resource).or_default() += 1;
            // Items of a list carry no kind or apiVersion of their own, as the real server's.
            let items = inner
                .objects
                .get(resource)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|o| {
                    let mut o = o.clone();
                    if let Some(map) = o.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    o
                })
                .collect();
            (inner.rv, items)
        }
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut continue_token = Value::Null;
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        let rest = items.split_off(limit);
        inner.next_token += 1;
        let token = format!("page-{}", inner.next_token);
        inner.continues.insert(token.clone(), (rv, rest));
        continue_token = json!(token);
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if !continue_token.is_null() {
        metadata["continue"] = continue_token;
    }
    let body = json!({
        "kind": format!("{kind}List"), "apiVersion": api_version,
        "metadata": metadata, "items": items
    });
    axum::Json(body).into_response()
}

fn line(value: &Value) -> Bytes {
    let mut text = serde_json::to_vec(value).expect("JSON");
    text.push(b'\n');
    Bytes::from(text)
}

/// What a watch sends next, read under the server's lock.
enum Next {
    Send(Vec<Bytes>),
    Gone(Bytes),
    Closed,
}

fn watch(
    shared: Arc<Shared>,
    resource: &'static str,
    api_version: &'static str,
    kind: &'static str,
    from: Option<u64>,
    timeout: Duration,
    bookmarks: bool,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
    let (epoch, mut last) = {
        let mut inner = shared.lock();
        *inner.watches.entry(resource).or_default() += 1;
        (inner.close_epoch, from.unwrap_or(inner.rv))
    };
    let mut wake = shared.wake.subscribe();
    tokio::spawn(async move {
        let deadline = Instant::now() + timeout;
        let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
        loop {
            let next = {
                let mut inner = shared.lock();
                if inner.close_epoch != epoch {
                    Next::Closed
                } else if inner.paused {
                    Next::Send(Vec::new())
                } else if last < inner.compacted {
                    *inner.gone_sent.entry(resource).or_default() += 1;
                    let message = format!("too old resource version: {last} ({})", inner.compacted);
                    Next::Gone(line(
                        &json!({"type": "ERROR", "object": status(410, "Expired", &message)}),
                    ))
                } else {
                    let mut lines: Vec<Bytes> = inner
                        .history
                        .iter()
                        .filter(|c| c.resource == resource && c.rv > last)
                        .map(|c| line(&json!({"type": c.type_, "object": c.object})))
                        .collect();
                    // Everything up to the server's resourceVersion is in the log, so this watch
                    // has now seen all of it.
                    last = last.max(inner.rv);
                    if bookmarks && Instant::now() >= next_bookmark {
                        next_bookmark = Instant::now() + BOOKMARK_EVERY;
                        inner.last_bookmark.insert(resource, last);
                        lines.push(line(&json!({
                            "type": "BOOKMARK",
                            "object": {"kind": kind, "apiVersion": api_version,
                                       "metadata": {"resourceVersion": last.to_string()}}
                        })));
                    }
                    Next::Send(lines)
                }
            };
            match next {
                Next::Closed => return,
                Next::Gone(error) => {
                    let _ = tx.send(error).await;
                    return;
                }
                Next::Send(lines) => {
                    for l in lines {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let wait_until = if bookmarks {
                deadline.min(next_bookmark)
            } else {
                deadline
            };
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(wait_until) => {}
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    }));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

//! The API-server source against a list+watch server (`fake_apiserver`), with kube-rs's own client
//! and watcher: initial sync, changes, watch restarts, 410 Gone, outages, pages, bookmarks, and
//! objects it cannot use. Every wait is bounded.

mod fake_apiserver;

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use proxy_agent::{
    snapshot::Snapshot,
    source::{Kinds, Source, kube::KubeSource},
};
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
/// Long enough for kube's backoff (0.8 s doubling, with jitter) to come round after an outage.
const WAIT_AFTER_OUTAGE: Duration = Duration::from_secs(30);

fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn start(server: &FakeApiServer) -> KubeSource {
    KubeSource::start(client(server), server.url())
}

/// Waits for a snapshot that satisfies `ok`; panics with `what` and the last snapshot after `limit`.
async fn until(
    source: &mut KubeSource,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + limit;
    loop {
        // A forced poll: it also marks the stores' changes seen, so the wait below is for the next one.
        if let Some(s) = source.poll(true).filter(|s| ok(s)) {
            return s;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}; synced {}, last snapshot: {}",
                source.synced(),
                source.snapshot().as_ref().map_or("none".into(), summary)
            );
        }
        // A change wakes the wait; the short cap covers readiness, which is not a store change.
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_millis(100)), source.changed()).await;
    }
}

async fn until_true(limit: Duration, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The objects' names (every kind the source stores has `metadata.name`).
macro_rules! names {
    ($objects:expr) => {
        $objects
            .iter()
            .map(|o| o.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<String>>()
    };
}

fn summary(s: &Snapshot) -> String {
    format!(
        "nodes {:?}, namespaces {:?}, pods {}, services {:?}, slices {:?}, policies {:?}",
        names!(s.nodes),
        names!(s.namespaces),
        s.pods.len(),
        names!(s.services),
        names!(s.endpoint_slices),
        names!(s.network_policies)
    )
}

fn service_names(s: &Snapshot) -> Vec<String> {
    names!(s.services)
}

fn cluster_ip(s: &Snapshot, name: &str) -> Option<String> {
    let svc = s
        .services
        .iter()
        .find(|x| x.metadata.name.as_deref() == Some(name))?;
    svc.spec.as_ref()?.cluster_ip.as_deref().map(str::to_owned)
}

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": "shop",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
        },
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    })
}

fn pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"},
                     "annotations": {"a": "b"}, "managedFields": [{"manager": "kubelet"}]},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "app", "image": "registry/app:1", "env": [{"name": "A", "value": "B"}],
             "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "registry/log:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.50.10",
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
                   "containerStatuses": [{"name": "app", "image": "i", "imageID": "x", "ready": true, "restartCount": 0}]}
    })
}

/// One object of every kind, plus two Services.
fn seed(server: &FakeApiServer) {
    server.apply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}],
                   "images": [{"names": ["registry/app:1"], "sizeBytes": 100}]}
    }));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}},
        "spec": {"finalizers": ["kubernetes"]}
    }));
    server.apply(pod("web-1", "10.244.1.2"));
    server.apply(service("web", "10.96.0.10"));
    server.apply(service("api", "10.96.0.11"));
    server.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1x", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web", "app": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.2"], "conditions": {"ready": true}, "nodeName": "n1",
                       "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}}]
    }));
    server.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-web", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"ports": [{"port": "http"}]}]}
    }));
}

#[tokio::test]
async fn initial_sync_gives_every_kind_stripped() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    let s = until(&mut source, WAIT, "the first snapshot", |_| true).await;
    assert_eq!(
        (
            s.nodes.len(),
            s.namespaces.len(),
            s.pods.len(),
            s.services.len(),
            s.endpoint_slices.len(),
            s.network_policies.len()
        ),
        (1, 1, 1, 2, 1, 1),
        "{}",
        summary(&s)
    );
    // Sorted by namespace/name, whatever the store's order.
    assert_eq!(service_names(&s), ["api", "web"]);
    let pod = &s.pods[0];
    assert!(pod.metadata.labels.is_none(), "read into the pod's labels");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("n1"));
    assert_eq!(spec.containers.len(), 1, "the port-less container is dropped");
    let port = &spec.containers[0].ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.container_port), (Some("http"), 8080));
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.2"));
    assert_eq!(status.conditions.as_ref().unwrap().len(), 1);
    let slice = &s.endpoint_slices[0];
    assert!(slice.metadata.labels.is_none(), "read into service_name");
    assert_eq!(slice.service_name.as_deref(), Some("web"));
    assert!(s.services.iter().all(|svc| svc.metadata.uid.is_none()));
    assert!(s.nodes[0].status.as_ref().unwrap().images.is_none());
    assert!(source.rejected().is_empty());
    // One list per kind, then watches.
    for resource in [
        "nodes",
        "namespaces",
        "pods",
        "services",
        "endpointslices",
        "networkpolicies",
    ] {
        assert_eq!(server.lists(resource), 1, "{resource}");
    }
    // What the consumers make of it: the Service planner finds the backend through the slice.
    let plan = proxy_agent::lb::plan(&s, "n1");
    assert!(plan.rejected.is_empty(), "{:?}", plan.rejected);
    assert!(format!("{plan:?}").contains("10.244.1.2"), "{plan:?}");
}

#[tokio::test]
async fn service_changes_show_up() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    until(&mut source, WAIT, "the first snapshot", |_| true).await;

    server.apply(service("cart", "10.96.0.12"));
    until(&mut source, WAIT, "cart added", |s| {
        service_names(s) == ["api", "cart", "web"]
    })
    .await;

    server.apply(service("web", "10.96.0.20"));
    until(&mut source, WAIT, "web modified", |s| {
        cluster_ip(s, "web").as_deref() == Some("10.96.0.20")
    })
    .await;

    server.delete("Service", "shop", "api");
    let s = until(&mut source, WAIT, "api deleted", |s| {
        service_names(s) == ["cart", "web"]
    })
    .await;
    assert_eq!(cluster_ip(&s, "cart").as_deref(), Some("10.96.0.12"));
    assert_eq!(
        server.lists("services"),
        1,
        "changes came as watch events, not relists"
    );
}

#[tokio::test]
async fn poll_gives_a_snapshot_on_change_or_resync_only() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    // Not `until`: waiting on `changed` marks the change as seen.
    until_true(WAIT, "the first sync", || source.synced()).await;
    assert!(source.poll(false).is_some(), "the first sync is a change");
    assert!(source.poll(false).is_none(), "nothing changed since");
    assert!(source.poll(true).is_some(), "a resync reads the stores anyway");
    server.apply(service("cart", "10.96.0.12"));
    let deadline = Instant::now() + WAIT;
    let s = loop {
        if let Some(s) = source.poll(false) {
            break s;
        }
        assert!(Instant::now() < deadline, "no snapshot after a change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(service_names(&s), ["api", "cart", "web"]);
}

#[tokio::test]
async fn a_closed_watch_resumes_from_its_resource_version() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    until(&mut source, WAIT, "the first snapshot", |_| true).await;
    until_true(WAIT, "the Service watch to open", || {
        server.watches("services") >= 1
    })
    .await;
    let watches = server.watches("services");

    // Changes right after the close land before or after the new watch starts; either way the log
    // from the source's resourceVersion carries them.
    server.close_watches();
    server.apply(service("cart", "10.96.0.12"));
    server.delete("Service", "shop", "api");
    server.apply(service("web", "10.96.0.20"));
    let s = until(&mut source, WAIT, "the changes after the watch restart", |s| {
        service_names(s) == ["cart", "web"] && cluster_ip(s, "web").as_deref() == Some("10.96.0.20")
    })
    .await;
    assert_eq!(s.pods.len(), 1);
    assert!(server.watches("services") > watches, "the watch was opened again");
    assert_eq!(server.lists("services"), 1, "resumed without a relist");
    assert_eq!(server.gone_sent("services"), 0);
}

#[tokio::test]
async fn gone_relists_and_converges() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    until(&mut source, WAIT, "the first snapshot", |_| true).await;
    until_true(WAIT, "the Service watch to open", || {
        server.watches("services") >= 1
    })
    .await;

    server.while_away(|s| {
        s.delete("Service", "shop", "api");
        s.apply(service("cart", "10.96.0.12"));
        s.apply(service("web", "10.96.0.20"));
        s.delete("Pod", "shop", "web-1");
    });
    let s = until(&mut source, WAIT, "convergence after 410 Gone", |s| {
        service_names(s) == ["cart", "web"]
            && cluster_ip(s, "web").as_deref() == Some("10.96.0.20")
            && s.pods.is_empty()
    })
    .await;
    assert!(
        server.gone_sent("services") >= 1,
        "the watch was answered with 410"
    );
    assert_eq!(server.lists("services"), 2, "one relist after 410 Gone");
    assert_eq!(s.network_policies.len(), 1, "untouched kinds keep their objects");
    let errors: u64 = source.kinds().filter(|k| k.0 == "Service").map(|k| k.2).sum();
    assert!(errors >= 1, "410 Gone is counted as a watch error");
}

#[tokio::test]
async fn an_outage_keeps_the_last_state_and_the_return_resyncs_without_a_flush() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    let before = until(&mut source, WAIT, "the first snapshot", |_| true).await;
    until_true(WAIT, "every watch to open", || {
        [
            "nodes",
            "namespaces",
            "pods",
            "services",
            "endpointslices",
            "networkpolicies",
        ]
        .iter()
        .all(|r| server.watches(r) >= 1)
    })
    .await;

    server.down().await;
    until_true(WAIT, "watch errors while the server is down", || {
        source.kinds().map(|k| k.2).sum::<u64>() >= 2
    })
    .await;
    let during = source.snapshot().expect("still synced");
    assert_eq!(
        summary(&during),
        summary(&before),
        "the stores keep their objects"
    );
    assert!(source.synced());

    // Meanwhile the cluster moves on, beyond what the event log keeps.
    server.while_away(|s| {
        s.delete("Service", "shop", "api");
        s.apply(service("cart", "10.96.0.12"));
    });
    server.up().await;

    // Every snapshot on the way back holds the untouched objects: a relist never empties a store.
    let deadline = Instant::now() + WAIT_AFTER_OUTAGE;
    loop {
        let s = source.snapshot().expect("still synced");
        assert!(
            service_names(&s).contains(&"web".to_owned()) && s.pods.len() == 1 && s.nodes.len() == 1,
            "a flush on the way back: {}",
            summary(&s)
        );
        if service_names(&s) == ["cart", "web"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged {WAIT_AFTER_OUTAGE:?} after the server came back: {}",
            summary(&s)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.lists("services") >= 2, "the Service store was relisted");
}

#[tokio::test]
async fn no_snapshot_before_every_kind_is_listed() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.fail_lists("networkpolicies", true);
    let mut source = start(&server);
    until_true(
        WAIT,
        "the other kinds to be listed and the policy list to fail",
        || {
            let kinds: Vec<_> = source.kinds().collect();
            kinds.iter().filter(|k| k.3).count() == 5
                && kinds.iter().any(|k| k.0 == "NetworkPolicy" && k.2 >= 1)
        },
    )
    .await;
    assert!(!source.synced());
    assert!(
        source.snapshot().is_none(),
        "a snapshot without policies would isolate nothing"
    );
    assert!(source.poll(true).is_none());

    server.fail_lists("networkpolicies", false);
    let s = until(&mut source, WAIT, "the sync once policies list", |_| true).await;
    assert_eq!(s.network_policies.len(), 1);
    assert_eq!(s.services.len(), 2);
}

#[tokio::test]
async fn paged_lists_are_followed_to_the_end() {
    let server = FakeApiServer::start().await;
    seed(&server);
    for i in 0..1200 {
        server.apply(pod(
            &format!("p-{i:04}"),
            &format!("10.245.{}.{}", i / 250, i % 250 + 1),
        ));
    }
    let mut source = start(&server);
    let s = until(&mut source, WAIT, "1201 pods", |s| s.pods.len() == 1201).await;
    assert!(
        server.pages("pods") >= 2,
        "kube-rs asked for pages ({})",
        server.pages("pods")
    );
    assert_eq!(server.lists("pods"), 1);
    assert_eq!(s.pods[0].metadata.name.as_deref(), Some("p-0000"));
    assert_eq!(s.pods[1200].metadata.name.as_deref(), Some("web-1"));
}

#[tokio::test]
async fn a_relist_in_progress_never_shows_a_partial_store() {
    let server = FakeApiServer::start().await;
    seed(&server);
    for i in 0..1200 {
        server.apply(pod(
            &format!("p-{i:04}"),
            &format!("10.245.{}.{}", i / 250, i % 250 + 1),
        ));
    }
    let mut source = start(&server);
    until(&mut source, WAIT, "1201 pods", |s| s.pods.len() == 1201).await;
    // Each further page of the relist takes 300 ms, so a store filled page by page would be seen
    // with 500 or 1000 pods for a while.
    server.delay_pages(Duration::from_millis(300));
    server.while_away(|s| s.delete("Pod", "shop", "p-0000"));
    let deadline = Instant::now() + WAIT;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let n = source.snapshot().expect("still synced").pods.len();
        seen.insert(n);
        assert!(n == 1201 || n == 1200, "a partial store: {n} pods");
        if n == 1200 {
            break;
        }
        assert!(Instant::now() < deadline, "the relist did not complete");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.lists("pods"), 2);
    assert!(server.pages("pods") >= 4, "both lists were paged");
    assert!(
        seen.contains(&1201),
        "the old store was seen while the relist ran"
    );
}

#[tokio::test]
async fn bookmarks_spare_a_quiet_kind_a_relist() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    until(&mut source, WAIT, "the first snapshot", |_| true).await;
    // Service traffic moves the resourceVersion far past the policy list's.
    for i in 0..20 {
        server.apply(service("web", &format!("10.96.1.{i}")));
    }
    let rv = server.resource_version();
    until_true(WAIT, "a policy bookmark at the latest resourceVersion", || {
        server.last_bookmark("networkpolicies") >= rv
    })
    .await;
    until(&mut source, WAIT, "the last Service change", |s| {
        cluster_ip(s, "web").as_deref() == Some("10.96.1.19")
    })
    .await;
    let watches = server.watches("networkpolicies");
    server.compact();
    server.close_watches();
    until_true(WAIT, "the policy watch to reopen", || {
        server.watches("networkpolicies") > watches
    })
    .await;
    // Give a wrong resume the time to show as a 410 and a relist.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.gone_sent("networkpolicies"), 0);
    assert_eq!(server.lists("networkpolicies"), 1, "resumed from the bookmark");
    // Kinds without a bookmark since their list would have relisted; the Service watch resumed from
    // its last event.
    assert_eq!(server.lists("services"), 1);
}

#[tokio::test]
async fn an_unusable_object_is_reported_by_name_and_field_and_skipped() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut bad = service("broken", "10.96.0.13");
    bad["spec"]["ports"][0]["port"] = json!("eighty");
    server.apply(bad);
    let kube = start(&server);
    let mut source = Source::Kube(kube);
    let deadline = Instant::now() + WAIT;
    let mut snapshot = Snapshot::default();
    let update = loop {
        if let Some(u) = source.poll(false, &mut snapshot, false).unwrap() {
            break u;
        }
        assert!(Instant::now() < deadline, "no first snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(service_names(&snapshot), ["api", "web"], "the others are used");
    assert_eq!(update.rejected.len(), 1, "{:?}", update.rejected);
    let r = &update.rejected[0];
    assert_eq!(r.object, "Service shop/broken");
    assert_eq!(r.kind(), "Service");
    assert!(r.reason.starts_with("spec.ports[0].port: "), "{}", r.reason);
    assert!(
        r.to_string().contains("Service shop/broken: spec.ports[0].port"),
        "{r}"
    );

    // Fixed: used, and no longer reported.
    server.apply(service("broken", "10.96.0.13"));
    let Source::Kube(kube) = &mut source else {
        unreachable!()
    };
    until(kube, WAIT, "the fixed Service", |s| {
        service_names(s).contains(&"broken".to_owned())
    })
    .await;
    assert!(kube.rejected().is_empty());

    // Broken again by an update: the stored version goes, the report comes back.
    let mut bad = service("broken", "10.96.0.13");
    bad["spec"]["ports"] = json!("none");
    server.apply(bad);
    until(kube, WAIT, "the broken Service to go", |s| {
        service_names(s) == ["api", "web"]
    })
    .await;
    assert_eq!(kube.rejected().len(), 1);
    let mut counters = proxy_agent::metrics::AgentCounters::default();
    source.export(&mut counters);
    assert!(counters.source_synced);
    assert_eq!(counters.source_objects.get("Service"), Some(&2));
    assert_eq!(counters.source_watch_errors.get("Service"), Some(&0));
}

#[tokio::test]
async fn a_store_change_wakes_the_source_and_names_its_kind() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = Source::Kube(start(&server));
    let mut snapshot = Snapshot::default();
    let deadline = Instant::now() + WAIT;
    // Woken by the stores only: a wake must leave the change for the poll to find.
    let first = loop {
        if let Some(u) = source.poll(false, &mut snapshot, false).unwrap() {
            break u;
        }
        assert!(Instant::now() < deadline, "no first snapshot");
        tokio::time::timeout(Duration::from_millis(100), source.changed())
            .await
            .ok();
    };
    assert!(first.changed.intersects(proxy_agent::source::Kinds::SERVICES));
    while source.poll(false, &mut snapshot, false).unwrap().is_some() {}
    server.apply(service("late", "10.96.0.14"));
    tokio::time::timeout(WAIT, source.changed())
        .await
        .expect("the watch event wakes the source");
    let update = source
        .poll(false, &mut snapshot, false)
        .unwrap()
        .expect("a change after the wake");
    assert_eq!(update.changed, proxy_agent::source::Kinds::SERVICES);
    assert!(service_names(&snapshot).contains(&"late".to_owned()));
}

/// A resync into the daemon's snapshot answers (the daemon's resync goes on to the maps) but copies
/// no store that did not change; a change copies its kind only.
#[tokio::test]
async fn a_resync_copies_no_store_that_did_not_change() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut source = start(&server);
    until_true(WAIT, "the first sync", || source.synced()).await;
    let mut snapshot = Snapshot::default();
    assert!(source.poll_into(false, &mut snapshot).is_some(), "the first sync");
    let (pods, services) = (snapshot.pods.as_ptr(), snapshot.services.as_ptr());
    assert_eq!(source.poll_into(true, &mut snapshot), Some(Kinds::NONE));
    assert_eq!(source.poll_into(false, &mut snapshot), None, "nothing changed");
    assert!(
        std::ptr::eq(snapshot.pods.as_ptr(), pods),
        "the pods were not copied"
    );
    assert!(std::ptr::eq(snapshot.services.as_ptr(), services));
    server.apply(service("cart", "10.96.0.12"));
    let deadline = Instant::now() + WAIT;
    let kinds = loop {
        if let Some(k) = source
            .poll_into(true, &mut snapshot)
            .filter(|k| *k != Kinds::NONE)
        {
            break k;
        }
        assert!(Instant::now() < deadline, "the new Service never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kinds, Kinds::SERVICES);
    assert!(service_names(&snapshot).contains(&"cart".to_owned()));
    assert!(
        std::ptr::eq(snapshot.pods.as_ptr(), pods),
        "the pods were not copied"
    );
}

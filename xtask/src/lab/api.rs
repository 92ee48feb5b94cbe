//! The lab's objects through the real apiserver (`--control-plane real`), with kubectl run inside the
//! control plane's netns: the in-cluster RBAC of manifests/rbac.yaml and the tokens that use it,
//! the Nodes, and the file's objects. There is no kubelet, so the lab plays its part: it writes the
//! Nodes' and Pods' status (addresses, pod IPs, Ready) through the status subresource. It does not
//! write EndpointSlices for selector Services: kube-controller-manager's EndpointSlice controller
//! does, and `wait_endpoint_slices` waits until it has.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::{
    spec::Object,
    state::{ControlPlaneState, State},
};
use crate::k8s::pki;

/// The agent's RBAC, exactly as deployed in a cluster.
const AGENT_RBAC: &str = include_str!("../../../manifests/rbac.yaml");
const AGENT_SA: (&str, &str) = ("kube-system", "strait");

/// kube-proxy's identity: its own ServiceAccount bound to the bootstrap ClusterRole
/// `system:node-proxier`, the role kubeadm gives kube-proxy.
const KUBE_PROXY_RBAC: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: strait-lab-kube-proxy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:node-proxier'}
subjects: [{kind: ServiceAccount, name: kube-proxy, namespace: kube-system}]
";
const KUBE_PROXY_SA: (&str, &str) = ("kube-system", "kube-proxy");

/// Long enough for any lab; the signing key lives as long as the lab, so tokens survive apiserver
/// restarts.
const TOKEN_DURATION: &str = "720h";

/// Pods need an image to pass validation; nothing pulls it (the lab's responder plays the container).
const PLACEHOLDER_IMAGE: &str = "lab.strait.dev/responder:none";

const CONTROLLER_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(300);

/// `kubectl --kubeconfig <admin> ARGS` inside the control plane's netns; stdout, or an error with
/// kubectl's stderr.
pub fn kubectl(cp: &ControlPlaneState, args: &[&str]) -> Result<String> {
    run(cp, args, None)
}

/// The same with `input` on stdin (`apply -f -`).
pub fn kubectl_stdin(cp: &ControlPlaneState, args: &[&str], input: &str) -> Result<String> {
    run(cp, args, Some(input))
}

fn run(cp: &ControlPlaneState, args: &[&str], input: Option<&str>) -> Result<String> {
    kubectl_in(&cp.netns, &cp.kubectl, &cp.kubeconfig, Some("10s"), args, input)
}

/// kubectl with `kubeconfig` inside `netns` (`ip netns exec`), `input` on its stdin; stdout, or an
/// error with kubectl's exit status and the first lines of its stderr. `request_timeout` bounds each
/// request (`--request-timeout`); None keeps kubectl's default (none), for bulk creates that the
/// apiserver takes long to answer.
pub(crate) fn kubectl_in(
    netns: &str,
    kubectl: &Path,
    kubeconfig: &Path,
    request_timeout: Option<&str>,
    args: &[&str],
    input: Option<&str>,
) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig);
    if let Some(t) = request_timeout {
        cmd.args(["--request-timeout", t]);
    }
    let mut child = cmd
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            err.trim().lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// RBAC for the agents (manifests/rbac.yaml) and kube-proxy, and a kubeconfig for each with a
/// token of its ServiceAccount (TokenRequest: bound, signed by the lab's key).
pub fn bootstrap(cp: &ControlPlaneState) -> Result<()> {
    kubectl_stdin(cp, &["apply", "-f", "-"], AGENT_RBAC).context("applying manifests/rbac.yaml")?;
    kubectl_stdin(cp, &["apply", "-f", "-"], KUBE_PROXY_RBAC).context("kube-proxy's RBAC")?;
    let ca = cp.dir.join("pki").join("ca.crt");
    for ((ns, sa), file) in [
        (AGENT_SA, &cp.agent_kubeconfig),
        (KUBE_PROXY_SA, &cp.kube_proxy_kubeconfig),
    ] {
        let token = kubectl(
            cp,
            &["-n", ns, "create", "token", sa, "--duration", TOKEN_DURATION],
        )
        .with_context(|| format!("a token for ServiceAccount {ns}/{sa}"))?;
        let user = format!("system:serviceaccount:{ns}:{sa}");
        std::fs::write(file, pki::kubeconfig_for(&ca, &cp.server, &user, token.trim()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Creates every Node of the file (with its spec.podCIDR) and writes its status as a kubelet
/// would: the file's addresses and a Ready condition.
pub fn register_nodes(cp: &ControlPlaneState, objects: &[Object]) -> Result<()> {
    for o in objects {
        let Object::Node(node) = o else { continue };
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        if let Some(labels) = &node.metadata.labels {
            obj["metadata"]["labels"] = json!(labels);
        }
        if let Some(cidr) = node.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
            obj["spec"] = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
        }
        kubectl_stdin(cp, &["apply", "-f", "-"], &obj.to_string())
            .with_context(|| format!("creating Node {name}"))?;
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default();
        let status = json!({"status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "StraitLab",
                            "message": "a lab node: no kubelet, the lab reports it ready"}],
        }});
        patch_status(cp, "node", None, &name, &status)?;
    }
    Ok(())
}

fn patch_status(
    cp: &ControlPlaneState,
    kind: &str,
    ns: Option<&str>,
    name: &str,
    patch: &Value,
) -> Result<()> {
    let mut args = vec![];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let text = patch.to_string();
    args.extend([
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &text,
    ]);
    kubectl(cp, &args).with_context(|| {
        format!(
            "writing status of {kind} {}{name}",
            ns.map(|n| format!("{n}/")).unwrap_or_default()
        )
    })?;
    Ok(())
}

/// The objects as the apiserver gets them: no Nodes (registered once by `register_nodes`) and no
/// lab kinds; Namespaces first; no status (written through the status subresource); pods get a
/// placeholder image. Returns (everything but pods, pods).
fn api_objects(objects: &[Object]) -> (Vec<Value>, Vec<Value>) {
    let mut others = Vec::new();
    let mut pods = Vec::new();
    let mut sorted: Vec<&Object> = objects
        .iter()
        .filter(|o| !matches!(o, Object::Node(_) | Object::ExternalClient(_)))
        .collect();
    sorted.sort_by_key(|o| !matches!(o, Object::Namespace(_)));
    for o in sorted {
        let mut v = serde_json::to_value(o.to_value()).expect("YAML objects convert to JSON");
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        if let Object::Pod(_) = o {
            if let Some(containers) = v["spec"]["containers"].as_array_mut() {
                for c in containers {
                    if c.get("image").is_none_or(Value::is_null) {
                        c["image"] = json!(PLACEHOLDER_IMAGE);
                    }
                }
            }
            pods.push(v);
        } else {
            others.push(v);
        }
    }
    (others, pods)
}

/// Namespaces the objects are in but neither the file declares nor the apiserver has: created
/// bare, as the lab's manifests mode makes them up. Declared ones are left to `apply`, so a file
/// never strips a Namespace's labels by omission.
fn create_missing_namespaces(cp: &ControlPlaneState, objects: &[Object]) -> Result<()> {
    let declared: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| match o {
            Object::Namespace(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    let used: BTreeSet<String> = objects.iter().filter_map(|o| o.key().namespace).collect();
    let wanted: Vec<&String> = used.difference(&declared).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let have = kubectl(cp, &["get", "namespaces", "-o", "name"])?;
    for ns in wanted {
        if !have
            .lines()
            .any(|l| l.strip_prefix("namespace/") == Some(ns.as_str()))
        {
            kubectl(cp, &["create", "namespace", ns]).with_context(|| format!("creating Namespace {ns}"))?;
        }
    }
    Ok(())
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// `lab up` / `lab apply`: creates or updates `objects` (a whole file) through the API. Pods named in
/// `recreate` are deleted first (their node or IP changed: spec.nodeName and a pod's IPs are fixed
/// once set), then every pod of `objects` gets its status.
pub fn apply(cp: &ControlPlaneState, state: &State, objects: &[Object], recreate: &[String]) -> Result<()> {
    let (others, pods) = api_objects(objects);
    create_missing_namespaces(cp, objects)?;
    if !others.is_empty() {
        kubectl_stdin(cp, &["apply", "-f", "-"], &list(others))?;
    }
    for name in recreate {
        let (ns, pod) = name.split_once('/').context("pod name ns/name")?;
        delete_pod(cp, ns, pod)?;
    }
    if pods.is_empty() {
        return Ok(());
    }
    let namespaces: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["namespace"].as_str().map(str::to_string))
        .collect();
    for ns in &namespaces {
        wait_for_default_service_account(cp, ns)?;
    }
    kubectl_stdin(cp, &["apply", "-f", "-"], &list(pods))?;
    for o in objects {
        if let Object::Pod(p) = o {
            write_pod_status(cp, state, p)?;
        }
    }
    for o in objects {
        if let Object::Service(s) = o {
            if let Some(lb) = s.status.as_ref().and_then(|st| st.load_balancer.as_ref()) {
                let name = s.metadata.name.clone().unwrap_or_default();
                let ns = s.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                patch_status(
                    cp,
                    "service",
                    Some(&ns),
                    &name,
                    &json!({"status": {"loadBalancer": lb}}),
                )?;
            }
        }
    }
    Ok(())
}

/// Without a kubelet a deleted pod would stay Terminating for ever: the lab confirms at once, as
/// the kubelet does once the containers are gone.
fn delete_pod(cp: &ControlPlaneState, ns: &str, pod: &str) -> Result<()> {
    kubectl(
        cp,
        &[
            "-n",
            ns,
            "delete",
            "pod",
            pod,
            "--grace-period=0",
            "--force",
            "--ignore-not-found",
            "--wait=false",
        ],
    )
    .with_context(|| format!("deleting Pod {ns}/{pod}"))?;
    Ok(())
}

/// `lab delete`: removes `objects` through the API (pods without a grace period, see `delete_pod`).
pub fn delete(cp: &ControlPlaneState, objects: &[Object]) -> Result<()> {
    let mut rest = Vec::new();
    for o in objects {
        match o {
            Object::Node(_) | Object::ExternalClient(_) => {}
            Object::Pod(p) => delete_pod(
                cp,
                p.metadata.namespace.as_deref().unwrap_or("default"),
                p.metadata.name.as_deref().unwrap_or_default(),
            )?,
            other => rest.push(other.clone()),
        }
    }
    let (others, _) = api_objects(&rest);
    if !others.is_empty() {
        kubectl_stdin(
            cp,
            &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
            &list(others),
        )?;
    }
    Ok(())
}

/// The kubelet's part for one pod: phase Running, pod and host IPs, Ready (unless the file says
/// otherwise: its own conditions win, so a file can hold a pod that is not ready).
fn write_pod_status(cp: &ControlPlaneState, state: &State, pod: &Pod) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let full = format!("{ns}/{name}");
    let lab_pod = state.pods.iter().find(|p| p.name == full);
    let host_ip = lab_pod
        .and_then(|p| state.node(&p.node))
        .map(|n| n.ip.to_string());
    let given = pod.status.clone().unwrap_or_default();
    let ip = lab_pod
        .map(|p| p.ip.to_string())
        .or(given.pod_ip.clone())
        .with_context(|| format!("Pod {full}: no status.podIP"))?;
    let mut conditions = serde_json::to_value(given.conditions.clone().unwrap_or_default())?;
    let arr = conditions.as_array_mut().expect("a list");
    for (kind, default) in [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("ContainersReady", "True"),
        ("Ready", "True"),
    ] {
        if !arr.iter().any(|c| c["type"] == kind) {
            arr.push(json!({"type": kind, "status": default}));
        }
    }
    let ready = arr.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
    // Per container too, so `kubectl get pods` counts them as a kubelet's report would.
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "ready": ready, "started": true, "restartCount": 0,
                   "image": c.image.clone().unwrap_or_else(|| PLACEHOLDER_IMAGE.into()),
                   "imageID": "", "state": {"running": {}}})
        })
        .collect();
    let mut status = json!({
        "containerStatuses": containers,
        "phase": given.phase.clone().unwrap_or_else(|| "Running".into()),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": conditions,
    });
    if let Some(h) = host_ip {
        status["hostIP"] = json!(h);
        status["hostIPs"] = json!([{"ip": h}]);
    }
    patch_status(cp, "pod", Some(&ns), &name, &json!({ "status": status }))
}

/// The ServiceAccount admission plugin refuses pods until the namespace's `default`
/// ServiceAccount exists, which the serviceaccount controller creates shortly after the namespace.
fn wait_for_default_service_account(cp: &ControlPlaneState, ns: &str) -> Result<()> {
    let deadline = Instant::now() + CONTROLLER_WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match kubectl(cp, &["-n", ns, "get", "serviceaccount", "default", "-o", "name"]) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(POLL);
    }
    bail!(
        "Namespace {ns}: kube-controller-manager made no ServiceAccount default within {CONTROLLER_WAIT:?} ({last})"
    )
}

/// Pod IPs each selector Service of `objects` should have as ready endpoints: pods of its
/// namespace whose labels match and whose Ready condition is not False.
pub fn expected_endpoints(objects: &[Object]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for o in objects {
        let Object::Service(svc) = o else { continue };
        let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.clone()) else {
            continue;
        };
        if selector.is_empty() {
            continue;
        }
        let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let ips = objects
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
            .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == ns)
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter(|p| {
                let conditions = p.status.as_ref().and_then(|s| s.conditions.clone());
                !conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "False")
            })
            .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
            .collect();
        let name = svc.metadata.name.clone().unwrap_or_default();
        out.insert(format!("{ns}/{name}"), ips);
    }
    out
}

/// Ready endpoint addresses per Service in the slices the EndpointSlice controller wrote.
fn controller_endpoints(cp: &ControlPlaneState) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let text = kubectl(
        cp,
        &[
            "get",
            "endpointslices",
            "-A",
            "-l",
            "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
            "-o",
            "json",
        ],
    )?;
    let doc: Value = serde_json::from_str(&text).context("kubectl get endpointslices: not JSON")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in doc["items"].as_array().into_iter().flatten() {
        let ns = slice["metadata"]["namespace"].as_str().unwrap_or_default();
        let Some(svc) = slice["metadata"]["labels"]["kubernetes.io/service-name"].as_str() else {
            continue;
        };
        let ips = out.entry(format!("{ns}/{svc}")).or_default();
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            if ep["conditions"]["ready"] != false {
                ips.extend(
                    ep["addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string)),
                );
            }
        }
    }
    Ok(out)
}

/// Waits (at most a minute) until the EndpointSlice controller's slices hold exactly the expected
/// ready endpoints of every selector Service, so traffic after `lab up`/`lab apply` meets the
/// endpoints the file describes. Names the Services still off when the time is up.
pub fn wait_endpoint_slices(cp: &ControlPlaneState, objects: &[Object]) -> Result<()> {
    let want = expected_endpoints(objects);
    let deadline = Instant::now() + CONTROLLER_WAIT;
    loop {
        let got = controller_endpoints(cp);
        let off: Vec<String> = match &got {
            Ok(got) => want
                .iter()
                // A Service always gets a slice (an empty one when nothing matches), so "no
                // endpoints" is a present, empty set too.
                .filter(|(svc, ips)| got.get(*svc) != Some(ips))
                .map(|(svc, ips)| format!("Service {svc}: want {ips:?}, the slices have {:?}", got.get(svc)))
                .collect(),
            Err(e) => vec![format!("{e:#}")],
        };
        if off.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the EndpointSlice controller did not catch up within {CONTROLLER_WAIT:?}:\n  {}",
                off.join("\n  ")
            );
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec;

    #[test]
    fn expected_endpoints_follow_selector_namespace_and_readiness() {
        let file = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.244.1.3, conditions: [{type: Ready, status: 'False'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.244.1.4}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: none, namespace: x}
spec: {selector: {app: other}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: x}
spec: {ports: [{port: 80}]}
";
        let want = expected_endpoints(&spec::parse(file).unwrap());
        assert_eq!(want["x/web"], BTreeSet::from(["10.244.1.2".to_string()]));
        assert!(want["x/none"].is_empty());
        assert!(
            !want.contains_key("x/manual"),
            "no selector: the controller leaves it alone"
        );
    }

    #[test]
    fn api_objects_put_namespaces_first_drop_nodes_and_status_and_fill_images() {
        let file = "
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}, {name: d, image: busybox}]}
status: {podIP: 10.244.1.2}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
";
        let (others, pods) = api_objects(&spec::parse(file).unwrap());
        assert_eq!(others.len(), 1);
        assert_eq!(others[0]["kind"], "Namespace");
        assert_eq!(pods.len(), 1);
        assert!(pods[0].get("status").is_none());
        assert_eq!(pods[0]["spec"]["containers"][0]["image"], PLACEHOLDER_IMAGE);
        assert_eq!(pods[0]["spec"]["containers"][1]["image"], "busybox");
    }
}

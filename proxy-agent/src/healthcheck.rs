//! kube-proxy's per-Service health checks: for every LoadBalancer Service with externalTrafficPolicy
//! Local, an HTTP server on `0.0.0.0:<spec.healthCheckNodePort>` that answers any path with the number
//! of the Service's ready endpoints on this node — 200 with some, 503 with none — so a cloud load
//! balancer sends such a Service's traffic only to nodes that can serve it locally.
//!
//! Which ports and counts is decided by the planner (`lb::HealthCheck`); this module only opens and
//! closes listeners to match, once per reconcile pass. A port that cannot be bound is reported with
//! its Service and retried on every pass; it never stops the agent.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::lb::HealthCheck;

/// kube-proxy listens on every address unless `--nodeport-addresses` narrows it; so do we.
const LISTEN_ON: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// What one port answers for; replaced in place when the Service or its count changes, so a port that
/// stays wanted is never closed and re-opened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

#[derive(Clone)]
struct PortState {
    answer: Arc<RwLock<Answer>>,
    /// When a reconcile pass last succeeded (shared by all ports): kube-proxy answers 503 while the
    /// proxy itself is unhealthy, whatever the endpoint count.
    last_pass_ok_ms: Arc<AtomicU64>,
}

struct Server {
    state: PortState,
    task: tokio::task::JoinHandle<()>,
}

/// The open health-check listeners of this agent.
#[derive(Default)]
pub struct ServiceHealth {
    servers: BTreeMap<u16, Server>,
    last_pass_ok_ms: Arc<AtomicU64>,
    /// Port → the last bind failure reported for it, so each distinct failure is logged once.
    failures: BTreeMap<u16, String>,
}

/// The result of one [`ServiceHealth::sync`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Every health check that is not being served, one line each (kind/namespace/name, field, cause).
    pub errors: Vec<String>,
    /// Failures not reported before (for the counter).
    pub new_failures: u64,
}

impl ServiceHealth {
    /// Opens, updates and closes listeners to serve exactly `checks`. Must run inside the agent's
    /// Tokio runtime (listeners are served by tasks on it).
    pub fn sync(&mut self, checks: &[HealthCheck], last_pass_ok_ms: u64) -> SyncOutcome {
        self.last_pass_ok_ms.store(last_pass_ok_ms, Ordering::Relaxed);
        let wanted: BTreeMap<u16, &HealthCheck> = checks.iter().map(|c| (c.port, c)).collect();
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port);
            if !keep {
                tracing::info!(port, "closing a Service health check");
                // Dropping the task drops its listener, which frees the port.
                server.task.abort();
            }
            keep
        });
        self.failures.retain(|port, _| wanted.contains_key(port));
        let mut outcome = SyncOutcome::default();
        for (port, check) in wanted {
            let answer = Answer {
                namespace: check.namespace.clone(),
                name: check.name.clone(),
                local_endpoints: check.local_endpoints,
            };
            if let Some(server) = self.servers.get(&port) {
                *server
                    .state
                    .answer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = answer;
                continue;
            }
            match self.open(port, answer) {
                Ok(server) => {
                    tracing::info!(
                        port,
                        service = %format!("{}/{}", check.namespace, check.name),
                        "serving a Service health check"
                    );
                    self.failures.remove(&port);
                    self.servers.insert(port, server);
                }
                Err(e) => {
                    let message = format!(
                        "Service {}/{}: spec.healthCheckNodePort: cannot listen on {}: {e}",
                        check.namespace,
                        check.name,
                        SocketAddr::from((LISTEN_ON, port))
                    );
                    if self.failures.get(&port) != Some(&message) {
                        tracing::warn!(problem = %message, "health check not served; retrying every pass");
                        outcome.new_failures += 1;
                        self.failures.insert(port, message.clone());
                    }
                    outcome.errors.push(message);
                }
            }
        }
        outcome
    }

    /// Ports being served now.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    fn open(&self, port: u16, answer: Answer) -> std::io::Result<Server> {
        // Bound synchronously, so that a busy port is known in this pass and reported with its
        // Service; only serving happens on the runtime.
        let listener = std::net::TcpListener::bind((LISTEN_ON, port))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = PortState {
            answer: Arc::new(RwLock::new(answer)),
            last_pass_ok_ms: self.last_pass_ok_ms.clone(),
        };
        let app = Router::new().fallback(respond).with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(port, error = %e, "a Service health check stopped");
            }
        });
        Ok(Server { state, task })
    }
}

impl Drop for ServiceHealth {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.task.abort();
        }
    }
}

/// Pure: kube-proxy's answer, byte for byte (its body is tab-indented JSON without a final newline).
pub fn answer(
    namespace: &str,
    name: &str,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> (StatusCode, String) {
    let code = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // serde_json quotes exactly as Go's %q does for Kubernetes names (DNS labels).
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quote(namespace),
        quote(name)
    );
    (code, body)
}

async fn respond(State(state): State<PortState>) -> Response {
    let now_ms = crate::status::unix_ms_now();
    let healthy = crate::healthz::fresh(state.last_pass_ok_ms.load(Ordering::Relaxed), now_ms);
    let a = state
        .answer
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (code, body) = answer(&a.namespace, &a.name, a.local_endpoints, healthy);
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
#[path = "healthcheck_tests.rs"]
mod tests;

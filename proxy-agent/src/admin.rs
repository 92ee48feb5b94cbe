//! The agent's admin endpoint, read by the CLI and the lab: `/healthz`, `/status`, `/metrics`
//! (Prometheus), `/flows?since=SEQ`, `/policy` (`policy list`, `identity list`),
//! `/policy/explain?from=..&to=..`, `/services`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::daemon::Shared;

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/flows", get(flows))
        .route("/policy", get(policy))
        .route("/policy/explain", get(explain))
        .route("/services", get(services))
        .route("/loglevel", get(log_level).put(set_log_level))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding admin address {addr}"))?;
    axum::serve(listener, app).await.context("admin endpoint")
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.view().sync.synced {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced\n")
    }
}

async fn log_level() -> String {
    crate::logging::current() + "\n"
}

async fn set_log_level(body: String) -> (StatusCode, String) {
    match crate::logging::set(&body) {
        Ok(()) => (StatusCode::OK, crate::logging::current() + "\n"),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}\n")),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<crate::status::StatusView> {
    Json(shared.view())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

#[derive(Deserialize)]
struct FlowsQuery {
    #[serde(default)]
    since: u64,
}

async fn flows(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<FlowsQuery>,
) -> Json<crate::flows::FlowsPage> {
    Json(shared.flows_since(q.since))
}

async fn policy(State(shared): State<Arc<Shared>>) -> Json<crate::policy::view::PolicyState> {
    Json((*shared.policy_state()).clone())
}

#[derive(Deserialize)]
struct ExplainQuery {
    from: String,
    to: String,
}

async fn explain(State(shared): State<Arc<Shared>>, Query(q): Query<ExplainQuery>) -> Response {
    match shared.explain(&q.from, &q.to) {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e + "\n").into_response(),
    }
}

async fn services(State(shared): State<Arc<Shared>>) -> Response {
    match shared.services() {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e + "\n").into_response(),
    }
}

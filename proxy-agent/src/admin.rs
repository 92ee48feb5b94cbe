//! The agent's admin endpoint: /healthz and /status (JSON), read by `proxy-agent status` and the lab.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};

use crate::daemon::Shared;

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
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

async fn status(State(shared): State<Arc<Shared>>) -> Json<crate::status::StatusView> {
    Json(shared.view())
}

//! kube-proxy's health endpoint, on kube-proxy's port (`--healthz-addr`, default 0.0.0.0:10256), so the
//! load balancers and probes that already ask kube-proxy get the answer they expect from us:
//! `/healthz` is 200 with `{"lastUpdated", "currentTime", "nodeEligible"}` while the datapath is being
//! kept in step, 503 when it has not been for twice the resync period or the Node is going away;
//! `/livez` is the same without the Node part; `/readyz` is 200 once the first full sync is done.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use crate::{daemon::Shared, status::SyncView};

/// Healthy while a reconcile pass succeeded within this long (kube-proxy: twice its sync period).
pub const STALE_AFTER: Duration = Duration::from_secs(20);

pub const DEFAULT_ADDR: &str = "0.0.0.0:10256";

/// kube-proxy's body, field for field (the newer `healthy` / `status` fields included).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HealthBody {
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
    #[serde(rename = "currentTime")]
    pub current_time: String,
    #[serde(rename = "nodeEligible", skip_serializing_if = "Option::is_none")]
    pub node_eligible: Option<bool>,
    pub healthy: bool,
    pub status: FamilyStatus,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FamilyStatus {
    #[serde(rename = "IPv4")]
    pub ipv4: Healthy,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Healthy {
    pub healthy: bool,
}

/// The proxy is healthy: a reconcile pass succeeded within [`STALE_AFTER`] (also the
/// `serviceProxyHealthy` of the per-Service health checks).
pub fn fresh(last_pass_ok_unix_ms: u64, now_ms: u64) -> bool {
    last_pass_ok_unix_ms > 0 && now_ms.saturating_sub(last_pass_ok_unix_ms) <= STALE_AFTER.as_millis() as u64
}

/// Pure: the answer to `/healthz` (`with_node`) or `/livez` at `now_ms` for the agent's sync state.
pub fn health(sync: &SyncView, now_ms: u64, with_node: bool) -> (StatusCode, HealthBody) {
    let fresh = fresh(sync.last_pass_ok_unix_ms, now_ms);
    let eligible = with_node.then_some(sync.node_eligible);
    let ok = fresh && eligible.unwrap_or(true);
    let body = HealthBody {
        last_updated: go_time(sync.last_pass_ok_unix_ms),
        current_time: go_time(now_ms),
        node_eligible: eligible,
        healthy: fresh,
        status: FamilyStatus {
            ipv4: Healthy { healthy: fresh },
        },
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// Go's `time.Time.String()` in UTC, the way kube-proxy prints its times.
pub fn go_time(unix_ms: u64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(unix_ms as i64).unwrap_or_default();
    t.format("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string()
}

pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health address {addr} (--healthz-addr)"))?;
    axum::serve(listener, app).await.context("health endpoint")
}

fn respond(code: StatusCode, body: &HealthBody) -> Response {
    let json = serde_json::to_string(body).unwrap_or_default();
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        json,
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let (code, body) = health(&shared.view().sync, crate::status::unix_ms_now(), true);
    respond(code, &body)
}

async fn livez(State(shared): State<Arc<Shared>>) -> Response {
    let (code, body) = health(&shared.view().sync, crate::status::unix_ms_now(), false);
    respond(code, &body)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if shared.view().sync.synced {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "first sync not done\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_559_200_000; // 2025-12-01 03:20:00 UTC

    fn sync(last_ok: u64, eligible: bool) -> SyncView {
        SyncView {
            synced: last_ok > 0,
            last_pass_ok_unix_ms: last_ok,
            node_eligible: eligible,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_while_passes_succeed() {
        let (code, body) = health(&sync(NOW - 1_000, true), NOW, true);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body.node_eligible, Some(true));
        assert!(body.healthy && body.status.ipv4.healthy);
        assert_eq!(body.current_time, "2025-12-01 03:20:00 +0000 UTC");
        assert_eq!(body.last_updated, "2025-12-01 03:19:59 +0000 UTC");
    }

    #[test]
    fn unhealthy_when_stale_or_never_synced() {
        let stale = NOW - STALE_AFTER.as_millis() as u64 - 1;
        assert_eq!(
            health(&sync(stale, true), NOW, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (code, body) = health(&sync(0, true), NOW, true);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.healthy);
    }

    #[test]
    fn a_node_going_away_fails_healthz_but_not_livez() {
        let s = sync(NOW - 500, false);
        let (code, body) = health(&s, NOW, true);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.node_eligible, Some(false));
        assert!(body.healthy, "the proxy itself is fine");
        let (code, body) = health(&s, NOW, false);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body.node_eligible, None);
    }

    #[test]
    fn the_body_has_kube_proxys_field_names() {
        let (_, body) = health(&sync(NOW, true), NOW + 250, true);
        let v: serde_json::Value = serde_json::to_value(&body).unwrap();
        for key in ["lastUpdated", "currentTime", "nodeEligible", "healthy", "status"] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert_eq!(v["status"]["IPv4"]["healthy"], true);
        assert_eq!(body.current_time, "2025-12-01 03:20:00.250 +0000 UTC");
    }
}

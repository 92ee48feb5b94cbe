use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn answers_like_kube_proxy() {
    let (code, body) = answer("shop", "web", 2, true);
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["namespace"], "shop");
    assert_eq!(v["localEndpoints"], 2);

    let (code, body) = answer("shop", "web", 0, true);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"localEndpoints\": 0"));
    // Endpoints but a stale proxy: the node must not get traffic either.
    let (code, body) = answer("shop", "web", 3, false);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"serviceProxyHealthy\": false"));
}

fn now_ms() -> u64 {
    crate::status::unix_ms_now()
}

fn check(name: &str, port: u16, local_endpoints: usize) -> HealthCheck {
    HealthCheck {
        namespace: "shop".into(),
        name: name.into(),
        port,
        local_endpoints,
    }
}

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET over loopback, bounded; `Err` when nothing accepts.
async fn get(port: u16, path: &str) -> Result<(u16, String, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.map_err(|e| e.to_string())?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or("no status")?;
        Ok((code, head.to_ascii_lowercase(), body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_desired_checks() {
    let mut health = ServiceHealth::default();
    let port = free_port();

    let out = health.sync(&[check("web", port, 2)], now_ms());
    assert_eq!(out, SyncOutcome::default());
    assert_eq!(health.ports(), [port]);
    let (code, head, body) = get(port, "/any/path").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(body.contains("\"localEndpoints\": 2"), "{body}");

    // The count drops to zero: same listener, now 503.
    health.sync(&[check("web", port, 0)], now_ms());
    let (code, _, body) = get(port, "/").await.unwrap();
    assert_eq!(code, 503, "{body}");

    // The proxy has not completed a pass for long: 503 even with endpoints.
    health.sync(&[check("web", port, 1)], now_ms() - 60_000);
    let (code, _, body) = get(port, "/").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");

    // No longer wanted: the port closes (bounded wait: abort is asynchronous).
    health.sync(&[], now_ms());
    assert!(health.ports().is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(port, "/").await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "port {port} still answers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_reported_once_with_its_service_and_retried() {
    let mut health = ServiceHealth::default();
    let squatter = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = squatter.local_addr().unwrap().port();

    let out = health.sync(&[check("web", port, 1)], now_ms());
    assert_eq!(out.new_failures, 1);
    assert_eq!(out.errors.len(), 1);
    let e = &out.errors[0];
    assert!(
        e.starts_with("Service shop/web: spec.healthCheckNodePort: cannot listen on 0.0.0.0:"),
        "{e}"
    );
    assert!(health.ports().is_empty());

    // Still failing: listed, not counted again.
    let out = health.sync(&[check("web", port, 1)], now_ms());
    assert_eq!((out.new_failures, out.errors.len()), (0, 1));

    // The port is freed: the next pass serves it.
    drop(squatter);
    let out = health.sync(&[check("web", port, 1)], now_ms());
    assert_eq!(out, SyncOutcome::default());
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
}

//! Prometheus text at `/metrics`, and health at `/healthz` (the process
//! serves) and `/readyz` (the caller's own test), for the daemon and the
//! controller alike. Each registers its metrics in a
//! [`prometheus_client::registry::Registry`] and says what ready means.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text `prometheus_client` encodes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process is ready, asked at each `/readyz`.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("the metrics server failed")]
pub struct ServeError(#[source] pub std::io::Error);

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: Readiness,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(listener, registry, ready, Router::new(), stop).await
}

/// [`serve`], and the caller's own `routes` beside them (the daemon's
/// `/status`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: Readiness,
    routes: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Shared {
            registry: Arc::new(registry),
            ready,
        })
        .merge(routes);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(ServeError)
}

/// Encodes the registry on a thread of the blocking pool: a collector may
/// read state behind a lock that blocking work holds (the daemon's node).
async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let registry = shared.registry;
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        Ok(Err(_)) | Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    if (shared.ready)().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The status line and body of `GET path`.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        let status = answer.lines().next().unwrap_or_default().to_string();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn serves_the_registry_health_and_the_callers_readiness() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("things", "Things seen", counter.clone());
        counter.inc();
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let ready: Readiness = Arc::new(move || {
            let r = f.load(Ordering::Relaxed);
            Box::pin(async move { r })
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, registry, ready, async move {
            let _ = stop_rx.await;
        }));

        let (status, body) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("things_total 1"), "{body}");
        let (status, _) = get(addr, "/healthz").await;
        assert!(status.contains("200"), "{status}");
        let (status, body) = get(addr, "/readyz").await;
        assert!(status.contains("503"), "{status}");
        assert_eq!(body, "not ready\n");
        flag.store(true, Ordering::Relaxed);
        let (status, _) = get(addr, "/readyz").await;
        assert!(status.contains("200"), "{status}");

        let _ = stop_tx.send(());
        assert!(matches!(server.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn serves_the_callers_routes_beside_its_own() {
        let ready: Readiness = Arc::new(|| Box::pin(async { true }));
        let routes = Router::new().route("/status", axum::routing::get(|| async { "[]" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Registry::default(),
            ready,
            routes,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let (status, body) = get(addr, "/status").await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(body, "[]");
        let (status, _) = get(addr, "/healthz").await;
        assert!(status.contains("200"), "{status}");
        let _ = stop_tx.send(());
        assert!(matches!(server.await, Ok(Ok(()))));
    }
}

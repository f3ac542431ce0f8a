//! The admin port: `/metrics` (Prometheus text), `/livez` and `/readyz`.
//!
//! `/livez` fails when the controller loop has stopped (so the kubelet restarts the pod);
//! `/readyz` is ready once the pipeline watch has synced its first list, or while this
//! replica stands by for leadership (a standby is healthy and must not block a rollout).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Health shared between the controller and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    /// The watches have synced.
    pub synced: AtomicBool,
    /// Waiting for the leader Lease.
    pub standby: AtomicBool,
    /// The controller loop ended (shutdown or fatal).
    pub stopped: AtomicBool,
}

#[derive(Debug)]
struct AdminState {
    registry: Registry,
    health: Arc<Health>,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(AdminState { registry, health });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the admin address (port 0 picks a free port: tests).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn livez(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if s.health.stopped.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "controller stopped\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let h = &s.health;
    if h.stopped.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "controller stopped\n")
    } else if h.synced.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else if h.standby.load(Ordering::Relaxed) {
        (StatusCode::OK, "standby: waiting for the leader lease\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet\n")
    }
}

//! Telemetry: the Prometheus registry, `/metrics`, `/healthz`, `/readyz`, and log set-up.
//!
//! Takes: the registry the stages registered on and the readiness flag capture sets. Gives: an
//! HTTP server. Must never: sit in the data path or block a stage.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder as _, Registry, TextEncoder};

#[derive(Clone)]
struct AppState {
    registry: Registry,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` (so a taken port fails at start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: Arc<AtomicBool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(message = "Serving metrics.", addr = ?listener.local_addr().ok());
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "attaching\n")
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

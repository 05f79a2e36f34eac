//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::agent::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The loop must have run within this many seconds to count as alive.
    stale_after: u64,
}

pub async fn serve(
    addr: std::net::SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stale_after: u64,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics, stale_after });
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /healthz /readyz /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    let last = s.health.last_loop.load(Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Before the first loop (waiting for the Node list) the process is alive too.
    if last == 0 || now.saturating_sub(last) <= s.stale_after {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reconcile loop stalled\n")
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no complete sync yet, or the last passes failed (see the log)\n")
    }
}

async fn metrics_text(State(s): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.encode())
}

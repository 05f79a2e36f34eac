//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Two listeners: the probes on 127.0.0.1 (kubelet probes a hostNetwork
//! pod from the node's own network namespace, so loopback reaches it and
//! nothing else does) and `/metrics` where the operator chooses. When both
//! addresses are equal one listener serves all three paths.
//!
//! The agent runs on one thread: a client must not be able to hold the
//! reconcile loop or exhaust memory. Each listener therefore serves at most
//! [`Limits::max_connections`] connections at once (more are closed on
//! accept), a client gets [`Limits::header_read`] to send its request
//! headers, and a connection lives at most [`Limits::connection`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::observe::counters::{self, Counts};

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The loop must have run within this many seconds to count as alive.
    stale_after: u64,
    /// When the drop counters were last read from nftables: at most once
    /// per [`DROPS_REFRESH`], so a flood of scrapes cannot fork `nft` in a loop.
    drops_read: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

const DROPS_REFRESH: Duration = Duration::from_secs(5);

/// What one listener lets its clients take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_read: Duration,
    /// Time a connection may stay open at all (a slow reader of the response).
    pub connection: Duration,
}

impl Default for Limits {
    /// Probes and a Prometheus scrape need one or two connections each and
    /// answer within milliseconds; these bounds leave room for both.
    fn default() -> Limits {
        Limits { max_connections: 32, header_read: Duration::from_secs(5), connection: Duration::from_secs(30) }
    }
}

/// Serves the probes on `health_addr` and the metrics on `metrics_addr`
/// until either listener fails.
pub async fn serve(
    health_addr: SocketAddr,
    metrics_addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stale_after: u64,
) -> anyhow::Result<()> {
    let shared = Shared { health, metrics, stale_after, drops_read: Arc::default() };
    let probes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    let scrape = Router::new().route("/metrics", get(metrics_text));
    if health_addr == metrics_addr {
        let listener = bind(health_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "serving /healthz /readyz /metrics");
        return serve_listener(listener, probes.merge(scrape).with_state(shared), Limits::default()).await;
    }
    let (h, m) = (bind(health_addr).await?, bind(metrics_addr).await?);
    tracing::info!(addr = %h.local_addr()?, "serving /healthz /readyz");
    tracing::info!(addr = %m.local_addr()?, "serving /metrics");
    tokio::try_join!(
        serve_listener(h, probes.with_state(shared.clone()), Limits::default()),
        serve_listener(m, scrape.with_state(shared), Limits::default()),
    )?;
    Ok(())
}

/// Binds `addr`; `[::]` falls back to `0.0.0.0` on a node without IPv6
/// rather than leaving the agent without probes.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if addr.ip().is_ipv6() && addr.ip().is_unspecified() => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
            tracing::warn!(%addr, "cannot listen on IPv6 ({e}): listening on {v4}");
            TcpListener::bind(v4).await.map_err(|e| anyhow::anyhow!("listen on {v4}: {e}"))
        }
        Err(e) => Err(anyhow::anyhow!("listen on {addr}: {e}")),
    }
}

/// Serves `app` on `listener` within `limits`; returns only on a fatal error.
pub async fn serve_listener(listener: TcpListener, app: Router, limits: Limits) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like pass; retrying at once would spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the limit: closed at once, never queued
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(stream), service);
            // Errors are the client's (a reset, a timeout): nothing to report.
            let _ = tokio::time::timeout(limits.connection, conn).await;
            drop(slot);
        });
    }
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
    {
        let mut last = s.drops_read.lock().await;
        if last.is_none_or(|t| t.elapsed() >= DROPS_REFRESH) {
            s.metrics.set_dropped(&counters::drop_counts().await);
            let raw = counters::policy_counters().await;
            let counts = counters::counts_in(&raw);
            s.metrics.set_policy_counts(&Counts::labelled(&counts.denied), &Counts::labelled(&counts.pending));
            s.metrics.set_policy_denied_by_policy(&raw);
            *last = Some(Instant::now());
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.encode())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    fn app() -> Router {
        let shared =
            Shared { health: Arc::default(), metrics: Arc::default(), stale_after: 60, drops_read: Arc::default() };
        Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics_text)).with_state(shared)
    }

    /// A server on an ephemeral loopback port with short limits.
    async fn server(max_connections: usize) -> SocketAddr {
        let limits =
            Limits { max_connections, header_read: Duration::from_millis(300), connection: Duration::from_secs(2) };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_listener(listener, app(), limits));
        addr
    }

    async fn fetch(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// Stands in for the reconcile loop: counts 10 ms ticks.
    fn ticker() -> Arc<AtomicU64> {
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        ticks
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_client_is_cut_off_and_others_are_served_meanwhile() {
        let addr = server(4).await;
        let ticks = ticker();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap(); // and never more
        assert!(fetch(addr, "/healthz").await.contains(" 200 "), "served while a slow client waits");
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "closed by the header timeout, not the connection lifetime"
        );
        assert!(ticks.load(Ordering::Relaxed) > 10, "the loop kept running");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_flood_is_bounded_and_the_server_recovers() {
        let addr = server(8).await;
        let ticks = ticker();
        // 200 idle connections: 8 are held until the header timeout, the rest closed at once.
        let mut flood = Vec::new();
        for _ in 0..200 {
            flood.push(TcpStream::connect(addr).await.unwrap());
        }
        let before = ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ticks.load(Ordering::Relaxed) > before + 3, "the loop kept running during the flood");
        let mut closed = 0;
        for s in &mut flood {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await {
                closed += 1;
            }
        }
        assert!(closed >= 190, "connections over the limit are closed at once: {closed}");
        // The held ones time out; then the server answers again, while the flood's sockets stay open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answer = tokio::time::timeout(Duration::from_secs(2), fetch(addr, "/metrics")).await.unwrap();
        assert!(answer.contains(" 200 ") && answer.contains("weft_"), "{answer}");
        drop(flood);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unspecified_ipv6_binds_or_falls_back_to_ipv4() {
        // Port 0: whichever family the machine has, a listener comes back.
        let l = bind("[::]:0".parse().unwrap()).await.unwrap();
        assert!(l.local_addr().unwrap().ip().is_unspecified());
        assert!(bind("127.0.0.1:0".parse().unwrap()).await.is_ok());
    }
}

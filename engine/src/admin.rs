//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
//! It runs on its own thread with a small Tokio runtime, away from the timely workers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

pub struct AdminServer {
    pub local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn serve_metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.get() == 1 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("admin endpoint: cannot listen on {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(metrics);
        let thread = std::thread::Builder::new().name("ward-admin".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin endpoint: cannot start runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin endpoint: bad listener");
                        return;
                    }
                };
                let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = rx.await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "admin endpoint stopped");
                }
            });
        })?;
        Ok(AdminServer { local_addr, shutdown: Some(tx), thread: Some(thread) })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`, plus routes
//! components register while a spec is built (e.g. `GET /rules`, `POST /rules/reload`).
//! It runs on its own thread with a small Tokio runtime, away from the timely workers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
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

/// A component's handler for one admin route: gets the request body, returns an HTTP status
/// and a JSON body. Handlers run on a blocking thread, so they may do real work (compile rules).
pub type AdminHandler = Arc<dyn Fn(&[u8]) -> (u16, serde_json::Value) + Send + Sync>;

#[derive(Clone)]
struct Route {
    method: Method,
    path: String,
    component: String,
    handler: AdminHandler,
}

/// Routes registered by components. When several components register the same route, the
/// response is an object keyed by component id and the status is the worst of theirs.
#[derive(Clone, Default)]
pub struct AdminRoutes {
    routes: Arc<Mutex<Vec<Route>>>,
}

impl AdminRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `method` (`GET` or `POST`) on `path`.
    pub fn register(&self, method: &str, path: &str, component: &str, handler: AdminHandler) {
        let method = if method.eq_ignore_ascii_case("post") { Method::POST } else { Method::GET };
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|r| !(r.method == method && r.path == path && r.component == component));
        routes.push(Route { method, path: path.to_string(), component: component.to_string(), handler });
    }

    /// Calls the handlers of `method path` directly (for tests and the CLI).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
        let method = if method.eq_ignore_ascii_case("post") { Method::POST } else { Method::GET };
        let matching: Vec<Route> = {
            let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            routes.iter().filter(|r| r.method == method && r.path == path).cloned().collect()
        };
        combine(&matching, body)
    }

    fn paths(&self) -> Vec<String> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut paths: Vec<String> = routes.iter().map(|r| r.path.clone()).collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

fn combine(routes: &[Route], body: &[u8]) -> Option<(u16, serde_json::Value)> {
    match routes {
        [] => None,
        [one] => Some((one.handler)(body)),
        many => {
            let mut worst = 200;
            let mut out = BTreeMap::new();
            for r in many {
                let (status, json) = (r.handler)(body);
                worst = worst.max(status);
                out.insert(r.component.clone(), json);
            }
            Some((worst, serde_json::to_value(out).unwrap_or_default()))
        }
    }
}

async fn component_route(
    State(routes): State<AdminRoutes>,
    method: Method,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let path = uri.path().to_string();
    let known = routes.paths().contains(&path);
    let result = tokio::task::spawn_blocking(move || routes.call(method.as_str(), &path, &body)).await;
    match result {
        Ok(Some((status, json))) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "application/json")],
            format!("{json}\n"),
        ),
        Ok(None) if known => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"error\":\"method not allowed\"}\n".to_string(),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"error\":\"not found\"}\n".to_string(),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub fn start(addr: &str, metrics: Arc<Metrics>, routes: AdminRoutes) -> anyhow::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("admin endpoint: cannot listen on {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut components = Router::new();
        for path in routes.paths() {
            components = components.route(&path, any(component_route));
        }
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(metrics)
            .merge(components.with_state(routes));
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

//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`, plus routes
//! components register while a spec is built (e.g. `GET /rules`, `POST /rules/reload`).
//!
//! It runs on its own thread with a one-thread Tokio runtime (and at most two blocking threads
//! for handlers), away from the timely workers, and it is built so that a hostile client can
//! never take what the dataflow needs (docs/architecture.md §7): at most `max_connections` connections
//! are open at once (never more than an eighth of the file-descriptor limit; further ones are
//! closed on accept), request headers must arrive within [`HEADER_READ_TIMEOUT`] and a
//! connection lives at most [`CONNECTION_TIMEOUT`], bodies are capped at [`MAX_BODY_BYTES`].
//! Mutating routes (anything but GET/HEAD) need the bearer token when one is configured, and
//! are refused on a non-loopback address without one; on a loopback address only loopback
//! `Host` names are served (a DNS-rebinding page cannot reach it) and a mutating request from
//! a foreign `Origin` (a browser page) is refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::metrics::Metrics;

/// Time a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection (slow bodies, idle keep-alive).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Default cap on concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;

/// How the endpoint guards itself.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// Bearer token that mutating routes require (`None`: no token configured).
    pub token: Option<String>,
    /// Where the token came from, for messages (e.g. `$WARD_ADMIN_TOKEN`).
    pub token_source: String,
    pub max_connections: usize,
    /// `Host` names served besides the loopback ones (e.g. a Service name behind a proxy).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminOptions {
    fn default() -> Self {
        AdminOptions {
            token: None,
            token_source: "$WARD_ADMIN_TOKEN".into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
        }
    }
}

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
        let method = parse_method(method);
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|r| !(r.method == method && r.path == path && r.component == component));
        routes.push(Route { method, path: path.to_string(), component: component.to_string(), handler });
    }

    /// Calls the handlers of `method path` directly (for tests and the CLI).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
        let method = parse_method(method);
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

fn parse_method(m: &str) -> Method {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or(Method::GET)
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

/// What the guard needs to decide on a request.
struct Guard {
    options: AdminOptions,
    loopback: bool,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{}\n", serde_json::json!({ "error": message })))
        .into_response()
}

/// The host part of a `Host` header or an `Origin` URL (`[::1]:9464` → `::1`).
fn host_name(authority: &str) -> &str {
    let a = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    a.split(':').next().unwrap_or(a)
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if self.options.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(host)) {
            return true;
        }
        if self.loopback {
            is_loopback_name(name)
        } else {
            // Exposed on purpose: any name unless the operator listed the allowed ones.
            self.options.allowed_hosts.is_empty()
        }
    }

    fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Response> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !self.host_allowed(host) {
            return Err(json_error(StatusCode::MISDIRECTED_REQUEST, "Host not served by this endpoint"));
        }
        if method == Method::GET || method == Method::HEAD {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let authority = origin.split("://").nth(1).unwrap_or("");
            if !self.host_allowed(authority) {
                return Err(json_error(StatusCode::FORBIDDEN, "cross-origin request refused"));
            }
        }
        match &self.options.token {
            Some(token) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !constant_time_eq::constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                    let mut r = json_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                    return Err(r);
                }
                Ok(())
            }
            None if !self.loopback => Err(json_error(
                StatusCode::FORBIDDEN,
                &format!(
                    "mutating routes are disabled: the admin endpoint listens on a non-loopback address and no token \
                     is set ({})",
                    self.options.token_source
                ),
            )),
            None => Ok(()),
        }
    }
}

async fn guard(State(g): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match g.check(request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(r) => r,
    }
}

/// The soft limit on open file descriptors (None if unknown).
fn nofile_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).ok().map(|(soft, _)| soft)
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped.
    pub fn start(
        addr: &str,
        metrics: Arc<Metrics>,
        routes: AdminRoutes,
        options: AdminOptions,
    ) -> anyhow::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("admin endpoint: cannot listen on {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let loopback = local_addr.ip().is_loopback();
        if !loopback && options.token.is_none() {
            tracing::warn!(
                %local_addr,
                "admin endpoint on a non-loopback address without a token ({}): mutating routes \
                 (POST /rules/reload) are refused",
                options.token_source
            );
        }
        // Never more than an eighth of the descriptors: the rest are the dataflow's.
        let max_connections =
            nofile_limit().map_or(options.max_connections, |n| options.max_connections.min((n / 8).max(1) as usize));
        let guard_state = Arc::new(Guard { options, loopback });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let mut components = Router::new();
        for path in routes.paths() {
            components = components.route(&path, any(component_route));
        }
        let app = Router::new()
            .route("/metrics", get(serve_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(metrics.clone())
            .merge(components.with_state(routes))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(guard_state, guard));
        let admin_metrics = metrics.admin.clone();
        let thread = std::thread::Builder::new().name("ward-admin".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().max_blocking_threads(2).enable_all().build() {
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
                let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
                loop {
                    let accepted = tokio::select! {
                        _ = &mut rx => break,
                        a = listener.accept() => a,
                    };
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors or a transient error: back off instead of spinning.
                            tracing::debug!(error = %e, "admin endpoint: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        admin_metrics.rejected.inc();
                        drop(stream); // Closed at once: over the connection cap.
                        continue;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let open = admin_metrics.open.clone();
                    tokio::spawn(async move {
                        open.inc();
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .max_buf_size(64 * 1024)
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                        open.dec();
                        drop(slot);
                    });
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

//! What every service's HTTP surface shares: session keys in the request, the error
//! envelope for unknown routes and methods, body limits, request ids, request logs,
//! `/healthz` and `/readyz`, and serving until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::session::SessionKeys;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Something `/readyz` looks at: a database, a bus.
#[derive(Clone)]
pub struct ReadinessCheck {
    /// Its key in `/readyz`'s body.
    pub name: &'static str,
    /// Whether the process is unready while it fails. A bus outage is reported but does not make
    /// tickets or orders unready: their writes wait in the outbox, so they can still serve.
    pub required: bool,
    pub probe: Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>,
}

/// What `/readyz` answers: "starting" until the process's services have started (they wait for
/// their database and bus, retrying), then the result of their checks.
#[derive(Clone, Default)]
pub struct Readiness(Arc<std::sync::RwLock<Option<Arc<Vec<ReadinessCheck>>>>>);

impl Readiness {
    /// The services started; from now on `/readyz` runs `checks`.
    pub fn started(&self, checks: Vec<ReadinessCheck>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(checks));
    }

    fn checks(&self) -> Option<Arc<Vec<ReadinessCheck>>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Runs every check at once and answers 200 unless a required one fails, with each check's
    /// state in the body. Causes go to the log, not to whoever asked.
    async fn respond(&self) -> Response {
        let Some(checks) = self.checks() else {
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "starting" })))
                .into_response();
        };
        let results = futures::future::join_all(checks.iter().map(|check| async move {
            // Well within a probe's usual 1-3 s timeout.
            let result = match tokio::time::timeout(Duration::from_millis(800), (check.probe)()).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("no answer within 800 ms")),
            };
            (check, result)
        }))
        .await;
        let mut ready = true;
        let mut body = serde_json::Map::new();
        for (check, result) in results {
            let state = match result {
                Ok(()) => "ok",
                Err(err) => {
                    tracing::warn!(check = check.name, required = check.required, error = %format!("{err:#}"), "readiness check failed");
                    ready &= !check.required;
                    "unavailable"
                }
            };
            body.insert(check.name.to_owned(), state.into());
        }
        let (status, word) =
            if ready { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
        (status, axum::Json(serde_json::json!({ "status": word, "checks": body }))).into_response()
    }
}

/// Wraps a service's API routes with what every service needs. Services set no fallback:
/// routers of several services are merged into one app, which answers unknown paths.
pub fn service_router(api: Router, keys: Arc<SessionKeys>, max_body_bytes: usize) -> Router {
    api.layer(middleware::from_fn(envelope_for_bare_errors))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(keys))
}

/// Marks the answers of the health endpoints, so their request logs stay at debug: probes
/// come every few seconds and say nothing.
#[derive(Debug, Clone, Copy)]
struct HealthProbe;

/// The outermost layers: request ids, request logs, trace ids, health endpoints.
pub fn with_observability(app: Router, readiness: Readiness) -> Router {
    app.route("/healthz", get(|| async { (axum::Extension(HealthProbe), "ok") }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { (axum::Extension(HealthProbe), readiness.respond().await) }
            }),
        )
        // Events written while answering carry the request id on (see `telemetry`).
        .layer(middleware::from_fn(scope_trace_id))
        // A panicking handler answers 500 in the envelope, and the panic is logged (inside the
        // request's span, so with its id) instead of the connection just dropping.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<Body>| {
                    let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let path = request.uri().path();
                    if path == "/healthz" || path == "/readyz" {
                        tracing::debug_span!("request", method = %request.method(), path = %path, request_id = %request_id)
                    } else {
                        tracing::info_span!("request", method = %request.method(), path = %path, request_id = %request_id)
                    }
                })
                .on_response(|response: &Response, latency: Duration, _: &tracing::Span| {
                    let status = response.status().as_u16();
                    let latency_us = latency.as_micros() as u64;
                    if response.extensions().get::<HealthProbe>().is_some() {
                        tracing::debug!(status, latency_us, "finished processing request");
                    } else {
                        tracing::info!(status, latency_us, "finished processing request");
                    }
                }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}

async fn scope_trace_id(request: Request, next: Next) -> Response {
    let trace_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
    crate::telemetry::with_trace_id(trace_id, next.run(request)).await
}

/// Counts requests and their latency by route template (never the raw path, which would make
/// a series per ticket id). Layered on the services' routers, where the route is known;
/// requests no route matched count as `unmatched`.
pub fn with_metrics(app: Router) -> Router {
    app.layer(middleware::from_fn(record_metrics))
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = crate::metrics::HttpLabels { route, method, status: response.status().as_u16() };
    let m = crate::metrics::metrics();
    m.http_requests.get_or_create(&labels).inc();
    m.http_request_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::Unexpected(anyhow::anyhow!("handler panicked: {detail}")).into_response()
}

/// axum answers a wrong method (405) with an empty body; give it the envelope too.
async fn envelope_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let allow = response.headers().get(axum::http::header::ALLOW).cloned();
        let mut enveloped = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(crate::error::ErrorBody {
                errors: vec![crate::error::ErrorItem { message: "Method not allowed".into(), field: None }],
            }),
        )
            .into_response();
        if let Some(allow) = allow {
            enveloped.headers_mut().insert(axum::http::header::ALLOW, allow);
        }
        return enveloped;
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&response) {
        return ApiError::PayloadTooLarge.into_response();
    }
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The client's address: the socket peer, or the proxy's `X-Forwarded-For` when trusted.
/// With a trusted proxy the rightmost entry is the one the proxy itself appended.
/// A loopback peer is always trusted: it is the web pages calling the API on behalf of a
/// visitor (in one process or beside it), and counting every visitor as that one peer
/// would rate-limit them all together.
pub fn client_ip(headers: &axum::http::HeaderMap, peer: Option<std::net::SocketAddr>, trust_proxy: bool) -> String {
    let peer_is_loopback = peer.is_some_and(|addr| addr.ip().is_loopback());
    if trust_proxy || peer_is_loopback {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|v| !v.is_empty());
        if let Some(ip) = forwarded {
            return ip.to_owned();
        }
    }
    peer.map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string())
}

/// The socket peer of a request, when the server recorded it (it does when served by
/// [`serve`]; router tests without a socket get `None`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0)))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn panic_now(message: &str) -> &'static str {
        panic!("{message}")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_envelope() {
        let app = with_observability(
            Router::new().route("/boom", get(|| async { panic_now("kaboom") })),
            Readiness::default(),
        );
        let response = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"errors":[{"message":"Something went wrong"}]}"#);
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn health_probes_are_logged_at_debug_and_other_requests_at_info() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let app =
            with_observability(Router::new().route("/api/things", get(|| async { "things" })), Readiness::default());
        for path in ["/healthz", "/readyz", "/api/things"] {
            let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            assert!(response.headers().contains_key("x-request-id"), "{path}");
        }
        let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let finished: Vec<&str> = logs.lines().filter(|line| line.contains("finished processing request")).collect();
        assert_eq!(finished.len(), 1, "{logs}");
        assert!(finished[0].contains("path=/api/things") && finished[0].contains("status=200"), "{logs}");
    }
}

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
use crate::session::{Revocations, SessionKeys};

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

/// A started service: its routes, what `/readyz` must check, and its background loops. The
/// binary merges the routers of the services it runs into one app and waits for their loops
/// after shutdown.
pub struct Service {
    pub name: &'static str,
    pub router: Router,
    pub checks: Vec<ReadinessCheck>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What `/readyz` answers: "starting" until the process's services have started (they wait for
/// their database and bus, retrying), then the result of their checks. It also holds what
/// `/healthz` answers: a process whose background loop stopped before shutdown is not live.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::RwLock<Option<Arc<Vec<ReadinessCheck>>>>>,
    /// The loops that stopped while they should still run.
    dead: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl Readiness {
    /// Watches a service's background loop: if it ends before `shutdown` (it returned, or
    /// panicked outside the steps its worker already catches), the cause is logged and
    /// `/healthz` answers 503 from then on, so an orchestrator restarts the process instead of
    /// leaving it serving without, say, its event consumer. The returned task ends with it.
    pub fn watch(
        &self,
        service: &'static str,
        task: tokio::task::JoinHandle<()>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let dead = self.dead.clone();
        tokio::spawn(async move {
            let ended = task.await;
            if shutdown.is_cancelled() {
                return;
            }
            match ended {
                Ok(()) => {
                    tracing::error!(service, "a background loop stopped before shutdown; the process is no longer live")
                }
                Err(err) => {
                    tracing::error!(service, error = %err, "a background loop died; the process is no longer live")
                }
            }
            dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(service);
        })
    }

    fn live(&self) -> Response {
        let dead = self.dead.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if dead.is_empty() {
            return "ok".into_response();
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "a background loop stopped", "services": dead })),
        )
            .into_response()
    }

    /// The services started; from now on `/readyz` runs `checks`.
    pub fn started(&self, checks: Vec<ReadinessCheck>) {
        *self.checks.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(checks));
    }

    fn checks(&self) -> Option<Arc<Vec<ReadinessCheck>>> {
        self.checks.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
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

/// Wraps a service's API routes with what every service needs: the session keys and the
/// revoked-session list its extractors consult (see [`crate::session`]), the error envelope,
/// the body limit. Services set no fallback: routers of several services are merged into one
/// app, which answers unknown paths.
pub fn service_router(api: Router, keys: Arc<SessionKeys>, revocations: Revocations, max_body_bytes: usize) -> Router {
    api.layer(middleware::from_fn(envelope_for_bare_errors))
        .layer(middleware::from_fn(no_store_when_personal))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(keys))
        .layer(axum::Extension(revocations))
}

/// Marks the answers of the health endpoints, so their request logs stay at debug: probes
/// come every few seconds and say nothing.
#[derive(Debug, Clone, Copy)]
struct HealthProbe;

/// The outermost layers: request ids, request logs, trace ids, health endpoints.
pub fn with_observability(app: Router, readiness: Readiness) -> Router {
    let liveness = readiness.clone();
    app.route(
        "/healthz",
        get(move || {
            let liveness = liveness.clone();
            async move { (axum::Extension(HealthProbe), liveness.live()) }
        }),
    )
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
    .layer(middleware::from_fn(nosniff))
}

/// Every answer, API or page or error, is what its `Content-Type` says: a browser must not
/// guess (an error text sniffed as HTML would be a script's way in).
async fn nosniff(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .entry(axum::http::header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(axum::http::HeaderValue::from_static("nosniff"));
    response
}

/// An API answer to a request carrying credentials (session cookie or bearer token), or one
/// that sets a cookie, is somebody's own: no browser or shared cache may keep it.
async fn no_store_when_personal(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let credentials = headers.contains_key(axum::http::header::AUTHORIZATION)
        || crate::session::session_cookie(headers).is_some_and(|session| !session.is_empty());
    let mut response = next.run(request).await;
    if credentials || response.headers().contains_key(axum::http::header::SET_COOKIE) {
        response
            .headers_mut()
            .insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    }
    response
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
            axum::Json(contract::error::ErrorBody {
                errors: vec![contract::error::ErrorItem { message: "Method not allowed".into(), field: None }],
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

/// What a client may take of the server: slow or idle clients are cut off, and the number of
/// connections is bounded, so a few hundred half-sent requests cannot use up the process's
/// file descriptors and stop all service.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time to send a request head: from the connection's start for the first request, from
    /// its first byte for a later one.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Time to send the whole body.
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    /// Largest body; a `Content-Length` above it is answered 413 before any of it is read.
    pub max_body_bytes: usize,
}

impl ServeLimits {
    pub fn from_settings(settings: &crate::settings::Settings) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(settings.http_header_read_timeout_seconds.max(1)),
            idle_timeout: Duration::from_secs(settings.http_idle_timeout_seconds.max(1)),
            body_read_timeout: Duration::from_secs(settings.http_body_read_timeout_seconds.max(1)),
            max_connections: settings.http_max_connections.max(1),
            max_body_bytes: settings.max_body_bytes,
        }
    }
}

impl Default for ServeLimits {
    /// The settings' defaults, without a body cap of its own (the routes have theirs).
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_body_bytes: usize::MAX,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests,
/// with the default [`ServeLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, app, shutdown, ServeLimits::default()).await
}

/// [`serve`] with the given limits.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let max_body = limits.max_body_bytes;
    let app = app
        .layer(middleware::from_fn(move |request: Request, next: Next| too_large_by_length(request, next, max_body)))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_read_timeout));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached (HTTP_MAX_CONNECTIONS): new connections wait until one closes"
                );
                tokio::select! {
                    () = stop.cancelled() => break,
                    permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off a moment instead of spinning.
                    tracing::error!(error = %err, "accept error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let service = hyper::service::service_fn({
                let activity = activity.clone();
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    let answering = Answering::start(activity.clone());
                    let response = tower::ServiceExt::oneshot(app.clone(), request.map(Body::new));
                    async move {
                        let response = response.await;
                        drop(answering);
                        response
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(Watched { inner: stream, activity: activity.clone() });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::pin!(connection);
            let watchdog = watch(activity, limits);
            tokio::pin!(watchdog);
            let result = tokio::select! {
                result = connection.as_mut() => Ok(result),
                reason = &mut watchdog => Err(reason),
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection.as_mut() => Ok(result),
                        reason = &mut watchdog => Err(reason),
                    }
                }
            };
            // Dropping the connection closes the socket.
            match result {
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "connection closed with an error"),
                Err(reason) => tracing::debug!(%peer, reason, "connection closed by the server"),
                Ok(Ok(())) => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// What a connection's watchdog looks at: when bytes last moved, how many requests are being
/// answered, and since when the client has been sending a request head. hyper has one clock
/// for both "sending a head" and "idle between requests"; these are two settings here.
struct Activity {
    state: std::sync::Mutex<ActivityState>,
    /// Wakes the watchdog when the clock that applies changes (a head starts, an answer starts
    /// or ends); it re-reads the state after any wake-up, so none is lost or wrong.
    changed: tokio::sync::Notify,
}

struct ActivityState {
    last: tokio::time::Instant,
    answering: usize,
    /// Set from the connection's start, and from the first byte read after an answer.
    head_since: Option<tokio::time::Instant>,
}

impl Activity {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            state: std::sync::Mutex::new(ActivityState { last: now, answering: 0, head_since: Some(now) }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) {
        let mut state = self.state();
        let now = tokio::time::Instant::now();
        state.last = now;
        if state.answering == 0 && state.head_since.is_none() {
            state.head_since = Some(now);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.state().last = tokio::time::Instant::now();
    }
}

/// A request being answered, from its head's arrival until its answer is ready.
struct Answering(Arc<Activity>);

impl Answering {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut state = activity.state();
            state.answering += 1;
            state.head_since = None;
        }
        activity.changed.notify_one();
        Self(activity)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        {
            let mut state = self.0.state();
            state.answering -= 1;
            state.last = tokio::time::Instant::now();
        }
        self.0.changed.notify_one();
    }
}

/// Resolves, with the reason, when the connection must be closed: its request head took longer
/// than `header_read_timeout`, or it sat idle longer than `idle_timeout`. A request being
/// answered is bounded by the body timeout and the handlers instead.
async fn watch(activity: Arc<Activity>, limits: ServeLimits) -> &'static str {
    loop {
        let (deadline, reason) = {
            let state = activity.state();
            if state.answering > 0 {
                (tokio::time::Instant::now() + limits.header_read_timeout.min(limits.idle_timeout), None)
            } else if let Some(since) = state.head_since {
                (
                    since + limits.header_read_timeout,
                    Some("request head not sent in time (HTTP_HEADER_READ_TIMEOUT_SECONDS)"),
                )
            } else {
                (state.last + limits.idle_timeout, Some("idle keep-alive connection (HTTP_IDLE_TIMEOUT_SECONDS)"))
            }
        };
        match reason {
            Some(reason) if tokio::time::Instant::now() >= deadline => return reason,
            _ => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = activity.changed.notified() => {}
                }
            }
        }
    }
}

/// A socket that tells its [`Activity`] when bytes move.
struct Watched {
    inner: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(written)) if written > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// 413 at once for a declared body above the cap, instead of reading it first.
async fn too_large_by_length(request: Request, next: Next, max_body: usize) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body as u64) {
        let mut response = ApiError::PayloadTooLarge.into_response();
        // The unread body stays on the socket: do not try to read another request after it.
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
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

    /// What the session extractors of a service router do with its `RevocationCheck`: a
    /// revoked session is anonymous (401 where a user is required), and a list that cannot be
    /// read refuses the request with the check's own answer (503 with `Retry-After`).
    #[tokio::test]
    async fn the_service_router_asks_its_revocation_check_about_every_session() {
        use crate::session::{RequireUser, RevocationCheck};

        /// Revoked: the sessions listed; `None` stands for a list that cannot be read.
        struct Listed(Option<Vec<uuid::Uuid>>);

        impl RevocationCheck for Listed {
            fn is_revoked(&self, id: uuid::Uuid) -> BoxFuture<'_, Result<bool, ApiError>> {
                Box::pin(async move {
                    match &self.0 {
                        Some(revoked) => Ok(revoked.contains(&id)),
                        None => Err(ApiError::Unavailable(anyhow::anyhow!("revoked sessions unreadable"))),
                    }
                })
            }
        }

        let keys = Arc::new(SessionKeys::new(b"revocation test key", time::Duration::hours(1)));
        let ask = |check: Listed, token: String| {
            let api = Router::new().route("/me", get(|RequireUser(user): RequireUser| async move { user.email }));
            let app = service_router(api, keys.clone(), Arc::new(check), 1024);
            async move {
                let request = Request::get("/me").header("authorization", format!("Bearer {token}"));
                let response = app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
                let (status, retry_after) = (response.status(), response.headers().contains_key("retry-after"));
                let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
                (status, retry_after, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        let signed_out = keys.issue(uuid::Uuid::new_v4(), "out@b.co").unwrap();
        let signed_in = keys.issue(uuid::Uuid::new_v4(), "in@b.co").unwrap();
        let revoked = Some(vec![keys.verify(&signed_out).unwrap().jti]);

        assert_eq!(
            ask(Listed(revoked.clone()), signed_in.clone()).await,
            (StatusCode::OK, false, "in@b.co".to_owned())
        );
        let (status, _, body) = ask(Listed(revoked), signed_out).await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, r#"{"errors":[{"message":"Not authorized"}]}"#));
        let (status, retry_after, _) = ask(Listed(None), signed_in).await;
        assert_eq!((status, retry_after), (StatusCode::SERVICE_UNAVAILABLE, true));
    }

    /// A background loop that dies makes `/healthz` answer 503 with the service's name; one
    /// that ends because the process is shutting down does not.
    #[tokio::test]
    async fn a_process_whose_loop_died_is_not_live() {
        let readiness = Readiness::default();
        let app = with_observability(Router::new(), readiness.clone());
        let health = || async {
            let response = app.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            (
                status,
                String::from_utf8(axum::body::to_bytes(response.into_body(), 1024).await.unwrap().to_vec()).unwrap(),
            )
        };
        let running = tokio_util::sync::CancellationToken::new();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let watched = readiness.watch("orders", tokio::spawn(async move { drop(wait.await) }), running.clone());
        assert_eq!(health().await, (StatusCode::OK, "ok".to_owned()));

        let stopping = tokio_util::sync::CancellationToken::new();
        stopping.cancel();
        readiness.watch("tickets", tokio::spawn(async {}), stopping).await.unwrap();
        assert_eq!(health().await.0, StatusCode::OK, "a loop stopped by shutdown is not a death");

        drop(release);
        watched.await.unwrap();
        let (status, body) = health().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("orders"), "{body}");

        readiness
            .watch(
                "payments",
                tokio::spawn(async {
                    let _ = panic_now("loop bug");
                }),
                running,
            )
            .await
            .unwrap();
        assert!(health().await.1.contains("payments"));
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

    /// Serves a tiny app with `limits` on a free port; its address and a way to stop it.
    async fn serve_tiny(limits: ServeLimits) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let app = Router::new().route("/ping", get(|| async { "ok" }));
        tokio::spawn(serve_with_limits(listener, app, stop.clone().cancelled_owned(), limits));
        (addr, stop)
    }

    /// Sends one keep-alive request on `socket` and reads its whole answer.
    async fn ping(socket: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        socket.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.ends_with(b"\r\n\r\nok") {
            let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
                .await
                .expect("answered")
                .unwrap();
            assert!(read > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8(answer).unwrap()
    }

    /// Whether the server closes `socket` before `deadline` (reads nothing more and sees EOF).
    async fn closed_within(socket: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        matches!(tokio::time::timeout(deadline, socket.read_to_end(&mut rest)).await, Ok(Ok(0)))
    }

    /// An idle keep-alive connection is closed after HTTP_IDLE_TIMEOUT_SECONDS, even when the
    /// header timeout is far longer: the two are separate settings.
    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        };
        let (addr, stop) = serve_tiny(limits).await;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Another connection served means the first one's watchdog has already looked at it
        // while it was waiting for its first request head (an hour's header clock here): it
        // must switch to the idle clock once the answer is sent.
        let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(ping(&mut other).await.starts_with("HTTP/1.1 200"));
        assert!(ping(&mut socket).await.starts_with("HTTP/1.1 200"));
        assert!(closed_within(&mut socket, Duration::from_secs(30)).await, "the idle connection was closed");
        assert!(closed_within(&mut other, Duration::from_secs(30)).await, "the other idle connection was closed");
        stop.cancel();
    }

    /// A keep-alive connection idle for longer than the header timeout is still served: the
    /// header clock only runs while a request head is being sent.
    #[tokio::test]
    async fn the_header_timeout_does_not_cut_an_idle_keep_alive_connection() {
        let limits = ServeLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            ..ServeLimits::default()
        };
        let (addr, stop) = serve_tiny(limits).await;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(ping(&mut socket).await.starts_with("HTTP/1.1 200"));
        // The idleness under test: longer than the header timeout.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(ping(&mut socket).await.starts_with("HTTP/1.1 200"), "served after idling past the header timeout");
        // A later head that never ends, on the kept-alive connection: the header clock, not the
        // hour-long idle one, cuts it off.
        use tokio::io::AsyncWriteExt;
        socket.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(closed_within(&mut socket, Duration::from_secs(30)).await, "the half-sent second request was closed");

        // A head that never ends is cut off by the header timeout.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(30)).await, "the half-sent request was closed");
        // So is a connection that never sends anything.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(30)).await, "the silent connection was closed");
        stop.cancel();
    }
}

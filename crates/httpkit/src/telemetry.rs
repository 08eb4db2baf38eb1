//! Logging: human-readable by default, JSON lines by switch, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

tokio::task_local! {
    static TRACE_ID: Option<String>;
}

/// The trace id of what the current task is doing: the id of the HTTP request being answered,
/// or the one the event being handled carried. Events created meanwhile carry it on, so one
/// purchase can be followed across services with `grep <id>` over their logs.
pub fn current_trace_id() -> Option<String> {
    TRACE_ID.try_with(Clone::clone).ok().flatten()
}

/// Runs `work` with `trace_id` as the current trace id.
pub async fn with_trace_id<F: Future>(trace_id: Option<String>, work: F) -> F::Output {
    TRACE_ID.scope(trace_id, work).await
}

//! Prometheus metrics of the process, served on the admin port (`METRICS_ADDR`), never through
//! the public ingress.
//!
//! One registry per process, because one process may run several services: every series
//! carries the service (or consumer group) it is about. Counters and histograms are updated
//! where things happen (HTTP middleware, the consumer adapter, the outbox relay, timers,
//! payments); what lives in tables (outbox backlog, parked events, refunds owed) is sampled
//! by a query when Prometheus scrapes, so it is right even when another instance did the work.
//! The registry is here, in the HTTP layer, because the HTTP middleware and the admin port are
//! its first users and the runtime (`platform`) builds on this crate; the runtime records its
//! series into the same registry and registers its database samplers with [`sample_with`].
//! `docs/operations.md` says what each series means and what to do about it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/orders/{id}`), or `unmatched`: never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub group: String,
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub service: String,
    /// `idle` or `in_use`.
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

fn lag_histogram() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0])
}

/// Every series of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub events_handled: Family<EventLabels, Counter>,
    pub events_failed: Family<EventLabels, Counter>,
    pub events_redelivered: Family<EventLabels, Counter>,
    pub events_parked: Family<EventLabels, Counter>,
    pub event_handling_duration: Family<GroupLabels, Histogram, fn() -> Histogram>,
    pub event_lag: Family<GroupLabels, Histogram, fn() -> Histogram>,
    pub consumer_lag: Family<GroupLabels, FloatGauge>,
    pub parked_events: Family<GroupLabels, Gauge>,
    pub outbox_pending: Family<ServiceLabels, Gauge>,
    pub outbox_oldest_age: Family<ServiceLabels, FloatGauge>,
    pub db_pool_connections: Family<PoolLabels, Gauge>,
    pub db_pool_max: Family<ServiceLabels, Gauge>,
    pub timers_fired: Counter,
    pub timers_due: Gauge,
    pub timer_lateness: Histogram,
    pub payments_charges: Family<OutcomeLabels, Counter>,
    pub payments_refunds: Counter,
    pub payments_refunds_owed: Gauge,
    pub payments_refund_owed_oldest_age: FloatGauge,
    pub payments_charge_attempts_unsettled: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_histogram),
            events_handled: Family::default(),
            events_failed: Family::default(),
            events_redelivered: Family::default(),
            events_parked: Family::default(),
            event_handling_duration: Family::new_with_constructor(latency_histogram),
            event_lag: Family::new_with_constructor(lag_histogram),
            consumer_lag: Family::default(),
            parked_events: Family::default(),
            outbox_pending: Family::default(),
            outbox_oldest_age: Family::default(),
            db_pool_connections: Family::default(),
            db_pool_max: Family::default(),
            timers_fired: Counter::default(),
            timers_due: Gauge::default(),
            timer_lateness: lag_histogram(),
            payments_charges: Family::default(),
            payments_refunds: Counter::default(),
            payments_refunds_owed: Gauge::default(),
            payments_refund_owed_oldest_age: FloatGauge::default(),
            payments_charge_attempts_unsettled: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request",
            Unit::Seconds,
            m.http_request_duration.clone(),
        );
        r.register(
            "events_handled",
            "Events a consumer group applied (or found already applied)",
            m.events_handled.clone(),
        );
        r.register("events_failed", "Deliveries whose handling failed and will be retried", m.events_failed.clone());
        r.register("events_redelivered", "Deliveries after the first (attempt > 1)", m.events_redelivered.clone());
        r.register("events_parked", "Events parked: malformed, or retries exhausted", m.events_parked.clone());
        r.register_with_unit(
            "event_handling_duration",
            "Time a consumer group's handler took for one delivery",
            Unit::Seconds,
            m.event_handling_duration.clone(),
        );
        r.register_with_unit(
            "event_lag",
            "Age of an event (since it occurred) when its consumer group handled it",
            Unit::Seconds,
            m.event_lag.clone(),
        );
        r.register_with_unit(
            "consumer_lag",
            "Age of the event a consumer group handled last, when it handled it",
            Unit::Seconds,
            m.consumer_lag.clone(),
        );
        r.register(
            "parked_events",
            "Events parked in parked_events now, waiting for an operator",
            m.parked_events.clone(),
        );
        r.register("outbox_pending", "Outbox rows not yet published", m.outbox_pending.clone());
        r.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest unpublished outbox row (0 when empty)",
            Unit::Seconds,
            m.outbox_oldest_age.clone(),
        );
        r.register(
            "db_pool_connections",
            "Database connections of the pool, idle or in use",
            m.db_pool_connections.clone(),
        );
        r.register("db_pool_max_connections", "The pool's connection limit", m.db_pool_max.clone());
        r.register("expiration_timers_fired", "Reservation timers fired", m.timers_fired.clone());
        r.register("expiration_timers_due", "Timers due now and not fired yet", m.timers_due.clone());
        r.register_with_unit(
            "expiration_timer_lateness",
            "How late a timer fired after its due time",
            Unit::Seconds,
            m.timer_lateness.clone(),
        );
        r.register("payments_charges", "Charges asked of the gateway, by outcome", m.payments_charges.clone());
        r.register("payments_refunds", "Refunds the gateway made", m.payments_refunds.clone());
        r.register(
            "payments_refunds_owed",
            "Charges that must be refunded and are not yet",
            m.payments_refunds_owed.clone(),
        );
        r.register_with_unit(
            "payments_refund_owed_oldest_age",
            "How long the oldest owed refund has been owed (0 when none)",
            Unit::Seconds,
            m.payments_refund_owed_oldest_age.clone(),
        );
        r.register(
            "payments_charge_attempts_unsettled",
            "Charge attempts whose outcome is not recorded yet",
            m.payments_charge_attempts_unsettled.clone(),
        );
        r.register_collector(Box::new(ProcessCollector));
        Self { registry, ..m }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A query run at scrape time, until its service stops.
type Sampler = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

static SAMPLERS: LazyLock<Mutex<Vec<(CancellationToken, Sampler)>>> = LazyLock::new(Mutex::default);

/// Runs `sample` at every scrape until `until` is cancelled; it sets gauges from what it finds.
pub fn sample_with(until: CancellationToken, sample: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) {
    let mut samplers = SAMPLERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    samplers.retain(|(token, _)| !token.is_cancelled());
    samplers.push((until, Arc::new(sample)));
}

/// Runs the samplers (each at most 2 s) and renders every series in the text format.
pub async fn render() -> String {
    let samplers: Vec<Sampler> = {
        let mut samplers = SAMPLERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        samplers.retain(|(token, _)| !token.is_cancelled());
        samplers.iter().map(|(_, sampler)| sampler.clone()).collect()
    };
    futures::future::join_all(
        samplers.iter().map(|sample| async move { tokio::time::timeout(Duration::from_secs(2), sample()).await }),
    )
    .await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics().registry).expect("writing to a String cannot fail");
    text
}

/// The admin port's routes: `/metrics`.
pub fn admin_router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                render().await,
            )
        }),
    )
}

/// Process memory and CPU from `/proc/self`, read at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// Linux reports CPU time in clock ticks of `USER_HZ`, 100 on every architecture it runs on.
const USER_HZ: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(rss) = resident_bytes() {
            let gauge = ConstGauge::new(rss);
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(cpu) = cpu_seconds() {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the process",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_counters_histograms_and_process_series() {
        let m = metrics();
        m.events_parked.get_or_create(&EventLabels { group: "unit".into(), kind: "ticket:created".into() }).inc();
        m.event_lag.get_or_create(&GroupLabels { group: "unit".into() }).observe(0.2);
        let text = render().await;
        assert!(text.contains(r#"events_parked_total{group="unit",kind="ticket:created"} 1"#), "{text}");
        assert!(text.contains(r#"event_lag_seconds_bucket{le="0.25",group="unit"} 1"#), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

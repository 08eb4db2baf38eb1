//! `ticketing admin`: what an operator must look at or fix by hand, against either backend with
//! the same settings as `serve`.
//!
//! A parked event is replayed by applying it again through its service's own consumer, in this
//! process, rather than by publishing it again: both buses drop an event id they have seen
//! (the embedded one for good, JetStream within its duplicate window), and the other groups
//! have it already. The consumer records the event id with its effect, so a replay of an
//! event that was applied meanwhile changes nothing; events the handler writes go to the
//! service's outbox, which its running relay publishes. An event that fails again is parked
//! again, with the new reason.

use crate::ServiceName;
use anyhow::Context as _;
use httpkit::settings::Settings;
use platform::bus::{Delivery, Event, Handler, Outcome};
use platform::consumer::Consumer;
use platform::db::{Db, from_millis, now_millis};
use sqlx::Row;
use time::format_description::well_known::Rfc3339;

/// `ticketing admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// List parked events (of every consuming service, or of one) with why they were parked.
    Parked {
        #[arg(long, value_enum)]
        service: Option<ServiceName>,
    },
    /// Apply parked events of a service again, through its own handler.
    Replay(Selection),
    /// Forget parked events of a service for good (after fixing their effect by hand).
    Discard(Selection),
    /// Each service's outbox backlog: events not yet published, and the age of the oldest.
    Outbox,
    /// Refunds owed and charge attempts whose outcome is not recorded yet.
    Payments,
}

/// One parked event of a service, or all of them.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    #[arg(value_enum)]
    pub service: ServiceName,
    /// The event's id; or `--all`.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub event_id: Option<uuid::Uuid>,
    #[arg(long)]
    pub all: bool,
}

/// The services that consume events, and so may park them.
const CONSUMERS: &[ServiceName] =
    &[ServiceName::Tickets, ServiceName::Orders, ServiceName::Expiration, ServiceName::Payments];

/// The services with an outbox: the consumers, and auth (`session:revoked`).
const PUBLISHERS: &[ServiceName] =
    &[ServiceName::Auth, ServiceName::Tickets, ServiceName::Orders, ServiceName::Expiration, ServiceName::Payments];

/// Runs an admin command; returns what to print.
pub async fn run(args: &AdminArgs) -> anyhow::Result<String> {
    match &args.command {
        AdminCommand::Parked { service } => {
            let services = match service {
                Some(service) => vec![consuming(*service)?],
                None => CONSUMERS.to_vec(),
            };
            let mut out = String::from("SERVICE\tEVENT ID\tKIND\tPARKED AT\tREASON\n");
            for service in services {
                let db = open(&args.settings, service).await?;
                for row in parked(&db, service_name(service), None).await? {
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\n",
                        service_name(service),
                        row.event.id,
                        row.event.kind,
                        instant(row.parked_at),
                        row.reason
                    ));
                }
                db.pool.close().await;
            }
            Ok(out)
        }
        AdminCommand::Replay(selection) => replay(args, selection).await,
        AdminCommand::Discard(selection) => {
            let service = consuming(selection.service)?;
            let db = open(&args.settings, service).await?;
            let mut query = String::from("DELETE FROM parked_events WHERE consumer = $1");
            if selection.event_id.is_some() {
                query.push_str(" AND event_id = $2");
            }
            let mut statement = sqlx::query(&query).bind(service_name(service));
            if let Some(id) = selection.event_id {
                statement = statement.bind(id.to_string());
            }
            let discarded = statement.execute(&db.pool).await?.rows_affected();
            db.pool.close().await;
            tracing::info!(service = service_name(service), discarded, "parked events discarded");
            Ok(format!("discarded {discarded} parked event(s) of {}\n", service_name(service)))
        }
        AdminCommand::Outbox => {
            let mut out = String::from("SERVICE\tWAITING\tOLDEST AGE (s)\n");
            for service in PUBLISHERS {
                let db = open(&args.settings, *service).await?;
                let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox")
                    .fetch_one(&db.pool)
                    .await?;
                let waiting: i64 = row.try_get("n")?;
                let oldest: Option<i64> = row.try_get("oldest")?;
                let age = oldest.map_or(0.0, |at| (now_millis() - at).max(0) as f64 / 1000.0);
                out.push_str(&format!("{}\t{waiting}\t{age:.1}\n", service_name(*service)));
                db.pool.close().await;
            }
            Ok(out)
        }
        AdminCommand::Payments => payments_report(&args.settings).await,
    }
}

fn consuming(service: ServiceName) -> anyhow::Result<ServiceName> {
    anyhow::ensure!(CONSUMERS.contains(&service), "{service:?} consumes no events, so it parks none");
    Ok(service)
}

fn service_name(service: ServiceName) -> &'static str {
    match service {
        ServiceName::Auth => "auth",
        ServiceName::Tickets => tickets::NAME,
        ServiceName::Orders => orders::NAME,
        ServiceName::Expiration => expiration::NAME,
        ServiceName::Payments => payments::NAME,
        ServiceName::Web => "web",
    }
}

fn instant(millis: i64) -> String {
    from_millis(millis).format(&Rfc3339).unwrap_or_else(|_| millis.to_string())
}

/// The service's database, migrated (as `serve` would), with one connection.
async fn open(settings: &Settings, service: ServiceName) -> anyhow::Result<Db> {
    let migrator = match service {
        ServiceName::Auth => &auth::MIGRATOR,
        ServiceName::Tickets => &tickets::MIGRATOR,
        ServiceName::Orders => &orders::MIGRATOR,
        ServiceName::Expiration => &expiration::MIGRATOR,
        ServiceName::Payments => &payments::MIGRATOR,
        ServiceName::Web => anyhow::bail!("web keeps no database"),
    };
    let name = service_name(service);
    if settings.database_url.is_none() {
        httpkit::settings::create_private_dir(&settings.data_dir)?;
    }
    let url = platform::db::database_url(settings.database_url.as_deref(), &settings.data_dir, name);
    Db::connect_with(&url, name, migrator, 1).await
}

struct ParkedRow {
    event: Event,
    reason: String,
    parked_at: i64,
}

async fn parked(db: &Db, consumer: &str, event_id: Option<uuid::Uuid>) -> anyhow::Result<Vec<ParkedRow>> {
    let mut query = String::from("SELECT event_id, payload, reason, parked_at FROM parked_events WHERE consumer = $1");
    if event_id.is_some() {
        query.push_str(" AND event_id = $2");
    }
    query.push_str(" ORDER BY parked_at, event_id");
    let mut statement = sqlx::query(&query).bind(consumer);
    if let Some(id) = event_id {
        statement = statement.bind(id.to_string());
    }
    let rows = statement.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("event_id")?;
            let payload: String = row.try_get("payload")?;
            let event = Event::decode(payload.as_bytes())
                .with_context(|| format!("parked event {id} of {consumer} is not an event envelope"))?;
            Ok(ParkedRow { event, reason: row.try_get("reason")?, parked_at: row.try_get("parked_at")? })
        })
        .collect()
}

async fn replay(args: &AdminArgs, selection: &Selection) -> anyhow::Result<String> {
    let service = consuming(selection.service)?;
    let name = service_name(service);
    let db = open(&args.settings, service).await?;
    let rows = parked(&db, name, selection.event_id).await?;
    if let (Some(id), true) = (selection.event_id, rows.is_empty()) {
        anyhow::bail!("{name} has no parked event {id}");
    }
    let mut out = String::new();
    for row in rows {
        let event = row.event;
        // Forgotten first: if it fails again the consumer parks it anew, with the new reason.
        sqlx::query("DELETE FROM parked_events WHERE consumer = $1 AND event_id = $2")
            .bind(name)
            .bind(event.id.to_string())
            .execute(&db.pool)
            .await?;
        let delivery = Delivery { event: event.clone(), attempt: 1, is_last_attempt: true };
        let outcome = match service {
            ServiceName::Tickets => {
                Consumer::new(name, db.clone(), tickets::events::OrderEvents, None).handle(delivery).await
            }
            ServiceName::Orders => {
                Consumer::new(name, db.clone(), orders::events::TicketExpirationAndPaymentEvents, None)
                    .handle(delivery)
                    .await
            }
            ServiceName::Expiration => {
                Consumer::new(name, db.clone(), expiration::events::OrderEvents, None).handle(delivery).await
            }
            ServiceName::Payments => {
                Consumer::new(name, db.clone(), payments::events::OrderEvents, None).handle(delivery).await
            }
            ServiceName::Auth | ServiceName::Web => unreachable!("checked by consuming()"),
        };
        if let Outcome::Retry(err) = outcome {
            // Could not even park it again: put the original row back so nothing is lost.
            restore(&db, name, &event, &row.reason, row.parked_at).await?;
            return Err(err.context(format!("cannot replay event {}", event.id)));
        }
        match parked(&db, name, Some(event.id)).await?.pop() {
            Some(again) => out.push_str(&format!("{}\tparked again: {}\n", event.id, again.reason)),
            None => out.push_str(&format!("{}\treplayed\n", event.id)),
        }
    }
    db.pool.close().await;
    Ok(out)
}

async fn restore(db: &Db, consumer: &str, event: &Event, reason: &str, parked_at: i64) -> Result<(), sqlx::Error> {
    platform::consumer::park_at(db, consumer, event, reason, parked_at).await
}

async fn payments_report(settings: &Settings) -> anyhow::Result<String> {
    let db = open(settings, ServiceName::Payments).await?;
    let now = now_millis();
    let mut out = String::from("REFUNDS OWED\nORDER\tCHARGE\tAMOUNT\tCURRENCY\tCHARGED (s ago)\tTRIES\tLAST ERROR\n");
    let owed = sqlx::query(
        "SELECT order_id, charge_id, amount, currency, created_at, refund_tries, refund_error FROM payments \
         WHERE status = $1 ORDER BY created_at",
    )
    .bind(payments::domain::payment_status::REFUNDING)
    .fetch_all(&db.pool)
    .await?;
    for row in owed {
        let since: i64 = row.try_get("created_at")?;
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{:.0}\t{}\t{}\n",
            row.try_get::<String, _>("order_id")?,
            row.try_get::<String, _>("charge_id")?,
            row.try_get::<i64, _>("amount")?,
            row.try_get::<String, _>("currency")?,
            (now - since).max(0) as f64 / 1000.0,
            row.try_get::<i64, _>("refund_tries")?,
            row.try_get::<Option<String>, _>("refund_error")?.unwrap_or_default()
        ));
    }
    out.push_str("\nCHARGE ATTEMPTS NOT SETTLED\nORDER\tIDEMPOTENCY KEY\tAMOUNT\tTRIES\tSINCE\n");
    let attempts = sqlx::query(
        "SELECT order_id, idempotency_key, amount, tries, updated_at FROM charge_attempts WHERE status = $1 \
         ORDER BY updated_at",
    )
    .bind(payments::domain::attempt_status::CHARGING)
    .fetch_all(&db.pool)
    .await?;
    for row in attempts {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            row.try_get::<String, _>("order_id")?,
            row.try_get::<String, _>("idempotency_key")?,
            row.try_get::<i64, _>("amount")?,
            row.try_get::<i64, _>("tries")?,
            instant(row.try_get("updated_at")?)
        ));
    }
    db.pool.close().await;
    Ok(out)
}

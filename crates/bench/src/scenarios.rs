//! The scenarios of issue 5, driven over HTTP against a running marketplace.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use reqwest::{Method, StatusCode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::{Api, Session};
use crate::cpu::Cpu;
use crate::load::{Stats, Until, drive};
use crate::marketplace::Marketplace;

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub browse_tickets: u64,
    pub browse: Duration,
    pub browse_users: usize,
    pub reserve_orders: u64,
    pub flash_tickets: u64,
    pub flash_buyers: usize,
    pub purchases: u64,
    pub purchase_users: usize,
    pub propagation_samples: u64,
    pub expiring_orders: u64,
    pub expiration_seconds: u64,
    pub http: Duration,
    pub pgbench_per_client_total: u64,
    /// How many tickets are listed when the listing pages are measured, one size after another.
    pub listing_tickets: Vec<u64>,
    /// How long each listing page is measured at each size.
    pub listing: Duration,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            browse_tickets: 1000,
            browse: Duration::from_secs(8),
            browse_users: 32,
            reserve_orders: 2000,
            flash_tickets: 10,
            flash_buyers: 100,
            purchases: 200,
            purchase_users: 8,
            propagation_samples: 150,
            expiring_orders: 400,
            expiration_seconds: 5,
            http: Duration::from_secs(8),
            pgbench_per_client_total: 8000,
            listing_tickets: vec![1000, 10_000, 100_000],
            listing: Duration::from_secs(4),
        }
    }

    pub fn smoke() -> Self {
        Self {
            browse_tickets: 20,
            browse: Duration::from_millis(500),
            browse_users: 4,
            reserve_orders: 16,
            flash_tickets: 2,
            flash_buyers: 4,
            purchases: 4,
            purchase_users: 2,
            propagation_samples: 3,
            expiring_orders: 4,
            expiration_seconds: 1,
            http: Duration::from_millis(500),
            pgbench_per_client_total: 64,
            listing_tickets: vec![300],
            listing: Duration::from_millis(300),
        }
    }
}

/// One line of a report table.
#[derive(Debug, Clone)]
pub struct Row {
    pub mode: String,
    pub scenario: String,
    pub users: usize,
    /// The histogram shown; `None` for all operations.
    pub label: Option<&'static str>,
    pub stats: Stats,
    pub peak_mib: Vec<(String, f64)>,
    /// CPU per operation of the phase this row measured (shared by the rows of one phase: only
    /// the first carries it).
    pub cpu: Option<Cpu>,
    /// The ratio to this machine's limit measured in the same run, when there is one.
    pub vs: String,
    pub note: String,
}

impl Row {
    pub fn new(mode: &str, scenario: &str, users: usize, label: Option<&'static str>, stats: &Stats) -> Self {
        Self {
            mode: mode.to_owned(),
            scenario: scenario.to_owned(),
            users,
            label,
            stats: stats.clone(),
            peak_mib: Vec::new(),
            cpu: None,
            vs: String::new(),
            note: String::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// The CPU `cpu` of the phase, spread over its `ops` operations.
    pub fn cpu(mut self, cpu: Cpu, ops: u64) -> Self {
        self.cpu = Some(cpu.per(ops));
        self
    }

    pub fn peaks(mut self, peaks: &[(String, f64)]) -> Self {
        self.peak_mib = peaks.to_vec();
        self
    }

    pub fn label(&self) -> &str {
        self.label.unwrap_or("ok")
    }

    pub fn count(&self) -> u64 {
        match self.label {
            Some(label) => self.stats.count(label),
            None => self.stats.total_ok(),
        }
    }

    pub fn throughput(&self) -> f64 {
        self.stats.throughput(self.label)
    }

    pub fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        self.stats.quantile_ms(self.label(), quantile)
    }
}

fn status_error(result: Result<crate::api::Reply, String>, expected: StatusCode) -> Result<crate::api::Reply, String> {
    let reply = result?;
    if reply.status == expected { Ok(reply) } else { Err(reply.label()) }
}

/// Signs up `count` users, 8 at a time (each is one argon2 hash of 19 MiB on the server).
pub async fn sign_up_many(api: &Api, prefix: &str, count: usize) -> anyhow::Result<Vec<Session>> {
    let sessions = Arc::new(Mutex::new(vec![None; count]));
    let (api2, prefix2, sessions2) = (api.clone(), prefix.to_owned(), sessions.clone());
    let stats = drive(8, Until::Count(count as u64), move |_, index, _| {
        let (api, prefix, sessions) = (api2.clone(), prefix2.clone(), sessions2.clone());
        async move {
            let session = api.sign_up(&format!("{prefix}-{index}@bench.test")).await.map_err(|err| err.to_string())?;
            sessions.lock().expect("sessions lock")[index as usize] = Some(session);
            Ok("ok")
        }
    })
    .await;
    if stats.error_count() > 0 {
        bail!("sign-up failed: {}", stats.error_summary());
    }
    let sessions = std::mem::take(&mut *sessions.lock().expect("sessions lock"));
    Ok(sessions.into_iter().map(|session| session.expect("every sign-up succeeded")).collect())
}

/// Lists `count` tickets as `seller`, `users` at a time; returns the timings and their ids.
pub async fn create_tickets(api: &Api, seller: &Session, count: u64, users: usize) -> (Stats, Vec<String>) {
    let ids = Arc::new(Mutex::new(Vec::with_capacity(count as usize)));
    let (api2, seller2, ids2) = (api.clone(), seller.clone(), ids.clone());
    let stats = drive(users, Until::Count(count), move |_, index, _| {
        let (api, seller, ids) = (api2.clone(), seller2.clone(), ids2.clone());
        async move {
            let reply = status_error(
                api.create_ticket(&seller, &format!("Benchmark ticket {index}"), 12.5).await,
                StatusCode::CREATED,
            )?;
            ids.lock().expect("ids lock").push(reply.str("id").map_err(|err| err.to_string())?);
            Ok("ok")
        }
    })
    .await;
    let ids = std::mem::take(&mut *ids.lock().expect("ids lock"));
    (stats, ids)
}

/// Orders `ticket_id` as soon as the orders service knows it (404 until its replica has it).
/// Returns the order.
async fn order_when_known(api: &Api, buyer: &Session, ticket_id: &str) -> Result<crate::api::Reply, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = api.order(buyer, ticket_id).await?;
        match reply.status {
            StatusCode::CREATED => return Ok(reply),
            StatusCode::NOT_FOUND if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
            _ => return Err(reply.label()),
        }
    }
}

/// Pays for an order as soon as the payments service knows it (404 until its replica has
/// it: a buyer's client has to retry, so the wait is part of paying).
async fn pay_when_known(api: &Api, buyer: &Session, order_id: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = api.pay(buyer, order_id).await?;
        match reply.status {
            StatusCode::CREATED => return Ok(()),
            StatusCode::NOT_FOUND if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
            _ => return Err(format!("pay: {}", reply.label())),
        }
    }
}

/// Polls an order until it is `complete`.
async fn until_complete(api: &Api, buyer: &Session, order_id: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = status_error(api.show_order(buyer, order_id).await, StatusCode::OK)?;
        match reply.body["status"].as_str() {
            Some("complete") => return Ok(()),
            Some("created" | "awaiting:payment") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            other => return Err(format!("order ended {other:?}, not complete")),
        }
    }
}

/// Creates a last ticket and waits until it can be ordered: the tickets listed before it
/// have then (almost surely: events are relayed in order) reached the orders service.
async fn wait_for_replica(api: &Api, seller: &Session, buyer: &Session) -> anyhow::Result<()> {
    let reply = api.create_ticket(seller, "Sentinel", 1.0).await.map_err(anyhow::Error::msg)?;
    let id = reply.str("id")?;
    order_when_known(api, buyer, &id).await.map_err(anyhow::Error::msg)?;
    Ok(())
}

/// The purchase-flow scenarios, each row with the server's peak memory during it.
pub async fn run(market: &Marketplace, mode: &str, sizes: &Sizes, run_id: &str) -> anyhow::Result<Vec<Row>> {
    let api = Api::new(market.routes.clone())?;
    let mut rows = Vec::new();

    let started = Instant::now();
    let seller = api.sign_up(&format!("seller-{run_id}@bench.test")).await?;
    let buyer_count = sizes.flash_buyers.max(32).max(sizes.purchase_users);
    let buyers = sign_up_many(&api, &format!("buyer-{run_id}"), buyer_count).await?;
    eprintln!("bench: [{mode}] signed up {} users in {:.1?}", buyer_count + 1, started.elapsed());

    // Browse.
    let mark = market.begin();
    let (created, listed) = create_tickets(&api, &seller, sizes.browse_tickets, 8).await;
    let cpu = market.cpu_since(&mark).await;
    rows.push(
        Row::new(mode, "list a ticket (POST /api/tickets)", 8, None, &created)
            .peaks(&market.peaks_mib())
            .cpu(cpu, created.total_ok()),
    );
    let mark = market.begin();
    let api2 = api.clone();
    let list = drive(sizes.browse_users, Until::Elapsed(sizes.browse), move |_, _, _| {
        let api = api2.clone();
        async move {
            match api.raw(Method::GET, "/api/tickets").await? {
                (StatusCode::OK, _) => Ok("ok"),
                (status, _) => Err(status.to_string()),
            }
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    rows.push(
        Row::new(mode, "browse: GET /api/tickets", sizes.browse_users, None, &list)
            .peaks(&market.peaks_mib())
            .cpu(cpu, list.total_ok())
            .note(format!("{} tickets listed", listed.len())),
    );
    let mark = market.begin();
    let (api2, listed2) = (api.clone(), Arc::new(listed));
    let show = drive(sizes.browse_users, Until::Elapsed(sizes.browse), move |_, index, _| {
        let (api, listed) = (api2.clone(), listed2.clone());
        async move {
            let id = &listed[(index as usize).wrapping_mul(7919) % listed.len()];
            match api.raw(Method::GET, &format!("/api/tickets/{id}")).await? {
                (StatusCode::OK, _) => Ok("ok"),
                (status, _) => Err(status.to_string()),
            }
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    rows.push(
        Row::new(mode, "browse: GET /api/tickets/:id", sizes.browse_users, None, &show)
            .peaks(&market.peaks_mib())
            .cpu(cpu, show.total_ok()),
    );

    // Tickets for the rest, then wait until the orders service has them all.
    let needed = 2 * sizes.reserve_orders + sizes.flash_tickets + sizes.purchases;
    let (_, tickets) = create_tickets(&api, &seller, needed, 8).await;
    wait_for_replica(&api, &seller, &buyers[0]).await?;
    market.meter.settle(Duration::from_secs(15)).await;
    let mut tickets = tickets.into_iter();
    let mut take = |count: u64| Arc::new(tickets.by_ref().take(count as usize).collect::<Vec<_>>());

    // Reserve at 8 and 32 concurrent buyers, each order on a distinct ticket. The orders
    // placed at 8 are paid below.
    let reserved = Arc::new(Mutex::new(Vec::new()));
    for users in [8, 32] {
        let slice = take(sizes.reserve_orders);
        let (api2, buyers2, reserved2) = (api.clone(), Arc::new(buyers.clone()), reserved.clone());
        let mark = market.begin();
        let stats = drive(users, Until::Count(slice.len() as u64), move |user, index, _| {
            let (api, buyers, slice, reserved) = (api2.clone(), buyers2.clone(), slice.clone(), reserved2.clone());
            async move {
                let buyer = user % buyers.len();
                let order = status_error(api.order(&buyers[buyer], &slice[index as usize]).await, StatusCode::CREATED)?;
                if users == 8 {
                    let id = order.str("id").map_err(|err| err.to_string())?;
                    reserved.lock().expect("reserved lock").push((buyer, id));
                }
                Ok("ok")
            }
        })
        .await;
        let cpu = market.cpu_since(&mark).await;
        rows.push(
            Row::new(mode, "reserve: POST /api/orders", users, None, &stats)
                .peaks(&market.peaks_mib())
                .cpu(cpu, stats.total_ok())
                .note("CPU: the request and its cascade (tickets, expiration, payments, orders' replica)"),
        );
    }

    // Pay for the orders reserved at 8 buyers: the payment and its cascade (order complete,
    // ticket sold, timer dropped). With the reservation above, a full purchase.
    let reserved = Arc::new(std::mem::take(&mut *reserved.lock().expect("reserved lock")));
    let mark = market.begin();
    let mut paid = pay_reserved(&api, &buyers, &reserved).await;
    let cpu = market.cpu_since(&mark).await;
    let peaks = market.peaks_mib();
    // Then (not measured) check every paid order completed.
    let (api2, buyers2, reserved2) = (api.clone(), Arc::new(buyers.clone()), reserved.clone());
    let completed = drive(8, Until::Count(reserved.len() as u64), move |_, index, _| {
        let (api, buyers, reserved) = (api2.clone(), buyers2.clone(), reserved2.clone());
        async move {
            let (buyer, order_id) = &reserved[index as usize];
            until_complete(&api, &buyers[*buyer], order_id).await?;
            Ok("ok")
        }
    })
    .await;
    for (error, count) in completed.errors {
        *paid.errors.entry(format!("not complete: {error}")).or_default() += count;
    }
    rows.push(Row::new(mode, "pay: POST /api/payments", 8, None, &paid).peaks(&peaks).cpu(cpu, paid.total_ok()).note(
        format!(
            "the orders reserved at 8 buyers; CPU: the payment and its cascade (order complete, ticket sold, \
                 timer dropped); {} of {} orders then seen complete",
            completed.histograms.values().map(|histogram| histogram.len()).sum::<u64>(),
            reserved.len()
        ),
    ));

    // Flash sale: every buyer tries every one of a few tickets, all at once.
    let flash = take(sizes.flash_tickets);
    let winners = Arc::new(Mutex::new(Vec::new()));
    let (api2, buyers2, flash2, winners2) = (api.clone(), Arc::new(buyers.clone()), flash.clone(), winners.clone());
    let buyers_n = sizes.flash_buyers;
    let mark = market.begin();
    let stats = drive(buyers_n, Until::Count(buyers_n as u64 * flash.len() as u64), move |user, index, _| {
        let (api, buyers, flash, winners) = (api2.clone(), buyers2.clone(), flash2.clone(), winners2.clone());
        async move {
            // Buyer `user` goes through the tickets starting at its own offset.
            let ticket = &flash[(index as usize / buyers.len().max(1) + user) % flash.len()];
            let reply = api.order(&buyers[user], ticket).await?;
            match reply.status {
                StatusCode::CREATED => {
                    winners.lock().expect("winners lock").push(ticket.clone());
                    Ok("won")
                }
                StatusCode::BAD_REQUEST if reply.label().contains("already reserved") => Ok("lost"),
                _ => Err(reply.label()),
            }
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    let winners = winners.lock().expect("winners lock").clone();
    let distinct: HashSet<&String> = winners.iter().collect();
    let verdict = if winners.len() as u64 == sizes.flash_tickets && distinct.len() == winners.len() {
        format!("{} winners for {} tickets: exact", winners.len(), sizes.flash_tickets)
    } else {
        format!(
            "WRONG: {} winners ({} distinct tickets) for {} tickets",
            winners.len(),
            distinct.len(),
            sizes.flash_tickets
        )
    };
    let peaks = market.peaks_mib();
    rows.push(
        Row::new(mode, "flash sale: winners", buyers_n, Some("won"), &stats)
            .peaks(&peaks)
            .cpu(cpu, stats.total_ok() + stats.error_count())
            .note(format!("{verdict}; CPU per attempt, winners and losers together")),
    );
    rows.push(
        Row::new(mode, "flash sale: losers", buyers_n, Some("lost"), &stats)
            .peaks(&peaks)
            .note(format!("{} losers answered", stats.count("lost"))),
    );

    // Full purchase: sign in, order, pay, poll until complete.
    let purchase = take(sizes.purchases);
    let (api2, buyers2) = (api.clone(), Arc::new(buyers.clone()));
    let mark = market.begin();
    let stats = drive(sizes.purchase_users, Until::Count(purchase.len() as u64), move |user, index, recorder| {
        let (api, buyers, purchase) = (api2.clone(), buyers2.clone(), purchase.clone());
        async move {
            let step = Instant::now();
            let buyer = api.sign_in(&buyers[user].email).await.map_err(|err| err.to_string())?;
            recorder.record("sign in", step.elapsed());
            let step = Instant::now();
            let order = status_error(api.order(&buyer, &purchase[index as usize]).await, StatusCode::CREATED)?;
            recorder.record("order", step.elapsed());
            let order_id = order.str("id").map_err(|err| err.to_string())?;
            let step = Instant::now();
            pay_when_known(&api, &buyer, &order_id).await?;
            recorder.record("pay", step.elapsed());
            let step = Instant::now();
            until_complete(&api, &buyer, &order_id).await?;
            recorder.record("until complete", step.elapsed());
            Ok("flow")
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    let peaks = market.peaks_mib();
    rows.push(
        Row::new(mode, "full purchase: whole flow", sizes.purchase_users, Some("flow"), &stats)
            .peaks(&peaks)
            .cpu(cpu, stats.count("flow"))
            .note("sign in → order → pay (tok_visa) → poll until complete; CPU includes the sign-in's argon2 and the 2 ms polling"),
    );
    // The steps of the flows above; their errors are counted once, in the whole-flow row.
    let mut steps = stats.clone();
    steps.errors.clear();
    for step in ["sign in", "order", "pay", "until complete"] {
        rows.push(Row::new(mode, &format!("full purchase: {step}"), sizes.purchase_users, Some(step), &steps));
    }

    // Propagation: ticket 201 → orderable; payment 201 → order complete.
    let (api2, buyers2, seller2) = (api.clone(), Arc::new(buyers.clone()), seller.clone());
    let mark = market.begin();
    let users = 4usize.min(sizes.propagation_samples as usize).max(1);
    let stats = drive(users, Until::Count(sizes.propagation_samples), move |user, index, recorder| {
        let (api, buyers, seller) = (api2.clone(), buyers2.clone(), seller2.clone());
        async move {
            let buyer = &buyers[user];
            let ticket = status_error(
                api.create_ticket(&seller, &format!("Propagation {index}"), 20.0).await,
                StatusCode::CREATED,
            )?;
            let listed_at = Instant::now();
            let ticket_id = ticket.str("id").map_err(|err| err.to_string())?;
            let order = order_when_known(&api, buyer, &ticket_id).await?;
            recorder.record("ticket → orderable", listed_at.elapsed());
            let order_id = order.str("id").map_err(|err| err.to_string())?;
            pay_when_known(&api, buyer, &order_id).await?;
            let paid_at = Instant::now();
            until_complete(&api, buyer, &order_id).await?;
            recorder.record("payment → complete", paid_at.elapsed());
            Ok("sample")
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    let peaks = market.peaks_mib();
    for step in ["ticket → orderable", "payment → complete"] {
        let row = Row::new(mode, &format!("propagation: {step}"), users, Some(step), &stats)
            .peaks(&peaks)
            .note("polled every 2 ms; includes one request round trip");
        rows.push(if step.starts_with("ticket") { row.cpu(cpu, stats.count("sample")) } else { row });
    }
    Ok(rows)
}

/// Expiration accuracy on a marketplace started with a short `ORDER_EXPIRATION_SECONDS`:
/// many orders placed in a burst, so their timers fall due together; the buyers' order lists
/// are polled to see when each was cancelled.
pub async fn expiration(market: &Marketplace, mode: &str, sizes: &Sizes, run_id: &str) -> anyhow::Result<Row> {
    let api = Api::new(market.routes.clone())?;
    let seller = api.sign_up(&format!("exp-seller-{run_id}@bench.test")).await?;
    let buyers = sign_up_many(&api, &format!("exp-buyer-{run_id}"), 8).await?;
    let (_, tickets) = create_tickets(&api, &seller, sizes.expiring_orders, 8).await;
    wait_for_replica(&api, &seller, &buyers[0]).await?;
    market.meter.settle(Duration::from_secs(15)).await;

    let mark = market.begin();
    let placed = Arc::new(Mutex::new(Vec::new()));
    let (api2, buyers2, tickets2, placed2) = (api.clone(), Arc::new(buyers.clone()), Arc::new(tickets), placed.clone());
    let ordering = drive(8, Until::Count(sizes.expiring_orders), move |user, index, _| {
        let (api, buyers, tickets, placed) = (api2.clone(), buyers2.clone(), tickets2.clone(), placed2.clone());
        async move {
            let reply = status_error(api.order(&buyers[user], &tickets[index as usize]).await, StatusCode::CREATED)?;
            let expires_at =
                reply.body["expiresAt"].as_str().and_then(|text| OffsetDateTime::parse(text, &Rfc3339).ok());
            let (Ok(id), Some(expires_at)) = (reply.str("id"), expires_at) else {
                return Err("order without id or expiresAt".to_owned());
            };
            placed.lock().expect("placed lock").push((user, id, expires_at));
            Ok("ok")
        }
    })
    .await;
    let placed = std::mem::take(&mut *placed.lock().expect("placed lock"));
    if placed.is_empty() {
        bail!("no order was placed: {}", ordering.error_summary());
    }
    let mut pending: HashMap<String, OffsetDateTime> =
        placed.iter().map(|(_, id, expires_at)| (id.clone(), *expires_at)).collect();
    let last_due = placed.iter().map(|(_, _, expires_at)| *expires_at).max().expect("non-empty");
    let first_due = placed.iter().map(|(_, _, expires_at)| *expires_at).min().expect("non-empty");
    let with_orders: HashSet<usize> = placed.iter().map(|(user, _, _)| *user).collect();

    let mut stats = Stats::default();
    let mut early = 0;
    let poll = Duration::from_millis(50);
    while !pending.is_empty() && OffsetDateTime::now_utc() < last_due + Duration::from_secs(30) {
        for &user in &with_orders {
            let Ok(reply) = api.list_orders(&buyers[user]).await else { continue };
            let seen = OffsetDateTime::now_utc();
            for order in reply.body.as_array().into_iter().flatten() {
                let (Some(id), Some(status)) = (order["id"].as_str(), order["status"].as_str()) else { continue };
                if status != "cancelled" {
                    continue;
                }
                if let Some(expires_at) = pending.remove(id) {
                    let lateness = seen - expires_at;
                    if lateness.is_negative() {
                        early += 1;
                    } else {
                        stats.record("late", lateness.unsigned_abs());
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    let cpu = market.cpu_since(&mark).await;
    // Not a throughput scenario: the report shows no rate for it.
    stats.elapsed = Duration::ZERO;
    if early > 0 {
        stats.error(format!("cancelled before expiresAt (early): {early}"));
    }
    if !pending.is_empty() {
        stats.error(format!("never cancelled within 30 s: {}", pending.len()));
    }
    let expired = stats.count("late") + early;
    Ok(Row::new(mode, "expiration: lateness after expiresAt", 8, Some("late"), &stats)
        .peaks(&market.peaks_mib())
        .cpu(cpu, expired)
        .note(format!(
            "{} orders due within {:.2} s (ORDER_EXPIRATION_SECONDS={}); order lists polled every {} ms, so lateness is an upper bound; \
             CPU per order: placing it, its expiry and cascade, and the polling",
            placed.len(),
            (last_due - first_due).as_seconds_f64(),
            sizes.expiration_seconds,
            poll.as_millis()
        )))
}

/// Reserve at 8 buyers, then pay for those orders, on a marketplace with two instances of
/// tickets and orders (the production topology's scale-out, one machine): throughput, and CPU
/// per operation for every process, so the cost of a second instance shows.
pub async fn scale_out(market: &Marketplace, mode: &str, sizes: &Sizes, run_id: &str) -> anyhow::Result<Vec<Row>> {
    let api = Api::new(market.routes.clone())?;
    let seller = api.sign_up(&format!("seller-scale-{run_id}@bench.test")).await?;
    let buyers = sign_up_many(&api, &format!("buyer-scale-{run_id}"), 8).await?;
    let (_, tickets) = create_tickets(&api, &seller, sizes.reserve_orders, 8).await;
    wait_for_replica(&api, &seller, &buyers[0]).await?;
    market.meter.settle(Duration::from_secs(15)).await;
    let tickets = Arc::new(tickets);
    let name = "scale-out, 2 instances of tickets and of orders";

    let reserved = Arc::new(Mutex::new(Vec::new()));
    let (api2, buyers2, tickets2, reserved2) =
        (api.clone(), Arc::new(buyers.clone()), tickets.clone(), reserved.clone());
    let (mark, before) = (market.begin(), market.cpu_ms_by_process());
    let stats = drive(8, Until::Count(tickets.len() as u64), move |user, index, _| {
        let (api, buyers, tickets, reserved) = (api2.clone(), buyers2.clone(), tickets2.clone(), reserved2.clone());
        async move {
            let buyer = user % buyers.len();
            let order = status_error(api.order(&buyers[buyer], &tickets[index as usize]).await, StatusCode::CREATED)?;
            let id = order.str("id").map_err(|err| err.to_string())?;
            reserved.lock().expect("reserved lock").push((buyer, id));
            Ok("ok")
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    let mut rows = vec![
        Row::new(mode, &format!("{name}: reserve"), 8, None, &stats)
            .peaks(&market.peaks_mib())
            .cpu(cpu, stats.total_ok())
            .note(by_process(market, &before, stats.total_ok())),
    ];

    let reserved = Arc::new(std::mem::take(&mut *reserved.lock().expect("reserved lock")));
    let (mark, before) = (market.begin(), market.cpu_ms_by_process());
    let paid = pay_reserved(&api, &buyers, &reserved).await;
    let cpu = market.cpu_since(&mark).await;
    rows.push(
        Row::new(mode, &format!("{name}: pay"), 8, None, &paid)
            .peaks(&market.peaks_mib())
            .cpu(cpu, paid.total_ok())
            .note(by_process(market, &before, paid.total_ok())),
    );
    Ok(rows)
}

/// Pays every order of `reserved` (buyer index, order id) with 8 buyers at once.
async fn pay_reserved(api: &Api, buyers: &[Session], reserved: &Arc<Vec<(usize, String)>>) -> Stats {
    let (api, buyers, reserved) = (api.clone(), Arc::new(buyers.to_vec()), reserved.clone());
    drive(8, Until::Count(reserved.len() as u64), move |_, index, _| {
        let (api, buyers, reserved) = (api.clone(), buyers.clone(), reserved.clone());
        async move {
            let (buyer, order_id) = &reserved[index as usize];
            pay_when_known(&api, &buyers[*buyer], order_id).await?;
            Ok("ok")
        }
    })
    .await
}

/// "CPU ms per operation by process: orders 0.61, orders-2 0.58, ..." since `before`.
fn by_process(market: &Marketplace, before: &[(String, f64)], ops: u64) -> String {
    let ops = ops.max(1) as f64;
    let each: Vec<String> = market
        .cpu_ms_by_process()
        .iter()
        .zip(before)
        .map(|((name, after), (_, before))| format!("{name} {:.2}", (after - before) / ops))
        .collect();
    format!("CPU ms per operation by process: {}", each.join(", "))
}

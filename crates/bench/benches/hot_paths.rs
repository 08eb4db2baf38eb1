//! Criterion benchmarks of the pure functions on every request's path: session token
//! verification (every signed-in request), price parsing and formatting (every ticket
//! written or shown), event encoding and decoding (every event published and consumed).

use std::hint::black_box;

use contract::events::{OrderCreated, OrderStatus, PricedTicketRef};
use contract::money::Currency;
use criterion::{Criterion, criterion_group, criterion_main};
use httpkit::session::SessionKeys;
use platform::bus::Event;
use platform::envelope::ToEvent;
use serde_json::json;
use uuid::Uuid;

fn sessions(c: &mut Criterion) {
    let keys = SessionKeys::new(b"a benchmark secret of at least 32 bytes!", time::Duration::days(7));
    let token = keys.issue(Uuid::new_v4(), "buyer@example.com").expect("token issued");
    c.bench_function("SessionKeys::verify (valid token)", |b| b.iter(|| keys.verify(black_box(&token))));
    let forged = format!("{}x", &token[..token.len() - 1]);
    c.bench_function("SessionKeys::verify (bad signature)", |b| b.iter(|| keys.verify(black_box(&forged))));
}

fn money(c: &mut Criterion) {
    let usd = Currency::new("usd");
    let price = json!(1234.56);
    c.bench_function("Currency::parse_price (usd 1234.56)", |b| b.iter(|| usd.parse_price(black_box(&price))));
    c.bench_function("Currency::format (usd 123456789)", |b| b.iter(|| usd.format(black_box(123_456_789))));
}

fn events(c: &mut Criterion) {
    let event = OrderCreated {
        id: Uuid::now_v7(),
        version: 0,
        status: OrderStatus::Created,
        user_id: Uuid::now_v7(),
        expires_at: time::OffsetDateTime::now_utc(),
        ticket: PricedTicketRef { id: Uuid::now_v7(), price: 1250 },
    }
    .to_event();
    let bytes = event.encode();
    c.bench_function("Event::encode (order:created)", |b| b.iter(|| black_box(&event).encode()));
    c.bench_function("Event::decode (order:created)", |b| b.iter(|| Event::decode(black_box(&bytes))));
}

criterion_group!(benches, sessions, money, events);
criterion_main!(benches);

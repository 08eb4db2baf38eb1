//! Both gateways on their own: the Stripe client against a stand-in that answers as Stripe
//! documents, and the sandbox with Stripe's test tokens.

mod common;

use common::stripe_standin::{KEY, StripeStandIn};
use contract::money::Currency;
use payments::gateway::{
    ChargeRequest, Gateway, GatewayError, RefundRequest, SandboxGateway, StripeGateway, charge_idempotency_key,
    refund_idempotency_key,
};
use uuid::Uuid;

fn charge_request(token: &str, amount: i64) -> ChargeRequest {
    let order_id = Uuid::new_v4();
    ChargeRequest {
        amount,
        currency: Currency::new("usd"),
        token: token.to_owned(),
        order_id,
        idempotency_key: charge_idempotency_key(order_id, token),
    }
}

fn refund_request(charge_id: &str) -> RefundRequest {
    RefundRequest { charge_id: charge_id.to_owned(), idempotency_key: refund_idempotency_key(charge_id) }
}

#[tokio::test]
async fn stripe_charges_with_the_documented_request() {
    let stripe = StripeStandIn::start().await;
    let gateway = StripeGateway::new(&stripe.base, KEY).unwrap();
    let request = charge_request("tok_visa", 1999);
    let charge = gateway.charge(&request).await.unwrap();
    assert!(charge.id.starts_with("ch_"), "{charge:?}");

    let seen = stripe.seen_at("/v1/charges");
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk_test_standin"));
    assert_eq!(seen.idempotency_key.as_deref(), Some(request.idempotency_key.as_str()));
    assert_eq!(seen.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(seen.form["amount"], "1999");
    assert_eq!(seen.form["currency"], "usd");
    assert_eq!(seen.form["source"], "tok_visa");
    assert_eq!(seen.form["metadata[order_id]"], request.order_id.to_string());

    // The same request again (a retry) returns the same charge.
    assert_eq!(gateway.charge(&request).await.unwrap(), charge);
    let keys: Vec<_> = stripe.seen_at("/v1/charges").into_iter().map(|seen| seen.idempotency_key).collect();
    assert_eq!(keys, vec![Some(request.idempotency_key.clone()); 2]);
}

#[tokio::test]
async fn stripe_errors_map_to_what_they_mean() {
    let stripe = StripeStandIn::start().await;
    let gateway = StripeGateway::new(&stripe.base, KEY).unwrap();

    let declined = gateway.charge(&charge_request("tok_chargeDeclinedInsufficientFunds", 1999)).await;
    assert!(
        matches!(&declined, Err(GatewayError::Declined(m)) if m == "Your card has insufficient funds."),
        "{declined:?}"
    );

    let unknown = gateway.charge(&charge_request("tok_nonsense", 1999)).await;
    assert!(
        matches!(&unknown, Err(GatewayError::InvalidToken(m)) if m == "No such token: 'tok_nonsense'"),
        "{unknown:?}"
    );

    let outage = gateway.charge(&charge_request("tok_outage", 1999)).await;
    assert!(matches!(outage, Err(GatewayError::Unavailable(_))), "{outage:?}");

    let wrong_key = StripeGateway::new(&stripe.base, "sk_test_wrong").unwrap();
    let refused = wrong_key.charge(&charge_request("tok_visa", 1999)).await;
    assert!(matches!(refused, Err(GatewayError::Rejected(_))), "{refused:?}");
    assert_eq!(stripe.seen_at("/v1/charges")[3].authorization.as_deref(), Some("Bearer sk_test_wrong"));

    // Nobody listening: unavailable, not a crash.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let nowhere = StripeGateway::new(&unreachable, KEY).unwrap();
    let down = nowhere.charge(&charge_request("tok_visa", 1999)).await;
    assert!(matches!(down, Err(GatewayError::Unavailable(_))), "{down:?}");
}

#[tokio::test]
async fn stripe_minimum_amount_is_enforced_before_calling() {
    let stripe = StripeStandIn::start().await;
    let gateway = StripeGateway::new(&stripe.base, KEY).unwrap();
    let too_small = gateway.charge(&charge_request("tok_visa", 49)).await;
    assert!(
        matches!(&too_small, Err(GatewayError::AmountTooSmall(m)) if m == "Amount must be at least $0.50"),
        "{too_small:?}"
    );
    let mut gbp = charge_request("tok_visa", 29);
    gbp.currency = Currency::new("gbp");
    let too_small = gateway.charge(&gbp).await;
    assert!(
        matches!(&too_small, Err(GatewayError::AmountTooSmall(m)) if m == "Amount must be at least £0.30"),
        "{too_small:?}"
    );
    assert!(stripe.seen().is_empty(), "nothing may reach Stripe for an amount it refuses");
    gbp.amount = 30;
    assert!(gateway.charge(&gbp).await.is_ok());
}

#[tokio::test]
async fn stripe_refunds_once() {
    let stripe = StripeStandIn::start().await;
    let gateway = StripeGateway::new(&stripe.base, KEY).unwrap();
    let charge = gateway.charge(&charge_request("tok_visa", 1999)).await.unwrap();

    stripe.fail_next_refunds(1);
    let failed = gateway.refund(&refund_request(&charge.id)).await;
    assert!(matches!(failed, Err(GatewayError::Unavailable(_))), "{failed:?}");
    assert!(!stripe.is_refunded(&charge.id));

    let refund = gateway.refund(&refund_request(&charge.id)).await.unwrap();
    assert!(refund.id.as_deref().is_some_and(|id| id.starts_with("re_")), "{refund:?}");
    assert!(stripe.is_refunded(&charge.id));
    let seen = stripe.seen_at("/v1/refunds");
    assert_eq!(seen.last().unwrap().form["charge"], charge.id);
    assert_eq!(seen.last().unwrap().idempotency_key.as_deref(), Some(refund_idempotency_key(&charge.id).as_str()));
    assert_eq!(seen.last().unwrap().authorization.as_deref(), Some("Bearer sk_test_standin"));

    // Same key: Stripe's idempotent answer. Another key: "already refunded", which is done.
    assert_eq!(gateway.refund(&refund_request(&charge.id)).await.unwrap(), refund);
    let other_key = RefundRequest { charge_id: charge.id.clone(), idempotency_key: "another".into() };
    assert_eq!(gateway.refund(&other_key).await.unwrap().id, None);

    let unknown = gateway.refund(&refund_request("ch_unknown")).await;
    assert!(matches!(unknown, Err(GatewayError::Rejected(_))), "{unknown:?}");
}

#[tokio::test]
async fn sandbox_knows_stripes_test_tokens() {
    let sandbox = SandboxGateway::in_memory().await.unwrap();
    for token in ["tok_visa", "tok_visa_debit", "tok_mastercard", "tok_amex", "tok_discover", "tok_jcb", "tok_unionpay"]
    {
        let charge = sandbox.charge(&charge_request(token, 1999)).await.unwrap();
        assert!(charge.id.starts_with("ch_sandbox_"), "{token}: {charge:?}");
    }
    let declines = [
        ("tok_chargeDeclined", "Your card was declined."),
        ("tok_chargeDeclinedInsufficientFunds", "Your card has insufficient funds."),
        ("tok_chargeDeclinedFraudulent", "Your card was declined."),
        ("tok_chargeDeclinedIncorrectCvc", "Your card's security code is incorrect."),
        ("tok_chargeDeclinedExpiredCard", "Your card has expired."),
        (
            "tok_chargeDeclinedProcessingError",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        ("tok_chargeDeclinedLostCard", "Your card was declined."),
        ("tok_chargeDeclinedStolenCard", "Your card was declined."),
    ];
    for (token, message) in declines {
        let declined = sandbox.charge(&charge_request(token, 1999)).await;
        assert!(matches!(&declined, Err(GatewayError::Declined(m)) if m == message), "{token}: {declined:?}");
    }
    for token in ["tok_nonsense", "4242424242424242", ""] {
        let unknown = sandbox.charge(&charge_request(token, 1999)).await;
        assert!(matches!(unknown, Err(GatewayError::InvalidToken(_))), "{token}: {unknown:?}");
    }
    assert_eq!(sandbox.charges().await.len(), 7, "only the card tokens charged");

    let too_small = sandbox.charge(&charge_request("tok_visa", 49)).await;
    assert!(
        matches!(&too_small, Err(GatewayError::AmountTooSmall(m)) if m == "Amount must be at least $0.50"),
        "{too_small:?}"
    );
    let mut yen = charge_request("tok_visa", 49);
    yen.currency = Currency::new("jpy");
    assert!(
        matches!(sandbox.charge(&yen).await, Err(GatewayError::AmountTooSmall(m)) if m == "Amount must be at least ¥50")
    );
    assert_eq!(sandbox.charges().await.len(), 7);
}

#[tokio::test]
async fn sandbox_honours_idempotency_keys_and_refunds_once() {
    let sandbox = SandboxGateway::in_memory().await.unwrap();
    let request = charge_request("tok_visa", 1999);
    let first = sandbox.charge(&request).await.unwrap();
    assert_eq!(sandbox.charge(&request).await.unwrap(), first, "same key, same charge");
    assert_eq!(sandbox.charges().await.len(), 1, "and no second charge");
    let charge = &sandbox.charges().await[0];
    assert_eq!((charge.amount, charge.currency.as_str(), charge.order_id), (1999, "usd", request.order_id));

    let mut reused = request.clone();
    reused.amount = 2500;
    assert!(matches!(sandbox.charge(&reused).await, Err(GatewayError::Rejected(_))), "a key is bound to its request");

    let declined = charge_request("tok_chargeDeclined", 1999);
    assert!(matches!(sandbox.charge(&declined).await, Err(GatewayError::Declined(_))));
    assert!(matches!(sandbox.charge(&declined).await, Err(GatewayError::Declined(_))), "a decline is remembered too");

    let refund = sandbox.refund(&refund_request(&first.id)).await.unwrap();
    assert!(refund.id.as_deref().is_some_and(|id| id.starts_with("re_sandbox_")));
    assert_eq!(sandbox.refund(&refund_request(&first.id)).await.unwrap(), refund);
    let other_key = RefundRequest { charge_id: first.id.clone(), idempotency_key: "another".into() };
    assert_eq!(sandbox.refund(&other_key).await.unwrap().id, None, "refunded once only");
    assert_eq!(sandbox.charges().await[0].refund_id, refund.id);
    assert!(sandbox.kept_charges_for(request.order_id).await.is_empty());
    assert!(matches!(sandbox.refund(&refund_request("ch_unknown")).await, Err(GatewayError::Rejected(_))));
}

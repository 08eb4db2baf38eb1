//! Stripe's HTTP API: `POST /v1/charges` with a card token, `POST /v1/refunds`.
//!
//! Requests are form-encoded, authenticated with the secret key as a bearer token, and carry
//! an `Idempotency-Key`, so a request retried after a timeout or a 5xx returns the first
//! answer instead of charging again. Stripe's errors map onto [`GatewayError`]: `402` with a
//! `card_error` is a decline; an `invalid_request_error` about the token is an invalid token;
//! `409`, `429`, `5xx` and network failures are "unavailable, try again"; anything else
//! (a bad key, a request Stripe does not understand) is our fault and is logged as such.

use std::time::Duration;

use anyhow::anyhow;
use reqwest::StatusCode;
use serde::Deserialize;

use super::{Charge, ChargeRequest, Gateway, GatewayError, Refund, RefundRequest, check_minimum};

/// Stripe recommends generous timeouts: a charge can take seconds at the card network.
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StripeGateway {
    client: reqwest::Client,
    api_base: String,
    secret_key: String,
}

impl std::fmt::Debug for StripeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeGateway").field("api_base", &self.api_base).finish_non_exhaustive()
    }
}

/// Stripe's error body: `{"error": {"type", "code", "decline_code", "param", "message"}}`.
#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct ChargeBody {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    failure_message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundBody {
    id: String,
}

impl StripeGateway {
    /// A client for the API at `api_base` (`https://api.stripe.com`, or a stand-in in tests).
    pub fn new(api_base: &str, secret_key: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ticketing-payments/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, api_base: api_base.trim_end_matches('/').to_owned(), secret_key: secret_key.to_owned() })
    }

    /// Posts a form; the JSON body on success, Stripe's error (or why there was no answer)
    /// otherwise.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, &str)],
    ) -> Result<T, Failure> {
        let response = self
            .client
            .post(format!("{}{path}", self.api_base))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(|err| unavailable(anyhow!(err).context(format!("POST {path} failed"))))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| unavailable(anyhow!(err).context(format!("reading the answer to POST {path}"))))?;
        if status.is_success() {
            // A success we cannot read may still have charged: retrying with the same key
            // returns it, so it is "try again", not "failed".
            return serde_json::from_slice(&bytes)
                .map_err(|err| unavailable(anyhow!(err).context(format!("unreadable answer to POST {path}"))));
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes).map(|body| body.error).unwrap_or_default();
        Err(Failure::Api { path: path.to_owned(), status, error })
    }
}

/// Why a request to Stripe did not succeed.
#[derive(Debug)]
enum Failure {
    /// No usable answer: the network, a timeout, an unreadable body.
    NoAnswer(GatewayError),
    /// Stripe answered with an error.
    Api { path: String, status: StatusCode, error: StripeError },
}

fn unavailable(err: anyhow::Error) -> Failure {
    Failure::NoAnswer(GatewayError::Unavailable(err))
}

impl From<Failure> for GatewayError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NoAnswer(err) => err,
            Failure::Api { path, status, error } => map_error(&path, status, error),
        }
    }
}

fn map_error(path: &str, status: StatusCode, error: StripeError) -> GatewayError {
    let message = error.message.clone().unwrap_or_default();
    let detail = || {
        anyhow!(
            "Stripe answered {status} to POST {path}: type={} code={} decline_code={} param={} message={message:?}",
            error.kind,
            error.code.as_deref().unwrap_or("-"),
            error.decline_code.as_deref().unwrap_or("-"),
            error.param.as_deref().unwrap_or("-"),
        )
    };
    let code = error.code.as_deref().unwrap_or("");
    match status {
        StatusCode::PAYMENT_REQUIRED if error.kind == "card_error" || error.kind.is_empty() => {
            GatewayError::Declined(if message.is_empty() { "Your card was declined.".into() } else { message })
        }
        StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS => GatewayError::Unavailable(detail()),
        status if status.is_server_error() => GatewayError::Unavailable(detail()),
        status if status.is_client_error() && error.kind == "invalid_request_error" => {
            if code == "amount_too_small" {
                GatewayError::AmountTooSmall(message)
            } else if error.param.as_deref() == Some("source")
                || matches!(code, "token_already_used" | "invalid_source_usage" | "token_in_use")
                || (code == "resource_missing" && message.contains("token"))
            {
                GatewayError::InvalidToken(if message.is_empty() { "Invalid card token".into() } else { message })
            } else {
                GatewayError::Rejected(detail())
            }
        }
        _ => GatewayError::Rejected(detail()),
    }
}

#[async_trait::async_trait]
impl Gateway for StripeGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        check_minimum(request.amount, &request.currency)?;
        let amount = request.amount.to_string();
        let order_id = request.order_id.to_string();
        let charge: ChargeBody = self
            .post(
                "/v1/charges",
                &request.idempotency_key,
                &[
                    ("amount", &amount),
                    ("currency", &request.currency.code),
                    ("source", &request.token),
                    ("metadata[order_id]", &order_id),
                ],
            )
            .await
            .map_err(GatewayError::from)?;
        match charge.status.as_deref() {
            Some("succeeded") | None => Ok(Charge { id: charge.id }),
            Some("failed") => {
                Err(GatewayError::Declined(charge.failure_message.unwrap_or_else(|| "Your card was declined.".into())))
            }
            Some(other) => Err(GatewayError::Rejected(anyhow!("charge {} is {other}, not succeeded", charge.id))),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<Refund, GatewayError> {
        let answer: Result<RefundBody, _> =
            self.post("/v1/refunds", &request.idempotency_key, &[("charge", &request.charge_id)]).await;
        match answer {
            Ok(refund) => Ok(Refund { id: Some(refund.id) }),
            // Refunded by an attempt whose answer was lost (and whose idempotent answer is
            // gone): the money is back, which is all the caller wants.
            Err(Failure::Api { error, .. }) if error.code.as_deref() == Some("charge_already_refunded") => {
                Ok(Refund { id: None })
            }
            Err(failure) => Err(failure.into()),
        }
    }

    fn name(&self) -> &'static str {
        "stripe"
    }
}

//! `POST /webhooks/stripe`: events from Stripe, verified by their `Stripe-Signature`, each applied
//! once (its id is stored in the transaction that applies it). Subscription state is never taken
//! from the event: the subscription is read from Stripe while the organisation's row is locked,
//! so events arriving late or out of order still leave the state Stripe has now.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use sha2::Sha256;
use uuid::Uuid;

use super::{Billing, apply_subscription};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/stripe", post(receive))
}

/// Why a signature was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header, or one without t= and v1=")]
    Malformed,
    #[error("the signed timestamp is outside the tolerance")]
    Stale,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Checks a `Stripe-Signature` header (`t=TIMESTAMP,v1=HEX[,v1=HEX...][,v0=...]`) over `body`:
/// HMAC-SHA256 with `secret` of `"{t}.{body}"` must equal one of the `v1` values (several are
/// sent while a secret is being rolled), and `t` must be within `tolerance` of `now`.
pub fn verify_signature(
    header: &str,
    body: &[u8],
    secret: &str,
    tolerance: Duration,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let mut timestamp: Option<i64> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse().ok(),
            Some(("v1", sig)) => {
                if let Ok(bytes) = hex::decode(sig) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let age = now.timestamp().abs_diff(timestamp);
    if age > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    for signature in signatures {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return Err(SignatureError::Malformed);
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // Constant-time comparison.
        if mac.verify_slice(&signature).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// `Stripe-Signature` for `body` at `timestamp` (tests and tools sign with it).
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The fields of an event Qleet reads.
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: EventData,
}

#[derive(Debug, Deserialize)]
struct EventData {
    object: serde_json::Value,
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let billing = &state.controlplanes.billing;
    let Some(config) = billing.config.stripe.as_ref() else {
        return (StatusCode::NOT_FOUND, "billing is not configured").into_response();
    };
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Err(e) = verify_signature(
        header,
        &body,
        config.webhook_secret.expose_secret(),
        billing.config.webhook_tolerance,
        Utc::now(),
    ) {
        tracing::warn!(reason = %e, "refused a Stripe webhook");
        return (StatusCode::BAD_REQUEST, format!("signature refused: {e}")).into_response();
    }
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a Stripe event: {e}")).into_response();
        }
    };
    let span = tracing::info_span!("stripe_event", event.id = %event.id, event.type = %event.kind);
    match tracing::Instrument::instrument(handle(&state, billing, &event), span).await {
        Ok(outcome) => (StatusCode::OK, outcome).into_response(),
        // Stripe retries anything but 2xx, with backoff, for days.
        Err(e) => e.into_response(),
    }
}

/// The ids an event points at.
struct Target {
    customer: Option<String>,
    subscription: Option<String>,
    org_hint: Option<Uuid>,
}

fn target(event: &Event) -> Option<Target> {
    let object = &event.data.object;
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    match event.kind.as_str() {
        "checkout.session.completed" => Some(Target {
            customer: text("customer"),
            subscription: text("subscription"),
            org_hint: text("client_reference_id").and_then(|s| s.parse().ok()),
        }),
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => Some(Target {
            customer: text("customer"),
            subscription: text("id"),
            org_hint: None,
        }),
        // localstripe (and older API versions) send invoice.payment_succeeded for invoice.paid.
        "invoice.paid" | "invoice.payment_succeeded" | "invoice.payment_failed" => Some(Target {
            customer: text("customer"),
            subscription: text("subscription"),
            org_hint: None,
        }),
        _ => None,
    }
}

/// Applies one event exactly once. Returns a short note for the response body.
async fn handle(
    state: &AppState,
    billing: &Billing,
    event: &Event,
) -> Result<&'static str, ApiError> {
    let seen: bool =
        sqlx::query_scalar("select exists (select 1 from stripe_events where id = $1)")
            .bind(&event.id)
            .fetch_one(&state.pool)
            .await?;
    if seen {
        return Ok("duplicate");
    }
    let created = DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let mut tx = state.pool.begin().await?;
    let Some(target) = target(event) else {
        record(&mut tx, event, created).await?;
        tx.commit().await?;
        return Ok("ignored");
    };
    // The organisation: by its stored customer id (locking its row: one event per organisation
    // at a time), else, for a completed Checkout, by the org id we put into it.
    let mut org: Option<Uuid> = match &target.customer {
        Some(c) => {
            sqlx::query_scalar(
                "select org_id from billing_accounts where stripe_customer_id = $1 for update",
            )
            .bind(c)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => None,
    };
    if org.is_none()
        && let (Some(hint), Some(customer)) = (target.org_hint, &target.customer)
    {
        let linked = sqlx::query_scalar::<_, Uuid>(
            "update billing_accounts set stripe_customer_id = $2, updated_at = now()
             where org_id = $1 and stripe_customer_id is null returning org_id",
        )
        .bind(hint)
        .bind(customer)
        .fetch_optional(&mut *tx)
        .await?;
        org = linked;
    }
    let Some(org_id) = org else {
        tracing::warn!(customer = ?target.customer, "Stripe event for a customer of no organisation");
        record(&mut tx, event, created).await?;
        tx.commit().await?;
        return Ok("unknown customer");
    };
    if !record(&mut tx, event, created).await? {
        return Ok("duplicate");
    }
    if let Some(sub_id) = &target.subscription {
        let sub = billing.stripe()?.subscription(sub_id).await?;
        if Some(&sub.customer) != target.customer.as_ref() && target.customer.is_some() {
            return Err(crate::error::internal(anyhow::anyhow!(
                "subscription {} belongs to {}, not to the event's customer",
                sub.id,
                sub.customer
            )));
        }
        apply_subscription(&mut tx, billing, org_id, &sub).await?;
    }
    tx.commit().await?;
    // Released holds and changed plans: the lifecycle picks them up now.
    state.controlplanes.wake.notify_one();
    Ok("applied")
}

/// Stores the event id; false when another delivery stored it first.
async fn record(
    conn: &mut sqlx::PgConnection,
    event: &Event,
    created: DateTime<Utc>,
) -> Result<bool, ApiError> {
    Ok(sqlx::query(
        "insert into stripe_events (id, type, created) values ($1, $2, $3) on conflict do nothing",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(created)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let now = Utc::now();
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(body, SECRET, now.timestamp());
        assert_eq!(verify_signature(&header, body, SECRET, TOL, now), Ok(()));
    }

    #[test]
    fn tampered_bodies_wrong_secrets_and_stale_timestamps_are_refused() {
        let now = Utc::now();
        let body = br#"{"id":"evt_1","amount":100}"#;
        let header = sign(body, SECRET, now.timestamp());
        let tampered = br#"{"id":"evt_1","amount":999}"#;
        assert_eq!(
            verify_signature(&header, tampered, SECRET, TOL, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&header, body, "whsec_other", TOL, now),
            Err(SignatureError::Mismatch)
        );
        let old = sign(body, SECRET, now.timestamp() - 301);
        assert_eq!(
            verify_signature(&old, body, SECRET, TOL, now),
            Err(SignatureError::Stale)
        );
        let future = sign(body, SECRET, now.timestamp() + 301);
        assert_eq!(
            verify_signature(&future, body, SECRET, TOL, now),
            Err(SignatureError::Stale)
        );
        for junk in ["", "t=1", "v1=00", "t=x,v1=00", "garbage"] {
            assert_eq!(
                verify_signature(junk, body, SECRET, TOL, now),
                Err(SignatureError::Malformed),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn any_one_of_several_v1_signatures_may_match() {
        let now = Utc::now();
        let body = b"{}";
        let good = sign(body, SECRET, now.timestamp());
        let good_v1 = good.split_once(",v1=").expect("v1").1;
        let header = format!(
            "t={},v1={},v1={good_v1},v0=abc",
            now.timestamp(),
            "ab".repeat(32)
        );
        assert_eq!(verify_signature(&header, body, SECRET, TOL, now), Ok(()));
        let only_bad = format!("t={},v1={}", now.timestamp(), "ab".repeat(32));
        assert_eq!(
            verify_signature(&only_bad, body, SECRET, TOL, now),
            Err(SignatureError::Mismatch)
        );
    }
}

//! `POST /webhooks/stripe`: events from Stripe, verified by their `Stripe-Signature`, stored once
//! (by id) and answered `200` at once; the billing worker applies them from that queue
//! ([`process_events`]). Subscription state is never taken from an event: all of the customer's
//! subscriptions are read from Stripe with no database connection held, then applied in one short
//! transaction, so events arriving late, out of order or in bursts leave the state Stripe has
//! now, and no Stripe latency can hold the API's connections.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hmac::{Hmac, Mac as _};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use super::apply_subscriptions;
use crate::error::ApiError;
use crate::fleet::Services;
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

/// Event types Qleet acts on; others are stored (for de-duplication) as done.
const HANDLED: [&str; 9] = [
    "checkout.session.completed",
    "checkout.session.expired",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "customer.subscription.paused",
];

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
    let (event, payload): (Event, serde_json::Value) = match serde_json::from_slice(&body)
        .and_then(|v: serde_json::Value| Ok((serde_json::from_value(v.clone())?, v)))
    {
        Ok(e) => e,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a Stripe event: {e}")).into_response();
        }
    };
    if !event.data.object.is_object() {
        return (
            StatusCode::BAD_REQUEST,
            "not a Stripe event: no data.object",
        )
            .into_response();
    }
    let span = tracing::info_span!("stripe_event", event.id = %event.id, event.type = %event.kind);
    let _enter = span.enter();
    match store(&state.pool, &event, &payload).await {
        Ok(true) => {
            billing.wake.notify_one();
            (StatusCode::OK, "queued").into_response()
        }
        Ok(false) => (StatusCode::OK, "duplicate").into_response(),
        // Stripe retries anything but 2xx, with backoff, for days.
        Err(e) => e.into_response(),
    }
}

/// Stores a verified event for the worker; false when it was stored before (a redelivery).
/// Events Qleet does not act on are stored as done.
async fn store(
    pool: &PgPool,
    event: &Event,
    payload: &serde_json::Value,
) -> Result<bool, ApiError> {
    let created = DateTime::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
    let handled = HANDLED.contains(&event.kind.as_str());
    Ok(sqlx::query!(
        "insert into stripe_events (id, type, created, payload, applied_at)
         values ($1, $2, $3, $4, case when $5 then null else now() end)
         on conflict do nothing",
        &event.id,
        &event.kind,
        created,
        payload,
        handled,
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// A stored event claimed for applying, and what it points at.
#[derive(Debug)]
struct Claimed {
    id: String,
    kind: String,
    customer: Option<String>,
    subscription: Option<String>,
    /// The organisation a Checkout was started for (`client_reference_id`).
    org_hint: Option<Uuid>,
    checkout_session: Option<String>,
    attempts: i32,
}

impl Claimed {
    fn new(id: String, kind: String, payload: Option<serde_json::Value>, attempts: i32) -> Self {
        let object = payload
            .as_ref()
            .and_then(|p| p.get("data"))
            .and_then(|d| d.get("object"));
        let text = |key: &str| {
            object
                .and_then(|o| o.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let mut claimed = Claimed {
            id,
            kind,
            customer: text("customer"),
            subscription: None,
            org_hint: None,
            checkout_session: None,
            attempts,
        };
        match claimed.kind.as_str() {
            "checkout.session.completed" | "checkout.session.expired" => {
                claimed.subscription = text("subscription");
                claimed.org_hint = text("client_reference_id").and_then(|s| s.parse().ok());
                claimed.checkout_session = text("id");
            }
            k if k.starts_with("customer.subscription.") => claimed.subscription = text("id"),
            _ => claimed.subscription = text("subscription"),
        }
        claimed
    }

    /// An expired Checkout changes no subscription: nothing to read from Stripe.
    fn needs_stripe(&self) -> bool {
        self.kind != "checkout.session.expired"
    }
}

/// How long a claimed event is left to the worker that claimed it before another may retry it.
/// Short, and renewed every third of it while the worker is at it (however long Stripe takes),
/// so the events of a worker that died are retried within seconds.
pub(super) const LEASE: Duration = Duration::from_secs(15);
/// Customers whose events are applied at the same time.
const CONCURRENCY: usize = 4;

/// Applies every stored event that is due, customer by customer (one read of Stripe per customer
/// however many of its events are waiting), until none is left. Returns how many were done.
pub async fn process_events(pool: &PgPool, services: &Services) -> Result<u64, ApiError> {
    let mut done = 0;
    loop {
        let rows = sqlx::query!(
            "update stripe_events set attempts = attempts + 1,
                 next_attempt_at = now() + make_interval(secs => $1), claimed_by = $2
             where id in (select id from stripe_events
                          where applied_at is null and next_attempt_at <= now()
                          order by created, id limit 100 for update skip locked)
             returning id, type, payload, attempts",
            LEASE.as_secs_f64(),
            services.instance,
        )
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        done += rows.len() as u64;
        let working = super::worker::Claims::new(rows.iter().map(|r| r.id.clone()));
        let mut groups: BTreeMap<Option<String>, Vec<Claimed>> = BTreeMap::new();
        for r in rows {
            let claimed = Claimed::new(r.id, r.r#type, r.payload, r.attempts);
            groups
                .entry(claimed.customer.clone())
                .or_default()
                .push(claimed);
        }
        let applying = futures::stream::iter(groups)
            .for_each_concurrent(CONCURRENCY, |(customer, events)| {
                apply_claimed(pool, services, customer, events, &working)
            });
        working
            .hold(applying, |ids| async move {
                sqlx::query!(
                    "update stripe_events set next_attempt_at = now() + make_interval(secs => $2)
                     where id = any($1) and applied_at is null and claimed_by = $3",
                    &ids,
                    LEASE.as_secs_f64(),
                    services.instance,
                )
                .execute(pool)
                .await
                .map(drop)
            })
            .await;
        services.wake_workers();
    }
}

/// Applies one customer's claimed events; on failure they are given a retry time.
async fn apply_claimed(
    pool: &PgPool,
    services: &Services,
    customer: Option<String>,
    events: Vec<Claimed>,
    working: &super::worker::Claims,
) {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let attempts = events.iter().map(|e| e.attempts).max().unwrap_or(1);
    let span = tracing::info_span!("stripe_events", customer = ?customer, events = ?ids);
    let result =
        tracing::Instrument::instrument(apply_group(pool, services, customer, events), span).await;
    // Done with these (applied, or about to be given a retry time): no more renewals.
    working.finish(&ids);
    if let Err(e) = result {
        tracing::warn!(events = ?ids, error = %e, "applying Stripe events failed; they will be retried");
        let retry = super::worker::backoff(&services.billing, attempts);
        let _ = sqlx::query!(
            "update stripe_events set last_error = $2,
                 next_attempt_at = now() + make_interval(secs => $3)
             where id = any($1)",
            &ids,
            e.to_string(),
            retry.as_seconds_f64(),
        )
        .execute(pool)
        .await;
    }
}

/// Marks events done, with a warning for those that could not be acted on as they asked.
async fn finish(
    conn: impl sqlx::PgExecutor<'_>,
    done: &[(String, Option<String>)],
) -> Result<(), ApiError> {
    let ids: Vec<&str> = done.iter().map(|(id, _)| id.as_str()).collect();
    let warnings: Vec<Option<&str>> = done.iter().map(|(_, w)| w.as_deref()).collect();
    sqlx::query!(
        "update stripe_events e set applied_at = now(), warning = w.warning, last_error = null
         from unnest($1::text[], $2::text[]) as w(id, warning) where e.id = w.id",
        &ids as &[&str],
        &warnings as &[Option<&str>],
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies the events of one customer (or of none, for events that name no customer).
async fn apply_group(
    pool: &PgPool,
    services: &Services,
    customer: Option<String>,
    events: Vec<Claimed>,
) -> Result<(), ApiError> {
    let billing = &services.billing;
    let stripe = billing.stripe()?;
    let mut warnings: BTreeMap<String, String> = BTreeMap::new();
    // Events that name only a subscription: its customer, as Stripe has it.
    let customer = match customer {
        Some(c) => Some(c),
        None => {
            let mut found = None;
            for e in events.iter().filter(|e| e.needs_stripe()) {
                if let Some(sub) = &e.subscription {
                    match stripe.subscription(sub).await? {
                        Some(s) => found = Some(s.customer),
                        None => {
                            warnings.insert(
                                e.id.clone(),
                                format!("Stripe has no subscription {sub:?}"),
                            );
                        }
                    }
                }
            }
            found
        }
    };
    // Checkouts that ended (either way) are no longer open.
    let sessions: Vec<&str> = events
        .iter()
        .filter_map(|e| e.checkout_session.as_deref())
        .collect();
    if !sessions.is_empty() {
        sqlx::query!(
            "update billing_accounts set checkout_session_id = null, checkout_plan = null,
                 checkout_url = null, checkout_expires_at = null
             where checkout_session_id = any($1)",
            &sessions as &[&str],
        )
        .execute(pool)
        .await?;
    }
    let done = |warnings: &BTreeMap<String, String>| -> Vec<(String, Option<String>)> {
        events
            .iter()
            .map(|e| (e.id.clone(), warnings.get(&e.id).cloned()))
            .collect()
    };
    let Some(customer) = customer.filter(|_| events.iter().any(Claimed::needs_stripe)) else {
        return finish(pool, &done(&warnings)).await;
    };

    // The organisation: by its stored customer id, else, for a completed Checkout, by the org
    // id we put into it.
    let mut org = sqlx::query_scalar!(
        "select org_id from billing_accounts where stripe_customer_id = $1",
        &customer,
    )
    .fetch_optional(pool)
    .await?;
    if org.is_none()
        && let Some(hint) = events.iter().find_map(|e| e.org_hint)
    {
        org = sqlx::query_scalar!(
            "update billing_accounts set stripe_customer_id = $2, updated_at = now()
             where org_id = $1 and stripe_customer_id is null returning org_id",
            hint,
            &customer,
        )
        .fetch_optional(pool)
        .await?;
    }
    let Some(org_id) = org else {
        // A deleted organisation's customer: whatever the event says, its subscriptions are
        // cancelled (again, if one appeared since, e.g. from a Checkout left open).
        let deleted = sqlx::query!(
            "update billing_cancellations set done_at = null, next_attempt_at = now()
             where stripe_customer_id = $1",
            &customer,
        )
        .execute(pool)
        .await?
        .rows_affected()
            > 0;
        if deleted {
            billing.wake.notify_one();
            tracing::info!(
                customer,
                "event for a deleted organisation's customer: its subscriptions are cancelled"
            );
        } else {
            tracing::warn!(customer, "Stripe event for a customer of no organisation");
            for e in &events {
                warnings
                    .entry(e.id.clone())
                    .or_insert_with(|| format!("customer {customer:?} belongs to no organisation"));
            }
        }
        return finish(pool, &done(&warnings)).await;
    };

    // Stripe's state now, read with no connection held.
    let read_at = Utc::now();
    let subscriptions = stripe.subscriptions_of(&customer).await?;
    for e in &events {
        let Some(sub) = &e.subscription else { continue };
        if subscriptions.iter().any(|s| &s.id == sub) {
            continue;
        }
        let warning = match stripe.subscription(sub).await? {
            None => format!("Stripe has no subscription {sub:?}"),
            Some(s) => format!(
                "subscription {sub:?} belongs to customer {:?}, not {customer:?}",
                s.customer
            ),
        };
        warnings.insert(e.id.clone(), warning);
    }
    for (id, warning) in &warnings {
        tracing::warn!(event.id = %id, org.id = %org_id, warning, "Stripe event acknowledged without effect");
    }
    let mut tx = pool.begin().await?;
    apply_subscriptions(&mut tx, billing, org_id, &subscriptions, read_at).await?;
    if !warnings.is_empty() {
        crate::audit::record_system(
            &mut tx,
            org_id,
            "billing.event_warning",
            serde_json::json!({ "events": warnings }),
        )
        .await?;
    }
    finish(&mut *tx, &done(&warnings)).await?;
    tx.commit().await?;
    Ok(())
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

//! The calls Qleet makes to Stripe, through async-stripe: typed request parameters, the secret
//! key, `Stripe-Version` and `Idempotency-Key` headers. Answers are read into small structs of
//! only the fields Qleet uses, so fields Stripe adds or leaves out elsewhere never break them.

use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde::Deserialize;
use stripe::{
    CheckoutSessionMode, Client, CreateBillingPortalSession, CreateCheckoutSession,
    CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData, CreateCustomer,
    CustomerId, Metadata, RequestStrategy,
};
use uuid::Uuid;

use crate::config::StripeConfig;
use crate::error::ApiError;

/// How long one Stripe call may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A Stripe API client for one account.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
}

/// A subscription as Qleet reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub customer: String,
    /// `active`, `trialing`, `past_due`, `unpaid`, `canceled`, `incomplete`, ...
    pub status: String,
    /// When it was created (Unix seconds).
    #[serde(default)]
    pub created: i64,
    pub items: List<SubscriptionItem>,
}

impl Subscription {
    /// The price of its licensed item (the plan; a metered usage item sits beside it): `price.id`,
    /// or for legacy plans `plan.id` (Stripe gives both, with the same id, for price-based
    /// subscriptions).
    pub fn price_id(&self) -> Option<&str> {
        self.items
            .data
            .iter()
            .find(|item| !item.is_metered())
            .and_then(SubscriptionItem::price_id)
    }
}

impl SubscriptionItem {
    fn price_id(&self) -> Option<&str> {
        self.price
            .as_ref()
            .map(|p| p.id.as_str())
            .or(self.plan.as_ref().map(|p| p.id.as_str()))
    }

    /// Whether the item is billed by reported usage (`recurring.usage_type` of its price, or
    /// `usage_type` of a legacy plan).
    fn is_metered(&self) -> bool {
        let price = self
            .price
            .as_ref()
            .and_then(|p| p.recurring.as_ref())
            .and_then(|r| r.usage_type.as_deref());
        let plan = self.plan.as_ref().and_then(|p| p.usage_type.as_deref());
        price.or(plan) == Some("metered")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    pub plan: Option<Price>,
}

/// A price, or a legacy plan (which carries `usage_type` itself).
#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub usage_type: Option<String>,
    #[serde(default)]
    pub recurring: Option<Recurring>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Recurring {
    /// `licensed` or `metered`.
    #[serde(default)]
    pub usage_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Id {
    pub id: String,
}

#[derive(Debug, Deserialize)]
struct Session {
    url: String,
}

/// An open Checkout session.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: String,
}

impl StripeApi {
    pub fn new(config: &StripeConfig) -> Self {
        StripeApi {
            client: Client::from_url(
                config.api_base.as_str(),
                config.secret_key.expose_secret().to_owned(),
            )
            .with_app_info(
                "qleet".into(),
                Some(env!("CARGO_PKG_VERSION").into()),
                None,
            ),
        }
    }

    fn idempotent(&self, key: String) -> Client {
        self.client
            .clone()
            .with_strategy(RequestStrategy::Idempotent(key))
    }

    /// Creates the organisation's Stripe customer. The idempotency key is derived from the
    /// organisation, so a retry after a lost answer returns the same customer.
    pub async fn create_customer(
        &self,
        org_id: Uuid,
        slug: &str,
        name: &str,
    ) -> Result<String, ApiError> {
        let mut params = CreateCustomer::new();
        params.name = Some(name);
        params.metadata = Some(Metadata::from([
            ("org_id".to_owned(), org_id.to_string()),
            ("org_slug".to_owned(), slug.to_owned()),
        ]));
        let customer: Id = call(
            self.idempotent(format!("qleet-customer-{org_id}"))
                .post_form("/customers", &params),
        )
        .await?;
        Ok(customer.id)
    }

    /// A Checkout session subscribing `customer` to `price` (and the metered `usage_price`),
    /// open until `expires_at`; returns its id and the URL to send the person to.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkout(
        &self,
        org_id: Uuid,
        customer: &str,
        price: &str,
        usage_price: Option<&str>,
        success_url: &str,
        cancel_url: &str,
        expires_at: i64,
    ) -> Result<CheckoutSession, ApiError> {
        let org = org_id.to_string();
        let mut params = CreateCheckoutSession::new();
        params.mode = Some(CheckoutSessionMode::Subscription);
        params.customer = Some(customer_id(customer)?);
        params.client_reference_id = Some(&org);
        params.success_url = Some(success_url);
        params.cancel_url = Some(cancel_url);
        params.expires_at = Some(expires_at);
        let mut items = vec![CreateCheckoutSessionLineItems {
            price: Some(price.to_owned()),
            quantity: Some(1),
            ..Default::default()
        }];
        if let Some(usage) = usage_price {
            // Metered prices take no quantity.
            items.push(CreateCheckoutSessionLineItems {
                price: Some(usage.to_owned()),
                ..Default::default()
            });
        }
        params.line_items = Some(items);
        params.subscription_data = Some(CreateCheckoutSessionSubscriptionData {
            metadata: Some(Metadata::from([("org_id".to_owned(), org.clone())])),
            ..Default::default()
        });
        call(self.client.post_form("/checkout/sessions", &params)).await
    }

    /// A Customer Portal session for `customer`; returns its URL.
    pub async fn portal(&self, customer: &str, return_url: &str) -> Result<String, ApiError> {
        let mut params = CreateBillingPortalSession::new(customer_id(customer)?);
        params.return_url = Some(return_url);
        let session: Session =
            call(self.client.post_form("/billing_portal/sessions", &params)).await?;
        Ok(session.url)
    }

    /// The subscription as Stripe has it now; `None` when Stripe has no such subscription.
    pub async fn subscription(&self, id: &str) -> Result<Option<Subscription>, ApiError> {
        if !is_stripe_id(id) {
            return Ok(None);
        }
        match timed(
            self.client
                .get::<Subscription>(&format!("/subscriptions/{id}")),
        )
        .await
        {
            Err(CallError::Stripe(stripe::StripeError::Stripe(e))) if e.http_status == 404 => {
                Ok(None)
            }
            other => other.map(Some).map_err(CallError::into_api),
        }
    }

    /// Every subscription of `customer` in any status, as Stripe has them now.
    pub async fn subscriptions_of(&self, customer: &str) -> Result<Vec<Subscription>, ApiError> {
        if !is_stripe_id(customer) {
            return Err(crate::error::internal(anyhow::anyhow!(
                "customer id {customer:?} is not a Stripe id"
            )));
        }
        #[derive(serde::Serialize)]
        struct Params<'a> {
            customer: &'a str,
            status: &'a str,
            limit: u32,
        }
        let params = Params {
            customer,
            status: "all",
            limit: 100,
        };
        let list: List<Subscription> =
            call(self.client.get_query("/subscriptions", params)).await?;
        Ok(list.data)
    }

    /// Cancels a subscription at once (Stripe's defaults: no proration credit, no final invoice).
    /// A subscription Stripe no longer has, or that is already cancelled, counts as cancelled.
    pub async fn cancel_subscription(&self, id: &str) -> Result<(), ApiError> {
        if !is_stripe_id(id) {
            return Ok(());
        }
        let request = self
            .idempotent(format!("qleet-cancel-{id}"))
            .delete::<serde_json::Value>(&format!("/subscriptions/{id}"));
        match timed(request).await {
            Ok(_) => Ok(()),
            Err(CallError::Stripe(stripe::StripeError::Stripe(e))) if e.http_status == 404 => {
                Ok(())
            }
            Err(e) => Err(e.into_api()),
        }
    }

    /// Sends one billing-meter event. `identifier` makes Stripe count it once however often it
    /// is sent; the same value is the request's idempotency key.
    pub async fn meter_event(
        &self,
        event_name: &str,
        customer: &str,
        value: i64,
        identifier: &str,
        timestamp: i64,
    ) -> Result<(), ApiError> {
        let form = [
            ("event_name", event_name.to_owned()),
            ("identifier", identifier.to_owned()),
            ("timestamp", timestamp.to_string()),
            ("payload[stripe_customer_id]", customer.to_owned()),
            ("payload[value]", value.to_string()),
        ];
        let _: serde_json::Value = call(
            self.idempotent(format!("qleet-usage-{identifier}"))
                .post_form("/billing/meter_events", FlatForm(&form)),
        )
        .await?;
        Ok(())
    }
}

/// A form already in Stripe's bracket notation, serialised as-is.
struct FlatForm<'a>(&'a [(&'a str, String)]);

impl serde::Serialize for FlatForm<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn customer_id(id: &str) -> Result<CustomerId, ApiError> {
    id.parse().map_err(|_| {
        crate::error::internal(anyhow::anyhow!("stored customer id {id:?} is not one"))
    })
}

/// Ids Stripe makes: `sub_...`, `cus_...` (never anything that could change the request path).
fn is_stripe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a Stripe call failed, before it becomes the caller's error.
enum CallError {
    Stripe(stripe::StripeError),
    Timeout,
}

impl CallError {
    /// `STRIPE_UNAVAILABLE`, logged with Stripe's own message.
    fn into_api(self) -> ApiError {
        match self {
            CallError::Stripe(e) => {
                tracing::warn!(error = %e, "Stripe refused or failed a request");
                ApiError::Unavailable {
                    code: "STRIPE_UNAVAILABLE",
                    message: "Stripe did not complete the request; try again shortly".into(),
                }
            }
            CallError::Timeout => {
                tracing::warn!("a Stripe request timed out");
                ApiError::Unavailable {
                    code: "STRIPE_UNAVAILABLE",
                    message: "Stripe did not answer in time; try again shortly".into(),
                }
            }
        }
    }
}

/// Awaits a Stripe call with a timeout.
async fn timed<T>(request: stripe::Response<T>) -> Result<T, CallError> {
    match tokio::time::timeout(TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(CallError::Stripe(e)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// Awaits a Stripe call with a timeout; failures become `STRIPE_UNAVAILABLE` for the caller and
/// are logged with Stripe's own message.
async fn call<T>(request: stripe::Response<T>) -> Result<T, ApiError> {
    timed(request).await.map_err(CallError::into_api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_price_is_the_licensed_item_whatever_the_order() {
        let sub: Subscription = serde_json::from_value(serde_json::json!({
            "id": "sub_1", "customer": "cus_1", "status": "active",
            "items": { "data": [
                { "price": { "id": "price_usage", "recurring": { "usage_type": "metered" } } },
                { "price": { "id": "price_team", "recurring": { "usage_type": "licensed" } } },
            ] },
        }))
        .expect("subscription");
        assert_eq!(sub.price_id(), Some("price_team"));
        let legacy: Subscription = serde_json::from_value(serde_json::json!({
            "id": "sub_2", "customer": "cus_1", "status": "active",
            "items": { "data": [
                { "plan": { "id": "plan_usage", "usage_type": "metered" } },
                { "plan": { "id": "plan_team", "usage_type": "licensed" } },
            ] },
        }))
        .expect("subscription");
        assert_eq!(legacy.price_id(), Some("plan_team"));
    }
}

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
    pub items: List<SubscriptionItem>,
}

impl Subscription {
    /// The price of its (first, licensed) item: `price.id`, or for legacy plans `plan.id`
    /// (Stripe gives both, with the same id, for price-based subscriptions).
    pub fn price_id(&self) -> Option<&str> {
        let item = self.items.data.first()?;
        item.price
            .as_ref()
            .map(|p| p.id.as_str())
            .or(item.plan.as_ref().map(|p| p.id.as_str()))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<Id>,
    #[serde(default)]
    pub plan: Option<Id>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Id {
    pub id: String,
}

#[derive(Debug, Deserialize)]
struct Session {
    url: String,
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

    /// A Checkout session subscribing `customer` to `price` (and the metered `usage_price`);
    /// returns the URL to send the person to.
    pub async fn checkout(
        &self,
        org_id: Uuid,
        customer: &str,
        price: &str,
        usage_price: Option<&str>,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<String, ApiError> {
        let org = org_id.to_string();
        let mut params = CreateCheckoutSession::new();
        params.mode = Some(CheckoutSessionMode::Subscription);
        params.customer = Some(customer_id(customer)?);
        params.client_reference_id = Some(&org);
        params.success_url = Some(success_url);
        params.cancel_url = Some(cancel_url);
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
        let session: Session = call(self.client.post_form("/checkout/sessions", &params)).await?;
        Ok(session.url)
    }

    /// A Customer Portal session for `customer`; returns its URL.
    pub async fn portal(&self, customer: &str, return_url: &str) -> Result<String, ApiError> {
        let mut params = CreateBillingPortalSession::new(customer_id(customer)?);
        params.return_url = Some(return_url);
        let session: Session =
            call(self.client.post_form("/billing_portal/sessions", &params)).await?;
        Ok(session.url)
    }

    /// The subscription as Stripe has it now.
    pub async fn subscription(&self, id: &str) -> Result<Subscription, ApiError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ApiError::invalid("subscription", "is not a Stripe id"));
        }
        call(self.client.get(&format!("/subscriptions/{id}"))).await
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

/// Awaits a Stripe call with a timeout; failures become `STRIPE_UNAVAILABLE` for the caller and
/// are logged with Stripe's own message.
async fn call<T>(request: stripe::Response<T>) -> Result<T, ApiError> {
    match tokio::time::timeout(TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Stripe refused or failed a request");
            Err(ApiError::Unavailable {
                code: "STRIPE_UNAVAILABLE",
                message: "Stripe did not complete the request; try again shortly".into(),
            })
        }
        Err(_) => {
            tracing::warn!("a Stripe request timed out");
            Err(ApiError::Unavailable {
                code: "STRIPE_UNAVAILABLE",
                message: "Stripe did not answer in time; try again shortly".into(),
            })
        }
    }
}

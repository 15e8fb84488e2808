//! Stripe peers for the billing tests: a real `localstripe` server on loopback (customers,
//! legacy plans, payment methods, subscriptions, invoices and real signed webhooks), and a
//! recording peer for the calls localstripe lacks (Checkout, the Customer Portal, billing-meter
//! events) that records the exact request and answers with the response Stripe documents.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};

/// Where `scripts/lib.sh` installs localstripe (a Python venv inside the repository).
pub fn localstripe_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("QLEET_LOCALSTRIPE") {
        return path.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/.venv/bin/localstripe")
}

/// A running localstripe; stopped when dropped.
pub struct LocalStripe {
    pub url: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

pub const SECRET_KEY: &str = "sk_test_qleet";

impl LocalStripe {
    pub async fn start() -> LocalStripe {
        let binary = localstripe_binary();
        assert!(
            binary.exists(),
            "localstripe is not installed at {}: run `bash scripts/test.sh` once (it installs it \
             into tests/.venv), or set QLEET_LOCALSTRIPE to its path",
            binary.display()
        );
        // localstripe has no host flag; take a free port first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(&binary)
            .args(["--port", &port.to_string(), "--from-scratch"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start localstripe");
        let ls = LocalStripe {
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _child: child,
        };
        for _ in 0..300 {
            let ok = ls
                .http
                .get(format!("{}/v1/customers", ls.url))
                .bearer_auth(SECRET_KEY)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return ls;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("localstripe did not answer on port {port}");
    }

    /// `POST /v1/{path}` with a form; panics on a non-2xx answer.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .post(format!("{}/v1/{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .form(form)
            .send()
            .await
            .expect("localstripe");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/v1/{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .expect("localstripe")
            .json()
            .await
            .expect("json")
    }

    pub async fn delete(&self, path: &str) -> Value {
        self.http
            .delete(format!("{}/v1/{path}", self.url))
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .expect("localstripe")
            .json()
            .await
            .expect("json")
    }

    /// A product with legacy plans `price_team` and `price_business` (monthly).
    pub async fn catalogue(&self) {
        let product = self
            .post("products", &[("name", "Qleet"), ("type", "service")])
            .await;
        let product = product["id"].as_str().expect("product id");
        for (id, amount) in [("price_team", "2900"), ("price_business", "9900")] {
            self.post(
                "plans",
                &[
                    ("id", id),
                    ("product", product),
                    ("amount", amount),
                    ("currency", "usd"),
                    ("interval", "month"),
                ],
            )
            .await;
        }
    }

    /// Delivers every event, signed with `secret`, to `url` (about a second after it happens).
    pub async fn send_webhooks_to(&self, url: &str, secret: &str) {
        let resp = self
            .http
            .post(format!("{}/_config/webhooks/qleet", self.url))
            .form(&[("url", url), ("secret", secret)])
            .send()
            .await
            .expect("localstripe");
        assert!(
            resp.status().is_success(),
            "webhook config: {}",
            resp.status()
        );
    }

    /// A card payment method attached to `customer` and made its default.
    pub async fn set_card(&self, customer: &str, number: &str) -> String {
        let pm = self
            .post(
                "payment_methods",
                &[
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "12"),
                    ("card[exp_year]", "2034"),
                    ("card[cvc]", "123"),
                ],
            )
            .await;
        let pm = pm["id"].as_str().expect("pm").to_owned();
        self.post(
            &format!("payment_methods/{pm}/attach"),
            &[("customer", customer)],
        )
        .await;
        self.post(
            &format!("customers/{customer}"),
            &[("invoice_settings[default_payment_method]", &pm)],
        )
        .await;
        pm
    }

    /// Subscribes `customer` (with a working card) to `price`; returns the subscription.
    pub async fn subscribe(&self, customer: &str, price: &str) -> Value {
        self.set_card(customer, "4242424242424242").await;
        let sub = self
            .post(
                "subscriptions",
                &[("customer", customer), ("items[0][plan]", price)],
            )
            .await;
        assert_eq!(sub["status"], "active", "{sub}");
        sub
    }

    /// A renewal that fails: a card needing 3-D Secure, an invoice for the subscription, and the
    /// authentication failed. localstripe then marks the subscription past due and sends
    /// `invoice.payment_failed`. Returns the open invoice.
    pub async fn fail_renewal(&self, customer: &str, subscription: &str) -> String {
        self.set_card(customer, "4000002760003184").await;
        self.post(
            "invoiceitems",
            &[
                ("customer", customer),
                ("amount", "2900"),
                ("currency", "usd"),
                ("subscription", subscription),
            ],
        )
        .await;
        let invoice = self
            .post(
                "invoices",
                &[("customer", customer), ("subscription", subscription)],
            )
            .await;
        let invoice = invoice["id"].as_str().expect("invoice").to_owned();
        let paid = self.post(&format!("invoices/{invoice}/pay"), &[]).await;
        let pi = paid["payment_intent"].as_str().expect("payment intent");
        let intent = self.get(&format!("payment_intents/{pi}")).await;
        let secret = intent["client_secret"].as_str().expect("client secret");
        self.post(
            &format!("payment_intents/{pi}/_authenticate"),
            &[("client_secret", secret), ("success", "false")],
        )
        .await;
        let sub = self.get(&format!("subscriptions/{subscription}")).await;
        assert_eq!(sub["status"], "past_due", "{sub}");
        invoice
    }

    /// Pays the open `invoice` with a working card (sends `invoice.payment_succeeded`).
    pub async fn pay(&self, customer: &str, invoice: &str) {
        self.set_card(customer, "4242424242424242").await;
        let paid = self.post(&format!("invoices/{invoice}/pay"), &[]).await;
        assert_eq!(paid["status"], "paid", "{paid}");
    }
}

/// One request the recording peer received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The form body, decoded, in order.
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Default)]
struct PeerState {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// How many of the next requests to answer with a 500.
    fail_next: Arc<Mutex<u32>>,
    /// Answers set by the test for a path (e.g. a subscription list localstripe cannot make).
    answers: Arc<Mutex<std::collections::HashMap<String, Value>>>,
}

/// A loopback HTTP server standing in for api.stripe.com where localstripe cannot: it records
/// each request and answers with Stripe's documented response for that endpoint.
pub struct RecordingStripe {
    pub url: String,
    state: PeerState,
}

pub const CHECKOUT_URL: &str = "https://checkout.stripe.com/c/pay/cs_test_a1qleet";
pub const PORTAL_URL: &str = "https://billing.stripe.com/p/session/test_qleet";

impl RecordingStripe {
    pub async fn start() -> RecordingStripe {
        let state = PeerState::default();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        RecordingStripe { url, state }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Requests to `path` (e.g. `/v1/checkout/sessions`).
    pub fn to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    pub fn fail_next(&self, n: u32) {
        *self.state.fail_next.lock().expect("lock") = n;
    }

    /// Answers `body` to every request for `path` from now on.
    pub fn answer(&self, path: &str, body: Value) {
        self.state
            .answers
            .lock()
            .expect("lock")
            .insert(path.to_owned(), body);
    }
}

async fn answer(
    State(state): State<PeerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let form = url::form_urlencoded::parse(&body).into_owned().collect();
    let path = uri.path().to_owned();
    state.requests.lock().expect("lock").push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        headers,
        form,
    });
    {
        let mut fail = state.fail_next.lock().expect("lock");
        if *fail > 0 {
            *fail -= 1;
            let error =
                json!({ "error": { "type": "api_error", "message": "An unknown error occurred" } });
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(error),
            )
                .into_response();
        }
    }
    if let Some(body) = state.answers.lock().expect("lock").get(&path).cloned() {
        return axum::Json(body).into_response();
    }
    let now = chrono::Utc::now().timestamp();
    // A new customer id per customer, as Stripe makes them.
    let customer_id = format!("cus_Qleet{}", state.requests.lock().expect("lock").len());
    // Trimmed copies of the example responses in Stripe's API reference.
    let body = match path.as_str() {
        "/v1/customers" => json!({
            "id": customer_id, "object": "customer", "address": null, "balance": 0,
            "created": now, "currency": null, "default_source": null, "delinquent": false,
            "description": null, "discount": null, "email": null, "invoice_prefix": "0759376C",
            "invoice_settings": { "custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null },
            "livemode": false, "metadata": {}, "name": null, "next_invoice_sequence": 1,
            "phone": null, "preferred_locales": [], "shipping": null, "tax_exempt": "none", "test_clock": null
        }),
        "/v1/checkout/sessions" => json!({
            "id": "cs_test_a1qleet", "object": "checkout.session", "cancel_url": null,
            "client_reference_id": null, "created": now, "currency": null, "customer": "cus_NffrFeUfNV2Hib",
            "expires_at": now + 86400, "livemode": false, "metadata": {}, "mode": "subscription",
            "payment_status": "unpaid", "status": "open", "subscription": null,
            "success_url": "https://example.com/success", "url": CHECKOUT_URL
        }),
        "/v1/billing_portal/sessions" => json!({
            "id": "bps_1MrSjzLkdIwHu7ixex0IvU9b", "object": "billing_portal.session",
            "configuration": "bpc_1MAhNDLkdIwHu7ixckACO1Jq", "created": now,
            "customer": "cus_NffrFeUfNV2Hib", "flow": null, "livemode": false, "locale": null,
            "on_behalf_of": null, "return_url": "https://example.com/account", "url": PORTAL_URL
        }),
        "/v1/billing/meter_events" => json!({
            "object": "billing.meter_event", "created": now, "event_name": "object_hours",
            "identifier": "id", "livemode": false, "payload": {}, "timestamp": now
        }),
        _ => {
            return (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": { "type": "invalid_request_error", "message": "Unrecognized request URL" } })),
            )
                .into_response();
        }
    };
    axum::Json(body).into_response()
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    /// Added before each request is forwarded.
    delay: Arc<Mutex<Duration>>,
    /// Answer every request with Stripe's 503 instead of forwarding it.
    down: Arc<std::sync::atomic::AtomicBool>,
    /// While true, requests wait (Stripe not answering).
    paused: tokio::sync::watch::Sender<bool>,
    /// Requests waiting on the pause right now.
    waiting: tokio::sync::watch::Sender<usize>,
}

/// A loopback proxy in front of localstripe that adds latency, holds requests or plays
/// unreachable, to see what Stripe being slow or down does to Qleet.
pub struct StripeProxy {
    pub url: String,
    state: ProxyState,
}

impl StripeProxy {
    pub async fn start(upstream: &str) -> StripeProxy {
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            delay: Arc::default(),
            down: Arc::default(),
            paused: tokio::sync::watch::channel(false).0,
            waiting: tokio::sync::watch::channel(0).0,
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        StripeProxy { url, state }
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("lock") = delay;
    }

    pub fn set_down(&self, down: bool) {
        self.state
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds every request until [`StripeProxy::resume`].
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// Returns once at least `n` requests are held by the pause.
    pub async fn wait_for_held(&self, n: usize) {
        let mut rx = self.state.waiting.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|w| *w >= n))
            .await
            .expect("Stripe was never called")
            .expect("proxy alive");
    }
}

async fn forward(
    State(state): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if state.down.load(std::sync::atomic::Ordering::SeqCst) {
        let error = json!({ "error": { "type": "api_error", "message": "Stripe is unreachable (test proxy)" } });
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(error),
        )
            .into_response();
    }
    let mut paused = state.paused.subscribe();
    if *paused.borrow() {
        state.waiting.send_modify(|w| *w += 1);
        let _ = paused.wait_for(|p| !*p).await;
        state.waiting.send_modify(|w| *w -= 1);
    }
    let delay = *state.delay.lock().expect("lock");
    tokio::time::sleep(delay).await;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = state
        .http
        .request(method, format!("{}{path}", state.upstream))
        .body(body);
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "stripe-version",
    ] {
        if let Some(v) = headers.get(name) {
            request = request.header(name, v);
        }
    }
    match request.send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            (status, [("content-type", "application/json")], body).into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

//! Billing against real Stripe peers: localstripe (customers, legacy plans, subscriptions,
//! invoices, real signed webhooks) and, for what localstripe lacks (Checkout, the Customer
//! Portal, billing-meter events), a recording peer that checks the exact request Qleet sends and
//! answers with Stripe's documented response.

use std::time::Duration;

use qleet::config::StripeConfig;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::stripe::{
    CHECKOUT_URL, LocalStripe, PORTAL_URL, RecordingStripe, SECRET_KEY, StripeProxy,
};
use crate::support::{Auth, Session, TestApp, error_code, spawn_app, spawn_app_with};

const WEBHOOK_SECRET: &str = "whsec_qleet_test_secret";
const BILLING: &str = "query($o: String!) { organization(slug: $o) { billing { plan { id } subscriptionStatus pastDue pastDueSince suspendAfter suspended hasCustomer usage { controlPlanes } heldControlPlanes { id name reason } } } }";
const CHECKOUT: &str = "mutation($o: String!, $p: String!) { startCheckout(org: $o, plan: $p) }";
const PORTAL: &str = "mutation($o: String!) { billingPortalUrl(org: $o) }";
const CREATE_CP: &str =
    "mutation($o: String!, $n: String!) { createControlPlane(org: $o, name: $n) { id } }";

/// Qleet billing through Stripe at `api_base`, plans Team and Business priced.
async fn spawn_billing(
    api_base: &str,
    customize: impl FnOnce(&mut qleet::config::Config),
) -> TestApp {
    spawn_app_with(move |c| {
        use_stripe(c, api_base);
        customize(c);
    })
    .await
}

/// Billing through Stripe at `api_base`, plans Team and Business priced.
pub(crate) fn use_stripe(c: &mut qleet::config::Config, api_base: &str) {
    c.billing.stripe = Some(StripeConfig {
        secret_key: SecretString::from(SECRET_KEY.to_owned()),
        webhook_secret: SecretString::from(WEBHOOK_SECRET.to_owned()),
        api_base: url::Url::parse(&format!("{api_base}/")).expect("url"),
        usage_price: None,
        meter_event: None,
    });
    c.billing.plans = qleet::billing::plans::Plans::from_config(
        None,
        Some("team=price_team,business=price_business"),
        "free",
    )
    .expect("plans");
}

async fn billing(app: &TestApp, who: &Session, org: &str) -> Value {
    app.gql_ok(Auth::Session(who), BILLING, json!({ "o": org }))
        .await["organization"]["billing"]
        .clone()
}

/// Polls the organisation's billing until `done` holds (webhooks arrive asynchronously).
async fn wait_billing(
    app: &TestApp,
    who: &Session,
    org: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..300 {
        let b = billing(app, who, org).await;
        if done(&b) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} never happened: {}", billing(app, who, org).await);
}

async fn org_id(app: &TestApp, slug: &str) -> Uuid {
    sqlx::query_scalar("select id from organizations where slug = $1")
        .bind(slug)
        .fetch_one(&app.pool)
        .await
        .expect("org")
}

async fn customer_of(app: &TestApp, slug: &str) -> Option<String> {
    sqlx::query_scalar(
        "select b.stripe_customer_id from billing_accounts b join organizations o on o.id = b.org_id where o.slug = $1",
    )
    .bind(slug)
    .fetch_optional(&app.pool)
    .await
    .expect("account")
    .flatten()
}

/// The organisation's Stripe customer in localstripe, made by Qleet's own Checkout call.
/// localstripe has no Checkout, so that call fails after the customer step; the customer it
/// made is stored and reused.
pub(crate) async fn customer_in_localstripe(
    app: &TestApp,
    ls: &LocalStripe,
    owner: &Session,
    org: &str,
) -> String {
    let body = app
        .gql(
            Auth::Session(owner),
            CHECKOUT,
            json!({ "o": org, "p": "team" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("STRIPE_UNAVAILABLE"),
        "localstripe has no Checkout: {body}"
    );
    let customer = customer_of(app, org).await.expect("customer stored");
    let remote = ls.get(&format!("customers/{customer}")).await;
    assert_eq!(
        remote["metadata"]["org_id"],
        org_id(app, org).await.to_string(),
        "{remote}"
    );
    customer
}

/// A Stripe event JSON body.
pub(crate) fn event(id: &str, kind: &str, created: i64, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": created,
        "api_version": "2023-10-16", "livemode": false,
        "data": { "object": object },
    }))
    .expect("json")
}

pub(crate) async fn deliver(app: &TestApp, body: &[u8], signature: &str) -> (u16, String) {
    let resp = app
        .http
        .post(format!("{}/webhooks/stripe", app.url))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("webhook");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn sign(body: &[u8]) -> String {
    qleet::billing::webhook::sign(body, WEBHOOK_SECRET, now())
}

/// Waits until the stored event `id` has been applied by the billing worker (it answers 200 as
/// soon as the event is stored); returns its warning, if any.
pub(crate) async fn wait_applied(app: &TestApp, id: &str) -> Option<String> {
    for _ in 0..300 {
        let row: Option<(Option<chrono::DateTime<chrono::Utc>>, Option<String>)> =
            sqlx::query_as("select applied_at, warning from stripe_events where id = $1")
                .bind(id)
                .fetch_optional(&app.pool)
                .await
                .expect("event");
        if let Some((Some(_), warning)) = row {
            return warning;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("event {id} was never applied");
}

pub(crate) async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn webhook_signatures_are_checked_and_each_event_applies_once() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |_| {}).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub id");
    let body = event(
        "evt_team_1",
        "customer.subscription.updated",
        now(),
        json!({ "id": sub_id, "object": "subscription", "customer": customer, "status": "active" }),
    );
    let events = "select count(*) from stripe_events";
    let applied = "select count(*) from audit_log where action = 'billing.subscription'";

    // Refused: no effect at all.
    let good = sign(&body);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'1').expect("a digit");
    tampered[at] = b'2';
    let wrong_secret = qleet::billing::webhook::sign(&body, "whsec_someone_else", now());
    let stale = qleet::billing::webhook::sign(&body, WEBHOOK_SECRET, now() - 600);
    for (what, payload, signature) in [
        ("tampered body", tampered.as_slice(), good.as_str()),
        ("wrong secret", body.as_slice(), wrong_secret.as_str()),
        ("stale timestamp", body.as_slice(), stale.as_str()),
        ("no signature", body.as_slice(), ""),
    ] {
        let (status, text) = deliver(&app, payload, signature).await;
        assert_eq!(status, 400, "{what}: {text}");
    }
    assert_eq!(count(&app, events).await, 0);
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "free");

    // Valid: the plan follows the subscription Stripe has.
    let (status, text) = deliver(&app, &body, &good).await;
    assert_eq!((status, text.as_str()), (200, "queued"));
    assert_eq!(wait_applied(&app, "evt_team_1").await, None);
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "team");
    assert_eq!(count(&app, events).await, 1);
    assert_eq!(count(&app, applied).await, 1);

    // The same event again (Stripe retries): accepted, not applied a second time — even though
    // the subscription has since changed, this delivery does nothing.
    let item = sub["items"]["data"][0]["id"].as_str().expect("item");
    ls.post(
        &format!("subscriptions/{sub_id}"),
        &[("items[0][id]", item), ("items[0][plan]", "price_business")],
    )
    .await;
    let (status, text) = deliver(&app, &body, &sign(&body)).await;
    assert_eq!((status, text.as_str()), (200, "duplicate"));
    assert_eq!(count(&app, events).await, 1);
    assert_eq!(count(&app, applied).await, 1);
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "team");

    // Garbage that is correctly signed is refused without effect.
    let junk = b"not json";
    let (status, _) = deliver(&app, junk, &sign(junk)).await;
    assert_eq!(status, 400);
    assert_eq!(count(&app, events).await, 1);
}

#[tokio::test]
async fn subscription_events_out_of_order_end_in_stripes_current_state() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |_| {}).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub id");
    let created_team = now() - 60;
    let item = sub["items"]["data"][0]["id"].as_str().expect("item");
    ls.post(
        &format!("subscriptions/{sub_id}"),
        &[("items[0][id]", item), ("items[0][plan]", "price_business")],
    )
    .await;
    let object = |plan: &str| {
        json!({ "id": sub_id, "object": "subscription", "customer": customer, "status": "active",
                "items": { "data": [ { "plan": { "id": plan } } ] } })
    };
    // The newer event (upgrade to Business) arrives first, the older one (Team) after it.
    let newer = event(
        "evt_new",
        "customer.subscription.updated",
        now(),
        object("price_business"),
    );
    let older = event(
        "evt_old",
        "customer.subscription.updated",
        created_team,
        object("price_team"),
    );
    assert_eq!(deliver(&app, &newer, &sign(&newer)).await.0, 200);
    wait_applied(&app, "evt_new").await;
    assert_eq!(
        billing(&app, &alice, "acme").await["plan"]["id"],
        "business"
    );
    assert_eq!(deliver(&app, &older, &sign(&older)).await.0, 200);
    wait_applied(&app, "evt_old").await;
    assert_eq!(
        billing(&app, &alice, "acme").await["plan"]["id"],
        "business",
        "a late event must not roll the plan back"
    );

    // A late `deleted` of an old subscription does not cancel the live one.
    let old_sub = ls.subscribe(&customer, "price_team").await;
    let old_id = old_sub["id"].as_str().expect("id");
    ls.delete(&format!("subscriptions/{old_id}")).await;
    let deleted = event(
        "evt_old_deleted",
        "customer.subscription.deleted",
        now(),
        json!({ "id": old_id, "object": "subscription", "customer": customer, "status": "canceled" }),
    );
    assert_eq!(deliver(&app, &deleted, &sign(&deleted)).await.0, 200);
    wait_applied(&app, "evt_old_deleted").await;
    let b = billing(&app, &alice, "acme").await;
    assert_eq!(b["plan"]["id"], "business", "{b}");
    assert_eq!(b["subscriptionStatus"], "active");
}

#[tokio::test]
async fn localstripe_webhooks_drive_entitlements_quotas_and_plan_changes() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |c| {
        if let Some(free) = c.billing.plans.plan_mut("free") {
            free.control_planes = Some(1);
        }
        if let Some(team) = c.billing.plans.plan_mut("team") {
            team.control_planes = Some(2);
        }
    })
    .await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let cps = "select count(*) from control_planes";

    // Free: one control plane; the second is refused, naming the limit and the plan that lifts it.
    app.gql_ok(
        Auth::Session(&alice),
        CREATE_CP,
        json!({ "o": "acme", "n": "one" }),
    )
    .await;
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "two" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["limit"].as_str(),
            ext["plan"].as_str(),
            ext["upgradeTo"].as_str(),
            ext["max"].as_u64()
        ),
        (Some("control planes"), Some("free"), Some("team"), Some(1)),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("team")
    );
    assert_eq!(count(&app, cps).await, 1, "nothing was created");

    // Subscribing (what Checkout does) sends real signed webhooks; the plan becomes Team.
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub id").to_owned();
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;
    app.gql_ok(
        Auth::Session(&alice),
        CREATE_CP,
        json!({ "o": "acme", "n": "two" }),
    )
    .await;
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "three" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["upgradeTo"], "business");
    assert_eq!(count(&app, cps).await, 2);

    // A plan change (as the portal makes it). localstripe sends no `updated` event for it, so
    // the test delivers one naming only the subscription; Qleet reads the plan from Stripe.
    let item = sub["items"]["data"][0]["id"].as_str().expect("item");
    ls.post(
        &format!("subscriptions/{sub_id}"),
        &[("items[0][id]", item), ("items[0][plan]", "price_business")],
    )
    .await;
    let updated = event(
        "evt_plan_change",
        "customer.subscription.updated",
        now(),
        json!({ "id": sub_id, "object": "subscription", "customer": customer }),
    );
    assert_eq!(deliver(&app, &updated, &sign(&updated)).await.0, 200);
    wait_applied(&app, "evt_plan_change").await;
    assert_eq!(
        billing(&app, &alice, "acme").await["plan"]["id"],
        "business"
    );
    app.gql_ok(
        Auth::Session(&alice),
        CREATE_CP,
        json!({ "o": "acme", "n": "three" }),
    )
    .await;

    // Cancelled (localstripe's real `customer.subscription.deleted`): back to the free plan.
    ls.delete(&format!("subscriptions/{sub_id}")).await;
    let b = wait_billing(&app, &alice, "acme", "the cancellation", |b| {
        b["subscriptionStatus"] == "canceled"
    })
    .await;
    assert_eq!(b["plan"]["id"], "free");
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "four" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    // The subscription events localstripe sent were stored (each once: `stripe_events.id` is
    // the primary key, so counting duplicate ids could only ever answer 0). The status above
    // may come from an earlier event re-reading the subscription from Stripe, so the deletion's
    // own webhook can still be on its way: wait for it (10 s at most).
    let mut stored = 0;
    for _ in 0..100 {
        stored = count(
            &app,
            "select count(distinct type) from stripe_events \
             where type in ('customer.subscription.created', 'customer.subscription.deleted')",
        )
        .await;
        if stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, 2);
    app.stop().await;
}

#[tokio::test]
async fn checkout_and_portal_send_the_documented_requests_and_use_stripes_answers() {
    let peer = RecordingStripe::start().await;
    let app = spawn_billing(&peer.url, |c| {
        if let Some(s) = c.billing.stripe.as_mut() {
            s.usage_price = Some("price_object_hours".into());
        }
    })
    .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let org = org_id(&app, "acme").await;

    let data = app
        .gql_ok(
            Auth::Session(&alice),
            CHECKOUT,
            json!({ "o": "acme", "p": "team" }),
        )
        .await;
    assert_eq!(data["startCheckout"], CHECKOUT_URL);
    let customers = peer.to("/v1/customers");
    assert_eq!(customers.len(), 1);
    let c = &customers[0];
    assert_eq!(c.method, "POST");
    assert_eq!(
        c.header("authorization"),
        Some(format!("Bearer {SECRET_KEY}").as_str())
    );
    assert_eq!(
        c.header("idempotency-key"),
        Some(format!("qleet-customer-{org}").as_str())
    );
    assert_eq!(
        c.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(c.header("stripe-version").is_some());
    assert_eq!(c.field("metadata[org_id]"), Some(org.to_string().as_str()));
    assert_eq!(c.field("metadata[org_slug]"), Some("acme"));
    assert_eq!(c.field("name"), Some("Org acme"));
    let sessions = peer.to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    let expected = [
        ("mode", "subscription".to_owned()),
        (
            "customer",
            customer_of(&app, "acme").await.expect("customer"),
        ),
        ("client_reference_id", org.to_string()),
        ("line_items[0][price]", "price_team".to_owned()),
        ("line_items[0][quantity]", "1".to_owned()),
        ("line_items[1][price]", "price_object_hours".to_owned()),
        ("subscription_data[metadata][org_id]", org.to_string()),
        (
            "success_url",
            format!("{}/orgs/acme/billing?checkout=success", app.url),
        ),
        (
            "cancel_url",
            format!("{}/orgs/acme/billing?checkout=cancelled", app.url),
        ),
    ];
    for (field, value) in expected {
        assert_eq!(
            s.field(field),
            Some(value.as_str()),
            "{field} in {:?}",
            s.form
        );
    }
    assert_eq!(
        s.field("line_items[1][quantity]"),
        None,
        "metered prices take no quantity"
    );

    // Open at least Stripe's minimum of 30 minutes, so the claim below cannot outlive it.
    let expires: i64 = s
        .field("expires_at")
        .and_then(|t| t.parse().ok())
        .expect("expires_at");
    assert!(
        (now() + 30 * 60..=now() + 32 * 60).contains(&expires),
        "{expires}"
    );

    // While that Checkout is open: the same plan reuses it, another plan is refused, and Stripe
    // is not asked for a second session (two would make two subscriptions).
    let again = app
        .gql_ok(
            Auth::Session(&alice),
            CHECKOUT,
            json!({ "o": "acme", "p": "team" }),
        )
        .await;
    assert_eq!(again["startCheckout"], CHECKOUT_URL);
    let body = app
        .gql(
            Auth::Session(&alice),
            CHECKOUT,
            json!({ "o": "acme", "p": "business" }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
    assert_eq!(peer.to("/v1/checkout/sessions").len(), 1);

    // Once Stripe says it expired, another Checkout may start; the customer is reused.
    let expired = event(
        "evt_checkout_expired",
        "checkout.session.expired",
        now(),
        json!({ "id": "cs_test_a1qleet", "object": "checkout.session", "customer": customer_of(&app, "acme").await, "client_reference_id": org.to_string(), "status": "expired" }),
    );
    assert_eq!(deliver(&app, &expired, &sign(&expired)).await.0, 200);
    wait_applied(&app, "evt_checkout_expired").await;
    app.gql_ok(
        Auth::Session(&alice),
        CHECKOUT,
        json!({ "o": "acme", "p": "business" }),
    )
    .await;
    assert_eq!(peer.to("/v1/customers").len(), 1);
    assert_eq!(
        peer.to("/v1/checkout/sessions")[1].field("line_items[0][price]"),
        Some("price_business")
    );

    let data = app
        .gql_ok(Auth::Session(&alice), PORTAL, json!({ "o": "acme" }))
        .await;
    assert_eq!(data["billingPortalUrl"], PORTAL_URL);
    let portal = peer.to("/v1/billing_portal/sessions");
    assert_eq!(portal.len(), 1);
    assert_eq!(
        portal[0].field("customer"),
        customer_of(&app, "acme").await.as_deref()
    );
    assert_eq!(
        portal[0].field("return_url"),
        Some(format!("{}/orgs/acme/billing", app.url).as_str())
    );

    // Bad plans are refused before Stripe is asked.
    let before = peer.requests().len();
    for plan in ["free", "gold", ""] {
        let body = app
            .gql(
                Auth::Session(&alice),
                CHECKOUT,
                json!({ "o": "acme", "p": plan }),
            )
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{plan:?}: {body}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], "plan");
    }
    assert_eq!(peer.requests().len(), before);

    // Stripe failing is a clear error, not a crash.
    peer.fail_next(1);
    let body = app
        .gql(Auth::Session(&alice), PORTAL, json!({ "o": "acme" }))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("STRIPE_UNAVAILABLE"),
        "{body}"
    );

    // Audit trail.
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where action like 'billing.%' order by id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(
        actions,
        [
            "billing.customer_created",
            "billing.checkout_started",
            "billing.checkout_started",
            "billing.portal_opened"
        ]
    );
}

#[tokio::test]
async fn only_owners_and_admins_reach_billing_and_other_orgs_are_refused() {
    let peer = RecordingStripe::start().await;
    let app = spawn_billing(&peer.url, |_| {}).await;
    let owner = app.sign_in("owner@example.test").await;
    app.create_org(&owner, "acme").await;
    let admin = app
        .add_member(&owner, "acme", "admin@example.test", "ADMIN")
        .await;
    let member = app
        .add_member(&owner, "acme", "member@example.test", "MEMBER")
        .await;
    let viewer = app
        .add_member(&owner, "acme", "viewer@example.test", "VIEWER")
        .await;
    let admin_token = app.create_token(&owner, "acme", "ADMIN").await;
    let member_token = app.create_token(&owner, "acme", "MEMBER").await;
    let outsider = app.sign_in("mallory@example.test").await;
    app.create_org(&outsider, "evil").await;
    let outsider_token = app.create_token(&outsider, "evil", "OWNER").await;

    let cases: Vec<(&str, Auth<'_>, Option<&str>)> = vec![
        ("anonymous", Auth::Anonymous, Some("UNAUTHENTICATED")),
        ("viewer", Auth::Session(&viewer), Some("FORBIDDEN")),
        ("member", Auth::Session(&member), Some("FORBIDDEN")),
        (
            "member token",
            Auth::Token(&member_token),
            Some("FORBIDDEN"),
        ),
        (
            "other org's owner",
            Auth::Session(&outsider),
            Some("NOT_FOUND"),
        ),
        (
            "other org's token",
            Auth::Token(&outsider_token),
            Some("NOT_FOUND"),
        ),
        ("admin", Auth::Session(&admin), None),
        ("admin token", Auth::Token(&admin_token), None),
        ("owner", Auth::Session(&owner), None),
    ];
    for (who, auth, want) in cases {
        for (name, query, vars) in [
            (
                "startCheckout",
                CHECKOUT,
                json!({ "o": "acme", "p": "team" }),
            ),
            ("billingPortalUrl", PORTAL, json!({ "o": "acme" })),
            ("billing", BILLING, json!({ "o": "acme" })),
        ] {
            let requests = peer.requests().len();
            let body = app.gql(auth, query, vars).await;
            assert_eq!(
                error_code(&body).as_deref(),
                want,
                "{name} by {who}: {body}"
            );
            if want.is_some() {
                assert_eq!(
                    peer.requests().len(),
                    requests,
                    "{name} by {who} reached Stripe"
                );
            }
        }
    }
    // Nobody outside made a customer for acme, and evil has none either.
    assert_eq!(customer_of(&app, "evil").await, None);
    // The outsider's own organisation is still theirs to bill.
    let data = app
        .gql_ok(
            Auth::Session(&outsider),
            CHECKOUT,
            json!({ "o": "evil", "p": "team" }),
        )
        .await;
    assert_eq!(data["startCheckout"], CHECKOUT_URL);
}

#[tokio::test]
async fn without_stripe_every_org_has_the_default_plan_and_billing_calls_say_so() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let b = billing(&app, &alice, "acme").await;
    assert_eq!(b["plan"]["id"], "free");
    assert_eq!(b["pastDue"], false);
    for (query, vars) in [
        (CHECKOUT, json!({ "o": "acme", "p": "team" })),
        (PORTAL, json!({ "o": "acme" })),
    ] {
        let body = app.gql(Auth::Session(&alice), query, vars).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BILLING_NOT_CONFIGURED"),
            "{body}"
        );
    }
    let (status, _) = deliver(&app, b"{}", "t=1,v1=00").await;
    assert_eq!(status, 404, "no webhook endpoint without Stripe");
    // Free allows one control plane.
    app.gql_ok(
        Auth::Session(&alice),
        CREATE_CP,
        json!({ "o": "acme", "n": "one" }),
    )
    .await;
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "two" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    app.stop().await;
}

/// Through the gateway, like the control-plane tests.
async fn through_gateway(app: &TestApp, who: &Session, id: &str) -> (u16, Value) {
    let query = json!({ "query": "{ controlPlane { id } }" });
    app.gateway(Auth::Session(who), id, "graphql", query).await
}

async fn wait_cp(app: &TestApp, who: &Session, id: &str, want: &str) {
    let q = "query($o: String!, $id: UUID!) { organization(slug: $o) { controlPlane(id: $id) { status } } }";
    for _ in 0..600 {
        let data = app
            .gql_ok(Auth::Session(who), q, json!({ "o": "acme", "id": id }))
            .await;
        if data["organization"]["controlPlane"]["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("control plane {id} never reached {want}");
}

#[tokio::test]
async fn an_unpaid_organisation_is_suspended_after_the_grace_period_and_resumed_when_it_pays() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |c| {
        c.billing.grace = Duration::from_secs(3);
        c.billing.interval = Duration::from_millis(200);
    })
    .await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub");
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;
    let id = app
        .gql_ok(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "prod" }),
        )
        .await["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_cp(&app, &alice, &id, "READY").await;
    assert_eq!(through_gateway(&app, &alice, &id).await.0, 200);

    // The renewal fails: localstripe marks the subscription past due and sends
    // invoice.payment_failed. Owners see it (the banner reads this), with the deadline.
    let invoice = ls.fail_renewal(&customer, sub_id).await;
    let b = wait_billing(&app, &alice, "acme", "past due", |b| b["pastDue"] == true).await;
    let since: chrono::DateTime<chrono::Utc> = b["pastDueSince"]
        .as_str()
        .expect("since")
        .parse()
        .expect("time");
    let after: chrono::DateTime<chrono::Utc> = b["suspendAfter"]
        .as_str()
        .expect("after")
        .parse()
        .expect("time");
    assert_eq!(after - since, chrono::Duration::seconds(3));
    assert_eq!(
        b["plan"]["id"], "team",
        "the plan stays during the grace period"
    );

    // After the grace period the control plane is suspended and says why.
    wait_cp(&app, &alice, &id, "SUSPENDED").await;
    let (code, body) = through_gateway(&app, &alice, &id).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (402, Some("SUBSCRIPTION_PAST_DUE")),
        "{body}"
    );
    assert!(billing(&app, &alice, "acme").await["suspended"] == true);
    let resume = app
        .gql(
            Auth::Session(&alice),
            "mutation($o: String!, $id: UUID!) { resumeControlPlane(org: $o, id: $id) { id } }",
            json!({ "o": "acme", "id": id }),
        )
        .await;
    assert_eq!(
        error_code(&resume).as_deref(),
        Some("SUBSCRIPTION_PAST_DUE"),
        "{resume}"
    );
    let create = app
        .gql(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "more" }),
        )
        .await;
    assert_eq!(
        error_code(&create).as_deref(),
        Some("SUBSCRIPTION_PAST_DUE"),
        "{create}"
    );
    // Its data is kept.
    let db = format!("qleet_cp_{}", id.replace('-', ""));
    let kept: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&db)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(kept, 1);

    // Paid: localstripe sends invoice.payment_succeeded; the control plane comes back by itself.
    ls.pay(&customer, &invoice).await;
    wait_billing(&app, &alice, "acme", "paid", |b| b["pastDue"] == false).await;
    wait_cp(&app, &alice, &id, "READY").await;
    let (code, body) = through_gateway(&app, &alice, &id).await;
    assert_eq!(code, 200, "{body}");
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where action in ('billing.suspend', 'billing.resume') order by id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(actions, ["billing.suspend", "billing.resume"]);
    app.stop().await;
}

#[tokio::test]
async fn usage_is_reported_in_batches_once_even_when_a_report_is_retried() {
    let peer = RecordingStripe::start().await;
    let app = spawn_billing(&peer.url, |c| {
        if let Some(s) = c.billing.stripe.as_mut() {
            s.meter_event = Some("qleet_object_hours".into());
        }
        // The worker stays out of the way; the test drives batching and reporting.
        c.billing.interval = Duration::from_secs(3600);
        c.billing.usage_sample_interval = Duration::from_secs(3600);
    })
    .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    app.gql_ok(Auth::Session(&alice), PORTAL, json!({ "o": "acme" }))
        .await;
    let org = org_id(&app, "acme").await;
    let cp: Uuid = app
        .gql_ok(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "prod" }),
        )
        .await["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let billing = qleet::billing::Billing::new(app_billing_config(&peer.url));
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    let gap = Duration::from_secs(3600);
    let sample = |objects: u32, minutes: i64| {
        qleet::billing::usage::record_sample(
            &app.pool,
            org,
            cp,
            objects,
            t0 + chrono::Duration::minutes(minutes),
            gap,
        )
    };
    // 10 objects for an hour (two half-hour samples after the first) = 10 object-hours.
    sample(10, 0).await.expect("sample");
    sample(10, 30).await.expect("sample");
    sample(10, 60).await.expect("sample");
    // A sample not after the previous one covers nothing.
    sample(99, 60).await.expect("sample");
    assert_eq!(
        qleet::billing::usage::batch(&app.pool)
            .await
            .expect("batch"),
        1
    );
    assert_eq!(
        qleet::billing::usage::report(&app.pool, &billing, uuid::Uuid::new_v4())
            .await
            .expect("report"),
        1
    );
    let sent = peer.to("/v1/billing/meter_events");
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    let report_id: Uuid = sqlx::query_scalar("select id from usage_reports")
        .fetch_one(&app.pool)
        .await
        .expect("report row");
    assert_eq!(r.field("event_name"), Some("qleet_object_hours"));
    assert_eq!(r.field("payload[value]"), Some("10"));
    assert_eq!(
        r.field("payload[stripe_customer_id]"),
        customer_of(&app, "acme").await.as_deref()
    );
    assert_eq!(r.field("identifier"), Some(report_id.to_string().as_str()));
    assert_eq!(
        r.field("timestamp"),
        Some(
            (t0 + chrono::Duration::minutes(60))
                .timestamp()
                .to_string()
                .as_str()
        )
    );
    assert_eq!(
        r.header("idempotency-key"),
        Some(format!("qleet-usage-{report_id}").as_str())
    );

    // Nothing new: nothing sent.
    assert_eq!(
        qleet::billing::usage::batch(&app.pool)
            .await
            .expect("batch"),
        0
    );
    assert_eq!(
        qleet::billing::usage::report(&app.pool, &billing, uuid::Uuid::new_v4())
            .await
            .expect("report"),
        0
    );
    assert_eq!(peer.to("/v1/billing/meter_events").len(), 1);

    // A crash after Stripe accepted the report but before it was marked sent: the retry carries
    // the same identifier and idempotency key, so Stripe counts it once.
    sqlx::query("update usage_reports set reported_at = null")
        .execute(&app.pool)
        .await
        .expect("rewind");
    qleet::billing::usage::report(&app.pool, &billing, uuid::Uuid::new_v4())
        .await
        .expect("report");
    let sent = peer.to("/v1/billing/meter_events");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].field("identifier"), sent[0].field("identifier"));
    assert_eq!(
        sent[1].header("idempotency-key"),
        sent[0].header("idempotency-key")
    );

    // Less than an hour carries over; Stripe failing leaves the report for the next round.
    sample(1, 90).await.expect("sample");
    assert_eq!(
        qleet::billing::usage::batch(&app.pool)
            .await
            .expect("batch"),
        0
    );
    sample(1, 120).await.expect("sample");
    assert_eq!(
        qleet::billing::usage::batch(&app.pool)
            .await
            .expect("batch"),
        1
    );
    peer.fail_next(1);
    assert_eq!(
        qleet::billing::usage::report(&app.pool, &billing, uuid::Uuid::new_v4())
            .await
            .expect("report"),
        0
    );
    assert_eq!(
        qleet::billing::usage::report(&app.pool, &billing, uuid::Uuid::new_v4())
            .await
            .expect("report"),
        1
    );
    let sent = peer.to("/v1/billing/meter_events");
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[3].field("payload[value]"), Some("1"));
    assert_eq!(
        sent[2].header("idempotency-key"),
        sent[3].header("idempotency-key")
    );
    assert_ne!(sent[3].field("identifier"), sent[0].field("identifier"));
    let unsent: i64 = count(
        &app,
        "select count(*) from usage_reports where reported_at is null",
    )
    .await;
    assert_eq!(unsent, 0);
    app.stop().await;
}

fn app_billing_config(api_base: &str) -> qleet::config::BillingConfig {
    let mut config = qleet::config::BillingConfig::dev_default();
    config.stripe = Some(StripeConfig {
        secret_key: SecretString::from(SECRET_KEY.to_owned()),
        webhook_secret: SecretString::from(WEBHOOK_SECRET.to_owned()),
        api_base: url::Url::parse(&format!("{api_base}/")).expect("url"),
        usage_price: None,
        meter_event: Some("qleet_object_hours".into()),
    });
    config
}

fn buckets(n: usize) -> String {
    let mut yaml = String::from(
        "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/q\", defaultRegion: eu-west-1}\n",
    );
    for i in 1..n {
        yaml.push_str(&format!(
            "---\nkind: ObjectStorageBucket\nmetadata: {{name: b{i}}}\nspec: {{account: AwsAccount/main}}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn object_and_agent_quotas_follow_the_plan_and_an_upgrade_lifts_them() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |c| {
        if let Some(free) = c.billing.plans.plan_mut("free") {
            free.objects = Some(3);
            free.agents = Some(1);
        }
        if let Some(team) = c.billing.plans.plan_mut("team") {
            team.objects = Some(10);
            team.agents = Some(2);
        }
    })
    .await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let cp = app
        .gql_ok(
            Auth::Session(&alice),
            CREATE_CP,
            json!({ "o": "acme", "n": "prod" }),
        )
        .await["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wait_cp(&app, &alice, &cp, "READY").await;
    let cp: Uuid = cp.parse().expect("uuid");
    let apply = |n: usize| json!({"query": "mutation($y: String!) { apply(yaml: $y) { summary { create } } }", "variables": {"y": buckets(n)}});
    let objects = json!({"query": "{ objects { name } }"});
    let registration = json!({"query": "mutation { createAgentRegistration { token } }"});

    // Free: 3 objects. Four are refused whole, naming the limit and the plan that lifts it.
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", apply(4))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(
        (
            ext["limit"].as_str(),
            ext["plan"].as_str(),
            ext["upgradeTo"].as_str(),
            ext["max"].as_u64()
        ),
        (Some("objects"), Some("free"), Some("team"), Some(3)),
        "{body}"
    );
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", objects.clone())
        .await;
    assert_eq!(body["data"]["objects"], json!([]), "nothing was created");
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", apply(3))
        .await;
    assert_eq!(body["data"]["apply"]["summary"]["create"], 3, "{body}");

    // Free: 1 agent. A second registration is refused while the first agent is active.
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", registration.clone())
        .await;
    let token = body["data"]["createAgentRegistration"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (code, body) = app
        .gateway(
            Auth::Anonymous,
            cp,
            "agent/v1/register",
            json!({"token": token, "name": "a1", "version": "1"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", registration.clone())
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    assert_eq!(body["errors"][0]["extensions"]["limit"], "agents");

    // Team lifts both.
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    ls.subscribe(&customer, "price_team").await;
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", apply(4))
        .await;
    assert_eq!(body["data"]["apply"]["summary"]["create"], 1, "{body}");
    let (_, body) = app
        .gateway(Auth::Session(&alice), cp, "graphql", registration)
        .await;
    assert!(
        body["data"]["createAgentRegistration"]["token"].is_string(),
        "{body}"
    );
    app.stop().await;
}

const DELETE_ORG: &str = "mutation($o: String!) { deleteOrganization(slug: $o, confirmSlug: $o) }";

/// Polls localstripe until `done` holds for the subscription.
async fn wait_remote(ls: &LocalStripe, sub: &str, what: &str, done: impl Fn(&Value) -> bool) {
    for _ in 0..300 {
        if done(&ls.get(&format!("subscriptions/{sub}")).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what} never happened: {}",
        ls.get(&format!("subscriptions/{sub}")).await
    );
}

#[tokio::test]
async fn deleting_an_organisation_cancels_its_subscription_even_while_stripe_is_unreachable() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let proxy = StripeProxy::start(&ls.url).await;
    let app = spawn_billing(&proxy.url, |c| {
        c.billing.interval = Duration::from_millis(200);
    })
    .await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub").to_owned();
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;

    // Stripe is unreachable when the organisation is deleted: the deletion still succeeds, and
    // the cancellation waits in the queue, failing and retrying.
    proxy.set_down(true);
    let data = app
        .gql_ok(Auth::Session(&alice), DELETE_ORG, json!({ "o": "acme" }))
        .await;
    assert_eq!(data["deleteOrganization"], true);
    let mut tries = 0;
    for _ in 0..300 {
        tries = count(
            &app,
            "select count(*) from billing_cancellations where attempts >= 2 and last_error is not null and done_at is null",
        )
        .await;
        if tries == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tries, 1, "the cancellation is retried while Stripe is down");
    assert_eq!(
        ls.get(&format!("subscriptions/{sub_id}")).await["status"],
        "active"
    );

    // Stripe is back: the subscription is cancelled at once.
    proxy.set_down(false);
    wait_remote(&ls, &sub_id, "the cancellation", |s| {
        s["status"] == "canceled"
    })
    .await;

    // A subscription that appears for the deleted organisation's customer later (a Checkout
    // left open, completed after the deletion): its event is handled, and it is cancelled too.
    let late = ls.subscribe(&customer, "price_business").await;
    let late_id = late["id"].as_str().expect("sub").to_owned();
    wait_remote(&ls, &late_id, "the late subscription's cancellation", |s| {
        s["status"] == "canceled"
    })
    .await;
    let warnings = count(
        &app,
        "select count(*) from stripe_events where warning is not null",
    )
    .await;
    assert_eq!(
        warnings, 0,
        "no event was dismissed as an unknown customer's"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_plan_comes_from_every_live_subscription_not_from_the_last_event() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |_| {}).await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    // Two live subscriptions (however they came about): Team, then Business.
    ls.subscribe(&customer, "price_team").await;
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;
    let business = ls.subscribe(&customer, "price_business").await;
    let business_id = business["id"].as_str().expect("sub");
    wait_billing(&app, &alice, "acme", "the Business plan", |b| {
        b["plan"]["id"] == "business"
    })
    .await;
    // Business is cancelled: Team is still active and paid, so the organisation is on Team.
    ls.delete(&format!("subscriptions/{business_id}")).await;
    let mut applied = 0;
    for _ in 0..300 {
        applied = count(
            &app,
            "select count(*) from stripe_events where type = 'customer.subscription.deleted' and applied_at is not null",
        )
        .await;
        if applied == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(applied, 1, "the cancellation's event was applied");
    let b = billing(&app, &alice, "acme").await;
    assert_eq!(
        (b["plan"]["id"].as_str(), b["subscriptionStatus"].as_str()),
        (Some("team"), Some("active")),
        "{b}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_event_naming_a_subscription_stripe_does_not_have_is_acknowledged_with_a_warning() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |_| {}).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let body = event(
        "evt_ghost",
        "customer.subscription.updated",
        now(),
        json!({ "id": "sub_NoSuchThing", "object": "subscription", "customer": customer, "status": "active" }),
    );
    let (status, text) = deliver(&app, &body, &sign(&body)).await;
    assert_eq!((status, text.as_str()), (200, "queued"));
    let warning = wait_applied(&app, "evt_ghost").await.expect("a warning");
    assert!(warning.contains("sub_NoSuchThing"), "{warning}");
    let (attempts, error): (i32, Option<String>) =
        sqlx::query_as("select attempts, last_error from stripe_events where id = 'evt_ghost'")
            .fetch_one(&app.pool)
            .await
            .expect("event");
    assert_eq!(
        (attempts, error),
        (1, None),
        "done on the first try, not retried"
    );
    assert_eq!(
        count(
            &app,
            "select count(*) from audit_log where action = 'billing.event_warning'"
        )
        .await,
        1
    );
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "free");
    // Stripe retrying it changes nothing.
    assert_eq!(deliver(&app, &body, &sign(&body)).await.1, "duplicate");
    app.stop().await;
}

#[tokio::test]
async fn the_plan_is_read_from_the_licensed_item_beside_a_metered_one() {
    // localstripe makes subscriptions of one item only: the recording peer answers the
    // subscription list with Stripe's documented shape, the metered item first.
    let peer = RecordingStripe::start().await;
    let app = spawn_billing(&peer.url, |c| {
        if let Some(s) = c.billing.stripe.as_mut() {
            s.usage_price = Some("price_object_hours".into());
        }
    })
    .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    app.gql_ok(Auth::Session(&alice), PORTAL, json!({ "o": "acme" }))
        .await;
    let customer = customer_of(&app, "acme").await.expect("customer");
    let item = |id: &str, price: &str, usage: &str| {
        json!({ "id": id, "object": "subscription_item", "quantity": if usage == "metered" { Value::Null } else { json!(1) },
                "price": { "id": price, "object": "price", "type": "recurring",
                           "recurring": { "interval": "month", "interval_count": 1, "usage_type": usage } },
                "plan": { "id": price, "object": "plan", "interval": "month", "usage_type": usage } })
    };
    let subscription = json!({
        "id": "sub_1MowQVLkdIwHu7ixeRlqHVzs", "object": "subscription", "customer": customer,
        "status": "active", "cancel_at_period_end": false, "created": now(),
        "items": { "object": "list", "has_more": false, "url": "/v1/subscription_items?subscription=sub_1MowQVLkdIwHu7ixeRlqHVzs",
                   "data": [ item("si_metered", "price_object_hours", "metered"), item("si_plan", "price_team", "licensed") ] },
    });
    peer.answer(
        "/v1/subscriptions",
        json!({ "object": "list", "url": "/v1/subscriptions", "has_more": false, "data": [subscription] }),
    );
    let body = event(
        "evt_metered",
        "customer.subscription.created",
        now(),
        json!({ "id": "sub_1MowQVLkdIwHu7ixeRlqHVzs", "object": "subscription", "customer": customer }),
    );
    assert_eq!(deliver(&app, &body, &sign(&body)).await.0, 200);
    assert_eq!(wait_applied(&app, "evt_metered").await, None);
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "team");
    let listed = peer.to("/v1/subscriptions");
    assert_eq!(listed.len(), 1);
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(listed[0].query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    for pair in [("customer", customer.as_str()), ("status", "all")] {
        assert!(
            query.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "{query:?}"
        );
    }
    app.stop().await;
}

/// `{ me }` `n` times in a row; returns each answer's time, panicking on anything but success.
async fn time_me(app: &TestApp, who: &Session, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = std::time::Instant::now();
        let resp = app
            .authed(
                app.http
                    .post(format!("{}/graphql", app.url))
                    .json(&json!({ "query": "{ me { email } }" })),
                Auth::Session(who),
            )
            .send()
            .await
            .expect("me");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        times.push(start.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["me"]["email"], who.email, "{body}");
    }
    times
}

fn describe(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    format!(
        "n={} p50={:?} p95={:?} max={:?}",
        times.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    )
}

/// Delivers `n` signed subscription events at once; every one must be answered `200` (no 5xx).
async fn burst(app: &TestApp, prefix: &str, n: usize, sub: &str, customer: &str) {
    let deliveries = (0..n).map(|i| {
        let body = event(
            &format!("{prefix}_{i}"),
            "customer.subscription.updated",
            now(),
            json!({ "id": sub, "object": "subscription", "customer": customer }),
        );
        async move { deliver(app, &body, &sign(&body)).await }
    });
    for (status, text) in futures::future::join_all(deliveries).await {
        assert_eq!(status, 200, "{text}");
    }
}

async fn wait_all_applied(app: &TestApp, prefix: &str, n: i64) {
    let sql = format!(
        "select count(*) from stripe_events where id like '{prefix}\\_%' and applied_at is not null"
    );
    for _ in 0..600 {
        if count(app, &sql).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not all {prefix} events were applied");
}

#[tokio::test]
async fn stripe_latency_never_holds_webhooks_or_starves_unrelated_api_requests() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let proxy = StripeProxy::start(&ls.url).await;
    let app = spawn_billing(&proxy.url, |_| {}).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub").to_owned();
    let mut baseline = time_me(&app, &alice, 30).await;

    // Stripe stops answering. 50 events for the organisation are each answered 200 at once
    // (before, each waited for Stripe holding a pooled connection), and while the worker is
    // stuck waiting on Stripe, unrelated requests are answered.
    proxy.pause();
    tokio::time::timeout(
        Duration::from_secs(20),
        burst(&app, "evt_held", 50, &sub_id, &customer),
    )
    .await
    .expect("webhooks must not wait for Stripe");
    proxy.wait_for_held(1).await;
    let mut while_held = time_me(&app, &alice, 40).await;
    let concurrent = futures::future::join_all((0..40).map(|_| time_me(&app, &alice, 1))).await;
    assert_eq!(concurrent.len(), 40);
    assert_eq!(
        count(
            &app,
            "select count(*) from stripe_events where applied_at is null"
        )
        .await,
        50,
        "nothing was applied without Stripe"
    );
    proxy.resume();
    wait_all_applied(&app, "evt_held", 50).await;
    assert_eq!(billing(&app, &alice, "acme").await["plan"]["id"], "team");

    // Stripe answers, 250 ms late each time: 50 more events while `me` is measured.
    proxy.set_delay(Duration::from_millis(250));
    let (_, mut slow) = tokio::join!(
        burst(&app, "evt_slow", 50, &sub_id, &customer),
        time_me(&app, &alice, 40)
    );
    wait_all_applied(&app, "evt_slow", 50).await;
    let stripe_calls = count(
        &app,
        "select count(*) from stripe_events where id like 'evt\\_%' and attempts > 1",
    )
    .await;
    assert_eq!(stripe_calls, 0, "no event needed a retry");
    eprintln!(
        "me latency: baseline {} | Stripe held {} | Stripe +250ms {}",
        describe(&mut baseline),
        describe(&mut while_held),
        describe(&mut slow)
    );
    app.stop().await;
}

#[tokio::test]
async fn control_planes_beyond_the_plan_after_a_cancellation_while_past_due_stay_held() {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let app = spawn_billing(&ls.url, |c| {
        c.billing.grace = Duration::from_secs(2);
        c.billing.interval = Duration::from_millis(200);
        if let Some(free) = c.billing.plans.plan_mut("free") {
            free.control_planes = Some(1);
        }
        if let Some(team) = c.billing.plans.plan_mut("team") {
            team.control_planes = Some(2);
        }
    })
    .await;
    ls.send_webhooks_to(&format!("{}/webhooks/stripe", app.url), WEBHOOK_SECRET)
        .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&app, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub").to_owned();
    wait_billing(&app, &alice, "acme", "the Team plan", |b| {
        b["plan"]["id"] == "team"
    })
    .await;
    let mut ids = Vec::new();
    for name in ["older", "newer"] {
        let id = app
            .gql_ok(
                Auth::Session(&alice),
                CREATE_CP,
                json!({ "o": "acme", "n": name }),
            )
            .await["createControlPlane"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        wait_cp(&app, &alice, &id, "READY").await;
        ids.push(id);
    }
    let (older, newer) = (&ids[0], &ids[1]);

    // Unpaid past the grace period: both are held.
    ls.fail_renewal(&customer, &sub_id).await;
    wait_cp(&app, &alice, older, "SUSPENDED").await;
    wait_cp(&app, &alice, newer, "SUSPENDED").await;

    // Cancelled while past due: the organisation is on Free (one control plane). The older one
    // runs again; the newer one stays held, its data kept, and says why.
    ls.delete(&format!("subscriptions/{sub_id}")).await;
    let b = wait_billing(&app, &alice, "acme", "the cancellation", |b| {
        b["subscriptionStatus"] == "canceled"
    })
    .await;
    assert_eq!(
        (b["plan"]["id"].as_str(), b["pastDue"].as_bool()),
        (Some("free"), Some(false)),
        "{b}"
    );
    wait_cp(&app, &alice, older, "READY").await;
    let held_query = "query($o: String!) { organization(slug: $o) { billing { heldControlPlanes { id name reason } } } }";
    let held = app
        .gql_ok(Auth::Session(&alice), held_query, json!({ "o": "acme" }))
        .await;
    assert_eq!(
        held["organization"]["billing"]["heldControlPlanes"],
        json!([{ "id": newer, "name": "newer", "reason": "OVER_LIMIT" }])
    );
    let q = "query($o: String!, $id: UUID!) { organization(slug: $o) { controlPlane(id: $id) { status } } }";
    let status = app
        .gql_ok(
            Auth::Session(&alice),
            q,
            json!({ "o": "acme", "id": newer }),
        )
        .await;
    assert_eq!(
        status["organization"]["controlPlane"]["status"],
        "SUSPENDED"
    );
    let (code, body) = through_gateway(&app, &alice, newer).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("QUOTA_EXCEEDED")),
        "{body}"
    );
    assert_eq!(through_gateway(&app, &alice, older).await.0, 200);
    let resume = app
        .gql(
            Auth::Session(&alice),
            "mutation($o: String!, $id: UUID!) { resumeControlPlane(org: $o, id: $id) { id } }",
            json!({ "o": "acme", "id": newer }),
        )
        .await;
    assert_eq!(
        error_code(&resume).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{resume}"
    );
    assert_eq!(resume["errors"][0]["extensions"]["upgradeTo"], "team");
    let db = format!("qleet_cp_{}", newer.replace('-', ""));
    let kept: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&db)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(kept, 1, "the held control plane's data is kept");
    // The billing page (as the server renders it) says which one is held and why.
    let html = app
        .http
        .get(format!("{}/orgs/acme/billing", app.url))
        .header("cookie", format!("qleet_session={}", alice.cookie))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let held_card = html
        .split("id=\"billing-held\"")
        .nth(1)
        .expect("the held control planes card");
    assert!(
        held_card.contains("newer") && held_card.contains("beyond the Free plan"),
        "{held_card}"
    );

    // Subscribing again lifts the limit: the held one runs again by itself.
    ls.subscribe(&customer, "price_team").await;
    wait_cp(&app, &alice, newer, "READY").await;
    let held = app
        .gql_ok(Auth::Session(&alice), held_query, json!({ "o": "acme" }))
        .await;
    assert_eq!(
        held["organization"]["billing"]["heldControlPlanes"],
        json!([])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_billing_claim_is_renewed_while_stripe_is_slow_and_taken_over_soon_after_its_holder_stops()
 {
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let proxy = StripeProxy::start(&ls.url).await;
    // Both instances look for due work every second (retries and lapsed claims included).
    let every_second = |c: &mut qleet::config::Config| c.billing.interval = Duration::from_secs(1);
    let first = spawn_billing(&proxy.url, every_second).await;
    let alice = first.sign_in("alice@example.test").await;
    first.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&first, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let sub_id = sub["id"].as_str().expect("sub").to_owned();

    // The first instance claims the event and waits on a Stripe that does not answer. (One
    // event: several may be claimed in more than one batch.)
    proxy.pause();
    burst(&first, "evt_lease", 1, &sub_id, &customer).await;
    proxy.wait_for_held(1).await;
    let claimed =
        "select count(*) from stripe_events where id like 'evt\\_lease\\_%' and attempts = 1";
    while count(&first, claimed).await < 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lapses_at: f64 = sqlx::query_scalar(
        "select extract(epoch from min(next_attempt_at))::float8 from stripe_events where id like 'evt\\_lease\\_%'",
    )
    .fetch_one(&first.pool)
    .await
    .expect("claim");
    // Held by a named instance, which alone renews it.
    let holder = "select claimed_by from stripe_events where id like 'evt\\_lease\\_%'";
    let first_holder: Option<Uuid> = sqlx::query_scalar(holder)
        .fetch_one(&first.pool)
        .await
        .expect("holder");
    assert!(first_holder.is_some());
    // A second instance on the same database, its billing worker running too.
    let db_url = first.db_url.clone();
    let second = spawn_billing(&proxy.url, move |c| {
        every_second(c);
        c.database = qleet::config::Database::Url(SecretString::from(db_url));
    })
    .await;
    // Past the moment the first claim would have lapsed (it lasts 15 s; Stripe's own timeout
    // is 20 s): the holder renewed it, so the second instance claimed nothing (each claim
    // counts an attempt).
    loop {
        let now: f64 = sqlx::query_scalar("select extract(epoch from now())::float8")
            .fetch_one(&first.pool)
            .await
            .expect("now");
        if now > lapses_at + 1.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let claimed_twice =
        "select count(*) from stripe_events where id like 'evt\\_lease\\_%' and attempts > 1";
    assert_eq!(
        count(&first, claimed_twice).await,
        0,
        "a live claim was taken"
    );

    // The holder stops for good mid-call: its claim lapses within seconds (not minutes), and
    // the second instance applies the event once Stripe answers.
    first.stop().await;
    proxy.resume();
    wait_all_applied(&second, "evt_lease", 1).await;
    assert_eq!(billing(&second, &alice, "acme").await["plan"]["id"], "team");
    let second_holder: Option<Uuid> = sqlx::query_scalar(holder)
        .fetch_one(&second.pool)
        .await
        .expect("holder");
    assert!(
        second_holder.is_some() && second_holder != first_holder,
        "taken over by the other instance: {first_holder:?} then {second_holder:?}"
    );
    second.stop().await;
}

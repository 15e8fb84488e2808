//! The browser suite: real headless Chromium (through chromedriver) against the real server and
//! a real OpenID provider.

use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use qleet_test_support::proxy::TcpProxy;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::oidc::app_with_provider;
use crate::support::{TestApp, spawn_app, spawn_app_with};

/// A chromedriver on a free loopback port, killed on drop.
pub(crate) struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let bin = std::env::var("QLEET_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); scripts/test.sh installs chromium and chromium-driver"));
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http.get(format!("{url}/status")).send().await.is_ok() {
                return Driver { _child: child, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on {url}");
    }

    pub(crate) async fn browser(&self, javascript: bool) -> Client {
        let binary = std::env::var("QLEET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let profile =
            std::env::temp_dir().join(format!("qleet-chromium-{}", uuid::Uuid::new_v4().simple()));
        let mut options = json!({
            "binary": binary,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if !javascript {
            options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("open a chromium session")
    }
}

/// The text of `css` once it is there (20 s at most), retrying while the page re-renders.
pub(crate) async fn text_of(client: &Client, css: &str) -> String {
    let mut last = None;
    for _ in 0..200 {
        match client.find(Locator::Css(css)).await {
            Ok(el) => match el.text().await {
                Ok(text) => return text,
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} did not appear ({last:?})");
}

pub(crate) async fn fill(client: &Client, css: &str, value: &str) {
    let el = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.clear().await.expect("clear");
    el.send_keys(value).await.expect("type");
}

/// Clicks `css` once it is there (20 s at most), retrying while the page re-renders (a
/// hydrated page may replace the element between finding and clicking it).
pub(crate) async fn click(client: &Client, css: &str) {
    let mut last = None;
    for _ in 0..200 {
        match client.find(Locator::Css(css)).await {
            Ok(el) => match el.click().await {
                Ok(_) => return,
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not click {css} ({last:?})");
}

/// Signs in through the dev sign-in form and waits for the signed-in page.
pub(crate) async fn sign_in_browser(client: &Client, app: &TestApp, email: &str) {
    client
        .goto(&format!("{}/signin", app.url))
        .await
        .expect("open sign-in");
    fill(client, "#signin-dev-email", email).await;
    click(client, "#signin-dev-submit").await;
    text_of(client, "#signed-in-as").await;
}

async fn owner_of(app: &TestApp, slug: &str) -> Option<String> {
    sqlx::query_scalar(
        "select u.email from organizations o join memberships m on m.org_id = o.id and m.role = 'owner'
         join users u on u.id = m.user_id where o.slug = $1",
    )
    .bind(slug)
    .fetch_optional(&app.pool)
    .await
    .expect("query")
}

pub(crate) async fn create_org_in_browser(client: &Client, slug: &str, name: &str) {
    fill(client, "#create-org-slug", slug).await;
    fill(client, "#create-org-name", name).await;
    click(client, "#create-org-submit").await;
    let title = text_of(client, "#org-title").await;
    assert_eq!(title, name);
}

#[tokio::test]
async fn a_person_signs_in_with_openid_connect_and_creates_an_organization_in_chromium() {
    let (app, _provider) = app_with_provider().await;
    let driver = Driver::start().await;
    let client = driver.browser(true).await;
    client
        .goto(&format!("{}/signin", app.url))
        .await
        .expect("open sign-in");
    click(&client, "a.provider[data-provider=test]").await;
    // The provider's own login and consent pages.
    fill(&client, "input[name=login]", "alice").await;
    fill(&client, "input[name=password]", "any").await;
    click(&client, "button[type=submit]").await;
    click(&client, "button[type=submit]").await;
    let who = text_of(&client, "#signed-in-as").await;
    assert!(who.contains("alice@example.test"), "{who}");
    // The page was hydrated: the wasm bundle loaded. The signed-in text is rendered by the
    // server, so the (21 MB, debug) bundle may still be on its way: give it 30 s.
    let mut hydrated = json!(false);
    for _ in 0..300 {
        hydrated = client
            .execute("return performance.getEntriesByType('resource').some(e => e.name.endsWith('qleet_bg.wasm'))", vec![])
            .await
            .expect("script");
        if hydrated == json!(true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        hydrated,
        json!(true),
        "the UI bundle should load (scripts/build-ui.sh builds it)"
    );
    create_org_in_browser(&client, "acme", "Acme Corp").await;
    assert_eq!(
        owner_of(&app, "acme").await.as_deref(),
        Some("alice@example.test")
    );
    // A bad slug shows a readable error and creates nothing.
    client
        .goto(&format!("{}/orgs", app.url))
        .await
        .expect("orgs");
    fill(&client, "#create-org-slug", "Bad Slug!").await;
    fill(&client, "#create-org-name", "Bad").await;
    click(&client, "#create-org-submit").await;
    let error = text_of(&client, "#error").await;
    assert!(error.contains("slug"), "{error}");
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 1);
    client.close().await.expect("close");
}

#[tokio::test]
async fn sign_in_and_create_organization_work_without_javascript() {
    let app = spawn_app().await;
    let driver = Driver::start().await;
    let client = driver.browser(false).await;
    client
        .goto(&format!("{}/signin", app.url))
        .await
        .expect("open sign-in");
    fill(&client, "#signin-dev-email", "nojs@example.test").await;
    click(&client, "#signin-dev-submit").await;
    let who = text_of(&client, "#signed-in-as").await;
    assert!(who.contains("nojs@example.test"), "{who}");
    create_org_in_browser(&client, "plain", "Plain HTML").await;
    assert_eq!(
        owner_of(&app, "plain").await.as_deref(),
        Some("nojs@example.test")
    );
    client.close().await.expect("close");
}

/// Waits until `css` has attribute `data-status` equal to `want` (live updates, no reload).
pub(crate) async fn wait_status(client: &Client, css: &str, want: &str) {
    for _ in 0..600 {
        if let Ok(el) = client.find(Locator::Css(css)).await
            && el.attr("data-status").await.ok().flatten().as_deref() == Some(want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {want}");
}

#[tokio::test]
async fn an_admin_runs_a_control_plane_from_the_browser_with_live_status() {
    let app = spawn_app().await;
    let driver = Driver::start().await;
    let client = driver.browser(true).await;
    sign_in_browser(&client, &app, "ops@example.test").await;
    create_org_in_browser(&client, "acme", "Acme").await;
    client
        .goto(&format!("{}/orgs/acme/control-planes", app.url))
        .await
        .expect("list");
    fill(&client, "#cp-create-name", "prod").await;
    click(&client, "#cp-create-submit").await;
    assert_eq!(text_of(&client, "#cp-title").await, "prod");
    // The page updates itself as the control plane is provisioned.
    wait_status(&client, "#cp-status", "READY").await;
    let endpoint = client
        .find(Locator::Css("#cp-endpoint"))
        .await
        .expect("endpoint")
        .prop("value")
        .await
        .expect("value")
        .unwrap_or_default();
    assert!(
        endpoint.contains("/cp/") && endpoint.ends_with("/graphql"),
        "{endpoint}"
    );
    click(&client, "#cp-suspend").await;
    wait_status(&client, "#cp-status", "SUSPENDED").await;
    click(&client, "#cp-resume").await;
    wait_status(&client, "#cp-status", "READY").await;
    fill(&client, "#cp-delete-confirm", "prod").await;
    click(&client, "#cp-delete-submit").await;
    let mut status = String::new();
    for _ in 0..100 {
        status = sqlx::query_scalar("select status from control_planes where name = 'prod'")
            .fetch_one(&app.pool)
            .await
            .expect("row");
        if status == "deleting" || status == "deleted" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status == "deleting" || status == "deleted", "{status}");
    client.close().await.expect("close");
}

#[tokio::test]
async fn an_owner_sees_the_billing_page_upgrades_through_checkout_and_the_past_due_banner() {
    use crate::support::stripe::{CHECKOUT_URL, RecordingStripe};
    let peer = RecordingStripe::start().await;
    let base = url::Url::parse(&format!("{}/", peer.url)).expect("url");
    let app = crate::support::spawn_app_with(move |c| {
        c.billing.stripe = Some(qleet::config::StripeConfig {
            secret_key: secrecy::SecretString::from("sk_test_qleet".to_owned()),
            webhook_secret: secrecy::SecretString::from("whsec_qleet".to_owned()),
            api_base: base,
            usage_price: None,
            meter_event: None,
        });
        c.billing.plans = qleet::billing::plans::Plans::from_config(
            None,
            Some("team=price_team,business=price_business"),
            "free",
        )
        .expect("plans");
    })
    .await;
    let driver = Driver::start().await;
    // Without JavaScript: the page and the Upgrade form work as plain HTML.
    let client = driver.browser(false).await;
    client
        .goto(&format!("{}/signin", app.url))
        .await
        .expect("open sign-in");
    fill(&client, "#signin-dev-email", "owner@example.test").await;
    click(&client, "#signin-dev-submit").await;
    create_org_in_browser(&client, "acme", "Acme").await;
    client
        .goto(&format!("{}/orgs/acme/billing", app.url))
        .await
        .expect("billing page");
    assert_eq!(text_of(&client, "#billing-plan-name").await, "Free");
    assert!(
        client
            .find_all(Locator::Css("#past-due-banner"))
            .await
            .expect("find")
            .is_empty(),
        "no banner while paid up"
    );
    click(&client, "#upgrade-team").await;
    let mut reached = String::new();
    for _ in 0..100 {
        reached = client.current_url().await.expect("url").to_string();
        if reached.starts_with("https://checkout.stripe.com/") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        reached, CHECKOUT_URL,
        "the browser is sent to Stripe Checkout"
    );
    assert_eq!(
        peer.to("/v1/checkout/sessions")[0].field("line_items[0][price]"),
        Some("price_team")
    );

    // Past due (as a failed payment leaves it): the owner sees the banner on every org page.
    sqlx::query(
        "update billing_accounts set subscription_status = 'past_due', plan = 'team', past_due_since = now()",
    )
    .execute(&app.pool)
    .await
    .expect("past due");
    client
        .goto(&format!("{}/orgs/acme", app.url))
        .await
        .expect("org page");
    let banner = text_of(&client, "#past-due-banner").await;
    assert!(banner.contains("Payment failed"), "{banner}");
    client.close().await.expect("close");
}

#[tokio::test]
async fn a_page_whose_database_is_briefly_away_says_so_and_loads_again_by_itself() {
    // The server reaches its database through a proxy the test can cut (every connection
    // closed, new ones refused) and restore.
    let proxy = TcpProxy::in_front_of(&qleet_test_support::db::admin_url()).await;
    let app = spawn_app_with(|c| {
        if let qleet::config::Database::Url(url) = &c.database {
            let through = proxy.database_url(url.expose_secret());
            c.database = qleet::config::Database::Url(SecretString::from(through));
        }
    })
    .await;
    let driver = Driver::start().await;
    // With JavaScript (the page's data is asked for again) and without (the page reloads).
    for javascript in [true, false] {
        let client = driver.browser(javascript).await;
        let slug = if javascript { "away-js" } else { "away-plain" };
        let email = format!("{slug}@example.test");
        sign_in_browser(&client, &app, &email).await;
        create_org_in_browser(&client, slug, "Away").await;

        proxy.cut();
        client
            .goto(&format!("{}/orgs/{slug}", app.url))
            .await
            .expect("open the organisation's page");
        let said = text_of(&client, "#error[data-retry]").await;
        assert!(
            said.contains("Qleet is briefly unavailable") && said.contains("by itself"),
            "javascript {javascript}: {said}"
        );

        // Back: the members show up with nothing done in the browser.
        proxy.restore();
        let members = text_of(&client, "table.members").await;
        assert!(
            members.contains(&email),
            "javascript {javascript}: {members}"
        );
        client.close().await.expect("close");
    }
}

//! Health, readiness and metrics endpoints.

use crate::support::spawn_app;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let get = |path: &str| app.http.get(format!("{}{path}", app.url)).send();
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    let ready = get("/readyz").await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready.headers().contains_key("x-request-id"));
    let metrics = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("qleet_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/readyz\""), "{metrics}");
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = spawn_app().await;
    app.pool.close().await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
}

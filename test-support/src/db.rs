//! One fresh PostgreSQL database per test, on the server `QLEET_TEST_DATABASE_URL` names.

use sqlx::{Connection as _, PgConnection};
use url::Url;

/// Admin connection used to create one database per test.
pub fn admin_url() -> String {
    std::env::var("QLEET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates a fresh database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("qleet_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL must answer at QLEET_TEST_DATABASE_URL (scripts/test.sh starts one)");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = Url::parse(&admin).expect("admin url");
    url.set_path(&name);
    url.to_string()
}

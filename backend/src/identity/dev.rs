//! Development sign-in: pick any email, no provider needed. Mounted only by `qleet dev`; the
//! `serve` configuration has no way to turn it on.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::{Form, Router};
use serde::Deserialize;

use super::session;
use crate::state::AppState;

/// The issuer recorded for identities made by the development sign-in.
pub const DEV_ISSUER: &str = "qleet-dev";

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/dev", post(sign_in))
}

#[derive(Deserialize)]
struct DevForm {
    email: String,
    #[serde(default)]
    name: String,
}

async fn sign_in(
    State(state): State<AppState>,
    crate::web::ClientIp(ip): crate::web::ClientIp,
    headers: HeaderMap,
    Form(form): Form<DevForm>,
) -> Response {
    if !qleet_common::text::storable(&form.name) || !qleet_common::text::storable(&form.email) {
        return crate::error::ApiError::invalid(
            "name",
            "text with a NUL character cannot be stored",
        )
        .into_response();
    }
    let email = match crate::orgs::invitations::parse_email(&form.email) {
        Ok(e) => e.to_lowercase(),
        Err(e) => return super::oidc::signin_error(&format!("Development sign-in: {e}")),
    };
    if let Err(retry) = state.limiters.sign_in_account(&email) {
        return crate::limits::too_many_requests(
            retry,
            "too many sign-ins for this account; try again later",
        );
    }
    let name = qleet_common::text::strip_invisible_format(&form.name);
    let name = Some(name.trim()).filter(|n| !n.is_empty() && n.chars().count() <= 100);
    let result = async {
        let user_id =
            super::upsert_identity(&state.pool, DEV_ISSUER, &email, &email, true, name).await?;
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        session::create(
            &state.pool,
            user_id,
            state.config.session_ttl,
            ip.as_deref(),
            ua,
        )
        .await
    }
    .await;
    match result {
        Ok(raw) => (
            [(header::SET_COOKIE, session::set_cookie(&state.config, &raw))],
            Redirect::to("/orgs"),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

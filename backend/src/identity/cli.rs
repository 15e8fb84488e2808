//! Sign-in for `qleetctl login`: the CLI listens on a loopback port and opens
//! `/auth/cli?port=P&state=S` in the browser. After the ordinary sign-in (any configured OpenID
//! provider, or the dev sign-in), the person picks an organisation and confirms with a form that
//! carries the session's CSRF token; Qleet then mints an API token for that organisation (the
//! person's role there, 90 days) and redirects it to `http://127.0.0.1:P/callback` with the
//! CLI's `state`, which the CLI checks. No new storage: the token is an ordinary API token,
//! listed, audited and revocable like any other.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;

use super::{Actor, Principal, session, tokens};
use crate::error::ApiError;
use crate::orgs::Role;
use crate::state::AppState;

/// Lifetime of a token minted for the CLI.
const CLI_TOKEN_DAYS: i64 = 90;

pub fn router() -> Router<AppState> {
    Router::new().route("/auth/cli", get(confirm_page).post(confirm))
}

/// What the CLI passes through the browser: its loopback port and its random `state`.
#[derive(Deserialize)]
struct CliRequest {
    port: String,
    state: String,
    org: Option<String>,
}

/// The port and state, checked: a port a user program can listen on, and a state of 16 to 128
/// URL-safe characters (so it can be put back into a URL unescaped).
fn parse_request(port: &str, state: &str) -> Result<(u16, String), ApiError> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p >= 1024)
        .ok_or_else(|| ApiError::invalid("port", "must be a number from 1024 to 65535"))?;
    let ok = (16..=128).contains(&state.len())
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(ApiError::invalid(
            "state",
            "must be 16 to 128 letters, digits, '-' or '_'",
        ));
    }
    Ok((port, state.to_owned()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The signed-in person behind the browser's session cookie, if any.
async fn session_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Principal, String)>, ApiError> {
    let Some(raw) = session::cookie_value(headers) else {
        return Ok(None);
    };
    Ok(session::authenticate(&state.pool, &raw)
        .await?
        .map(|p| (p, raw)))
}

fn page(body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Qleet: sign in \
         qleetctl</title><style>body{{font-family:sans-serif;max-width:36rem;margin:3rem auto}}\
         </style></head><body><h1>Sign in qleetctl</h1>{body}</body></html>"
    );
    let mut resp = Html(html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http://127.0.0.1:*; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        ),
    );
    resp
}

async fn confirm_page(
    State(state): State<AppState>,
    Query(q): Query<CliRequest>,
    headers: HeaderMap,
) -> Response {
    let (port, cli_state) = match parse_request(&q.port, &q.state) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let (principal, raw) = match session_user(&state, &headers).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            let mut back = format!("/auth/cli?port={port}&state={cli_state}");
            if let Some(org) = &q.org {
                let org: String = url::form_urlencoded::byte_serialize(org.as_bytes()).collect();
                back.push_str(&format!("&org={org}"));
            }
            let back: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
            return Redirect::to(&format!("/signin?return_to={back}")).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let orgs = match crate::orgs::store::list_for(&state.pool, &principal).await {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    if orgs.is_empty() {
        return page(
            "<p>You do not belong to any organisation yet. <a href=\"/orgs\">Create one</a>, \
             then run <code>qleetctl login</code> again.</p>",
        );
    }
    let options: String = orgs
        .iter()
        .map(|o| {
            let selected = if q.org.as_deref() == Some(o.org.slug.as_str()) {
                " selected"
            } else {
                ""
            };
            format!(
                "<option value=\"{slug}\"{selected}>{name} ({slug}, {role})</option>",
                slug = escape(&o.org.slug),
                name = escape(&o.org.name),
                role = o.role.as_str().to_lowercase(),
            )
        })
        .collect();
    let email = match &principal {
        Principal::User { email, .. } | Principal::Token { email, .. } => email.clone(),
    };
    page(&format!(
        "<p>A <code>qleetctl</code> on this computer (port {port}) asks to act as \
         <strong>{email}</strong>. It gets an API token with your role in the organisation you \
         choose, valid {CLI_TOKEN_DAYS} days; you can revoke it under API tokens.</p>\
         <form method=\"post\" action=\"/auth/cli\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"port\" value=\"{port}\">\
         <input type=\"hidden\" name=\"state\" value=\"{cli_state}\">\
         <label>Organisation <select name=\"org\">{options}</select></label> \
         <button type=\"submit\">Authorize qleetctl</button></form>\
         <p>If you did not run <code>qleetctl login</code>, close this page.</p>",
        email = escape(&email),
        csrf = escape(&session::csrf_for(&raw)),
    ))
}

#[derive(Deserialize)]
struct ConfirmForm {
    csrf: String,
    port: String,
    state: String,
    org: String,
}

async fn confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::web::ClientIp(ip): crate::web::ClientIp,
    Form(form): Form<ConfirmForm>,
) -> Response {
    match mint(&state, &headers, ip, form).await {
        Ok(location) => Redirect::to(&location).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Mints the token and returns the loopback URL that hands it to the CLI.
async fn mint(
    state: &AppState,
    headers: &HeaderMap,
    ip: Option<String>,
    form: ConfirmForm,
) -> Result<String, ApiError> {
    let (port, cli_state) = parse_request(&form.port, &form.state)?;
    let (principal, raw) = session_user(state, headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if session::csrf_for(&raw) != form.csrf {
        return Err(ApiError::Csrf);
    }
    let access = crate::orgs::access(&state.pool, &principal, &form.org).await?;
    let role: Role = access.role;
    let actor = Actor { principal, ip };
    let expires = chrono::Utc::now() + chrono::Duration::days(CLI_TOKEN_DAYS);
    let (_, secret) = tokens::create(
        &state.pool,
        &actor,
        &access.org.slug,
        "qleetctl login",
        role,
        Some(expires),
    )
    .await?;
    tracing::info!(org.id = %access.org.id, "minted an API token for qleetctl");
    let org: String = url::form_urlencoded::byte_serialize(access.org.slug.as_bytes()).collect();
    Ok(format!(
        "http://127.0.0.1:{port}/callback?state={cli_state}&org={org}&token={secret}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_ports_and_url_safe_states_are_accepted() {
        assert!(parse_request("8123", "abcdefghijklmnop").is_ok());
        assert!(parse_request("80", "abcdefghijklmnop").is_err());
        assert!(parse_request("70000", "abcdefghijklmnop").is_err());
        assert!(parse_request("8123", "short").is_err());
        assert!(parse_request("8123", "abcdefghijklmnop&x=<script>").is_err());
    }
}

//! Sign-in with OpenID Connect: authorization-code flow with PKCE, `state` bound to the browser
//! by a cookie and kept single-use in the database, `nonce` and the ID token checked against the
//! provider's published keys.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _,
};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{hash_secret, session};
use crate::config::{Config, OidcProviderConfig};
use crate::error::ApiError;
use crate::state::AppState;

/// Cookie binding an in-flight sign-in to the browser that started it.
const LOGIN_COOKIE: &str = "qleet_login";
/// How long a started sign-in may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long discovery metadata (endpoints and signing keys) is trusted before it is re-read.
const METADATA_TTL: Duration = Duration::from_secs(3600);

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

struct Provider {
    config: OidcProviderConfig,
    /// Discovered client, re-discovered after [`METADATA_TTL`] so key rotation is picked up.
    client: Mutex<Option<(Instant, Client)>>,
}

/// The configured providers, discovered lazily so Qleet starts while a provider is down.
pub struct Providers {
    http: openidconnect::reqwest::Client,
    providers: Vec<Provider>,
}

impl Providers {
    pub fn new(configs: &[OidcProviderConfig]) -> anyhow::Result<Self> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects here would open the client to SSRF.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        let providers = configs
            .iter()
            .map(|c| Provider {
                config: c.clone(),
                client: Mutex::new(None),
            })
            .collect();
        Ok(Providers { http, providers })
    }

    /// `(id, name)` of each provider, for the sign-in page.
    pub fn list(&self) -> Vec<(String, String)> {
        self.providers
            .iter()
            .map(|p| (p.config.id.clone(), p.config.name.clone()))
            .collect()
    }

    async fn client(&self, config: &Config, id: &str) -> Result<Client, String> {
        let provider = self
            .providers
            .iter()
            .find(|p| p.config.id == id)
            .ok_or_else(|| format!("there is no sign-in provider called {id:?}"))?;
        let mut cached = provider.client.lock().await;
        if let Some((at, client)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(client.clone());
        }
        let issuer = IssuerUrl::new(provider.config.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = id, error = %e, "OpenID discovery failed");
                format!(
                    "{} cannot be reached right now; try again shortly",
                    provider.config.name
                )
            })?;
        let redirect = RedirectUrl::new(config.url(&format!("/auth/callback/{id}")))
            .map_err(|e| e.to_string())?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(provider.config.client_id.clone()),
            Some(ClientSecret::new(
                provider.config.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(redirect);
        *cached = Some((Instant::now(), client.clone()));
        Ok(client)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login/{provider}", get(login))
        .route("/auth/callback/{provider}", get(callback))
}

/// Where to send the browser with a readable reason after a failed sign-in.
pub fn signin_error(message: &str) -> Response {
    let q: String = url::form_urlencoded::byte_serialize(message.as_bytes()).collect();
    Redirect::to(&format!("/signin?error={q}")).into_response()
}

/// A local path to return to after sign-in; anything else (other hosts, `//x`) becomes `/`.
pub fn safe_return_to(path: Option<&str>) -> String {
    match path {
        Some(p)
            if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && p.len() < 512 =>
        {
            p.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let client = match state.oidc.client(&state.config, &provider).await {
        Ok(c) => c,
        Err(msg) => return signin_error(&msg),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let stored = sqlx::query!(
        "insert into oidc_logins (state_hash, provider, pkce_verifier, nonce, return_to, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        hash_secret(csrf.secret()),
        &provider,
        verifier.secret(),
        nonce.secret(),
        safe_return_to(q.return_to.as_deref()),
        LOGIN_TTL.as_secs_f64(),
    )
    .execute(&state.pool)
    .await;
    if let Err(e) = stored {
        return crate::error::internal(e).into_response();
    }
    let cookie = session::cookie_header(
        &state.config,
        LOGIN_COOKIE,
        csrf.secret(),
        LOGIN_TTL.as_secs(),
    );
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(auth_url.as_str()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
    crate::web::ClientIp(ip): crate::web::ClientIp,
) -> Response {
    let clear_login = session::cookie_header(&state.config, LOGIN_COOKIE, "", 0);
    let result = finish_sign_in(&state, &provider, q, &headers, ip.as_deref()).await;
    match result {
        Ok((raw_session, return_to)) => {
            let set = session::set_cookie(&state.config, &raw_session);
            let mut resp = Redirect::to(&return_to).into_response();
            resp.headers_mut().append(header::SET_COOKIE, set);
            resp.headers_mut().append(header::SET_COOKIE, clear_login);
            resp
        }
        Err(SignInError::Refused(msg)) => {
            tracing::info!(provider, reason = %msg, "sign-in refused");
            let mut resp = signin_error(&format!("Sign-in failed: {msg}"));
            resp.headers_mut().append(header::SET_COOKIE, clear_login);
            resp
        }
        Err(SignInError::Internal(e)) => e.into_response(),
    }
}

enum SignInError {
    Refused(String),
    Internal(ApiError),
}

impl From<ApiError> for SignInError {
    fn from(e: ApiError) -> Self {
        SignInError::Internal(e)
    }
}

async fn finish_sign_in(
    state: &AppState,
    provider: &str,
    q: CallbackQuery,
    headers: &HeaderMap,
    ip: Option<&str>,
) -> Result<(String, String), SignInError> {
    use SignInError::Refused;
    if let Some(error) = q.error {
        let detail = q.error_description.unwrap_or_default();
        return Err(Refused(
            format!("the identity provider answered {error} {detail}")
                .trim()
                .to_owned(),
        ));
    }
    let (Some(code), Some(returned_state)) = (q.code, q.state) else {
        return Err(Refused(
            "the identity provider's answer had no code or state".into(),
        ));
    };
    // The state must come back to the same browser that started the sign-in.
    let cookie_state = session::read_cookie(headers, LOGIN_COOKIE);
    if cookie_state.as_deref() != Some(returned_state.as_str()) {
        return Err(Refused(
            "this sign-in was not started in this browser (state mismatch); start again".into(),
        ));
    }
    let row = sqlx::query!(
        "delete from oidc_logins where state_hash = $1 and provider = $2 and expires_at > now()
         returning pkce_verifier, nonce, return_to",
        hash_secret(&returned_state),
        provider,
    )
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::from)?
    .map(|r| (r.pkce_verifier, r.nonce, r.return_to));
    let Some((verifier, nonce, return_to)) = row else {
        return Err(Refused(
            "this sign-in has expired or was already used; start again".into(),
        ));
    };
    let client = state
        .oidc
        .client(&state.config, provider)
        .await
        .map_err(Refused)?;
    let request = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| Refused(format!("the provider has no token endpoint ({e})")))?;
    let tokens = request
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&state.oidc.http)
        .await
        .map_err(|e| {
            Refused(format!(
                "the identity provider did not accept the sign-in code ({})",
                token_error(&e)
            ))
        })?;
    let id_token = tokens
        .id_token()
        .ok_or_else(|| Refused("the identity provider sent no ID token".into()))?;
    let claims = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(nonce))
        .map_err(|e| Refused(format!("the ID token is not valid: {e}")))?;
    let email = claims
        .email()
        .map(|e| e.as_str().to_owned())
        .ok_or_else(|| Refused("the identity provider did not share an email address".into()))?;
    let name = claims
        .name()
        .and_then(|n| n.get(None))
        .map(|n| qleet_common::text::strip_invisible_format(n.as_str()));
    let user_id = super::upsert_identity(
        &state.pool,
        claims.issuer().as_str(),
        claims.subject().as_str(),
        &email,
        claims.email_verified().unwrap_or(false),
        name.as_deref(),
    )
    .await?;
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let raw = session::create(&state.pool, user_id, state.config.session_ttl, ip, ua).await?;
    tracing::info!(provider, user.id = %user_id, "signed in");
    Ok((raw, return_to))
}

fn token_error<E: std::error::Error>(e: &E) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_this_site() {
        assert_eq!(safe_return_to(Some("/orgs/acme")), "/orgs/acme");
        assert_eq!(safe_return_to(Some("//evil.test/x")), "/");
        assert_eq!(safe_return_to(Some("https://evil.test")), "/");
        assert_eq!(safe_return_to(Some("/\\evil.test")), "/");
        assert_eq!(safe_return_to(None), "/");
    }
}

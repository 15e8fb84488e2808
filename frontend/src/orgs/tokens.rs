//! `/orgs/:slug/tokens`: API tokens — the list, creating one (its secret is shown once), and
//! revoking.

use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

use crate::{
    api::{Access, Role, format_time},
    components::{
        CsrfField, ErrorBox, Loading, Notice, Refresh, RoleSelect, Submit, action_error, mutation,
    },
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A token just created: `token` is the secret, which the backend never shows again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiToken {
    pub token: String,
    pub api_token: ApiToken,
}

#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const TOKEN_FIELDS: &str = "id name prefix role createdBy createdAt expiresAt lastUsedAt revokedAt";

#[server(endpoint = "api_tokens")]
pub async fn list_api_tokens(org: String) -> Result<Access<Vec<ApiToken>>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        api_tokens: Vec<ApiToken>,
    }
    let query = format!(
        "query ApiTokens($slug: String!) {{ organization(slug: $slug) \
         {{ apiTokens {{ {TOKEN_FIELDS} }} }} }}"
    );
    let access: Access<Data> =
        crate::api::gql_access(&query, serde_json::json!({ "slug": org })).await?;
    Ok(match access {
        Access::Allowed(data) => Access::Allowed(data.organization.api_tokens),
        Access::Denied(reason) => Access::Denied(reason),
    })
}

/// Creates a token. `expires_on` is an `<input type="date">` value (`YYYY-MM-DD`, or empty for
/// no expiry); the token expires at the end of that day, UTC.
#[server(endpoint = "create_api_token")]
pub async fn create_api_token(
    csrf: String,
    org: String,
    name: String,
    role: Role,
    expires_on: String,
) -> Result<CreatedApiToken, ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        create_api_token: CreatedApiToken,
    }
    let expires_at =
        end_of_day(&expires_on).map_err(|e| crate::api::refusal("INVALID_INPUT", e))?;
    let query = format!(
        "mutation CreateApiToken($org: String!, $name: String!, $role: Role!, \
         $expiresAt: DateTime) {{ createApiToken(org: $org, name: $name, role: $role, \
         expiresAt: $expiresAt) {{ token apiToken {{ {TOKEN_FIELDS} }} }} }}"
    );
    let variables = serde_json::json!({
        "org": org, "name": name.trim(), "role": role, "expiresAt": expires_at,
    });
    let data: Data = crate::api::gql(&query, variables, Some(csrf)).await?;
    Ok(data.create_api_token)
}

#[server(endpoint = "revoke_api_token")]
pub async fn revoke_api_token(csrf: String, org: String, id: String) -> Result<(), ServerFnError> {
    let query = "mutation RevokeApiToken($org: String!, $id: ID!) \
                 { revokeApiToken(org: $org, id: $id) { id } }";
    let variables = serde_json::json!({ "org": org, "id": id });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

/// `2026-12-31` → `2026-12-31T23:59:59Z`; empty → no expiry.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
fn end_of_day(date: &str) -> Result<Option<String>, String> {
    let date = date.trim();
    if date.is_empty() {
        return Ok(None);
    }
    let parts: Vec<&str> = date.split('-').collect();
    let well_formed = matches!(parts.as_slice(), [y, m, d]
        if y.len() == 4 && m.len() == 2 && d.len() == 2
            && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())));
    if !well_formed {
        return Err(format!(
            "The expiry date should look like 2026-12-31, not “{date}”."
        ));
    }
    Ok(Some(format!("{date}T23:59:59Z")))
}

#[component]
pub fn TokensPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let tokens = Resource::new(
        move || (ctx.slug.get(), Refresh::generation()),
        |(slug, _)| list_api_tokens(slug),
    );
    let create = mutation::<CreateApiToken>();
    let revoke = mutation::<RevokeApiToken>();

    let new_token = move || {
        create.value().get().and_then(Result::ok).map(|created| {
            view! {
                <div class="secret" role="status">
                    <p>
                        <strong>
                            "Copy the token “" {created.api_token.name}
                            "” now: it will not be shown again."
                        </strong>
                    </p>
                    <label for="new-token" class="visually-hidden">
                        "New API token"
                    </label>
                    <input id="new-token" class="copy" type="text" readonly value=created.token/>
                </div>
            }
        })
    };

    view! {
        <Title text="API tokens · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let body = match tokens.await {
                    Ok(Access::Allowed(tokens)) => {
                        view! {
                            {token_table(tokens, &org.slug, &csrf, revoke)}
                            <h3>"Create a token"</h3>
                            <ActionForm action=create>
                                <CsrfField csrf/>
                                <input type="hidden" name="org" value=org.slug/>
                                <div class="inline">
                                    <div>
                                        <label for="token-name">"Name"</label>
                                        <input
                                            id="token-name"
                                            name="name"
                                            type="text"
                                            required
                                            autocomplete="off"
                                        />
                                    </div>
                                    <div>
                                        <label for="token-role">"Role"</label>
                                        <RoleSelect id="token-role" selected=Role::Viewer/>
                                    </div>
                                    <div>
                                        <label for="token-expires">"Expires (optional)"</label>
                                        <input id="token-expires" name="expires_on" type="date"/>
                                    </div>
                                    <Submit
                                        id="token-submit"
                                        label="Create token"
                                        pending=create.pending()
                                    />
                                </div>
                                {action_error(create)}
                            </ActionForm>
                        }
                            .into_any()
                    }
                    Ok(Access::Denied(reason)) => view! { <Notice text=reason/> }.into_any(),
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <h2>"API tokens"</h2>
                            {new_token}
                            {action_error(revoke)}
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

fn token_table(
    tokens: Vec<ApiToken>,
    org: &str,
    csrf: &str,
    revoke: ServerAction<RevokeApiToken>,
) -> impl IntoView + use<> {
    if tokens.is_empty() {
        return view! { <p class="muted">"No API tokens yet."</p> }.into_any();
    }
    let time_or = |time: &Option<String>, none: &'static str| {
        time.as_deref().map_or_else(|| none.to_owned(), format_time)
    };
    let rows = tokens
        .into_iter()
        .map(|token| {
            let action = match &token.revoked_at {
                Some(at) => {
                    view! { <span class="muted">"Revoked " {format_time(at)}</span> }.into_any()
                }
                None => {
                    let (org, csrf, id) = (org.to_owned(), csrf.to_owned(), token.id.clone());
                    view! {
                    <ActionForm action=revoke>
                        <CsrfField csrf/>
                        <input type="hidden" name="org" value=org/>
                        <input type="hidden" name="id" value=id/>
                        <Submit label="Revoke" class="danger" pending=revoke.pending()/>
                    </ActionForm>
                    }
                    .into_any()
                }
            };
            view! {
                <tr class:revoked=token.revoked_at.is_some()>
                    <td>{token.name.clone()}</td>
                    <td>
                        <code>{token.prefix.clone()} "…"</code>
                    </td>
                    <td>{token.role.label()}</td>
                    <td>{token.created_by.clone()}</td>
                    <td>{format_time(&token.created_at)}</td>
                    <td>{time_or(&token.expires_at, "never")}</td>
                    <td>{time_or(&token.last_used_at, "never")}</td>
                    <td class="actions">{action}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="tokens">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Prefix"</th>
                    <th scope="col">"Role"</th>
                    <th scope="col">"Created by"</th>
                    <th scope="col">"Created"</th>
                    <th scope="col">"Expires"</th>
                    <th scope="col">"Last used"</th>
                    <th scope="col">"Actions"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::end_of_day;

    #[test]
    fn expiry_is_the_end_of_the_chosen_day_in_utc() {
        assert_eq!(
            end_of_day("2026-12-31").unwrap().as_deref(),
            Some("2026-12-31T23:59:59Z")
        );
        assert_eq!(end_of_day("  ").unwrap(), None);
    }

    #[test]
    fn malformed_expiry_is_refused() {
        assert!(end_of_day("31/12/2026").is_err());
        assert!(end_of_day("2026-1-31").is_err());
    }
}

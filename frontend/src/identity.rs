//! Who is signed in: the session shown in the header, and the sign-in page.
//!
//! Signing in and out are plain backend routes (`/auth/...`), reached by full page loads, so they
//! work without JavaScript.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

use crate::{
    api::{Role, is_local_path, url_encode},
    components::{ErrorBox, Loading, Refresh},
};

/// What the sign-in page offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignInOptions {
    pub providers: Vec<ProviderInfo>,
    pub dev_sign_in: bool,
}

/// An OpenID Connect provider one can sign in with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub id: String,
    pub name: String,
}

/// The signed-in user, as the header and forms need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub email: String,
    pub display_name: Option<String>,
    /// Sent back as the hidden `csrf` field of every form.
    pub csrf: String,
    /// The user's organisations, by name.
    pub organizations: Vec<OrgLink>,
}

/// An organisation the user belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrgLink {
    pub slug: String,
    pub name: String,
    pub role: Role,
}

/// The session, loaded once per page and again after every change (see [`Refresh`]).
pub type SessionResource = Resource<Result<Option<Session>, ServerFnError>>;

/// Loads the session for the app and shares it with every page.
pub fn provide_session() {
    // Blocking: the `/` redirect must be decided before the response headers go out.
    let session: SessionResource = Resource::new_blocking(Refresh::generation, |_| get_session());
    provide_context(session);
}

pub fn use_session() -> SessionResource {
    expect_context::<SessionResource>()
}

/// The signed-in user, or `None` for a visitor.
#[server(endpoint = "session")]
pub async fn get_session() -> Result<Option<Session>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        me: Me,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Me {
        email: String,
        display_name: Option<String>,
        organizations: Vec<Membership>,
    }
    #[derive(Deserialize)]
    struct Membership {
        role: Role,
        organization: Org,
    }
    #[derive(Deserialize)]
    struct Org {
        slug: String,
        name: String,
    }

    let (backend, parts) = crate::backend::current().map_err(ServerFnError::new)?;
    let Some(csrf) = backend.0.csrf_token(&parts) else {
        return Ok(None);
    };
    let query = "query Session { me { email displayName \
                 organizations { role organization { slug name } } } }";
    let me = match crate::api::gql_raw::<Data>(query, serde_json::json!({}), None).await {
        Ok(data) => data.me,
        Err(failure) if failure.is("UNAUTHENTICATED") => return Ok(None),
        Err(failure) => return Err(failure.into()),
    };
    let mut organizations: Vec<OrgLink> = me
        .organizations
        .into_iter()
        .map(|m| OrgLink {
            slug: m.organization.slug,
            name: m.organization.name,
            role: m.role,
        })
        .collect();
    organizations.sort_by_key(|org| org.name.to_lowercase());
    Ok(Some(Session {
        email: me.email,
        display_name: me.display_name,
        csrf,
        organizations,
    }))
}

#[server(endpoint = "sign_in_options")]
pub async fn get_sign_in_options() -> Result<SignInOptions, ServerFnError> {
    let (backend, _) = crate::backend::current().map_err(ServerFnError::new)?;
    Ok(backend.0.sign_in_options())
}

/// `/signin`: provider links, the development sign-in form, and the error the backend sent
/// back in `?error=`.
#[component]
pub fn SignInPage() -> impl IntoView {
    let query = use_query_map();
    let options = Resource::new(|| (), |_| get_sign_in_options());
    let error = move || {
        query
            .read()
            .get("error")
            .filter(|e| !e.trim().is_empty())
            .map(|error| {
                view! {
                    <div id="error" class="error" role="alert">
                        <p>{error}</p>
                    </div>
                }
            })
    };
    // Passed on to the provider so the visitor lands where they were going.
    let return_query = move || {
        query
            .read_untracked()
            .get("return_to")
            .filter(|path| is_local_path(path))
            .map(|path| format!("?return_to={}", url_encode(&path)))
            .unwrap_or_default()
    };

    view! {
        <Title text="Sign in · Qleet"/>
        <section class="signin card">
            <h1>"Sign in to Qleet"</h1>
            {error}
            <Suspense fallback=Loading>
                {move || Suspend::new(async move {
                    match options.await {
                        Ok(options) => {
                            sign_in_choices(options, return_query()).into_any()
                        }
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

fn sign_in_choices(options: SignInOptions, return_query: String) -> impl IntoView {
    let nothing = options.providers.is_empty() && !options.dev_sign_in;
    let providers = (!options.providers.is_empty()).then(|| {
        view! {
            <ul class="providers">
                {options
                    .providers
                    .into_iter()
                    .map(|provider| {
                        let href = format!(
                            "/auth/login/{}{return_query}",
                            url_encode(&provider.id),
                        );
                        view! {
                            <li>
                                <a
                                    class="provider button"
                                    data-provider=provider.id
                                    href=href
                                    rel="external"
                                >
                                    "Sign in with "
                                    {provider.name}
                                </a>
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
        }
    });
    let dev = options.dev_sign_in.then(|| {
        view! {
            <section class="dev-signin">
                <h2>"Development sign-in (qleet dev only)"</h2>
                <p class="hint">
                    "Signs in as any email address without a password. "
                    "Only offered by servers running in development mode."
                </p>
                <form method="post" action="/auth/dev">
                    <label for="signin-dev-email">"Email"</label>
                    <input
                        id="signin-dev-email"
                        name="email"
                        type="email"
                        required
                        autocomplete="email"
                    />
                    <label for="signin-dev-name">"Name"</label>
                    <input id="signin-dev-name" name="name" type="text" autocomplete="name"/>
                    <button id="signin-dev-submit" type="submit">
                        "Sign in (development)"
                    </button>
                </form>
            </section>
        }
    });
    view! {
        {providers}
        {dev}
        {nothing.then(|| view! { <p class="notice">"No sign-in method is configured."</p> })}
    }
}

/// The header's right-hand side: who is signed in, and the sign-out button.
pub fn signed_in_as(session: &Session) -> impl IntoView + use<> {
    let title = session.display_name.clone().unwrap_or_default();
    view! {
        <div class="user">
            <span id="signed-in-as" title=title>
                {session.email.clone()}
            </span>
            <form class="signout" method="post" action="/auth/logout">
                <input type="hidden" name="csrf" value=session.csrf.clone()/>
                <button id="signout" type="submit" class="link">
                    "Sign out"
                </button>
            </form>
        </div>
    }
}

//! Organisations: the list and the create form (`/orgs`), and the frame of one organisation's
//! pages (`/orgs/:slug/...`): its title and tabs.

pub mod audit;
pub mod billing;
pub mod control_planes;
pub mod members;
pub mod overview;
pub mod tokens;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{
    components::{A, Outlet},
    hooks::use_params_map,
};
use serde::{Deserialize, Serialize};

use crate::{
    api::Role,
    components::{CsrfField, ErrorBox, Loading, Refresh, Submit, action_error, mutation},
    identity::{OrgLink, SessionResource, use_session},
};

/// The organisation the `/orgs/:slug` pages share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: String,
    pub viewer_role: Role,
}

/// Provided by [`OrgLayout`] to the tab pages.
#[derive(Clone, Copy)]
pub struct OrgContext {
    /// From the URL.
    pub slug: Memo<String>,
    pub org: Resource<Result<Organization, ServerFnError>>,
}

#[server(endpoint = "organization")]
pub async fn get_organization(slug: String) -> Result<Organization, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Organization,
    }
    let query = "query Organization($slug: String!) { organization(slug: $slug) \
                 { id slug name createdAt viewerRole } }";
    let data: Data = crate::api::gql(query, serde_json::json!({ "slug": slug }), None).await?;
    Ok(data.organization)
}

/// Creates an organisation and goes to it. Works as a plain form post without JavaScript.
#[server(endpoint = "create_organization")]
pub async fn create_organization(
    csrf: String,
    slug: String,
    name: String,
) -> Result<(), ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        create_organization: Created,
    }
    #[derive(Deserialize)]
    struct Created {
        slug: String,
    }
    let query = "mutation CreateOrganization($slug: String!, $name: String!) \
                 { createOrganization(slug: $slug, name: $name) { slug } }";
    let variables = serde_json::json!({ "slug": slug.trim(), "name": name.trim() });
    let data: Data = crate::api::gql(query, variables, Some(csrf)).await?;
    let slug = crate::api::url_encode(&data.create_organization.slug);
    leptos_axum::redirect(&format!("/orgs/{slug}"));
    Ok(())
}

/// `/orgs`: the user's organisations and the create form.
#[component]
pub fn OrgsPage() -> impl IntoView {
    let session = use_session();
    let create = mutation::<CreateOrganization>();

    view! {
        <Title text="Organisations · Qleet"/>
        <h1>"Organisations"</h1>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match session.await {
                    Ok(Some(session)) => {
                        view! {
                            {org_list(session.organizations)}
                            <section class="card">
                                <h2>"Create organisation"</h2>
                                <ActionForm action=create>
                                    <CsrfField csrf=session.csrf/>
                                    <label for="create-org-name">"Name"</label>
                                    <input
                                        id="create-org-name"
                                        name="name"
                                        type="text"
                                        required
                                        autocomplete="organization"
                                    />
                                    <label for="create-org-slug">"Slug"</label>
                                    <input
                                        id="create-org-slug"
                                        name="slug"
                                        type="text"
                                        required
                                        autocomplete="off"
                                        aria-describedby="create-org-slug-hint"
                                    />
                                    <p id="create-org-slug-hint" class="hint">
                                        "Part of the organisation's address, e.g. acme-robotics."
                                    </p>
                                    {action_error(create)}
                                    <Submit
                                        id="create-org-submit"
                                        label="Create organisation"
                                        pending=create.pending()
                                    />
                                </ActionForm>
                            </section>
                        }
                            .into_any()
                    }
                    Ok(None) => {
                        view! { <ErrorBox error=ServerFnError::new(crate::api::NOT_SIGNED_IN)/> }
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

fn org_list(orgs: Vec<OrgLink>) -> impl IntoView {
    if orgs.is_empty() {
        return view! { <p class="notice">"You are not a member of any organisation yet."</p> }
            .into_any();
    }
    view! {
        <ul class="org-list">
            {orgs
                .into_iter()
                .map(|org| {
                    view! {
                        <li>
                            <a href=format!("/orgs/{}", org.slug)>{org.name}</a>
                            " "
                            <span class="muted">{org.slug}</span>
                            " "
                            <span class="badge">{org.role.label()}</span>
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
    .into_any()
}

/// The frame of `/orgs/:slug/...`: title, tabs, and the tab's page.
#[component]
pub fn OrgLayout() -> impl IntoView {
    let params = use_params_map();
    let slug = Memo::new(move |_| params.read().get("slug").unwrap_or_default());
    let org = Resource::new(
        move || (slug.get(), Refresh::generation()),
        |(slug, _)| get_organization(slug),
    );
    provide_context(OrgContext { slug, org });
    let alert = billing::billing_alert_resource(slug);

    view! {
        <Title text="Organisation · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match org.await {
                    Ok(org) => {
                        let base = format!("/orgs/{}", org.slug);
                        view! {
                            <div class="org-head">
                                <h1 id="org-title">{org.name}</h1>
                                <span class="badge">
                                    "Your role: " {org.viewer_role.label()}
                                </span>
                            </div>
                            <nav class="tabs" aria-label="Organisation">
                                <A href=base.clone() exact=true>
                                    "Overview"
                                </A>
                                <A href=format!("{base}/control-planes")>"Control planes"</A>
                                <A href=format!("{base}/tokens")>"API tokens"</A>
                                <A href=format!("{base}/audit")>"Audit log"</A>
                                {org
                                    .viewer_role
                                    .is_admin()
                                    .then(|| {
                                        view! { <A href=format!("{base}/billing")>"Billing"</A> }
                                    })}
                            </nav>
                        }
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                }
            })}
        </Transition>
        // Outside the Transition, like the page below, so that resources and transitions are
        // created in the same order on the server and while hydrating (see PastDueBanner).
        <billing::PastDueBanner slug alert/>
        // Outside the Transition so a reload of the title keeps the tab's state (e.g. a new
        // token shown once). The tab hides itself when the organisation failed to load.
        <Outlet/>
    }
}

/// What a tab page needs before it shows anything: the CSRF token and the organisation.
/// `None` when either failed; [`OrgLayout`] already shows that error.
pub async fn tab_basics(
    session: SessionResource,
    org: OrgContext,
) -> Option<(String, Organization)> {
    let session = session.await.ok().flatten()?;
    let org = org.org.await.ok()?;
    Some((session.csrf, org))
}

//! `/orgs/:slug`: the organisation's details, rename (admins), members and invitations, and
//! deleting it (owner).

use leptos::prelude::*;

use crate::{
    api::{Role, format_time},
    components::{CsrfField, Loading, Submit, action_error, mutation},
    identity::use_session,
    orgs::{
        OrgContext,
        members::{InvitationsSection, MembersSection},
        tab_basics,
    },
};

#[server(endpoint = "rename_organization")]
pub async fn rename_organization(
    csrf: String,
    org: String,
    name: String,
) -> Result<(), ServerFnError> {
    let query = "mutation RenameOrganization($slug: String!, $name: String!) \
                 { renameOrganization(slug: $slug, name: $name) { id } }";
    let variables = serde_json::json!({ "slug": org, "name": name.trim() });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

#[server(endpoint = "delete_organization")]
pub async fn delete_organization(
    csrf: String,
    org: String,
    confirm_slug: String,
) -> Result<(), ServerFnError> {
    let query = "mutation DeleteOrganization($slug: String!, $confirmSlug: String!) \
                 { deleteOrganization(slug: $slug, confirmSlug: $confirmSlug) }";
    let variables = serde_json::json!({ "slug": org, "confirmSlug": confirm_slug.trim() });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    leptos_axum::redirect("/orgs");
    Ok(())
}

#[component]
pub fn OrgOverview() -> impl IntoView {
    view! {
        <Details/>
        <MembersSection/>
        <InvitationsSection/>
        <DeleteSection/>
    }
}

/// Slug, creation time, role, and the rename form for admins.
#[component]
fn Details() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let rename = mutation::<RenameOrganization>();

    view! {
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let (slug, name) = (org.slug.clone(), org.name.clone());
                let rename_form = org.viewer_role.is_admin().then(move || {
                    view! {
                        <ActionForm action=rename>
                            <CsrfField csrf/>
                            <input type="hidden" name="org" value=slug/>
                            <label for="rename-org-name">"Name"</label>
                            <div class="inline">
                                <input
                                    id="rename-org-name"
                                    name="name"
                                    type="text"
                                    required
                                    value=name
                                />
                                <Submit
                                    id="rename-org-submit"
                                    label="Rename"
                                    pending=rename.pending()
                                />
                            </div>
                            {action_error(rename)}
                        </ActionForm>
                    }
                });
                Some(
                    view! {
                        <section class="card">
                            <h2>"Overview"</h2>
                            <dl class="facts">
                                <dt>"Slug"</dt>
                                <dd>
                                    <code>{org.slug.clone()}</code>
                                </dd>
                                <dt>"Created"</dt>
                                <dd>{format_time(&org.created_at)}</dd>
                                <dt>"Your role"</dt>
                                <dd>{org.viewer_role.label()}</dd>
                            </dl>
                            {rename_form}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

/// Deleting the organisation, for its owners, after typing its slug.
#[component]
fn DeleteSection() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let delete = mutation::<DeleteOrganization>();

    view! {
        <Transition>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let (slug, pattern) = (org.slug.clone(), regex_literal(&org.slug));
                (org.viewer_role == Role::Owner)
                    .then(move || {
                        view! {
                            <section class="card danger">
                                <h2>"Delete organisation"</h2>
                                <p>
                                    "This deletes the organisation, its members' access, "
                                    "invitations and API tokens. It cannot be undone. "
                                    "Type the slug "
                                    <code>{org.slug.clone()}</code>
                                    " to confirm."
                                </p>
                                <ActionForm action=delete>
                                    <CsrfField csrf/>
                                    <input type="hidden" name="org" value=slug/>
                                    <label for="delete-org-confirm">"Slug"</label>
                                    <div class="inline">
                                        <input
                                            id="delete-org-confirm"
                                            name="confirm_slug"
                                            type="text"
                                            required
                                            autocomplete="off"
                                            pattern=pattern
                                            title="Type the organisation's slug exactly"
                                        />
                                        <Submit
                                            id="delete-org-submit"
                                            class="danger"
                                            label="Delete organisation"
                                            pending=delete.pending()
                                        />
                                    </div>
                                    {action_error(delete)}
                                </ActionForm>
                            </section>
                        }
                    })
            })}
        </Transition>
    }
}

/// `text` as an HTML `pattern` that matches only itself. Browsers compile patterns in Unicode
/// mode, where only syntax characters may be escaped.
pub(crate) fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "^$\\.*+?()[]{}|/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::regex_literal;

    #[test]
    fn slugs_become_exact_patterns() {
        assert_eq!(regex_literal("acme-robotics.io"), "acme-robotics\\.io");
    }
}

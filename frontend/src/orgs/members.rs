//! Who belongs to an organisation: the members table (role changes, removal) and the
//! invitations (list, invite, revoke), shown on `/orgs/:slug`.

use leptos::prelude::*;
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
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub joined_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invitation {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub created_at: String,
    pub expires_at: String,
    pub invited_by: String,
}

/// A new invitation and the link that accepts it (to send to the invitee).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedInvitation {
    pub invitation: Invitation,
    pub accept_url: String,
}

#[server(endpoint = "members")]
pub async fn list_members(org: String) -> Result<Vec<Member>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    struct Org {
        members: Vec<Member>,
    }
    let query = "query Members($slug: String!) { organization(slug: $slug) \
                 { members { userId email displayName role joinedAt } } }";
    let data: Data = crate::api::gql(query, serde_json::json!({ "slug": org }), None).await?;
    Ok(data.organization.members)
}

#[server(endpoint = "change_member_role")]
pub async fn change_member_role(
    csrf: String,
    org: String,
    user_id: String,
    role: Role,
) -> Result<(), ServerFnError> {
    let query = "mutation ChangeMemberRole($org: String!, $userId: ID!, $role: Role!) \
                 { changeMemberRole(org: $org, userId: $userId, role: $role) { userId } }";
    let variables = serde_json::json!({ "org": org, "userId": user_id, "role": role });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

#[server(endpoint = "remove_member")]
pub async fn remove_member(
    csrf: String,
    org: String,
    user_id: String,
) -> Result<(), ServerFnError> {
    let query = "mutation RemoveMember($org: String!, $userId: ID!) \
                 { removeMember(org: $org, userId: $userId) }";
    let variables = serde_json::json!({ "org": org, "userId": user_id });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

#[server(endpoint = "invitations")]
pub async fn list_invitations(org: String) -> Result<Access<Vec<Invitation>>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    struct Org {
        invitations: Vec<Invitation>,
    }
    let query = "query Invitations($slug: String!) { organization(slug: $slug) \
                 { invitations { id email role createdAt expiresAt invitedBy } } }";
    let access: Access<Data> =
        crate::api::gql_access(query, serde_json::json!({ "slug": org })).await?;
    Ok(match access {
        Access::Allowed(data) => Access::Allowed(data.organization.invitations),
        Access::Denied(reason) => Access::Denied(reason),
    })
}

#[server(endpoint = "invite_member")]
pub async fn invite_member(
    csrf: String,
    org: String,
    email: String,
    role: Role,
) -> Result<CreatedInvitation, ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        invite_member: CreatedInvitation,
    }
    let query = "mutation InviteMember($org: String!, $email: String!, $role: Role!) \
                 { inviteMember(org: $org, email: $email, role: $role) { acceptUrl \
                 invitation { id email role createdAt expiresAt invitedBy } } }";
    let variables = serde_json::json!({ "org": org, "email": email.trim(), "role": role });
    let data: Data = crate::api::gql(query, variables, Some(csrf)).await?;
    Ok(data.invite_member)
}

#[server(endpoint = "revoke_invitation")]
pub async fn revoke_invitation(csrf: String, org: String, id: String) -> Result<(), ServerFnError> {
    let query = "mutation RevokeInvitation($org: String!, $id: ID!) \
                 { revokeInvitation(org: $org, id: $id) }";
    let variables = serde_json::json!({ "org": org, "id": id });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

/// The members table; admins can change roles and remove members.
#[component]
pub fn MembersSection() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let members = Resource::new(
        move || (ctx.slug.get(), Refresh::generation()),
        |(slug, _)| list_members(slug),
    );
    let change_role = mutation::<ChangeMemberRole>();
    let remove = mutation::<RemoveMember>();

    view! {
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let body = match members.await {
                    Ok(members) => {
                        members_table(members, &org.slug, &csrf, org.viewer_role, change_role, remove)
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <h2>"Members"</h2>
                            {action_error(change_role)}
                            {action_error(remove)}
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

fn members_table(
    members: Vec<Member>,
    org: &str,
    csrf: &str,
    viewer_role: Role,
    change_role: ServerAction<ChangeMemberRole>,
    remove: ServerAction<RemoveMember>,
) -> impl IntoView + use<> {
    let admin = viewer_role.is_admin();
    let rows = members
        .into_iter()
        .map(|member| {
            let controls = admin.then(|| {
                view! {
                    <td class="actions">
                        {member_controls(&member, org, csrf, change_role, remove)}
                    </td>
                }
            });
            view! {
                <tr>
                    <td>{member.display_name.clone().unwrap_or_default()}</td>
                    <td>{member.email.clone()}</td>
                    <td>{member.role.label()}</td>
                    <td>{format_time(&member.joined_at)}</td>
                    {controls}
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="members">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Email"</th>
                    <th scope="col">"Role"</th>
                    <th scope="col">"Joined"</th>
                    {admin.then(|| view! { <th scope="col">"Actions"</th> })}
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

fn member_controls(
    member: &Member,
    org: &str,
    csrf: &str,
    change_role: ServerAction<ChangeMemberRole>,
    remove: ServerAction<RemoveMember>,
) -> impl IntoView + use<> {
    let select_id = format!("member-role-{}", member.user_id);
    let label = format!("Role of {}", member.email);
    let role = member.role;
    let (org, csrf, user_id) = (org.to_owned(), csrf.to_owned(), member.user_id.clone());
    let (org2, csrf2, user_id2) = (org.clone(), csrf.clone(), user_id.clone());
    view! {
        <ActionForm action=change_role>
            <CsrfField csrf/>
            <input type="hidden" name="org" value=org/>
            <input type="hidden" name="user_id" value=user_id/>
            <label for=select_id.clone() class="visually-hidden">
                {label}
            </label>
            <RoleSelect id=select_id selected=role/>
            <Submit label="Change role" pending=change_role.pending()/>
        </ActionForm>
        <ActionForm action=remove>
            <CsrfField csrf=csrf2/>
            <input type="hidden" name="org" value=org2/>
            <input type="hidden" name="user_id" value=user_id2/>
            <Submit label="Remove" class="danger" pending=remove.pending()/>
        </ActionForm>
    }
}

/// Pending invitations and the invite form (admins); lower roles see why it is hidden.
#[component]
pub fn InvitationsSection() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let invitations = Resource::new(
        move || (ctx.slug.get(), Refresh::generation()),
        |(slug, _)| list_invitations(slug),
    );
    let invite = mutation::<InviteMember>();
    let revoke = mutation::<RevokeInvitation>();

    // The accept link exists only in this answer: show it until the next invitation.
    let accept_link = move || {
        invite.value().get().and_then(Result::ok).map(|created| {
            view! {
                <div class="success" role="status">
                    <p>
                        "Invitation created for " <strong>{created.invitation.email}</strong>
                        ". Send them this link:"
                    </p>
                    <label for="invite-accept-url" class="visually-hidden">
                        "Invitation link"
                    </label>
                    <input
                        id="invite-accept-url"
                        class="copy"
                        type="text"
                        readonly
                        value=created.accept_url
                    />
                </div>
            }
        })
    };

    view! {
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let body = match invitations.await {
                    Ok(Access::Allowed(invitations)) => {
                        view! {
                            {invitation_table(invitations, &org.slug, &csrf, revoke)}
                            <h3>"Invite someone"</h3>
                            <ActionForm action=invite>
                                <CsrfField csrf/>
                                <input type="hidden" name="org" value=org.slug/>
                                <div class="inline">
                                    <div>
                                        <label for="invite-email">"Email"</label>
                                        <input
                                            id="invite-email"
                                            name="email"
                                            type="email"
                                            required
                                            autocomplete="off"
                                        />
                                    </div>
                                    <div>
                                        <label for="invite-role">"Role"</label>
                                        <RoleSelect id="invite-role" selected=Role::Member/>
                                    </div>
                                    <Submit
                                        id="invite-submit"
                                        label="Invite"
                                        pending=invite.pending()
                                    />
                                </div>
                                {action_error(invite)}
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
                            <h2>"Invitations"</h2>
                            {accept_link}
                            {action_error(revoke)}
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

fn invitation_table(
    invitations: Vec<Invitation>,
    org: &str,
    csrf: &str,
    revoke: ServerAction<RevokeInvitation>,
) -> impl IntoView + use<> {
    if invitations.is_empty() {
        return view! { <p class="muted">"No pending invitations."</p> }.into_any();
    }
    let rows = invitations
        .into_iter()
        .map(|invitation| {
            let (org, csrf) = (org.to_owned(), csrf.to_owned());
            view! {
                <tr>
                    <td>{invitation.email}</td>
                    <td>{invitation.role.label()}</td>
                    <td>{invitation.invited_by}</td>
                    <td>{format_time(&invitation.expires_at)}</td>
                    <td class="actions">
                        <ActionForm action=revoke>
                            <CsrfField csrf/>
                            <input type="hidden" name="org" value=org/>
                            <input type="hidden" name="id" value=invitation.id/>
                            <Submit label="Revoke" class="danger" pending=revoke.pending()/>
                        </ActionForm>
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="invitations">
            <thead>
                <tr>
                    <th scope="col">"Email"</th>
                    <th scope="col">"Role"</th>
                    <th scope="col">"Invited by"</th>
                    <th scope="col">"Expires"</th>
                    <th scope="col">"Actions"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

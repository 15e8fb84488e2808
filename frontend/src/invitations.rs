//! `/invitations/:token`: accepting an invitation to an organisation.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use crate::{
    api::url_encode,
    components::{CsrfField, ErrorBox, Loading, Submit, action_error, mutation},
    identity::use_session,
};

/// Joins the organisation the invitation is for, then goes to it.
#[server(endpoint = "accept_invitation")]
pub async fn accept_invitation(csrf: String, token: String) -> Result<(), ServerFnError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        accept_invitation: Org,
    }
    #[derive(serde::Deserialize)]
    struct Org {
        slug: String,
    }
    let query = "mutation AcceptInvitation($token: String!) \
                 { acceptInvitation(token: $token) { slug } }";
    let data: Data =
        crate::api::gql(query, serde_json::json!({ "token": token }), Some(csrf)).await?;
    let slug = crate::api::url_encode(&data.accept_invitation.slug);
    leptos_axum::redirect(&format!("/orgs/{slug}"));
    Ok(())
}

#[component]
pub fn AcceptInvitationPage() -> impl IntoView {
    let params = use_params_map();
    let session = use_session();
    let accept = mutation::<AcceptInvitation>();

    view! {
        <Title text="Invitation · Qleet"/>
        <section class="card">
            <h1>"Join an organisation"</h1>
            <Suspense fallback=Loading>
                {move || Suspend::new(async move {
                    let token = params.read_untracked().get("token").unwrap_or_default();
                    match session.await {
                        Ok(Some(session)) => {
                            view! {
                                <p>
                                    "You have been invited to join an organisation on Qleet. "
                                    "Accepting adds " <strong>{session.email}</strong>
                                    " as a member."
                                </p>
                                <ActionForm action=accept>
                                    <CsrfField csrf=session.csrf/>
                                    <input type="hidden" name="token" value=token/>
                                    {action_error(accept)}
                                    <Submit
                                        id="accept-invitation"
                                        label="Accept invitation"
                                        pending=accept.pending()
                                    />
                                </ActionForm>
                            }
                                .into_any()
                        }
                        Ok(None) => {
                            let back = url_encode(&format!("/invitations/{token}"));
                            view! {
                                <p>"Sign in to accept this invitation."</p>
                                <p>
                                    <a
                                        class="button signin-link"
                                        href=format!("/signin?return_to={back}")
                                    >
                                        "Sign in"
                                    </a>
                                </p>
                            }
                                .into_any()
                        }
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

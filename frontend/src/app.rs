//! The document shell, the routes, and the frame around every page (header, footer, 404).

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::{
    SsrMode,
    components::{A, ParentRoute, Redirect, Route, Router, Routes},
    hooks::use_location,
    path,
};

use crate::{
    components::{ErrorBox, Refresh, raw_text_element},
    identity::{OrgLink, SignInPage, provide_session, signed_in_as, use_session},
    invitations::AcceptInvitationPage,
    orgs::{
        OrgLayout, OrgsPage,
        audit::AuditPage,
        billing::BillingPage,
        control_planes::{
            agents::AgentsPage,
            detail::ControlPlanePage,
            kinds::KindsPage,
            list::ControlPlanesPage,
            objects::{
                ControlPlaneLayout, apply::ApplyPage, detail::ObjectPage, graph::GraphPage,
                list::ObjectsPage,
            },
            trail::ControlPlaneAuditPage,
        },
        overview::OrgOverview,
        tokens::TokensPage,
    },
};

/// The HTML document the backend renders; loads `/pkg/qleet.css`, `/pkg/qleet.js` and
/// `/pkg/qleet_bg.wasm` (for `output_name = "qleet"`, `site_pkg_dir = "pkg"`).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    let stylesheet = format!("/{}/{}.css", options.site_pkg_dir, options.output_name);
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="stylesheet" href=stylesheet/>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The whole UI: header, routed page, footer.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    Refresh::provide();
    provide_session();

    view! {
        // Every page's `<Title>` text passes through this formatter (pages set text only).
        <Title text="Qleet" formatter=raw_text_element/>
        <Router>
            <Header/>
            <main>
                // Async: each page is sent whole, once its data has loaded, so it reads the same
                // with JavaScript off (out-of-order streaming would need JS to fill it in) and
                // `/` can answer with a real redirect.
                <Routes fallback=NotFound>
                    <Route path=path!("/") view=Home ssr=SsrMode::Async/>
                    <Route path=path!("/signin") view=SignInPage ssr=SsrMode::Async/>
                    <Route path=path!("/orgs") view=OrgsPage ssr=SsrMode::Async/>
                    <ParentRoute path=path!("/orgs/:slug") view=OrgLayout ssr=SsrMode::Async>
                        <Route path=path!("") view=OrgOverview/>
                        <Route path=path!("control-planes") view=ControlPlanesPage/>
                        <ParentRoute path=path!("control-planes/:id") view=ControlPlaneLayout>
                            <Route path=path!("") view=ControlPlanePage/>
                            <Route path=path!("objects") view=ObjectsPage/>
                            <Route path=path!("objects/:kind/:name") view=ObjectPage/>
                            <Route path=path!("graph") view=GraphPage/>
                            <Route path=path!("apply") view=ApplyPage/>
                            <Route path=path!("agents") view=AgentsPage/>
                            <Route path=path!("audit") view=ControlPlaneAuditPage/>
                            <Route path=path!("kinds") view=KindsPage/>
                        </ParentRoute>
                        <Route path=path!("tokens") view=TokensPage/>
                        <Route path=path!("audit") view=AuditPage/>
                        <Route path=path!("billing") view=BillingPage/>
                    </ParentRoute>
                    <Route
                        path=path!("/invitations/:token")
                        view=AcceptInvitationPage
                        ssr=SsrMode::Async
                    />
                </Routes>
            </main>
            <footer class="site">
                <a href="/graphql" rel="external">
                    "GraphQL API (GraphiQL)"
                </a>
            </footer>
        </Router>
    }
}

/// `/`: to the organisations when signed in, else to the sign-in page.
#[component]
fn Home() -> impl IntoView {
    let session = use_session();
    view! {
        <Suspense>
            {move || Suspend::new(async move {
                match session.await {
                    Ok(Some(_)) => view! { <Redirect path="/orgs"/> }.into_any(),
                    Ok(None) => view! { <Redirect path="/signin"/> }.into_any(),
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Header() -> impl IntoView {
    let session = use_session();
    view! {
        <header class="site">
            <A href="/">
                <span class="brand">"Qleet"</span>
            </A>
            <Transition>
                {move || Suspend::new(async move {
                    match session.await {
                        Ok(Some(session)) => {
                            view! {
                                <OrgSwitcher orgs=session.organizations.clone()/>
                                {signed_in_as(&session)}
                            }
                                .into_any()
                        }
                        Ok(None) => {
                            view! {
                                <a class="signin-link" href="/signin">
                                    "Sign in"
                                </a>
                            }
                                .into_any()
                        }
                        // The page itself shows the error.
                        Err(_) => ().into_any(),
                    }
                })}
            </Transition>
        </header>
    }
}

/// A disclosure listing the user's organisations, labelled with the one being viewed.
#[component]
fn OrgSwitcher(orgs: Vec<OrgLink>) -> impl IntoView {
    let pathname = use_location().pathname;
    // Rebuilt on every navigation, which also closes it after a pick.
    move || {
        let path = pathname.get();
        let current = path
            .strip_prefix("/orgs/")
            .and_then(|rest| rest.split('/').next())
            .and_then(|slug| orgs.iter().find(|org| org.slug == slug));
        let label = current.map_or_else(|| "Organisations".to_owned(), |org| org.name.clone());
        let items = orgs
            .iter()
            .map(|org| {
                let is_current = current.is_some_and(|c| c.slug == org.slug);
                view! {
                    <li>
                        <a
                            href=format!("/orgs/{}", org.slug)
                            aria-current=is_current.then_some("page")
                        >
                            {org.name.clone()}
                        </a>
                    </li>
                }
            })
            .collect_view();
        view! {
            <nav class="org-switcher" aria-label="Organisations">
                <details>
                    <summary>{label}</summary>
                    <ul>
                        {items}
                        <li class="all">
                            <a href="/orgs">"All organisations…"</a>
                        </li>
                    </ul>
                </details>
            </nav>
        }
    }
}

/// Unknown paths; answers 404 on the server.
#[component]
fn NotFound() -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::NOT_FOUND);
    }
    view! {
        <Title text="Not found · Qleet"/>
        <section class="card">
            <h1>"Page not found"</h1>
            <p>"There is nothing at this address."</p>
            <p>
                <a href="/orgs">"Go to your organisations"</a>
            </p>
        </section>
    }
}

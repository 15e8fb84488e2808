//! Qleet's web UI: Leptos pages that the backend renders on the server and the browser then
//! hydrates. Its server functions reach the backend only through [`backend::BackendApi`] —
//! GraphQL as the signed-in user — so the UI holds no business rules of its own. Build the
//! browser half with `scripts/build-ui.sh`.

mod api;
mod app;
#[cfg(feature = "ssr")]
pub mod backend;
mod components;
mod identity;
mod invitations;
mod orgs;

pub use app::{App, shell};

/// Entry point of the browser build: attaches the UI to the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}

//! Small building blocks shared by the pages: error boxes, form fields, and the "something
//! changed, reload the data" signal that follows every successful form.

use leptos::{prelude::*, server_fn::ServerFn};
use leptos_router::hooks::use_location;

use crate::api::{RETRY_SECONDS, Role, error_text, is_not_signed_in, is_retryable, url_encode};

/// Bumped after every successful mutation; every data resource lists it in its source, so the
/// page (and the header's organisation list) reloads what may have changed.
#[derive(Clone, Copy)]
pub struct Refresh(RwSignal<usize>);

impl Refresh {
    pub fn provide() {
        provide_context(Refresh(RwSignal::new(0)));
    }

    /// The current generation; read it in a resource's source to reload after mutations.
    pub fn generation() -> usize {
        expect_context::<Refresh>().0.get()
    }
}

/// A server action whose success reloads the page's data (see [`Refresh`]).
pub fn mutation<S>() -> ServerAction<S>
where
    S: ServerFn + Clone + Send + Sync + 'static,
    S::Output: Send + Sync + 'static,
    S::Error: Send + Sync + 'static,
{
    let action = ServerAction::<S>::new();
    let Refresh(generation) = expect_context::<Refresh>();
    Effect::new(move |_| {
        action.version().track();
        if action
            .value()
            .with_untracked(|value| matches!(value, Some(Ok(_))))
        {
            generation.update(|n| *n += 1);
        }
    });
    action
}

/// A readable error; offers a sign-in link when the error says the visitor is signed out.
///
/// A retryable error (the backend briefly unavailable, a control plane restarting) of the
/// page's data is asked again by itself after [`RETRY_SECONDS`]: in the browser by reloading
/// the page's data (see [`Refresh`]), without JavaScript by a `<noscript>` refresh of the page.
/// The error of a form (`action`) is not repeated by itself: it says to try again.
#[component]
pub fn ErrorBox(error: ServerFnError, #[prop(optional)] action: bool) -> impl IntoView {
    let sign_in = is_not_signed_in(&error).then(|| {
        let here = use_location().pathname.get_untracked();
        view! {
            " "
            <a class="signin-link" href=format!("/signin?return_to={}", url_encode(&here))>
                "Sign in"
            </a>
        }
    });
    let retry = is_retryable(&error);
    let hint = retry.then_some(if action {
        " Try again in a few seconds."
    } else {
        " This page tries again by itself in a few seconds."
    });
    let again = (retry && !action).then(|| {
        reload_data_later();
        view! {
            <noscript inner_html=format!(
                r#"<meta http-equiv="refresh" content="{RETRY_SECONDS}">"#,
            )></noscript>
        }
    });
    view! {
        <div id="error" class="error" role="alert" data-retry=retry.then_some("true")>
            <p>{error_text(&error)} {hint} {sign_in}</p>
            {again}
        </div>
    }
}

/// In the browser, bumps the page's [`Refresh`] generation after [`RETRY_SECONDS`], so every
/// data resource of the page loads again (cancelled if the error is gone by then).
fn reload_data_later() {
    #[cfg(feature = "hydrate")]
    if let Some(Refresh(generation)) = use_context::<Refresh>()
        && let Ok(handle) = leptos::leptos_dom::helpers::set_timeout_with_handle(
            move || {
                generation.try_update(|n| *n += 1);
            },
            std::time::Duration::from_secs(RETRY_SECONDS),
        )
    {
        on_cleanup(move || handle.clear());
    }
}

/// The error of the last run of `action`, if it failed (also after a no-JavaScript post, when
/// Leptos carries the error back in the URL).
pub fn action_error<S>(action: ServerAction<S>) -> impl IntoView
where
    S: ServerFn<Error = ServerFnError> + Clone + Send + Sync + 'static,
    S::Output: Clone + Send + Sync + 'static,
{
    move || {
        action
            .value()
            .get()
            .and_then(Result::err)
            .map(|error| view! { <ErrorBox error action=true/> })
    }
}

/// A note explaining why a section is hidden from the visitor's role.
#[component]
pub fn Notice(#[prop(into)] text: String) -> impl IntoView {
    view! { <p class="notice">{text}</p> }
}

/// Shown while the first data of a page loads.
#[component]
pub fn Loading() -> impl IntoView {
    view! { <p class="loading" aria-live="polite">"Loading…"</p> }
}

/// The session's CSRF token as the hidden `csrf` field every mutating form sends.
#[component]
pub fn CsrfField(csrf: String) -> impl IntoView {
    view! { <input type="hidden" name="csrf" value=csrf/> }
}

/// A `role` select with all roles, `selected` preselected.
#[component]
pub fn RoleSelect(#[prop(into)] id: String, selected: Role) -> impl IntoView {
    view! {
        <select id=id name="role">
            {Role::ALL
                .into_iter()
                .map(|role| {
                    view! {
                        <option value=role.as_str() selected=role == selected>
                            {role.label()}
                        </option>
                    }
                })
                .collect_view()}
        </select>
    }
}

/// A submit button that is disabled while `pending`.
#[component]
pub fn Submit(
    #[prop(into)] label: String,
    pending: Memo<bool>,
    #[prop(optional, into)] id: Option<String>,
    #[prop(optional, into)] class: Option<String>,
) -> impl IntoView {
    view! {
        <button type="submit" id=id class=class disabled=move || pending.get()>
            {label}
        </button>
    }
}

/// `text` as the server must write it inside `<textarea>` or `<title>`.
///
/// Leptos writes the children of those two elements unescaped when it renders on the server
/// (tachys treats `<textarea>` as raw text, and leptos_meta copies the title string as is), so
/// a `</textarea>` or `</title>` in a query or path would end the element and start markup of
/// the visitor's choosing. The browser decodes the entities back, so the field and the title read
/// the original text. In the browser build text is set through the DOM, which never parses it:
/// there it passes unchanged.
pub fn raw_text_element(text: String) -> String {
    #[cfg(feature = "ssr")]
    {
        escape_text(&text)
    }
    #[cfg(not(feature = "ssr"))]
    {
        text
    }
}

/// Escapes `&`, `<` and `>` for HTML text.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_for_raw_text_elements_cannot_close_them() {
        assert_eq!(
            escape_text("</textarea><script>a && b</script>"),
            "&lt;/textarea&gt;&lt;script&gt;a &amp;&amp; b&lt;/script&gt;"
        );
        assert_eq!(escape_text("kind: Workload\n"), "kind: Workload\n");
    }
}

//! The headers that keep a browser from running, framing or sniffing anything Qleet did not mean
//! to serve: a strict Content-Security-Policy on every answer, `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and a same-origin `Referrer-Policy`.
//!
//! UI pages get [`page_policy`]: scripts only from this origin plus the per-response nonce Leptos
//! puts on its hydration scripts (`leptos::nonce`), and WebAssembly compilation for the hydrated
//! bundle. Every other answer that sets no policy of its own gets [`DEFAULT_POLICY`], which
//! allows nothing at all.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// For answers that are not pages (JSON, assets, redirects, errors): nothing may load or run.
pub const DEFAULT_POLICY: &str = "default-src 'none'; object-src 'none'; frame-ancestors 'none'; \
                                  base-uri 'none'; form-action 'none'";

/// The policy of a UI page whose inline scripts carry `nonce`.
///
/// - `script-src`: the bundle under `/pkg` and the nonce'd bootstrap and resource scripts;
///   `'wasm-unsafe-eval'` lets the bundle compile its WebAssembly (no JavaScript `eval`).
/// - `style-src 'self'`: only `/pkg/qleet.css`; no inline styles.
/// - `connect-src 'self'`: server functions and the live event streams.
/// - No `form-action`: a no-JavaScript form may end in a redirect to Stripe or a sign-in
///   provider, which `form-action 'self'` would block.
pub fn page_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; frame-ancestors 'none'"
    )
}

/// Middleware: adds the headers to every answer; keeps a policy the handler chose (UI pages).
pub async fn set(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(DEFAULT_POLICY));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_may_run_only_its_own_scripts_and_the_nonced_ones() {
        let policy = page_policy("abc123");
        let script_src = policy
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("script-src "))
            .expect("script-src");
        assert_eq!(
            script_src,
            "script-src 'self' 'nonce-abc123' 'wasm-unsafe-eval'"
        );
        for directive in [
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{policy}");
        }
        assert!(!policy.contains("unsafe-inline") && !policy.contains("'unsafe-eval'"));
    }
}

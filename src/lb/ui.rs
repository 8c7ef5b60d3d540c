//! The operator's page on the control port: `GET /` and its two assets.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the page (HTML) |
//! | `GET /ui/app.js` | its script |
//! | `GET /ui/app.css` | its style sheet |
//!
//! Everything is compiled into the binary (`include_str!`): no CDN, no build
//! step, nothing fetched at run time. The page is read-only: its script only
//! issues `GET /registry` and `GET /telemetry` (same origin, so
//! `registration.protect_reads` guards the page and its data alike) and keeps
//! the vitals history for the sparklines in the browser, so the LB stores
//! nothing for it. Every answer carries a `Content-Security-Policy` that
//! allows only same-origin scripts, styles and fetches, and no inline code.
//!
//! ## 10,000 backends: a virtualised list, aggregated counts on top
//!
//! The page shows one row per backend but builds DOM only for the rows in
//! view (fixed row height, a spacer sized to the whole list, ~30 pooled row
//! nodes reused on scroll and on each poll). The per-poll work that scales
//! with the pool is plain array work on numbers: counting states, filtering,
//! sorting, appending one sample per backend to preallocated `Float32Array`
//! rings (5 minutes of cpu, memory, requests in progress and the failed
//! counter). The header and the filter buttons aggregate the whole pool
//! (counts per state, routable, requests/s), and the default order puts
//! backends in trouble first, so the first screen answers "what is wrong"
//! without paging.
//!
//! Why not paging or a top-N: an operator looking for one pod must be able to
//! search for it and scroll to it, and a page boundary hides exactly the
//! neighbour they were comparing with. Why not tiles for everyone: 10,000
//! tiles are unreadable and cost a DOM node each. Polling backs off when a
//! poll gets expensive (a 10,000-entry `/registry` is a few MB of JSON), and
//! slows to every 10 s while the tab is hidden.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::State;

/// Same-origin scripts, styles and fetches only; no inline code, no frames,
/// no forms. `data:` images only for the empty favicon.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The page's routes; `api::router` mounts them with the other reads.
pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let h = HeaderValue::from_static;
    (
        [
            (header::CONTENT_TYPE, h(content_type)),
            (header::CONTENT_SECURITY_POLICY, h(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, h("nosniff")),
            (header::X_FRAME_OPTIONS, h("DENY")),
            (header::REFERRER_POLICY, h("no-referrer")),
            // Tiny files: always revalidate so an upgraded LB serves its own page.
            (header::CACHE_CONTROL, h("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_references_only_embedded_assets() {
        assert!(INDEX_HTML.contains(r#"src="/ui/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/app.css""#));
        // No inline script or style: the CSP would block it.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains("style=\""));
        // Nothing loaded from elsewhere (the SVG namespace is a name, not a fetch).
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn"));
        }
    }

    #[test]
    fn script_is_read_only() {
        for verb in ["POST", "DELETE", "PUT", "PATCH"] {
            assert!(!APP_JS.contains(&format!("'{verb}'")), "{verb}");
        }
    }
}

//! The docs pages (Swagger UI, ReDoc) and the spec files, all showing the same document.

use std::sync::Arc;

use poem::{
    Endpoint, EndpointExt, IntoResponse, Route, endpoint::make_sync, error::MethodNotAllowedError,
    get, http::Method, web::Html,
};
use poem_openapi::{OpenApi, OpenApiService};
use serde_json::Value;

use super::{API_PREFIX, render_spec};

/// The paths outside the spec: the docs pages and the spec files, all GET-only.
pub const PAGES: [&str; 5] = [
    "/docs",
    "/docs/oauth-receiver.html",
    "/redoc",
    "/api/v1/openapi.json",
    "/api/v1/openapi.yaml",
];

/// The routes of the docs pages and spec files, for `document`. poem-openapi's pages embed the
/// spec it derives; they get `document` instead (with what the derived spec cannot express),
/// so every view shows exactly what is served as `openapi.json`.
pub fn routes<T: OpenApi>(service: &OpenApiService<T, ()>, document: &Value) -> Route {
    let derived = service.spec();
    let full = serde_json::to_string(document).expect("a JSON document serialises");
    let embed = |html: String| -> Arc<str> {
        assert!(
            html.contains(&derived),
            "the docs page embeds the derived spec"
        );
        html.replacen(&derived, &full, 1).into()
    };
    let swagger = embed(service.swagger_ui_html());
    let redoc = embed(service.redoc_html());
    Route::new()
        .nest("/docs", swagger_page(service.swagger_ui(), swagger))
        .at("/redoc", get(html_page(redoc)))
        .at(
            format!("{API_PREFIX}/openapi.json"),
            get(text_document(
                render_spec(document, false),
                "application/json",
            )),
        )
        .at(
            format!("{API_PREFIX}/openapi.yaml"),
            get(text_document(
                render_spec(document, true),
                "application/yaml",
            )),
        )
}

fn text_document(text: String, content_type: &'static str) -> impl Endpoint {
    make_sync(move |_| {
        poem::Response::builder()
            .content_type(content_type)
            .body(text.clone())
    })
}

fn html_page(html: Arc<str>) -> impl Endpoint {
    make_sync(move |_| Html(html.to_string()))
}

/// Swagger UI's own routes (its OAuth redirect page) with its index page swapped for ours.
/// Both are pages to read: other methods get 405, as everywhere else.
fn swagger_page(ui: impl Endpoint + 'static, html: Arc<str>) -> impl Endpoint {
    ui.around(move |ui, request| {
        let html = html.clone();
        async move {
            if !matches!(*request.method(), Method::GET | Method::HEAD) {
                return Err(MethodNotAllowedError.into());
            }
            if request.uri().path().trim_end_matches('/').is_empty() {
                return Ok(Html(html.to_string()).into_response());
            }
            ui.call(request).await.map(IntoResponse::into_response)
        }
    })
}

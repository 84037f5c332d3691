//! The OpenAPI document's frame (title, version, the bearer scheme) and the error answers
//! most operations share. Each handler declares its own path, parameters, body and
//! answers next to its code (`#[utoipa::path]`); the router collects them, so an endpoint
//! cannot be served without being in `/openapi.json`.

use flotilla_api::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};

/// The document before the routes add their paths.
pub fn frame() -> OpenApi {
    let mut document = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Flotilla hub API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The hub's admin API (bearer tokens: read scope for reads, operator scope for \
                     changes) and the device endpoints (enrollment, root metadata, artifacts). \
                     Every error answers {\"error\": \"...\"}.",
                ))
                .build(),
        )
        .build();
    document
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token from flotilla-hub init or token create",
                    ))
                    .build(),
            ),
        );
    // Schemas only query and path parameters name: the routes collect the schemas of
    // bodies and answers themselves, not these.
    let schemas = &mut document
        .components
        .get_or_insert_with(Default::default)
        .schemas;
    for (name, schema) in [
        (
            "CaptureFormat",
            <flotilla_api::telemetry::CaptureFormat as utoipa::PartialSchema>::schema(),
        ),
        (
            "RolloutAction",
            <flotilla_api::rollouts::RolloutAction as utoipa::PartialSchema>::schema(),
        ),
    ] {
        schemas.insert(name.to_owned(), schema);
    }
    document
}

/// What any call with a read token can answer besides its own outcomes. Only described:
/// the handlers answer these through `ApiError`.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// No token, or an unknown one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The hub failed (its store, say); the message says what.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// What any change with an operator token can answer besides its own outcomes. Only
/// described, like `ReadErrors`.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum OperatorErrors {
    /// No token, or an unknown one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A read-only token.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The hub failed (its store, say); the message says what.
    #[response(status = 500)]
    Internal(ErrorBody),
}

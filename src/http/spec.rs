//! The spec document: what poem-openapi derives from the endpoints, and what it has no
//! attribute for, added here, so that the one document served, committed and embedded in the
//! docs pages tells the truth about the running server.

use poem_openapi::{ExtraHeader, LicenseObject, OpenApiService};
use serde_json::{Value, json};

use super::{
    API_PREFIX, HEALTH_TAG, OAuthFlowUrls, api_keys::ApiKeysApi, events::EventsApi, examples,
    health::OperationsApi, security, users::UsersApi,
};

const DESCRIPTION: &str = "\
A versioned REST API for a *users* resource.

**Authentication.** Every `/api/v1` data operation needs credentials in `Authorization: Bearer`: \
an API key (`uak_…`) or, where the deployment trusts an identity provider, an OAuth 2.0 access \
token. Scopes: `users:read` for reads, `users:write` for writes, `admin` for everything \
including key management. On first start the server prints an admin key once; create more with \
`POST /api/v1/api-keys` or `users-api keys create`. In this page, use **Authorize**.

**Errors.** Every 4xx and 5xx response is an RFC 9457 problem (`application/problem+json`) with \
`type`, `title`, `status`, `detail` and the `request_id` also sent as `X-Request-Id`; a \
validation failure lists each invalid member under `errors`.

**Listing.** `GET /api/v1/users` filters (`role`, `email`, `q`, `created_after`, \
`created_before`), sorts (`sort=-created_at`) and pages by opaque cursor: follow `next_cursor` or \
the `Link: rel=\"next\"` header.

**Concurrency and retries.** Single-user responses carry a strong `ETag`: send it in \
`If-None-Match` for a 304, or in `If-Match` to write only if nothing changed meanwhile (else \
412). Send an `Idempotency-Key` with `POST /api/v1/users` to make retries safe.

**Limits.** Requests are rate-limited per caller (`RateLimit-*` headers; 429 with \
`Retry-After`), bodies to 64 KiB by default.";

/// Every API of the service: one value for the spec and the routes alike.
pub(super) type Apis = (UsersApi, EventsApi, ApiKeysApi, OperationsApi);

/// The OpenAPI service: the source of the spec, the routes and the Swagger UI.
pub(super) fn openapi() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (UsersApi, EventsApi, ApiKeysApi, OperationsApi),
        "users-api",
        env!("CARGO_PKG_VERSION"),
    )
    .description(DESCRIPTION)
    .license(LicenseObject::new("MIT").url("https://spdx.org/licenses/MIT.html"))
    .extra_response_header::<String, _>(ExtraHeader::new("X-Request-Id").description(
        "The request's id: the caller's `X-Request-Id` if sane, else a new UUID. \
         Also in problem bodies and log lines.",
    ))
    .extra_response_header::<Option<u64>, _>(
        ExtraHeader::new("RateLimit-Limit")
            .description("Requests allowed per window to this caller (absent when unlimited)."),
    )
    .extra_response_header::<Option<u64>, _>(
        ExtraHeader::new("RateLimit-Remaining").description("Requests left in the current window."),
    )
    .extra_response_header::<Option<u64>, _>(
        ExtraHeader::new("RateLimit-Reset").description("Seconds until the window resets."),
    )
}

/// The spec document: what poem-openapi derives from the code, plus what it has no attribute
/// for (OpenAPI links, public operations, the servers, the tags' order, an example problem for
/// each error response), and the OAuth scheme as this deployment offers it: flows with the
/// identity provider's endpoints when `oauth` names them, else a bearer JWT.
pub fn spec_document(oauth: Option<&OAuthFlowUrls>) -> Value {
    let mut spec: Value =
        serde_json::from_str(&openapi().spec()).expect("poem-openapi emits valid JSON");
    // Links tell clients (and stateful fuzzers) that the `id` a create returns feeds the
    // single-resource operations.
    let by_id = |operation: &str| {
        json!({
            "operationId": operation,
            "parameters": {"id": "$response.body#/id"},
        })
    };
    spec["paths"]["/api/v1/users"]["post"]["responses"]["201"]["links"] = json!({
        "GetUser": by_id("getUser"),
        "ReplaceUser": by_id("replaceUser"),
        "UpdateUser": by_id("updateUser"),
        "DeleteUser": by_id("deleteUser"),
    });
    // No revoke link: revoking keeps the key's record for audit, so unlike a deleted user it
    // stays readable, and a link would tell stateful clients to expect it gone.
    spec["paths"]["/api/v1/api-keys"]["post"]["responses"]["201"]["links"] = json!({
        "GetApiKey": by_id("getApiKey"),
    });
    // Relative to the document: whatever host serves the spec also serves the API.
    spec["servers"] = json!([{"url": "/", "description": "The host serving this document"}]);
    // Public operations say so: an empty requirement list means "no credentials needed".
    if let Some(paths) = spec["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if path.starts_with(API_PREFIX) {
                continue;
            }
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|ops| ops.values_mut())
            {
                operation["security"] = json!([]);
            }
        }
    }
    security::describe_oauth(&mut spec, oauth);
    // The main resource first; poem-openapi sorts tags by name.
    if let Some(tags) = spec["tags"].as_array_mut() {
        let order = ["Users", "Events", "API keys", HEALTH_TAG];
        tags.sort_by_key(|tag| order.iter().position(|name| tag["name"] == *name));
    }
    let schemas = &mut spec["components"]["schemas"];
    for name in ALWAYS_COMPLETE {
        require_every_property(&mut schemas[name]);
    }
    if let Some(schemas) = schemas.as_object_mut() {
        schemas.values_mut().for_each(name_enum_members);
        schemas.values_mut().for_each(plain_nullable_references);
    }
    examples::add_problem_examples(&mut spec);
    spec
}

/// The response schemas whose every property the server always sends, `null` where it has no
/// value: required in the spec, so that generated read models have no "unset" state.
const ALWAYS_COMPLETE: [&str; 7] = [
    "User",
    "UserPage",
    "ApiKey",
    "ApiKeyCreated",
    "ApiKeyPage",
    "Event",
    "EventPage",
];

fn require_every_property(schema: &mut Value) {
    let names: Vec<Value> = schema["properties"]
        .as_object()
        .map(|properties| properties.keys().map(|name| json!(name)).collect())
        .unwrap_or_default();
    schema["required"] = Value::Array(names);
}

/// A documented, nullable reference to another schema is written by poem-openapi as
/// `allOf: [{$ref}, {description, nullable}]`, which generators read as a new type merging both
/// (openapi-python-client made an `EventUserType1` of the `User` an event carries). The second
/// member only repeats what the property says itself, so it goes: `allOf: [{$ref}]` with the
/// property's own `nullable`, which they read as "that type, or null". (With a `type: object`
/// beside it, as OpenAPI 3.0.3's wording would have it, openapi-python-client drops the null.)
fn plain_nullable_references(schema: &mut Value) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for property in properties.values_mut() {
        let Some(all_of) = property.get_mut("allOf").and_then(Value::as_array_mut) else {
            continue;
        };
        let repeats_annotations = |member: &Value| {
            member.as_object().is_some_and(|member| {
                member
                    .keys()
                    .all(|key| key == "description" || key == "nullable")
            })
        };
        if all_of.len() == 2 && all_of[0]["$ref"].is_string() && repeats_annotations(&all_of[1]) {
            all_of.truncate(1);
        }
    }
}

/// Names for a string enum's members, where its values are not names themselves
/// (`x-enum-varnames`, read by openapi-generator and openapi-python-client): `-created_at`
/// is `CREATED_AT_DESC`, `users:read` is `USERS_READ`.
fn name_enum_members(schema: &mut Value) {
    let Some(values) = schema["enum"].as_array() else {
        return;
    };
    let plain = |value: &str| {
        value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if values.iter().all(|value| value.as_str().is_some_and(plain)) {
        return;
    }
    let name = |value: &str| {
        let (value, suffix) = match value.strip_prefix('-') {
            Some(rest) => (rest, "_DESC"),
            None => (value, ""),
        };
        let words: String = value
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        words + suffix
    };
    let names: Vec<Value> = values
        .iter()
        .map(|value| json!(name(value.as_str().unwrap_or_default())))
        .collect();
    schema["x-enum-varnames"] = Value::Array(names);
}

/// The spec as `users-api openapi` prints it and `openapi/` commits it.
pub fn spec(yaml: bool) -> String {
    render_spec(&spec_document(None), yaml)
}

/// A spec document as JSON (pretty) or YAML text.
pub(super) fn render_spec(spec: &Value, yaml: bool) -> String {
    if yaml {
        serde_yaml::to_string(&spec).expect("a JSON document is valid YAML")
    } else {
        serde_json::to_string_pretty(&spec).expect("a JSON document serialises")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::spec_document;
    use crate::domain::{Email, NewApiKey, Role, UserName};

    /// A spec constraint on a string: what a client validating against the spec checks.
    fn accepts(schema: &Value, text: &str) -> bool {
        let len = text.chars().count() as u64;
        let min = schema["minLength"].as_u64().unwrap_or(0);
        let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX);
        let pattern = schema["pattern"]
            .as_str()
            .is_none_or(|pattern| regex::Regex::new(pattern).unwrap().is_match(text));
        (min..=max).contains(&len) && pattern
    }

    /// The spec's lengths and patterns are the domain's rules: every string the spec accepts,
    /// the server accepts, and the other way round, for every free-text field of every request
    /// schema; and the query parameters' limits are the fields' own.
    #[test]
    fn spec_constraints_are_the_domain_rules() {
        let spec = spec_document(None);
        let schemas = &spec["components"]["schemas"];
        type Rule = fn(&str) -> bool;
        let fields: [(&str, &str, usize, Rule); 5] = [
            ("UserInput", "name", UserName::MAX_CHARS, |t| {
                UserName::parse(t).is_ok()
            }),
            ("UserInput", "role", Role::MAX_CHARS, |t| {
                Role::parse(t).is_ok()
            }),
            ("UserPatch", "name", UserName::MAX_CHARS, |t| {
                UserName::parse(t).is_ok()
            }),
            ("UserPatch", "role", Role::MAX_CHARS, |t| {
                Role::parse(t).is_ok()
            }),
            ("ApiKeyInput", "name", NewApiKey::MAX_NAME_CHARS, |t| {
                NewApiKey::parse_name(t).is_ok()
            }),
        ];
        for (schema, field, max, rule) in fields {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["maxLength"], max, "{schema}.{field}");
            let mut samples: Vec<String> = [
                "", " ", "a", " a ", "\t", "\ta", "a\u{0}b", "a\u{85}", "Zoë",
            ]
            .map(String::from)
            .into();
            samples.extend(
                ["\u{2028}", " \u{3000}x", "a\u{7f}", "\u{a0}", "é\u{301}"].map(String::from),
            );
            for len in [max - 1, max, max + 1] {
                samples.push("é".repeat(len));
                samples.push(format!(" {} ", "x".repeat(len.saturating_sub(2))));
                samples.push(format!("{}\u{1}", "x".repeat(len - 1)));
            }
            for sample in samples {
                assert_eq!(
                    accepts(property, &sample),
                    rule(&sample),
                    "{schema}.{field} on {sample:?}"
                );
            }
        }
        for schema in ["UserInput", "UserPatch"] {
            assert_eq!(
                schemas[schema]["properties"]["email"]["maxLength"],
                Email::MAX_CHARS
            );
        }
        let parameters = spec["paths"]["/api/v1/users"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let limit_of = |name: &str| {
            parameters
                .iter()
                .find(|parameter| parameter["name"] == name)
                .map(|parameter| parameter["schema"]["maxLength"].clone())
                .unwrap()
        };
        assert_eq!(limit_of("role"), Role::MAX_CHARS);
        assert_eq!(limit_of("q"), UserName::MAX_CHARS);
        assert_eq!(limit_of("email"), Email::MAX_CHARS);
    }
}

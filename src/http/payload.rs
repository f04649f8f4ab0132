//! JSON bodies. [`JsonBody`]: a request payload documented with a poem-openapi schema but read
//! by the domain's parsers, so every rejected member comes back in one problem with its JSON
//! Pointer. [`JsonBytes`]: a response payload documented with a schema and sent as JSON text
//! made earlier (a cached user or page, an idempotent retry's recorded response).

use std::marker::PhantomData;

use bytes::Bytes;
use poem::{Request, RequestBody, error::ReadBodyError, http::header};
use poem_openapi::{
    impl_apirequest_for_payload,
    payload::{ParsePayload, Payload},
    registry::{MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::State;
use crate::{domain::FieldError, error::AppError};

/// A documented request schema, and the domain value a valid body becomes.
pub trait BodySchema: Type + Send {
    type Parsed: Send;
    fn parse(body: &Value) -> Result<Self::Parsed, Vec<FieldError>>;
}

/// The parsed, validated body of a request whose documented schema is `S`.
pub struct JsonBody<S: BodySchema> {
    pub value: S::Parsed,
    /// The body as received, for [`JsonBody::fingerprint`].
    json: Value,
}

impl<S: BodySchema> JsonBody<S> {
    /// Hex SHA-256 of the body as canonical JSON (object keys sorted, no insignificant
    /// whitespace): equal for bodies that mean the same, whatever their formatting.
    pub fn fingerprint(&self) -> String {
        let mut canonical = Vec::with_capacity(256);
        write_canonical(&mut canonical, &self.json);
        format!("{:x}", Sha256::digest(&canonical))
    }
}

impl<S: BodySchema> Payload for JsonBody<S> {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json`, and any `+json` type such as `application/merge-patch+json`.
    fn check_content_type(content_type: &str) -> bool {
        content_type.parse::<mime::Mime>().is_ok_and(|mime| {
            mime.type_() == mime::APPLICATION
                && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        })
    }

    fn schema_ref() -> MetaSchemaRef {
        S::schema_ref()
    }

    fn register(registry: &mut Registry) {
        S::register(registry);
    }
}

impl<S: BodySchema> ParsePayload for JsonBody<S> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<std::sync::Arc<State>>()
            .expect("the state is attached to every request")
            .settings
            .max_body_bytes;
        let too_large = AppError::PayloadTooLarge { limit };
        // A declared length over the limit is refused before a byte is read.
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large.into());
        }
        let bytes = body
            .take()?
            .into_bytes_limit(limit)
            .await
            .map_err(|err| match err {
                ReadBodyError::PayloadTooLarge => too_large,
                other => AppError::BadRequest(format!("could not read the request body: {other}")),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(AppError::BadRequest(
                "the request body is empty; send a JSON object".into(),
            )
            .into());
        }
        let json: Value = serde_json::from_slice(&bytes).map_err(|err| {
            AppError::BadRequest(format!("the request body is not valid JSON: {err}"))
        })?;
        let value = S::parse(&json).map_err(AppError::Validation)?;
        Ok(Self { value, json })
    }
}

impl_apirequest_for_payload!(JsonBody<S>, S: BodySchema);

/// JSON text with object members sorted by key at every level, so two bodies that mean the
/// same produce the same text whatever their member order or whitespace. Keys and scalars are
/// written as serde_json writes them compactly; stored fingerprints depend on this text, so
/// it must not change (a test pins it).
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (at, (key, value)) in members.into_iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                compact(out, key);
                out.push(b':');
                write_canonical(out, value);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (at, item) in items.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => compact(out, scalar),
    }
}

fn compact(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    serde_json::to_writer(out, value).expect("JSON scalars and strings always serialise");
}

/// A JSON response body documented with the schema of `T`, sent as JSON text made earlier.
/// Held as `Bytes`, so a kept body is sent without a copy.
pub struct JsonBytes<T> {
    body: Bytes,
    _schema: PhantomData<T>,
}

impl<T: ToJSON> JsonBytes<T> {
    /// `value` as JSON text, exactly as poem-openapi's `Json` would send it.
    pub fn text(value: &T) -> String {
        value.to_json_string()
    }
}

impl<T> JsonBytes<T> {
    /// A body made earlier: JSON text.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            _schema: PhantomData,
        }
    }
}

/// The media type of every JSON body the API sends.
const JSON_TEXT: &str = "application/json; charset=utf-8";

impl<T: Type + Send> Payload for JsonBytes<T> {
    const CONTENT_TYPE: &'static str = JSON_TEXT;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> poem::IntoResponse for JsonBytes<T> {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(JSON_TEXT)
            .body(self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::write_canonical;

    fn parse(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    fn canonical_json(value: &serde_json::Value) -> String {
        let mut out = Vec::new();
        write_canonical(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn canonical_json_ignores_member_order_and_whitespace() {
        let a = parse(r#"{"b": [1, {"y": 2, "x": 1}], "a": "é"}"#);
        let b = parse(r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&b), r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#);
        let reordered = parse(r#"{"b":[{"x":1,"y":2},1],"a":"é"}"#);
        assert_ne!(
            canonical_json(&a),
            canonical_json(&reordered),
            "array order matters"
        );
    }

    /// Idempotency records keep fingerprints for a day: a retry after an upgrade must find
    /// the same one, so the canonical text and its digest are pinned here (the digest as
    /// Python's hashlib gives it for that text).
    #[test]
    fn fingerprints_are_pinned() {
        use sha2::{Digest, Sha256};
        let body = parse(
            r#"{ "role": null, "name": "Q \"x\"\n\u001f", "n": [1.5, -2, true, {}, []],
                "email": "A@example.com" }"#,
        );
        let text = canonical_json(&body);
        assert_eq!(
            text,
            r#"{"email":"A@example.com","n":[1.5,-2,true,{},[]],"name":"Q \"x\"\n\u001f","role":null}"#
        );
        assert_eq!(
            format!("{:x}", Sha256::digest(text.as_bytes())),
            "f68a3e33ed66ca9b9fcd20477a623cd604795b63a10c0e7c99f1fbc0ad0dbf37"
        );
    }
}

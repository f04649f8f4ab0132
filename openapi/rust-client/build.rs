//! Generates the client from the committed spec on every build, so it can never drift from it.

use std::{env, fs, path::Path};

fn main() {
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = fs::read_to_string(&spec_path).expect("openapi/openapi.json");
    // progenitor types only `application/json` bodies; problem+json is JSON too, and read as
    // such every error arrives as a typed `Problem` instead of a byte stream.
    let text = text.replace("application/problem+json", "application/json");
    let spec: openapiv3::OpenAPI =
        serde_json::from_str(&text).expect("a valid OpenAPI 3.0 document");
    let tokens = progenitor::Generator::default()
        .generate_tokens(&spec)
        .expect("progenitor accepts the spec");
    let file = syn::parse2(tokens).expect("generated code parses");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("client.rs");
    fs::write(out, prettyplease::unparse(&file)).expect("write the generated client");
}

//! The README's examples, run as they are written against a live server: a stale example fails
//! here. They are the shell blocks between `<!-- examples -->` and `<!-- /examples -->`, run in
//! one shell in order (so a variable set in one is there in the next), with `curl` failing on
//! any HTTP error.

use std::process::Command;

use crate::helpers::spawn_app;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The shell blocks between the markers, in order.
fn examples(readme: &str) -> Vec<String> {
    let start = readme
        .find("<!-- examples -->")
        .expect("the examples marker");
    let end = readme.find("<!-- /examples -->").expect("the end marker");
    blocks(&readme[start..end], "sh")
}

/// The fenced blocks of `text` in `language`, in order.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}");
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, line) if line == fence => block = Some(String::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test]
async fn the_readme_examples_run_against_a_live_server() {
    let app = spawn_app().await;
    let blocks = examples(&readme());
    assert!(blocks.len() >= 5, "{} example blocks", blocks.len());
    let script = blocks
        .join("\n")
        .replace("export KEY=uak_...", &format!("export KEY={}", app.key))
        .replace("http://127.0.0.1:5000", &app.base);
    assert!(
        !script.contains("uak_..."),
        "every example uses the key from $KEY"
    );
    // A failed request fails the example, with what the server said.
    let prelude =
        "set -euo pipefail\ncurl() { command curl --fail-with-body --show-error \"$@\"; }\n";
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "a README example failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // What the examples did is what they say they do: Alice was found by the filters, changed
    // and deleted, Bob and Carol remain, the new key was shown and then revoked.
    assert!(
        stdout.contains(r#""items":[{"id":1,"name":"Alice","role":"Lead""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""role":"Manager""#), "{stdout}");
    // The feed's first events, then Alice's deletion after them.
    assert!(
        stdout.contains("[1,\"user.created\",1]\n[2,\"user.created\",2]\n[3,\"user.updated\",1]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""type":"user.deleted","user_id":1"#),
        "{stdout}"
    );
    let listed: serde_json::Value = app.list_users("").await.json().await.unwrap();
    let names: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["Bob", "Carol"]);
    let secret_shown = stdout.match_indices("uak_").any(|(at, _)| {
        let hex = &stdout[at + 4..];
        hex.len() >= 40 && hex.bytes().take(40).all(|b| b.is_ascii_hexdigit())
    });
    assert!(secret_shown, "{stdout}");
    let revoked = app
        .request(reqwest::Method::GET, "/api/v1/api-keys/2")
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 404);
}

/// The stream example, the README's one `bash` block, prints the events so far and then the
/// live ones, as Server-Sent Events.
#[tokio::test]
async fn the_readme_stream_example_streams() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&serde_json::json!({"name": "Ann", "role": "Dev"}))
        .await;
    let example = blocks(&readme(), "bash");
    assert_eq!(example.len(), 1);
    let script = format!(
        "export KEY={}\ntimeout 3 {}",
        app.key,
        example[0].replace("http://127.0.0.1:5000", &app.base)
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash").arg("-c").arg(script).output().unwrap()
    })
    .await
    .unwrap();
    // Ended by `timeout`, after it printed what it had.
    assert_eq!(output.status.code(), Some(124));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("retry: "), "{stdout}");
    assert!(
        stdout.contains("id: 1\nevent: user.created\ndata: "),
        "{stdout}"
    );
    assert!(stdout.contains(&user.to_string()), "{stdout}");
}

#[test]
fn examples_are_found_in_order() {
    let text = "x\n<!-- examples -->\n```sh\na\n```\ntext\n```json\nno\n```\n```sh\nb\nc\n```\n<!-- /examples -->\n```sh\nz\n```\n";
    assert_eq!(examples(text), ["a\n", "b\nc\n"]);
}

/// The README's feed consumer and the SDK examples of `docs/sdks.md` are the programs CI
/// type-checks (`mypy --strict`, `tsc --strict`) and runs against a live server, and the Rust
/// client's doctest, which this suite compiles.
#[test]
fn the_documented_programs_are_the_ones_ci_checks() {
    let file = |path: &str| {
        std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
    };
    assert_eq!(
        blocks(&readme(), "python"),
        [file(".ci/sdk/feed_consumer.py")]
    );
    let sdks = file("docs/sdks.md");
    assert_eq!(blocks(&sdks, "python"), [file(".ci/sdk/sdk_example.py")]);
    assert_eq!(blocks(&sdks, "ts"), [file(".ci/sdk/sdk_example.mts")]);
    // The doctest without its `//! ` prefixes and hidden (`# `) lines.
    let doc: String = file("openapi/rust-client/src/lib.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .filter(|line| !line.starts_with("# "))
        .map(|line| format!("{line}\n"))
        .collect();
    let doctest = blocks(&doc, "no_run");
    assert_eq!(blocks(&sdks, "rust"), doctest);
    assert_eq!(doctest.len(), 1);
}

//! The hub's OpenAPI document: valid OpenAPI 3 (checked by the `openapi-spec-validator`
//! package, in the test venv), every route of the router in it and every operation in it
//! served, each with its parameters, bodies, answers and status codes declared.

use std::collections::BTreeSet;

use flotilla_api::http::Method;

use crate::support::{HubProcess, RawApi};

/// `(METHOD, /path/{param})` of every operation in the document.
fn operations(document: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path items are objects") {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_document_is_valid_openapi_and_matches_the_router() {
    let hub = HubProcess::start();
    let anonymous = hub.anonymous();
    let document = anonymous
        .json(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    // Valid OpenAPI, by a validator that is not ours.
    let file = hub.data_dir().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    let python = flotilla_testkit::repo_root().join(".cache/venv/bin/python");
    let validated = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{} (run deploy/setup.sh): {e}", python.display()));
    assert!(
        validated.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&validated.stderr)
    );

    // Every operation declares its answers with status codes, a success among them, and
    // its path parameters; operations behind a token say so.
    let operations = operations(&document);
    assert!(operations.len() >= 40, "{operations:?}");
    for (method, path) in &operations {
        let operation = &document["paths"][path][method.to_lowercase()];
        let statuses: Vec<&String> = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"))
            .keys()
            .collect();
        assert!(
            statuses.iter().any(|s| s.starts_with('2')),
            "{method} {path} declares no success: {statuses:?}"
        );
        assert!(
            statuses
                .iter()
                .all(|s| s.len() == 3 && s.parse::<u16>().is_ok()),
            "{method} {path}: {statuses:?}"
        );
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, templated, "{method} {path}");
        if operation["security"].is_array() {
            assert!(
                statuses.contains(&&"401".to_owned()),
                "{method} {path} needs a token but declares no 401"
            );
        }
        // Actions named by their path take no body.
        let action = path.ends_with("/retire") || path.ends_with("/revoke");
        if ["POST", "PUT"].contains(&method.as_str()) && !action {
            let bodiless = ["/api/v1/keys/rotate", "/api/v1/rollouts/{id}/{action}"];
            assert!(
                bodiless.contains(&path.as_str()) || operation["requestBody"].is_object(),
                "{method} {path} declares no request body"
            );
        }
    }

    // Every documented operation is served: none falls through to the router's fallback
    // (parameters filled with values the handlers refuse or do not know, which is enough
    // to see that a handler answered).
    let operator = hub.operator();
    for (method, path) in &operations {
        let concrete = path
            .replace("{sha256}", &"0".repeat(64))
            .replace("{version}", "1")
            .replace("{action}", "pause")
            .replace("{model}", "nosuchmodel")
            .replace("{alias}", "staging")
            .replace("{feature}", "f0")
            .replace("{id}", "nosuchid");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = operator
            .request(method.clone(), &concrete, "application/json", "{}".into())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("no such endpoint") && status.as_u16() != 405,
            "{method} {concrete} is documented but not served: {status} {text}"
        );
    }

    // Every route of the router is documented: routes are registered only through the
    // documented handlers (`routes!`), never as bare axum routes, and every handler in the
    // API's modules carries its `#[utoipa::path]`.
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let router = std::fs::read_to_string(api.join("mod.rs")).unwrap();
    assert!(
        !router.contains(".route("),
        "hub/src/api/mod.rs registers a route outside routes!(): it would be missing from /openapi.json"
    );
    let registered = router.matches("::").count();
    assert!(registered >= 40, "{registered}");
    for entry in std::fs::read_dir(&api).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with("pub(super) async fn ") {
                continue;
            }
            let name = line["pub(super) async fn ".len()..]
                .split('(')
                .next()
                .unwrap();
            let annotated = lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with('}'))
                .any(|l| l.starts_with("#[utoipa::path("));
            assert!(
                annotated,
                "{}: handler {name} has no #[utoipa::path]",
                path.display()
            );
            assert!(
                router.contains(&format!("::{name}")),
                "{}: handler {name} is not in the router",
                path.display()
            );
        }
    }
}

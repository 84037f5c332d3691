//! The registry through the CLI and the admin API: pushes, versions, aliases, retirement,
//! signed manifests, scopes, and what survives a restart.

use flotilla_api::http::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use flotilla_api::ClientError;
use flotilla_common::trust::{TrustedVersion, verify_initial_root, verify_manifest};
use flotilla_proto::trust::Envelope;

use crate::support::*;

#[test]
fn push_show_alias_and_retire_through_the_cli() {
    let hub = HubProcess::start();
    let op = Some(hub.operator_token.as_str());
    let iris = fixture("iris_classifier.onnx");
    let iris = iris.to_str().unwrap();
    let out = stdout(&hub.cli(
        op,
        &[
            "model",
            "push",
            "iris",
            iris,
            "--metric",
            "auc=0.97",
            "--tag",
            "team=demo",
            "--dataset",
            "sklearn-iris",
            "--commit",
            "abc123",
        ],
    ));
    assert!(out.starts_with("pushed iris version 1"), "{out}");
    let again = stdout(&hub.cli(op, &["model", "push", "iris", iris]));
    assert!(
        again.starts_with("already registered: iris version 1"),
        "pushes are idempotent by content: {again}"
    );
    let multi = fixture("multi_io.onnx");
    let out = stdout(&hub.cli(
        op,
        &[
            "model",
            "push",
            "iris",
            multi.to_str().unwrap(),
            "--parent",
            "1",
        ],
    ));
    assert!(out.starts_with("pushed iris version 2"), "{out}");

    stdout(&hub.cli(op, &["model", "alias", "set", "iris", "production", "1"]));
    stdout(&hub.cli(
        op,
        &["model", "alias", "set", "iris", "staging", "production"],
    ));
    let list = stdout(&hub.cli(Some(&hub.read_token), &["model", "list"]));
    assert!(
        list.contains("iris") && list.contains("production=1") && list.contains("staging=1"),
        "{list}"
    );

    let show: serde_json::Value = serde_json::from_str(&stdout(
        &hub.cli(Some(&hub.read_token), &["--json", "model", "show", "iris"]),
    ))
    .unwrap();
    let v1 = &show["versions"][0];
    assert_eq!(v1["metrics"]["auc"], json!(0.97));
    assert_eq!(v1["tags"]["team"], "demo");
    assert_eq!(
        v1["lineage"],
        json!({"dataset": "sklearn-iris", "commit": "abc123"})
    );
    assert_eq!(
        v1["inputs"],
        json!([{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]),
        "schema read from the ONNX graph"
    );
    assert_eq!(show["versions"][1]["lineage"]["parent"], "1");
    assert_eq!(show["alias_history"].as_array().unwrap().len(), 2);
    let by_alias: serde_json::Value = serde_json::from_str(&stdout(&hub.cli(
        Some(&hub.read_token),
        &["--json", "model", "show", "iris", "production"],
    )))
    .unwrap();
    assert_eq!(by_alias["version"], 1);

    stdout(&hub.cli(op, &["model", "retire", "iris", "1"]));
    let show: serde_json::Value =
        serde_json::from_str(&stdout(&hub.cli(op, &["--json", "model", "show", "iris"]))).unwrap();
    assert!(show["versions"][0]["retired"].is_i64());
    assert_eq!(
        show["aliases"],
        json!({}),
        "aliases pointing at a retired version are removed"
    );
    let err =
        stderr_of_failure(&hub.cli(op, &["model", "alias", "set", "iris", "production", "1"]));
    assert!(err.contains("409") && err.contains("retired"), "{err}");
    let err = stderr_of_failure(&hub.cli(op, &["model", "alias", "rm", "iris", "staging"]));
    assert!(
        err.contains("404"),
        "staging went with the retired version: {err}"
    );
    stdout(&hub.cli(op, &["model", "alias", "set", "iris", "staging", "2"]));
    let out = stdout(&hub.cli(op, &["model", "alias", "rm", "iris", "staging"]));
    assert!(out.contains("alias staging removed"), "{out}");
}

#[test]
fn bad_pushes_and_missing_scopes_are_refused_with_reasons() {
    let hub = HubProcess::start();
    let not_onnx = fixture("make_fixtures.py");
    let err = stderr_of_failure(&hub.cli(
        Some(&hub.operator_token),
        &["model", "push", "iris", not_onnx.to_str().unwrap()],
    ));
    assert!(
        err.contains("422")
            && err.contains("not a model ONNX Runtime can load")
            && err.to_lowercase().contains("protobuf")
            && !err.contains("/uploads/"),
        "{err}"
    );
    assert!(!err.contains(".tmp"), "no temporary paths in errors: {err}");
    let iris = fixture("iris_classifier.onnx");
    let err = stderr_of_failure(&hub.cli(
        Some(&hub.read_token),
        &["model", "push", "iris", iris.to_str().unwrap()],
    ));
    assert!(err.contains("403") && err.contains("read-only"), "{err}");
    let err = stderr_of_failure(&hub.cli(None, &["model", "list"]));
    assert!(
        err.contains("401") && err.contains("FLOTILLA_TOKEN"),
        "{err}"
    );
    let err = stderr_of_failure(&hub.cli(Some("flo_op_forged"), &["model", "list"]));
    assert!(
        err.contains("401") && err.contains("unknown token"),
        "{err}"
    );
    let err = stderr_of_failure(&hub.cli(
        Some(&hub.operator_token),
        &["model", "push", "bad/name", iris.to_str().unwrap()],
    ));
    assert!(err.contains("not allowed") || err.contains("404"), "{err}");
    let err = stderr_of_failure(&hub.cli(
        Some(&hub.operator_token),
        &[
            "model",
            "push",
            "iris",
            iris.to_str().unwrap(),
            "--metric",
            "auc=high",
        ],
    ));
    assert!(err.contains("not a number"), "{err}");
    let err = stderr_of_failure(&hub.cli(Some(&hub.operator_token), &["model", "show", "ghost"]));
    assert!(err.contains("404"), "{err}");
    // Nothing was registered, and the hub still answers.
    let list = stdout(&hub.cli(Some(&hub.read_token), &["--json", "model", "list"]));
    assert_eq!(list.trim(), "[]");
    let mut unreachable =
        std::process::Command::new(flotilla_testkit::workspace_binary("flotilla"));
    unreachable
        .args(["--hub", "http://127.0.0.1:1", "model", "list"])
        .env("FLOTILLA_TOKEN", "x");
    let err = stderr_of_failure(&unreachable.output().unwrap());
    assert!(
        err.contains("cannot reach the hub at http://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test]
async fn manifests_are_signed_by_the_key_the_root_names_and_match_the_artifact() {
    let hub = HubProcess::start();
    let bytes = std::fs::read(fixture("iris_classifier.onnx")).unwrap();
    let pushed = hub
        .operator()
        .upload(
            "/api/v1/models/iris/versions?metric.auc=0.9",
            bytes.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(pushed["created"], true);
    let root: Envelope = serde_json::from_value(
        hub.reader()
            .json(Method::GET, "/api/v1/root", None)
            .await
            .unwrap(),
    )
    .unwrap();
    let manifest: Envelope = serde_json::from_value(
        hub.reader()
            .json(Method::GET, "/api/v1/models/iris/versions/1/manifest", None)
            .await
            .unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let root = verify_initial_root(&root, now).unwrap();
    let checked = verify_manifest(&root, &manifest, now, None, false).unwrap();
    assert_eq!(
        (
            checked.model.as_str(),
            checked.version,
            checked.document_version
        ),
        ("iris", 1, 1)
    );
    assert_eq!(checked.artifact_sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(checked.artifact_size, bytes.len() as u64);
    assert_eq!(checked.outputs[1].name, "probabilities");
    assert!(checked.expires > now + 20 * 86400, "a month of validity");
    // The artifact is stored by content hash.
    let stored = hub
        .data_dir()
        .join("artifacts/sha256")
        .join(&checked.artifact_sha256[..2])
        .join(&checked.artifact_sha256);
    assert_eq!(std::fs::read(stored).unwrap(), bytes);
    // Any change to the signed text breaks it; an older trusted version makes it a rollback.
    let mut tampered = manifest.clone();
    tampered.payload = tampered.payload.replace("\"version\":1", "\"version\":9");
    assert!(verify_manifest(&root, &tampered, now, None, false).is_err());
    assert!(
        verify_manifest(
            &root,
            &manifest,
            now,
            Some(TrustedVersion {
                version: 2,
                document_version: 1
            }),
            false
        )
        .is_err()
    );
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let mut hub = HubProcess::start();
    let bytes = std::fs::read(fixture("scaler_v1.onnx")).unwrap();
    hub.operator()
        .upload("/api/v1/models/scaler/versions", bytes.clone().into())
        .await
        .unwrap();
    hub.operator()
        .json(
            Method::PUT,
            "/api/v1/models/scaler/aliases/production",
            Some(json!({"version": 1})),
        )
        .await
        .unwrap();
    hub.stop();
    hub.serve();
    let model = hub
        .reader()
        .json(Method::GET, "/api/v1/models/scaler", None)
        .await
        .unwrap();
    assert_eq!(model["aliases"]["production"], 1);
    let again = hub
        .operator()
        .upload("/api/v1/models/scaler/versions", bytes.into())
        .await
        .unwrap();
    assert_eq!(
        (again["version"].as_u64(), again["created"].as_bool()),
        (Some(1), Some(false))
    );
    let v2 = hub
        .operator()
        .upload(
            "/api/v1/models/scaler/versions",
            std::fs::read(fixture("scaler_v2.onnx")).unwrap().into(),
        )
        .await
        .unwrap();
    assert_eq!(v2["version"], 2, "numbering continues after a restart");
}

#[tokio::test]
async fn admin_api_audits_changes() {
    let hub = HubProcess::start();
    let token = hub
        .operator()
        .json(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(json!({"labels": {"region": "eu"}, "ttl_seconds": 3600})),
        )
        .await
        .unwrap();
    assert!(token["token"].as_str().unwrap().starts_with("flo_enroll_"));
    match hub
        .operator()
        .json(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(json!({"ttl_seconds": 0})),
        )
        .await
    {
        Err(ClientError::Api {
            status: 400,
            message,
        }) => assert!(message.contains("ttl_seconds")),
        other => panic!("{other:?}"),
    }
    let audit = hub
        .reader()
        .json(Method::GET, "/api/v1/audit", None)
        .await
        .unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"enroll_token.create") && actions.contains(&"hub.init"),
        "{actions:?}"
    );
}

/// Manifests are re-signed before they expire, with a higher document version, so devices
/// never hold an expired manifest of a live version, and an old copy is recognisably older.
#[test]
fn manifests_are_re_signed_before_they_expire() {
    use std::sync::Arc;

    use flotilla_common::clock::{Clock, ManualClock};
    use flotilla_hub::data_dir::DataDir;
    use flotilla_hub::registry::{
        MANIFEST_LIFETIME_SECONDS, PushMetadata, RESIGN_BEFORE_SECONDS, Registry,
    };
    use flotilla_hub::store::RegistryStore;

    flotilla_runtime::init_onnx_runtime(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path());
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    data_dir.init(clock.now_unix()).unwrap();
    let store: Arc<dyn RegistryStore> = Arc::new(data_dir.open_store().unwrap());
    let registry = Registry::new(
        data_dir.clone(),
        store.clone(),
        flotilla_hub::registry::Signer::load(&data_dir, store.as_ref()).unwrap(),
        clock.clone(),
    );
    let bytes = std::fs::read(fixture("scaler_v1.onnx")).unwrap();
    let upload = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    std::fs::write(upload.path(), &bytes).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    registry
        .push(
            "scaler",
            upload,
            &sha,
            bytes.len() as u64,
            PushMetadata::default(),
            "test",
        )
        .unwrap();
    assert_eq!(
        registry.resign_expiring().unwrap(),
        0,
        "a fresh manifest is left alone"
    );

    clock.advance(MANIFEST_LIFETIME_SECONDS - RESIGN_BEFORE_SECONDS + 60);
    assert_eq!(registry.resign_expiring().unwrap(), 1);
    let record = store.version("scaler", 1).unwrap().unwrap();
    let envelope: Envelope = serde_json::from_str(&record.manifest).unwrap();
    let root: Envelope = serde_json::from_str(&store.latest_root().unwrap().unwrap()).unwrap();
    let root = verify_initial_root(&root, clock.now_unix()).unwrap();
    let manifest = verify_manifest(
        &root,
        &envelope,
        clock.now_unix(),
        Some(TrustedVersion {
            version: 1,
            document_version: 1,
        }),
        false,
    )
    .unwrap();
    assert_eq!(manifest.document_version, 2);
    assert_eq!(
        manifest.expires,
        clock.now_unix() + MANIFEST_LIFETIME_SECONDS
    );
    assert_eq!(record.manifest_expires, manifest.expires);
    assert!(
        store
            .audit_log(10)
            .unwrap()
            .iter()
            .any(|e| e.action == "manifest.resign")
    );
}

/// `flotilla login` checks the hub with the CA and token given, saves them (mode 0600),
/// and later commands use them with no flag or environment; a login a hub refuses saves
/// nothing; `logout` forgets it.
#[tokio::test(flavor = "multi_thread")]
async fn login_remembers_the_hub_its_ca_and_a_token() {
    use std::os::unix::fs::PermissionsExt;
    let hub = HubProcess::start();
    let home = tempfile::tempdir().unwrap();
    let flotilla = |args: &[&str]| {
        std::process::Command::new(flotilla_testkit::workspace_binary("flotilla"))
            .args(args)
            .env_remove("FLOTILLA_HUB")
            .env_remove("FLOTILLA_CA_FILE")
            .env_remove("FLOTILLA_TOKEN")
            .env("XDG_CONFIG_HOME", home.path())
            .output()
            .unwrap()
    };
    let saved = home.path().join("flotilla/login.toml");
    let ca = hub.ca_file();
    let ca = ca.to_str().unwrap();

    // Without the hub's CA the machine's roots do not trust it: nothing saved.
    let untrusted = flotilla(&["login", "--hub", &hub.url, "--token", &hub.read_token]);
    assert!(!untrusted.status.success());
    assert!(!saved.exists());
    let refused = flotilla(&[
        "login",
        "--hub",
        &hub.url,
        "--ca-file",
        ca,
        "--token",
        "flo_read_nope",
    ]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(stderr_of_failure(&refused).contains("nothing was saved"));
    assert!(!saved.exists());

    let login = flotilla(&[
        "login",
        "--hub",
        &hub.url,
        "--ca-file",
        ca,
        "--token",
        &hub.read_token,
    ]);
    assert!(login.status.success(), "{}", stderr_of_failure(&login));
    assert_eq!(
        std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let listed = flotilla(&["model", "list"]);
    assert!(listed.status.success(), "{}", stderr_of_failure(&listed));
    // The saved token is a read token: a change needs an operator token given by flag.
    let pushed = flotilla(&[
        "model",
        "push",
        "iris",
        fixture("scaler_v1.onnx").to_str().unwrap(),
        "--token",
        &hub.operator_token,
    ]);
    assert!(pushed.status.success(), "{}", stderr_of_failure(&pushed));

    let logout = flotilla(&["logout"]);
    assert!(logout.status.success());
    assert!(!saved.exists());
}

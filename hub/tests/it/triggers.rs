//! Retraining triggers against a real hub process: a webhook that fails twice gets the same
//! signed delivery three times and the run is recorded once; a webhook that hangs times out
//! while the hub keeps answering; bad rules and read-only callers are refused; fleet drift
//! from real agents running iris in ONNX Runtime fires the command once per cooldown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::ClientError;
use flotilla_api::http::Method;
use flotilla_hub::triggers::deliver::hmac_sha256;
use serde_json::json;

use crate::support::*;
use crate::telemetry::{
    FAST_WINDOWS, Traffic, deploy_iris, push_iris_with_reference, wait_serving_iris,
};

const SECRET: &str = "a-secret-of-at-least-16";

/// One request the test receiver got.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// 500 this many times, then 200.
    FailFirst(usize),
    Status(u16),
    Hang,
}

/// A webhook receiver on loopback, recording what it got.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<Mode>>,
}

impl Receiver {
    async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/retrain", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (r, m) = (received.clone(), mode.clone());
        let app = axum::Router::new().route(
            "/hooks/retrain",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (r, m) = (r.clone(), m.clone());
                    async move {
                        let header = |name: &str| {
                            headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let count = {
                            let mut list = r.lock().unwrap();
                            list.push(Received {
                                delivery: header("x-flotilla-delivery"),
                                timestamp: header("x-flotilla-timestamp"),
                                signature: header("x-flotilla-signature"),
                                body: body.to_vec(),
                            });
                            list.len()
                        };
                        let mode = *m.lock().unwrap();
                        let status = match mode {
                            Mode::FailFirst(n) if count <= n => 500,
                            Mode::FailFirst(_) => 200,
                            Mode::Status(s) => s,
                            Mode::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                200
                            }
                        };
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            format!("answer {count}"),
                        )
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url,
            received,
            mode,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn webhook_rule(url: &str, timeout: f64, attempts: u32) -> serde_json::Value {
    json!({
        "action": {"webhook": {
            "url": url,
            "secret": SECRET,
            "timeout_seconds": timeout,
            "max_attempts": attempts,
            "backoff_seconds": 0.2,
        }}
    })
}

async fn push_iris(hub: &HubProcess) {
    hub.operator()
        .upload(
            "/api/v1/models/iris/versions",
            std::fs::read(fixture("iris_classifier.onnx"))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    set_production(hub, 1).await;
}

async fn set_production(hub: &HubProcess, version: u64) {
    hub.operator()
        .json(
            Method::PUT,
            "/api/v1/models/iris/aliases/production",
            Some(json!({"version": version})),
        )
        .await
        .unwrap();
}

fn status_of(error: ClientError) -> (u16, String) {
    match error {
        ClientError::Api { status, message } => (status, message),
        other => panic!("not an API error: {other}"),
    }
}

async fn run(hub: &HubProcess, id: &str) -> serde_json::Value {
    hub.reader()
        .json(Method::GET, &format!("/api/v1/triggers/{id}"), None)
        .await
        .unwrap()
}

/// Polls a run until it has finished (succeeded, failed).
async fn finished(hub: &HubProcess, id: &str) -> serde_json::Value {
    for _ in 0..600 {
        let view = run(hub, id).await;
        if view["status"] == "succeeded" || view["status"] == "failed" {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "run {id} never finished: {:#}\n{}",
        run(hub, id).await,
        hub.log()
    );
}

async fn runs(hub: &HubProcess) -> Vec<serde_json::Value> {
    hub.reader()
        .json(Method::GET, "/api/v1/triggers?model=iris", None)
        .await
        .unwrap()["runs"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_gets_the_same_signed_delivery_until_it_accepts_it() {
    let hub = HubProcess::start();
    push_iris(&hub).await;
    let receiver = Receiver::start(Mode::FailFirst(2)).await;

    // Bad rules and callers are refused with their reason.
    let operator = hub.operator();
    let put = |body: serde_json::Value, model: &'static str| {
        let operator = operator.clone();
        async move {
            operator
                .json(
                    Method::PUT,
                    &format!("/api/v1/models/{model}/trigger"),
                    Some(body),
                )
                .await
        }
    };
    let mut unknown_field = webhook_rule(&receiver.url, 2.0, 5);
    unknown_field["when"] = json!("always");
    let (status, message) = status_of(put(unknown_field, "iris").await.unwrap_err());
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("unknown field"), "{message}");
    let mut https = webhook_rule("https://hooks.example/x", 2.0, 5);
    https["action"]["webhook"]["url"] = json!("https://hooks.example/x");
    // https receivers are called over TLS, checked against the hub machine's roots.
    put(https, "iris").await.unwrap();
    operator
        .json(Method::DELETE, "/api/v1/models/iris/trigger", None)
        .await
        .unwrap();
    let (status, message) = status_of(
        put(webhook_rule(&receiver.url, 2.0, 5), "no-such-model")
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 404, "{message}");
    // Without `[triggers] allow_commands = true` a rule cannot run programs on the hub's host.
    let (status, message) = status_of(
        put(
            json!({"action": {"command": {"argv": ["/bin/true"]}}}),
            "iris",
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("[triggers] allow_commands = true"),
        "{message}"
    );
    let (status, _) = status_of(
        hub.reader()
            .json(
                Method::PUT,
                "/api/v1/models/iris/trigger",
                Some(webhook_rule(&receiver.url, 2.0, 5)),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403, "a read-only token cannot set a rule");
    let (status, message) = status_of(
        operator
            .json(Method::POST, "/api/v1/models/iris/trigger/fire", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 404, "no rule yet: {message}");

    put(webhook_rule(&receiver.url, 2.0, 5), "iris")
        .await
        .unwrap();
    let shown = hub
        .reader()
        .json(Method::GET, "/api/v1/models/iris/trigger", None)
        .await
        .unwrap();
    assert_eq!(shown["action"]["webhook"]["secret"], "(set)", "{shown:#}");
    let (status, _) = status_of(
        hub.reader()
            .json(Method::POST, "/api/v1/models/iris/trigger/fire", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403, "a read-only token cannot fire");

    // Fired by hand: the first two deliveries get 500, the third is accepted.
    let fired = operator
        .json(
            Method::POST,
            "/api/v1/models/iris/trigger/fire",
            Some(json!({"note": "test"})),
        )
        .await
        .unwrap();
    let id = fired["id"].as_str().unwrap().to_owned();
    // While it is in flight a second firing is refused: no duplicate retraining.
    let (status, message) = status_of(
        operator
            .json(Method::POST, "/api/v1/models/iris/trigger/fire", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("in flight"), "{message}");
    let done = finished(&hub, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["attempts"], 3, "{done:#}");
    assert!(
        done["outcome"].as_str().unwrap().contains("HTTP 200"),
        "{done:#}"
    );

    let received = receiver.received();
    assert_eq!(received.len(), 3, "{received:?}");
    for r in &received {
        assert_eq!(r.delivery, id, "every attempt carries the run's id");
        let mut message = format!("{}.", r.timestamp).into_bytes();
        message.extend_from_slice(&r.body);
        let expected = format!(
            "sha256={}",
            hex::encode(hmac_sha256(SECRET.as_bytes(), &message))
        );
        assert_eq!(r.signature, expected, "signature over timestamp.body");
    }
    let payload: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(payload["model"], "iris");
    assert_eq!(payload["version"], 1);
    assert_eq!(payload["reason"], "manual");
    assert_eq!(payload["note"], "test");
    assert!(
        payload["captured_data"]["captures_csv"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1/models/iris/versions/1/captures?format=csv"),
        "{payload:#}"
    );
    assert_eq!(runs(&hub).await.len(), 1, "one run, whatever the retries");

    // A 4xx is not retried: the receiver refuses this request for good.
    *receiver.mode.lock().unwrap() = Mode::Status(410);
    let fired = operator
        .json(Method::POST, "/api/v1/models/iris/trigger/fire", None)
        .await
        .unwrap();
    let done = finished(&hub, fired["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["attempts"], 1, "{done:#}");
    assert!(
        done["outcome"].as_str().unwrap().contains("HTTP 410"),
        "{done:#}"
    );

    // The CLI shows the history and the events name each run.
    let history = stdout(&hub.cli(
        Some(&hub.read_token),
        &["trigger", "history", "--model", "iris"],
    ));
    assert!(
        history.contains(&id) && history.contains("succeeded") && history.contains("failed"),
        "{history}"
    );
    let events = hub
        .reader()
        .json(Method::GET, "/api/v1/events?model=iris", None)
        .await
        .unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "trigger.fired",
            "trigger.succeeded",
            "trigger.fired",
            "trigger.failed"
        ],
        "{events:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_webhook_times_out_and_the_hub_keeps_answering() {
    let hub = HubProcess::start();
    push_iris(&hub).await;
    let receiver = Receiver::start(Mode::Hang).await;
    hub.operator()
        .json(
            Method::PUT,
            "/api/v1/models/iris/trigger",
            Some(webhook_rule(&receiver.url, 1.0, 3)),
        )
        .await
        .unwrap();
    let fired = hub
        .operator()
        .json(Method::POST, "/api/v1/models/iris/trigger/fire", None)
        .await
        .unwrap();
    let id = fired["id"].as_str().unwrap().to_owned();
    // While the receiver holds the connection the API keeps answering.
    for _ in 0..10 {
        let models = hub
            .reader()
            .json(Method::GET, "/api/v1/models", None)
            .await
            .unwrap();
        assert_eq!(models[0]["name"], "iris", "{models:#}");
        assert_eq!(run(&hub, &id).await["reason"], "manual");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = finished(&hub, &id).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["attempts"], 3, "{done:#}");
    let outcome = done["outcome"].as_str().unwrap();
    assert!(
        outcome.contains("no answer within 1 s") && outcome.contains("no attempts left"),
        "{outcome}"
    );
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(runs(&hub).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_drift_fires_the_command_once_per_cooldown() {
    let hub = HubProcess::start_with("[triggers]\ntick_seconds = 1\nallow_commands = true\n");
    push_iris_with_reference(&hub);
    set_production(&hub, 1).await;
    let a = AgentRun::start_with(&hub, &enroll_token(&hub, "site=a").await, FAST_WINDOWS).unwrap();
    let b = AgentRun::start_with(&hub, &enroll_token(&hub, "site=b").await, FAST_WINDOWS).unwrap();
    deploy_iris(&hub).await;
    wait_serving_iris(&a);
    wait_serving_iris(&b);

    let out = hub.data_dir().join("trigger-out");
    std::fs::create_dir_all(&out).unwrap();
    let rule = format!(
        "window_seconds = 2\ncooldown_seconds = 3600\n\
         [drift]\nconsecutive_windows = 2\ndevice_percent = 50\n\
         [action.command]\nargv = [\"sh\", \"-c\", \"cp \\\"$FLOTILLA_TRIGGER_FILE\\\" {}/$FLOTILLA_REASON-$FLOTILLA_MODEL-$FLOTILLA_VERSION.json\"]\n",
        out.display()
    );
    let rule_file = hub.data_dir().join("trigger.toml");
    std::fs::write(&rule_file, rule).unwrap();
    let set = stdout(&hub.cli(
        Some(&hub.operator_token),
        &["trigger", "set", "iris", rule_file.to_str().unwrap()],
    ));
    assert!(set.contains("\"consecutive_windows\": 2"), "{set}");

    // Traffic like the training data for 8 windows: nothing fires.
    let (mut traffic_a, mut traffic_b) = (Traffic::new(1), Traffic::new(2));
    let send_for =
        |seconds: u64, traffic_a: &mut Traffic, traffic_b: &mut Traffic, shift_b: [f32; 4]| {
            let until = std::time::Instant::now() + Duration::from_secs(seconds);
            while std::time::Instant::now() < until {
                traffic_a.send(&a, 2, [0.0; 4]);
                traffic_b.send(&b, 2, shift_b);
                std::thread::sleep(Duration::from_millis(20));
            }
        };
    send_for(16, &mut traffic_a, &mut traffic_b, [0.0; 4]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        runs(&hub).await.is_empty(),
        "calm traffic fired a trigger: {:#?}\n{}",
        runs(&hub).await,
        hub.log()
    );

    // Site b's inputs shift: half of the devices drift, window after window. The trigger
    // fires once, and not again within its cooldown however long the drift lasts.
    send_for(20, &mut traffic_a, &mut traffic_b, [1.5, 0.0, 2.5, 0.0]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = runs(&hub).await;
    assert_eq!(all.len(), 1, "{all:#?}\n{}", hub.log());
    let fired = finished(&hub, all[0]["id"].as_str().unwrap()).await;
    assert_eq!(fired["reason"], "drift", "{fired:#}");
    assert_eq!(fired["status"], "succeeded", "{fired:#}");
    let evidence = fired["payload"]["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 2, "{fired:#}");
    for window in evidence {
        assert_eq!(window["drifting_devices"], 1, "{fired:#}");
        assert_eq!(window["judged_devices"], 2, "{fired:#}");
    }
    // The command got the payload file.
    let written: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("drift-iris-1.json")).expect("the command ran"),
    )
    .unwrap();
    assert_eq!(written["id"], fired["id"]);
    let drifted = written["drift_report"]["drifted_features"].to_string();
    assert!(drifted.contains("petal_length"), "{written:#}");
}

/// An https receiver behind a private CA: refused while the rule trusts the machine's roots,
/// delivered once the rule names that CA (`ca_certificate`).
#[tokio::test(flavor = "multi_thread")]
async fn an_https_webhook_behind_a_private_ca_is_trusted_when_the_rule_names_it() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let hub = HubProcess::start();
    push_iris(&hub).await;

    // The receiver's CA and its certificate for 127.0.0.1.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hooks/retrain", listener.local_addr().unwrap());
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = delivered.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            seen.lock().unwrap().push(head.to_owned());
                            break;
                        }
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });

    let operator = hub.operator();
    let set = |rule: serde_json::Value| {
        let operator = operator.clone();
        async move {
            operator
                .json(Method::PUT, "/api/v1/models/iris/trigger", Some(rule))
                .await
                .unwrap();
        }
    };
    let fire = || async {
        let fired = hub
            .operator()
            .json(
                Method::POST,
                "/api/v1/models/iris/trigger/fire",
                Some(json!({"note": "private CA"})),
            )
            .await
            .unwrap();
        finished(&hub, fired["id"].as_str().unwrap()).await
    };

    set(webhook_rule(&url, 2.0, 1)).await;
    let untrusted = fire().await;
    assert_eq!(untrusted["status"], "failed", "{untrusted:#}");
    assert!(delivered.lock().unwrap().is_empty());

    let mut trusting = webhook_rule(&url, 2.0, 1);
    trusting["action"]["webhook"]["ca_certificate"] = json!(ca.pem());
    set(trusting).await;
    let trusted = fire().await;
    assert_eq!(trusted["status"], "succeeded", "{trusted:#}");
    let heads = delivered.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("x-flotilla-signature")
    );
}

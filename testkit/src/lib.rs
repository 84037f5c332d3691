//! The one test kit: what the hub's and the agent's integration tests, the benches and
//! fleet-sim share instead of each writing their own. Real processes (`HubProcess`,
//! `AgentRun`), real peers (`Mosquitto`), a proxy a test can unplug (`TcpProxy`), the
//! facts a benchmark reports (`measure`), and, with the `in-process` feature, a whole hub
//! (`TestHub`) and agent cores (`TestAgent`) in the calling process.

mod agent_run;
mod hub_process;
pub mod measure;
mod mosquitto;
mod netns;
mod tcp_proxy;

#[cfg(feature = "in-process")]
mod in_process;

use std::path::{Path, PathBuf};

pub use agent_run::AgentRun;
pub use hub_process::{HubProcess, stderr_of_failure, stdout};
pub use mosquitto::Mosquitto;
pub use netns::{HUB_ADDRESS, NetLab};
pub use tcp_proxy::TcpProxy;

#[cfg(feature = "in-process")]
pub use in_process::{TestAgent, TestHub, enrollment_token};

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test kit sits in the workspace")
        .to_owned()
}

/// A test fixture (small ONNX models, datasets) made by agent/tests/fixtures/make_fixtures.py.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("agent/tests/fixtures").join(name)
}

/// A binary of the workspace (`flotilla-hub`, `flotilla`, `flotilla-agent`, `flotilla-sim`)
/// in the profile folder of the running test or bench: `cargo test --workspace` builds
/// them all (deploy/test.sh does).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/PROFILE/deps/TEST or target/PROFILE/TEST (benches and examples vary).
    let mut folder = exe.parent().expect("the test is in a folder").to_owned();
    if folder.ends_with("deps") {
        folder.pop();
    }
    let path = folder.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo test --workspace, or cargo build --release for benches)",
        path.display()
    );
    path
}

/// A loopback port free right now. Only for servers that cannot be handed a listener (the
/// embedded MQTT broker binds its own address; so do other programs such as Mosquitto):
/// everything of ours binds port 0 or takes a listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has a free port")
}

/// A client of the hub at `url` with `token`, trusting `ca_pem` (the hub's CA certificate)
/// when the URL is https (without one, the machine's roots).
pub fn admin_client(
    url: &str,
    token: Option<String>,
    ca_pem: Option<&str>,
) -> anyhow::Result<flotilla_api::AdminClient> {
    let client = flotilla_api::AdminClient::new(url, token)?;
    match ca_pem {
        Some(pem) if url.starts_with("https://") => Ok(client.with_trust(
            &flotilla_api::tls::ServerTrust::ca_pem(pem, "the hub's CA certificate")?,
        )?),
        _ => Ok(client),
    }
}

/// Untyped calls on the admin API, for tests that probe the wire format itself (a field's
/// exact JSON, a malformed or hand-made request). Programs use `AdminClient`'s typed
/// methods; this trait lives in the test kit so that only tests can reach for it.
#[allow(async_fn_in_trait)]
pub trait RawApi {
    /// Sends `body` as JSON and decodes the answer as JSON (`Null` for an empty answer);
    /// non-2xx answers are `ClientError::Api` with the hub's message.
    async fn json(
        &self,
        method: flotilla_api::http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, flotilla_api::ClientError>;

    /// POSTs raw bytes (a model file) and decodes the JSON answer.
    async fn upload(
        &self,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<serde_json::Value, flotilla_api::ClientError>;

    /// PUTs raw bytes (a reference profile set) and decodes the JSON answer.
    async fn put_bytes(
        &self,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<serde_json::Value, flotilla_api::ClientError>;

    /// GETs a body that is not JSON; errors still carry the hub's message.
    async fn get_raw(&self, path: &str) -> Result<bytes::Bytes, flotilla_api::ClientError>;

    /// One request, any status: the status and the body.
    async fn request(
        &self,
        method: flotilla_api::http::Method,
        path: &str,
        content_type: &str,
        body: bytes::Bytes,
    ) -> Result<(flotilla_api::http::StatusCode, bytes::Bytes), flotilla_api::ClientError>;
}

fn decoded(
    answer: flotilla_api::http::Answer,
) -> Result<serde_json::Value, flotilla_api::ClientError> {
    if !answer.status.is_success() {
        return Err(flotilla_api::ClientError::Api {
            status: answer.status.as_u16(),
            message: answer.error_message(),
        });
    }
    if answer.body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| flotilla_api::ClientError::BadAnswer(e.to_string()))
}

impl RawApi for flotilla_api::AdminClient {
    async fn json(
        &self,
        method: flotilla_api::http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, flotilla_api::ClientError> {
        let bytes = body
            .map(|b| bytes::Bytes::from(serde_json::to_vec(&b).expect("JSON serializes")))
            .unwrap_or_default();
        decoded(self.send(method, path, "application/json", bytes).await?)
    }

    async fn upload(
        &self,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<serde_json::Value, flotilla_api::ClientError> {
        let octets = "application/octet-stream";
        decoded(
            self.send(flotilla_api::http::Method::POST, path, octets, body)
                .await?,
        )
    }

    async fn put_bytes(
        &self,
        path: &str,
        body: bytes::Bytes,
    ) -> Result<serde_json::Value, flotilla_api::ClientError> {
        let octets = "application/octet-stream";
        decoded(
            self.send(flotilla_api::http::Method::PUT, path, octets, body)
                .await?,
        )
    }

    async fn get_raw(&self, path: &str) -> Result<bytes::Bytes, flotilla_api::ClientError> {
        let answer = self
            .send(
                flotilla_api::http::Method::GET,
                path,
                "application/json",
                bytes::Bytes::new(),
            )
            .await?;
        if !answer.status.is_success() {
            return Err(flotilla_api::ClientError::Api {
                status: answer.status.as_u16(),
                message: answer.error_message(),
            });
        }
        Ok(answer.body)
    }

    async fn request(
        &self,
        method: flotilla_api::http::Method,
        path: &str,
        content_type: &str,
        body: bytes::Bytes,
    ) -> Result<(flotilla_api::http::StatusCode, bytes::Bytes), flotilla_api::ClientError> {
        let answer = self.send(method, path, content_type, body).await?;
        Ok((answer.status, answer.body))
    }
}

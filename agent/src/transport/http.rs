//! HTTP to the hub: enrollment, root metadata, and artifact downloads that resume from the
//! bytes already on disk and never write more than the manifest says the artifact holds.
//! Built on the one HTTP client (`flotilla_api::http`); this module only knows which of the
//! hub's endpoints a device calls and what their answers mean to it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_api::http::{HttpClient, Method, StatusCode, read_bounded};
use flotilla_proto::control::{EnrollRequest, EnrollResponse};
use http_body_util::{BodyExt, Empty};

/// Answers of the hub's JSON endpoints are small: this bounds what a device reads.
const ANSWER_LIMIT: usize = 4 * 1024 * 1024;
/// How long the hub may take to answer (a download's head; a whole JSON answer).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("hub URL {0:?} is not http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the hub at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("hub answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The hub's certificate is not from the CA this device trusts (or its token pins).
    #[error("{url} is not the hub this device trusts: {cause}")]
    Untrusted { url: String, cause: String },
    #[error("hub's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("artifact is larger than its manifest says ({expected} bytes)")]
    TooLarge { expected: u64 },
    #[error("cannot write the download: {0}")]
    Disk(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct HubHttp {
    url: String,
    /// Swapped whole when the device certificate is renewed.
    client: Arc<std::sync::RwLock<HttpClient>>,
}

impl HubHttp {
    /// A client of the hub at `url`; an `https://` hub is checked with `tls` (whom to trust,
    /// the device certificate to present), or the machine's roots without it.
    pub fn new(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<HubHttp, HttpError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(HttpError::BadUrl(url.to_owned()));
        }
        // A hub that accepts connections and never answers must not hang enrollment or a
        // download: its answers' heads (and whole JSON answers) come within this time.
        let mut client = HttpClient::new(url)
            .map_err(|_| HttpError::BadUrl(url.to_owned()))?
            .with_answer_timeout(Some(ANSWER_TIMEOUT));
        if let Some(tls) = tls {
            client = client.with_tls(tls);
        }
        Ok(HubHttp {
            url: client.base().text.clone(),
            client: Arc::new(std::sync::RwLock::new(client)),
        })
    }

    /// The client as it is now.
    fn client(&self) -> HttpClient {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, speaks TLS with `tls` (a renewed device certificate).
    pub fn replace_tls(&self, tls: Arc<rustls::ClientConfig>) {
        let mut client = self.client.write().unwrap_or_else(|e| e.into_inner());
        *client = client.clone().with_tls(tls);
    }

    /// A new device certificate, asked for with a renewal signed by the device key.
    pub async fn renew_certificate(
        &self,
        device_id: &str,
        renewal: &flotilla_proto::trust::Envelope,
    ) -> Result<flotilla_proto::control::RenewedCertificate, HttpError> {
        let body = Bytes::from(serde_json::to_vec(renewal).expect("an envelope serializes"));
        let answer = self
            .call(
                Method::POST,
                &format!("/api/v1/devices/{device_id}/certificate"),
                body,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| HttpError::BadAnswer(e.to_string()))
    }

    fn unreachable(&self, cause: impl std::fmt::Display) -> HttpError {
        HttpError::Unreachable {
            url: self.url.clone(),
            cause: cause.to_string(),
        }
    }

    /// One request with a JSON or empty body; the whole (bounded) answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<flotilla_api::http::Answer, HttpError> {
        self.client()
            .request(
                method,
                path,
                &[("content-type", "application/json")],
                http_body_util::Full::new(body),
                ANSWER_LIMIT,
            )
            .await
            .map_err(|e| match e {
                flotilla_api::http::HttpError::Unreachable { cause, .. }
                | flotilla_api::http::HttpError::Interrupted { cause, .. }
                | flotilla_api::http::HttpError::BadRequest { cause, .. } => {
                    self.unreachable(cause)
                }
                timeout @ flotilla_api::http::HttpError::Timeout { .. } => {
                    self.unreachable(timeout)
                }
                flotilla_api::http::HttpError::Untrusted { url, cause } => {
                    HttpError::Untrusted { url, cause }
                }
                other => HttpError::BadAnswer(other.to_string()),
            })
    }

    pub async fn enroll(&self, enroll: &EnrollRequest) -> Result<EnrollResponse, HttpError> {
        let body = Bytes::from(serde_json::to_vec(enroll).expect("enroll request serializes"));
        let answer = self.call(Method::POST, "/api/v1/enroll", body).await?;
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| HttpError::BadAnswer(e.to_string()))
    }

    /// Root metadata of `version`, or `None` when the hub has no such version yet.
    pub async fn root(
        &self,
        version: u64,
    ) -> Result<Option<flotilla_proto::trust::Envelope>, HttpError> {
        let answer = self
            .call(
                Method::GET,
                &format!("/api/v1/roots/{version}"),
                Bytes::new(),
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(refused(&answer));
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|e| HttpError::BadAnswer(e.to_string()))
    }

    /// Downloads artifact `sha256` into `part`, continuing from what `part` already holds.
    /// Returns once `part` holds `expected_size` bytes; the caller checks the hash.
    pub async fn download(
        &self,
        sha256: &str,
        part: &Path,
        expected_size: u64,
    ) -> Result<(), HttpError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)?;
        let mut have = file.metadata()?.len();
        if have > expected_size {
            file.set_len(0)?;
            have = 0;
        }
        if have == expected_size {
            return Ok(());
        }
        let range = format!("bytes={have}-");
        let headers: &[(&str, &str)] = if have > 0 { &[("range", &range)] } else { &[] };
        let response = self
            .client()
            .send(
                Method::GET,
                &format!("/api/v1/artifacts/{sha256}"),
                headers,
                Empty::<Bytes>::new(),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status == StatusCode::OK && have > 0 {
            // The server ignored the range: start over.
            file.set_len(0)?;
            have = 0;
        } else if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            let body = read_bounded(response.into_body(), ANSWER_LIMIT, &self.url)
                .await
                .unwrap_or_default();
            return Err(refused(&flotilla_api::http::Answer {
                status,
                headers: Default::default(),
                body,
            }));
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| self.unreachable(format!("download interrupted: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            have += data.len() as u64;
            if have > expected_size {
                file.set_len(0)?;
                return Err(HttpError::TooLarge {
                    expected: expected_size,
                });
            }
            file.write_all(&data)?;
        }
        file.sync_all()?;
        if have < expected_size {
            return Err(
                self.unreachable(format!("download ended at {have} of {expected_size} bytes"))
            );
        }
        Ok(())
    }
}

fn refused(answer: &flotilla_api::http::Answer) -> HttpError {
    HttpError::Refused {
        status: answer.status.as_u16(),
        message: answer.error_message(),
    }
}

/// Hex SHA-256 and size of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use axum::body::{Body, HttpBody};
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    use super::*;

    /// Sends `data` and then fails, like a connection cut mid-download.
    struct CutBody(Option<Bytes>);

    impl HttpBody for CutBody {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(data) => Ok(hyper::body::Frame::data(data)),
                None => Err(std::io::Error::other("connection cut")),
            }))
        }
    }

    #[derive(Clone)]
    struct Artifact {
        bytes: Bytes,
        /// The first full-range request is cut halfway.
        cut_next: Arc<AtomicBool>,
        /// Where the last request started, from its Range header.
        last_start: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn serve_artifact(State(artifact): State<Artifact>, headers: HeaderMap) -> Response {
        let start: usize = headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        artifact.last_start.store(start, Ordering::SeqCst);
        let rest = artifact.bytes.slice(start..);
        let status = if start > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if artifact.cut_next.swap(false, Ordering::SeqCst) {
            let half = rest.slice(..rest.len() / 2);
            return (
                status,
                [("content-length", rest.len().to_string())],
                Body::new(CutBody(Some(half))),
            )
                .into_response();
        }
        (status, rest).into_response()
    }

    async fn start(bytes: Vec<u8>, cut_first: bool) -> HubHttp {
        start_with(bytes, cut_first).await.0
    }

    async fn start_with(bytes: Vec<u8>, cut_first: bool) -> (HubHttp, Artifact) {
        let artifact = Artifact {
            bytes: Bytes::from(bytes),
            cut_next: Arc::new(AtomicBool::new(cut_first)),
            last_start: Default::default(),
        };
        let seen = artifact.clone();
        let router = axum::Router::new()
            .route(
                "/api/v1/artifacts/{sha}",
                axum::routing::get(serve_artifact),
            )
            .with_state(artifact);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (
            HubHttp::new(&format!("http://{address}"), None).unwrap(),
            seen,
        )
    }

    #[tokio::test]
    async fn a_cut_download_completes_on_retry() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let http = start(bytes.clone(), true).await;
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("a.part");
        let first = http.download("ab", &part, bytes.len() as u64).await;
        assert!(
            matches!(first, Err(HttpError::Unreachable { .. })),
            "{first:?}"
        );
        assert!(std::fs::metadata(&part).unwrap().len() < bytes.len() as u64);
        http.download("ab", &part, bytes.len() as u64)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(&part).unwrap(),
            bytes,
            "byte for byte after the retry"
        );
    }

    #[tokio::test]
    async fn a_download_resumes_from_the_bytes_on_disk_with_a_range_request() {
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let (http, served) = start_with(bytes.clone(), false).await;
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("r.part");
        // What a cut download or a killed agent leaves behind: the first 20,000 bytes.
        std::fs::write(&part, &bytes[..20_000]).unwrap();
        http.download("ab", &part, bytes.len() as u64)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&part).unwrap(), bytes);
        assert_eq!(
            served.last_start.load(Ordering::SeqCst),
            20_000,
            "only the missing bytes were asked for"
        );
    }

    #[tokio::test]
    async fn an_artifact_larger_than_its_manifest_is_cut_off_and_discarded() {
        let http = start(vec![7u8; 5000], false).await;
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("b.part");
        let result = http.download("cd", &part, 1000).await;
        assert!(
            matches!(result, Err(HttpError::TooLarge { expected: 1000 })),
            "{result:?}"
        );
        assert_eq!(
            std::fs::metadata(&part).unwrap().len(),
            0,
            "nothing beyond the manifest's size is kept"
        );
        // A server that sends fewer bytes than promised is a truncated download, not a success.
        let short = start(vec![1u8; 10], false).await;
        let result = short.download("ef", &dir.path().join("c.part"), 20).await;
        assert!(
            matches!(result, Err(HttpError::Unreachable { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_hub_is_a_clear_error() {
        let http = HubHttp::new("http://127.0.0.1:1", None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let error = http
            .download("ab", &dir.path().join("x.part"), 10)
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot reach the hub at http://127.0.0.1:1"),
            "{error}"
        );
        assert!(HubHttp::new("ftp://x", None).is_err());
    }
}

//! `AdminClient`: the admin API from the caller's side, one typed method per endpoint (the
//! methods live beside their types, in each resource's module). The `flotilla` CLI, the
//! tests and fleet-sim all drive the hub through it.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::{Answer, HttpClient, HttpError, Method, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("hub URL {0:?} is not https://HOST:PORT or http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot speak TLS to the hub at {url}: {cause}")]
    Tls { url: String, cause: String },
    #[error("cannot reach the hub at {url}: {cause}; is flotilla-hub serve running there?")]
    Unreachable { url: String, cause: String },
    /// The hub answered with an error status; `message` is its `{"error": ...}` text.
    #[error("hub answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("the hub's answer does not fit the API: {0}")]
    BadAnswer(String),
    /// Refused before it was sent: the hub could not take it as meant.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<HttpError> for ClientError {
    fn from(error: HttpError) -> ClientError {
        match error {
            HttpError::BadUrl(url) => ClientError::BadUrl(url),
            HttpError::Unreachable { url, cause } | HttpError::BadRequest { url, cause } => {
                ClientError::Unreachable { url, cause }
            }
            HttpError::Interrupted { url, cause } => ClientError::Unreachable { url, cause },
            HttpError::Timeout { url, limit } => ClientError::Unreachable {
                cause: format!("no answer within {} s", limit.as_secs()),
                url,
            },
            too_large @ HttpError::TooLarge { .. } => ClientError::BadAnswer(too_large.to_string()),
            HttpError::Tls { url, cause } | HttpError::Untrusted { url, cause } => {
                ClientError::Tls { url, cause }
            }
        }
    }
}

/// How long the hub may take to answer a call (uploads excepted): its slowest answers, drift
/// reports over long time ranges, take seconds.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: HttpClient,
}

/// Percent-encodes a path segment or a query value.
pub fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `?k=v&k=v` of the pairs whose value is present (empty when none is).
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}", escape(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl AdminClient {
    /// `url` is `https://HOST:PORT` or `http://HOST:PORT` (a trailing slash is fine); an
    /// https hub is trusted by the machine's root certificates (`with_trust` names its CA).
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::BadUrl(url.to_owned()));
        }
        let mut http = HttpClient::new(url)?.with_answer_timeout(Some(ANSWER_TIMEOUT));
        if let Some(token) = token {
            http = http.with_header("authorization", &format!("Bearer {token}"));
        }
        Ok(AdminClient { http })
    }

    /// The same client, trusting `trust` for an https hub.
    pub fn with_trust(
        mut self,
        trust: &crate::tls::ServerTrust,
    ) -> Result<AdminClient, ClientError> {
        let config = crate::tls::client_config(trust, None).map_err(|e| ClientError::Tls {
            url: self.url().to_owned(),
            cause: e.to_string(),
        })?;
        self.http = self.http.with_tls(config);
        Ok(self)
    }

    /// The hub's base URL.
    pub fn url(&self) -> &str {
        &self.http.base().text
    }

    /// One request with a body; the raw answer, whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        Ok(self
            .http
            .call(method, path, &[("content-type", content_type)], body)
            .await?)
    }

    /// Sends `body` as JSON (none: no body) and decodes a JSON answer of type `T`;
    /// non-2xx answers become `ClientError::Api` with the hub's message.
    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).expect("API requests serialize")),
            None => Bytes::new(),
        };
        let answer = self.send(method, path, "application/json", bytes).await?;
        decode(&answer)
    }

    /// A GET decoded as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// A request whose success has no body (204).
    pub(crate) async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), ClientError> {
        let bytes = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).expect("API requests serialize")),
            None => Bytes::new(),
        };
        let answer = self.send(method, path, "application/json", bytes).await?;
        check(&answer)
    }

    /// Sends raw bytes (an upload) and decodes a JSON answer.
    pub(crate) async fn send_bytes<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, ClientError> {
        let answer = self
            .send(method, path, "application/octet-stream", body)
            .await?;
        decode(&answer)
    }

    /// Uploads `file` in 64 KiB frames, calling `progress` with the bytes handed to the
    /// connection so far (for the CLI's progress bar); decodes a JSON answer.
    pub(crate) async fn upload_with_progress<T: DeserializeOwned>(
        &self,
        path: &str,
        file: Bytes,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<T, ClientError> {
        let body = ProgressBody {
            file,
            sent: 0,
            progress: Box::new(progress),
        };
        // An upload takes as long as the file and the link make it: no time limit.
        let answer = self
            .http
            .clone()
            .with_answer_timeout(None)
            .request(
                Method::POST,
                path,
                &[("content-type", "application/octet-stream")],
                body,
                crate::http::DEFAULT_ANSWER_LIMIT,
            )
            .await?;
        decode(&answer)
    }

    /// A GET whose answer is written to `out` as it arrives, however large (an export);
    /// returns the bytes written. Errors still carry the hub's message.
    pub(crate) async fn get_streamed(
        &self,
        path: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        use http_body_util::BodyExt;
        let response = self
            .http
            .send(
                Method::GET,
                path,
                &[],
                http_body_util::Empty::<Bytes>::new(),
            )
            .await?;
        let url = self.http.url_of(path);
        if !response.status().is_success() {
            let status = response.status();
            let body = crate::http::read_bounded(response.into_body(), 1 << 20, &url).await?;
            return Err(ClientError::Api {
                status: status.as_u16(),
                message: Answer {
                    status,
                    headers: Default::default(),
                    body,
                }
                .error_message(),
            });
        }
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                cause: format!("the answer broke off: {e}"),
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .map_err(|e| ClientError::BadAnswer(format!("cannot write the answer: {e}")))?;
                written += data.len() as u64;
            }
        }
        Ok(written)
    }

    /// A GET of a body that is not JSON (Prometheus text); errors still carry the hub's
    /// message.
    pub(crate) async fn get_bytes(&self, path: &str) -> Result<Answer, ClientError> {
        let answer = self
            .send(Method::GET, path, "application/json", Bytes::new())
            .await?;
        check(&answer)?;
        Ok(answer)
    }
}

/// An error for a non-2xx answer.
fn check(answer: &Answer) -> Result<(), ClientError> {
    if answer.status.is_success() {
        return Ok(());
    }
    Err(ClientError::Api {
        status: answer.status.as_u16(),
        message: answer.error_message(),
    })
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, ClientError> {
    check(answer)?;
    let body: &[u8] = if answer.status == StatusCode::NO_CONTENT {
        b"null"
    } else {
        &answer.body
    };
    serde_json::from_slice(body).map_err(|e| {
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        ClientError::BadAnswer(format!("{e}: {text}"))
    })
}

/// A request body sent in frames, reporting progress as each frame leaves.
struct ProgressBody {
    file: Bytes,
    sent: usize,
    progress: Box<dyn Fn(u64) + Send + Sync>,
}

impl hyper::body::Body for ProgressBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.sent >= self.file.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (self.sent + 64 * 1024).min(self.file.len());
        let frame = self.file.slice(self.sent..end);
        self.sent = end;
        (self.progress)(end as u64);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(frame))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact((self.file.len() - self.sent) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_unreserved_characters() {
        assert_eq!(escape("iris-v2_a.b~c"), "iris-v2_a.b~c");
        assert_eq!(escape("a b/c,d"), "a%20b%2Fc%2Cd");
        assert_eq!(query(&[("a", Some("1".into())), ("b", None)]), "?a=1");
        assert_eq!(query(&[("b", None)]), "");
    }
}

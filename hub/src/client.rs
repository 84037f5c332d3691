//! A client of the admin API: what the `flotilla` CLI, the tests and fleet-sim use.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("hub URL {0:?} is not http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the hub at {url}: {cause}; is flotilla-hub serve running there?")]
    Unreachable { url: String, cause: String },
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("the hub's answer is not JSON: {0}")]
    BadAnswer(String),
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    url: String,
    authority: String,
    token: Option<String>,
}

impl AdminClient {
    /// `url` is `http://HOST:PORT` (a trailing slash is fine).
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let authority = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        Ok(AdminClient {
            url: url.trim_end_matches('/').to_owned(),
            authority: authority.to_owned(),
            token,
        })
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.send(method, path, content_type, Full::new(body)).await
    }

    /// One request on a new connection, with the token; any body type.
    async fn send<B>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: B,
    ) -> Result<(StatusCode, Bytes), ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let unreachable = |cause: String| ClientError::Unreachable {
            url: self.url.clone(),
            cause,
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(body)
            .map_err(|e| ClientError::BadUrl(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// Sends a request and decodes a JSON answer; non-2xx answers become `ClientError::Api`
    /// with the hub's own error message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(&b).expect("JSON serializes")))
            .unwrap_or_default();
        let (status, answer) = self
            .request(method, path, "application/json", bytes)
            .await?;
        decode(status, &answer)
    }

    /// Uploads `file` in 64 KiB frames, calling `progress` with the bytes handed to the
    /// connection so far (for the CLI's progress bar).
    pub async fn upload_with_progress(
        &self,
        path: &str,
        file: Bytes,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<serde_json::Value, ClientError> {
        let body = ProgressBody {
            file,
            sent: 0,
            progress: Box::new(progress),
        };
        let (status, answer) = self
            .send(Method::POST, path, "application/octet-stream", body)
            .await?;
        decode(status, &answer)
    }

    /// PUTs raw bytes (a reference profile set) and decodes the JSON answer.
    pub async fn put_bytes(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<serde_json::Value, ClientError> {
        let (status, answer) = self
            .request(Method::PUT, path, "application/octet-stream", body)
            .await?;
        decode(status, &answer)
    }

    /// GETs a body that is not JSON (an export); errors still carry the hub's message.
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, answer) = self
            .request(Method::GET, path, "application/json", Bytes::new())
            .await?;
        if !status.is_success() {
            decode(status, &answer)?;
        }
        Ok(answer)
    }

    pub async fn upload(&self, path: &str, file: Bytes) -> Result<serde_json::Value, ClientError> {
        let (status, answer) = self
            .request(Method::POST, path, "application/octet-stream", file)
            .await?;
        decode(status, &answer)
    }
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

fn decode(status: StatusCode, answer: &[u8]) -> Result<serde_json::Value, ClientError> {
    if status == StatusCode::NO_CONTENT {
        return Ok(serde_json::Value::Null);
    }
    let value: Option<serde_json::Value> = serde_json::from_slice(answer).ok();
    if !status.is_success() {
        let message = value
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(answer).into_owned());
        return Err(ClientError::Api {
            status: status.as_u16(),
            message: format!("hub answered {status}: {message}"),
        });
    }
    value.ok_or_else(|| {
        ClientError::BadAnswer(String::from_utf8_lossy(answer).chars().take(200).collect())
    })
}

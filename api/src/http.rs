//! The one HTTP/1.1 client every Flotilla program uses: the CLI and tests against the hub's
//! admin API, agents for enrollment, root metadata and artifact ranges, the hub for trigger
//! webhooks, and the demo against an agent's Unix socket. `https://` URLs go over TLS
//! (`tls.rs` says whom it trusts). One connection per request (the
//! callers make few, and a fresh connection never carries a stale keep-alive into a retry);
//! answers are read with a size bound so a hostile or broken server cannot exhaust memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

pub use hyper::body::Body as HttpBody;
pub use hyper::{HeaderMap, Method, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "{0:?} is not a URL this client speaks: use http://HOST:PORT[/PATH], https://HOST:PORT[/PATH] or unix:/PATH/TO/SOCKET"
    )]
    BadUrl(String),
    #[error("cannot reach {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the request to {url} could not be sent: {cause}")]
    BadRequest { url: String, cause: String },
    #[error("the answer from {url} broke off: {cause}")]
    Interrupted { url: String, cause: String },
    #[error("the answer from {url} is larger than the {limit} bytes this client accepts")]
    TooLarge { url: String, limit: usize },
    #[error("{url} did not answer within {} s", limit.as_secs_f64())]
    Timeout { url: String, limit: Duration },
    #[error("cannot set up TLS for {url}: {cause}")]
    Tls { url: String, cause: String },
    /// The server's certificate is not one this client trusts (another CA, a pin that does
    /// not match, the wrong name, expired): trying again will not help.
    #[error("{url} is not trusted: {cause}")]
    Untrusted { url: String, cause: String },
}

/// Whether a failed TLS handshake was the peer's certificate being refused.
fn is_certificate_refusal(error: &std::io::Error) -> bool {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        tls,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::General(_)
            | rustls::Error::NoCertificatesPresented
    )
}

/// Where requests go: a TCP authority, or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `HOST:PORT`.
    Tcp(String),
    Unix(PathBuf),
}

/// A parsed base URL: `http://HOST:PORT[/PREFIX]`, `https://HOST:PORT[/PREFIX]` or
/// `unix:/PATH/TO/SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub endpoint: Endpoint,
    /// Whether requests go over TLS (`https://`).
    pub tls: bool,
    /// Prepended to every request path; empty or starting with `/`, never ending with one.
    pub prefix: String,
    /// As given, for messages.
    pub text: String,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, HttpError> {
        let bad = || HttpError::BadUrl(url.to_owned());
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(BaseUrl {
                endpoint: Endpoint::Unix(PathBuf::from(path)),
                tls: false,
                prefix: String::new(),
                text: url.to_owned(),
            });
        }
        let (rest, tls, default_port) = match url.strip_prefix("https://") {
            Some(rest) => (rest, true, 443),
            None => (url.strip_prefix("http://").ok_or_else(bad)?, false, 80),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority.contains(['?', '#', '@'])
            || authority.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        // The scheme's port when none is given (`[::1]:8080` has one; `[::1]` does not).
        let has_port = authority
            .rfind(':')
            .is_some_and(|colon| !authority[colon..].contains(']'));
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        Ok(BaseUrl {
            endpoint: Endpoint::Tcp(authority),
            tls,
            prefix: prefix.to_owned(),
            text: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The name TLS checks the server's certificate against: the host without its port or
    /// brackets.
    pub fn server_name(&self) -> &str {
        let authority = self.host();
        let host = match authority.rfind(':') {
            Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
            _ => authority,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The `Host` header: the authority, or `localhost` over a Unix socket.
    fn host(&self) -> &str {
        match &self.endpoint {
            Endpoint::Tcp(authority) => authority,
            Endpoint::Unix(_) => "localhost",
        }
    }
}

/// A client of one base URL, with headers sent on every request (e.g. a bearer token).
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: BaseUrl,
    headers: Vec<(String, String)>,
    /// How long a connection may take to open.
    connect_timeout: Duration,
    /// How long a request may take until its answer's head arrives (the request body's
    /// upload included), and `request` until the whole answer is read; `None`: no limit.
    answer_timeout: Option<Duration>,
    /// For `https://`: whom to trust and what to present; the machine's roots when unset.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A whole answer, read within its bound.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `error` field of a JSON error body (the hub and the agent both answer
    /// `{"error": "..."}`), else the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<crate::ErrorBody>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned())
    }
}

/// How long opening a connection may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers larger than this are refused unless the caller asks for more.
pub const DEFAULT_ANSWER_LIMIT: usize = 64 * 1024 * 1024;

impl HttpClient {
    /// A client of `url` that gives up on a connection after 10 s and waits for answers
    /// as long as they take (`with_answer_timeout` bounds that).
    pub fn new(url: &str) -> Result<HttpClient, HttpError> {
        Ok(HttpClient {
            base: BaseUrl::parse(url)?,
            headers: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            answer_timeout: None,
            tls: None,
        })
    }

    /// The same client, speaking TLS with `config` to an `https://` URL (whom it trusts,
    /// the identity it presents; see `tls::client_config`).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> HttpClient {
        self.tls = Some(config);
        self
    }

    /// The same client, giving up on an answer after `timeout` (`None`: never), so a server
    /// that accepts a connection and never answers cannot hang the caller.
    pub fn with_answer_timeout(mut self, timeout: Option<Duration>) -> HttpClient {
        self.answer_timeout = timeout;
        self
    }

    /// The same client, sending `name: value` on every request.
    pub fn with_header(mut self, name: &str, value: &str) -> HttpClient {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// The URL of `path` on this client's base, for messages and links.
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base.text)
    }

    /// Sends one request on a new connection and returns the answer with its body still
    /// streaming (for downloads). `headers` are added to the client's own.
    pub async fn send<B>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: B,
    ) -> Result<hyper::Response<Incoming>, HttpError>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let url = self.url_of(path);
        let target = match format!("{}{path}", self.base.prefix) {
            empty if empty.is_empty() => "/".to_owned(),
            target => target,
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header("host", self.base.host());
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).map_err(|e| HttpError::BadRequest {
            url: url.clone(),
            cause: e.to_string(),
        })?;
        let unreachable = |cause: String| HttpError::Unreachable {
            url: url.clone(),
            cause,
        };
        let connect_timeout = self.connect_timeout;
        let no_connection = || {
            unreachable(format!(
                "no connection within {} s",
                connect_timeout.as_secs()
            ))
        };
        let exchanged = async {
            match &self.base.endpoint {
                Endpoint::Tcp(authority) => {
                    let stream = tokio::time::timeout(
                        connect_timeout,
                        tokio::net::TcpStream::connect(authority),
                    )
                    .await
                    .map_err(|_| no_connection())?
                    .map_err(|e| unreachable(e.to_string()))?;
                    if !self.base.tls {
                        return exchange(TokioIo::new(stream), request)
                            .await
                            .map_err(unreachable);
                    }
                    let config = self.tls_config(&url)?;
                    let server_name =
                        rustls::pki_types::ServerName::try_from(self.base.server_name().to_owned())
                            .map_err(|e| HttpError::Tls {
                                url: url.clone(),
                                cause: format!(
                                    "{:?} is not a TLS server name: {e}",
                                    self.base.server_name()
                                ),
                            })?;
                    let stream = tokio::time::timeout(
                        connect_timeout,
                        tokio_rustls::TlsConnector::from(config).connect(server_name, stream),
                    )
                    .await
                    .map_err(|_| no_connection())?
                    .map_err(|e| {
                        if is_certificate_refusal(&e) {
                            HttpError::Untrusted {
                                url: url.clone(),
                                cause: e.to_string(),
                            }
                        } else {
                            unreachable(format!("TLS: {e}"))
                        }
                    })?;
                    exchange(TokioIo::new(stream), request)
                        .await
                        .map_err(unreachable)
                }
                Endpoint::Unix(path) => {
                    let stream = tokio::time::timeout(
                        connect_timeout,
                        tokio::net::UnixStream::connect(path),
                    )
                    .await
                    .map_err(|_| no_connection())?
                    .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
                    exchange(TokioIo::new(stream), request)
                        .await
                        .map_err(unreachable)
                }
            }
        };
        match self.answer_timeout {
            None => exchanged.await,
            Some(limit) => {
                tokio::time::timeout(limit, exchanged)
                    .await
                    .map_err(|_| HttpError::Timeout {
                        url: url.clone(),
                        limit,
                    })?
            }
        }
    }

    fn tls_config(&self, url: &str) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        match &self.tls {
            Some(config) => Ok(config.clone()),
            None => crate::tls::client_config(&crate::tls::ServerTrust::SystemRoots, None).map_err(
                |e| HttpError::Tls {
                    url: url.to_owned(),
                    cause: e.to_string(),
                },
            ),
        }
    }

    /// Sends one request and reads the whole answer, at most `limit` bytes of it.
    pub async fn request<B>(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: B,
        limit: usize,
    ) -> Result<Answer, HttpError>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let url = self.url_of(path);
        let whole = async {
            let response = self.send(method, path, headers, body).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_bounded(response.into_body(), limit, &url).await?;
            Ok::<_, HttpError>((status, headers, body))
        };
        let (status, headers, body) = match self.answer_timeout {
            None => whole.await?,
            Some(limit) => {
                tokio::time::timeout(limit, whole)
                    .await
                    .map_err(|_| HttpError::Timeout {
                        url: url.clone(),
                        limit,
                    })??
            }
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `request` with a body held in memory and the default answer limit.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        self.request(method, path, headers, Full::new(body), DEFAULT_ANSWER_LIMIT)
            .await
    }
}

async fn exchange<I, B>(
    io: I,
    request: hyper::Request<B>,
) -> Result<hyper::Response<Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// Reads a body to its end, refusing more than `limit` bytes.
pub async fn read_bounded(mut body: Incoming, limit: usize, url: &str) -> Result<Bytes, HttpError> {
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::Interrupted {
            url: url.to_owned(),
            cause: e.to_string(),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if collected.len() + data.len() > limit {
            return Err(HttpError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        collected.extend_from_slice(&data);
    }
    Ok(Bytes::from(collected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_parse_or_say_what_they_take() {
        let tcp = BaseUrl::parse("http://127.0.0.1:7070/").unwrap();
        assert_eq!(tcp.endpoint, Endpoint::Tcp("127.0.0.1:7070".into()));
        assert_eq!(
            (tcp.prefix.as_str(), tcp.text.as_str()),
            ("", "http://127.0.0.1:7070")
        );
        let prefixed = BaseUrl::parse("http://hub:80/flotilla/").unwrap();
        assert_eq!(prefixed.prefix, "/flotilla");
        let hook = BaseUrl::parse("http://hooks.local/a/b?c=1").unwrap();
        assert_eq!(hook.endpoint, Endpoint::Tcp("hooks.local:80".into()));
        assert_eq!(hook.prefix, "/a/b?c=1");
        let v6 = BaseUrl::parse("http://[::1]").unwrap();
        assert_eq!(v6.endpoint, Endpoint::Tcp("[::1]:80".into()));
        let v6 = BaseUrl::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(v6.endpoint, Endpoint::Tcp("[::1]:8080".into()));
        let unix = BaseUrl::parse("unix:/run/flotilla/agent.sock").unwrap();
        assert_eq!(
            unix.endpoint,
            Endpoint::Unix("/run/flotilla/agent.sock".into())
        );
        assert_eq!(unix.host(), "localhost");
        for bad in [
            "",
            "127.0.0.1:7070",
            "ftp://x",
            "http://",
            "unix:",
            "http://u@h:1",
            "http:///x",
            "http://a b",
        ] {
            let error = BaseUrl::parse(bad).unwrap_err();
            assert!(
                error.to_string().contains("http://HOST:PORT"),
                "{bad}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_with_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let client = HttpClient::new(&format!("http://{address}")).unwrap();
        let error = client
            .call(Method::GET, "/healthz", &[], Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }

    /// A server that answers a fixed body over a real socket.
    async fn serve_once(body: Vec<u8>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await.unwrap();
            let head = format!(
                "HTTP/1.1 418 I'm a teapot\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(&body).await.unwrap();
        });
        address
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, reads the request, never answers.
        tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let client = HttpClient::new(&format!("http://{address}"))
            .unwrap()
            .with_answer_timeout(Some(Duration::from_millis(200)));
        let error = client
            .call(Method::GET, "/", &[], Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(error, HttpError::Timeout { .. }), "{error}");
        assert!(
            error.to_string().contains("did not answer within 0.2 s"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn answers_are_read_within_their_bound() {
        let address = serve_once(br#"{"error": "no tea"}"#.to_vec()).await;
        let client = HttpClient::new(&format!("http://{address}")).unwrap();
        let answer = client
            .call(Method::GET, "/", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(answer.status.as_u16(), 418);
        assert_eq!(answer.error_message(), "no tea");

        let address = serve_once(vec![b'x'; 10_000]).await;
        let client = HttpClient::new(&format!("http://{address}")).unwrap();
        let error = client
            .request(Method::GET, "/", &[], Full::new(Bytes::new()), 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(error, HttpError::TooLarge { limit: 1000, .. }),
            "{error}"
        );
    }
}

//! The API's listener: plain TCP on loopback when the settings allow it, else TLS with the
//! hub's CA-issued certificate and an optional client certificate (devices present theirs;
//! operators use bearer tokens). Handshakes run in their own tasks with a deadline, so a
//! client that connects and stalls holds up nobody else.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use flotilla_common::connection_cap::Capped;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections handshaken and not yet taken by the server.
const ACCEPTED_QUEUE: usize = 256;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: SocketAddr,
    /// Hex SHA-256 of the client certificate the TLS handshake verified (it chains to the
    /// hub's CA), when the client presented one.
    pub client_certificate_sha256: Option<String>,
}

/// One accepted connection.
#[derive(Debug)]
pub enum ApiStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ApiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ApiStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The API's listener (see the module comment).
#[derive(Debug)]
pub struct ApiListener {
    accepted: mpsc::Receiver<(ApiStream, Peer)>,
    local: SocketAddr,
    /// Ends the accepting task with the listener.
    _acceptor: tokio::task::JoinHandle<()>,
}

impl ApiListener {
    /// Serves `listener` as is (plain HTTP), or over TLS with `tls`.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<ApiListener> {
        let local = listener.local_addr()?;
        let (queue, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), queue));
        Ok(ApiListener {
            accepted,
            local,
            _acceptor: acceptor,
        })
    }
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        self._acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    queue: mpsc::Sender<(ApiStream, Peer)>,
) {
    loop {
        let (stream, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(%error, "cannot accept an API connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls.clone() else {
            let peer = Peer {
                address,
                client_certificate_sha256: None,
            };
            if queue.send((ApiStream::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let client_certificate_sha256 = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| flotilla_api::tls::certificate_fingerprint(leaf));
                    let peer = Peer {
                        address,
                        client_certificate_sha256,
                    };
                    let _ = queue.send((ApiStream::Tls(Box::new(stream)), peer)).await;
                }
                Ok(Err(error)) => {
                    tracing::info!(%address, %error, "TLS handshake refused");
                }
                Err(_) => {
                    tracing::info!(%address, "TLS handshake not finished within 10 s; dropped");
                }
            }
        });
    }
}

impl Listener for ApiListener {
    type Io = ApiStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (ApiStream, Peer) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (only with the runtime): never accept again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            address: self.local,
            client_certificate_sha256: None,
        })
    }
}

impl Connected<IncomingStream<'_, Capped<ApiListener>>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Capped<ApiListener>>) -> Peer {
        stream.remote_addr().clone()
    }
}

/// The API's TLS settings: the hub's certificate chain and key; client certificates are
/// optional and, when given, must chain to the hub's CA.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_der: &[u8],
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = flotilla_api::tls::provider();
    let chain = flotilla_api::tls::certificates_from_pem(chain_pem, "the hub's certificate")
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the hub's TLS key: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| format!("the hub's CA certificate: {e}"))?;
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("the client certificate check: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .map_err(|e| format!("the hub's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

//! The QUIC artifact endpoint (quinn): devices fetch model files by content hash, resuming
//! from an offset. Its self-signed certificate is pinned by agents (the pin comes with the
//! enrollment answer). With TLS on, devices present their certificates too (mutual TLS,
//! from the hub's CA), and every request is checked as the HTTPS ranges are: a certificate
//! this hub issued, not revoked. UDP may be blocked: agents then use the HTTP range
//! endpoint of the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_common::artifact_protocol::{
    ALPN, ArtifactHeader, ArtifactRequest, Encoding, MAX_LINE_BYTES, SERVER_NAME,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::fleet::certificate_holder;
use crate::metrics::HubMetrics;
use crate::store::RegistryStore;

/// Who may download over QUIC: a client certificate that chains to `ca` (DER) and that
/// `store` says this hub issued and has not revoked.
#[derive(Clone)]
pub struct DeviceCertificates {
    pub ca: Vec<u8>,
    pub store: Arc<dyn RegistryStore>,
}

impl std::fmt::Debug for DeviceCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertificates").finish_non_exhaustive()
    }
}

/// The hub's QUIC certificate and key (DER), made once and kept in the data folder.
#[derive(Debug, Clone)]
pub struct QuicIdentity {
    pub certificate: Vec<u8>,
    pub private_key: Vec<u8>,
}

impl QuicIdentity {
    /// Loads `keys/quic.crt` and `keys/quic.key`, making them first if they do not exist.
    pub fn load_or_create(keys_dir: &Path) -> Result<QuicIdentity, String> {
        let (cert_path, key_path) = (keys_dir.join("quic.crt"), keys_dir.join("quic.key"));
        if let (Ok(certificate), Ok(private_key)) =
            (std::fs::read(&cert_path), std::fs::read(&key_path))
        {
            return Ok(QuicIdentity {
                certificate,
                private_key,
            });
        }
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| format!("cannot make the QUIC certificate: {e}"))?;
        let identity = QuicIdentity {
            certificate: made.cert.der().to_vec(),
            private_key: made.signing_key.serialize_der(),
        };
        write_private(&key_path, &identity.private_key)?;
        std::fs::write(&cert_path, &identity.certificate)
            .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
        Ok(identity)
    }

    /// What agents pin: hex SHA-256 of the certificate.
    pub fn pin(&self) -> String {
        hex::encode(Sha256::digest(&self.certificate))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let folder = path.parent().expect("key paths have a folder");
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(|e| e.to_string())?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    file.write_all(bytes).map_err(|e| e.to_string())?;
    file.as_file().sync_all().map_err(|e| e.to_string())?;
    file.persist(path).map_err(|e| e.error.to_string())?;
    Ok(())
}

/// Starts serving artifacts from `artifacts` (the content-addressed folder) on `socket`,
/// already bound by the caller (so tests bind port 0 and know the port before serving).
/// With `devices`, only devices with a valid certificate from the hub download.
pub fn start(
    socket: std::net::UdpSocket,
    identity: &QuicIdentity,
    artifacts: PathBuf,
    metrics: Arc<HubMetrics>,
    devices: Option<DeviceCertificates>,
) -> Result<SocketAddr, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let builder = match &devices {
        Some(devices) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(devices.ca.clone()))
                .map_err(|e| format!("the hub's CA: {e}"))?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("QUIC client certificates: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(
            vec![CertificateDer::from(identity.certificate.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.private_key.clone())),
        )
        .map_err(|e| format!("QUIC certificate: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let address = socket
        .local_addr()
        .map_err(|e| format!("the QUIC socket has no address: {e}"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("cannot serve QUIC on {address}: {e}"))?;
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (artifacts, metrics, devices) =
                (artifacts.clone(), metrics.clone(), devices.clone());
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let connection = match incoming.await {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%remote, %error, "QUIC handshake refused");
                        return;
                    }
                };
                let certificate = client_certificate_sha256(&connection);
                while let Ok((send, receive)) = connection.accept_bi().await {
                    let (artifacts, metrics) = (artifacts.clone(), metrics.clone());
                    let admitted = match &devices {
                        None => Ok(()),
                        Some(devices) => admit(devices, certificate.clone()).await,
                    };
                    tokio::spawn(async move {
                        let served = match admitted {
                            Ok(()) => serve_stream(send, receive, &artifacts, &metrics).await,
                            Err(refusal) => {
                                tracing::warn!(%remote, %refusal, "QUIC download refused");
                                refuse(send, refusal).await
                            }
                        };
                        if let Err(error) = served {
                            tracing::debug!(%error, "QUIC artifact stream ended early");
                        }
                    });
                }
            });
        }
    });
    Ok(address)
}

/// The hex SHA-256 of the certificate the client presented, if it did.
fn client_certificate_sha256(connection: &quinn::Connection) -> Option<String> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain
        .first()
        .map(|leaf| flotilla_api::tls::certificate_fingerprint(leaf))
}

/// Checks a request's certificate against the inventory (each request, so a revocation
/// stops a connection's next download).
async fn admit(devices: &DeviceCertificates, certificate: Option<String>) -> Result<(), String> {
    let store = devices.store.clone();
    tokio::task::spawn_blocking(move || certificate_holder(store.as_ref(), certificate.as_deref()))
        .await
        .map_err(|e| e.to_string())?
        .map(|_| ())
        .map_err(|refusal| refusal.to_string())
}

async fn refuse(mut send: quinn::SendStream, refusal: String) -> Result<(), String> {
    let header = ArtifactHeader {
        size: 0,
        error: Some(refusal),
    };
    send.write_all(&line(&header))
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    artifacts: &Path,
    metrics: &HubMetrics,
) -> Result<(), String> {
    let request = receive
        .read_to_end(MAX_LINE_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let request: Result<ArtifactRequest, String> =
        serde_json::from_slice(request.trim_ascii_end()).map_err(|e| format!("bad request: {e}"));
    let opened = match request {
        Ok(request)
            if request.sha256.len() == 64
                && request.sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            let path = artifacts
                .join(&request.sha256[..2])
                .join(request.encoding.file_name(&request.sha256));
            match tokio::fs::File::open(&path).await {
                Ok(file) => Ok((file, request.offset)),
                Err(_) if request.encoding != Encoding::Raw => Err(format!(
                    "no {} form of artifact {}",
                    request.encoding.label(),
                    request.sha256
                )),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("no artifact {}", request.sha256))
                }
                Err(e) => Err(format!("cannot open artifact {}: {e}", request.sha256)),
            }
        }
        Ok(_) => Err("artifacts are named by their 64-hex-digit SHA-256".to_owned()),
        Err(error) => Err(error),
    };
    let (mut file, offset) = match opened {
        Ok(found) => found,
        Err(error) => {
            let header = ArtifactHeader {
                size: 0,
                error: Some(error),
            };
            send.write_all(&line(&header))
                .await
                .map_err(|e| e.to_string())?;
            return send.finish().map_err(|e| e.to_string());
        }
    };
    let size = file.metadata().await.map_err(|e| e.to_string())?.len();
    if offset > size {
        let header = ArtifactHeader {
            size,
            error: Some(format!("offset {offset} is beyond the {size} bytes")),
        };
        send.write_all(&line(&header))
            .await
            .map_err(|e| e.to_string())?;
        return send.finish().map_err(|e| e.to_string());
    }
    send.write_all(&line(&ArtifactHeader { size, error: None }))
        .await
        .map_err(|e| e.to_string())?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            break;
        }
        send.write_all(&buffer[..read])
            .await
            .map_err(|e| e.to_string())?;
        HubMetrics::add(&metrics.artifact_bytes_served, read as u64);
    }
    send.finish().map_err(|e| e.to_string())
}

fn line<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("headers serialize");
    bytes.push(b'\n');
    bytes
}

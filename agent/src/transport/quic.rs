//! Artifact downloads over QUIC (quinn), resuming from the bytes already on disk. The hub's
//! self-signed certificate is pinned: its SHA-256 comes with the enrollment answer, and no
//! other certificate is accepted. The device presents its own certificate (the hub checks
//! it as it does on HTTPS).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::artifact_protocol::{
    ALPN, ArtifactHeader, ArtifactRequest, Encoding, SERVER_NAME, split_line,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// How long to wait for a QUIC handshake before falling back to HTTP (UDP may be blocked).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("QUIC setup: {0}")]
    Setup(String),
    #[error("cannot reach the hub over QUIC at {address}: {cause}")]
    Unreachable { address: SocketAddr, cause: String },
    #[error("hub refused the download: {0}")]
    Refused(String),
    #[error("artifact is larger than its manifest says ({expected} bytes)")]
    TooLarge { expected: u64 },
    #[error("cannot write the download: {0}")]
    Disk(#[from] std::io::Error),
}

/// Accepts exactly one certificate: the one whose SHA-256 was pinned at enrollment.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the hub's QUIC certificate does not match the pin from enrollment".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug, Clone)]
pub struct QuicArtifacts {
    /// The UDP socket is bound per download, not held for the agent's life: downloads are
    /// rare, and a simulator runs thousands of agents in one process's file limit.
    client: Arc<std::sync::Mutex<quinn::ClientConfig>>,
    pin: Vec<u8>,
    bind: SocketAddr,
    server: SocketAddr,
}

/// TLS 1.3 for QUIC: only the pinned certificate, presenting `identity` when given.
fn client_config(
    pin: &[u8],
    identity: Option<&flotilla_api::tls::ClientIdentity>,
) -> Result<quinn::ClientConfig, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
            sha256: pin.to_vec(),
            provider,
        }));
    let mut tls = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| QuicError::Setup(format!("the device certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Setup(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

impl QuicArtifacts {
    /// `address` is the hub's QUIC `HOST:PORT`; `pin` the hex SHA-256 of its certificate.
    pub fn new(address: &str, pin: &str) -> Result<QuicArtifacts, QuicError> {
        let server: SocketAddr = address
            .parse()
            .map_err(|_| QuicError::Setup(format!("QUIC address {address:?} is not IP:PORT")))?;
        let pin =
            hex::decode(pin).map_err(|_| QuicError::Setup("certificate pin is not hex".into()))?;
        let client = client_config(&pin, None)?;
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        Ok(QuicArtifacts {
            client: Arc::new(std::sync::Mutex::new(client)),
            pin,
            bind,
            server,
        })
    }

    /// Presents `identity` (the device certificate) from the next download on: at start,
    /// and after each renewal.
    pub fn set_identity(
        &self,
        identity: &flotilla_api::tls::ClientIdentity,
    ) -> Result<(), QuicError> {
        let client = client_config(&self.pin, Some(identity))?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    /// Downloads artifact `sha256` in `encoding` into `part`, continuing from what `part`
    /// holds. `size` is the artifact's size from the signed manifest: a raw download must be
    /// exactly that long, a compressed one at most a little longer. The caller decodes and
    /// checks the hash.
    pub async fn download(
        &self,
        sha256: &str,
        encoding: &Encoding,
        part: &Path,
        size: u64,
    ) -> Result<(), QuicError> {
        let unreachable = |cause: String| QuicError::Unreachable {
            address: self.server,
            cause,
        };
        let limit = encoding.max_transfer_bytes(size);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)?;
        let mut have = file.metadata()?.len();
        if have > limit {
            file.set_len(0)?;
            have = 0;
        }
        if *encoding == Encoding::Raw && have == size {
            return Ok(());
        }
        let mut endpoint =
            quinn::Endpoint::client(self.bind).map_err(|e| QuicError::Setup(e.to_string()))?;
        endpoint.set_default_client_config(
            self.client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        let connecting = endpoint
            .connect(self.server, SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("no QUIC handshake (UDP blocked?)".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, mut receive) = connection
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let request = ArtifactRequest {
            sha256: sha256.to_owned(),
            offset: have,
            encoding: encoding.clone(),
        };
        let mut request = serde_json::to_vec(&request).expect("requests serialize");
        request.push(b'\n');
        send.write_all(&request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        send.finish().map_err(|e| unreachable(e.to_string()))?;
        let mut pending: Vec<u8> = Vec::new();
        let mut total: Option<u64> = None;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let Some(read) = receive
                .read(&mut buffer)
                .await
                .map_err(|e| unreachable(format!("download interrupted: {e}")))?
            else {
                break;
            };
            let body: Vec<u8>;
            let data: &[u8] = if total.is_none() {
                pending.extend_from_slice(&buffer[..read]);
                let Some((header, rest)) =
                    split_line::<ArtifactHeader>(&pending).map_err(QuicError::Refused)?
                else {
                    continue;
                };
                if let Some(error) = header.error {
                    return Err(QuicError::Refused(error));
                }
                if header.size > limit || (*encoding == Encoding::Raw && header.size != size) {
                    file.set_len(0)?;
                    return Err(QuicError::TooLarge { expected: size });
                }
                total = Some(header.size);
                body = rest.to_vec();
                &body
            } else {
                &buffer[..read]
            };
            have += data.len() as u64;
            if have > total.unwrap_or(limit) {
                file.set_len(0)?;
                return Err(QuicError::TooLarge { expected: size });
            }
            file.write_all(data)?;
        }
        file.sync_all()?;
        connection.close(0u32.into(), b"done");
        match total {
            Some(total) if have == total => Ok(()),
            Some(total) => Err(unreachable(format!(
                "download ended at {have} of {total} bytes"
            ))),
            None => Err(unreachable("the stream ended before its header".into())),
        }
    }
}

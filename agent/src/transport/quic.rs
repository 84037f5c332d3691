//! Artifact downloads over QUIC (quinn), resuming from the bytes already on disk. The hub's
//! self-signed certificate is pinned: its SHA-256 comes with the enrollment answer, and no
//! other certificate is accepted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::artifact_protocol::{
    ALPN, ArtifactHeader, ArtifactRequest, SERVER_NAME, split_line,
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
    endpoint: quinn::Endpoint,
    server: SocketAddr,
}

impl QuicArtifacts {
    /// `address` is the hub's QUIC `HOST:PORT`; `pin` the hex SHA-256 of its certificate.
    pub fn new(address: &str, pin: &str) -> Result<QuicArtifacts, QuicError> {
        let server: SocketAddr = address
            .parse()
            .map_err(|_| QuicError::Setup(format!("QUIC address {address:?} is not IP:PORT")))?;
        let sha256 =
            hex::decode(pin).map_err(|_| QuicError::Setup("certificate pin is not hex".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate { sha256, provider }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| QuicError::Setup(e.to_string()))?;
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| QuicError::Setup(e.to_string()))?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        Ok(QuicArtifacts { endpoint, server })
    }

    /// Downloads `sha256` into `part`, continuing from what `part` holds, never beyond
    /// `expected_size` bytes. The caller checks the hash.
    pub async fn download(
        &self,
        sha256: &str,
        part: &Path,
        expected_size: u64,
    ) -> Result<(), QuicError> {
        let unreachable = |cause: String| QuicError::Unreachable {
            address: self.server,
            cause,
        };
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
        let connecting = self
            .endpoint
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
        let mut request = serde_json::to_vec(&ArtifactRequest {
            sha256: sha256.to_owned(),
            offset: have,
        })
        .expect("requests serialize");
        request.push(b'\n');
        send.write_all(&request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        send.finish().map_err(|e| unreachable(e.to_string()))?;
        let mut pending = Vec::new();
        let mut header: Option<ArtifactHeader> = None;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let Some(read) = receive
                .read(&mut buffer)
                .await
                .map_err(|e| unreachable(format!("download interrupted: {e}")))?
            else {
                break;
            };
            let mut data = &buffer[..read];
            if header.is_none() {
                pending.extend_from_slice(data);
                match split_line::<ArtifactHeader>(&pending).map_err(QuicError::Refused)? {
                    None => continue,
                    Some((parsed, rest)) => {
                        if let Some(error) = &parsed.error {
                            return Err(QuicError::Refused(error.clone()));
                        }
                        if parsed.size > expected_size {
                            return Err(QuicError::TooLarge {
                                expected: expected_size,
                            });
                        }
                        let rest = rest.to_vec();
                        header = Some(parsed);
                        pending = rest;
                        data = &pending;
                    }
                }
            }
            have += data.len() as u64;
            if have > expected_size {
                file.set_len(0)?;
                return Err(QuicError::TooLarge {
                    expected: expected_size,
                });
            }
            file.write_all(data)?;
            if !pending.is_empty() {
                pending.clear();
            }
        }
        file.sync_all()?;
        connection.close(0u32.into(), b"done");
        if have < expected_size {
            return Err(unreachable(format!(
                "download ended at {have} of {expected_size} bytes"
            )));
        }
        Ok(())
    }
}

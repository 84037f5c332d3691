//! TLS for the one HTTP client: whom a client trusts as the server (the hub's CA, the CA
//! whose fingerprint an enrollment token carries, or the machine's root certificates) and
//! the certificate a device presents. Every config uses the `ring` provider explicitly, so
//! no process-wide default has to be installed.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} is not a PEM certificate: {cause}")]
    BadCertificate { what: String, cause: String },
    #[error("{what} is not a PEM private key: {cause}")]
    BadKey { what: String, cause: String },
    #[error("a CA fingerprint is 64 hex digits (SHA-256), not {0:?}")]
    BadFingerprint(String),
    #[error("cannot use the machine's root certificates: {0}")]
    SystemRoots(String),
    #[error("cannot build the TLS settings: {0}")]
    Config(String),
}

/// Whom a client trusts as the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// The machine's root certificates (webhook receivers, a hub behind a public certificate).
    SystemRoots,
    /// Certificates that chain to one of these CA certificates (DER).
    Ca(Vec<CertificateDer<'static>>),
    /// Certificates that chain to a CA certificate the server sends whose SHA-256 (hex) is
    /// this: the first contact of a device, which knows only its enrollment token's pin.
    CaFingerprint(String),
}

impl ServerTrust {
    /// Trust in the CA certificates of a PEM text (`what` names it in errors).
    pub fn ca_pem(pem: &str, what: &str) -> Result<ServerTrust, TlsError> {
        Ok(ServerTrust::Ca(certificates_from_pem(pem, what)?))
    }

    /// Trust pinned to a CA fingerprint (hex SHA-256 of its DER, any case, `:` allowed).
    pub fn ca_fingerprint(text: &str) -> Result<ServerTrust, TlsError> {
        let hex_digits: String = text.chars().filter(|c| *c != ':').collect();
        if hex_digits.len() != 64 || !hex_digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TlsError::BadFingerprint(text.to_owned()));
        }
        Ok(ServerTrust::CaFingerprint(hex_digits.to_ascii_lowercase()))
    }
}

/// The certificate chain and key a client presents (a device's identity).
#[derive(Debug)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// From a PEM certificate chain and the 32-byte seed of the ed25519 key it certifies
    /// (a device's own key: the hub certified it at enrollment).
    pub fn ed25519(chain_pem: &str, seed: &[u8; 32]) -> Result<ClientIdentity, TlsError> {
        // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed prefix, then the seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(seed);
        Ok(ClientIdentity {
            chain: certificates_from_pem(chain_pem, "the device certificate")?,
            key: PrivateKeyDer::Pkcs8(der.into()),
        })
    }

    /// From a PEM certificate chain and a PEM (PKCS#8) private key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<ClientIdentity, TlsError> {
        let chain = certificates_from_pem(chain_pem, "the client certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadKey {
                what: "the client key".into(),
                cause: e.to_string(),
            })?;
        Ok(ClientIdentity { chain, key })
    }
}

/// The hex SHA-256 of a certificate's DER: what enrollment tokens pin.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Every certificate in a PEM text, in order.
pub fn certificates_from_pem(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what: what.to_owned(),
            cause: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certificates)
}

/// The provider every Flotilla TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `trust`, presenting `identity` when given.
pub fn client_config(
    trust: &ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match trust {
        ServerTrust::SystemRoots => builder.with_root_certificates(system_roots()?),
        ServerTrust::Ca(certificates) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates {
                roots
                    .add(certificate.clone())
                    .map_err(|e| TlsError::BadCertificate {
                        what: "a trusted CA certificate".into(),
                        cause: e.to_string(),
                    })?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::CaFingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                fingerprint: fingerprint.clone(),
                provider,
            })),
    };
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The machine's root certificates, read once per process.
fn system_roots() -> Result<RootCertStore, TlsError> {
    static ROOTS: std::sync::OnceLock<Result<RootCertStore, String>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "none found ({} errors); install ca-certificates, or trust the hub's CA explicitly",
                    found.errors.len()
                ));
            }
            Ok(roots)
        })
        .clone()
        .map_err(TlsError::SystemRoots)
}

/// Verifies a server against the CA certificate in its own chain whose fingerprint is
/// pinned: the chain is checked with that CA as the only root, names and dates included.
/// An impostor would need a certificate signed by the pinned CA's key.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = intermediates
            .iter()
            .find(|c| certificate_fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate chain holds no CA with the pinned fingerprint {}: not the hub the enrollment token names",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_64_hex_digits() {
        let pin = "AB:".repeat(31) + "AB";
        assert_eq!(
            ServerTrust::ca_fingerprint(&pin).unwrap(),
            ServerTrust::CaFingerprint("ab".repeat(32))
        );
        for bad in ["", "abc", &"zz".repeat(32)] {
            assert!(matches!(
                ServerTrust::ca_fingerprint(bad),
                Err(TlsError::BadFingerprint(_))
            ));
        }
    }

    #[test]
    fn pem_without_a_certificate_is_refused_by_name() {
        let error = certificates_from_pem("hello", "ca.crt").unwrap_err();
        assert_eq!(error.to_string(), "ca.crt holds no PEM certificate");
    }
}

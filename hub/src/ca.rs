//! The hub's certificate authority: the identity of every TLS channel. It signs the hub's
//! own server certificate (API, MQTT, QUIC) and each device's client certificate, issued at
//! enrollment for the ed25519 key the device made (its enrollment proved possession) and
//! renewed before it expires. Enrollment tokens carry the CA's fingerprint, so a device's
//! first contact is already authenticated. The key lives in `keys/ca.key` (mode 0600).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SerialNumber, SignatureAlgorithm,
};

/// How long the CA certificate is valid: ten years; `flotilla-hub ca rotate` before then.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the hub's server certificate is valid. It is made anew (with a new key) at
/// every start: peers trust the CA, not this certificate.
const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The common name of the hub's own client identity (its MQTT client, say).
pub const HUB_IDENTITY: &str = "flotilla-hub";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error("cannot make a certificate: {0}")]
    Issue(String),
    #[error("the device key is not an ed25519 public key (32 bytes, hex)")]
    BadDeviceKey,
}

/// A device certificate as issued: the chain the device presents and the certificate's
/// serial number (hex), which a revocation list names.
#[derive(Debug, Clone)]
pub struct IssuedDeviceCertificate {
    pub chain_pem: String,
    pub serial: String,
}

/// A revoked certificate, for the revocation list: its serial (hex) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    pub serial: String,
    pub revoked_at: i64,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// The certificate, then the CA's: the chain a peer is shown.
    pub chain_pem: String,
    pub key_pem: String,
}

#[derive(Debug)]
pub struct HubCa {
    key: KeyPair,
    params: CertificateParams,
    certificate_pem: String,
    certificate_der: Vec<u8>,
}

fn unix_time(seconds: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| CaError::Issue(e.to_string()))
}

fn ca_params(now: i64) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Flotilla hub CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = unix_time(now - 3600)?;
    params.not_after = unix_time(now + CA_LIFETIME.as_secs() as i64)?;
    Ok(params)
}

impl HubCa {
    pub fn key_path(keys: &Path) -> PathBuf {
        keys.join("ca.key")
    }
    pub fn certificate_path(keys: &Path) -> PathBuf {
        keys.join("ca.crt")
    }

    /// The CA in `keys`, made now if the folder has none (a hub initialised before the CA
    /// existed gets one at its next start).
    pub fn load_or_create(keys: &Path, now: i64) -> Result<HubCa, CaError> {
        let (key_path, cert_path) = (Self::key_path(keys), Self::certificate_path(keys));
        if key_path.exists() && cert_path.exists() {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|e| CaError::Read {
                    path: path.to_owned(),
                    cause: e.to_string(),
                })
            };
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| CaError::Read {
                path: key_path.clone(),
                cause: e.to_string(),
            })?;
            let certificate_pem = read(&cert_path)?;
            let certificate_der =
                rustls::pki_types::pem::PemObject::from_pem_slice(certificate_pem.as_bytes())
                    .map(|der: rustls::pki_types::CertificateDer<'static>| der.to_vec())
                    .map_err(|e| CaError::Read {
                        path: cert_path.clone(),
                        cause: e.to_string(),
                    })?;
            // The issuing parameters: the same name and key as the stored certificate, so
            // what they sign chains to it.
            let params = ca_params(now)?;
            return Ok(HubCa {
                key,
                params,
                certificate_pem,
                certificate_der,
            });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        let params = ca_params(now)?;
        let certificate = params
            .self_signed(&key)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        crate::data_dir::write_secret(&key_path, &key.serialize_pem()).map_err(|e| {
            CaError::Write {
                path: key_path.clone(),
                cause: e.to_string(),
            }
        })?;
        std::fs::write(&cert_path, certificate.pem()).map_err(|e| CaError::Write {
            path: cert_path.clone(),
            cause: e.to_string(),
        })?;
        Ok(HubCa {
            key,
            params,
            certificate_pem: certificate.pem(),
            certificate_der: certificate.der().to_vec(),
        })
    }

    /// The CA certificate, PEM: what devices and the CLI trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The hex SHA-256 of the CA certificate: what enrollment tokens carry.
    pub fn fingerprint(&self) -> String {
        flotilla_api::tls::certificate_fingerprint(&self.certificate_der)
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(self.params.clone(), &self.key)
    }

    /// The hub's server certificate for `names` (DNS names or IP addresses), with a fresh key.
    pub fn issue_server(&self, names: &[String], now: i64) -> Result<IssuedIdentity, CaError> {
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| CaError::Issue(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, HUB_IDENTITY);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = unix_time(now - 3600)?;
        params.not_after = unix_time(now + SERVER_LIFETIME.as_secs() as i64)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Issue(e.to_string()))?;
        let certificate = params
            .signed_by(&key, &self.issuer())
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok(IssuedIdentity {
            chain_pem: format!("{}{}", certificate.pem(), self.certificate_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A device's client certificate: common name the device id, for the ed25519 key it
    /// enrolled with, valid `lifetime` from `now`, with a random serial number (each
    /// renewal is a certificate of its own on a revocation list). Only the certificate: the
    /// device holds the key.
    pub fn issue_device(
        &self,
        device_id: &str,
        public_key_hex: &str,
        now: i64,
        lifetime: Duration,
    ) -> Result<IssuedDeviceCertificate, CaError> {
        let public: [u8; 32] = hex::decode(public_key_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CaError::BadDeviceKey)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = unix_time(now - 300)?;
        params.not_after = unix_time(now + lifetime.as_secs() as i64)?;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let certificate = params
            .signed_by(&Ed25519PublicKey(public), &self.issuer())
            .map_err(|e| CaError::Issue(e.to_string()))?;
        Ok(IssuedDeviceCertificate {
            chain_pem: format!("{}{}", certificate.pem(), self.certificate_pem),
            serial: hex::encode(serial),
        })
    }

    /// The revocation list (PEM) naming `revoked`, signed by the CA, numbered `now`: what a
    /// broker such as Mosquitto (`crlfile`) checks client certificates against. Its next
    /// update is the CA's own expiry, not days away: the list is handed over as a file,
    /// and OpenSSL refuses every client once a list's next update has passed, so a
    /// short one would lock the whole fleet out of a broker nobody restarted.
    pub fn revocation_list(&self, revoked: &[RevokedSerial], now: i64) -> Result<String, CaError> {
        let revoked_certs = revoked
            .iter()
            .map(|entry| {
                let serial = hex::decode(&entry.serial)
                    .map_err(|_| CaError::Issue(format!("serial {:?} is not hex", entry.serial)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: unix_time(entry.revoked_at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = CertificateRevocationListParams {
            this_update: unix_time(now - 60)?,
            next_update: self.params.not_after.max(unix_time(now + 24 * 3600)?),
            crl_number: SerialNumber::from_slice(&now.max(1).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let list = params
            .signed_by(&self.issuer())
            .map_err(|e| CaError::Issue(e.to_string()))?;
        list.pem().map_err(|e| CaError::Issue(e.to_string()))
    }
}

/// 16 random bytes whose first is in 1..=127: the serial encodes as a positive integer of
/// exactly these bytes, so the hex recorded is the hex a revocation list names.
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| CaError::Issue(e.to_string()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial)
}

/// A device's enrolled ed25519 key, as the subject key of its certificate.
struct Ed25519PublicKey([u8; 32]);

impl PublicKeyData for Ed25519PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_keeps_issuing_into_the_same_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(dir.path(), 1_800_000_000).unwrap();
        let again = HubCa::load_or_create(dir.path(), 1_800_000_100).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let server = again
            .issue_server(&["localhost".into(), "127.0.0.1".into()], 1_800_000_100)
            .unwrap();
        let chain = flotilla_api::tls::certificates_from_pem(&server.chain_pem, "chain").unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].as_ref(), ca.certificate_der());
    }

    #[test]
    fn a_bad_device_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HubCa::load_or_create(dir.path(), 1_800_000_000).unwrap();
        assert!(matches!(
            ca.issue_device("dev-1", "abcd", 1_800_000_000, Duration::from_secs(60)),
            Err(CaError::BadDeviceKey)
        ));
    }
}

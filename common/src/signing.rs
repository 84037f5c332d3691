//! ed25519 keys and envelopes: signing documents and checking a threshold of signatures.

use ed25519_dalek::{Signature, Signer, Verifier};
use flotilla_proto::control::{ENROLL_PROOF_PAYLOAD_TYPE, EnrollRequest};
use flotilla_proto::trust::{Envelope, EnvelopeSignature, PublicKey};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "ed25519";

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SigningError {
    #[error("the operating system gave no randomness for a new key: {0}")]
    Randomness(String),
    #[error("key is not 32 hex-encoded bytes")]
    BadKeyEncoding,
    #[error("key algorithm {0:?} is not supported; Flotilla uses ed25519")]
    UnsupportedAlgorithm(String),
    #[error("key id {claimed} does not match its public key (which hashes to {actual})")]
    KeyIdMismatch { claimed: String, actual: String },
    #[error("payload type is {actual:?}, expected {expected:?}")]
    WrongPayloadType { expected: String, actual: String },
    #[error("only {valid} valid signatures from trusted keys, {threshold} needed")]
    Threshold { valid: usize, threshold: usize },
}

/// A private signing key. Its bytes never appear in `Debug` output.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SigningKey").field(&self.key_id()).finish()
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<SigningKey, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SigningError::Randomness(e.to_string()))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads a key from the hex of its 32 secret bytes (the form `to_hex` writes).
    pub fn from_hex(text: &str) -> Result<SigningKey, SigningError> {
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SigningError::BadKeyEncoding)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }

    /// The 32-byte secret seed (for the device's TLS identity, which certifies this key).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        let public = self.0.verifying_key().to_bytes();
        PublicKey {
            key_id: key_id(&public),
            algorithm: ALGORITHM.into(),
            public: hex::encode(public),
        }
    }

    pub fn key_id(&self) -> String {
        key_id(&self.0.verifying_key().to_bytes())
    }

    /// Signs raw bytes (used for messages that are not envelopes, e.g. telemetry frames).
    pub fn sign_bytes(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }
}

/// The id of a public key: hex SHA-256 of its 32 bytes.
pub fn key_id(public: &[u8; 32]) -> String {
    hex::encode(Sha256::digest(public))
}

/// DSSE's pre-authentication encoding: binds the payload type into what is signed.
pub fn pre_authentication_encoding(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs `payload` (JSON text) as a document of `payload_type` with every key given.
pub fn sign_envelope(payload_type: &str, payload: String, keys: &[&SigningKey]) -> Envelope {
    let message = pre_authentication_encoding(payload_type, payload.as_bytes());
    let signatures = keys
        .iter()
        .map(|k| EnvelopeSignature {
            key_id: k.key_id(),
            sig: k.sign_bytes(&message),
        })
        .collect();
    Envelope {
        payload_type: payload_type.to_owned(),
        payload,
        signatures,
    }
}

/// Decodes and checks a public key: algorithm, encoding, and that its id is its hash.
pub fn verifying_key(key: &PublicKey) -> Result<ed25519_dalek::VerifyingKey, SigningError> {
    if key.algorithm != ALGORITHM {
        return Err(SigningError::UnsupportedAlgorithm(key.algorithm.clone()));
    }
    let bytes: [u8; 32] = hex::decode(&key.public)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SigningError::BadKeyEncoding)?;
    let actual = key_id(&bytes);
    if actual != key.key_id {
        return Err(SigningError::KeyIdMismatch {
            claimed: key.key_id.clone(),
            actual,
        });
    }
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::BadKeyEncoding)
}

/// Verifies a detached signature (hex) over `message` with `key`.
pub fn verify_bytes(key: &PublicKey, message: &[u8], signature_hex: &str) -> bool {
    let Ok(verifying) = verifying_key(key) else {
        return false;
    };
    let Some(bytes) = hex::decode(signature_hex)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    verifying
        .verify(message, &Signature::from_bytes(&bytes))
        .is_ok()
}

/// Signs an enrollment request with the key it enrolls (its proof of possession).
pub fn prove_enrollment(request: &mut EnrollRequest, key: &SigningKey) {
    let message = pre_authentication_encoding(
        ENROLL_PROOF_PAYLOAD_TYPE,
        request.proof_payload().as_bytes(),
    );
    request.proof = key.sign_bytes(&message);
}

/// Whether an enrollment request is signed by the key it enrolls.
pub fn enrollment_is_proven(request: &EnrollRequest) -> bool {
    let message = pre_authentication_encoding(
        ENROLL_PROOF_PAYLOAD_TYPE,
        request.proof_payload().as_bytes(),
    );
    verify_bytes(&request.public_key, &message, &request.proof)
}

/// Checks that at least `threshold` distinct keys among `trusted` signed the envelope as a
/// document of `payload_type`. Signatures by unknown keys or that do not verify are ignored
/// (they do not count); a key that signs twice counts once.
pub fn verify_envelope(
    envelope: &Envelope,
    payload_type: &str,
    trusted: &[PublicKey],
    threshold: u32,
) -> Result<(), SigningError> {
    if envelope.payload_type != payload_type {
        return Err(SigningError::WrongPayloadType {
            expected: payload_type.to_owned(),
            actual: envelope.payload_type.clone(),
        });
    }
    let message = pre_authentication_encoding(payload_type, envelope.payload.as_bytes());
    let mut counted: Vec<&str> = Vec::new();
    for signature in &envelope.signatures {
        if counted.contains(&signature.key_id.as_str()) {
            continue;
        }
        let Some(key) = trusted.iter().find(|k| k.key_id == signature.key_id) else {
            continue;
        };
        if verify_bytes(key, &message, &signature.sig) {
            counted.push(&signature.key_id);
        }
    }
    let threshold = threshold.max(1) as usize;
    if counted.len() < threshold {
        return Err(SigningError::Threshold {
            valid: counted.len(),
            threshold,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_envelope_verifies_and_any_change_breaks_it() {
        let key = SigningKey::generate().unwrap();
        let envelope = sign_envelope("t", r#"{"a":1}"#.into(), &[&key]);
        let trusted = [key.public_key()];
        verify_envelope(&envelope, "t", &trusted, 1).unwrap();

        let mut tampered = envelope.clone();
        tampered.payload = r#"{"a":2}"#.into();
        assert_eq!(
            verify_envelope(&tampered, "t", &trusted, 1),
            Err(SigningError::Threshold {
                valid: 0,
                threshold: 1
            })
        );
        // The same signature cannot be passed off as another document type.
        let mut retyped = envelope.clone();
        retyped.payload_type = "u".into();
        assert!(verify_envelope(&retyped, "u", &trusted, 1).is_err());
        assert!(matches!(
            verify_envelope(&envelope, "u", &trusted, 1),
            Err(SigningError::WrongPayloadType { .. })
        ));
    }

    #[test]
    fn an_enrollment_is_proven_only_by_its_own_key_and_unchanged_claims() {
        let key = SigningKey::generate().unwrap();
        let mut request = EnrollRequest {
            token: "flo_enroll_x".into(),
            public_key: key.public_key(),
            hardware: [("cpu".to_owned(), "x86_64".to_owned())].into(),
            agent_version: "1".into(),
            proof: String::new(),
        };
        assert!(!enrollment_is_proven(&request));
        prove_enrollment(&mut request, &key);
        assert!(enrollment_is_proven(&request));
        // Another key cannot prove this public key.
        let mut forged = request.clone();
        prove_enrollment(&mut forged, &SigningKey::generate().unwrap());
        assert!(!enrollment_is_proven(&forged));
        // Every claim is bound: a new token or hardware breaks the proof.
        let changes: [fn(&mut EnrollRequest); 3] = [
            |r| r.token = "flo_enroll_y".into(),
            |r| {
                r.hardware.insert("cpu".into(), "arm".into());
            },
            |r| r.agent_version = "2".into(),
        ];
        for change in changes {
            let mut changed = request.clone();
            change(&mut changed);
            assert!(!enrollment_is_proven(&changed));
        }
    }

    #[test]
    fn thresholds_count_distinct_trusted_keys() {
        let (a, b, stranger) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let trusted = [a.public_key(), b.public_key()];
        let by_a_twice = sign_envelope("t", "{}".into(), &[&a, &a]);
        assert_eq!(
            verify_envelope(&by_a_twice, "t", &trusted, 2),
            Err(SigningError::Threshold {
                valid: 1,
                threshold: 2
            })
        );
        let by_a_and_stranger = sign_envelope("t", "{}".into(), &[&a, &stranger]);
        assert!(verify_envelope(&by_a_and_stranger, "t", &trusted, 2).is_err());
        let by_both = sign_envelope("t", "{}".into(), &[&b, &a]);
        verify_envelope(&by_both, "t", &trusted, 2).unwrap();
    }

    #[test]
    fn keys_round_trip_and_ids_are_checked() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(
            !format!("{key:?}").contains(&key.to_hex()),
            "Debug must not print the secret"
        );
        let mut forged = key.public_key();
        forged.key_id = SigningKey::generate().unwrap().key_id();
        assert!(matches!(
            verifying_key(&forged),
            Err(SigningError::KeyIdMismatch { .. })
        ));
        assert_eq!(
            SigningKey::from_hex("zz").unwrap_err(),
            SigningError::BadKeyEncoding
        );
    }
}

//! Whom the agent trusts as its hub over TLS. Before enrollment it knows only the CA
//! fingerprint its enrollment token carries (`SECRET.FINGERPRINT`) and accepts a hub whose
//! chain holds that CA; the enrollment answer hands it the CA certificate (checked against
//! the same fingerprint) and its own certificate, which it trusts and presents from then on.

use std::sync::Arc;

use flotilla_api::tls::{ClientIdentity, ServerTrust, TlsError, certificate_fingerprint};
use flotilla_common::signing::SigningKey;
use flotilla_proto::control::EnrollResponse;

/// The CA fingerprint an enrollment token carries after its last `.`, when it carries one.
pub fn enrollment_pin(token: &str) -> Option<String> {
    let (_, pin) = token.rsplit_once('.')?;
    match ServerTrust::ca_fingerprint(pin) {
        Ok(ServerTrust::CaFingerprint(pin)) => Some(pin),
        _ => None,
    }
}

/// TLS for enrolling: pinned to the token's CA fingerprint (without one, the machine's
/// roots: a hub behind a publicly trusted certificate).
pub fn for_enrollment(token: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let trust = match enrollment_pin(token) {
        Some(pin) => ServerTrust::CaFingerprint(pin),
        None => ServerTrust::SystemRoots,
    };
    flotilla_api::tls::client_config(&trust, None)
}

/// Refuses an enrollment answer whose CA is not the one the token pinned.
pub fn check_enrolled_ca(token: &str, enrollment: &EnrollResponse) -> Result<(), String> {
    let Some(pin) = enrollment_pin(token) else {
        return Ok(());
    };
    let ca = flotilla_api::tls::certificates_from_pem(&enrollment.ca_certificate, "the hub's CA")
        .map_err(|e| e.to_string())?;
    let actual = certificate_fingerprint(&ca[0]);
    if actual != pin {
        return Err(format!(
            "the hub answered with CA {actual}, but the enrollment token pins {pin}: not the hub the token is for"
        ));
    }
    Ok(())
}

/// Renew when fewer than this many seconds of the certificate are left (a third of the
/// default 90 days), or when it has lapsed.
pub const RENEW_WITHIN_SECONDS: i64 = 30 * 24 * 3600;

/// Whether a certificate expiring at `expires` should be renewed at `now`.
pub fn renewal_due(expires: i64, now: i64) -> bool {
    expires - now < RENEW_WITHIN_SECONDS
}

/// TLS for renewing: the hub's CA, no certificate presented (the current one may have
/// lapsed; the renewal's signature is the proof).
pub fn for_renewal(enrollment: &EnrollResponse) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let trust = ServerTrust::ca_pem(&enrollment.ca_certificate, "the hub's CA certificate")?;
    flotilla_api::tls::client_config(&trust, None)
}

/// The device's certificate and key, as presented on every TLS channel.
pub fn device_identity(
    enrollment: &EnrollResponse,
    key: &SigningKey,
) -> Result<ClientIdentity, TlsError> {
    ClientIdentity::ed25519(&enrollment.certificate, &key.seed())
}

/// TLS once enrolled: the hub's CA as the only root, the device certificate presented.
pub fn for_enrolled(
    enrollment: &EnrollResponse,
    key: &SigningKey,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let trust = ServerTrust::ca_pem(&enrollment.ca_certificate, "the hub's CA certificate")?;
    flotilla_api::tls::client_config(&trust, Some(&device_identity(enrollment, key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_in_the_last_third_and_after_expiry() {
        let now = 1_800_000_000;
        assert!(!renewal_due(now + 90 * 24 * 3600, now));
        assert!(!renewal_due(now + RENEW_WITHIN_SECONDS, now));
        assert!(renewal_due(now + RENEW_WITHIN_SECONDS - 1, now));
        assert!(renewal_due(now - 5, now));
    }

    #[test]
    fn a_token_carries_its_pin_after_the_last_dot() {
        let pin = "ab".repeat(32);
        assert_eq!(
            enrollment_pin(&format!("flo_enroll_x.{pin}")),
            Some(pin.clone())
        );
        assert_eq!(enrollment_pin("flo_enroll_x"), None);
        assert_eq!(enrollment_pin("flo_enroll_x.short"), None);
    }
}

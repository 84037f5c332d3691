//! Devices: enrollment with one-time tokens, label selectors, and each device's signed
//! desired state. The decisions here are pure functions of their inputs; `Fleet` adds the
//! store and the signing key around them.

use flotilla_api::LabelSelector;
use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_common::signing::{
    enrollment_is_proven, sign_envelope, verify_envelope, verifying_key,
};
use flotilla_proto::control::{
    CertificateRenewal, DESIRED_PAYLOAD_TYPE, DesiredModel, DesiredState, EnrollRequest,
    EnrollResponse, RENEWAL_PAYLOAD_TYPE, RenewedCertificate,
};
use flotilla_proto::trust::Envelope;

use crate::ca::{HubCa, RevokedSerial};
use crate::data_dir::token_hash;
use crate::registry::{Registry, RegistryError};
use crate::store::{
    CertificateRecord, DesiredRecord, DeviceRecord, EnrollmentCheck, RegistryStore, StoreError,
};

/// Desired states are valid for 30 days; the hub republishes before then.
pub const DESIRED_LIFETIME_SECONDS: i64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("enrollment token is not known to this hub")]
    UnknownToken,
    #[error(
        "enrollment token was already used (every use of a claim token is spent); ask the operator for a new one (flotilla enroll-token create)"
    )]
    TokenUsed,
    #[error(
        "enrollment token was revoked; ask the operator for a new one (flotilla enroll-token create)"
    )]
    TokenRevoked,
    #[error(
        "enrollment token has expired; ask the operator for a new one (flotilla enroll-token create)"
    )]
    TokenExpired,
    #[error("device public key is not valid: {0}")]
    BadKey(String),
    #[error(
        "the enrollment is not signed by the key it enrolls: the device must prove it holds the private key (an agent does this itself; a hand-made request needs a proof)"
    )]
    NoProofOfPossession,
    #[error("no enrolled device matches selector {0:?}")]
    NoDevices(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the hub has no root metadata")]
    NoRoot,
    #[error("the hub has no certificate authority to issue device certificates")]
    NoCa,
    #[error("device {0} is not enrolled")]
    UnknownDevice(String),
    #[error(
        "device {0} was revoked (decommissioned); an operator can remove it (flotilla device remove) before the key enrolls again"
    )]
    DeviceRevoked(String),
    #[error("the renewal is not signed by the key device {0} enrolled with")]
    RenewalNotProven(String),
    #[error(
        "the renewal was made {skew} s from the hub's clock (at most {RENEWAL_SKEW_SECONDS} s): set the device's clock, or replay nothing"
    )]
    RenewalStale { skew: i64 },
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
}

/// How far a renewal's time may be from the hub's clock.
pub const RENEWAL_SKEW_SECONDS: i64 = 300;

/// The fingerprint of the first certificate of a PEM chain: what the API's listener reports
/// for a client that presents it.
fn certificate_fingerprint_of(chain_pem: &str) -> Result<String, FleetError> {
    let chain = flotilla_api::tls::certificates_from_pem(chain_pem, "an issued certificate")
        .map_err(|e| FleetError::Ca(crate::ca::CaError::Issue(e.to_string())))?;
    Ok(flotilla_api::tls::certificate_fingerprint(&chain[0]))
}

/// A device's id, derived from its key: re-enrolling the same key gives the same id.
pub fn device_id_for(key_id: &str) -> String {
    format!("dev-{}", &key_id[..key_id.len().min(16)])
}

/// The next desired model list: `new` replaces any entry for the same model. It is marked a
/// rollback when it is older than the model's newest registered version: a device trusts
/// the highest version it ever installed, which may be above what is desired now (after a
/// move from 4 back to 1, version 3 is still older than the 4 it trusts), and the flag in a
/// desired state the hub signs is what lets the device go below that. Only the hub's
/// signing key can set it, so it gives an attacker nothing.
pub fn next_desired_models(
    current: &[DesiredModel],
    mut new: DesiredModel,
    newest_registered: u64,
) -> Vec<DesiredModel> {
    let mut models: Vec<DesiredModel> = current
        .iter()
        .filter(|m| m.name != new.name)
        .cloned()
        .collect();
    new.rollback = new.version < newest_registered
        || current
            .iter()
            .any(|m| m.name == new.name && new.version < m.version);
    models.push(new);
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models
}

/// A desired state to publish: the topic's device and the signed envelope.
#[derive(Debug, Clone)]
pub struct Publication {
    pub device_id: String,
    pub envelope: String,
}

/// Why a download's client certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum CertificateRefusal {
    #[error("downloads need the device certificate this hub issued at enrollment")]
    Missing,
    #[error("this client certificate was not issued to a device of this hub")]
    NotIssued,
    #[error("the certificate of device {0} was revoked")]
    Revoked(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The enrolled device a connection's client certificate (its hex SHA-256) belongs to:
/// presented, issued by this hub, not revoked. The TLS handshake checked the chain and the
/// dates; HTTPS ranges and QUIC both ask this.
pub fn certificate_holder(
    store: &dyn RegistryStore,
    sha256: Option<&str>,
) -> Result<String, CertificateRefusal> {
    let sha256 = sha256.ok_or(CertificateRefusal::Missing)?;
    let certificate = store
        .certificate(sha256)?
        .ok_or(CertificateRefusal::NotIssued)?;
    if certificate.revoked_at.is_some() {
        return Err(CertificateRefusal::Revoked(certificate.device_id));
    }
    Ok(certificate.device_id)
}

#[derive(Debug)]
pub struct Fleet {
    registry: Arc<Registry>,
    /// Broker address devices connect to, `HOST:PORT`.
    pub mqtt_address: String,
    /// Whether devices speak MQTT over TLS there, presenting their certificates.
    pub mqtt_tls: bool,
    /// Base URL devices download artifacts from.
    pub artifacts_http: String,
    /// QUIC artifact endpoint and the certificate pin, when QUIC is on.
    pub artifacts_quic: Option<(String, String)>,
    /// The CA that issues device certificates at enrollment, and their lifetime.
    ca: Option<(Arc<HubCa>, std::time::Duration)>,
    /// Where the revocation list is kept up to date.
    revocation_list_files: Vec<std::path::PathBuf>,
}

impl Fleet {
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn new(registry: Arc<Registry>, mqtt_address: String, artifacts_http: String) -> Fleet {
        Fleet {
            registry,
            mqtt_address,
            mqtt_tls: false,
            artifacts_http,
            artifacts_quic: None,
            ca: None,
            revocation_list_files: Vec::new(),
        }
    }

    /// Issues device certificates from `ca`, valid `lifetime`, at enrollment.
    pub fn with_ca(mut self, ca: Arc<HubCa>, lifetime: std::time::Duration) -> Fleet {
        self.ca = Some((ca, lifetime));
        self
    }

    /// The CA's fingerprint, which enrollment tokens carry.
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.ca.as_ref().map(|(ca, _)| ca.fingerprint())
    }

    /// Tells devices at enrollment that the broker speaks MQTT over TLS.
    pub fn with_mqtt_tls(mut self, tls: bool) -> Fleet {
        self.mqtt_tls = tls;
        self
    }

    /// Tells devices at enrollment to fetch over QUIC at `address`, pinning `certificate_sha256`.
    pub fn with_quic(mut self, address: String, certificate_sha256: String) -> Fleet {
        self.artifacts_quic = Some((address, certificate_sha256));
        self
    }

    fn store(&self) -> &Arc<dyn RegistryStore> {
        self.registry.store()
    }

    pub fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, FleetError> {
        verifying_key(&request.public_key).map_err(|e| FleetError::BadKey(e.to_string()))?;
        // Checked before the token is spent: a request without the private key changes
        // nothing, not even the token.
        if !enrollment_is_proven(request) {
            return Err(FleetError::NoProofOfPossession);
        }
        let now = self.registry.now();
        let device_id = device_id_for(&request.public_key.key_id);
        if self
            .store()
            .device(&device_id)?
            .is_some_and(|d| d.revoked_at.is_some())
        {
            return Err(FleetError::DeviceRevoked(device_id));
        }
        let labels = match self.store().consume_enrollment_token(
            &token_hash(&request.token),
            &device_id,
            now,
        )? {
            EnrollmentCheck::Accepted(labels) => labels,
            EnrollmentCheck::Unknown => return Err(FleetError::UnknownToken),
            EnrollmentCheck::AlreadyUsed => return Err(FleetError::TokenUsed),
            EnrollmentCheck::Expired => return Err(FleetError::TokenExpired),
            EnrollmentCheck::Revoked => return Err(FleetError::TokenRevoked),
        };
        let existing = self.store().device(&device_id)?;
        let device = DeviceRecord {
            id: device_id.clone(),
            public_key: request.public_key.clone(),
            labels: labels.clone(),
            hardware: request.hardware.clone(),
            agent_version: request.agent_version.clone(),
            enrolled_at: existing.as_ref().map(|d| d.enrolled_at).unwrap_or(now),
            last_seen: Some(now),
            online: false,
            serving: existing
                .as_ref()
                .map(|d| d.serving.clone())
                .unwrap_or_default(),
            last_outcomes: existing
                .as_ref()
                .map(|d| d.last_outcomes.clone())
                .unwrap_or_default(),
            reported_sequence: existing.as_ref().map(|d| d.reported_sequence).unwrap_or(0),
            revoked_at: None,
        };
        let ca = &self.ca.as_ref().ok_or(FleetError::NoCa)?.0;
        self.store().upsert_device(&device)?;
        let (certificate, certificate_expires) =
            self.issue_certificate(&device_id, &request.public_key.public, now)?;
        self.store().audit(
            now,
            &device_id,
            "device.enroll",
            &format!("labels {labels:?}"),
        )?;
        let root = self.store().latest_root()?.ok_or(FleetError::NoRoot)?;
        let root: Envelope =
            serde_json::from_str(&root).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(EnrollResponse {
            device_id,
            root,
            mqtt: self.mqtt_address.clone(),
            mqtt_tls: self.mqtt_tls,
            artifacts_http: self.artifacts_http.clone(),
            artifacts_quic: self.artifacts_quic.as_ref().map(|(a, _)| a.clone()),
            quic_certificate_sha256: self.artifacts_quic.as_ref().map(|(_, p)| p.clone()),
            labels,
            ca_certificate: ca.certificate_pem().to_owned(),
            certificate,
            certificate_expires,
        })
    }

    /// A new client certificate for a device that proves, by a renewal signed with its
    /// enrolled key, that it is that device. Recorded and audited.
    pub fn renew_certificate(
        &self,
        device_id: &str,
        envelope: &Envelope,
    ) -> Result<RenewedCertificate, FleetError> {
        let device = self
            .store()
            .device(device_id)?
            .ok_or_else(|| FleetError::UnknownDevice(device_id.to_owned()))?;
        if device.revoked_at.is_some() {
            return Err(FleetError::DeviceRevoked(device_id.to_owned()));
        }
        verify_envelope(
            envelope,
            RENEWAL_PAYLOAD_TYPE,
            std::slice::from_ref(&device.public_key),
            1,
        )
        .map_err(|_| FleetError::RenewalNotProven(device_id.to_owned()))?;
        let renewal: CertificateRenewal = serde_json::from_str(&envelope.payload)
            .map_err(|_| FleetError::RenewalNotProven(device_id.to_owned()))?;
        if renewal.device_id != device_id {
            return Err(FleetError::RenewalNotProven(device_id.to_owned()));
        }
        let now = self.registry.now();
        let skew = (renewal.at - now).abs();
        if skew > RENEWAL_SKEW_SECONDS {
            return Err(FleetError::RenewalStale { skew });
        }
        let (certificate, certificate_expires) =
            self.issue_certificate(device_id, &device.public_key.public, now)?;
        self.store().audit(
            now,
            device_id,
            "device.certificate_renewed",
            &format!("expires {certificate_expires}"),
        )?;
        Ok(RenewedCertificate {
            certificate,
            certificate_expires,
        })
    }

    /// A client certificate for the device's enrolled key, recorded (fingerprint and
    /// serial): the chain and when it expires.
    fn issue_certificate(
        &self,
        device_id: &str,
        public_key_hex: &str,
        now: i64,
    ) -> Result<(String, i64), FleetError> {
        let (ca, lifetime) = self.ca.as_ref().ok_or(FleetError::NoCa)?;
        let issued = ca.issue_device(device_id, public_key_hex, now, *lifetime)?;
        let expires = now + lifetime.as_secs() as i64;
        self.store().record_certificate(&CertificateRecord {
            sha256: certificate_fingerprint_of(&issued.chain_pem)?,
            device_id: device_id.to_owned(),
            serial: Some(issued.serial),
            issued_at: now,
            expires,
            revoked_at: None,
        })?;
        Ok((issued.chain_pem, expires))
    }

    /// Also writes the CA's revocation list (PEM) to `files` at start and after every
    /// revocation: for an external broker's `crlfile` (Mosquitto reads it when it starts).
    pub fn with_revocation_list(mut self, files: Vec<std::path::PathBuf>) -> Fleet {
        self.revocation_list_files = files;
        self
    }

    /// Writes the revocation list, naming every revoked certificate not yet expired, to
    /// each file of `with_revocation_list` (through a temporary file and a rename, so a
    /// broker never reads half a list). A failure is logged: the revocation itself is
    /// recorded either way, and the next revocation or start writes the list again.
    pub fn write_revocation_list(&self) {
        let Some((ca, _)) = &self.ca else { return };
        if self.revocation_list_files.is_empty() {
            return;
        }
        let now = self.registry.now();
        let written = self
            .store()
            .revoked_certificates(now)
            .map_err(|e| e.to_string())
            .and_then(|revoked| {
                let revoked: Vec<RevokedSerial> = revoked
                    .into_iter()
                    .filter_map(|c| {
                        Some(RevokedSerial {
                            serial: c.serial?,
                            revoked_at: c.revoked_at?,
                        })
                    })
                    .collect();
                let pem = ca
                    .revocation_list(&revoked, now)
                    .map_err(|e| e.to_string())?;
                Ok((revoked.len(), pem))
            });
        let (count, pem) = match written {
            Ok(list) => list,
            Err(error) => {
                tracing::error!(%error, "cannot make the certificate revocation list");
                return;
            }
        };
        for file in &self.revocation_list_files {
            match crate::data_dir::write_replacing(file, pem.as_bytes()) {
                Ok(()) => {
                    tracing::info!(file = %file.display(), revoked = count, "certificate revocation list written")
                }
                Err(error) => {
                    tracing::error!(file = %file.display(), %error, "cannot write the certificate revocation list")
                }
            }
        }
    }

    /// Decommissions a device: its certificates are revoked (downloads, renewals refused),
    /// its messages and telemetry refused from now on; its record and history stay.
    pub fn revoke_device(&self, device_id: &str, actor: &str) -> Result<(), FleetError> {
        let now = self.registry.now();
        if !self.store().revoke_device(device_id, now)? {
            return Err(FleetError::UnknownDevice(device_id.to_owned()));
        }
        self.store().audit(now, actor, "device.revoke", device_id)?;
        self.write_revocation_list();
        Ok(())
    }

    /// Forgets a device (its audit trail stays; its certificates stay revoked).
    pub fn remove_device(&self, device_id: &str, actor: &str) -> Result<(), FleetError> {
        if !self.store().remove_device(device_id)? {
            return Err(FleetError::UnknownDevice(device_id.to_owned()));
        }
        self.store()
            .audit(self.registry.now(), actor, "device.remove", device_id)?;
        self.write_revocation_list();
        Ok(())
    }

    /// Marks offline every online device the hub has heard nothing from for `silence`: a
    /// device that died without its last will reaching the hub (or whose status was
    /// replayed) does not stay online. Each is audited; their ids.
    pub fn mark_silent_devices_offline(
        &self,
        silence: std::time::Duration,
    ) -> Result<Vec<String>, FleetError> {
        let now = self.registry.now();
        let ids = self
            .store()
            .mark_silent_devices_offline(now - silence.as_secs() as i64)?;
        for id in &ids {
            self.store().audit(
                now,
                "hub",
                "device.offline",
                &format!("{id}: nothing heard for {} s", silence.as_secs()),
            )?;
        }
        Ok(ids)
    }

    /// Sets `model` at `version_or_alias` as desired on every device matching `selector`;
    /// returns the signed desired states to publish.
    pub fn deploy(
        &self,
        model: &str,
        version_or_alias: &str,
        selector: &LabelSelector,
        actor: &str,
    ) -> Result<(u64, Vec<Publication>), FleetError> {
        let record = self.registry.resolve(model, version_or_alias)?;
        if record.retired.is_some() {
            return Err(RegistryError::Retired {
                model: model.to_owned(),
                version: record.version,
            }
            .into());
        }
        let manifest: Envelope = serde_json::from_str(&record.manifest)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let devices: Vec<DeviceRecord> = self
            .store()
            .devices()?
            .into_iter()
            .filter(|d| selector.matches(&d.labels))
            .collect();
        if devices.is_empty() {
            return Err(FleetError::NoDevices(selector.to_string()));
        }
        let newest = self.newest_version(model)?;
        let now = self.registry.now();
        let mut publications = Vec::with_capacity(devices.len());
        for device in devices {
            let entry = DesiredModel {
                name: model.to_owned(),
                version: record.version,
                manifest: manifest.clone(),
                rollback: false,
            };
            publications.push(self.update_desired(&device.id, now, |current| {
                next_desired_models(current, entry, newest)
            })?);
        }
        self.store().audit(
            now,
            actor,
            "deploy",
            &format!(
                "{model} version {} to {} devices ({selector})",
                record.version,
                publications.len()
            ),
        )?;
        Ok((record.version, publications))
    }

    /// Sets `model` at `version` as desired on exactly these devices (a rollout's wave).
    pub fn deploy_to(
        &self,
        model: &str,
        version: u64,
        device_ids: &[String],
    ) -> Result<Vec<Publication>, FleetError> {
        let record = self.registry.resolve(model, &version.to_string())?;
        let manifest: Envelope = serde_json::from_str(&record.manifest)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let newest = self.newest_version(model)?;
        let now = self.registry.now();
        let mut publications = Vec::with_capacity(device_ids.len());
        for device_id in device_ids {
            let entry = DesiredModel {
                name: model.to_owned(),
                version,
                manifest: manifest.clone(),
                rollback: false,
            };
            publications.push(self.update_desired(device_id, now, |current| {
                next_desired_models(current, entry, newest)
            })?);
        }
        Ok(publications)
    }

    /// Gives each device its previous version of `model` back as desired (a signed
    /// rollback), or takes the model out of its desired state when it had none before.
    pub fn restore_previous(
        &self,
        model: &str,
        previous: &[(String, Option<u64>)],
    ) -> Result<Vec<Publication>, FleetError> {
        let newest = self.newest_version(model)?;
        let now = self.registry.now();
        let mut manifests: BTreeMap<u64, Envelope> = BTreeMap::new();
        let mut publications = Vec::with_capacity(previous.len());
        for (device_id, version) in previous {
            let publication = match version {
                Some(version) => {
                    if !manifests.contains_key(version) {
                        let record = self.registry.resolve(model, &version.to_string())?;
                        manifests.insert(
                            *version,
                            serde_json::from_str(&record.manifest)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        );
                    }
                    let entry = DesiredModel {
                        name: model.to_owned(),
                        version: *version,
                        manifest: manifests[version].clone(),
                        rollback: false,
                    };
                    self.update_desired(device_id, now, |current| {
                        next_desired_models(current, entry, newest)
                    })?
                }
                None => self.update_desired(device_id, now, |current| {
                    current
                        .iter()
                        .filter(|m| m.name != model)
                        .cloned()
                        .collect()
                })?,
            };
            publications.push(publication);
        }
        Ok(publications)
    }

    /// The highest version of `model` ever registered (retired ones count: a device may
    /// have installed one before it was retired).
    fn newest_version(&self, model: &str) -> Result<u64, FleetError> {
        Ok(self
            .store()
            .versions(model)?
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0))
    }

    /// The version of `model` a device's desired state names now.
    pub fn desired_version(&self, device_id: &str, model: &str) -> Result<Option<u64>, FleetError> {
        let Some(current) = self.store().desired(device_id)? else {
            return Ok(None);
        };
        let models: Vec<DesiredModel> = serde_json::from_str(&current.models)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(models.iter().find(|m| m.name == model).map(|m| m.version))
    }

    fn update_desired(
        &self,
        device_id: &str,
        now: i64,
        change: impl FnOnce(&[DesiredModel]) -> Vec<DesiredModel>,
    ) -> Result<Publication, FleetError> {
        let current = self.store().desired(device_id)?;
        let current_models: Vec<DesiredModel> = match &current {
            Some(record) => serde_json::from_str(&record.models)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            None => Vec::new(),
        };
        let models = change(&current_models);
        let sequence = current.map(|c| c.sequence).unwrap_or(0) + 1;
        self.set_desired(device_id.to_owned(), sequence, models, now)
    }

    /// After a key rotation: every device's desired state again, with the re-signed
    /// manifests and the new signing key (next sequence), to publish.
    pub fn resign_all_desired(&self) -> Result<Vec<Publication>, FleetError> {
        let now = self.registry.now();
        let mut publications = Vec::new();
        for device in self.store().devices()? {
            let Some(current) = self.store().desired(&device.id)? else {
                continue;
            };
            let models: Vec<DesiredModel> = serde_json::from_str(&current.models)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut refreshed = Vec::with_capacity(models.len());
            for mut entry in models {
                if let Some(record) = self.store().version(&entry.name, entry.version)? {
                    entry.manifest = serde_json::from_str(&record.manifest)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                }
                refreshed.push(entry);
            }
            publications.push(self.set_desired(device.id, current.sequence + 1, refreshed, now)?);
        }
        Ok(publications)
    }

    /// Signs and stores a device's desired state; returns it for publishing.
    fn set_desired(
        &self,
        device_id: String,
        sequence: u64,
        models: Vec<DesiredModel>,
        now: i64,
    ) -> Result<Publication, FleetError> {
        let models_json = serde_json::to_string(&models).expect("models serialize");
        let signer = self.registry.signer();
        let state = DesiredState {
            device_id: device_id.clone(),
            root_version: signer.root_version,
            sequence,
            issued: now,
            expires: now + DESIRED_LIFETIME_SECONDS,
            models,
        };
        let envelope = sign_envelope(
            DESIRED_PAYLOAD_TYPE,
            serde_json::to_string(&state).expect("desired state serializes"),
            &[&signer.key],
        );
        let envelope = serde_json::to_string(&envelope).expect("envelope serializes");
        self.store().set_desired(
            &device_id,
            &DesiredRecord {
                sequence,
                models: models_json,
                envelope: envelope.clone(),
            },
        )?;
        Ok(Publication {
            device_id,
            envelope,
        })
    }

    /// Every stored desired state, for republishing after the hub (re)connects to the broker.
    pub fn all_desired(&self) -> Result<Vec<Publication>, FleetError> {
        let mut publications = Vec::new();
        for device in self.store().devices()? {
            if let Some(desired) = self.store().desired(&device.id)? {
                publications.push(Publication {
                    device_id: device.id,
                    envelope: desired.envelope,
                });
            }
        }
        Ok(publications)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: u64) -> DesiredModel {
        let manifest = Envelope {
            payload_type: String::new(),
            payload: String::new(),
            signatures: vec![],
        };
        DesiredModel {
            name: name.into(),
            version,
            manifest,
            rollback: false,
        }
    }

    #[test]
    fn a_new_entry_replaces_its_model_and_going_back_is_a_rollback() {
        let current = vec![entry("a", 3), entry("b", 1)];
        let next = next_desired_models(&current, entry("a", 4), 4);
        assert_eq!(
            next.iter()
                .map(|m| (m.name.as_str(), m.version, m.rollback))
                .collect::<Vec<_>>(),
            [("a", 4, false), ("b", 1, false)]
        );
        let back = next_desired_models(&next, entry("a", 1), 4);
        assert_eq!((back[0].version, back[0].rollback), (1, true));
        // Forward from 1 to 3 is still below the 4 the device trusts: a rollback too.
        let forward = next_desired_models(&back, entry("a", 3), 4);
        assert_eq!((forward[0].version, forward[0].rollback), (3, true));
        let newest = next_desired_models(&forward, entry("a", 4), 4);
        assert!(!newest[0].rollback);
        let added = next_desired_models(&current, entry("c", 1), 1);
        assert_eq!(added.len(), 3);
        assert!(!added[2].rollback);
    }

    #[test]
    fn device_ids_come_from_the_key() {
        assert_eq!(
            device_id_for("0123456789abcdef0123"),
            "dev-0123456789abcdef"
        );
    }
}

//! Accepting a desired state: nothing from the hub is trusted or stored before its
//! signature, addressee and expiry are checked against the trusted root (a pure check), and
//! the trusted root moves forward only by verified rotations fetched from the hub.

use flotilla_common::signing::{SigningError, verify_envelope};
use flotilla_common::trust::verify_root_update;
use flotilla_proto::control::{DESIRED_PAYLOAD_TYPE, DesiredState};
use flotilla_proto::trust::{Envelope, RootMetadata};

use super::Syncer;
use crate::install::{
    DesiredOrder, SequenceDecision, refresh_root_after_refusal, sequence_decision,
};

/// Why a desired state was refused. Logged by the agent; `install::refresh_root_after_refusal`
/// branches on the kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesiredStateError {
    #[error("not an envelope: {0}")]
    NotEnvelope(String),
    /// Not signed by enough of the trusted root's signing keys (perhaps rotated ones).
    #[error("signature: {0}")]
    Signature(SigningError),
    #[error("payload: {0}")]
    Payload(String),
    #[error("it is for device {addressed_to}, not {this_device}")]
    WrongDevice {
        addressed_to: String,
        this_device: String,
    },
    #[error("it expired at {expires} (root at {root_expires}); the hub must re-sign")]
    Expired { expires: i64, root_expires: i64 },
    /// Signed under root metadata newer than the trusted one (perhaps a rotation this
    /// device has not followed yet).
    #[error(
        "it names root metadata version {named}, newer than the trusted version {trusted}, and the hub has no such root for this device to walk to"
    )]
    RootAhead { named: u64, trusted: u64 },
    /// The agent's state database could not be read or written.
    #[error("{0}")]
    AgentState(String),
}

/// Checks a desired state's envelope against `root`: a threshold of the root's signing
/// keys signed it, it is addressed to `device_id`, and neither it nor the root has expired
/// at `now`. Its sequence is judged apart (`install::sequence_decision`).
pub fn check_desired_state(
    payload: &[u8],
    root: &RootMetadata,
    device_id: &str,
    now: i64,
) -> Result<DesiredState, DesiredStateError> {
    let envelope: Envelope = serde_json::from_slice(payload)
        .map_err(|e| DesiredStateError::NotEnvelope(e.to_string()))?;
    verify_envelope(
        &envelope,
        DESIRED_PAYLOAD_TYPE,
        &root.signing_keys,
        root.signing_threshold,
    )
    .map_err(DesiredStateError::Signature)?;
    let state: DesiredState = serde_json::from_str(&envelope.payload)
        .map_err(|e| DesiredStateError::Payload(e.to_string()))?;
    if state.device_id != device_id {
        return Err(DesiredStateError::WrongDevice {
            addressed_to: state.device_id,
            this_device: device_id.to_owned(),
        });
    }
    if state.root_version > root.version {
        return Err(DesiredStateError::RootAhead {
            named: state.root_version,
            trusted: root.version,
        });
    }
    if state.expires <= now || root.expires <= now {
        return Err(DesiredStateError::Expired {
            expires: state.expires,
            root_expires: root.expires,
        });
    }
    Ok(state)
}

impl Syncer {
    pub(super) fn trusted_root(&self) -> RootMetadata {
        self.root.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `accept_desired`, and when the refusal may come from keys the hub rotated, once more
    /// after walking the hub's newer root metadata.
    pub async fn accept_desired_refreshing_root(
        &self,
        payload: &[u8],
    ) -> Result<Option<DesiredState>, DesiredStateError> {
        match self.accept_desired(payload) {
            Err(refusal) if refresh_root_after_refusal(&refusal) && self.refresh_root().await => {
                self.accept_desired(payload)
            }
            accepted => accepted,
        }
    }

    /// Checks a desired state before anything is trusted or stored: hub signature, this
    /// device, unexpired, not older than the newest one followed (whose sequence is then
    /// stored). `None` for an older one.
    pub fn accept_desired(
        &self,
        payload: &[u8],
    ) -> Result<Option<DesiredState>, DesiredStateError> {
        let state = check_desired_state(
            payload,
            &self.trusted_root(),
            &self.device_id,
            self.clock.now_unix(),
        )?;
        let followed = self
            .store
            .desired_order()
            .map_err(|e| DesiredStateError::AgentState(e.to_string()))?;
        let offered = DesiredOrder {
            root_version: state.root_version,
            sequence: state.sequence,
        };
        match sequence_decision(offered, followed) {
            SequenceDecision::IgnoreOlder => Ok(None),
            SequenceDecision::Follow => {
                self.store
                    .set_desired_order(offered)
                    .map_err(|e| DesiredStateError::AgentState(e.to_string()))?;
                Ok(Some(state))
            }
        }
    }

    /// Walks the hub's root metadata from the trusted version upwards, one version at a time,
    /// each checked against the one before (docs/trust.md) and stored only after it
    /// passed. Returns whether the trusted root changed.
    pub async fn refresh_root(&self) -> bool {
        let mut changed = false;
        loop {
            let trusted = self.trusted_root();
            let next = match self.http.root(trusted.version + 1).await {
                Ok(Some(envelope)) => envelope,
                Ok(None) => return changed,
                Err(error) => {
                    tracing::warn!(%error, "cannot fetch root metadata");
                    return changed;
                }
            };
            match verify_root_update(&trusted, &next, self.clock.now_unix()) {
                Ok(root) => {
                    if let Err(error) = self.store.set_root(&next) {
                        tracing::error!(%error, "cannot store the new root");
                        return changed;
                    }
                    tracing::info!(
                        version = root.version,
                        "trusting the hub's rotated root metadata"
                    );
                    *self.root.write().unwrap_or_else(|e| e.into_inner()) = root;
                    changed = true;
                }
                Err(error) => {
                    tracing::warn!(%error, "the hub's next root metadata does not verify; keeping the trusted one");
                    return changed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_common::signing::{SigningKey, sign_envelope};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn root(signing: &SigningKey, expires: i64) -> RootMetadata {
        RootMetadata {
            version: 1,
            expires,
            root_keys: vec![SigningKey::generate().unwrap().public_key()],
            root_threshold: 1,
            signing_keys: vec![signing.public_key()],
            signing_threshold: 1,
        }
    }

    fn state(device_id: &str, expires: i64) -> DesiredState {
        DesiredState {
            device_id: device_id.into(),
            root_version: 1,
            sequence: 7,
            issued: NOW - 1,
            expires,
            models: vec![],
        }
    }

    fn signed(state: &DesiredState, by: &SigningKey) -> Vec<u8> {
        let envelope = sign_envelope(
            DESIRED_PAYLOAD_TYPE,
            serde_json::to_string(state).unwrap(),
            &[by],
        );
        serde_json::to_vec(&envelope).unwrap()
    }

    #[test]
    fn a_desired_state_signed_for_this_device_is_accepted() {
        let hub = SigningKey::generate().unwrap();
        let desired = state("dev-1", NOW + 60);
        let accepted =
            check_desired_state(&signed(&desired, &hub), &root(&hub, NOW + 60), "dev-1", NOW);
        assert_eq!(accepted.unwrap().sequence, 7);
    }

    #[test]
    fn each_refusal_is_its_own_kind_and_keeps_its_text() {
        let hub = SigningKey::generate().unwrap();
        let trusted = root(&hub, NOW + 600);
        let refusal = check_desired_state(b"{", &trusted, "dev-1", NOW).unwrap_err();
        assert!(
            matches!(refusal, DesiredStateError::NotEnvelope(_)),
            "{refusal}"
        );
        assert!(refusal.to_string().starts_with("not an envelope: "));

        let rotated = SigningKey::generate().unwrap();
        let refusal = check_desired_state(
            &signed(&state("dev-1", NOW + 60), &rotated),
            &trusted,
            "dev-1",
            NOW,
        )
        .unwrap_err();
        assert!(
            matches!(refusal, DesiredStateError::Signature(_)),
            "{refusal}"
        );
        assert_eq!(
            refusal.to_string(),
            "signature: only 0 valid signatures from trusted keys, 1 needed"
        );

        let not_a_state = sign_envelope(DESIRED_PAYLOAD_TYPE, "[]".into(), &[&hub]);
        let refusal = check_desired_state(
            &serde_json::to_vec(&not_a_state).unwrap(),
            &trusted,
            "dev-1",
            NOW,
        )
        .unwrap_err();
        assert!(
            matches!(refusal, DesiredStateError::Payload(_)),
            "{refusal}"
        );

        let refusal = check_desired_state(
            &signed(&state("dev-2", NOW + 60), &hub),
            &trusted,
            "dev-1",
            NOW,
        )
        .unwrap_err();
        assert_eq!(refusal.to_string(), "it is for device dev-2, not dev-1");

        let refusal =
            check_desired_state(&signed(&state("dev-1", NOW), &hub), &trusted, "dev-1", NOW)
                .unwrap_err();
        assert_eq!(
            refusal,
            DesiredStateError::Expired {
                expires: NOW,
                root_expires: NOW + 600
            }
        );
        assert_eq!(
            refusal.to_string(),
            format!(
                "it expired at {NOW} (root at {}); the hub must re-sign",
                NOW + 600
            )
        );
    }

    #[test]
    fn an_expired_root_refuses_even_a_fresh_desired_state() {
        let hub = SigningKey::generate().unwrap();
        let refusal = check_desired_state(
            &signed(&state("dev-1", NOW + 60), &hub),
            &root(&hub, NOW - 1),
            "dev-1",
            NOW,
        )
        .unwrap_err();
        assert!(
            matches!(refusal, DesiredStateError::Expired { root_expires, .. } if root_expires == NOW - 1),
            "{refusal}"
        );
    }
}

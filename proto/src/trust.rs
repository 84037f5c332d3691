//! Signed documents of Flotilla's trust model (docs/trust.md), as they travel.
//!
//! Every signed document is an [`Envelope`]: the payload is carried as the exact JSON text
//! that was signed, so verification never depends on re-serializing anything. Signatures
//! cover the DSSE pre-authentication encoding of (payload type, payload), so a signature
//! over one kind of document can never be replayed as another kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inference::TensorMetadata;

/// Payload type of root metadata.
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.flotilla.root+json";
/// Payload type of a model version's manifest.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.flotilla.manifest+json";

/// A signed document: the payload JSON text and signatures over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    pub payload_type: String,
    /// The signed JSON text, exactly as signed.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvelopeSignature {
    /// Hex SHA-256 of the public key.
    pub key_id: String,
    /// Hex ed25519 signature of the pre-authentication encoding.
    pub sig: String,
}

/// An ed25519 public key named by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicKey {
    pub key_id: String,
    /// Always "ed25519" for now; named so a second algorithm can be added without ambiguity.
    pub algorithm: String,
    /// Hex of the 32 public key bytes.
    pub public: String,
}

/// Root metadata: which keys may sign roots and which may sign manifests, and how many of
/// each must. Signed by a threshold of its own root keys (and of the previous root's, when it
/// replaces one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootMetadata {
    /// Increases by exactly one with every rotation.
    pub version: u64,
    /// Unix seconds after which the document must not be trusted.
    pub expires: i64,
    pub root_keys: Vec<PublicKey>,
    pub root_threshold: u32,
    pub signing_keys: Vec<PublicKey>,
    pub signing_threshold: u32,
}

/// What a device needs to trust one model version's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub model: String,
    /// The model version number, monotonic per model.
    pub version: u64,
    /// Version of this signed document: grows each time the hub re-signs the manifest
    /// (for example before it expires), so an older signed copy can be recognised.
    pub document_version: u64,
    /// Hex SHA-256 of the ONNX file.
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds after which the manifest must not be trusted.
    pub expires: i64,
    /// Free-form labels that travel with the version (tags, lineage), sorted for stable bytes.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// How the version's inputs map to named features for drift telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<crate::telemetry::FeatureMap>,
}

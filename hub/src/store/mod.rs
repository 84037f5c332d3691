//! The hub's persistent state. Only this module contains SQL.
//!
//! `RegistryStore` is the interface the rest of the hub uses, so PostgreSQL can replace
//! SQLite for large fleets. `SqliteStore` keeps one connection behind a mutex: SQLite allows
//! one writer, and WAL mode lets the file be read by backups meanwhile. Methods are blocking;
//! async callers go through `spawn_blocking`.

mod migrations;
mod sqlite;
mod telemetry;

use std::collections::BTreeMap;

use flotilla_proto::control::InstallOutcome;
use flotilla_proto::inference::TensorMetadata;
use flotilla_proto::trust::PublicKey;
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;
pub use telemetry::{
    CaptureRecord, EventRecord, NewWindow, StoredWindow, TelemetryStore, WindowFilter,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "database {path} was written by a newer hub (schema {found}, this hub knows up to {known}); upgrade the hub"
    )]
    NewerSchema {
        path: String,
        found: i64,
        known: i64,
    },
}

/// What a push stores for a new version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub model: String,
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub inputs_json: String,
    pub outputs_json: String,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    pub lineage: BTreeMap<String, String>,
    pub created: i64,
    pub actor: String,
}

/// Whether a push made a new version or found the same content already registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Created(u64),
    Existing(u64),
}

/// One registered version as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub model: String,
    pub version: u64,
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    pub lineage: BTreeMap<String, String>,
    pub created: i64,
    /// Unix seconds when retired; retired versions stay for audit and rollback history but
    /// cannot be deployed or aliased.
    pub retired: Option<i64>,
    /// The signed manifest envelope, JSON.
    pub manifest: String,
    pub manifest_expires: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub versions: u64,
    pub latest_version: Option<u64>,
    pub aliases: BTreeMap<String, u64>,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasChange {
    pub alias: String,
    /// `None` when the alias was removed.
    pub version: Option<u64>,
    pub at: i64,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

/// An admin token's permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// May read everything, change nothing.
    Read,
    /// May also push, alias, retire, deploy and create enrollment tokens.
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operator => "operator",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "operator" => Some(Scope::Operator),
            _ => None,
        }
    }
}

/// An enrolled device as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: String,
    /// The device's public key.
    pub public_key: PublicKey,
    pub labels: BTreeMap<String, String>,
    pub hardware: BTreeMap<String, String>,
    pub agent_version: String,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub online: bool,
    /// Model name to the version the device reports serving.
    pub serving: BTreeMap<String, u64>,
    /// The latest install outcomes the device reported.
    pub last_outcomes: Vec<InstallOutcome>,
    pub reported_sequence: u64,
    /// When it was decommissioned (`flotilla device revoke`), if it was.
    pub revoked_at: Option<i64>,
}

/// What checking an enrollment token found.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollmentCheck {
    /// Valid: it is now spent, and the device gets these labels. Also the answer when the
    /// device that spent the token last asks again (its answer was lost to a stop or a cut
    /// link): nothing more is spent.
    Accepted(BTreeMap<String, String>),
    Unknown,
    /// Every use it allows is spent.
    AlreadyUsed,
    Expired,
    Revoked,
}

/// An enrollment token as stored (its hash, never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentTokenRecord {
    /// The first 12 hex digits of the token's hash: how operators name it.
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub created: i64,
    pub expires: i64,
    pub uses_allowed: u32,
    pub uses: u32,
    pub revoked_at: Option<i64>,
}

/// The desired state last set for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRecord {
    pub sequence: u64,
    /// JSON of `Vec<flotilla_proto::control::DesiredModel>`.
    pub models: String,
    /// The signed envelope as published.
    pub envelope: String,
}

/// A rollout as stored: the JSON of its spec, targets and controller state.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    pub id: String,
    pub model: String,
    pub version: u64,
    pub spec: String,
    pub targets: String,
    pub state: String,
    pub phase: String,
    pub created: i64,
    pub updated: i64,
}

/// One run of a retraining trigger: why it fired and how its action went.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerRunRecord {
    pub id: String,
    pub model: String,
    pub version: Option<u64>,
    /// `drift`, `error_rate` or `manual`.
    pub reason: String,
    /// `pending`, `retrying`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    pub attempts: u32,
    pub fired_at: i64,
    pub updated: i64,
    /// What the last attempt came to.
    pub outcome: String,
    /// The JSON the action was given.
    pub payload: String,
}

/// A device certificate the hub's CA issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub sha256: String,
    pub device_id: String,
    /// Serial number, hex (none for certificates issued before serials were recorded).
    pub serial: Option<String>,
    pub issued_at: i64,
    pub expires: i64,
    pub revoked_at: Option<i64>,
}

/// What became of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusTaken {
    Recorded,
    /// The same status again (a QoS 1 redelivery, or the retained copy after a restart).
    Duplicate,
    /// Older than one taken already: a replay, or a late message of an ended connection.
    Stale {
        newest: (u64, u64),
    },
}

/// The registry's persistent state, whatever database holds it.
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// Registers a version unless the same content is already registered for the model.
    /// `sign` makes the manifest envelope for the version number being assigned, so the
    /// number and the signed document are written together.
    fn push_version(
        &self,
        new: &NewVersion,
        sign: &dyn Fn(u64) -> (String, i64),
    ) -> Result<PushOutcome, StoreError>;
    fn models(&self) -> Result<Vec<ModelSummary>, StoreError>;
    fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, StoreError>;
    fn version(&self, model: &str, version: u64) -> Result<Option<VersionRecord>, StoreError>;
    fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>, StoreError>;
    fn alias_history(&self, model: &str) -> Result<Vec<AliasChange>, StoreError>;
    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: Option<u64>,
        at: i64,
        actor: &str,
    ) -> Result<(), StoreError>;
    fn retire(&self, model: &str, version: u64, at: i64, actor: &str) -> Result<bool, StoreError>;
    /// Versions whose manifest expires before `before`, for re-signing.
    fn manifests_expiring(&self, before: i64) -> Result<Vec<VersionRecord>, StoreError>;
    fn replace_manifest(
        &self,
        model: &str,
        version: u64,
        manifest: &str,
        expires: i64,
    ) -> Result<(), StoreError>;
    fn latest_root(&self) -> Result<Option<String>, StoreError>;
    /// Root metadata of one version (agents walk the chain one version at a time).
    fn root(&self, version: u64) -> Result<Option<String>, StoreError>;
    fn insert_root(&self, version: u64, envelope: &str) -> Result<(), StoreError>;
    fn insert_admin_token(
        &self,
        token_sha256: &str,
        scope: Scope,
        name: &str,
        at: i64,
    ) -> Result<(), StoreError>;
    fn admin_token(&self, token_sha256: &str) -> Result<Option<(Scope, String)>, StoreError>;
    /// Stores a new enrollment token that `uses` devices may enroll with.
    fn insert_enrollment_token(
        &self,
        token_sha256: &str,
        labels: &BTreeMap<String, String>,
        expires: i64,
        uses: u32,
        at: i64,
    ) -> Result<(), StoreError>;
    /// Every enrollment token, newest first.
    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>, StoreError>;
    /// Revokes the token with this id; the token as it is now, or `None` when no token has
    /// that id.
    fn revoke_enrollment_token(
        &self,
        id: &str,
        at: i64,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError>;
    fn audit(&self, at: i64, actor: &str, action: &str, detail: &str) -> Result<(), StoreError>;
    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
    /// Spends a one-time enrollment token for `device_id`, if it is valid.
    fn consume_enrollment_token(
        &self,
        token_sha256: &str,
        device_id: &str,
        now: i64,
    ) -> Result<EnrollmentCheck, StoreError>;
    /// Records a device; enrolling the same key again updates it.
    fn upsert_device(&self, device: &DeviceRecord) -> Result<(), StoreError>;
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Stores a verified report unless an equal or newer one was stored already.
    fn record_report(
        &self,
        id: &str,
        sequence: u64,
        serving: &BTreeMap<String, u64>,
        outcomes: &[InstallOutcome],
        at: i64,
    ) -> Result<(), StoreError>;
    /// Takes a verified status if it is newer (by `freshness`, (epoch, beat)) than every
    /// status taken from the device before; says why not otherwise.
    fn record_status(
        &self,
        id: &str,
        online: bool,
        freshness: (u64, u64),
        at: i64,
    ) -> Result<StatusTaken, StoreError>;
    /// Records a certificate the CA issued to a device.
    fn record_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError>;
    /// The issued certificate with this fingerprint, if any.
    fn certificate(&self, sha256: &str) -> Result<Option<CertificateRecord>, StoreError>;
    /// Every revoked certificate that has not expired by `now` and has a serial: what the
    /// revocation list names.
    fn revoked_certificates(&self, now: i64) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Decommissions a device: marked revoked with its certificates, kept with its history.
    /// Whether it exists.
    fn revoke_device(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Forgets a device and its desired state (its certificates stay on record, revoked).
    /// Whether it existed.
    fn remove_device(&self, id: &str) -> Result<bool, StoreError>;
    /// Marks offline every online device last seen before `silent_since`; their ids.
    fn mark_silent_devices_offline(&self, silent_since: i64) -> Result<Vec<String>, StoreError>;
    fn desired(&self, id: &str) -> Result<Option<DesiredRecord>, StoreError>;
    fn set_desired(&self, id: &str, desired: &DesiredRecord) -> Result<(), StoreError>;

    /// A model's quality gate policy (JSON), if it has one.
    fn quality_policy(&self, model: &str) -> Result<Option<String>, StoreError>;
    fn set_quality_policy(&self, model: &str, policy: &str, at: i64) -> Result<(), StoreError>;

    fn insert_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError>;
    /// Saves a rollout's controller state and phase.
    fn update_rollout(&self, id: &str, state: &str, phase: &str, at: i64)
    -> Result<(), StoreError>;
    fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError>;
    /// Every rollout, newest first.
    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Retraining trigger rules (JSON) per model; `None` removes a model's rule.
    fn trigger_rules(&self) -> Result<Vec<(String, String)>, StoreError>;
    fn set_trigger_rule(&self, model: &str, rule: Option<&str>, at: i64) -> Result<(), StoreError>;
    fn insert_trigger_run(&self, run: &TriggerRunRecord) -> Result<(), StoreError>;
    fn update_trigger_run(
        &self,
        id: &str,
        status: &str,
        attempts: u32,
        outcome: &str,
        at: i64,
    ) -> Result<(), StoreError>;
    /// Runs, newest first, of one model or of all.
    fn trigger_runs(
        &self,
        model: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TriggerRunRecord>, StoreError>;
    fn trigger_run(&self, id: &str) -> Result<Option<TriggerRunRecord>, StoreError>;
    /// Marks runs that were in flight as interrupted (the hub stopped during them); returns
    /// how many.
    fn interrupt_trigger_runs(&self, at: i64) -> Result<usize, StoreError>;
}

//! The agent's durable state in one SQLite file in its state folder: enrollment, the
//! pinned root, the newest desired-state sequence, trusted manifest versions, and what is
//! being served. Only this module contains SQL. Every write is a committed transaction, so
//! `kill -9` at any instant leaves either the old or the new value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use flotilla_common::trust::TrustedVersion;
use flotilla_proto::control::{EnrollResponse, InstallOutcome};

use crate::install::DesiredOrder;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum AgentStoreError {
    #[error("agent state database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("agent state database holds bad data for {key}: {message}")]
    Corrupt { key: String, message: String },
}

#[derive(Debug)]
pub struct AgentStore {
    connection: Mutex<Connection>,
}

impl AgentStore {
    pub fn open(path: &Path) -> Result<AgentStore, AgentStoreError> {
        let connection = Connection::open(path)?;
        // One agent owns its state: exclusive locking keeps a second agent on the same
        // folder out, and lets WAL work without the shared-memory file (one descriptor less).
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )?;
        Ok(AgentStore {
            connection: Mutex::new(connection),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AgentStoreError> {
        let connection = self
            .connection
            .lock()
            .expect("agent store lock is never poisoned");
        let text: Option<String> = connection
            .query_row(
                "SELECT value FROM state WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| AgentStoreError::Corrupt {
                key: key.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    fn set<T: serde::Serialize>(&self, pairs: &[(&str, &T)]) -> Result<(), AgentStoreError> {
        let mut connection = self
            .connection
            .lock()
            .expect("agent store lock is never poisoned");
        let transaction = connection.transaction()?;
        for (key, value) in pairs {
            let text = serde_json::to_string(value).expect("agent state serializes");
            transaction.execute("INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", params![key, text])?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn enrollment(&self) -> Result<Option<EnrollResponse>, AgentStoreError> {
        self.get("enrollment")
    }
    pub fn set_enrollment(&self, enrollment: &EnrollResponse) -> Result<(), AgentStoreError> {
        self.set(&[("enrollment", enrollment)])
    }

    /// The newest root metadata this device has verified (after rotations; the enrollment
    /// root before any).
    pub fn root(&self) -> Result<Option<flotilla_proto::trust::Envelope>, AgentStoreError> {
        self.get("root")
    }
    pub fn set_root(&self, root: &flotilla_proto::trust::Envelope) -> Result<(), AgentStoreError> {
        self.set(&[("root", root)])
    }

    /// One more than the last call's, kept across restarts: each process's status epochs
    /// start above every earlier one's (the hub refuses a status older than it has).
    pub fn next_status_generation(&self) -> Result<u64, AgentStoreError> {
        let next = self.get::<u64>("status_generation")?.unwrap_or(0) + 1;
        self.set(&[("status_generation", &next)])?;
        Ok(next)
    }

    /// The newest desired state followed: its root version and sequence.
    pub fn desired_order(&self) -> Result<DesiredOrder, AgentStoreError> {
        Ok(DesiredOrder {
            root_version: self.get("desired_root_version")?.unwrap_or(0),
            sequence: self.get("desired_sequence")?.unwrap_or(0),
        })
    }
    pub fn set_desired_order(&self, order: DesiredOrder) -> Result<(), AgentStoreError> {
        self.set(&[
            ("desired_root_version", &order.root_version),
            ("desired_sequence", &order.sequence),
        ])
    }

    pub fn trusted(&self, model: &str) -> Result<Option<TrustedVersion>, AgentStoreError> {
        Ok(self.get::<(u64, u64)>(&format!("trusted/{model}"))?.map(
            |(version, document_version)| TrustedVersion {
                version,
                document_version,
            },
        ))
    }

    pub fn serving(&self) -> Result<BTreeMap<String, u64>, AgentStoreError> {
        Ok(self.get("serving")?.unwrap_or_default())
    }

    /// Records a completed install in one transaction: what is served, the trusted manifest
    /// version (never lowered: a rollback keeps the newer trust), and the outcome.
    pub fn record_installed(
        &self,
        model: &str,
        version: u64,
        document_version: u64,
        outcome: &InstallOutcome,
    ) -> Result<(), AgentStoreError> {
        let mut serving = self.serving()?;
        serving.insert(model.to_owned(), version);
        let trusted = match self.trusted(model)? {
            Some(t) if (t.version, t.document_version) >= (version, document_version) => {
                (t.version, t.document_version)
            }
            _ => (version, document_version),
        };
        let mut outcomes = self.outcomes()?;
        outcomes.insert(model.to_owned(), outcome.clone());
        let key = format!("trusted/{model}");
        let serving = serde_json::to_value(&serving).expect("serializes");
        let trusted = serde_json::to_value(trusted).expect("serializes");
        let outcomes = serde_json::to_value(&outcomes).expect("serializes");
        self.set(&[
            ("serving", &serving),
            (key.as_str(), &trusted),
            ("outcomes", &outcomes),
        ])
    }

    pub fn record_outcome(&self, outcome: &InstallOutcome) -> Result<(), AgentStoreError> {
        let mut outcomes = self.outcomes()?;
        outcomes.insert(outcome.model.clone(), outcome.clone());
        self.set(&[("outcomes", &outcomes)])
    }

    /// The latest install outcome per model.
    pub fn outcomes(&self) -> Result<BTreeMap<String, InstallOutcome>, AgentStoreError> {
        Ok(self.get("outcomes")?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::control::InstallState;

    use super::*;

    fn outcome(model: &str, version: u64) -> InstallOutcome {
        InstallOutcome {
            model: model.into(),
            version,
            state: InstallState::Installed,
            step: None,
            reason: None,
            at: 1,
        }
    }

    #[test]
    fn installs_persist_and_rollbacks_never_lower_trust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let store = AgentStore::open(&path).unwrap();
        assert_eq!(store.desired_order().unwrap(), DesiredOrder::default());
        let order = DesiredOrder {
            root_version: 2,
            sequence: 9,
        };
        store.set_desired_order(order).unwrap();
        store
            .record_installed("iris", 3, 1, &outcome("iris", 3))
            .unwrap();
        store
            .record_installed("iris", 2, 1, &outcome("iris", 2))
            .unwrap();
        drop(store);
        let store = AgentStore::open(&path).unwrap();
        assert_eq!(store.desired_order().unwrap(), order);
        assert_eq!(store.serving().unwrap()["iris"], 2);
        assert_eq!(
            store.trusted("iris").unwrap(),
            Some(TrustedVersion {
                version: 3,
                document_version: 1
            })
        );
        assert_eq!(store.outcomes().unwrap()["iris"].version, 2);
    }
}

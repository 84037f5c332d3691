//! `RegistryStore` on one SQLite file (WAL mode, foreign keys on, migrations in order).

use flotilla_proto::control::InstallOutcome;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::migrations::MIGRATIONS;
use super::{
    AliasChange, AuditEntry, CertificateRecord, DesiredRecord, DeviceRecord, EnrollmentCheck,
    EnrollmentTokenRecord, ModelSummary, NewVersion, PushOutcome, RegistryStore, RolloutRecord,
    Scope, StatusTaken, StoreError, TriggerRunRecord, VersionRecord,
};

#[derive(Debug)]
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let current: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(StoreError::NewerSchema {
                path: path.display().to_string(),
                found: current,
                known,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let transaction = connection.transaction()?;
            transaction.execute_batch(migration)?;
            transaction.pragma_update(None, "user_version", index as i64 + 1)?;
            transaction.commit()?;
        }
        Ok(SqliteStore {
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| StoreError::Corrupt("a previous database call panicked".into()))?;
        f(&mut connection)
    }
}

fn rollout_row(row: &rusqlite::Row) -> rusqlite::Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        spec: row.get(3)?,
        targets: row.get(4)?,
        state: row.get(5)?,
        phase: row.get(6)?,
        created: row.get(7)?,
        updated: row.get(8)?,
    })
}

const TRIGGER_RUN_COLUMNS: &str =
    "id, model, version, reason, status, attempts, fired_at, updated, outcome, payload";

fn trigger_run_row(row: &rusqlite::Row) -> rusqlite::Result<TriggerRunRecord> {
    Ok(TriggerRunRecord {
        id: row.get(0)?,
        model: row.get(1)?,
        version: row.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        reason: row.get(3)?,
        status: row.get(4)?,
        attempts: row.get::<_, i64>(5)? as u32,
        fired_at: row.get(6)?,
        updated: row.get(7)?,
        outcome: row.get(8)?,
        payload: row.get(9)?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("maps of strings and numbers serialize")
}

const CERTIFICATE_COLUMNS: &str = "sha256, device_id, serial, issued_at, expires, revoked_at";

fn certificate_row(row: &rusqlite::Row) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        sha256: row.get(0)?,
        device_id: row.get(1)?,
        serial: row.get(2)?,
        issued_at: row.get(3)?,
        expires: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what}: {e}").into(),
        )
    })
}

const VERSION_COLUMNS: &str = "model, version, artifact_sha256, artifact_size, inputs, outputs, metrics, tags, lineage, created, retired, manifest, manifest_expires";

const TOKEN_COLUMNS: &str =
    "substr(token_sha256, 1, 12), labels, created, expires, uses_allowed, uses, revoked_at";

fn token_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<EnrollmentTokenRecord> {
    Ok(EnrollmentTokenRecord {
        id: row.get(0)?,
        labels: parse(&row.get::<_, String>(1)?, "labels")?,
        created: row.get(2)?,
        expires: row.get(3)?,
        uses_allowed: row.get(4)?,
        uses: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

const DEVICE_COLUMNS: &str = "id, public_key, labels, hardware, agent_version, enrolled_at, last_seen, online, serving, last_outcomes, reported_sequence";

fn device_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        id: row.get(0)?,
        public_key: parse(&row.get::<_, String>(1)?, "public_key")?,
        labels: parse(&row.get::<_, String>(2)?, "labels")?,
        hardware: parse(&row.get::<_, String>(3)?, "hardware")?,
        agent_version: row.get(4)?,
        enrolled_at: row.get(5)?,
        last_seen: row.get(6)?,
        online: row.get::<_, i64>(7)? != 0,
        serving: parse(&row.get::<_, String>(8)?, "serving")?,
        last_outcomes: parse(&row.get::<_, String>(9)?, "last_outcomes")?,
        reported_sequence: row.get::<_, i64>(10)? as u64,
        revoked_at: row.get(11)?,
    })
}

fn version_row(row: &Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        model: row.get(0)?,
        version: row.get::<_, i64>(1)? as u64,
        artifact_sha256: row.get(2)?,
        artifact_size: row.get::<_, i64>(3)? as u64,
        inputs: parse(&row.get::<_, String>(4)?, "inputs")?,
        outputs: parse(&row.get::<_, String>(5)?, "outputs")?,
        metrics: parse(&row.get::<_, String>(6)?, "metrics")?,
        tags: parse(&row.get::<_, String>(7)?, "tags")?,
        lineage: parse(&row.get::<_, String>(8)?, "lineage")?,
        created: row.get(9)?,
        retired: row.get(10)?,
        manifest: row.get(11)?,
        manifest_expires: row.get(12)?,
    })
}

impl RegistryStore for SqliteStore {
    fn push_version(
        &self,
        new: &NewVersion,
        sign: &dyn Fn(u64) -> (String, i64),
    ) -> Result<PushOutcome, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            let existing: Option<i64> = transaction
                .query_row(
                    "SELECT version FROM model_versions WHERE model = ?1 AND artifact_sha256 = ?2",
                    params![new.model, new.artifact_sha256],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(version) = existing {
                return Ok(PushOutcome::Existing(version as u64));
            }
            transaction.execute("INSERT OR IGNORE INTO models (name, created) VALUES (?1, ?2)", params![new.model, new.created])?;
            let latest: Option<i64> =
                transaction.query_row("SELECT MAX(version) FROM model_versions WHERE model = ?1", params![new.model], |row| row.get(0))?;
            let version = latest.unwrap_or(0) as u64 + 1;
            let (manifest, manifest_expires) = sign(version);
            transaction.execute(
                &format!("INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, ?11, ?12)"),
                params![
                    new.model,
                    version as i64,
                    new.artifact_sha256,
                    new.artifact_size as i64,
                    new.inputs_json,
                    new.outputs_json,
                    json(&new.metrics),
                    json(&new.tags),
                    json(&new.lineage),
                    new.created,
                    manifest,
                    manifest_expires,
                ],
            )?;
            transaction.execute(
                "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, 'model.push', ?3)",
                params![new.created, new.actor, format!("{} version {version} sha256 {}", new.model, new.artifact_sha256)],
            )?;
            transaction.commit()?;
            Ok(PushOutcome::Created(version))
        })
    }

    fn models(&self) -> Result<Vec<ModelSummary>, StoreError> {
        let mut summaries = self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT m.name, m.created, COUNT(v.version), MAX(v.version) FROM models m LEFT JOIN model_versions v ON v.model = m.name GROUP BY m.name ORDER BY m.name",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(ModelSummary {
                    name: row.get(0)?,
                    created: row.get(1)?,
                    versions: row.get::<_, i64>(2)? as u64,
                    latest_version: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    aliases: BTreeMap::new(),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })?;
        for summary in &mut summaries {
            summary.aliases = self.aliases(&summary.name)?;
        }
        Ok(summaries)
    }

    fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = ?1 ORDER BY version"
            ))?;
            let rows = statement.query_map(params![model], version_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn version(&self, model: &str, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = ?1 AND version = ?2"),
                    params![model, version as i64],
                    version_row,
                )
                .optional()?)
        })
    }

    fn aliases(&self, model: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        self.with(|connection| {
            let mut statement = connection
                .prepare("SELECT alias, version FROM aliases WHERE model = ?1 ORDER BY alias")?;
            let rows = statement.query_map(params![model], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
    }

    fn alias_history(&self, model: &str) -> Result<Vec<AliasChange>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT alias, version, at, actor FROM alias_history WHERE model = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![model], |row| {
                Ok(AliasChange {
                    alias: row.get(0)?,
                    version: row.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                    at: row.get(2)?,
                    actor: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: Option<u64>,
        at: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            match version {
                Some(version) => transaction.execute(
                    "INSERT INTO aliases (model, alias, version) VALUES (?1, ?2, ?3) ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
                    params![model, alias, version as i64],
                )?,
                None => transaction.execute("DELETE FROM aliases WHERE model = ?1 AND alias = ?2", params![model, alias])?,
            };
            transaction.execute(
                "INSERT INTO alias_history (model, alias, version, at, actor) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![model, alias, version.map(|v| v as i64), at, actor],
            )?;
            let detail = match version {
                Some(v) => format!("{model} alias {alias} -> version {v}"),
                None => format!("{model} alias {alias} removed"),
            };
            transaction.execute("INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, 'model.alias', ?3)", params![at, actor, detail])?;
            transaction.commit()?;
            Ok(())
        })
    }

    fn retire(&self, model: &str, version: u64, at: i64, actor: &str) -> Result<bool, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            let changed = transaction.execute(
                "UPDATE model_versions SET retired = ?3 WHERE model = ?1 AND version = ?2 AND retired IS NULL",
                params![model, version as i64, at],
            )?;
            if changed > 0 {
                transaction.execute(
                    "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, 'model.retire', ?3)",
                    params![at, actor, format!("{model} version {version}")],
                )?;
            }
            transaction.commit()?;
            Ok(changed > 0)
        })
    }

    fn manifests_expiring(&self, before: i64) -> Result<Vec<VersionRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {VERSION_COLUMNS} FROM model_versions WHERE retired IS NULL AND manifest_expires < ?1 ORDER BY model, version"
            ))?;
            let rows = statement.query_map(params![before], version_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replace_manifest(
        &self,
        model: &str,
        version: u64,
        manifest: &str,
        expires: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "UPDATE model_versions SET manifest = ?3, manifest_expires = ?4 WHERE model = ?1 AND version = ?2",
                params![model, version as i64, manifest, expires],
            )?;
            Ok(())
        })
    }

    fn latest_root(&self) -> Result<Option<String>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT envelope FROM roots ORDER BY version DESC LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }

    fn root(&self, version: u64) -> Result<Option<String>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT envelope FROM roots WHERE version = ?1",
                    params![version as i64],
                    |row| row.get(0),
                )
                .optional()?)
        })
    }

    fn insert_root(&self, version: u64, envelope: &str) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO roots (version, envelope) VALUES (?1, ?2)",
                params![version as i64, envelope],
            )?;
            Ok(())
        })
    }

    fn insert_admin_token(
        &self,
        token_sha256: &str,
        scope: Scope,
        name: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO admin_tokens (token_sha256, scope, name, created) VALUES (?1, ?2, ?3, ?4)",
                params![token_sha256, scope.as_str(), name, at],
            )?;
            Ok(())
        })
    }

    fn admin_token(&self, token_sha256: &str) -> Result<Option<(Scope, String)>, StoreError> {
        let found: Option<(String, String)> = self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT scope, name FROM admin_tokens WHERE token_sha256 = ?1",
                    params![token_sha256],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })?;
        match found {
            None => Ok(None),
            Some((scope, name)) => {
                let scope = Scope::parse(&scope)
                    .ok_or_else(|| StoreError::Corrupt(format!("admin token scope {scope:?}")))?;
                Ok(Some((scope, name)))
            }
        }
    }

    fn insert_enrollment_token(
        &self,
        token_sha256: &str,
        labels: &BTreeMap<String, String>,
        expires: i64,
        uses: u32,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO enrollment_tokens (token_sha256, labels, expires, created, uses_allowed) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_sha256, json(labels), expires, at, uses],
            )?;
            Ok(())
        })
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created DESC, token_sha256"
            ))?;
            Ok(statement
                .query_map([], token_record)?
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn revoke_enrollment_token(
        &self,
        id: &str,
        at: i64,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError> {
        self.with(|connection| {
            connection.execute(
                "UPDATE enrollment_tokens SET revoked_at = ?2 WHERE substr(token_sha256, 1, 12) = ?1 AND revoked_at IS NULL",
                params![id, at],
            )?;
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE substr(token_sha256, 1, 12) = ?1"
                    ),
                    params![id],
                    token_record,
                )
                .optional()?)
        })
    }

    fn audit(&self, at: i64, actor: &str, action: &str, detail: &str) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
                params![at, actor, action, detail],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, at, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = statement.query_map(params![limit], |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    actor: row.get(2)?,
                    action: row.get(3)?,
                    detail: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn consume_enrollment_token(
        &self,
        token_sha256: &str,
        device_id: &str,
        now: i64,
    ) -> Result<EnrollmentCheck, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            type Found = (String, i64, u32, u32, Option<i64>, Option<String>);
            let found: Option<Found> = transaction
                .query_row("SELECT labels, expires, uses_allowed, uses, revoked_at, used_by FROM enrollment_tokens WHERE token_sha256 = ?1", params![token_sha256], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
                })
                .optional()?;
            let check = match found {
                None => EnrollmentCheck::Unknown,
                Some((_, _, _, _, Some(_), _)) => EnrollmentCheck::Revoked,
                Some((_, expires, _, _, None, _)) if expires <= now => EnrollmentCheck::Expired,
                Some((labels, .., used_by)) if used_by.as_deref() == Some(device_id) => {
                    EnrollmentCheck::Accepted(parse(&labels, "labels")?)
                }
                Some((_, _, allowed, uses, None, _)) if uses >= allowed => EnrollmentCheck::AlreadyUsed,
                Some((labels, ..)) => {
                    transaction.execute("UPDATE enrollment_tokens SET used_by = ?2, uses = uses + 1 WHERE token_sha256 = ?1", params![token_sha256, device_id])?;
                    EnrollmentCheck::Accepted(parse(&labels, "labels")?)
                }
            };
            transaction.commit()?;
            Ok(check)
        })
    }

    fn upsert_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                &format!(
                    "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT (id) DO UPDATE SET \
                     public_key = excluded.public_key, labels = excluded.labels, hardware = excluded.hardware, agent_version = excluded.agent_version"
                ),
                params![
                    device.id,
                    json(&device.public_key),
                    json(&device.labels),
                    json(&device.hardware),
                    device.agent_version,
                    device.enrolled_at,
                    device.last_seen,
                    device.online as i64,
                    json(&device.serving),
                    json(&device.last_outcomes),
                    device.reported_sequence as i64,
                ],
            )?;
            Ok(())
        })
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {DEVICE_COLUMNS}, revoked_at FROM devices WHERE id = ?1"),
                    params![id],
                    device_row,
                )
                .optional()?)
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {DEVICE_COLUMNS}, revoked_at FROM devices ORDER BY id"
            ))?;
            let rows = statement.query_map([], device_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn record_report(
        &self,
        id: &str,
        sequence: u64,
        serving: &BTreeMap<String, u64>,
        outcomes: &[InstallOutcome],
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "UPDATE devices SET serving = ?2, last_outcomes = ?3, last_seen = ?4, reported_sequence = ?5 WHERE id = ?1 AND reported_sequence <= ?5",
                params![id, json(serving), json(&outcomes), at, sequence as i64],
            )?;
            Ok(())
        })
    }

    fn record_status(
        &self,
        id: &str,
        online: bool,
        freshness: (u64, u64),
        at: i64,
    ) -> Result<StatusTaken, StoreError> {
        // Both halves fit i64: epochs are a generation shifted by 32, beats stop at
        // FINAL_BEAT (i64::MAX).
        let (epoch, beat) = (freshness.0 as i64, freshness.1 as i64);
        self.with(|connection| {
            let changed = connection.execute(
                "UPDATE devices SET online = ?2, last_seen = ?3, status_epoch = ?4, status_beat = ?5 WHERE id = ?1 AND (status_epoch < ?4 OR (status_epoch = ?4 AND status_beat < ?5))",
                params![id, online as i64, at, epoch, beat],
            )?;
            if changed > 0 {
                return Ok(StatusTaken::Recorded);
            }
            let newest: Option<(i64, i64)> = connection
                .query_row(
                    "SELECT status_epoch, status_beat FROM devices WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            Ok(match newest {
                Some(newest) if newest == (epoch, beat) => StatusTaken::Duplicate,
                Some((e, b)) => StatusTaken::Stale {
                    newest: (e.max(0) as u64, b.max(0) as u64),
                },
                None => StatusTaken::Stale { newest: (0, 0) },
            })
        })
    }

    fn record_certificate(&self, certificate: &CertificateRecord) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO device_certificates (sha256, device_id, serial, issued_at, expires) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    certificate.sha256,
                    certificate.device_id,
                    certificate.serial,
                    certificate.issued_at,
                    certificate.expires
                ],
            )?;
            Ok(())
        })
    }

    fn certificate(&self, sha256: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    &format!(
                        "SELECT {CERTIFICATE_COLUMNS} FROM device_certificates WHERE sha256 = ?1"
                    ),
                    params![sha256],
                    certificate_row,
                )
                .optional()?)
        })
    }

    fn revoked_certificates(&self, now: i64) -> Result<Vec<CertificateRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {CERTIFICATE_COLUMNS} FROM device_certificates
                 WHERE revoked_at IS NOT NULL AND serial IS NOT NULL AND expires > ?1
                 ORDER BY revoked_at, sha256"
            ))?;
            let rows = statement.query_map(params![now], certificate_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn revoke_device(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            let found = transaction.execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, ?2), online = 0 WHERE id = ?1",
                params![id, at],
            )?;
            transaction.execute(
                "UPDATE device_certificates SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
                params![id, at],
            )?;
            transaction.commit()?;
            Ok(found > 0)
        })
    }

    fn remove_device(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|connection| {
            let transaction = connection.transaction()?;
            transaction.execute("DELETE FROM desired_states WHERE device_id = ?1", params![id])?;
            let found = transaction.execute("DELETE FROM devices WHERE id = ?1", params![id])?;
            // Its certificates stay on record, revoked: a removed device's certificate must
            // not be taken by anyone.
            transaction.execute(
                "UPDATE device_certificates SET revoked_at = coalesce(revoked_at, CAST(strftime('%s','now') AS INTEGER)) WHERE device_id = ?1",
                params![id],
            )?;
            transaction.commit()?;
            Ok(found > 0)
        })
    }

    fn mark_silent_devices_offline(&self, silent_since: i64) -> Result<Vec<String>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "UPDATE devices SET online = 0 WHERE online = 1 AND (last_seen IS NULL OR last_seen < ?1) RETURNING id",
            )?;
            let ids = statement
                .query_map(params![silent_since], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
    }

    fn desired(&self, id: &str) -> Result<Option<DesiredRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT sequence, models, envelope FROM desired_states WHERE device_id = ?1",
                    params![id],
                    |row| {
                        Ok(DesiredRecord {
                            sequence: row.get::<_, i64>(0)? as u64,
                            models: row.get(1)?,
                            envelope: row.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
    }

    fn quality_policy(&self, model: &str) -> Result<Option<String>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT policy FROM quality_policies WHERE model = ?1",
                    [model],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn set_quality_policy(&self, model: &str, policy: &str, at: i64) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO quality_policies (model, policy, updated) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (model) DO UPDATE SET policy = excluded.policy, updated = excluded.updated",
                params![model, policy, at],
            )?;
            Ok(())
        })
    }

    fn insert_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO rollouts (id, model, version, spec, targets, state, phase, created, updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    r.id,
                    r.model,
                    r.version as i64,
                    r.spec,
                    r.targets,
                    r.state,
                    r.phase,
                    r.created,
                    r.updated
                ],
            )?;
            Ok(())
        })
    }

    fn update_rollout(
        &self,
        id: &str,
        state: &str,
        phase: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "UPDATE rollouts SET state = ?2, phase = ?3, updated = ?4 WHERE id = ?1",
                params![id, state, phase, at],
            )?;
            Ok(())
        })
    }

    fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    "SELECT id, model, version, spec, targets, state, phase, created, updated FROM rollouts WHERE id = ?1",
                    [id],
                    rollout_row,
                )
                .optional()?)
        })
    }

    fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, model, version, spec, targets, state, phase, created, updated FROM rollouts ORDER BY created DESC, id DESC",
            )?;
            let rows = statement.query_map([], rollout_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn trigger_rules(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|connection| {
            let mut statement =
                connection.prepare("SELECT model, rule FROM trigger_rules ORDER BY model")?;
            let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn set_trigger_rule(&self, model: &str, rule: Option<&str>, at: i64) -> Result<(), StoreError> {
        self.with(|connection| {
            match rule {
                Some(rule) => connection.execute(
                    "INSERT INTO trigger_rules (model, rule, updated) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (model) DO UPDATE SET rule = excluded.rule, updated = excluded.updated",
                    params![model, rule, at],
                )?,
                None => connection.execute("DELETE FROM trigger_rules WHERE model = ?1", [model])?,
            };
            Ok(())
        })
    }

    fn insert_trigger_run(&self, r: &TriggerRunRecord) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                &format!(
                    "INSERT INTO trigger_runs ({TRIGGER_RUN_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    r.id,
                    r.model,
                    r.version.map(|v| v as i64),
                    r.reason,
                    r.status,
                    r.attempts,
                    r.fired_at,
                    r.updated,
                    r.outcome,
                    r.payload
                ],
            )?;
            Ok(())
        })
    }

    fn update_trigger_run(
        &self,
        id: &str,
        status: &str,
        attempts: u32,
        outcome: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "UPDATE trigger_runs SET status = ?2, attempts = ?3, outcome = ?4, updated = ?5 WHERE id = ?1",
                params![id, status, attempts, outcome, at],
            )?;
            Ok(())
        })
    }

    fn trigger_runs(
        &self,
        model: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TriggerRunRecord>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {TRIGGER_RUN_COLUMNS} FROM trigger_runs WHERE (?1 IS NULL OR model = ?1) \
                 ORDER BY fired_at DESC, rowid DESC LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![model, limit], trigger_run_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn trigger_run(&self, id: &str) -> Result<Option<TriggerRunRecord>, StoreError> {
        self.with(|connection| {
            Ok(connection
                .query_row(
                    &format!("SELECT {TRIGGER_RUN_COLUMNS} FROM trigger_runs WHERE id = ?1"),
                    [id],
                    trigger_run_row,
                )
                .optional()?)
        })
    }

    fn interrupt_trigger_runs(&self, at: i64) -> Result<usize, StoreError> {
        self.with(|connection| {
            Ok(connection.execute(
                "UPDATE trigger_runs SET status = 'interrupted', updated = ?1, \
                 outcome = 'the hub stopped before the run finished: ' || outcome \
                 WHERE status IN ('pending', 'retrying')",
                [at],
            )?)
        })
    }

    fn set_desired(&self, id: &str, desired: &DesiredRecord) -> Result<(), StoreError> {
        self.with(|connection| {
            connection.execute(
                "INSERT INTO desired_states (device_id, sequence, models, envelope) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device_id) DO UPDATE SET \
                 sequence = excluded.sequence, models = excluded.models, envelope = excluded.envelope",
                params![id, desired.sequence as i64, desired.models, desired.envelope],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_version(model: &str, sha: &str) -> NewVersion {
        NewVersion {
            model: model.into(),
            artifact_sha256: sha.into(),
            artifact_size: 10,
            inputs_json: "[]".into(),
            outputs_json: "[]".into(),
            metrics: BTreeMap::from([("auc".into(), 0.9)]),
            tags: BTreeMap::new(),
            lineage: BTreeMap::new(),
            created: 100,
            actor: "test".into(),
        }
    }

    #[test]
    fn versions_are_monotonic_per_model_and_pushes_idempotent_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let sign = |v: u64| (format!("manifest-{v}"), 1000);
        assert_eq!(
            store.push_version(&new_version("a", "s1"), &sign).unwrap(),
            PushOutcome::Created(1)
        );
        assert_eq!(
            store.push_version(&new_version("a", "s2"), &sign).unwrap(),
            PushOutcome::Created(2)
        );
        assert_eq!(
            store.push_version(&new_version("a", "s1"), &sign).unwrap(),
            PushOutcome::Existing(1)
        );
        assert_eq!(
            store.push_version(&new_version("b", "s1"), &sign).unwrap(),
            PushOutcome::Created(1)
        );
        let record = store.version("a", 2).unwrap().unwrap();
        assert_eq!(
            (record.manifest.as_str(), record.metrics["auc"]),
            ("manifest-2", 0.9)
        );

        store
            .set_alias("a", "production", Some(1), 5, "op")
            .unwrap();
        store
            .set_alias("a", "production", Some(2), 6, "op")
            .unwrap();
        store.set_alias("a", "staging", Some(1), 7, "op").unwrap();
        store.set_alias("a", "staging", None, 8, "op").unwrap();
        assert_eq!(
            store.aliases("a").unwrap(),
            BTreeMap::from([("production".into(), 2)])
        );
        assert_eq!(store.alias_history("a").unwrap().len(), 4);
        assert!(store.retire("a", 1, 9, "op").unwrap());
        assert!(
            !store.retire("a", 1, 10, "op").unwrap(),
            "retiring twice changes nothing"
        );
        let models = store.models().unwrap();
        assert_eq!(models[0].latest_version, Some(2));
        assert_eq!(models[0].aliases["production"], 2);
        assert!(
            store
                .audit_log(100)
                .unwrap()
                .iter()
                .any(|e| e.action == "model.retire")
        );
    }

    #[test]
    fn enrollment_tokens_are_spent_once_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let labels = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        store
            .insert_enrollment_token("t1", &labels, 100, 1, 0)
            .unwrap();
        assert_eq!(
            store.consume_enrollment_token("t1", "d1", 50).unwrap(),
            EnrollmentCheck::Accepted(labels.clone())
        );
        assert_eq!(
            store.consume_enrollment_token("t1", "d2", 50).unwrap(),
            EnrollmentCheck::AlreadyUsed
        );
        // The device that spent it asks again (its answer was lost): answered, nothing spent.
        assert_eq!(
            store.consume_enrollment_token("t1", "d1", 60).unwrap(),
            EnrollmentCheck::Accepted(labels.clone())
        );
        assert_eq!(store.enrollment_tokens().unwrap()[0].uses, 1);
        store
            .insert_enrollment_token("t2", &BTreeMap::new(), 100, 1, 0)
            .unwrap();
        assert_eq!(
            store.consume_enrollment_token("t2", "d2", 100).unwrap(),
            EnrollmentCheck::Expired
        );
        assert_eq!(
            store.consume_enrollment_token("nope", "d2", 1).unwrap(),
            EnrollmentCheck::Unknown
        );
    }

    #[test]
    fn a_claim_token_enrolls_its_count_of_devices_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("hub.db")).unwrap();
        let claim = "c".repeat(64);
        store
            .insert_enrollment_token(&claim, &BTreeMap::new(), 100, 3, 0)
            .unwrap();
        for device in ["d1", "d2"] {
            assert!(matches!(
                store.consume_enrollment_token(&claim, device, 1).unwrap(),
                EnrollmentCheck::Accepted(_)
            ));
        }
        let listed = store.enrollment_tokens().unwrap();
        assert_eq!((listed[0].uses, listed[0].uses_allowed), (2, 3));
        assert_eq!(listed[0].id, "c".repeat(12));
        let revoked = store.revoke_enrollment_token(&"c".repeat(12), 5).unwrap();
        assert_eq!(revoked.unwrap().revoked_at, Some(5));
        assert_eq!(
            store.consume_enrollment_token(&claim, "d3", 6).unwrap(),
            EnrollmentCheck::Revoked
        );
        assert_eq!(store.revoke_enrollment_token("nothing", 7).unwrap(), None);

        let spent = "s".repeat(64);
        store
            .insert_enrollment_token(&spent, &BTreeMap::new(), 100, 2, 0)
            .unwrap();
        for device in ["d", "e"] {
            store.consume_enrollment_token(&spent, device, 1).unwrap();
        }
        assert_eq!(
            store.consume_enrollment_token(&spent, "d4", 1).unwrap(),
            EnrollmentCheck::AlreadyUsed
        );
    }

    #[test]
    fn reopening_keeps_data_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        SqliteStore::open(&path)
            .unwrap()
            .insert_root(1, "{}")
            .unwrap();
        assert_eq!(
            SqliteStore::open(&path)
                .unwrap()
                .latest_root()
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }
}

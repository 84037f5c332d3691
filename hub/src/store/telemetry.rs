//! Telemetry on the hub in its own SQLite file (`telemetry.db`), apart from the registry so
//! heavy ingest and report scans never wait on registry calls or the other way round: one
//! write connection, one read connection (WAL lets them run side by side). Windows are kept
//! as their verified, compressed batches; the columns beside them are what queries filter on.
//! Also reference profiles, drift thresholds, the event log and captured samples. Only this
//! module contains the telemetry SQL.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS windows (
    batch_id BLOB PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    received INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    spool_dropped INTEGER NOT NULL,
    spool_lost INTEGER NOT NULL,
    batch BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_by_version ON windows (model, version, window_end);
CREATE TABLE IF NOT EXISTS reference_profiles (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    profiles BLOB NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS drift_thresholds (
    model TEXT PRIMARY KEY,
    thresholds TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_by_version ON captures (model, version, at_ms);
"#;

/// A verified window, ready to store.
#[derive(Debug, Clone)]
pub struct NewWindow {
    pub batch_id: [u8; 16],
    pub device_id: String,
    pub model: String,
    pub version: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub received: i64,
    pub requests: u64,
    pub errors: u64,
    pub spool_dropped: u64,
    pub spool_lost: u64,
    /// The zstd-compressed encoded batch.
    pub batch: Vec<u8>,
    pub captures: Vec<flotilla_common::telemetry::CaptureSample>,
}

/// Which windows a query reads.
#[derive(Debug, Clone, Default)]
pub struct WindowFilter {
    pub model: String,
    pub version: Option<u64>,
    /// Windows that ended after this (Unix ms).
    pub since_ms: Option<i64>,
    /// Windows that ended at or before this (Unix ms).
    pub until_ms: Option<i64>,
}

/// One stored window as read back: its device and its compressed batch.
#[derive(Debug, Clone)]
pub struct StoredWindow {
    pub device_id: String,
    pub version: u64,
    pub batch: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub model: String,
    pub version: Option<u64>,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaptureRecord {
    pub device_id: String,
    pub version: u64,
    pub at_ms: i64,
    pub inputs: serde_json::Value,
    pub outputs: serde_json::Value,
}

#[derive(Debug)]
pub struct TelemetryStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

impl TelemetryStore {
    pub fn open(path: &Path) -> Result<TelemetryStore, StoreError> {
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;
        let reader = open_connection(path)?;
        Ok(TelemetryStore {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
        connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores windows in one transaction; returns for each whether it was new (a batch id
    /// seen before is a duplicate delivery and is not stored again).
    pub fn insert_windows(&self, windows: &[NewWindow]) -> Result<Vec<bool>, StoreError> {
        let mut connection = Self::lock(&self.writer);
        let tx = connection.transaction()?;
        let mut fresh = Vec::with_capacity(windows.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO windows (batch_id, device_id, model, version, window_start, window_end, received, requests, errors, spool_dropped, spool_lost, batch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut capture = tx.prepare_cached(
                "INSERT INTO captures (model, version, device_id, at_ms, inputs, outputs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for w in windows {
                let inserted = insert.execute(params![
                    &w.batch_id[..],
                    w.device_id,
                    w.model,
                    w.version as i64,
                    w.window_start_ms,
                    w.window_end_ms,
                    w.received,
                    w.requests as i64,
                    w.errors as i64,
                    w.spool_dropped as i64,
                    w.spool_lost as i64,
                    w.batch,
                ])? == 1;
                if inserted {
                    for c in &w.captures {
                        capture.execute(params![
                            w.model,
                            w.version as i64,
                            w.device_id,
                            c.at_ms,
                            c.inputs,
                            c.outputs
                        ])?;
                    }
                }
                fresh.push(inserted);
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// Calls `each` for every window matching the filter, one at a time (a fleet's worth of
    /// windows is never held in memory at once). Rows are read in pages and the reader is
    /// free between pages, so a long report does not hold up other reads.
    pub fn for_each_window(
        &self,
        filter: &WindowFilter,
        each: &mut dyn FnMut(StoredWindow),
    ) -> Result<(), StoreError> {
        const PAGE: i64 = 256;
        let mut after = 0i64;
        loop {
            let page: Vec<(i64, StoredWindow)> = {
                let connection = Self::lock(&self.reader);
                let mut statement = connection.prepare_cached(
                    "SELECT rowid, device_id, version, batch FROM windows
                     WHERE model = ?1 AND (?2 IS NULL OR version = ?2)
                       AND (?3 IS NULL OR window_end > ?3) AND (?4 IS NULL OR window_end <= ?4)
                       AND rowid > ?5
                     ORDER BY rowid LIMIT ?6",
                )?;
                let rows = statement.query_map(
                    params![
                        filter.model,
                        filter.version.map(|v| v as i64),
                        filter.since_ms,
                        filter.until_ms,
                        after,
                        PAGE
                    ],
                    |row| {
                        Ok((
                            row.get(0)?,
                            StoredWindow {
                                device_id: row.get(1)?,
                                version: row.get::<_, i64>(2)? as u64,
                                batch: row.get(3)?,
                            },
                        ))
                    },
                )?;
                rows.collect::<Result<_, _>>()?
            };
            let full = page.len() as i64 == PAGE;
            for (rowid, window) in page {
                after = rowid;
                each(window);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Model versions with windows that ended after `since_ms`.
    pub fn active_versions(&self, since_ms: i64) -> Result<Vec<(String, u64)>, StoreError> {
        let connection = Self::lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT DISTINCT model, version FROM windows WHERE window_end > ?1 ORDER BY model, version",
        )?;
        let rows =
            statement.query_map([since_ms], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn window_count(&self) -> Result<u64, StoreError> {
        let connection = Self::lock(&self.reader);
        Ok(
            connection.query_row("SELECT COUNT(*) FROM windows", [], |r| r.get::<_, i64>(0))?
                as u64,
        )
    }

    pub fn set_reference(
        &self,
        model: &str,
        version: u64,
        rows: u64,
        profiles: &[u8],
        at: i64,
    ) -> Result<(), StoreError> {
        Self::lock(&self.writer).execute(
            "INSERT INTO reference_profiles (model, version, rows, profiles, created) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(model, version) DO UPDATE SET rows = excluded.rows, profiles = excluded.profiles, created = excluded.created",
            params![model, version as i64, rows as i64, profiles, at],
        )?;
        Ok(())
    }

    pub fn reference(&self, model: &str, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(Self::lock(&self.reader)
            .query_row(
                "SELECT profiles FROM reference_profiles WHERE model = ?1 AND version = ?2",
                params![model, version as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_thresholds(&self, model: &str, thresholds: &str) -> Result<(), StoreError> {
        Self::lock(&self.writer).execute(
            "INSERT INTO drift_thresholds (model, thresholds) VALUES (?1, ?2)
             ON CONFLICT(model) DO UPDATE SET thresholds = excluded.thresholds",
            params![model, thresholds],
        )?;
        Ok(())
    }

    pub fn thresholds(&self, model: &str) -> Result<Option<String>, StoreError> {
        Ok(Self::lock(&self.reader)
            .query_row(
                "SELECT thresholds FROM drift_thresholds WHERE model = ?1",
                [model],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn add_event(
        &self,
        at: i64,
        kind: &str,
        model: &str,
        version: Option<u64>,
        detail: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let connection = Self::lock(&self.writer);
        connection.execute(
            "INSERT INTO events (at, kind, model, version, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                at,
                kind,
                model,
                version.map(|v| v as i64),
                detail.to_string()
            ],
        )?;
        Ok(connection.last_insert_rowid())
    }

    /// Events, newest last; `model` narrows, `after_id` pages.
    pub fn events(
        &self,
        model: Option<&str>,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let connection = Self::lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT id, at, kind, model, version, detail FROM events
             WHERE (?1 IS NULL OR model = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = statement.query_map(params![model, after_id, limit], |r| {
            let detail: String = r.get(5)?;
            Ok(EventRecord {
                id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                model: r.get(3)?,
                version: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest event of a kind among `kinds` for a model version.
    pub fn last_event_kind(
        &self,
        model: &str,
        version: u64,
        kinds: &[&str],
    ) -> Result<Option<String>, StoreError> {
        let connection = Self::lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT kind FROM events WHERE model = ?1 AND version = ?2 ORDER BY id DESC",
        )?;
        let mut rows = statement.query(params![model, version as i64])?;
        while let Some(row) = rows.next()? {
            let kind: String = row.get(0)?;
            if kinds.contains(&kind.as_str()) {
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }

    pub fn captures(
        &self,
        model: &str,
        version: u64,
        each: &mut dyn FnMut(CaptureRecord),
    ) -> Result<(), StoreError> {
        let connection = Self::lock(&self.reader);
        let mut statement = connection.prepare_cached(
            "SELECT device_id, version, at_ms, inputs, outputs FROM captures WHERE model = ?1 AND version = ?2 ORDER BY at_ms, id",
        )?;
        let mut rows = statement.query(params![model, version as i64])?;
        while let Some(row) = rows.next()? {
            let (inputs, outputs): (String, String) = (row.get(3)?, row.get(4)?);
            each(CaptureRecord {
                device_id: row.get(0)?,
                version: row.get::<_, i64>(1)? as u64,
                at_ms: row.get(2)?,
                inputs: serde_json::from_str(&inputs).unwrap_or(serde_json::Value::String(inputs)),
                outputs: serde_json::from_str(&outputs)
                    .unwrap_or(serde_json::Value::String(outputs)),
            });
        }
        Ok(())
    }
}

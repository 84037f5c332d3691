//! The telemetry spool: sealed batches wait here, in their own SQLite file, until the broker
//! acknowledges them. Bounded in bytes: when full, the oldest batches are dropped and counted.
//! A spool file that turns out corrupt is moved aside and replaced; the batches it held are
//! counted as lost. Either count travels in the next batches, so loss is never silent. Only
//! this module contains the spool's SQL.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, ErrorCode, params};

/// Counters reported upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolCounters {
    /// Batches dropped because the spool was full (or the disk was).
    pub dropped: u64,
    /// Requests the dropped batches held (what a device-side count must subtract).
    pub dropped_requests: u64,
    /// Batches lost with spool files found corrupt.
    pub lost: u64,
    /// Spool files found corrupt and replaced.
    pub corrupt_files: u64,
}

#[derive(Debug)]
struct Inner {
    connection: Option<Connection>,
    bytes: u64,
    rows: u64,
    counters: SpoolCounters,
}

#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

fn open_connection(path: &Path) -> rusqlite::Result<(Connection, u64, u64, SpoolCounters)> {
    let connection = Connection::open(path)?;
    // Owned by one agent: exclusive locking, so WAL needs no shared-memory file.
    // A core restarted in the same process may find the old one's connection closing.
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    let check: String = connection.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, frame BLOB NOT NULL, requests INTEGER NOT NULL DEFAULT 0, sent INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )?;
    // Spools made before batches carried their request count.
    let has_requests: bool = connection
        .prepare("SELECT requests FROM batches LIMIT 0")
        .is_ok();
    if !has_requests {
        connection
            .execute_batch("ALTER TABLE batches ADD COLUMN requests INTEGER NOT NULL DEFAULT 0")?;
    }
    if connection
        .prepare("SELECT sent FROM batches LIMIT 0")
        .is_err()
    {
        connection
            .execute_batch("ALTER TABLE batches ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")?;
    }
    let (rows, bytes): (i64, i64) = connection.query_row(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(frame)), 0) FROM batches",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (rows, bytes) = (rows as u64, bytes as u64);
    let counter = |name: &str| -> rusqlite::Result<u64> {
        connection
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get::<_, i64>(0).map(|v| v as u64)
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(0),
                e => Err(e),
            })
    };
    let counters = SpoolCounters {
        dropped: counter("dropped")?,
        dropped_requests: counter("dropped_requests")?,
        lost: counter("lost")?,
        corrupt_files: counter("corrupt_files")?,
    };
    Ok((connection, rows, bytes, counters))
}

fn save_counters(connection: &Connection, c: &SpoolCounters) -> rusqlite::Result<()> {
    for (name, value) in [
        ("dropped", c.dropped),
        ("dropped_requests", c.dropped_requests),
        ("lost", c.lost),
        ("corrupt_files", c.corrupt_files),
    ] {
        connection.execute(
            "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![name, value as i64],
        )?;
    }
    Ok(())
}

impl Spool {
    /// Opens (or recovers) the spool at `path`. Never fails: a spool that cannot be opened
    /// at all leaves telemetry off, with the reason logged, and inference unaffected.
    pub fn open(path: &Path, max_bytes: u64) -> Spool {
        let spool = Spool {
            path: path.to_owned(),
            max_bytes,
            inner: Mutex::new(Inner {
                connection: None,
                bytes: 0,
                rows: 0,
                counters: SpoolCounters::default(),
            }),
        };
        {
            let mut inner = spool.lock();
            match open_connection(path) {
                Ok((connection, rows, bytes, counters)) => {
                    *inner = Inner {
                        connection: Some(connection),
                        bytes,
                        rows,
                        counters,
                    };
                }
                Err(error) if is_corruption(&error) => spool.recover(&mut inner, &error),
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot open the telemetry spool; telemetry is off until restart")
                }
            }
        }
        spool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the corrupt file aside, starts a fresh one, and counts what was lost (the rows
    /// this process knew of; a file already corrupt at start-up counts as one loss).
    fn recover(&self, inner: &mut Inner, error: &rusqlite::Error) {
        inner.connection = None;
        let aside = self
            .path
            .with_extension(format!("corrupt-{}", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", self.path.display()));
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            let _ = std::fs::rename(&from, &to);
        }
        let mut counters = inner.counters;
        counters.lost += inner.rows.max(1);
        counters.corrupt_files += 1;
        tracing::error!(path = %self.path.display(), moved_to = %aside.display(), %error, lost = inner.rows.max(1), "telemetry spool was corrupt; replaced it and counted the loss");
        match open_connection(&self.path) {
            Ok((connection, _, _, stored)) => {
                counters.dropped = counters.dropped.max(stored.dropped);
                counters.dropped_requests = counters.dropped_requests.max(stored.dropped_requests);
                let _ = save_counters(&connection, &counters);
                *inner = Inner {
                    connection: Some(connection),
                    bytes: 0,
                    rows: 0,
                    counters,
                };
            }
            Err(error) => {
                tracing::error!(%error, "cannot create a new telemetry spool; telemetry is off until restart");
                inner.counters = counters;
            }
        }
    }

    /// Handles a database error: corruption is recovered, anything else is logged.
    fn failed(&self, inner: &mut Inner, error: rusqlite::Error, what: &str) {
        if is_corruption(&error) {
            self.recover(inner, &error);
        } else {
            tracing::warn!(%error, "telemetry spool: cannot {what}");
        }
    }

    /// Stores a sealed batch, dropping the oldest while the spool is over its size. A batch
    /// that cannot be stored at all (disk full) is counted as dropped. `requests` is how
    /// many requests the batch holds, counted with it if it is ever dropped.
    pub fn push(&self, frame: &[u8], requests: u64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (previous_bytes, previous_counters) = (inner.bytes, inner.counters);
        let result = (|| -> rusqlite::Result<(u64, u64, u64)> {
            let Some(connection) = inner.connection.as_mut() else {
                return Err(rusqlite::Error::InvalidQuery);
            };
            let tx = connection.transaction()?;
            tx.execute(
                "INSERT INTO batches (frame, requests) VALUES (?1, ?2)",
                params![frame, requests as i64],
            )?;
            let mut bytes = previous_bytes + frame.len() as u64;
            let (mut dropped, mut dropped_requests) = (0, 0);
            while bytes > self.max_bytes {
                // Never a batch already sent: the broker may have it (its PUBACK lost with a
                // connection), and dropping it would count one window both ways. Sent
                // batches stay until acknowledged, so the spool may exceed its bound by the
                // few batches in flight.
                let oldest: Option<(i64, u64, u64)> = tx
                    .query_row(
                        "SELECT seq, LENGTH(frame), requests FROM batches WHERE sent = 0 ORDER BY seq LIMIT 1",
                        [],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get::<_, i64>(1)? as u64,
                                r.get::<_, i64>(2)? as u64,
                            ))
                        },
                    )
                    .ok();
                let Some((seq, size, held)) = oldest else {
                    break;
                };
                tx.execute("DELETE FROM batches WHERE seq = ?1", [seq])?;
                bytes -= size;
                dropped += 1;
                dropped_requests += held;
            }
            let mut counters = previous_counters;
            counters.dropped += dropped;
            counters.dropped_requests += dropped_requests;
            save_counters(&tx, &counters)?;
            tx.commit()?;
            Ok((bytes, dropped, dropped_requests))
        })();
        match result {
            Ok((bytes, dropped, dropped_requests)) => {
                inner.bytes = bytes;
                inner.rows = inner.rows + 1 - dropped;
                inner.counters.dropped += dropped;
                inner.counters.dropped_requests += dropped_requests;
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        total = inner.counters.dropped,
                        "telemetry spool full: dropped the oldest batches"
                    );
                }
            }
            Err(rusqlite::Error::InvalidQuery) => {
                inner.counters.dropped += 1;
                inner.counters.dropped_requests += requests;
            }
            Err(error) => {
                inner.counters.dropped += 1;
                inner.counters.dropped_requests += requests;
                self.failed(inner, error, "store a batch (counted as dropped)");
            }
        }
    }

    /// Up to `limit` of the oldest batches with a sequence number above `after`.
    pub fn oldest(&self, after: i64, limit: usize) -> Vec<(i64, Vec<u8>)> {
        let mut inner = self.lock();
        let result = (|| -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
            let Some(connection) = inner.connection.as_ref() else {
                return Ok(Vec::new());
            };
            let mut statement = connection.prepare_cached(
                "SELECT seq, frame FROM batches WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            statement
                .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })();
        result.unwrap_or_else(|error| {
            self.failed(&mut inner, error, "read batches");
            Vec::new()
        })
    }

    /// Deletes a batch the broker acknowledged (again is harmless); true when it was there.
    /// Marks a batch as sent (it may reach the hub from now on): it is never dropped for
    /// space, only removed when acknowledged.
    pub fn mark_sent(&self, seq: i64) {
        let mut inner = self.lock();
        let result = match inner.connection.as_ref() {
            Some(connection) => connection
                .execute("UPDATE batches SET sent = 1 WHERE seq = ?1", [seq])
                .map(|_| ()),
            None => Ok(()),
        };
        if let Err(error) = result {
            self.failed(&mut inner, error, "mark a batch as sent");
        }
    }

    pub fn remove(&self, seq: i64) -> bool {
        let mut inner = self.lock();
        let result = (|| -> rusqlite::Result<Option<u64>> {
            let Some(connection) = inner.connection.as_ref() else {
                return Ok(None);
            };
            let size: Option<u64> = connection
                .query_row(
                    "SELECT LENGTH(frame) FROM batches WHERE seq = ?1",
                    [seq],
                    |r| r.get::<_, i64>(0).map(|v| v as u64),
                )
                .ok();
            connection.execute("DELETE FROM batches WHERE seq = ?1", [seq])?;
            Ok(size)
        })();
        match result {
            Ok(Some(size)) => {
                inner.bytes = inner.bytes.saturating_sub(size);
                inner.rows = inner.rows.saturating_sub(1);
                true
            }
            Ok(None) => false,
            Err(error) => {
                self.failed(&mut inner, error, "delete a sent batch");
                false
            }
        }
    }

    /// Counts batches dropped before they reached the spool (too big to send).
    pub fn count_dropped(&self, n: u64, requests: u64) {
        let mut inner = self.lock();
        inner.counters.dropped += n;
        inner.counters.dropped_requests += requests;
        let counters = inner.counters;
        if let Some(connection) = inner.connection.as_ref()
            && let Err(error) = save_counters(connection, &counters)
        {
            tracing::warn!(%error, "telemetry spool: cannot save counters");
        }
    }

    pub fn counters(&self) -> SpoolCounters {
        self.lock().counters
    }

    /// Batches waiting and their bytes.
    pub fn backlog(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.rows, inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first_and_drops_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db"), 1000);
        for i in 0..30u8 {
            spool.push(&[i; 100], i as u64);
        }
        let (rows, bytes) = spool.backlog();
        assert_eq!((rows, bytes), (10, 1000));
        assert_eq!(spool.counters().dropped, 20);
        // The requests of the 20 dropped batches: 0 + 1 + ... + 19.
        assert_eq!(spool.counters().dropped_requests, 190);
        let oldest = spool.oldest(0, 3);
        assert_eq!(
            oldest.iter().map(|(_, f)| f[0]).collect::<Vec<_>>(),
            [20, 21, 22]
        );
        assert!(spool.remove(oldest[0].0));
        assert!(
            !spool.remove(oldest[0].0),
            "a second acknowledgement finds nothing"
        );
        assert_eq!(spool.backlog().0, 9);
        // Counters and batches survive a restart.
        drop(spool);
        let spool = Spool::open(&dir.path().join("spool.db"), 1000);
        assert_eq!((spool.backlog().0, spool.counters().dropped), (9, 20));
        assert_eq!(spool.counters().dropped_requests, 190);
    }

    #[test]
    fn a_corrupt_spool_file_is_replaced_and_the_loss_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let spool = Spool::open(&path, 1 << 20);
        assert_eq!(spool.counters().lost, 1);
        assert_eq!(spool.counters().corrupt_files, 1);
        spool.push(b"after", 1);
        assert_eq!(spool.oldest(0, 10).len(), 1);
        assert!(
            dir.path().read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt"))
        );
    }
}

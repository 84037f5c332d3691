//! One closed window of one model version on one device, in a compact binary layout:
//! `FLTB`, a format version, then length-prefixed fields; profiles in their own versioned
//! envelope (DataSketches images inside).

use std::collections::BTreeMap;

use crate::codec::{Reader, Truncated, Writer};
use crate::sketch::{NumericProfile, Profile, ProfileError};

const MAGIC: &[u8; 4] = b"FLTB";
pub const BATCH_FORMAT_VERSION: u8 = 1;

/// A random 128-bit id: the hub counts a batch delivered twice once.
pub type BatchId = [u8; 16];

#[derive(Debug, Clone)]
pub struct NamedProfile {
    pub name: String,
    pub profile: Profile,
}

/// A sampled request for retraining (data capture): inputs and outputs as JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSample {
    pub at_ms: i64,
    pub inputs: String,
    pub outputs: String,
}

#[derive(Debug, Clone)]
pub struct WindowBatch {
    pub batch_id: BatchId,
    pub device_id: String,
    pub model: String,
    pub version: u64,
    /// Unix milliseconds, start inclusive, end exclusive.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Requests answered in the window, errors included.
    pub requests: u64,
    /// Failed requests by kind (`bad_request`, `busy`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Request latency in milliseconds, every request.
    pub latency_ms: NumericProfile,
    pub features: Vec<NamedProfile>,
    pub predictions: Vec<NamedProfile>,
    /// Batches this device has dropped from its full spool so far (cumulative), and spool
    /// files lost to corruption: reported, never silent.
    pub spool_dropped_total: u64,
    pub spool_lost_total: u64,
    pub captures: Vec<CaptureSample>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("telemetry batch is truncated")]
    Truncated,
    #[error("not a telemetry batch (bad magic)")]
    BadMagic,
    #[error("telemetry batch format {0} is not one this build reads")]
    Version(u8),
    #[error("profile {name:?}: {source}")]
    Profile { name: String, source: ProfileError },
    #[error("{0} trailing bytes after the batch")]
    Trailing(usize),
}

impl From<Truncated> for BatchError {
    fn from(_: Truncated) -> BatchError {
        BatchError::Truncated
    }
}

fn put_profiles(w: &mut Writer, profiles: &[NamedProfile]) {
    w.u32(profiles.len() as u32);
    for p in profiles {
        w.str(&p.name);
        w.bytes(&p.profile.to_bytes());
    }
}

fn read_profiles(r: &mut Reader) -> Result<Vec<NamedProfile>, BatchError> {
    let n = r.u32()? as usize;
    // Each profile takes at least 8 bytes: a bigger count is a corrupt frame, not a reason
    // to reserve memory.
    let mut out = Vec::with_capacity(n.min(r.remaining() / 8));
    for _ in 0..n {
        let name = r.str()?.to_owned();
        let profile = Profile::from_bytes(r.bytes()?).map_err(|source| BatchError::Profile {
            name: name.clone(),
            source,
        })?;
        out.push(NamedProfile { name, profile });
    }
    Ok(out)
}

impl WindowBatch {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.buf.extend_from_slice(MAGIC);
        w.u8(BATCH_FORMAT_VERSION);
        w.buf.extend_from_slice(&self.batch_id);
        w.str(&self.device_id);
        w.str(&self.model);
        w.u64(self.version);
        w.i64(self.window_start_ms);
        w.i64(self.window_end_ms);
        w.u64(self.requests);
        w.u32(self.errors.len() as u32);
        for (kind, n) in &self.errors {
            w.str(kind);
            w.u64(*n);
        }
        w.bytes(&self.latency_ms.to_bytes());
        put_profiles(&mut w, &self.features);
        put_profiles(&mut w, &self.predictions);
        w.u64(self.spool_dropped_total);
        w.u64(self.spool_lost_total);
        w.u32(self.captures.len() as u32);
        for c in &self.captures {
            w.i64(c.at_ms);
            w.str(&c.inputs);
            w.str(&c.outputs);
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<WindowBatch, BatchError> {
        let mut r = Reader::new(bytes);
        if r.take(4)? != MAGIC {
            return Err(BatchError::BadMagic);
        }
        let version = r.u8()?;
        if version != BATCH_FORMAT_VERSION {
            return Err(BatchError::Version(version));
        }
        let batch_id: BatchId = r.take(16)?.try_into().expect("16 bytes");
        let device_id = r.str()?.to_owned();
        let model = r.str()?.to_owned();
        let version = r.u64()?;
        let window_start_ms = r.i64()?;
        let window_end_ms = r.i64()?;
        let requests = r.u64()?;
        let mut errors = BTreeMap::new();
        for _ in 0..r.u32()? {
            let kind = r.str()?.to_owned();
            errors.insert(kind, r.u64()?);
        }
        let latency_ms =
            NumericProfile::from_bytes(r.bytes()?).map_err(|source| BatchError::Profile {
                name: "latency_ms".into(),
                source,
            })?;
        let features = read_profiles(&mut r)?;
        let predictions = read_profiles(&mut r)?;
        let spool_dropped_total = r.u64()?;
        let spool_lost_total = r.u64()?;
        let n = r.u32()? as usize;
        let mut captures = Vec::with_capacity(n.min(r.remaining() / 16));
        for _ in 0..n {
            captures.push(CaptureSample {
                at_ms: r.i64()?,
                inputs: r.str()?.to_owned(),
                outputs: r.str()?.to_owned(),
            });
        }
        if r.remaining() > 0 {
            return Err(BatchError::Trailing(r.remaining()));
        }
        Ok(WindowBatch {
            batch_id,
            device_id,
            model,
            version,
            window_start_ms,
            window_end_ms,
            requests,
            errors,
            latency_ms,
            features,
            predictions,
            spool_dropped_total,
            spool_lost_total,
            captures,
        })
    }

    /// Failed requests in the window.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

const REFERENCE_MAGIC: &[u8; 4] = b"FLRF";

/// A reference profile set (built from training data): `FLRF`, format version, row count,
/// then named profiles as in a batch.
pub fn encode_reference(rows: u64, profiles: &[NamedProfile]) -> Vec<u8> {
    let mut w = Writer::default();
    w.buf.extend_from_slice(REFERENCE_MAGIC);
    w.u8(BATCH_FORMAT_VERSION);
    w.u64(rows);
    put_profiles(&mut w, profiles);
    w.buf
}

pub fn decode_reference(bytes: &[u8]) -> Result<(u64, Vec<NamedProfile>), BatchError> {
    let mut r = Reader::new(bytes);
    if r.take(4)? != REFERENCE_MAGIC {
        return Err(BatchError::BadMagic);
    }
    let version = r.u8()?;
    if version != BATCH_FORMAT_VERSION {
        return Err(BatchError::Version(version));
    }
    let rows = r.u64()?;
    let profiles = read_profiles(&mut r)?;
    if r.remaining() > 0 {
        return Err(BatchError::Trailing(r.remaining()));
    }
    Ok((rows, profiles))
}

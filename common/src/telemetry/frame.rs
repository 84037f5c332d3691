//! The frame a telemetry batch travels in: zstd-compressed and signed by the device key.
//!
//! Layout: `FLTF`, format version, device id (u16 length + UTF-8), a 64-byte ed25519
//! signature, then the compressed batch. The signature covers a domain tag, the device id
//! and the compressed bytes, so the hub checks it before spending time decompressing.

use flotilla_proto::trust::PublicKey;

use super::batch::{BatchError, WindowBatch};
use crate::compression::{compress, decompress_bounded};
use crate::signing::{SigningKey, verify_bytes};

const MAGIC: &[u8; 4] = b"FLTF";
const FRAME_VERSION: u8 = 1;
const DOMAIN: &[u8] = b"flotilla telemetry frame v1\0";
/// A batch bigger than this once decompressed is refused (a zip bomb, not telemetry).
pub const MAX_DECOMPRESSED_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("telemetry frame is truncated or has a bad header")]
    Malformed,
    #[error("telemetry frame format {0} is not one this build reads")]
    Version(u8),
    #[error("signature does not verify with the device's key")]
    BadSignature,
    #[error("telemetry frame does not decompress: {0}")]
    Decompress(String),
    #[error("{0}")]
    Batch(#[from] BatchError),
    #[error("frame from device {frame:?} carries a batch of device {batch:?}")]
    DeviceMismatch { frame: String, batch: String },
}

impl FrameError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Malformed | FrameError::Version(_) => "malformed",
            FrameError::BadSignature => "bad_signature",
            FrameError::Decompress(_) => "corrupt",
            FrameError::Batch(BatchError::Profile { .. }) => "bad_sketch",
            FrameError::Batch(_) => "corrupt",
            FrameError::DeviceMismatch { .. } => "device_mismatch",
        }
    }
}

fn signed_message(device_id: &str, compressed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + device_id.len() + 1 + compressed.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(device_id.as_bytes());
    m.push(0);
    m.extend_from_slice(compressed);
    m
}

/// Encodes, compresses and signs a batch.
pub fn seal_frame(batch: &WindowBatch, key: &SigningKey) -> Vec<u8> {
    let compressed = compress(&batch.encode()).expect("zstd compresses into memory");
    let signature = hex::decode(key.sign_bytes(&signed_message(&batch.device_id, &compressed)))
        .expect("signature is hex");
    let id = batch.device_id.as_bytes();
    let mut out = Vec::with_capacity(4 + 1 + 2 + id.len() + 64 + compressed.len());
    out.extend_from_slice(MAGIC);
    out.push(FRAME_VERSION);
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&signature);
    out.extend_from_slice(&compressed);
    out
}

/// A frame whose header parsed: who claims to have sent it. Verify before decoding.
#[derive(Debug)]
pub struct OpenedFrame<'a> {
    pub device_id: &'a str,
    signature: &'a [u8],
    compressed: &'a [u8],
}

pub fn open_frame(bytes: &[u8]) -> Result<OpenedFrame<'_>, FrameError> {
    if bytes.len() < 7 || &bytes[..4] != MAGIC {
        return Err(FrameError::Malformed);
    }
    if bytes[4] != FRAME_VERSION {
        return Err(FrameError::Version(bytes[4]));
    }
    let id_len = u16::from_le_bytes([bytes[5], bytes[6]]) as usize;
    let id_end = 7 + id_len;
    if bytes.len() < id_end + 64 {
        return Err(FrameError::Malformed);
    }
    let device_id = std::str::from_utf8(&bytes[7..id_end]).map_err(|_| FrameError::Malformed)?;
    Ok(OpenedFrame {
        device_id,
        signature: &bytes[id_end..id_end + 64],
        compressed: &bytes[id_end + 64..],
    })
}

/// Decodes a batch stored as its compressed bytes (after its frame was verified on arrival).
pub fn decode_compressed(compressed: &[u8]) -> Result<WindowBatch, FrameError> {
    let mut raw = Vec::new();
    decompress_bounded(compressed, None, MAX_DECOMPRESSED_BYTES, &mut raw)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    Ok(WindowBatch::decode(&raw)?)
}

impl<'a> OpenedFrame<'a> {
    /// The compressed batch, for storing once verified.
    pub fn compressed(&self) -> &'a [u8] {
        self.compressed
    }

    /// Checks the signature with the claimed device's key, then decompresses (bounded) and
    /// decodes; the batch must name the same device.
    pub fn verify_and_decode(&self, key: &PublicKey) -> Result<WindowBatch, FrameError> {
        let message = signed_message(self.device_id, self.compressed);
        if !verify_bytes(key, &message, &hex::encode(self.signature)) {
            return Err(FrameError::BadSignature);
        }
        let batch = decode_compressed(self.compressed)?;
        if batch.device_id != self.device_id {
            return Err(FrameError::DeviceMismatch {
                frame: self.device_id.to_owned(),
                batch: batch.device_id,
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sketch::{CategoricalProfile, DEVICE_K, NumericProfile, Profile};
    use crate::telemetry::NamedProfile;

    fn batch(device: &str) -> WindowBatch {
        let mut f0 = NumericProfile::new(DEVICE_K);
        let mut latency = NumericProfile::new(DEVICE_K);
        let mut label = CategoricalProfile::new();
        for i in 0..5000 {
            f0.update(Some(i as f32 * 0.01));
            latency.update(Some(0.2 + (i % 7) as f32 * 0.01));
            label.update(Some(["setosa", "versicolor"][i % 2]));
        }
        WindowBatch {
            batch_id: [7; 16],
            device_id: device.into(),
            model: "iris".into(),
            version: 3,
            window_start_ms: 1_000,
            window_end_ms: 61_000,
            requests: 5002,
            errors: BTreeMap::from([("bad_request".into(), 2)]),
            latency_ms: latency,
            features: vec![NamedProfile {
                name: "f0".into(),
                profile: Profile::Numeric(f0),
            }],
            predictions: vec![NamedProfile {
                name: "label".into(),
                profile: Profile::Categorical(label),
            }],
            spool_dropped_total: 4,
            spool_lost_total: 1,
            captures: vec![],
        }
    }

    #[test]
    fn sealed_frames_open_with_the_right_key_only() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let frame = seal_frame(&batch("dev-1"), &key);
        let opened = open_frame(&frame).unwrap();
        assert_eq!(opened.device_id, "dev-1");
        let back = opened.verify_and_decode(&key.public_key()).unwrap();
        assert_eq!(
            (back.requests, back.error_count(), back.version),
            (5002, 2, 3)
        );
        assert_eq!(back.features[0].profile.valid(), 5000);
        assert_eq!((back.spool_dropped_total, back.spool_lost_total), (4, 1));
        assert_eq!(
            opened.verify_and_decode(&other.public_key()).unwrap_err(),
            FrameError::BadSignature
        );
    }

    #[test]
    fn damaged_frames_are_refused_with_a_reason() {
        let key = SigningKey::generate().unwrap();
        let frame = seal_frame(&batch("dev-1"), &key);
        // Truncated anywhere: header or signature gone, or the compressed body cut short.
        for cut in [3, 10, 40, frame.len() - 5] {
            let result =
                open_frame(&frame[..cut]).and_then(|f| f.verify_and_decode(&key.public_key()));
            assert!(result.is_err(), "cut at {cut} was accepted");
        }
        // A flipped bit in the body fails the signature.
        let mut flipped = frame.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            open_frame(&flipped)
                .unwrap()
                .verify_and_decode(&key.public_key())
                .unwrap_err(),
            FrameError::BadSignature
        );
        // A frame signed for one device that carries another device's batch.
        let compressed = compress(&batch("dev-2").encode()).unwrap();
        let signature = hex::decode(key.sign_bytes(&signed_message("dev-1", &compressed))).unwrap();
        let mut smuggled = MAGIC.to_vec();
        smuggled.push(FRAME_VERSION);
        smuggled.extend_from_slice(&5u16.to_le_bytes());
        smuggled.extend_from_slice(b"dev-1");
        smuggled.extend_from_slice(&signature);
        smuggled.extend_from_slice(&compressed);
        assert!(matches!(
            open_frame(&smuggled)
                .unwrap()
                .verify_and_decode(&key.public_key()),
            Err(FrameError::DeviceMismatch { .. })
        ));
        assert!(open_frame(b"nope").is_err());
    }

    #[test]
    fn a_batch_with_a_profile_of_an_unknown_format_version_is_refused() {
        let b = batch("dev-1");
        let mut raw = b.encode();
        // The first profile envelope after the latency one: find "FLSK" the second time.
        let positions: Vec<usize> = raw
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == b"FLSK")
            .map(|(i, _)| i)
            .collect();
        raw[positions[1] + 4] = 99;
        assert!(matches!(
            WindowBatch::decode(&raw),
            Err(BatchError::Profile {
                source: crate::sketch::ProfileError::Version(99),
                ..
            })
        ));
    }
}

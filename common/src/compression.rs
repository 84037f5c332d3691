//! zstd for artifacts in transit: whole files, and patches made against an earlier version
//! (`zstd --patch-from`: the earlier file is a reference prefix, with a window large enough
//! to see all of it). Decompression is bounded: output beyond the size the signed manifest
//! states is refused, so a zstd bomb cannot fill the device's disk or memory.

use std::io::{Read, Write};

/// Compression level for artifacts: a good ratio without minutes of CPU on the hub.
pub const LEVEL: i32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error(
        "decompressed data exceeds the {limit} bytes the manifest allows (corrupt stream or zstd bomb)"
    )]
    TooLarge { limit: u64 },
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
}

/// Window log that lets matches reach back over the whole reference and target.
fn window_log(reference: usize, target: usize) -> u32 {
    let span = (reference + target).max(1 << 10) as u64;
    (64 - (span - 1).leading_zeros()).clamp(10, 31)
}

/// Compresses a whole file.
pub fn compress(input: &[u8]) -> Result<Vec<u8>, CompressionError> {
    Ok(zstd::bulk::compress(input, LEVEL)?)
}

/// Compresses `target` as a patch against `reference`.
pub fn compress_patch(reference: &[u8], target: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(&mut out, LEVEL, reference)?;
    encoder.window_log(window_log(reference.len(), target.len()))?;
    encoder.long_distance_matching(true)?;
    encoder.set_pledged_src_size(Some(target.len() as u64))?;
    encoder.write_all(target)?;
    encoder.finish()?;
    Ok(out)
}

/// Decompresses `input` (a whole-file stream, or a patch when `reference` is given) into
/// `output`, refusing to write more than `limit` bytes. Returns the bytes written.
pub fn decompress_bounded(
    input: impl Read,
    reference: Option<&[u8]>,
    limit: u64,
    mut output: impl Write,
) -> Result<u64, CompressionError> {
    let reader = std::io::BufReader::new(input);
    let mut decoder = match reference {
        Some(reference) => {
            let mut decoder = zstd::stream::read::Decoder::with_ref_prefix(reader, reference)?;
            decoder.window_log_max(31)?;
            decoder
        }
        None => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(reader)?;
            decoder.window_log_max(31)?;
            decoder
        }
    };
    let mut written = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = decoder.read(&mut buffer)?;
        if read == 0 {
            return Ok(written);
        }
        written += read as u64;
        if written > limit {
            return Err(CompressionError::TooLarge { limit });
        }
        output.write_all(&buffer[..read])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(seed: u32, len: usize) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn whole_files_round_trip() {
        let data = weights(1, 200_000);
        let packed = compress(&data).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            decompress_bounded(&packed[..], None, data.len() as u64, &mut out).unwrap(),
            data.len() as u64
        );
        assert_eq!(out, data);
    }

    #[test]
    fn a_patch_against_the_previous_version_is_small_and_exact() {
        // Version 2 = version 1 with its last tenth retrained.
        let v1 = weights(7, 1_000_000);
        let mut v2 = v1.clone();
        let tail = weights(99, 100_000);
        v2[900_000..].copy_from_slice(&tail);
        let patch = compress_patch(&v1, &v2).unwrap();
        let whole = compress(&v2).unwrap();
        assert!(
            patch.len() < whole.len() / 5,
            "patch {} vs whole {}",
            patch.len(),
            whole.len()
        );
        let mut out = Vec::new();
        decompress_bounded(&patch[..], Some(&v1), v2.len() as u64, &mut out).unwrap();
        assert_eq!(out, v2);
        // The wrong reference does not silently give the right bytes.
        let mut wrong = Vec::new();
        let result = decompress_bounded(
            &patch[..],
            Some(&weights(8, 1_000_000)),
            v2.len() as u64,
            &mut wrong,
        );
        assert!(result.is_err() || wrong != v2);
    }

    #[test]
    fn a_zstd_bomb_stops_at_the_manifest_size() {
        let bomb = compress(&vec![0u8; 50 * 1024 * 1024]).unwrap();
        assert!(
            bomb.len() < 64 * 1024,
            "50 MiB of zeros packs small: {}",
            bomb.len()
        );
        let mut sink = std::io::sink();
        let result = decompress_bounded(&bomb[..], None, 1024 * 1024, &mut sink);
        assert!(
            matches!(result, Err(CompressionError::TooLarge { limit: 1_048_576 })),
            "{result:?}"
        );
        assert!(decompress_bounded(&b"not zstd"[..], None, 10, &mut sink).is_err());
    }
}

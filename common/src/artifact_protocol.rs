//! The artifact transfer protocol over QUIC, shared by the hub (server) and agents (client).
//! One bidirectional stream per download: the client sends one request line and finishes
//! its side; the server answers with one header line, then the artifact's bytes from the
//! requested offset, then finishes. Plain text lines keep it debuggable; the bytes are the
//! file itself (model files compress poorly, and the hash is checked on the whole file).

use serde::{Deserialize, Serialize};

/// ALPN of this protocol, so nothing else is spoken on the connection by mistake.
pub const ALPN: &[u8] = b"flotilla-artifacts/1";
/// Server name used in TLS; the certificate is pinned, so the name carries no trust.
pub const SERVER_NAME: &str = "flotilla-hub";
/// Largest request or header line.
pub const MAX_LINE_BYTES: usize = 4096;

/// How the artifact's bytes travel. Compressed forms are offered by the hub when it made
/// them at push time; the offset of a resumed download counts bytes of that form.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    /// The file as it is.
    #[default]
    Raw,
    /// zstd-compressed.
    Zstd,
    /// A zstd patch against an earlier artifact the device holds.
    Patch { base_sha256: String },
}

impl Encoding {
    /// A name for file names and logs.
    pub fn label(&self) -> String {
        match self {
            Encoding::Raw => "raw".into(),
            Encoding::Zstd => "zstd".into(),
            Encoding::Patch { base_sha256 } => {
                format!("patch-from-{}", &base_sha256[..base_sha256.len().min(16)])
            }
        }
    }

    /// The file name of this form of artifact `sha256` in the hub's store.
    pub fn file_name(&self, sha256: &str) -> String {
        match self {
            Encoding::Raw => sha256.to_owned(),
            Encoding::Zstd => format!("{sha256}.zst"),
            Encoding::Patch { base_sha256 } => format!("{sha256}.from-{base_sha256}.zst"),
        }
    }

    /// Most bytes a form of an artifact of `size` bytes may take: zstd can grow
    /// incompressible data slightly, never by much.
    pub fn max_transfer_bytes(&self, size: u64) -> u64 {
        match self {
            Encoding::Raw => size,
            _ => size + size / 64 + 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRequest {
    pub sha256: String,
    /// Resume from this byte (of the requested encoding).
    pub offset: u64,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactHeader {
    /// The size of the requested form; the stream carries `size - offset` bytes after the header.
    pub size: u64,
    /// Set instead of bytes when the request cannot be served.
    #[serde(default)]
    pub error: Option<String>,
}

/// Splits "one JSON line\nrest" into the parsed line and the rest.
pub fn split_line<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<Option<(T, &[u8])>, String> {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        if bytes.len() > MAX_LINE_BYTES {
            return Err("header line too long".into());
        }
        return Ok(None);
    };
    let value =
        serde_json::from_slice(&bytes[..end]).map_err(|e| format!("bad header line: {e}"))?;
    Ok(Some((value, &bytes[end + 1..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_from_the_bytes_that_follow() {
        let bytes = b"{\"size\":3}\nabc";
        let (header, rest): (ArtifactHeader, &[u8]) = split_line(bytes).unwrap().unwrap();
        assert_eq!((header.size, rest), (3, &b"abc"[..]));
        assert!(
            split_line::<ArtifactHeader>(b"{\"size\"")
                .unwrap()
                .is_none(),
            "incomplete: wait for more"
        );
        assert!(split_line::<ArtifactHeader>(b"nonsense\n").is_err());
        assert!(split_line::<ArtifactHeader>(&vec![b'x'; MAX_LINE_BYTES + 1]).is_err());
    }
}

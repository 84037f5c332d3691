//! The versioned envelope around every serialised profile: magic `FLSK`, a format version and
//! the profile kind, then little-endian fields; DataSketches binary images travel inside as
//! length-prefixed blobs so Python's `datasketches` can read them. Also the small reader used
//! to decode the fields with a clear error on truncation.

use crate::codec::{self, Truncated};

const MAGIC: &[u8; 4] = b"FLSK";
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Numeric = 0,
    Categorical = 1,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            0 => Some(Kind::Numeric),
            1 => Some(Kind::Categorical),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Numeric => "numeric",
            Kind::Categorical => "categorical",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("sketch: {0}")]
    Sketch(String),
    #[error("not a Flotilla profile (bad magic or truncated)")]
    NotAProfile,
    #[error("profile format version {0} is not one this build reads (it reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("profile kind {0} is unknown")]
    UnknownKind(u8),
    #[error("expected a {expected} profile, got a {actual} one")]
    WrongKind {
        expected: &'static str,
        actual: &'static str,
    },
    #[error("profiles with KLL k {0} and {1} cannot be merged")]
    DifferentK(u16, u16),
    #[error("cannot merge a {0} profile into a {1} one")]
    MixedKinds(&'static str, &'static str),
}

pub fn header(kind: Kind) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out
}

/// The kind a serialised profile declares, after checking magic and version.
pub fn kind_of(bytes: &[u8]) -> Result<Kind, ProfileError> {
    if bytes.len() < 6 || &bytes[..4] != MAGIC {
        return Err(ProfileError::NotAProfile);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(ProfileError::Version(bytes[4]));
    }
    Kind::from_byte(bytes[5]).ok_or(ProfileError::UnknownKind(bytes[5]))
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl From<Truncated> for ProfileError {
    fn from(_: Truncated) -> ProfileError {
        ProfileError::NotAProfile
    }
}

/// Reads the fields after a checked header.
#[derive(Debug)]
pub struct Reader<'a>(codec::Reader<'a>);

impl<'a> Reader<'a> {
    pub fn after_header(bytes: &'a [u8], expected: Kind) -> Result<Reader<'a>, ProfileError> {
        let actual = kind_of(bytes)?;
        if actual != expected {
            return Err(ProfileError::WrongKind {
                expected: expected.name(),
                actual: actual.name(),
            });
        }
        Ok(Reader(codec::Reader::new(&bytes[6..])))
    }
    pub fn u8(&mut self) -> Result<u8, ProfileError> {
        Ok(self.0.u8()?)
    }
    pub fn u32(&mut self) -> Result<u32, ProfileError> {
        Ok(self.0.u32()?)
    }
    pub fn u64(&mut self) -> Result<u64, ProfileError> {
        Ok(self.0.u64()?)
    }
    pub fn f64(&mut self) -> Result<f64, ProfileError> {
        Ok(self.0.f64()?)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], ProfileError> {
        Ok(self.0.bytes()?)
    }
    /// Trailing bytes mean the profile was not what it claimed.
    pub fn finish(self) -> Result<(), ProfileError> {
        match self.0.remaining() {
            0 => Ok(()),
            n => Err(ProfileError::Sketch(format!(
                "{n} unexpected trailing bytes"
            ))),
        }
    }
}

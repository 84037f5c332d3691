//! A feature's or output's profile of either kind, as it travels in telemetry and references.

use super::envelope::{Kind, ProfileError, kind_of};
use super::{CategoricalProfile, NumericProfile};

#[derive(Debug, Clone)]
pub enum Profile {
    Numeric(NumericProfile),
    Categorical(CategoricalProfile),
}

impl Profile {
    pub fn kind(&self) -> Kind {
        match self {
            Profile::Numeric(_) => Kind::Numeric,
            Profile::Categorical(_) => Kind::Categorical,
        }
    }

    /// Rows seen, including nulls (and NaN for numeric profiles).
    pub fn count(&self) -> u64 {
        match self {
            Profile::Numeric(p) => p.count,
            Profile::Categorical(p) => p.count,
        }
    }

    /// Rows that count towards the distribution.
    pub fn valid(&self) -> u64 {
        match self {
            Profile::Numeric(p) => p.valid(),
            Profile::Categorical(p) => p.valid(),
        }
    }

    pub fn merge(&mut self, other: &Profile) -> Result<(), ProfileError> {
        match (self, other) {
            (Profile::Numeric(a), Profile::Numeric(b)) => a.merge(b),
            (Profile::Categorical(a), Profile::Categorical(b)) => {
                a.merge(b);
                Ok(())
            }
            (a, b) => Err(ProfileError::MixedKinds(b.kind().name(), a.kind().name())),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Profile::Numeric(p) => p.to_bytes(),
            Profile::Categorical(p) => p.to_bytes(),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Profile, ProfileError> {
        match kind_of(bytes)? {
            Kind::Numeric => NumericProfile::from_bytes(bytes).map(Profile::Numeric),
            Kind::Categorical => CategoricalProfile::from_bytes(bytes).map(Profile::Categorical),
        }
    }
}

//! Tensor element data in its two wire forms: JSON arrays (nested or flat, row-major) and the
//! binary tensor extension (little-endian; BYTES as a 4-byte length then the bytes).

use std::fmt;

use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use super::Datatype;

/// Why tensor data could not be decoded or encoded. Messages name the problem and, where it
/// helps, the fix; the caller adds which tensor it was.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DataError {
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDimension { shape: Vec<i64> },
    #[error("shape {shape:?} has more elements than this agent can hold")]
    ShapeOverflow { shape: Vec<i64> },
    #[error("data has {actual} elements but shape {shape:?} needs {expected}")]
    ElementCount {
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("element {index} is {value}, which is not a valid {datatype}")]
    BadElement {
        index: usize,
        value: String,
        datatype: Datatype,
    },
    #[error("binary data is {actual} bytes but shape {shape:?} of {datatype} needs {expected}")]
    BinarySize {
        shape: Vec<i64>,
        datatype: Datatype,
        expected: usize,
        actual: usize,
    },
    #[error(
        "binary BYTES data is truncated at element {index}: a length prefix says {length} bytes but {left} remain"
    )]
    BytesTruncated {
        index: usize,
        length: usize,
        left: usize,
    },
    #[error("element {index} is not valid UTF-8 text")]
    NotUtf8 { index: usize },
    #[error(
        "element {index} is {value}, which JSON cannot carry; ask for this output with \"binary_data\": true"
    )]
    NotFiniteForJson { index: usize, value: String },
}

/// Number of elements a shape holds, checked for negative dimensions and overflow.
pub fn element_count(shape: &[i64]) -> Result<usize, DataError> {
    let mut count: usize = 1;
    for &dim in shape {
        let dim = usize::try_from(dim).map_err(|_| DataError::NegativeDimension {
            shape: shape.to_vec(),
        })?;
        count = count
            .checked_mul(dim)
            .ok_or_else(|| DataError::ShapeOverflow {
                shape: shape.to_vec(),
            })?;
    }
    Ok(count)
}

/// One JSON scalar from a request's `data`, before it is converted to the declared datatype
/// (the datatype may come after `data` in the JSON object, so it is not known while parsing).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonScalar {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
}

impl fmt::Display for JsonScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonScalar::Bool(v) => write!(f, "{v}"),
            JsonScalar::Int(v) => write!(f, "{v}"),
            JsonScalar::UInt(v) => write!(f, "{v}"),
            JsonScalar::Float(v) => write!(f, "{v}"),
            JsonScalar::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// A request's `data` array flattened in row-major order as it is parsed, so nested and flat
/// forms cost the same and no intermediate `serde_json::Value` tree is built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatJsonData(pub Vec<JsonScalar>);

impl<'de> serde::Deserialize<'de> for FlatJsonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut scalars = Vec::new();
        FlattenSeed(&mut scalars).deserialize(deserializer)?;
        Ok(FlatJsonData(scalars))
    }
}

struct FlattenSeed<'a>(&'a mut Vec<JsonScalar>);

impl<'de> DeserializeSeed<'de> for FlattenSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlattenSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers, booleans or strings, flat or nested")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(JsonScalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(JsonScalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(JsonScalar::UInt(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(JsonScalar::Float(v));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.push(JsonScalar::Text(v.to_owned()));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.push(JsonScalar::Text(v));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(hint) = seq.size_hint() {
            self.0.reserve(hint);
        }
        while seq.next_element_seed(FlattenSeed(self.0))?.is_some() {}
        Ok(())
    }
}

/// The elements of one tensor, typed. Shapes travel beside it.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bf16(Vec<bf16>),
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any variant, bound as `$v`.
macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bf16($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

impl TensorData {
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::Bool,
            TensorData::Uint8(_) => Datatype::Uint8,
            TensorData::Uint16(_) => Datatype::Uint16,
            TensorData::Uint32(_) => Datatype::Uint32,
            TensorData::Uint64(_) => Datatype::Uint64,
            TensorData::Int8(_) => Datatype::Int8,
            TensorData::Int16(_) => Datatype::Int16,
            TensorData::Int32(_) => Datatype::Int32,
            TensorData::Int64(_) => Datatype::Int64,
            TensorData::Fp16(_) => Datatype::Fp16,
            TensorData::Fp32(_) => Datatype::Fp32,
            TensorData::Fp64(_) => Datatype::Fp64,
            TensorData::Bf16(_) => Datatype::Bf16,
            TensorData::Bytes(_) => Datatype::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    /// Bytes the elements take in memory (BYTES: the sum of element lengths).
    pub fn byte_len(&self) -> usize {
        match (self, self.datatype().element_size()) {
            (TensorData::Bytes(v), _) => v.iter().map(Vec::len).sum(),
            (_, Some(size)) => self.len() * size,
            (_, None) => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Converts JSON scalars to `datatype`, refusing anything that would change a value:
    /// out-of-range or fractional numbers for integer types, numbers for BOOL, non-strings
    /// for BYTES.
    pub fn from_json(
        datatype: Datatype,
        scalars: Vec<JsonScalar>,
    ) -> Result<TensorData, DataError> {
        fn convert<T>(
            scalars: Vec<JsonScalar>,
            datatype: Datatype,
            one: impl Fn(&JsonScalar) -> Option<T>,
        ) -> Result<Vec<T>, DataError> {
            scalars
                .iter()
                .enumerate()
                .map(|(index, scalar)| {
                    one(scalar).ok_or_else(|| DataError::BadElement {
                        index,
                        value: scalar.to_string(),
                        datatype,
                    })
                })
                .collect()
        }
        fn integer<T: TryFrom<i64> + TryFrom<u64>>(scalar: &JsonScalar) -> Option<T> {
            match *scalar {
                JsonScalar::Int(v) => T::try_from(v).ok(),
                JsonScalar::UInt(v) => T::try_from(v).ok(),
                // 3.0 is an integer written the way some JSON encoders write every number.
                JsonScalar::Float(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                    T::try_from(v as i64).ok()
                }
                _ => None,
            }
        }
        fn float(scalar: &JsonScalar) -> Option<f64> {
            match *scalar {
                JsonScalar::Int(v) => Some(v as f64),
                JsonScalar::UInt(v) => Some(v as f64),
                JsonScalar::Float(v) => Some(v),
                _ => None,
            }
        }
        let d = datatype;
        Ok(match datatype {
            Datatype::Bool => TensorData::Bool(convert(scalars, d, |s| match s {
                JsonScalar::Bool(b) => Some(*b),
                _ => None,
            })?),
            Datatype::Uint8 => TensorData::Uint8(convert(scalars, d, integer)?),
            Datatype::Uint16 => TensorData::Uint16(convert(scalars, d, integer)?),
            Datatype::Uint32 => TensorData::Uint32(convert(scalars, d, integer)?),
            Datatype::Uint64 => TensorData::Uint64(convert(scalars, d, integer)?),
            Datatype::Int8 => TensorData::Int8(convert(scalars, d, integer)?),
            Datatype::Int16 => TensorData::Int16(convert(scalars, d, integer)?),
            Datatype::Int32 => TensorData::Int32(convert(scalars, d, integer)?),
            Datatype::Int64 => TensorData::Int64(convert(scalars, d, integer)?),
            Datatype::Fp16 => {
                // A number beyond the type's range would become infinity: refused, not changed.
                TensorData::Fp16(convert(scalars, d, |s| {
                    float(s).map(f16::from_f64).filter(|v| v.is_finite())
                })?)
            }
            Datatype::Fp32 => TensorData::Fp32(convert(scalars, d, |s| {
                float(s).map(|v| v as f32).filter(|v| v.is_finite())
            })?),
            Datatype::Fp64 => TensorData::Fp64(convert(scalars, d, float)?),
            Datatype::Bf16 => TensorData::Bf16(convert(scalars, d, |s| {
                float(s).map(bf16::from_f64).filter(|v| v.is_finite())
            })?),
            Datatype::Bytes => {
                let texts = scalars
                    .into_iter()
                    .enumerate()
                    .map(|(index, scalar)| match scalar {
                        JsonScalar::Text(text) => Ok(text.into_bytes()),
                        other => Err(DataError::BadElement {
                            index,
                            value: other.to_string(),
                            datatype: d,
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                TensorData::Bytes(texts)
            }
        })
    }

    /// Decodes binary tensor data of `shape`; the byte count must match exactly.
    pub fn from_binary(
        datatype: Datatype,
        shape: &[i64],
        bytes: &[u8],
    ) -> Result<TensorData, DataError> {
        let count = element_count(shape)?;
        let Some(size) = datatype.element_size() else {
            let elements = decode_length_prefixed(bytes)?;
            if elements.len() != count {
                return Err(DataError::ElementCount {
                    shape: shape.to_vec(),
                    expected: count,
                    actual: elements.len(),
                });
            }
            return Ok(TensorData::Bytes(elements));
        };
        let expected = count
            .checked_mul(size)
            .ok_or_else(|| DataError::ShapeOverflow {
                shape: shape.to_vec(),
            })?;
        if bytes.len() != expected {
            return Err(DataError::BinarySize {
                shape: shape.to_vec(),
                datatype,
                expected,
                actual: bytes.len(),
            });
        }
        macro_rules! le {
            ($ty:ty, $n:literal) => {
                bytes
                    .chunks_exact($n)
                    .map(|c| {
                        <$ty>::from_le_bytes(c.try_into().expect("chunk has the element size"))
                    })
                    .collect::<Vec<$ty>>()
            };
        }
        Ok(match datatype {
            Datatype::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            Datatype::Uint8 => TensorData::Uint8(bytes.to_vec()),
            Datatype::Int8 => TensorData::Int8(bytes.iter().map(|&b| b as i8).collect()),
            Datatype::Uint16 => TensorData::Uint16(le!(u16, 2)),
            Datatype::Int16 => TensorData::Int16(le!(i16, 2)),
            Datatype::Fp16 => {
                TensorData::Fp16(le!(u16, 2).into_iter().map(f16::from_bits).collect())
            }
            Datatype::Bf16 => {
                TensorData::Bf16(le!(u16, 2).into_iter().map(bf16::from_bits).collect())
            }
            Datatype::Uint32 => TensorData::Uint32(le!(u32, 4)),
            Datatype::Int32 => TensorData::Int32(le!(i32, 4)),
            Datatype::Fp32 => TensorData::Fp32(le!(f32, 4)),
            Datatype::Uint64 => TensorData::Uint64(le!(u64, 8)),
            Datatype::Int64 => TensorData::Int64(le!(i64, 8)),
            Datatype::Fp64 => TensorData::Fp64(le!(f64, 8)),
            Datatype::Bytes => unreachable!("BYTES handled above"),
        })
    }

    /// Appends the binary encoding to `out`; returns the number of bytes written.
    pub fn write_binary(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Int8(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::Uint16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Fp16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
            TensorData::Bf16(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
            TensorData::Uint32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Fp32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Uint64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Int64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Fp64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorData::Bytes(v) => {
                for element in v {
                    out.extend_from_slice(&(element.len() as u32).to_le_bytes());
                    out.extend_from_slice(element);
                }
            }
        }
        out.len() - start
    }

    /// Checks that the data can be written as JSON: JSON has no NaN or infinity, and BYTES
    /// elements are written as strings so they must be UTF-8.
    pub fn check_json_representable(&self) -> Result<(), DataError> {
        fn finite<T: Copy + Into<f64>>(values: &[T]) -> Result<(), DataError> {
            match values.iter().position(|&v| !v.into().is_finite()) {
                Some(index) => Err(DataError::NotFiniteForJson {
                    index,
                    value: values[index].into().to_string(),
                }),
                None => Ok(()),
            }
        }
        match self {
            TensorData::Fp16(v) => finite(v),
            TensorData::Bf16(v) => finite(v),
            TensorData::Fp32(v) => finite(v),
            TensorData::Fp64(v) => finite(v),
            TensorData::Bytes(v) => match v.iter().position(|e| std::str::from_utf8(e).is_err()) {
                Some(index) => Err(DataError::NotUtf8 { index }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

fn decode_length_prefixed(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, DataError> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let index = elements.len();
        if bytes.len() < 4 {
            return Err(DataError::BytesTruncated {
                index,
                length: 4,
                left: bytes.len(),
            });
        }
        let length = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        let rest = &bytes[4..];
        if rest.len() < length {
            return Err(DataError::BytesTruncated {
                index,
                length,
                left: rest.len(),
            });
        }
        elements.push(rest[..length].to_vec());
        bytes = &rest[length..];
    }
    Ok(elements)
}

/// Writes the data as a flat JSON array. Callers check [`TensorData::check_json_representable`]
/// first; a non-finite float that slips through is written as `null` by serde_json.
impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        match self {
            TensorData::Fp16(v) => v
                .iter()
                .try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            TensorData::Bf16(v) => v
                .iter()
                .try_for_each(|x| seq.serialize_element(&x.to_f32()))?,
            TensorData::Bytes(v) => v
                .iter()
                .try_for_each(|x| seq.serialize_element(&String::from_utf8_lossy(x)))?,
            TensorData::Bool(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Uint64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int8(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int16(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Int64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp32(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
            TensorData::Fp64(v) => v.iter().try_for_each(|x| seq.serialize_element(x))?,
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(json: &str) -> Vec<JsonScalar> {
        serde_json::from_str::<FlatJsonData>(json).unwrap().0
    }

    #[test]
    fn nested_and_flat_json_flatten_alike() {
        assert_eq!(flat("[[1, 2], [3, 4]]"), flat("[1, 2, 3, 4]"));
        assert_eq!(
            flat("[[[true]], [[false]]]"),
            vec![JsonScalar::Bool(true), JsonScalar::Bool(false)]
        );
    }

    #[test]
    fn json_integers_are_range_checked() {
        let err = TensorData::from_json(Datatype::Uint8, flat("[1, 256]")).unwrap_err();
        assert_eq!(
            err,
            DataError::BadElement {
                index: 1,
                value: "256".into(),
                datatype: Datatype::Uint8
            }
        );
        assert!(TensorData::from_json(Datatype::Int64, flat("[1.5]")).is_err());
        assert!(TensorData::from_json(Datatype::Int8, flat("[-128, 127]")).is_ok());
        assert_eq!(
            TensorData::from_json(Datatype::Int32, flat("[3.0]")).unwrap(),
            TensorData::Int32(vec![3])
        );
        assert!(TensorData::from_json(Datatype::Bool, flat("[1]")).is_err());
        assert!(TensorData::from_json(Datatype::Bytes, flat("[1]")).is_err());
        assert!(TensorData::from_json(Datatype::Fp32, flat("[\"1\"]")).is_err());
        // Beyond the type's range: refused rather than turned into infinity.
        let err = TensorData::from_json(Datatype::Fp32, flat("[1, 1e39]")).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::BadElement {
                    index: 1,
                    datatype: Datatype::Fp32,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(TensorData::from_json(Datatype::Fp16, flat("[70000]")).is_err());
        assert!(TensorData::from_json(Datatype::Fp16, flat("[65000]")).is_ok());
    }

    #[test]
    fn binary_round_trips_every_datatype() {
        let samples = [
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![1, 65535]),
            TensorData::Uint32(vec![7, u32::MAX]),
            TensorData::Uint64(vec![9, u64::MAX]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![-3, 3]),
            TensorData::Int32(vec![i32::MIN, 5]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
            TensorData::Fp16(vec![f16::from_f32(1.5), f16::NAN]),
            TensorData::Fp32(vec![f32::INFINITY, -0.25]),
            TensorData::Fp64(vec![1e300, f64::NEG_INFINITY]),
            TensorData::Bf16(vec![bf16::from_f32(-2.0), bf16::from_f32(3.0)]),
            TensorData::Bytes(vec![b"hello".to_vec(), vec![], vec![0xff, 0x00]]),
        ];
        for sample in samples {
            let mut bytes = Vec::new();
            let written = sample.write_binary(&mut bytes);
            assert_eq!(written, bytes.len());
            let shape = [sample.len() as i64];
            let back = TensorData::from_binary(sample.datatype(), &shape, &bytes).unwrap();
            // Compare encodings: NaN != NaN as values, but the bits must survive.
            let mut again = Vec::new();
            back.write_binary(&mut again);
            assert_eq!(bytes, again, "{:?}", sample.datatype());
        }
    }

    #[test]
    fn binary_sizes_must_match_the_shape() {
        let err = TensorData::from_binary(Datatype::Fp32, &[2, 2], &[0; 12]).unwrap_err();
        assert_eq!(
            err,
            DataError::BinarySize {
                shape: vec![2, 2],
                datatype: Datatype::Fp32,
                expected: 16,
                actual: 12
            }
        );
        let err = TensorData::from_binary(Datatype::Bytes, &[1], &[9, 0, 0, 0, b'a']).unwrap_err();
        assert_eq!(
            err,
            DataError::BytesTruncated {
                index: 0,
                length: 9,
                left: 1
            }
        );
        let err = TensorData::from_binary(Datatype::Bytes, &[2], &[1, 0, 0, 0, b'a']).unwrap_err();
        assert_eq!(
            err,
            DataError::ElementCount {
                shape: vec![2],
                expected: 2,
                actual: 1
            }
        );
        assert!(matches!(
            element_count(&[2, -1]),
            Err(DataError::NegativeDimension { .. })
        ));
        assert!(matches!(
            element_count(&[i64::MAX, i64::MAX]),
            Err(DataError::ShapeOverflow { .. })
        ));
    }

    #[test]
    fn non_finite_floats_cannot_go_to_json() {
        let err = TensorData::Fp32(vec![1.0, f32::NAN])
            .check_json_representable()
            .unwrap_err();
        assert!(matches!(err, DataError::NotFiniteForJson { index: 1, .. }));
        assert!(
            TensorData::Fp64(vec![1.0])
                .check_json_representable()
                .is_ok()
        );
        assert_eq!(
            serde_json::to_string(&TensorData::Fp16(vec![f16::from_f32(0.5)])).unwrap(),
            "[0.5]"
        );
    }
}

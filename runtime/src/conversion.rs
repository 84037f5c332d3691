//! Protocol tensors to ONNX Runtime values and back. Copies once each way; this runs on the
//! session's worker thread, off the async runtime.

use flotilla_proto::inference::TensorData;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::signature::protocol_datatype;

/// Builds an ORT value of `shape` from the data (whose length the caller has checked).
pub(crate) fn to_ort_value(data: TensorData, shape: &[i64]) -> Result<DynValue, String> {
    let shape = shape.to_vec();
    macro_rules! tensor {
        ($v:expr) => {
            Tensor::from_array((shape, $v))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        };
    }
    match data {
        TensorData::Bool(v) => tensor!(v),
        TensorData::Uint8(v) => tensor!(v),
        TensorData::Uint16(v) => tensor!(v),
        TensorData::Uint32(v) => tensor!(v),
        TensorData::Uint64(v) => tensor!(v),
        TensorData::Int8(v) => tensor!(v),
        TensorData::Int16(v) => tensor!(v),
        TensorData::Int32(v) => tensor!(v),
        TensorData::Int64(v) => tensor!(v),
        TensorData::Fp16(v) => tensor!(v),
        TensorData::Fp32(v) => tensor!(v),
        TensorData::Fp64(v) => tensor!(v),
        TensorData::Bf16(v) => tensor!(v),
        TensorData::Bytes(elements) => {
            let texts = elements
                .into_iter()
                .enumerate()
                .map(|(index, bytes)| {
                    String::from_utf8(bytes).map_err(|_| {
                        format!("BYTES element {index} is not valid UTF-8; ONNX Runtime string tensors hold UTF-8 text")
                    })
                })
                .collect::<Result<Vec<String>, String>>()?;
            Tensor::from_string_array((shape, texts.as_slice()))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        }
    }
}

/// Copies an ORT tensor out as protocol data with its shape.
pub(crate) fn from_ort_value(value: &DynValue) -> Result<(Vec<i64>, TensorData), String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("output is a {:?}, not a tensor", value.dtype()));
    };
    macro_rules! copy {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value
                .try_extract_tensor::<$t>()
                .map_err(|e| e.to_string())?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    Ok(match ty {
        TensorElementType::Bool => copy!(bool, Bool),
        TensorElementType::Uint8 => copy!(u8, Uint8),
        TensorElementType::Uint16 => copy!(u16, Uint16),
        TensorElementType::Uint32 => copy!(u32, Uint32),
        TensorElementType::Uint64 => copy!(u64, Uint64),
        TensorElementType::Int8 => copy!(i8, Int8),
        TensorElementType::Int16 => copy!(i16, Int16),
        TensorElementType::Int32 => copy!(i32, Int32),
        TensorElementType::Int64 => copy!(i64, Int64),
        TensorElementType::Float16 => copy!(half::f16, Fp16),
        TensorElementType::Float32 => copy!(f32, Fp32),
        TensorElementType::Float64 => copy!(f64, Fp64),
        TensorElementType::Bfloat16 => copy!(half::bf16, Bf16),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => {
            debug_assert!(protocol_datatype(*other).is_none());
            return Err(format!(
                "output element type {other:?} has no protocol datatype"
            ));
        }
    })
}

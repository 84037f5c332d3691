//! A model's inputs and outputs as the protocol describes them, read from the ONNX graph, and
//! the checks a request must pass against them before it reaches ONNX Runtime.

use flotilla_proto::inference::{Datatype, TensorMetadata};
use ort::value::{TensorElementType, ValueType};

/// One tensor of a model's signature; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn metadata(&self) -> TensorMetadata {
        TensorMetadata {
            name: self.name.clone(),
            datatype: self.datatype.to_string(),
            shape: self.shape.clone(),
        }
    }

    /// Whether a concrete shape fits this spec: same rank, equal fixed dimensions.
    pub fn accepts_shape(&self, shape: &[i64]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want == got)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    /// Tensor outputs only; see `skipped_outputs`.
    pub outputs: Vec<TensorSpec>,
    /// Outputs that are not tensors (sequences, maps, e.g. scikit-learn's ZipMap): the
    /// protocol cannot carry them, so they are left out of metadata and responses.
    pub skipped_outputs: Vec<String>,
}

impl ModelSignature {
    pub fn from_session(session: &ort::session::Session) -> Result<ModelSignature, String> {
        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            match tensor_spec(outlet.name(), outlet.dtype()) {
                Some(spec) => inputs.push(spec?),
                None => {
                    return Err(format!(
                        "input {:?} is not a tensor ({:?}); only tensor inputs can be served",
                        outlet.name(),
                        outlet.dtype()
                    ));
                }
            }
        }
        let mut outputs = Vec::new();
        let mut skipped_outputs = Vec::new();
        for outlet in session.outputs() {
            match tensor_spec(outlet.name(), outlet.dtype()) {
                Some(spec) => outputs.push(spec?),
                None => skipped_outputs.push(outlet.name().to_owned()),
            }
        }
        if outputs.is_empty() {
            return Err(
                "the model has no tensor outputs, so the protocol cannot return anything".into(),
            );
        }
        Ok(ModelSignature {
            inputs,
            outputs,
            skipped_outputs,
        })
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|spec| spec.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|spec| spec.name == name)
    }

    pub fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn output_names(&self) -> String {
        self.outputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `None` when the value is not a tensor; `Some(Err)` for a tensor type the protocol lacks.
fn tensor_spec(name: &str, dtype: &ValueType) -> Option<Result<TensorSpec, String>> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return None;
    };
    Some(match protocol_datatype(*ty) {
        Some(datatype) => Ok(TensorSpec {
            name: name.to_owned(),
            datatype,
            shape: shape.iter().map(|&d| d.max(-1)).collect(),
        }),
        None => Err(format!(
            "tensor {name:?} has element type {ty:?}, which the Open Inference Protocol cannot carry"
        )),
    })
}

pub(crate) fn protocol_datatype(ty: TensorElementType) -> Option<Datatype> {
    Some(match ty {
        TensorElementType::Bool => Datatype::Bool,
        TensorElementType::Uint8 => Datatype::Uint8,
        TensorElementType::Uint16 => Datatype::Uint16,
        TensorElementType::Uint32 => Datatype::Uint32,
        TensorElementType::Uint64 => Datatype::Uint64,
        TensorElementType::Int8 => Datatype::Int8,
        TensorElementType::Int16 => Datatype::Int16,
        TensorElementType::Int32 => Datatype::Int32,
        TensorElementType::Int64 => Datatype::Int64,
        TensorElementType::Float16 => Datatype::Fp16,
        TensorElementType::Float32 => Datatype::Fp32,
        TensorElementType::Float64 => Datatype::Fp64,
        TensorElementType::Bfloat16 => Datatype::Bf16,
        TensorElementType::String => Datatype::Bytes,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_dimensions_accept_any_size_but_rank_must_match() {
        let spec = TensorSpec {
            name: "a".into(),
            datatype: Datatype::Fp32,
            shape: vec![-1, 3],
        };
        assert!(spec.accepts_shape(&[0, 3]));
        assert!(spec.accepts_shape(&[100, 3]));
        assert!(!spec.accepts_shape(&[1, 4]));
        assert!(!spec.accepts_shape(&[3]));
        assert!(!spec.accepts_shape(&[1, 3, 1]));
    }
}

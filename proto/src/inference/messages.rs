//! Request and response bodies of the Open Inference Protocol REST endpoints.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{FlatJsonData, TensorData};

/// HTTP header giving the length of the JSON part of a binary-extension body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
/// Input parameter: the byte length of this input's binary data.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Output parameter: return this output as binary data.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: return every output as binary data unless the output says otherwise.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Free-form `parameters` object.
pub type Parameters = serde_json::Map<String, Value>;

/// `POST /v2/models/{m}[/versions/{v}]/infer` request (the JSON part).
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
    #[serde(default)]
    pub data: Option<FlatJsonData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// Reads a boolean parameter; absent means `None`, a non-boolean is an error message.
pub fn parameter_flag(parameters: Option<&Parameters>, key: &str) -> Result<Option<bool>, String> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(format!(
            "parameter {key:?} must be true or false, not {other}"
        )),
    }
}

/// Reads `binary_data_size`; a value that is not a non-negative integer is an error message.
pub fn parameter_binary_data_size(
    parameters: Option<&Parameters>,
) -> Result<Option<usize>, String> {
    match parameters.and_then(|p| p.get(BINARY_DATA_SIZE)) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|size| usize::try_from(size).ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "parameter {BINARY_DATA_SIZE:?} must be a non-negative integer, not {value}"
                )
            }),
    }
}

/// Inference response (the JSON part).
#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    pub model_name: &'a str,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    pub outputs: Vec<ResponseOutput<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ResponseOutput<'a> {
    pub name: &'a str,
    pub datatype: &'static str,
    pub shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// Absent when the output travels as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a TensorData>,
}

/// `GET /v2`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
}

/// One row of `POST /v2/repository/index` (Triton's model repository extension).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepositoryIndexEntry {
    pub name: String,
    pub version: String,
    pub state: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub reason: String,
}

/// Every error response: `{"error": "..."}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triton_style_request_parses() {
        let body = r#"{"id":"7","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1,2]]},
            {"name":"y","shape":[3],"datatype":"BYTES","parameters":{"binary_data_size":15}}],
            "outputs":[{"name":"z","parameters":{"binary_data":true}}]}"#;
        let request: InferRequest = serde_json::from_str(body).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        assert_eq!(request.inputs[0].data.as_ref().unwrap().0.len(), 2);
        assert_eq!(
            parameter_binary_data_size(request.inputs[1].parameters.as_ref()),
            Ok(Some(15))
        );
        let outputs = request.outputs.unwrap();
        assert_eq!(
            parameter_flag(outputs[0].parameters.as_ref(), BINARY_DATA),
            Ok(Some(true))
        );
    }

    #[test]
    fn bad_parameters_are_explained() {
        let params: Parameters =
            serde_json::from_str(r#"{"binary_data_size":-4,"binary_data":"yes"}"#).unwrap();
        assert!(
            parameter_binary_data_size(Some(&params))
                .unwrap_err()
                .contains("non-negative integer")
        );
        assert!(
            parameter_flag(Some(&params), BINARY_DATA)
                .unwrap_err()
                .contains("true or false")
        );
    }
}

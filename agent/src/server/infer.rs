//! Decoding an inference request against a model's signature and encoding the response,
//! in JSON or with the binary tensor extension. Pure: bytes in, tensors or bytes out.

use flotilla_proto::inference::{
    BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, Datatype, InferRequest, InferResponse,
    Parameters, ResponseOutput, TensorData, element_count, parameter_binary_data_size,
    parameter_flag,
};

use super::error::ApiError;
use flotilla_runtime::{ModelSignature, NamedTensor};

/// An output the client asked for, and whether it travels as binary data.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputChoice {
    pub name: String,
    pub binary: bool,
}

/// A request checked against the model and ready to run.
#[derive(Debug)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    pub outputs: Vec<OutputChoice>,
}

/// Splits the body into its JSON part and binary part. `header_length` is the value of the
/// `Inference-Header-Content-Length` header, when present.
pub fn split_body<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(text) = header_length else {
        return Ok((body, &[]));
    };
    let length: usize = text.trim().parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Inference-Header-Content-Length {text:?} is not a byte count"
        ))
    })?;
    if length > body.len() {
        return Err(ApiError::bad_request(format!(
            "Inference-Header-Content-Length is {length} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

pub fn decode_request(
    json: &[u8],
    mut binary: &[u8],
    signature: &ModelSignature,
) -> Result<DecodedRequest, ApiError> {
    let request: InferRequest = serde_json::from_slice(json).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not a valid inference request: {e}"
        ))
    })?;
    let mut inputs: Vec<NamedTensor> = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let name = input.name;
        let bad = |message: String| ApiError::bad_request(format!("input {name:?}: {message}"));
        if inputs.iter().any(|i| i.name == name) {
            return Err(bad("given twice".into()));
        }
        let Some(spec) = signature.input(&name) else {
            return Err(ApiError::bad_request(format!(
                "unknown input {name:?}; the model takes {}",
                signature.input_names()
            )));
        };
        let datatype = Datatype::parse(&input.datatype).ok_or_else(|| {
            bad(format!(
                "datatype {:?} is not an Open Inference Protocol datatype",
                input.datatype
            ))
        })?;
        if datatype != spec.datatype {
            return Err(bad(format!(
                "datatype is {datatype} but the model takes {}",
                spec.datatype
            )));
        }
        let count = element_count(&input.shape).map_err(|e| bad(e.to_string()))?;
        if !spec.accepts_shape(&input.shape) {
            return Err(bad(format!(
                "shape {:?} does not fit the model's {:?} (-1 is any size)",
                input.shape, spec.shape
            )));
        }
        let binary_size = parameter_binary_data_size(input.parameters.as_ref()).map_err(bad)?;
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "has both \"data\" and \"{BINARY_DATA_SIZE}\"; send one"
                )));
            }
            (None, None) => {
                return Err(bad(format!(
                    "has no \"data\" and no \"{BINARY_DATA_SIZE}\""
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(bad(format!(
                        "{BINARY_DATA_SIZE} is {size} but only {} bytes of binary data remain in the body",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_binary(datatype, &input.shape, mine)
                    .map_err(|e| bad(e.to_string()))?
            }
            (None, Some(json_data)) => {
                if json_data.0.len() != count {
                    return Err(bad(format!(
                        "data has {} elements but shape {:?} needs {count}",
                        json_data.0.len(),
                        input.shape
                    )));
                }
                TensorData::from_json(datatype, json_data.0).map_err(|e| bad(e.to_string()))?
            }
        };
        if let TensorData::Bytes(elements) = &data
            && let Some(index) = elements
                .iter()
                .position(|e| std::str::from_utf8(e).is_err())
        {
            return Err(bad(format!(
                "BYTES element {index} is not valid UTF-8; ONNX Runtime string tensors hold UTF-8 text"
            )));
        }
        inputs.push(NamedTensor {
            name,
            shape: input.shape,
            data,
        });
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data follow the inputs; each binary input needs \"{BINARY_DATA_SIZE}\" and they must add up to the binary part",
            binary.len()
        )));
    }
    let missing: Vec<&str> = signature
        .inputs
        .iter()
        .filter(|s| !inputs.iter().any(|i| i.name == s.name))
        .map(|s| s.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "missing input {}; the model takes {}",
            missing.join(", "),
            signature.input_names()
        )));
    }
    let all_binary = parameter_flag(request.parameters.as_ref(), BINARY_DATA_OUTPUT)
        .map_err(ApiError::bad_request)?
        .unwrap_or(false);
    let outputs = match request.outputs {
        None => signature
            .outputs
            .iter()
            .map(|s| OutputChoice {
                name: s.name.clone(),
                binary: all_binary,
            })
            .collect(),
        Some(requested) => {
            let mut choices: Vec<OutputChoice> = Vec::with_capacity(requested.len());
            for output in requested {
                if signature.output(&output.name).is_none() {
                    let why = if signature.skipped_outputs.contains(&output.name) {
                        " (it is not a tensor, so it is not served)"
                    } else {
                        ""
                    };
                    return Err(ApiError::bad_request(format!(
                        "unknown output {:?}{why}; the model gives {}",
                        output.name,
                        signature.output_names()
                    )));
                }
                if choices.iter().any(|c| c.name == output.name) {
                    return Err(ApiError::bad_request(format!(
                        "output {:?} is asked for twice",
                        output.name
                    )));
                }
                let binary = parameter_flag(output.parameters.as_ref(), BINARY_DATA)
                    .map_err(|e| ApiError::bad_request(format!("output {:?}: {e}", output.name)))?
                    .unwrap_or(all_binary);
                choices.push(OutputChoice {
                    name: output.name,
                    binary,
                });
            }
            choices
        }
    };
    Ok(DecodedRequest {
        id: request.id,
        inputs,
        outputs,
    })
}

/// An encoded response body; `json_length` is set when binary data follows the JSON.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

pub fn encode_response(
    model_name: &str,
    model_version: u64,
    id: Option<&str>,
    outputs: &[NamedTensor],
    choices: &[OutputChoice],
) -> Result<EncodedResponse, ApiError> {
    let mut binary = Vec::new();
    let mut response_outputs = Vec::with_capacity(outputs.len());
    for (output, choice) in outputs.iter().zip(choices) {
        let mut parameters = None;
        let mut data = None;
        if choice.binary {
            let size = output.data.write_binary(&mut binary);
            let mut map = Parameters::new();
            map.insert(BINARY_DATA_SIZE.into(), size.into());
            parameters = Some(map);
        } else {
            output
                .data
                .check_json_representable()
                .map_err(|e| ApiError::bad_request(format!("output {:?}: {e}", output.name)))?;
            data = Some(&output.data);
        }
        response_outputs.push(ResponseOutput {
            name: &output.name,
            datatype: output.data.datatype().as_str(),
            shape: &output.shape,
            parameters,
            data,
        });
    }
    let response = InferResponse {
        model_name,
        model_version: model_version.to_string(),
        id,
        outputs: response_outputs,
    };
    let mut body = serde_json::to_vec(&response)
        .expect("responses serialize: keys are strings and floats were checked");
    if choices.iter().any(|c| c.binary) {
        let json_length = body.len();
        body.extend_from_slice(&binary);
        Ok(EncodedResponse {
            body,
            json_length: Some(json_length),
        })
    } else {
        Ok(EncodedResponse {
            body,
            json_length: None,
        })
    }
}

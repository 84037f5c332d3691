//! The Open Inference Protocol (KServe v2 REST), as the agent serves it.
//!
//! Split by concern: datatypes and their byte sizes, tensor data with its JSON and binary
//! encodings, and the request/response messages. Everything here is pure so it can be
//! tested, fuzzed and reused by clients (benchmarks, fleet-sim) without a server.

mod datatype;
mod messages;
mod tensor;

pub use datatype::Datatype;
pub use messages::{
    BINARY_DATA, BINARY_DATA_OUTPUT, BINARY_DATA_SIZE, ErrorBody, INFERENCE_HEADER_CONTENT_LENGTH,
    InferRequest, InferResponse, ModelMetadata, Parameters, RepositoryIndexEntry, RequestInput,
    RequestOutput, ResponseOutput, ServerMetadata, TensorMetadata, parameter_binary_data_size,
    parameter_flag,
};
pub use tensor::{DataError, FlatJsonData, JsonScalar, TensorData, element_count};

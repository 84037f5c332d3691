//! Integration tests of the agent: the real binary, real ONNX Runtime, real sockets.

mod bad_input;
mod compatibility;
mod inference;
mod lifecycle;
mod support;

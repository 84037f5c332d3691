//! Integration tests of the hub: the real `flotilla-hub` and `flotilla` binaries, a real
//! SQLite file, real ONNX Runtime checks, over loopback HTTP.

mod registry;
mod support;

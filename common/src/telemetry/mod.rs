//! Telemetry windows: what a device measured for one model version over one window, the
//! signed compressed frame it travels in, how tensors map to named features, and reading
//! tables (CSV, `.npy`) into reference profiles. Pure: no network, no database.

mod batch;
mod feature_map;
mod frame;
mod table;

pub use batch::{
    BatchError, BatchId, CaptureSample, NamedProfile, WindowBatch, decode_reference,
    encode_reference,
};
pub use feature_map::{
    MAX_FEATURES, default_feature_map, feature_map_for, is_feature_input, output_profile_names,
};
pub use frame::{
    FrameError, MAX_DECOMPRESSED_BYTES, OpenedFrame, decode_compressed, open_frame, seal_frame,
};
pub use table::{
    Column, Table, TableError, parse_csv, parse_npy, profile_table, read_table, reference_from_file,
};

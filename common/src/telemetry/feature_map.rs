//! The default feature map of a model version, from its signature: a 2-D numeric input
//! `[N, F]` gives F features named `f0..f{F-1}`; integer, boolean and text outputs are class
//! labels, floating-point outputs are scores.

use flotilla_proto::inference::TensorMetadata;
use flotilla_proto::telemetry::{FeatureMap, PredictionKind, PredictionOutput};

/// Features per version that are profiled; a wider input needs an explicit map.
pub const MAX_FEATURES: usize = 256;
/// Score columns profiled per output; beyond this only each row's largest score is.
const MAX_SCORE_COLUMNS: usize = 16;

fn is_numeric(datatype: &str) -> bool {
    datatype.starts_with("FP")
        || datatype.starts_with("INT")
        || datatype.starts_with("UINT")
        || datatype == "BF16"
}

/// Whether an input can hold features: 2-D numeric with a fixed, reasonable column count.
pub fn is_feature_input(t: &TensorMetadata) -> bool {
    t.shape.len() == 2
        && is_numeric(&t.datatype)
        && t.shape[1] > 0
        && t.shape[1] as usize <= MAX_FEATURES
}

/// `None` when no input is a 2-D numeric tensor with a fixed, reasonable column count.
pub fn default_feature_map(
    inputs: &[TensorMetadata],
    outputs: &[TensorMetadata],
) -> Option<FeatureMap> {
    feature_map_for(inputs.iter().find(|t| is_feature_input(t))?, outputs)
}

/// The map for a chosen feature input: columns `f0..`, every output a prediction; `None`
/// when the input cannot hold features.
pub fn feature_map_for(input: &TensorMetadata, outputs: &[TensorMetadata]) -> Option<FeatureMap> {
    if !is_feature_input(input) {
        return None;
    }
    let predictions = outputs
        .iter()
        .map(|t| PredictionOutput {
            output: t.name.clone(),
            kind: if t.datatype.starts_with("FP") || t.datatype == "BF16" {
                PredictionKind::Score
            } else {
                PredictionKind::Class
            },
        })
        .collect();
    Some(FeatureMap {
        input: input.name.clone(),
        features: (0..input.shape[1]).map(|i| format!("f{i}")).collect(),
        categorical: Vec::new(),
        predictions,
    })
}

/// The profile names a score output of `columns` values per row gets: the output's name for
/// one column, `name[c]` for up to 16, else `name[max]` (each row's largest score).
pub fn output_profile_names(output: &str, columns: usize) -> Vec<String> {
    match columns {
        0 | 1 => vec![output.to_owned()],
        c if c <= MAX_SCORE_COLUMNS => (0..c).map(|i| format!("{output}[{i}]")).collect(),
        _ => vec![format!("{output}[max]")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, datatype: &str, shape: &[i64]) -> TensorMetadata {
        TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn iris_like_signature_maps_to_four_features_a_label_and_scores() {
        let map = default_feature_map(
            &[t("float_input", "FP32", &[-1, 4])],
            &[
                t("label", "INT64", &[-1]),
                t("probabilities", "FP32", &[-1, 3]),
            ],
        )
        .unwrap();
        assert_eq!(map.features, ["f0", "f1", "f2", "f3"]);
        assert_eq!(map.predictions[0].kind, PredictionKind::Class);
        assert_eq!(map.predictions[1].kind, PredictionKind::Score);
        assert_eq!(
            output_profile_names("probabilities", 3),
            ["probabilities[0]", "probabilities[1]", "probabilities[2]"]
        );
        assert_eq!(output_profile_names("p", 1000), ["p[max]"]);
    }

    #[test]
    fn no_default_for_images_or_dynamic_widths() {
        assert!(default_feature_map(&[t("x", "FP32", &[-1, 3, 224, 224])], &[]).is_none());
        assert!(default_feature_map(&[t("x", "FP32", &[-1, -1])], &[]).is_none());
        assert!(default_feature_map(&[t("x", "BYTES", &[-1, 2])], &[]).is_none());
    }
}

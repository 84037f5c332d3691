//! The crate graph docs/ARCHITECTURE.md draws: which of our crates may depend on which, and
//! which outside crates the hub and the CLI must not reach. Read from every crate's
//! `Cargo.toml`, so a new dependency that breaks the graph fails here, not in a review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Our crates and the ones of ours each may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("flotilla-proto", &[]),
    ("flotilla-common", &["flotilla-proto"]),
    ("flotilla-runtime", &["flotilla-proto", "flotilla-common"]),
    ("flotilla-api", &["flotilla-proto", "flotilla-common"]),
    (
        "flotilla-agent",
        &[
            "flotilla-proto",
            "flotilla-common",
            "flotilla-runtime",
            "flotilla-api",
        ],
    ),
    (
        "flotilla-hub",
        &[
            "flotilla-proto",
            "flotilla-common",
            "flotilla-runtime",
            "flotilla-api",
        ],
    ),
    (
        "flotilla-cli",
        &["flotilla-proto", "flotilla-common", "flotilla-api"],
    ),
    (
        "flotilla-testkit",
        &[
            "flotilla-api",
            "flotilla-common",
            "flotilla-hub",
            "flotilla-agent",
            "flotilla-runtime",
        ],
    ),
    (
        "flotilla-sim",
        &[
            "flotilla-proto",
            "flotilla-common",
            "flotilla-runtime",
            "flotilla-api",
            "flotilla-agent",
            "flotilla-hub",
            "flotilla-testkit",
        ],
    ),
];

/// Outside crates a crate's normal dependencies must not reach, directly or through ours.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "flotilla-cli",
        &["rusqlite", "rumqttd", "rumqttc", "quinn", "ort"],
    ),
    (
        "flotilla-api",
        &["rusqlite", "rumqttd", "rumqttc", "quinn", "ort", "axum"],
    ),
    ("flotilla-proto", &["tokio", "hyper", "rusqlite"]),
    (
        "flotilla-common",
        &["hyper", "rusqlite", "rumqttc", "quinn", "axum"],
    ),
];

/// A crate's name and its normal dependencies, from its manifest. Optional ones are left
/// out: they are built only for a crate that turns their feature on, which the check below
/// rules out for the crates that must stay small.
fn manifest(path: &Path) -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let value: toml::Table = toml::from_str(&text).unwrap();
    let name = value["package"]["name"].as_str().unwrap().to_owned();
    let optional =
        |spec: &toml::Value| spec.get("optional").and_then(|o| o.as_bool()) == Some(true);
    let dependencies = value
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.iter()
                .filter(|(_, spec)| !optional(spec))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default();
    (name, dependencies)
}

/// The CLI and the API crate take flotilla-common without its `server` feature (axum).
#[test]
fn the_cli_and_the_api_crate_leave_the_server_feature_off() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for folder in ["cli", "api"] {
        let text = std::fs::read_to_string(repo.join(folder).join("Cargo.toml")).unwrap();
        let value: toml::Table = toml::from_str(&text).unwrap();
        let common = &value["dependencies"]["flotilla-common"];
        let features = common.get("features").and_then(|f| f.as_array());
        assert!(
            features.is_none_or(|f| !f.iter().any(|x| x.as_str() == Some("server"))),
            "{folder}/Cargo.toml turns on flotilla-common's server feature"
        );
    }
}

#[test]
fn crates_depend_only_along_the_drawn_graph() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut crates: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(repo).unwrap().flatten() {
        let path = entry.path().join("Cargo.toml");
        if path.is_file() && entry.path().join("src").is_dir() {
            let (name, dependencies) = manifest(&path);
            crates.insert(name, dependencies);
        }
    }
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    assert_eq!(
        crates.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        allowed.keys().copied().collect::<BTreeSet<_>>(),
        "a crate was added or removed: draw it in docs/ARCHITECTURE.md and list it here"
    );
    for (name, dependencies) in &crates {
        for dependency in dependencies.iter().filter(|d| d.starts_with("flotilla-")) {
            assert!(
                allowed[name.as_str()].contains(&dependency.as_str()),
                "{name} depends on {dependency}, which docs/ARCHITECTURE.md does not allow"
            );
        }
    }
    // Everything a crate reaches through its normal dependencies (ours, followed; outside
    // crates, collected).
    let reach = |start: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.to_owned()];
        while let Some(name) = stack.pop() {
            for dependency in &crates[&name] {
                if seen.insert(dependency.clone()) && crates.contains_key(dependency) {
                    stack.push(dependency.clone());
                }
            }
        }
        seen
    };
    // The hub does not need the agent for anything: not even through another crate.
    assert!(
        !reach("flotilla-hub").contains("flotilla-agent"),
        "flotilla-hub reaches flotilla-agent"
    );
    for (name, forbidden) in FORBIDDEN {
        let reached = reach(name);
        for crate_name in *forbidden {
            assert!(
                !reached.contains(*crate_name),
                "{name} reaches {crate_name} through its dependencies"
            );
        }
    }
}

//! `flotilla-hub config default` and the settings reference in docs/hub.md, made from
//! `HubConfig`'s doc comments (read from config.rs's own text) and its serialised defaults,
//! so each setting's documentation is written once, beside the field.

use crate::config::HubConfig;
pub use flotilla_common::config_reference::{EXAMPLE_PREFIX, Reference, SettingDoc, TableDoc};

/// config.rs as compiled: its doc comments are the settings' documentation.
const CONFIG_SOURCE: &str = include_str!("config.rs");
/// Around the generated reference in docs/hub.md.
pub const DOCS_START_MARKER: &str = "<!-- hub-config-reference:start (generated from hub/src/config.rs; a test keeps it current) -->";
pub const DOCS_END_MARKER: &str = "<!-- hub-config-reference:end -->";

/// The settings reference of `HubConfig`, from config.rs and `HubConfig::default()`.
pub fn reference() -> Reference {
    let defaults =
        toml::Table::try_from(HubConfig::default()).expect("the settings serialise as a table");
    Reference::read(&[CONFIG_SOURCE], "HubConfig", &defaults)
}

/// A complete settings file: every key with its documentation as comments and its default,
/// keys without a default commented out with an example. Parses back to the defaults.
pub fn default_toml() -> String {
    reference().to_toml()
}

/// The reference table docs/hub.md carries between its markers (markers included).
pub fn markdown_reference() -> String {
    reference().to_markdown(DOCS_START_MARKER, DOCS_END_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    /// Every key as `table.key` (or `key`), from the reference.
    fn reference_keys(reference: &Reference) -> Vec<String> {
        let mut keys: Vec<String> = reference.top_level.iter().map(|s| s.key.clone()).collect();
        for table in &reference.tables {
            keys.extend(
                table
                    .settings
                    .iter()
                    .map(|s| format!("{}.{}", table.name, s.key)),
            );
        }
        keys
    }

    /// The fields serde's derive expects, from its own unknown-field message, so a field the
    /// doc-comment reader missed cannot go unnoticed.
    fn fields_serde_expects(table: Option<&str>) -> Vec<String> {
        let text = match table {
            Some(table) => format!("[{table}]\nno_such_key = 1\n"),
            None => "no_such_key = 1\n".to_owned(),
        };
        let message = toml::from_str::<HubConfig>(&text).unwrap_err().to_string();
        flotilla_common::config_reference::fields_serde_expects(&message)
    }

    /// `default_toml` with every commented-out key set to its example.
    fn with_examples_set(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest.to_owned()
                }
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn config_default_parses_back_to_exactly_the_defaults() {
        let text = default_toml();
        let parsed: HubConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, HubConfig::default());
        // And through the loader `serve` uses, which also checks the values.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(HubConfig::load(&path).unwrap(), HubConfig::default());
    }

    #[test]
    fn every_key_is_in_the_reference_documented_with_a_default_or_an_example() {
        let reference = reference();
        assert!(!reference.header.is_empty(), "HubConfig has a doc comment");
        let mut expected = fields_serde_expects(None);
        let tables: Vec<&str> = reference.tables.iter().map(|t| t.name.as_str()).collect();
        assert!(tables.iter().all(|t| expected.contains(&t.to_string())));
        expected.retain(|f| !tables.contains(&f.as_str()));
        for table in &tables {
            expected.extend(
                fields_serde_expects(Some(table))
                    .into_iter()
                    .map(|f| format!("{table}.{f}")),
            );
        }
        assert_eq!(
            reference_keys(&reference)
                .into_iter()
                .collect::<BTreeSet<_>>(),
            expected.into_iter().collect::<BTreeSet<_>>(),
            "the reference read from config.rs and the fields serde knows differ"
        );
        let settings = reference
            .top_level
            .iter()
            .chain(reference.tables.iter().flat_map(|t| &t.settings));
        for setting in settings {
            assert!(
                !setting.text.is_empty(),
                "{:?} {} has no doc comment",
                setting.table,
                setting.key
            );
            assert!(
                setting.default.is_some() != setting.example.is_some(),
                "{:?} {}: a key without a default needs an `Example:` line, and one with a default none",
                setting.table,
                setting.key
            );
        }
        for table in &reference.tables {
            assert!(
                !table.text.is_empty(),
                "[{}] has no doc comment",
                table.name
            );
        }
    }

    #[test]
    fn every_example_is_a_valid_setting() {
        let text = with_examples_set(&default_toml());
        let config: HubConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // Some examples exclude each other in meaning (an external broker's URL beside an
        // embedded broker's address), never in validity.
        assert_eq!(config.validate(), Ok(()));
        let set = toml::Table::try_from(&config).unwrap();
        let reference = reference();
        for setting in reference
            .top_level
            .iter()
            .chain(reference.tables.iter().flat_map(|t| &t.settings))
            .filter(|s| s.default.is_none())
        {
            let value = match &setting.table {
                Some(table) => set[table.as_str()].as_table().unwrap().get(&setting.key),
                None => set.get(&setting.key),
            };
            assert_eq!(
                value.map(ToString::to_string).as_deref(),
                setting.example.as_deref(),
                "{:?} {}",
                setting.table,
                setting.key
            );
        }
    }

    #[test]
    fn docs_hub_md_carries_the_current_reference() {
        let docs = include_str!("../../docs/hub.md");
        let block =
            flotilla_common::config_reference::docs_block(docs, DOCS_START_MARKER, DOCS_END_MARKER)
                .expect("docs/hub.md has the reference's start and end markers, in order");
        let expected = markdown_reference();
        assert!(
            block == expected,
            "docs/hub.md's settings reference is stale (a key, a default or a text changed in hub/src/config.rs); replace it, markers included, with:\n\n{expected}\n"
        );
    }

    #[test]
    fn the_generated_file_puts_comments_keys_and_tables_in_order() {
        let text = default_toml();
        assert!(
            text.starts_with("# Settings of `flotilla-hub serve` (hub.toml)."),
            "{text}"
        );
        let listen = text.find("\nlisten = \"127.0.0.1:7070\"\n").unwrap();
        let advertise_url = text
            .find("\n# advertise_url = \"https://hub.example:7070\"\n")
            .unwrap();
        let broker = text.find("\n[broker]\n").unwrap();
        let triggers = text.find("\n[triggers]\n").unwrap();
        assert!(listen < advertise_url && advertise_url < broker && broker < triggers);
        assert!(text.contains("\n# Address the admin API listens on (TCP)"));
        assert!(text.contains("\nallow_commands = false\n"));
        assert!(text.contains("\nmax_upload_bytes = 2147483648\n"));
        // The example line is shown as the commented-out key, not as text.
        assert!(!text.contains(EXAMPLE_PREFIX), "{text}");
        let table = markdown_reference();
        assert!(
            table.contains("| `[triggers]` | `allow_commands` | `false` | Let trigger rules run commands on this host"),
            "{table}"
        );
        assert!(
            table.contains("| `[broker]` | `url` | none (e.g. `\"mqtt://flotilla:secret@broker.example:1883\"`) |"),
            "{table}"
        );
    }
}

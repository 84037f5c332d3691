//! `flotilla-agent config default` and the settings reference in docs/agent.md, made from
//! `AgentConfig`'s doc comments (read from config.rs and telemetry/mod.rs as compiled) and
//! its serialised defaults, so each setting's documentation is written once, beside the
//! field.

use crate::config::{AgentCommand, AgentConfig};
use flotilla_common::config_reference::Reference;

/// The sources that declare the settings: their doc comments are the documentation.
const CONFIG_SOURCES: [&str; 2] = [include_str!("config.rs"), include_str!("telemetry/mod.rs")];
/// Around the generated reference in docs/agent.md.
pub const DOCS_START_MARKER: &str = "<!-- agent-config-reference:start (generated from agent/src/config.rs and telemetry/mod.rs; a test keeps it current) -->";
pub const DOCS_END_MARKER: &str = "<!-- agent-config-reference:end -->";

/// The settings reference of `AgentConfig`, from its sources and `AgentConfig::default()`.
pub fn reference() -> Reference {
    let defaults =
        toml::Table::try_from(AgentConfig::default()).expect("the settings serialise as a table");
    Reference::read(&CONFIG_SOURCES, "AgentConfig", &defaults)
}

/// A complete agent.toml for `command`: every key it takes with its documentation as
/// comments and its default, keys without a default (and `[[models]]`,
/// `[telemetry.capture.NAME]`) commented out with an example. The keys only the other
/// command takes are left out, since each command refuses those. Loads back to the defaults.
pub fn default_toml(command: AgentCommand) -> String {
    reference().without(command.refused_keys()).to_toml()
}

/// The reference table docs/agent.md carries between its markers (markers included).
pub fn markdown_reference() -> String {
    reference().to_markdown(DOCS_START_MARKER, DOCS_END_MARKER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::config_reference::{docs_block, fields_serde_expects};
    use std::collections::BTreeSet;

    fn expected_fields(table: &str) -> Vec<String> {
        let text = format!("{table}no_such_key = 1\n");
        let message = toml::from_str::<AgentConfig>(&text)
            .unwrap_err()
            .to_string();
        fields_serde_expects(&message)
    }

    #[test]
    fn config_default_loads_back_to_exactly_the_defaults_for_each_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        for command in [AgentCommand::Run, AgentCommand::Serve] {
            let text = default_toml(command);
            std::fs::write(&path, &text).unwrap();
            let loaded = AgentConfig::load(&path, command)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", command.name()));
            assert_eq!(loaded, AgentConfig::default(), "{}", command.name());
            for refused in command.refused_keys() {
                assert!(!text.contains(&format!("\n{refused} =")), "{refused}");
            }
        }
        assert!(default_toml(AgentCommand::Run).contains("\n[telemetry]\n"));
        assert!(default_toml(AgentCommand::Serve).contains("\n# [[models]]\n"));
    }

    #[test]
    fn every_key_serde_knows_is_in_the_reference_with_a_text_and_a_default_or_an_example() {
        let reference = reference();
        assert!(!reference.header.is_empty());
        let mut known: BTreeSet<String> = BTreeSet::new();
        for field in expected_fields("") {
            if field != "telemetry" {
                known.insert(format!("(top level) {field}"));
            }
        }
        for field in expected_fields("[telemetry]\n") {
            known.insert(format!("[telemetry] {field}"));
        }
        for field in expected_fields("[[models]]\nname = \"a\"\npath = \"b\"\n") {
            known.insert(format!("[[models]] {field}"));
        }
        for field in expected_fields("[telemetry.capture.m]\nper_minute = 1\n") {
            known.insert(format!("[telemetry.capture.NAME] {field}"));
        }
        // The nested tables stand for their keys; "models" and "capture" are not keys.
        known.remove("(top level) models");
        known.remove("[telemetry] capture");
        let documented: BTreeSet<String> = reference
            .all_settings()
            .into_iter()
            .map(|(place, s)| {
                assert!(!s.text.is_empty(), "{place} {} has no doc comment", s.key);
                assert!(
                    s.default.is_some() || s.example.is_some(),
                    "{place} {} needs a default or an `Example:` line",
                    s.key
                );
                format!("{place} {}", s.key)
            })
            .collect();
        assert_eq!(documented, known);
    }

    #[test]
    fn the_examples_make_a_file_run_accepts() {
        // Every commented-out example set, but not inside the commented `[[models]]` and
        // `[telemetry.capture.NAME]` blocks (run refuses models; capture is per model).
        let mut in_nested_block = false;
        let mut text = String::new();
        for line in default_toml(AgentCommand::Run).lines() {
            in_nested_block = (in_nested_block || line.starts_with("# [")) && !line.is_empty();
            match line.strip_prefix("# ") {
                Some(rest)
                    if !in_nested_block
                        && rest.split_once(" = ").is_some_and(|(key, _)| {
                            key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    text.push_str(rest)
                }
                _ => text.push_str(line),
            }
            text.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &text).unwrap();
        let config = AgentConfig::load_for_run(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.hub.as_deref(), Some("https://hub.example:7070"));
    }

    #[test]
    fn docs_agent_md_carries_the_current_reference() {
        let docs = include_str!("../../docs/agent.md");
        let block = docs_block(docs, DOCS_START_MARKER, DOCS_END_MARKER)
            .expect("docs/agent.md has the reference's start and end markers, in order");
        let expected = markdown_reference();
        assert!(
            block == expected,
            "docs/agent.md's settings reference is stale (a key, a default or a text changed in agent/src/config.rs or telemetry/mod.rs); replace it, markers included, with:\n\n{expected}\n"
        );
    }
}

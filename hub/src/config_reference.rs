//! `flotilla-hub config default` and the settings reference in docs/hub.md, made from
//! `HubConfig`'s doc comments (read from config.rs's own text) and its serialised defaults,
//! so each setting's documentation is written once, beside the field.

use std::collections::BTreeMap;

use crate::config::HubConfig;

/// config.rs as compiled: its doc comments are the settings' documentation.
const CONFIG_SOURCE: &str = include_str!("config.rs");
/// A doc line starting with this gives the example shown for a key that has no default.
const EXAMPLE_PREFIX: &str = "Example: ";
/// Around the generated reference in docs/hub.md.
pub const DOCS_START_MARKER: &str = "<!-- hub-config-reference:start (generated from hub/src/config.rs; a test keeps it current) -->";
pub const DOCS_END_MARKER: &str = "<!-- hub-config-reference:end -->";

/// One key of the settings file.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingDoc {
    /// The table it is in, or None at the top level.
    pub table: Option<String>,
    pub key: String,
    /// Its doc comment, line by line, without the example line ("" between paragraphs).
    pub text: Vec<String>,
    /// The example value (TOML) for a key without a default.
    pub example: Option<String>,
    /// Its value in `HubConfig::default()`; None when it has none.
    pub default: Option<toml::Value>,
}

/// One table of the settings file, with the doc comment of its field in `HubConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDoc {
    pub name: String,
    pub text: Vec<String>,
    pub settings: Vec<SettingDoc>,
}

/// Everything the settings file may say, in the order config.rs declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// `HubConfig`'s own doc comment: what the file is.
    pub header: Vec<String>,
    pub top_level: Vec<SettingDoc>,
    pub tables: Vec<TableDoc>,
}

/// A field as declared in a struct of a Rust source.
#[derive(Debug, Clone, PartialEq)]
struct FieldSource {
    name: String,
    type_name: String,
    doc: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct StructSource {
    doc: Vec<String>,
    fields: Vec<FieldSource>,
}

/// The `pub struct`s of `source` with their doc comments and their `pub` fields' names,
/// types and doc comments. Attributes between a doc comment and its item are skipped; what
/// config.rs needs, not a Rust parser.
fn struct_sources(source: &str) -> BTreeMap<String, StructSource> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, StructSource)> = None;
    let mut doc: Vec<String> = Vec::new();
    for line in source.lines() {
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).trim_end().to_owned());
            continue;
        }
        if trimmed.starts_with("#[") {
            continue;
        }
        if let Some((name, item)) = &mut current {
            if line.starts_with('}') {
                structs.insert(std::mem::take(name), std::mem::take(item));
                current = None;
            } else if let Some((field, type_name)) = trimmed
                .strip_prefix("pub ")
                .and_then(|rest| rest.strip_suffix(','))
                .and_then(|rest| rest.split_once(": "))
            {
                item.fields.push(FieldSource {
                    name: field.to_owned(),
                    type_name: type_name.to_owned(),
                    doc: std::mem::take(&mut doc),
                });
            }
        } else if let Some(name) = trimmed
            .strip_prefix("pub struct ")
            .and_then(|rest| rest.strip_suffix(" {"))
        {
            current = Some((
                name.to_owned(),
                StructSource {
                    doc: std::mem::take(&mut doc),
                    fields: Vec::new(),
                },
            ));
        }
        doc.clear();
    }
    structs
}

/// The doc text without its example line, and the example.
fn split_example(doc: &[String]) -> (Vec<String>, Option<String>) {
    let mut text = Vec::new();
    let mut example = None;
    for line in doc {
        match line.strip_prefix(EXAMPLE_PREFIX) {
            Some(value) => example = Some(value.to_owned()),
            None => text.push(line.clone()),
        }
    }
    while text.last().is_some_and(String::is_empty) {
        text.pop();
    }
    (text, example)
}

fn setting(table: Option<&str>, field: &FieldSource, defaults: Option<&toml::Table>) -> SettingDoc {
    let (text, example) = split_example(&field.doc);
    SettingDoc {
        table: table.map(str::to_owned),
        key: field.name.clone(),
        text,
        example,
        default: defaults.and_then(|d| d.get(&field.name)).cloned(),
    }
}

/// The settings reference of `HubConfig`, from config.rs and `HubConfig::default()`.
pub fn reference() -> Reference {
    reference_from(CONFIG_SOURCE, &HubConfig::default())
}

fn reference_from(source: &str, defaults: &HubConfig) -> Reference {
    let structs = struct_sources(source);
    let root = structs
        .get("HubConfig")
        .expect("config.rs declares pub struct HubConfig");
    let defaults = toml::Table::try_from(defaults).expect("the settings serialise as a table");
    let mut reference = Reference {
        header: root.doc.clone(),
        top_level: Vec::new(),
        tables: Vec::new(),
    };
    for field in &root.fields {
        match structs.get(&field.type_name) {
            Some(table) => {
                let table_defaults = defaults.get(&field.name).and_then(toml::Value::as_table);
                reference.tables.push(TableDoc {
                    name: field.name.clone(),
                    text: split_example(&field.doc).0,
                    settings: table
                        .fields
                        .iter()
                        .map(|f| setting(Some(&field.name), f, table_defaults))
                        .collect(),
                });
            }
            None => reference
                .top_level
                .push(setting(None, field, Some(&defaults))),
        }
    }
    reference
}

fn comment_lines(out: &mut String, text: &[String]) {
    for line in text {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str(&format!("# {line}\n"));
        }
    }
}

fn setting_lines(out: &mut String, setting: &SettingDoc) {
    comment_lines(out, &setting.text);
    match (&setting.default, &setting.example) {
        (Some(value), _) => out.push_str(&format!("{} = {value}\n", setting.key)),
        (None, Some(example)) => out.push_str(&format!("# {} = {example}\n", setting.key)),
        (None, None) => panic!(
            "config.rs: {} has no default and no `{EXAMPLE_PREFIX}` line",
            setting.key
        ),
    }
    out.push('\n');
}

/// A complete settings file: every key with its documentation as comments and its default,
/// keys without a default commented out with an example. Parses back to the defaults.
pub fn default_toml() -> String {
    let reference = reference();
    let mut out = String::new();
    comment_lines(&mut out, &reference.header);
    out.push('\n');
    for setting in &reference.top_level {
        setting_lines(&mut out, setting);
    }
    for table in &reference.tables {
        comment_lines(&mut out, &table.text);
        out.push_str(&format!("[{}]\n\n", table.name));
        for setting in &table.settings {
            setting_lines(&mut out, setting);
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown_row(table: &str, setting: &SettingDoc) -> String {
    let default = match (&setting.default, &setting.example) {
        (Some(value), _) => format!("`{value}`"),
        (None, Some(example)) => format!("none (e.g. `{example}`)"),
        (None, None) => "none".to_owned(),
    };
    let meaning = setting
        .text
        .iter()
        .filter(|line| !line.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "| {table} | `{}` | {} | {} |\n",
        setting.key,
        markdown_cell(&default),
        markdown_cell(&meaning)
    )
}

/// The reference table docs/hub.md carries between its markers (markers included).
pub fn markdown_reference() -> String {
    let reference = reference();
    let mut out =
        format!("{DOCS_START_MARKER}\n\n| table | key | default | meaning |\n|---|---|---|---|\n");
    for setting in &reference.top_level {
        out.push_str(&markdown_row("(top level)", setting));
    }
    for table in &reference.tables {
        for setting in &table.settings {
            out.push_str(&markdown_row(&format!("`[{}]`", table.name), setting));
        }
    }
    out.push('\n');
    out.push_str(DOCS_END_MARKER);
    out
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
        // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, ...".
        let expected = message
            .lines()
            .find_map(|line| line.split_once("unknown field `no_such_key`, expected "))
            .map(|(_, expected)| expected.trim_start_matches("one of "))
            .unwrap_or_else(|| panic!("serde names the expected fields: {message}"));
        expected
            .split(", ")
            .flat_map(|part| part.split(" or "))
            .map(|f| f.trim().trim_matches('`').to_owned())
            .collect()
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
        let start = docs
            .find(DOCS_START_MARKER)
            .expect("docs/hub.md has the reference's start marker");
        let end = docs[start..]
            .find(DOCS_END_MARKER)
            .map(|at| start + at + DOCS_END_MARKER.len())
            .expect("docs/hub.md has the reference's end marker after its start");
        let expected = markdown_reference();
        assert!(
            docs[start..end] == expected,
            "docs/hub.md's settings reference is stale (a key, a default or a text changed in hub/src/config.rs); replace it, markers included, with:\n\n{expected}\n"
        );
    }

    #[test]
    fn the_reader_takes_docs_across_attributes_and_paragraphs() {
        let source = r#"
/// The root.
/// Second line.
#[derive(Debug)]
pub struct Root {
    /// A number.
    ///
    /// More about it.
    #[serde(default = "five")]
    pub count: u64,
    pub undocumented: bool,
    /// A table.
    pub inner: Inner,
    fn_like_lines_are_skipped: (),
}

/// Not collected for fields.
pub struct Inner {
    /// Where.
    /// Example: "h:1"
    pub at: Option<String>,
}
"#;
        let structs = struct_sources(source);
        assert_eq!(structs["Root"].doc, ["The root.", "Second line."]);
        assert_eq!(
            structs["Root"].fields,
            [
                FieldSource {
                    name: "count".into(),
                    type_name: "u64".into(),
                    doc: vec!["A number.".into(), "".into(), "More about it.".into()],
                },
                FieldSource {
                    name: "undocumented".into(),
                    type_name: "bool".into(),
                    doc: vec![],
                },
                FieldSource {
                    name: "inner".into(),
                    type_name: "Inner".into(),
                    doc: vec!["A table.".into()],
                },
            ]
        );
        assert_eq!(
            split_example(&structs["Inner"].fields[0].doc),
            (vec!["Where.".to_owned()], Some("\"h:1\"".to_owned()))
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

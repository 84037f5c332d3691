//! A settings file's reference made from the config structs' own doc comments (read from
//! their source text, which the program embeds with `include_str!`) and their serialised
//! defaults: each setting is documented once, beside its field, and both `config default`
//! (a complete commented file) and the markdown table in the docs are made from that.
//!
//! Conventions the reader relies on: every setting is a `pub` field of a `pub struct`; a
//! field whose type is another of the structs read is a table (`[name]`), `Vec<S>` an array
//! of tables (`[[name]]`), `HashMap<String, S>` / `BTreeMap<String, S>` named tables
//! (`[name.NAME]`); a doc line `Example: VALUE` gives the example for a key without a
//! default; fields under `#[serde(skip)]` are not settings.

use std::collections::BTreeMap;

/// A doc line starting with this gives the example shown for a key that has no default.
pub const EXAMPLE_PREFIX: &str = "Example: ";

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
    /// Its value in the defaults; None when it has none.
    pub default: Option<toml::Value>,
    /// For an array of tables or named tables: the keys each of them takes.
    pub nested: Option<Nested>,
}

/// The keys of each table in an array of tables (`[[models]]`) or of named tables
/// (`[telemetry.capture.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Nested {
    /// How the table header reads: `[[models]]`, `[telemetry.capture.NAME]`.
    pub header: String,
    pub settings: Vec<SettingDoc>,
}

/// One table of the settings file, with the doc comment of its field in the root struct.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDoc {
    pub name: String,
    pub text: Vec<String>,
    pub settings: Vec<SettingDoc>,
}

/// Everything the settings file may say, in the order the source declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// The root struct's own doc comment: what the file is.
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
/// types and doc comments. Attributes between a doc comment and its item are skipped
/// (a `#[serde(skip)]` drops its field); what config files need, not a Rust parser.
fn struct_sources(source: &str) -> BTreeMap<String, StructSource> {
    let mut structs = BTreeMap::new();
    let mut current: Option<(String, StructSource)> = None;
    let mut doc: Vec<String> = Vec::new();
    let mut skipped = false;
    for line in source.lines() {
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).trim_end().to_owned());
            continue;
        }
        if trimmed.starts_with("#[") {
            skipped |= trimmed.starts_with("#[serde(skip)]");
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
                && !skipped
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
        skipped = false;
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

/// For `Vec<S>` or a map of S: S and whether it is an array (else named tables).
fn element_struct(type_name: &str) -> Option<(&str, bool)> {
    if let Some(inner) = type_name
        .strip_prefix("Vec<")
        .and_then(|t| t.strip_suffix('>'))
    {
        return Some((inner, true));
    }
    ["HashMap<String, ", "BTreeMap<String, "]
        .iter()
        .find_map(|prefix| type_name.strip_prefix(prefix))
        .and_then(|t| t.strip_suffix('>'))
        .map(|inner| (inner, false))
}

struct Reader<'a> {
    structs: &'a BTreeMap<String, StructSource>,
}

impl Reader<'_> {
    fn setting(
        &self,
        table: Option<&str>,
        field: &FieldSource,
        defaults: Option<&toml::Table>,
    ) -> SettingDoc {
        let (text, example) = split_example(&field.doc);
        let nested = element_struct(&field.type_name).and_then(|(element, array)| {
            let element = self.structs.get(element)?;
            let path = match table {
                Some(table) => format!("{table}.{}", field.name),
                None => field.name.clone(),
            };
            let header = if array {
                format!("[[{path}]]")
            } else {
                format!("[{path}.NAME]")
            };
            let settings = element
                .fields
                .iter()
                .map(|f| self.setting(Some(&header), f, None))
                .collect();
            Some(Nested { header, settings })
        });
        SettingDoc {
            table: table.map(str::to_owned),
            key: field.name.clone(),
            text,
            example,
            default: defaults
                .and_then(|d| d.get(&field.name))
                .cloned()
                .filter(|_| nested.is_none()),
            nested,
        }
    }
}

impl Reference {
    /// The reference of struct `root` declared in `sources` (the config's source files),
    /// with `defaults` (the root's `Default`, serialised).
    pub fn read(sources: &[&str], root: &str, defaults: &toml::Table) -> Reference {
        let structs = struct_sources(&sources.join("\n"));
        let reader = Reader { structs: &structs };
        let root_struct = structs
            .get(root)
            .unwrap_or_else(|| panic!("the config sources declare pub struct {root}"));
        let mut reference = Reference {
            header: root_struct.doc.clone(),
            top_level: Vec::new(),
            tables: Vec::new(),
        };
        for field in &root_struct.fields {
            match structs.get(&field.type_name) {
                Some(table) => {
                    let table_defaults = defaults.get(&field.name).and_then(toml::Value::as_table);
                    reference.tables.push(TableDoc {
                        name: field.name.clone(),
                        text: split_example(&field.doc).0,
                        settings: table
                            .fields
                            .iter()
                            .map(|f| reader.setting(Some(&field.name), f, table_defaults))
                            .collect(),
                    });
                }
                None => reference
                    .top_level
                    .push(reader.setting(None, field, Some(defaults))),
            }
        }
        reference
    }

    /// The reference without these top-level keys and tables (the keys one command of a
    /// shared file refuses).
    pub fn without(&self, keys: &[&str]) -> Reference {
        let mut kept = self.clone();
        kept.top_level.retain(|s| !keys.contains(&s.key.as_str()));
        kept.tables.retain(|t| !keys.contains(&t.name.as_str()));
        kept
    }

    /// Every setting, nested ones included, as `(where, setting)`: where is "(top level)",
    /// `[table]`, `[[array]]` or `[table.map.NAME]`.
    pub fn all_settings(&self) -> Vec<(String, &SettingDoc)> {
        fn walk<'a>(
            place: String,
            setting: &'a SettingDoc,
            out: &mut Vec<(String, &'a SettingDoc)>,
        ) {
            match &setting.nested {
                Some(nested) => {
                    for inner in &nested.settings {
                        walk(nested.header.clone(), inner, out);
                    }
                }
                None => out.push((place, setting)),
            }
        }
        let mut out = Vec::new();
        for setting in &self.top_level {
            walk("(top level)".to_owned(), setting, &mut out);
        }
        for table in &self.tables {
            for setting in &table.settings {
                walk(format!("[{}]", table.name), setting, &mut out);
            }
        }
        out
    }

    /// A complete settings file: every key with its documentation as comments and its
    /// default; keys without a default, and arrays or maps of tables, commented out with an
    /// example. Parses back to the defaults.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        comment_lines(&mut out, "# ", &self.header);
        out.push('\n');
        for setting in &self.top_level {
            setting_lines(&mut out, setting);
        }
        for table in &self.tables {
            comment_lines(&mut out, "# ", &table.text);
            out.push_str(&format!("[{}]\n\n", table.name));
            for setting in &table.settings {
                setting_lines(&mut out, setting);
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    }

    /// The markdown table of every setting, between `start` and `end` (markers included),
    /// as the docs carry it.
    pub fn to_markdown(&self, start: &str, end: &str) -> String {
        let mut out =
            format!("{start}\n\n| table | key | default | meaning |\n|---|---|---|---|\n");
        for (place, setting) in self.all_settings() {
            let place = if place.starts_with('[') {
                format!("`{place}`")
            } else {
                place
            };
            out.push_str(&markdown_row(&place, setting));
        }
        out.push('\n');
        out.push_str(end);
        out
    }
}

fn comment_lines(out: &mut String, prefix: &str, text: &[String]) {
    for line in text {
        if line.is_empty() {
            out.push_str(prefix.trim_end());
            out.push('\n');
        } else {
            out.push_str(&format!("{prefix}{line}\n"));
        }
    }
}

fn setting_lines(out: &mut String, setting: &SettingDoc) {
    comment_lines(out, "# ", &setting.text);
    if let Some(nested) = &setting.nested {
        // Commented out whole: uncommenting one level gives a valid table.
        out.push_str(&format!("# {}\n", nested.header));
        for inner in &nested.settings {
            comment_lines(out, "# # ", &inner.text);
            out.push_str(&format!("# {}\n", value_line(inner, "")));
        }
        out.push('\n');
        return;
    }
    out.push_str(&value_line(setting, "# "));
    out.push('\n');
    out.push('\n');
}

/// `key = default`, or `key = example` behind `without_default`.
fn value_line(setting: &SettingDoc, without_default: &str) -> String {
    match (&setting.default, &setting.example) {
        (Some(value), _) => format!("{} = {value}", setting.key),
        (None, Some(example)) => format!("{without_default}{} = {example}", setting.key),
        (None, None) => panic!(
            "config source: {} has no default and no `{EXAMPLE_PREFIX}` line",
            setting.key
        ),
    }
}

fn markdown_row(place: &str, setting: &SettingDoc) -> String {
    let cell = |text: &str| text.replace('|', "\\|");
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
        "| {place} | `{}` | {} | {} |\n",
        setting.key,
        cell(&default),
        cell(&meaning)
    )
}

/// The part of `docs` from `start` to `end`, markers included, if both are there in order.
pub fn docs_block<'a>(docs: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = docs.find(start)?;
    let to = docs[from..].find(end).map(|at| from + at + end.len())?;
    Some(&docs[from..to])
}

/// The field names serde's derive lists in its unknown-field error (`unknown field
/// `no_such_key`, expected ...`), so a test can hold a reference to what serde knows.
pub fn fields_serde_expects(message: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = r#"
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
    /// Items.
    pub items: Vec<Item>,
    /// Not a setting.
    #[serde(skip)]
    pub engine: Engine,
    fn_like_lines_are_skipped: (),
}

/// Not collected for fields.
pub struct Inner {
    /// Where.
    /// Example: "h:1"
    pub at: Option<String>,
    /// Per name.
    pub named: HashMap<String, Item>,
}

pub struct Item {
    /// Its name.
    /// Example: "a"
    pub name: String,
}
"#;

    #[test]
    fn the_reader_takes_docs_across_attributes_and_paragraphs_and_skips_skipped_fields() {
        let structs = struct_sources(SOURCE);
        assert_eq!(structs["Root"].doc, ["The root.", "Second line."]);
        let names: Vec<&str> = structs["Root"]
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["count", "undocumented", "inner", "items"]);
        assert_eq!(
            structs["Root"].fields[0].doc,
            ["A number.", "", "More about it."]
        );
        assert_eq!(
            split_example(&structs["Inner"].fields[0].doc),
            (vec!["Where.".to_owned()], Some("\"h:1\"".to_owned()))
        );
    }

    #[test]
    fn arrays_and_maps_of_tables_are_nested_and_commented_out() {
        let defaults: toml::Table =
            toml::from_str("count = 5\nundocumented = false\nitems = []\n[inner]\nnamed = {}\n")
                .unwrap();
        let reference = Reference::read(&[SOURCE], "Root", &defaults);
        let places: Vec<(String, String)> = reference
            .all_settings()
            .into_iter()
            .map(|(place, s)| (place, s.key.clone()))
            .collect();
        assert_eq!(
            places,
            [
                ("(top level)".into(), "count".into()),
                ("(top level)".into(), "undocumented".into()),
                ("[[items]]".into(), "name".into()),
                ("[inner]".into(), "at".into()),
                ("[inner.named.NAME]".into(), "name".into()),
            ]
        );
        let text = reference.to_toml();
        assert!(
            text.contains("# Items.\n# [[items]]\n# # Its name.\n# name = \"a\"\n"),
            "{text}"
        );
        assert!(text.contains("# [inner.named.NAME]\n"), "{text}");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["count"].as_integer(), Some(5));
        assert!(parsed.get("items").is_none());
        let table = reference.to_markdown("<!-- s -->", "<!-- e -->");
        assert!(
            table.contains("| `[[items]]` | `name` | none (e.g. `\"a\"`) | Its name. |"),
            "{table}"
        );
        assert_eq!(
            docs_block(&format!("x\n{table}\ny"), "<!-- s -->", "<!-- e -->"),
            Some(table.as_str())
        );
    }

    #[test]
    fn serdes_expected_fields_are_read_from_its_message() {
        assert_eq!(
            fields_serde_expects("unknown field `no_such_key`, expected one of `a`, `b`, `c`"),
            ["a", "b", "c"]
        );
        assert_eq!(
            fields_serde_expects("unknown field `no_such_key`, expected `a` or `b`"),
            ["a", "b"]
        );
    }
}

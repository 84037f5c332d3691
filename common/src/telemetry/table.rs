//! Tables of training data for reference profiles: CSV with a header row, or a NumPy `.npy`
//! array (`[N]` or `[N, F]`, little-endian f4/f8/i4/i8, C order). CSV columns whose values
//! are not all numbers are categorical.

use std::path::Path;

use super::batch::NamedProfile;
use crate::sketch::{CategoricalProfile, NumericProfile, Profile};

#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Numeric(Vec<Option<f32>>),
    Text(Vec<Option<String>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
}

/// Reads `.csv` or `.npy` by extension.
pub fn read_table(path: &Path) -> Result<Table, TableError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TableError::Read {
        path: display.clone(),
        source,
    })?;
    let format = |message: String| TableError::Format {
        path: display.clone(),
        message,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => parse_npy(&bytes).map_err(format),
        Some("csv") | Some("txt") => {
            let text = String::from_utf8(bytes).map_err(|_| format("not UTF-8 text".into()))?;
            parse_csv(&text).map_err(format)
        }
        _ => Err(format(
            "expected a .csv (with a header row) or a .npy file".into(),
        )),
    }
}

fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

fn is_null(field: &str) -> bool {
    matches!(field, "" | "NA" | "N/A" | "null" | "NULL" | "None")
}

pub fn parse_csv(text: &str) -> Result<Table, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or("the file is empty; a header row is needed")?;
    let names: Vec<String> = split_csv_line(header)
        .into_iter()
        .map(|n| n.trim().to_owned())
        .collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let fields = split_csv_line(line);
        if fields.len() != names.len() {
            return Err(format!(
                "row {} has {} fields but the header names {}",
                i + 2,
                fields.len(),
                names.len()
            ));
        }
        for (column, field) in cells.iter_mut().zip(fields) {
            column.push(field.trim().to_owned());
        }
        rows += 1;
    }
    let columns = cells
        .into_iter()
        .map(|values| {
            let numeric = values
                .iter()
                .all(|v| is_null(v) || v.parse::<f32>().is_ok());
            if numeric {
                Column::Numeric(values.iter().map(|v| v.parse::<f32>().ok()).collect())
            } else {
                Column::Text(
                    values
                        .into_iter()
                        .map(|v| (!is_null(&v)).then_some(v))
                        .collect(),
                )
            }
        })
        .collect();
    Ok(Table {
        names,
        columns,
        rows,
    })
}

pub fn parse_npy(bytes: &[u8]) -> Result<Table, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a NumPy .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|d| d.strip_prefix('\''))
        .and_then(|d| d.split('\'').next())
        .ok_or("no dtype in the .npy header")?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported; save with C order".into());
    }
    let shape_text = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape ({shape_text})")))
        .collect::<Result<_, _>>()?;
    let (rows, width) = match shape.as_slice() {
        [n] => (*n, 1),
        [n, f] => (*n, *f),
        _ => return Err(format!("expected a 1-D or 2-D array, got shape {shape:?}")),
    };
    let size = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => {
            return Err(format!(
                "dtype {other} is not supported (use float32, float64, int32 or int64)"
            ));
        }
    };
    let data = &bytes[start + header_len..];
    let needed = rows
        .checked_mul(width)
        .and_then(|n| n.checked_mul(size))
        .filter(|_| width > 0)
        .ok_or_else(|| format!("shape {shape:?} is not a table of rows and columns"))?;
    if data.len() < needed {
        return Err(format!(
            "truncated: shape {shape:?} needs {needed} bytes of data, the file has {}",
            data.len()
        ));
    }
    let value = |i: usize| -> f32 {
        let b = &data[i * size..(i + 1) * size];
        match descr {
            "<f4" => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            "<i4" => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f32,
            "<f8" => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            _ => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        }
    };
    let columns = (0..width)
        .map(|c| Column::Numeric((0..rows).map(|r| Some(value(r * width + c))).collect()))
        .collect();
    Ok(Table {
        names: (0..width).map(|i| format!("f{i}")).collect(),
        columns,
        rows,
    })
}

/// A version's reference profile set from a CSV or `.npy` file of its training data: the
/// column names (the feature names) and the encoded profiles (KLL k = `REFERENCE_K`), as
/// the hub stores them.
pub fn reference_from_file(
    path: &Path,
    categorical: &[String],
) -> Result<(Vec<String>, Vec<u8>), TableError> {
    let table = read_table(path)?;
    if table.rows == 0 {
        return Err(TableError::Format {
            path: path.display().to_string(),
            message: "the table has no rows".into(),
        });
    }
    let profiles = profile_table(&table, categorical, crate::sketch::REFERENCE_K);
    Ok((
        table.names.clone(),
        super::encode_reference(table.rows as u64, &profiles),
    ))
}

/// One profile per column: numeric columns as KLL sketches with accuracy `k`, text columns
/// (and numeric ones named in `categorical`) as value counts.
pub fn profile_table(table: &Table, categorical: &[String], k: u16) -> Vec<NamedProfile> {
    table
        .names
        .iter()
        .zip(&table.columns)
        .map(|(name, column)| {
            let profile = match column {
                Column::Numeric(values) if categorical.contains(name) => {
                    let mut p = CategoricalProfile::new();
                    values
                        .iter()
                        .for_each(|v| p.update(v.map(|v| v.to_string()).as_deref()));
                    Profile::Categorical(p)
                }
                Column::Numeric(values) => {
                    let mut p = NumericProfile::new(k);
                    values.iter().for_each(|&v| p.update(v));
                    Profile::Numeric(p)
                }
                Column::Text(values) => {
                    let mut p = CategoricalProfile::new();
                    values.iter().for_each(|v| p.update(v.as_deref()));
                    Profile::Categorical(p)
                }
            };
            NamedProfile {
                name: name.clone(),
                profile,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_nulls_and_text() {
        let t = parse_csv("a,b,\"c, d\"\n1,x,2.5\n,\"y\"\"\",NaN\n").unwrap();
        assert_eq!(t.names, ["a", "b", "c, d"]);
        assert_eq!(t.rows, 2);
        assert_eq!(t.columns[0], Column::Numeric(vec![Some(1.0), None]));
        assert_eq!(
            t.columns[1],
            Column::Text(vec![Some("x".into()), Some("y\"".into())])
        );
        assert!(
            parse_csv("a,b\n1\n")
                .unwrap_err()
                .contains("row 2 has 1 fields")
        );
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn npy_float64_matrix() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        for v in [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let t = parse_npy(&bytes).unwrap();
        assert_eq!((t.rows, t.names.len()), (2, 3));
        assert_eq!(t.columns[1], Column::Numeric(vec![Some(2.0), Some(5.0)]));
        assert!(
            parse_npy(&bytes[..bytes.len() - 8])
                .unwrap_err()
                .contains("truncated")
        );
        let huge = String::from_utf8_lossy(&bytes).replace("(2, 3)", "(4611686018427387904, 4)");
        assert!(
            parse_npy(huge.as_bytes()).is_err(),
            "an overflowing shape is refused, not a panic"
        );
    }
}

//! Device inputs: rows drawn from a dataset (splitmix64, a seed per device), with the
//! scenario's drift applied to a cohort from its start time. Pure.

use crate::scenario::DriftInjection;

#[derive(Debug, Clone)]
pub struct Dataset {
    pub names: Vec<String>,
    /// Row-major, `names.len()` values a row.
    pub values: Vec<f32>,
}

impl Dataset {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Dataset> {
        let table = flotilla_common::telemetry::read_table(path)?;
        let mut values = Vec::with_capacity(table.rows * table.names.len());
        for row in 0..table.rows {
            for column in &table.columns {
                match column {
                    flotilla_common::telemetry::Column::Numeric(v) => {
                        values.push(v[row].unwrap_or(f32::NAN))
                    }
                    flotilla_common::telemetry::Column::Text(_) => {
                        anyhow::bail!("{}: text columns cannot be model inputs", path.display())
                    }
                }
            }
        }
        if table.rows == 0 {
            anyhow::bail!("{} has no rows", path.display());
        }
        Ok(Dataset {
            names: table.names,
            values,
        })
    }

    pub fn width(&self) -> usize {
        self.names.len()
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.width()
    }
}

/// One device's input generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    state: u64,
}

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `rows` rows, with every drift in `active` applied (in order).
    pub fn rows(
        &mut self,
        data: &Dataset,
        rows: usize,
        active: &[(usize, &DriftInjection)],
    ) -> Vec<f32> {
        let width = data.width();
        let mut out = Vec::with_capacity(rows * width);
        for _ in 0..rows {
            let row = (self.next() % data.rows() as u64) as usize;
            let start = out.len();
            out.extend_from_slice(&data.values[row * width..(row + 1) * width]);
            for (column, drift) in active {
                let v = &mut out[start + column];
                *v = *v * drift.scale + drift.shift;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_applies_to_its_column_only() {
        let data = Dataset {
            names: vec!["a".into(), "b".into()],
            values: vec![1.0, 2.0, 3.0, 4.0],
        };
        let drift = DriftInjection {
            cohort: "c".into(),
            from_seconds: 0.0,
            feature: "b".into(),
            shift: 10.0,
            scale: 2.0,
        };
        let rows = Sampler::new(1).rows(&data, 50, &[(1, &drift)]);
        for row in rows.chunks(2) {
            assert!(row[0] == 1.0 || row[0] == 3.0);
            assert_eq!(row[1], if row[0] == 1.0 { 14.0 } else { 18.0 });
        }
    }
}

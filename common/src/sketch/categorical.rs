//! A categorical feature's or class output's profile for one window: exact counts while
//! there are at most 256 distinct values, then an Apache DataSketches frequent-items sketch
//! plus an HLL sketch of the distinct count (docs/drift.md). Merges are associative and
//! commutative: exact counts add; once either side is approximate the result is.

use std::collections::BTreeMap;

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};
use datasketches::hll::{HllSketch, HllType, HllUnion};

use super::envelope::{self, Kind, ProfileError};

/// Distinct values kept exactly before switching to sketches.
pub const EXACT_LIMIT: usize = 256;
/// Frequent-items map size (about 0.7% of the stream as the worst-case count error).
const FREQUENT_MAP_SIZE: usize = 512;
/// HLL register count 2^11: about 2.3% relative error on the distinct count.
const HLL_LG_K: u8 = 11;

#[derive(Debug, Clone)]
enum Counts {
    Exact(BTreeMap<String, u64>),
    Sketched {
        frequent: Box<FrequentItemsSketch<String>>,
        distinct: Box<HllSketch>,
    },
}

#[derive(Debug, Clone)]
pub struct CategoricalProfile {
    counts: Counts,
    /// Rows seen, including nulls.
    pub count: u64,
    pub nulls: u64,
}

impl Default for CategoricalProfile {
    fn default() -> Self {
        CategoricalProfile::new()
    }
}

fn new_frequent() -> FrequentItemsSketch<String> {
    FrequentItemsSketch::new(FREQUENT_MAP_SIZE).expect("map size is a power of two")
}

fn new_hll() -> HllSketch {
    HllSketch::new(HLL_LG_K, HllType::Hll8).expect("lg k is in range")
}

fn sketched_from(exact: &BTreeMap<String, u64>) -> Counts {
    let mut frequent = new_frequent();
    let mut distinct = new_hll();
    for (value, &n) in exact {
        frequent.update_with_count(value.clone(), n);
        distinct.update(value.as_str());
    }
    Counts::Sketched {
        frequent: Box::new(frequent),
        distinct: Box::new(distinct),
    }
}

fn sketched_from_counts(counts: &Counts) -> Counts {
    match counts {
        Counts::Exact(map) => sketched_from(map),
        other => other.clone(),
    }
}

impl CategoricalProfile {
    pub fn new() -> CategoricalProfile {
        CategoricalProfile {
            counts: Counts::Exact(BTreeMap::new()),
            count: 0,
            nulls: 0,
        }
    }

    /// Adds one value (`None` is a null).
    pub fn update(&mut self, value: Option<&str>) {
        self.count += 1;
        let Some(value) = value else {
            self.nulls += 1;
            return;
        };
        match &mut self.counts {
            Counts::Exact(map) => {
                if let Some(n) = map.get_mut(value) {
                    *n += 1;
                    return;
                }
                map.insert(value.to_owned(), 1);
                if map.len() > EXACT_LIMIT {
                    self.counts = sketched_from(map);
                }
            }
            Counts::Sketched { frequent, distinct } => {
                frequent.update(value.to_owned());
                distinct.update(value);
            }
        }
    }

    /// Values counted (not null).
    pub fn valid(&self) -> u64 {
        self.count - self.nulls
    }

    pub fn is_exact(&self) -> bool {
        matches!(self.counts, Counts::Exact(_))
    }

    /// Distinct values: exact, or the HLL estimate.
    pub fn distinct(&self) -> f64 {
        match &self.counts {
            Counts::Exact(map) => map.len() as f64,
            Counts::Sketched { distinct, .. } => distinct.estimate(),
        }
    }

    /// Value counts, largest first: every value when exact, else the frequent items (their
    /// estimates; what is missing is in the long tail).
    pub fn frequencies(&self) -> Vec<(String, u64)> {
        let mut rows: Vec<(String, u64)> = match &self.counts {
            Counts::Exact(map) => map.iter().map(|(k, &v)| (k.clone(), v)).collect(),
            Counts::Sketched { frequent, .. } => frequent
                .frequent_items(ErrorType::NoFalsePositives)
                .into_iter()
                .map(|row| (row.item().clone(), row.estimate()))
                .collect(),
        };
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rows
    }

    /// The values as a DataSketches frequent-items image (strings): exact counts are written
    /// as a sketch too, so Python's `datasketches.frequent_strings_sketch` reads either.
    pub fn frequent_items_bytes(&self) -> Vec<u8> {
        match sketched_from_counts(&self.counts) {
            Counts::Sketched { frequent, .. } => frequent.serialize(),
            Counts::Exact(_) => unreachable!("converted to a sketch"),
        }
    }

    pub fn merge(&mut self, other: &CategoricalProfile) {
        self.count = self.count.saturating_add(other.count);
        self.nulls = self.nulls.saturating_add(other.nulls);
        let merged = match (&self.counts, &other.counts) {
            (Counts::Exact(a), Counts::Exact(b)) => {
                let mut map = a.clone();
                for (k, &v) in b {
                    *map.entry(k.clone()).or_insert(0) += v;
                }
                if map.len() > EXACT_LIMIT {
                    sketched_from(&map)
                } else {
                    Counts::Exact(map)
                }
            }
            (a, b) => {
                let to_sketch = sketched_from_counts;
                let (
                    Counts::Sketched { frequent, distinct },
                    Counts::Sketched {
                        frequent: f2,
                        distinct: d2,
                    },
                ) = (to_sketch(a), to_sketch(b))
                else {
                    unreachable!("both sides were converted to sketches")
                };
                let mut frequent = frequent;
                frequent.merge(&f2);
                let mut union = HllUnion::new(HLL_LG_K).expect("lg k is in range");
                union.update(&distinct);
                union.update(&d2);
                Counts::Sketched {
                    frequent,
                    distinct: Box::new(union.to_sketch(HllType::Hll8)),
                }
            }
        };
        self.counts = merged;
    }

    /// Serialised: the versioned envelope, then exact counts, or the DataSketches
    /// frequent-items and HLL binary images.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = envelope::header(Kind::Categorical);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.nulls.to_le_bytes());
        match &self.counts {
            Counts::Exact(map) => {
                out.push(0);
                out.extend_from_slice(&(map.len() as u32).to_le_bytes());
                for (value, n) in map {
                    envelope::put_bytes(&mut out, value.as_bytes());
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
            Counts::Sketched { frequent, distinct } => {
                out.push(1);
                envelope::put_bytes(&mut out, &frequent.serialize());
                envelope::put_bytes(&mut out, &distinct.serialize());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<CategoricalProfile, ProfileError> {
        let mut r = envelope::Reader::after_header(bytes, Kind::Categorical)?;
        let count = r.u64()?;
        let nulls = r.u64()?;
        let counts = match r.u8()? {
            0 => {
                let n = r.u32()? as usize;
                if n > EXACT_LIMIT {
                    return Err(ProfileError::Sketch(format!(
                        "{n} exact values is more than the limit of {EXACT_LIMIT}"
                    )));
                }
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let value = String::from_utf8(r.bytes()?.to_vec())
                        .map_err(|_| ProfileError::Sketch("value is not UTF-8".into()))?;
                    map.insert(value, r.u64()?);
                }
                Counts::Exact(map)
            }
            1 => {
                let frequent = FrequentItemsSketch::<String>::deserialize(r.bytes()?)
                    .map_err(|e| ProfileError::Sketch(e.to_string()))?;
                let distinct = HllSketch::deserialize(r.bytes()?)
                    .map_err(|e| ProfileError::Sketch(e.to_string()))?;
                Counts::Sketched {
                    frequent: Box::new(frequent),
                    distinct: Box::new(distinct),
                }
            }
            other => {
                return Err(ProfileError::Sketch(format!(
                    "unknown categorical layout {other}"
                )));
            }
        };
        r.finish()?;
        if nulls > count {
            return Err(ProfileError::Sketch("more nulls than rows".into()));
        }
        // The values must account for every non-null row, or shares would not sum to one.
        let counted = match &counts {
            Counts::Exact(map) => map.values().try_fold(0u64, |a, &b| a.checked_add(b)),
            Counts::Sketched { frequent, .. } => Some(frequent.total_weight()),
        };
        if counted != Some(count - nulls) {
            return Err(ProfileError::Sketch(format!(
                "value counts ({counted:?}) do not add up to the {} non-null rows",
                count - nulls
            )));
        }
        Ok(CategoricalProfile {
            counts,
            count,
            nulls,
        })
    }
}

/// Drift between two categorical profiles over their value frequencies: Jensen–Shannon
/// distance (natural log) and L∞, the largest change in any value's share. Values outside
/// either side's frequent items share one "other" bucket. `None` when either side is empty.
pub fn categorical_drift(
    reference: &CategoricalProfile,
    current: &CategoricalProfile,
) -> Option<(f64, f64)> {
    let (n_ref, n_cur) = (reference.valid(), current.valid());
    if n_ref == 0 || n_cur == 0 {
        return None;
    }
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        reference.frequencies().into_iter().collect(),
        current.frequencies().into_iter().collect(),
    );
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut p = Vec::with_capacity(keys.len() + 1);
    let mut q = Vec::with_capacity(keys.len() + 1);
    for key in keys {
        p.push(*a.get(key).unwrap_or(&0) as f64 / n_ref as f64);
        q.push(*b.get(key).unwrap_or(&0) as f64 / n_cur as f64);
    }
    p.push((1.0 - p.iter().sum::<f64>()).max(0.0));
    q.push((1.0 - q.iter().sum::<f64>()).max(0.0));
    let linf = p
        .iter()
        .zip(&q)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let (_, js, _) = super::drift::binned_scores(&p, &q);
    Some((js, linf))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn profile(values: &[u32]) -> CategoricalProfile {
        let mut p = CategoricalProfile::new();
        values.iter().for_each(|v| p.update(Some(&v.to_string())));
        p
    }

    #[test]
    fn exact_until_the_limit_then_sketched() {
        let mut p = profile(&[1, 1, 2]);
        p.update(None);
        assert_eq!((p.count, p.nulls, p.valid()), (4, 1, 3));
        assert_eq!(p.frequencies(), vec![("1".into(), 2), ("2".into(), 1)]);
        let many = profile(&(0..10_000).map(|i| i % 1000).collect::<Vec<_>>());
        assert!(!many.is_exact());
        assert!(
            (many.distinct() - 1000.0).abs() < 60.0,
            "{}",
            many.distinct()
        );
        let skewed = profile(
            &(0..10_000)
                .map(|i| if i % 2 == 0 { 7 } else { i })
                .collect::<Vec<_>>(),
        );
        assert_eq!(skewed.frequencies()[0].0, "7");
        assert!(skewed.frequencies()[0].1 >= 5000);
    }

    #[test]
    fn bytes_round_trip_both_layouts_and_junk_is_refused() {
        for p in [profile(&[1, 2, 2]), profile(&(0..3000).collect::<Vec<_>>())] {
            let back = CategoricalProfile::from_bytes(&p.to_bytes()).unwrap();
            assert_eq!(
                (back.count, back.nulls, back.is_exact()),
                (p.count, p.nulls, p.is_exact())
            );
            assert_eq!(back.frequencies(), p.frequencies());
            let bytes = p.to_bytes();
            assert!(CategoricalProfile::from_bytes(&bytes[..bytes.len() - 3]).is_err());
        }
        let numeric = super::super::NumericProfile::new(200).to_bytes();
        assert!(matches!(
            CategoricalProfile::from_bytes(&numeric),
            Err(ProfileError::WrongKind { .. })
        ));
    }

    #[test]
    fn drift_on_frequencies() {
        let a = profile(&(0..10_000).map(|i| i % 4).collect::<Vec<_>>());
        assert_eq!(categorical_drift(&a, &a), Some((0.0, 0.0)));
        // Value 0 goes from 25% to 50% of the rows.
        let b = profile(
            &(0..10_000)
                .map(|i| if i % 2 == 0 { 0 } else { i % 4 })
                .collect::<Vec<_>>(),
        );
        let (js, linf) = categorical_drift(&a, &b).unwrap();
        assert!((linf - 0.25).abs() < 1e-9, "{linf}");
        assert!(js > 0.1, "{js}");
    }

    proptest! {
        #[test]
        fn merge_is_associative_and_commutative(a in prop::collection::vec(0u32..400, 0..300),
                                                 b in prop::collection::vec(0u32..400, 0..300),
                                                 c in prop::collection::vec(0u32..50, 0..300)) {
            let (pa, pb, pc) = (profile(&a), profile(&b), profile(&c));
            let mut ab_c = pa.clone();
            ab_c.merge(&pb);
            ab_c.merge(&pc);
            let mut bc = pb.clone();
            bc.merge(&pc);
            let mut a_bc = pa.clone();
            a_bc.merge(&bc);
            let mut c_b_a = pc.clone();
            c_b_a.merge(&pb);
            c_b_a.merge(&pa);
            for other in [&a_bc, &c_b_a] {
                prop_assert_eq!((ab_c.count, ab_c.is_exact()), (other.count, other.is_exact()));
                if ab_c.is_exact() {
                    prop_assert_eq!(ab_c.frequencies(), other.frequencies());
                } else {
                    prop_assert!((ab_c.distinct() - other.distinct()).abs() <= 0.05 * ab_c.distinct());
                }
            }
        }
    }
}

//! A numeric feature's profile for one window: an Apache DataSketches KLL sketch (f32) plus
//! exact count, nulls, NaN, min, max, sum and sum of squares. Profiles merge (associative and
//! commutative up to KLL's randomised compaction, exactly for the counters) so windows and
//! devices combine into fleet-wide views.

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};

use super::envelope::{self, Kind, ProfileError};

/// KLL accuracy parameter on devices (about 1.3% normalised rank error).
pub const DEVICE_K: u16 = 200;
/// KLL parameter for reference profiles built from training data.
pub const REFERENCE_K: u16 = 1024;
/// KLL parameter for prediction scores on devices.
pub const SCORE_K: u16 = 1024;

#[derive(Debug, Clone)]
pub struct NumericProfile {
    kll: KllSketch<KllFloat<f32>>,
    /// Rows seen, including nulls and NaN.
    pub count: u64,
    pub nulls: u64,
    pub non_finite: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl NumericProfile {
    pub fn new(k: u16) -> NumericProfile {
        NumericProfile {
            kll: KllSketch::new(k).expect("k values used by Flotilla are valid"),
            count: 0,
            nulls: 0,
            non_finite: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
        }
    }

    /// Adds one value (`None` is a null).
    pub fn update(&mut self, value: Option<f32>) {
        self.count += 1;
        let Some(value) = value else {
            self.nulls += 1;
            return;
        };
        // NaN and infinities are counted, never put into the quantiles or moments.
        let Some(item) = value
            .is_finite()
            .then(|| KllFloat::<f32>::new(value).ok())
            .flatten()
        else {
            self.non_finite += 1;
            return;
        };
        self.kll.update(item);
        let v = value as f64;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.sum_sq += v * v;
    }

    /// Values in the sketch (not null, not NaN).
    pub fn valid(&self) -> u64 {
        self.kll.n()
    }

    pub fn merge(&mut self, other: &NumericProfile) -> Result<(), ProfileError> {
        if self.kll.k() != other.kll.k() && !self.kll.is_empty() && !other.kll.is_empty() {
            return Err(ProfileError::DifferentK(self.kll.k(), other.kll.k()));
        }
        self.kll
            .merge(&other.kll)
            .map_err(|e| ProfileError::Sketch(e.to_string()))?;
        self.count = self.count.saturating_add(other.count);
        self.nulls = self.nulls.saturating_add(other.nulls);
        self.non_finite = self.non_finite.saturating_add(other.non_finite);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        Ok(())
    }

    pub fn mean(&self) -> Option<f64> {
        (self.valid() > 0).then(|| self.sum / self.valid() as f64)
    }

    /// Population standard deviation of the valid values.
    pub fn std_dev(&self) -> Option<f64> {
        let n = self.valid() as f64;
        let mean = self.mean()?;
        Some((self.sum_sq / n - mean * mean).max(0.0).sqrt())
    }

    /// The value at normalised rank `rank` (0..=1).
    pub fn quantile(&self, rank: f64) -> Option<f64> {
        self.kll
            .quantile(rank.clamp(0.0, 1.0), SearchCriteria::Inclusive)
            .ok()
            .flatten()
            .map(|v| *v as f64)
    }

    /// `quantile` for many ranks at once: the sketch's sorted view is built once (a single
    /// `quantile` call builds it each time, which made a 2,000-point grid take seconds).
    /// `None` when the profile is empty or a rank is outside [0, 1].
    pub fn quantiles(&self, ranks: &[f64]) -> Option<Vec<f64>> {
        if self.kll.is_empty() || ranks.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return None;
        }
        let view = self.kll.sorted_view();
        ranks
            .iter()
            .map(|&rank| {
                // Ranks 0 and 1 are the exact extremes, as `KllSketch::quantile` gives them.
                let item = if rank == 0.0 || rank == 1.0 {
                    self.kll.quantile(rank, SearchCriteria::Inclusive)
                } else {
                    view.quantile(rank, SearchCriteria::Inclusive)
                };
                item.ok().flatten().map(|v| *v as f64)
            })
            .collect()
    }

    /// Fraction of valid values <= each split point; the points must be strictly
    /// increasing and not NaN (`None` otherwise, or when the profile is empty).
    pub fn cdf(&self, split_points: &[f32]) -> Option<Vec<f64>> {
        let points: Vec<KllFloat<f32>> = split_points
            .iter()
            .map(|&p| KllFloat::<f32>::new(p).ok())
            .collect::<Option<_>>()?;
        let cdf = self.kll.cdf(&points, SearchCriteria::Inclusive).ok()??;
        Some(cdf[..cdf.len() - 1].to_vec())
    }

    /// Serialised: a versioned envelope around the DataSketches KLL binary format (so Python's
    /// `datasketches` can read the sketch part).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = envelope::header(Kind::Numeric);
        for v in [self.count, self.nulls, self.non_finite] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.min, self.max, self.sum, self.sum_sq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        envelope::put_bytes(&mut out, &self.kll.serialize());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<NumericProfile, ProfileError> {
        let mut r = envelope::Reader::after_header(bytes, Kind::Numeric)?;
        let (count, nulls, non_finite) = (r.u64()?, r.u64()?, r.u64()?);
        let (min, max, sum, sum_sq) = (r.f64()?, r.f64()?, r.f64()?, r.f64()?);
        let kll = KllSketch::<KllFloat<f32>>::deserialize(r.bytes()?)
            .map_err(|e| ProfileError::Sketch(e.to_string()))?;
        r.finish()?;
        if nulls
            .checked_add(non_finite)
            .and_then(|n| n.checked_add(kll.n()))
            != Some(count)
        {
            return Err(ProfileError::Sketch(format!(
                "counts do not add up: {count} rows but {nulls} nulls, {non_finite} non-finite and {} values",
                kll.n()
            )));
        }
        Ok(NumericProfile {
            kll,
            count,
            nulls,
            non_finite,
            min,
            max,
            sum,
            sum_sq,
        })
    }

    /// The KLL accuracy parameter.
    pub fn k(&self) -> u16 {
        self.kll.k()
    }

    /// The DataSketches KLL binary image alone (what Python's `datasketches` reads).
    pub fn kll_bytes(&self) -> Vec<u8> {
        self.kll.serialize()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn profile(values: &[f32]) -> NumericProfile {
        let mut p = NumericProfile::new(DEVICE_K);
        values.iter().for_each(|&v| p.update(Some(v)));
        p
    }

    #[test]
    fn batch_quantiles_equal_single_ones() {
        let values: Vec<f32> = (0..50_000).map(|i| ((i * 7919) % 10_007) as f32).collect();
        let p = profile(&values);
        let ranks: Vec<f64> = (0..=100).map(|i| i as f64 / 100.0).collect();
        let batch = p.quantiles(&ranks).unwrap();
        let single: Vec<f64> = ranks.iter().map(|&r| p.quantile(r).unwrap()).collect();
        assert_eq!(batch, single);
        assert_eq!(profile(&[]).quantiles(&ranks), None);
        assert_eq!(p.quantiles(&[1.5]), None);
    }

    #[test]
    fn counts_nulls_nan_and_moments() {
        let mut p = profile(&[1.0, 2.0, 3.0, 4.0]);
        p.update(None);
        p.update(Some(f32::NAN));
        p.update(Some(f32::INFINITY));
        p.update(Some(f32::NEG_INFINITY));
        assert_eq!((p.count, p.nulls, p.non_finite, p.valid()), (8, 1, 3, 4));
        assert_eq!((p.min, p.max, p.mean()), (1.0, 4.0, Some(2.5)));
        assert!((p.std_dev().unwrap() - 1.118_034).abs() < 1e-5);
        assert_eq!(p.quantile(0.5), Some(2.0));
        assert_eq!(p.cdf(&[2.0, 3.5]).unwrap(), vec![0.5, 0.75]);
    }

    #[test]
    fn bytes_round_trip_and_junk_is_refused() {
        let p = profile(&(0..10_000).map(|i| i as f32).collect::<Vec<_>>());
        let back = NumericProfile::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(
            (back.count, back.min, back.max, back.sum),
            (p.count, p.min, p.max, p.sum)
        );
        assert_eq!(back.quantile(0.5), p.quantile(0.5));
        assert_eq!(
            NumericProfile::from_bytes(b"nope").unwrap_err(),
            ProfileError::NotAProfile
        );
        let mut bytes = p.to_bytes();
        bytes[4] = 9;
        assert_eq!(
            NumericProfile::from_bytes(&bytes).unwrap_err(),
            ProfileError::Version(9)
        );
        let truncated = &p.to_bytes()[..80];
        assert!(NumericProfile::from_bytes(truncated).is_err());
    }

    proptest! {
        /// Merging is commutative and associative: the counters exactly, the distribution
        /// within KLL's rank error.
        #[test]
        fn merge_is_associative_and_commutative(a in prop::collection::vec(-1e3f32..1e3, 0..400),
                                                 b in prop::collection::vec(-1e3f32..1e3, 0..400),
                                                 c in prop::collection::vec(-1e3f32..1e3, 0..400)) {
            let (pa, pb, pc) = (profile(&a), profile(&b), profile(&c));
            let mut ab_c = pa.clone();
            ab_c.merge(&pb).unwrap();
            ab_c.merge(&pc).unwrap();
            let mut bc = pb.clone();
            bc.merge(&pc).unwrap();
            let mut a_bc = pa.clone();
            a_bc.merge(&bc).unwrap();
            let mut c_b_a = pc.clone();
            c_b_a.merge(&pb).unwrap();
            c_b_a.merge(&pa).unwrap();
            for other in [&a_bc, &c_b_a] {
                prop_assert_eq!((ab_c.count, ab_c.valid(), ab_c.min, ab_c.max), (other.count, other.valid(), other.min, other.max));
                prop_assert!((ab_c.sum - other.sum).abs() <= 1e-6 * ab_c.sum.abs().max(1.0));
                if ab_c.valid() > 0 {
                    for rank in [0.1, 0.5, 0.9] {
                        let (x, y) = (ab_c.quantile(rank).unwrap(), other.quantile(rank).unwrap());
                        if x != y {
                            let cdf = ab_c.cdf(&[x.min(y) as f32, x.max(y) as f32]).unwrap();
                            prop_assert!((cdf[1] - cdf[0]).abs() <= 0.05, "rank {} moved by more than the rank error", rank);
                        }
                    }
                }
            }
        }
    }
}

//! Statistics shared by the benchmarks and the report.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The `q` quantile (0..=1) of `sorted` by nearest rank; zero when empty
/// (a run that measured nothing reports 0, not a panic).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize],
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom: the
/// factor of a two-sided 95 % interval. Exact to three decimals up to 30,
/// then the normal approximation with a 1/df correction (within 0.002).
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.960 + 2.4 / df as f64,
    }
}

/// A ratio of two setups with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioCi {
    /// The geometric mean of the paired ratios.
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    /// Pairs it is made of.
    pub n: usize,
}

impl RatioCi {
    /// Half the interval's width relative to the ratio: 0.03 is ± 3 %.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0 / self.ratio
    }
}

/// The paired log-ratio t interval: each pair (numerator, denominator) was
/// measured back to back, so drift of the machine hits both; the logs of
/// the per-pair ratios are treated as normal, their mean ± t·s/√n is
/// exponentiated. Pairs with a value that is not positive and finite are
/// left out. `None` with fewer than 2 usable pairs (no spread to estimate).
pub fn paired_ratio_ci(pairs: &[(f64, f64)]) -> Option<RatioCi> {
    let logs: Vec<f64> = pairs
        .iter()
        .filter(|(a, b)| a.is_finite() && b.is_finite() && *a > 0.0 && *b > 0.0)
        .map(|(a, b)| (a / b).ln())
        .collect();
    let n = logs.len();
    if n < 2 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t975(n - 1) * (var / n as f64).sqrt();
    Some(RatioCi { ratio: mean.exp(), low: (mean - half).exp(), high: (mean + half).exp(), n })
}

/// The pairs (value of `a`, value of `b`) measured in the same round, from
/// samples `(round, variant, value)`: a round holds at most one sample of
/// each variant, taken back to back with the others of that round.
pub fn same_round_pairs<V: PartialEq>(samples: &[(usize, V, f64)], a: &V, b: &V) -> Vec<(f64, f64)> {
    samples
        .iter()
        .filter(|(_, v, _)| v == a)
        .filter_map(|(r, _, x)| samples.iter().find(|(rb, vb, _)| rb == r && vb == b).map(|(_, _, y)| (*x, *y)))
        .collect()
}

/// How a comparison's ratio and interval are estimated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// [`paired_ratio_ci`] of the same-round pairs: for a metric whose
    /// samples scatter around one value, so drift cancels within a round.
    Paired,
    /// [`quantile_ratio_ci`] at this quantile of each variant's samples:
    /// for a metric with modes (throughput on 2 cores), where a per-round
    /// ratio is often a ratio of two modes and averaging them measures
    /// the modes' mix, not the variants.
    Quantile(f64),
}

/// `a` over `b` from samples `(round, variant, value)`, by `e`.
pub fn ratio_ci<V: PartialEq>(samples: &[(usize, V, f64)], a: &V, b: &V, e: Estimator) -> Option<RatioCi> {
    match e {
        Estimator::Paired => paired_ratio_ci(&same_round_pairs(samples, a, b)),
        Estimator::Quantile(q) => {
            let of = |v: &V| -> Vec<f64> { samples.iter().filter(|s| &s.1 == v).map(|s| s.2).collect() };
            quantile_ratio_ci(&of(a), &of(b), q)
        }
    }
}

/// The `q` quantile (0..=1) of `values`, interpolated between the closest
/// ranks; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let last = v.len().checked_sub(1)?;
    let pos = last as f64 * q.clamp(0.0, 1.0);
    let (lo, frac) = (pos.floor() as usize, pos.fract());
    Some(v[lo] + (v[(lo + 1).min(last)] - v[lo]) * frac)
}

/// Samples each side needs before [`quantile_ratio_ci`] gives a ratio.
pub const QUANTILE_MIN_SAMPLES: usize = 5;

/// The ratio of the `q` quantiles of `a` and `b` with its 95 % percentile
/// bootstrap interval: each side resampled with replacement, apart (a
/// transfer's mode does not follow its round), 2,000 times from a fixed
/// seed, so the same samples always give the same interval. Values that
/// are not positive and finite are left out; `None` with fewer than
/// [`QUANTILE_MIN_SAMPLES`] on either side. `n` is the smaller side.
pub fn quantile_ratio_ci(a: &[f64], b: &[f64], q: f64) -> Option<RatioCi> {
    const RESAMPLES: usize = 2000;
    let usable = |v: &[f64]| -> Vec<f64> { v.iter().copied().filter(|x| x.is_finite() && *x > 0.0).collect() };
    let (a, b) = (usable(a), usable(b));
    if a.len() < QUANTILE_MIN_SAMPLES || b.len() < QUANTILE_MIN_SAMPLES {
        return None;
    }
    let ratio = quantile(&a, q)? / quantile(&b, q)?;
    let mut rng = StdRng::seed_from_u64(0x7765_6674);
    let mut resample = |v: &[f64]| -> Vec<f64> { (0..v.len()).map(|_| v[rng.random_range(..v.len())]).collect() };
    let ratios: Vec<f64> =
        (0..RESAMPLES).filter_map(|_| Some(quantile(&resample(&a), q)? / quantile(&resample(&b), q)?)).collect();
    Some(RatioCi { ratio, low: quantile(&ratios, 0.025)?, high: quantile(&ratios, 0.975)?, n: a.len().min(b.len()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_empty_single_and_many() {
        let ms = Duration::from_millis;
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
        assert_eq!(percentile(&[ms(7)], 0.5), ms(7));
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&v, 0.5), ms(51));
        assert_eq!(percentile(&v, 0.99), ms(99));
        assert_eq!(percentile(&v, 1.0), ms(100));
    }

    #[test]
    fn t_quantiles_match_the_table_and_tend_to_the_normal() {
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(9), 2.262);
        assert_eq!(t975(30), 2.042);
        assert!((t975(60) - 2.000).abs() < 0.002, "{}", t975(60));
        assert!((t975(120) - 1.980).abs() < 0.002, "{}", t975(120));
        assert!(t975(0).is_infinite());
    }

    #[test]
    fn a_constant_ratio_has_no_width() {
        let ci = paired_ratio_ci(&[(9.0, 10.0), (18.0, 20.0), (4.5, 5.0)]).unwrap();
        assert!((ci.ratio - 0.9).abs() < 1e-12 && (ci.low - 0.9).abs() < 1e-12 && (ci.high - 0.9).abs() < 1e-12);
        assert_eq!(ci.n, 3);
        assert!(ci.half_width() < 1e-12);
    }

    #[test]
    fn the_interval_is_the_t_interval_of_the_log_ratios() {
        // log ratios ln 1.1 and ln 0.9: mean m, s = |ln 1.1 − ln 0.9| / √2, n = 2, t = 12.706.
        let ci = paired_ratio_ci(&[(11.0, 10.0), (9.0, 10.0)]).unwrap();
        let (a, b) = (1.1f64.ln(), 0.9f64.ln());
        let m = (a + b) / 2.0;
        let half = 12.706 * ((a - b).abs() / 2f64.sqrt()) / 2f64.sqrt();
        assert!((ci.ratio - m.exp()).abs() < 1e-12);
        assert!((ci.low - (m - half).exp()).abs() < 1e-9 && (ci.high - (m + half).exp()).abs() < 1e-9);
        assert!(ci.low < ci.ratio && ci.ratio < ci.high);
        // More pairs with the same spread: a narrower interval.
        let many: Vec<(f64, f64)> = (0..20).map(|i| (if i % 2 == 0 { 11.0 } else { 9.0 }, 10.0)).collect();
        assert!(paired_ratio_ci(&many).unwrap().half_width() < ci.half_width() / 5.0);
    }

    #[test]
    fn pairs_come_from_the_same_round_only() {
        let samples = [(0, "weft", 10.0), (0, "ref", 11.0), (1, "ref", 12.0), (2, "weft", 9.0), (2, "ref", 9.5)];
        assert_eq!(same_round_pairs(&samples, &"weft", &"ref"), vec![(10.0, 11.0), (9.0, 9.5)]);
        assert_eq!(same_round_pairs(&samples, &"ref", &"weft"), vec![(11.0, 10.0), (9.5, 9.0)]);
        assert!(same_round_pairs(&samples, &"weft", &"other").is_empty());
    }

    #[test]
    fn unusable_pairs_are_left_out_and_too_few_give_none() {
        assert_eq!(paired_ratio_ci(&[]), None);
        assert_eq!(paired_ratio_ci(&[(1.0, 2.0)]), None);
        assert_eq!(paired_ratio_ci(&[(1.0, 2.0), (0.0, 2.0), (1.0, f64::NAN)]), None);
        let ci = paired_ratio_ci(&[(1.0, 2.0), (2.0, 4.0), (-1.0, 2.0)]).unwrap();
        assert_eq!(ci.n, 2);
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.9), Some(3.0));
        assert_eq!(quantile(&[4.0, 1.0, 3.0, 2.0, 5.0], 0.5), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.9), Some(4.6));
        assert_eq!(quantile(&[1.0, 2.0], 1.0), Some(2.0));
    }

    #[test]
    fn the_quantile_ratio_compares_the_fast_modes_and_ignores_their_mix() {
        // Both variants flip between a slow and a fast mode, in different
        // proportions; a is 0.9x b in each mode.
        let b: Vec<f64> = (0..20).map(|i| if i % 4 == 0 { 12.0 } else { 30.0 + (i % 3) as f64 * 0.1 }).collect();
        let a: Vec<f64> = (0..20).map(|i| if i % 2 == 0 { 12.0 * 0.9 } else { 27.0 + (i % 3) as f64 * 0.09 }).collect();
        let ci = quantile_ratio_ci(&a, &b, 0.9).unwrap();
        assert!((ci.ratio - 0.9).abs() < 0.005, "{ci:?}");
        assert!(ci.low <= ci.ratio && ci.ratio <= ci.high && ci.half_width() < 0.03, "{ci:?}");
        assert_eq!(ci.n, 20);
        // The same samples give the same interval.
        assert_eq!(quantile_ratio_ci(&a, &b, 0.9), Some(ci));
        // The paired mean of the same data mixes the modes: far from 0.9.
        let pairs: Vec<(f64, f64)> = a.iter().copied().zip(b.iter().copied()).collect();
        assert!((paired_ratio_ci(&pairs).unwrap().ratio - 0.9).abs() > 0.05);
    }

    #[test]
    fn quantile_ratios_need_enough_usable_samples_on_each_side() {
        let five = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(quantile_ratio_ci(&five, &five, 0.9).is_some());
        assert_eq!(quantile_ratio_ci(&five[..4], &five, 0.9), None);
        assert_eq!(quantile_ratio_ci(&five, &[1.0, 2.0, 3.0, 4.0, f64::NAN, 0.0], 0.9), None);
        let ci = quantile_ratio_ci(&five, &five, 0.5).unwrap();
        assert_eq!(ci.ratio, 1.0);
    }

    #[test]
    fn ratio_ci_picks_pairs_or_each_variants_samples() {
        let samples: Vec<(usize, &str, f64)> =
            (0..6).flat_map(|r| [(r, "a", 9.0 + r as f64), (r, "b", 10.0 + r as f64)]).collect();
        let paired = ratio_ci(&samples, &"a", &"b", Estimator::Paired).unwrap();
        assert_eq!(paired.n, 6);
        let q = ratio_ci(&samples, &"a", &"b", Estimator::Quantile(1.0)).unwrap();
        assert!((q.ratio - 14.0 / 15.0).abs() < 1e-12, "{q:?}");
        assert_eq!(ratio_ci(&samples, &"a", &"c", Estimator::Quantile(0.9)), None);
    }
}

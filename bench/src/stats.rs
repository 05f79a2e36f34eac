//! Statistics shared by both benchmarks.

use std::time::Duration;

/// The `q` quantile (0..=1) of `sorted` by nearest rank; zero when empty
/// (a run that measured nothing reports 0, not a panic).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((n as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize],
    }
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
}

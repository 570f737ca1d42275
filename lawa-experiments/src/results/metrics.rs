//! The numbers summaries and figures report, as pure functions of (step, loss) series and of
//! paired per-window losses: one definition of a gain, its error, and the steps saved.

/// Raw loss minus averaged loss at every step both series have (positive: averaging helps).
pub fn gain_series(raw: &[(u64, f64)], averaged: &[(u64, f64)]) -> Vec<(u64, f64)> {
    averaged
        .iter()
        .filter_map(|&(step, avg)| {
            raw.iter()
                .find(|&&(s, _)| s == step)
                .map(|&(_, r)| (step, r - avg))
        })
        .collect()
}

/// The gain at the last step both series have.
pub fn final_gain(raw: &[(u64, f64)], averaged: &[(u64, f64)]) -> Option<f64> {
    gain_series(raw, averaged).last().map(|&(_, g)| g)
}

/// The gain at `step`, when both series have it.
pub fn gain_at(raw: &[(u64, f64)], averaged: &[(u64, f64)], step: u64) -> Option<f64> {
    gain_series(raw, averaged)
        .into_iter()
        .find(|&(s, _)| s == step)
        .map(|(_, g)| g)
}

/// The first step at which `series` is at or below `target`.
pub fn steps_to_reach(series: &[(u64, f64)], target: f64) -> Option<u64> {
    series.iter().find(|&&(_, v)| v <= target).map(|&(s, _)| s)
}

/// Steps saved by `averaged`: the raw series' last step minus the first step at which
/// `averaged` reaches the raw series' final loss. None when it never does.
pub fn steps_saved(raw: &[(u64, f64)], averaged: &[(u64, f64)]) -> Option<i64> {
    let &(last, target) = raw.last()?;
    steps_to_reach(averaged, target).map(|s| last as i64 - s as i64)
}

/// The step of `steps` nearest to half the last one (the earlier on a tie).
pub fn middle_step(steps: &[u64]) -> Option<u64> {
    let last = *steps.iter().max()?;
    let half = last as f64 / 2.0;
    steps.iter().copied().min_by(|a, b| {
        (*a as f64 - half)
            .abs()
            .total_cmp(&(*b as f64 - half).abs())
            .then(a.cmp(b))
    })
}

/// The key whose values have the largest mean (the first in key order on a tie).
pub fn best_by_mean(values: &[(String, f64)]) -> Option<String> {
    let mut sums: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for (key, v) in values {
        let entry = sums.entry(key).or_default();
        entry.0 += v;
        entry.1 += 1;
    }
    let mut best: Option<(&str, f64)> = None;
    for (key, (sum, n)) in sums {
        let mean = sum / n as f64;
        if best.is_none_or(|(_, b)| mean > b) {
            best = Some((key, mean));
        }
    }
    best.map(|(k, _)| k.to_owned())
}

/// The mean of the values, None when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The mean of `values` and its standard error, `sd / sqrt(n)` with the sample standard
/// deviation (`n − 1` in the variance). None with fewer than two values.
pub fn mean_and_se(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let m = mean(values)?;
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    Some((m, (var / n as f64).sqrt()))
}

/// A gain over the raw weights summarized over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GainStat {
    /// Mean gain over the seeds.
    pub mean: f64,
    /// Standard error of `mean`: `sqrt(sd² / n + w²)`, with `sd` the standard deviation of the
    /// seeds' gains (training noise; 0 with one seed) and `w` the mean of their paired
    /// standard errors over the evaluation windows (which windows were drawn: the same windows
    /// for every seed, so this part does not shrink with more seeds).
    pub se: f64,
    /// Standard deviation of the gain over seeds (None with one seed).
    pub sd_seeds: Option<f64>,
    /// Mean of the per-seed paired standard errors over windows (None when not measured).
    pub se_windows: Option<f64>,
    /// Smallest gain of a seed.
    pub min: f64,
    /// Largest gain of a seed.
    pub max: f64,
    /// Number of seeds.
    pub seeds: usize,
}

/// Summarizes per-seed gains, each with its paired standard error over windows when known.
/// None for no seeds.
pub fn seed_gain(per_seed: &[(f64, Option<f64>)]) -> Option<GainStat> {
    let gains: Vec<f64> = per_seed.iter().map(|p| p.0).collect();
    let mean = mean(&gains)?;
    let sd = mean_and_se(&gains).map(|(_, se)| se * (gains.len() as f64).sqrt());
    let windows: Vec<f64> = per_seed.iter().filter_map(|p| p.1).collect();
    let se_windows = if windows.len() == per_seed.len() {
        self::mean(&windows)
    } else {
        None
    };
    let n = gains.len() as f64;
    let se = (sd.map_or(0.0, |sd| sd * sd / n) + se_windows.map_or(0.0, |w| w * w)).sqrt();
    Some(GainStat {
        mean,
        se,
        sd_seeds: sd,
        se_windows,
        min: gains.iter().copied().fold(f64::INFINITY, f64::min),
        max: gains.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        seeds: gains.len(),
    })
}

/// The standard error of the mean difference `a − b` of paired values (the same windows scored
/// by two sets of weights): the standard error of the per-pair differences. None when the
/// lengths differ or there are fewer than two pairs.
pub fn paired_se(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    mean_and_se(&diffs).map(|(_, se)| se)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: [(u64, f64); 5] = [(0, 10.0), (10, 5.0), (20, 4.0), (30, 3.5), (40, 3.2)];
    const LAWA: [(u64, f64); 4] = [(10, 4.5), (20, 3.6), (30, 3.2), (40, 3.0)];

    #[test]
    fn gains_are_raw_minus_average_at_shared_steps() {
        let gains = gain_series(&RAW, &LAWA);
        let expected = [(10, 0.5), (20, 0.4), (30, 0.3), (40, 0.2)];
        assert_eq!(gains.len(), 4);
        for ((s, g), (es, eg)) in gains.iter().zip(expected) {
            assert_eq!(*s, es);
            assert!((g - eg).abs() < 1e-12);
        }
        assert!((final_gain(&RAW, &LAWA).unwrap() - 0.2).abs() < 1e-12);
        assert!((gain_at(&RAW, &LAWA, 20).unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(gain_at(&RAW, &LAWA, 0), None);
    }

    #[test]
    fn steps_saved_to_raw_final_loss() {
        // Raw ends at 3.2 at step 40; LAWA is at 3.2 at step 30: 10 steps saved.
        assert_eq!(steps_to_reach(&LAWA, 3.2), Some(30));
        assert_eq!(steps_saved(&RAW, &LAWA), Some(10));
        assert_eq!(steps_saved(&RAW, &[(10, 9.0), (40, 3.3)]), None);
        assert_eq!(steps_saved(&RAW, &RAW), Some(0));
    }

    #[test]
    fn standard_errors_by_hand() {
        // Values 1, 2, 3, 6: mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14/3,
        // SE = sqrt(14/3 / 4) = sqrt(7/6).
        let (m, se) = mean_and_se(&[1.0, 2.0, 3.0, 6.0]).unwrap();
        assert_eq!(m, 3.0);
        assert!((se - (7.0f64 / 6.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_and_se(&[1.0]), None);
        // Paired: raw 5, 4, 6 and averaged 4.5, 3.9, 5.2 per window: differences 0.5, 0.1, 0.8,
        // mean 0.4667, sample variance ((0.0333)^2 + (0.3667)^2 + (0.3333)^2) / 2 = 0.12333,
        // SE = sqrt(0.12333 / 3) = 0.20276.
        let se = paired_se(&[5.0, 4.0, 6.0], &[4.5, 3.9, 5.2]).unwrap();
        assert!((se - 0.202759).abs() < 1e-6, "{se}");
        // Pairing removes what the windows share: a constant offset has no error at all.
        assert_eq!(paired_se(&[5.0, 9.0, 1.0], &[4.0, 8.0, 0.0]), Some(0.0));
        assert_eq!(paired_se(&[1.0, 2.0], &[1.0]), None);
    }

    #[test]
    fn seed_gains_combine_seed_spread_and_window_error() {
        // Gains 0.10, 0.20, 0.30 with window SEs 0.02, 0.04, 0.03: mean 0.2, sd 0.1,
        // w = 0.03, SE = sqrt(0.01 / 3 + 0.0009) = 0.06557.
        let s = seed_gain(&[(0.1, Some(0.02)), (0.2, Some(0.04)), (0.3, Some(0.03))]).unwrap();
        assert!((s.mean - 0.2).abs() < 1e-12);
        assert!((s.sd_seeds.unwrap() - 0.1).abs() < 1e-12);
        assert!((s.se_windows.unwrap() - 0.03).abs() < 1e-12);
        assert!((s.se - (0.01f64 / 3.0 + 0.0009).sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.seeds), (0.1, 0.3, 3));
        // One seed: the window error alone.
        let one = seed_gain(&[(0.05, Some(0.01))]).unwrap();
        assert_eq!((one.se, one.sd_seeds), (0.01, None));
        assert_eq!(seed_gain(&[]), None);
    }

    #[test]
    fn middle_and_best() {
        assert_eq!(middle_step(&[0, 10, 20, 30, 40]), Some(20));
        assert_eq!(middle_step(&[0, 30, 60, 90]), Some(30));
        assert_eq!(middle_step(&[]), None);
        let values = [
            ("b".to_string(), 1.0),
            ("a".to_string(), 3.0),
            ("b".to_string(), 3.0),
            ("a".to_string(), 1.0),
            ("c".to_string(), 1.5),
        ];
        assert_eq!(best_by_mean(&values).as_deref(), Some("a"));
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
    }
}

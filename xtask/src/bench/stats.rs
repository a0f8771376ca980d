//! The bench's statistics: medians and spreads of a handful of rounds.

pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// "median (min–max)" with `decimals`, or just the median for one sample.
pub fn fmt_spread(v: &[f64], decimals: usize) -> String {
    let m = median(v);
    if v.len() < 2 {
        return format!("{m:.decimals$}");
    }
    let (lo, hi) = spread(v);
    format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
    }

    #[test]
    fn spread_is_shown_only_for_several_samples() {
        assert_eq!(fmt_spread(&[1.234], 1), "1.2");
        assert_eq!(fmt_spread(&[1.0, 3.0, 2.0], 0), "2 (1–3)");
    }
}

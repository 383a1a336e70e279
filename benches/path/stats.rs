//! Medians and percentiles.

/// The median of `v` (sorts it).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    percentile(v, 50.0)
}

/// The `p`th percentile of `v` by nearest rank (sorts it); NaN for an empty slice.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

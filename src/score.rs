//! Exact scoring: distances recomputed from the stored vectors, triplet kind and loss.
//!
//! In: two rows of the stored (for cosine, normalised) vectors, or a triplet's two distances.
//! Out: `d` as an `f32`, the [`TripletKind`] and the loss. Every ranking in the miner uses these
//! distances, never an index's approximate ones, so results do not depend on FAISS's arithmetic.

use crate::config::Metric;

/// `sum f(a_i, b_i)` in `f64` of `a` with each of `R` rows, over four independent lanes
/// (element `i` to lane `i % 4`), lanes added in a fixed order so the result never depends
/// on the machine. Each row's additions come in the same order as alone (so the same bits);
/// several rows interleave their chains of additions, which one row alone leaves waiting on
/// their latency.
#[inline(always)]
fn lane_sums<const R: usize>(a: &[f32], b: [&[f32]; R], f: impl Fn(f64, f64) -> f64) -> [f64; R] {
    let mut acc = [[0f64; 4]; R];
    let whole = a.len() / 4 * 4;
    for at in (0..whole).step_by(4) {
        let x = &a[at..at + 4];
        for (acc, b) in acc.iter_mut().zip(&b) {
            let y = &b[at..at + 4];
            for l in 0..4 {
                acc[l] += f(x[l] as f64, y[l] as f64);
            }
        }
    }
    std::array::from_fn(|k| add_lanes(acc[k], &a[whole..], &b[k][whole..], &f))
}

/// A row's four lanes added in their fixed order, then the elements after the last whole
/// four (`a_tail`, `b_tail`) one by one.
#[inline(always)]
fn add_lanes(acc: [f64; 4], a_tail: &[f32], b_tail: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    debug_assert_eq!(a_tail.len(), b_tail.len());
    let tail: f64 = a_tail
        .iter()
        .zip(b_tail)
        .map(|(x, y)| f(*x as f64, *y as f64))
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Rows whose exact distances [`Metric::distances`] computes together where many are asked.
pub const ROWS_AT_ONCE: usize = 4;

/// One element's term of a squared Euclidean distance.
#[inline(always)]
fn l2sq_term(x: f64, y: f64) -> f64 {
    (x - y) * (x - y)
}

/// One element's term of an inner product.
#[inline(always)]
fn dot_term(x: f64, y: f64) -> f64 {
    x * y
}

fn l2sq_sums_portable<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    lane_sums(a, b, l2sq_term)
}

fn dot_sums_portable<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    lane_sums(a, b, dot_term)
}

/// [`lane_sums`] with the four lanes in one AVX2 register, written out: the same operations
/// on each lane as [`l2sq_term`] or [`dot_term`] and an addition, never fused, so the same
/// bits. (Left to the compiler, the generic loop became two-lane SSE with shuffles and a
/// bounds check per row and step: about three times the instructions.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lane_sums_avx2<const R: usize, const DOT: bool>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    use std::arch::x86_64::*;
    for b in &b {
        assert_eq!(a.len(), b.len(), "rows of one length");
    }
    let whole = a.len() / 4 * 4;
    let mut acc = [_mm256_setzero_pd(); R];
    for at in (0..whole).step_by(4) {
        // SAFETY: `at + 4 <= whole`, at most the length of `a` and of every row (asserted).
        let x = unsafe { _mm256_cvtps_pd(_mm_loadu_ps(a.as_ptr().add(at))) };
        for (acc, b) in acc.iter_mut().zip(&b) {
            // SAFETY: as for `a`.
            let y = unsafe { _mm256_cvtps_pd(_mm_loadu_ps(b.as_ptr().add(at))) };
            let term = if DOT {
                _mm256_mul_pd(x, y)
            } else {
                let d = _mm256_sub_pd(x, y);
                _mm256_mul_pd(d, d)
            };
            *acc = _mm256_add_pd(*acc, term);
        }
    }
    std::array::from_fn(|k| {
        let mut lanes = [0f64; 4];
        // SAFETY: `lanes` holds four `f64`s.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), acc[k]) };
        let term = if DOT { dot_term } else { l2sq_term };
        add_lanes(lanes, &a[whole..], &b[k][whole..], term)
    })
}

/// [`l2sq_sums_portable`] in AVX2 (see [`lane_sums_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn l2sq_sums_avx2<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    lane_sums_avx2::<R, false>(a, b)
}

/// [`dot_sums_portable`] in AVX2 (see [`lane_sums_avx2`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_sums_avx2<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    lane_sums_avx2::<R, true>(a, b)
}

/// Squared Euclidean distances from `a` to each of `b`, accumulated in `f64`.
#[inline]
fn l2sq_sums<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        return unsafe { l2sq_sums_avx2(a, b) };
    }
    l2sq_sums_portable(a, b)
}

/// Inner products of `a` with each of `b`, accumulated in `f64`.
#[inline]
fn dot_sums<const R: usize>(a: &[f32], b: [&[f32]; R]) -> [f64; R] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        return unsafe { dot_sums_avx2(a, b) };
    }
    dot_sums_portable(a, b)
}

/// Squared Euclidean distance, accumulated in `f64`, rounded once to `f32`.
#[inline]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    l2sq_sums(a, [b])[0] as f32
}

/// Inner product, accumulated in `f64`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    dot_sums(a, [b])[0]
}

impl Metric {
    /// The exact distance between two stored vectors (for cosine, already unit length).
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        self.distances(a, [b])[0]
    }

    /// [`Metric::distance`] from `a` to each of `b`, computed together (each with the bits
    /// it has alone).
    #[inline]
    pub fn distances<const R: usize>(self, a: &[f32], b: [&[f32]; R]) -> [f32; R] {
        match self {
            Metric::L2sq => l2sq_sums(a, b).map(|s| s as f32),
            // Clamped: rounding can make 1 - cos slightly negative for near-duplicates.
            Metric::Cosine => dot_sums(a, b).map(|s| ((1.0 - s) as f32).max(0.0)),
        }
    }
}

/// Scales every `dim`-long row of `data` to unit L2 norm (zero rows stay zero).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    use rayon::prelude::*;
    data.par_chunks_mut(dim).for_each(normalize_row);
}

/// Scales one row to unit L2 norm (a zero row stays zero).
#[inline]
pub fn normalize_row(row: &mut [f32]) {
    let norm = dot(row, row).sqrt();
    if norm > 0.0 {
        for x in row.iter_mut() {
            *x = (*x as f64 / norm) as f32;
        }
    }
}

/// The kind of a triplet, by `t = d(a, n) - d(a, p)`, as pytorch-metric-learning defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TripletKind {
    /// `t <= 0`: the negative is at least as close as the positive.
    Hard,
    /// `0 < t <= margin`.
    Semihard,
    /// `t > margin`: the loss is zero.
    Easy,
}

impl TripletKind {
    /// Classifies a triplet from its two distances.
    #[inline]
    pub fn classify(d_ap: f32, d_an: f32, margin: f32) -> TripletKind {
        let t = d_an - d_ap;
        if t <= 0.0 {
            TripletKind::Hard
        } else if t <= margin {
            TripletKind::Semihard
        } else {
            TripletKind::Easy
        }
    }

    /// The name written to the output.
    pub fn as_str(self) -> &'static str {
        match self {
            TripletKind::Hard => "hard",
            TripletKind::Semihard => "semihard",
            TripletKind::Easy => "easy",
        }
    }
}

/// `max(0, d_ap - d_an + margin)`.
#[inline]
pub fn triplet_loss(d_ap: f32, d_an: f32, margin: f32) -> f32 {
    (d_ap - d_an + margin).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_l2sq(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum()
    }

    #[test]
    fn l2sq_matches_the_textbook_formula_for_every_length() {
        for len in 0..19 {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive_l2sq(&a, &b);
            assert!((l2sq(&a, &b) as f64 - want).abs() <= 1e-6 * want.max(1.0));
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_distances_have_the_portable_ones_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Lengths around the lanes and the vector width, values of mixed scale and sign
        // (where a different order of additions would change the last bits).
        for len in (0..40).chain([127, 128, 129, 301]) {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 1e-2).collect();
            // SAFETY: the processor has AVX2 (checked above).
            let (l2, dot_) = unsafe { (l2sq_sums_avx2(&a, [&b]), dot_sums_avx2(&a, [&b])) };
            let bits = |s: [f64; 1]| s[0].to_bits();
            assert_eq!(bits(l2), bits(l2sq_sums_portable(&a, [&b])), "l2sq, {len}");
            assert_eq!(bits(dot_), bits(dot_sums_portable(&a, [&b])), "dot, {len}");
        }
    }

    /// The order of additions every stored distance was computed in: element `i` to lane
    /// `i % 4` while four remain, the lanes added pairwise, then the rest one by one.
    fn in_lane_order(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
        let whole = a.len() / 4 * 4;
        let mut acc = [0f64; 4];
        for i in 0..whole {
            acc[i % 4] += f(a[i] as f64, b[i] as f64);
        }
        let mut tail = 0f64;
        for i in whole..a.len() {
            tail += f(a[i] as f64, b[i] as f64);
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }

    #[test]
    fn distances_alone_and_together_are_summed_in_lane_order() {
        let l2 = |x: f64, y: f64| (x - y) * (x - y);
        let prod = |x: f64, y: f64| x * y;
        for len in (0..40).chain([127, 128, 129, 301]) {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
            let rows: Vec<Vec<f32>> = [1e-2, 1.0, 1e3, 7.0]
                .iter()
                .enumerate()
                .map(|(k, scale)| {
                    (0..len)
                        .map(|i| (i as f32 * 0.11 + k as f32).cos() * scale)
                        .collect()
                })
                .collect();
            let b: [&[f32]; ROWS_AT_ONCE] = std::array::from_fn(|k| rows[k].as_slice());
            let l2_want = b.map(|b| (in_lane_order(&a, b, l2) as f32).to_bits());
            let dot_want = b.map(|b| in_lane_order(&a, b, prod));
            assert_eq!(
                Metric::L2sq.distances(&a, b).map(f32::to_bits),
                l2_want,
                "{len}"
            );
            assert_eq!(b.map(|b| l2sq(&a, b).to_bits()), l2_want, "{len}");
            assert_eq!(
                b.map(|b| dot(&a, b).to_bits()),
                dot_want.map(f64::to_bits),
                "{len}"
            );
            let cos_want = dot_want.map(|s| ((1.0 - s) as f32).max(0.0).to_bits());
            assert_eq!(
                Metric::Cosine.distances(&a, b).map(f32::to_bits),
                cos_want,
                "{len}"
            );
        }
    }

    #[test]
    fn cosine_distance_of_a_vector_to_itself_is_zero() {
        let mut v = vec![3.0f32, -4.0, 12.0, 0.5, 1.0];
        normalize_rows(&mut v, 5);
        assert_eq!(Metric::Cosine.distance(&v, &v), 0.0);
    }

    #[test]
    fn kinds_follow_the_margin_bands() {
        assert_eq!(TripletKind::classify(1.0, 1.0, 0.2), TripletKind::Hard);
        assert_eq!(TripletKind::classify(1.0, 0.5, 0.2), TripletKind::Hard);
        assert_eq!(TripletKind::classify(1.0, 1.1, 0.2), TripletKind::Semihard);
        assert_eq!(TripletKind::classify(1.0, 1.5, 0.2), TripletKind::Easy);
        assert_eq!(triplet_loss(1.0, 1.5, 0.2), 0.0);
        assert!((triplet_loss(1.0, 0.5, 0.2) - 0.7).abs() < 1e-6);
    }
}

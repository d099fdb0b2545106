//! The one-pass exact engine: every negative of a block of anchors from one blocked pass of
//! matrix products over the whole table, whatever depth the answers lie at.
//!
//! In: the block's [`AnchorPlan`]s (positives chosen exactly first, so every (anchor,
//! positive) pair knows its acceptance band before the pass) and an exact index's miner. Out:
//! the same [`Resolved`] outcome the deepening ladder gives, triplet for triplet.
//!
//! Groups of anchors run in parallel, one per core, each multiplying with BLAS on its own
//! thread: tiles of (anchors x table rows) distances come from one `sgemm` and the rows'
//! norms. Each pair keeps only what its answer needs: how many rows lie before its band (for ranks), and
//! the rows of its band nearer than its `N`-th certain negative. GEMM distances are within a
//! bound `eps` of the exact ones, so every decision within `eps` of an edge is left to the
//! exact distances computed at the end: the results equal an exhaustive exact search.

use std::os::raw::{c_char, c_int};

use rayon::prelude::*;

use super::negatives::{Resolved, qualifies};
use super::positives::AnchorPlan;
use super::{Miner, Triplet};
use crate::config::{Metric, NegativeSampling, NegativeStrategy};
use crate::error::Result;
use crate::score::TripletKind;

unsafe extern "C" {
    // The BLAS FAISS links (OpenBLAS here), Fortran interface: column-major.
    fn sgemm_(
        transa: *const c_char,
        transb: *const c_char,
        m: *const c_int,
        n: *const c_int,
        k: *const c_int,
        alpha: *const f32,
        a: *const f32,
        lda: *const c_int,
        b: *const f32,
        ldb: *const c_int,
        beta: *const f32,
        c: *mut f32,
        ldc: *const c_int,
    );
}

/// Tile shape: anchors per pass, table rows per tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    pub anchors: usize,
    pub rows: usize,
}

impl Default for Tiles {
    fn default() -> Self {
        // 256 x 2048 floats: a 2 MiB tile per thread, near cache, and 128 flops of the
        // product per byte of table read, so the table streams from memory fast enough.
        Tiles {
            anchors: 256,
            rows: 2048,
        }
    }
}

/// Whether the one-pass engine serves these parameters (else the deepening ladder does):
/// an exact index over vectors in memory, nearest-first selection, no guard, no rank window,
/// and no `--max-k` (a cap on the ladder's depth, which the one pass does not have).
pub(super) fn applies(m: &Miner) -> bool {
    let p = &m.params;
    m.exact()
        && m.one_pass
        && p.max_k.is_none()
        && !m.table.vectors.is_spilled()
        && !p.guarded()
        && p.range_min == 0
        && p.range_max.is_none()
        && p.sample == NegativeSampling::Nearest
}

/// `dot(q_b, t_j)` for every anchor row `q_b` of `q` and table row `t_j` of `t` into
/// `out[b * rows + j]` (`q`: `anchors x dim`, `t`: `rows x dim`, both row-major).
fn inner_products(q: &[f32], t: &[f32], dim: usize, out: &mut [f32]) {
    let (anchors, rows) = (q.len() / dim, t.len() / dim);
    debug_assert!(out.len() >= anchors * rows);
    if anchors == 0 || rows == 0 {
        return;
    }
    let (m, n, k) = (rows as c_int, anchors as c_int, dim as c_int);
    let (alpha, beta) = (1.0f32, 0.0f32);
    // Column-major: out (rows x anchors) = t^T (rows x dim) * q^T (dim x anchors).
    // SAFETY: the slices hold the sizes given; sgemm reads a and b, writes rows x anchors.
    unsafe {
        sgemm_(
            c"T".as_ptr(),
            c"N".as_ptr(),
            &m,
            &n,
            &k,
            &alpha,
            t.as_ptr(),
            &k,
            q.as_ptr(),
            &k,
            &beta,
            out.as_mut_ptr(),
            &m,
        );
    }
}

/// A bound on |GEMM distance - exact distance| for an anchor of squared norm `a_sq` against
/// rows of squared norm at most `r_sq`: the inner product's rounding (`gamma_dim |a| |r|`, for
/// any order of summation; twice, as the distance holds `-2 a.r`), plus the rounding of the
/// norms, of the two additions and of the exact distance itself (each at most `eps` times
/// `|a|^2 + |r|^2` or the distance, which is at most twice that).
fn gemm_error_bound(dim: usize, a_sq: f32, r_sq: f32) -> f32 {
    let eps = f32::EPSILON as f64;
    let gamma = dim as f64 * eps / (1.0 - dim as f64 * eps);
    let (a_sq, r_sq) = (a_sq as f64, r_sq as f64);
    (2.0 * gamma * (a_sq * r_sq).sqrt() + 8.0 * eps * (a_sq + r_sq)) as f32
}

/// The band of a strategy in distance, `[lo, hi]` before rounding: a row is certainly in it
/// when its distance is inside by more than the tolerance, certainly out when outside by more.
#[derive(Debug, Clone, Copy)]
struct Band {
    lo: f32,
    hi: f32,
    /// How far `classify`'s `f32` arithmetic may move an edge.
    tol: f32,
}

impl Band {
    fn of(strategy: NegativeStrategy, d_ap: f32, margin: f32) -> Band {
        let (lo, hi) = match strategy {
            NegativeStrategy::Hard => (f32::NEG_INFINITY, d_ap),
            NegativeStrategy::Semihard => (d_ap, d_ap + margin),
            NegativeStrategy::Easy => (d_ap + margin, f32::INFINITY),
            NegativeStrategy::Violating => (f32::NEG_INFINITY, d_ap + margin),
            NegativeStrategy::Hardest => (f32::NEG_INFINITY, f32::INFINITY),
        };
        Band {
            lo,
            hi,
            tol: 8.0 * f32::EPSILON * (1.0 + d_ap.abs() + margin.abs()),
        }
    }
}

/// One (anchor, positive) pair during the pass.
struct PairState {
    d_ap: f32,
    band: Band,
    /// Rows certainly before the band (every label).
    below: u32,
    /// Rows of the band (or near its edges), nearer than `cut`: `(approximate d, row)`.
    near: Vec<(f32, u32)>,
    /// Rows beyond this approximate distance cannot matter.
    cut: f32,
    /// Reused by [`prune`].
    scratch: Vec<f32>,
}

/// The `k` nearest rows of some kind with ties left to exact distances: `(approximate d,
/// row)` entries within `2 eps` of the `k`-th nearest seen so far.
struct Nearest {
    k: usize,
    entries: Vec<(f32, u32)>,
    cut: f32,
}

impl Nearest {
    fn new(k: usize) -> Self {
        Nearest {
            k,
            entries: Vec::new(),
            cut: if k == 0 {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            },
        }
    }

    #[inline]
    fn offer(&mut self, d: f32, r: u32, slack: f32) {
        if d > self.cut {
            return;
        }
        self.entries.push((d, r));
        if self.entries.len() >= 2 * self.k + 32 {
            self.prune(slack);
        }
    }

    fn prune(&mut self, slack: f32) {
        if self.entries.len() < self.k || self.k == 0 {
            return;
        }
        // In place: the k nearest first, then whatever lies within the slack of the k-th.
        let (_, kth, _) = self
            .entries
            .select_nth_unstable_by(self.k - 1, |x, y| x.0.total_cmp(&y.0));
        self.cut = kth.0 + slack;
        let cut = self.cut;
        self.entries.retain(|e| e.0 <= cut);
    }
}

/// One anchor during the pass.
struct AnchorState {
    pairs: Vec<PairState>,
    /// Its nearest negative (for the data-set health figure).
    nearest_negative: Nearest,
    /// Its `suspects_k` nearest other rows (labelled mode).
    nearest_rows: Nearest,
    /// Twice the bound on |GEMM distance - exact distance| for this anchor.
    slack: f32,
}

/// Resolves every planned anchor of `plans` (those with a positive) in one pass over the
/// table per group of anchors, groups in parallel; `None` for the others.
pub(super) fn resolve_all(m: &mut Miner, plans: &[AnchorPlan]) -> Result<Vec<Option<Resolved>>> {
    let planned: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].hardest.is_some())
        .collect();
    let tiles = m.tiles;
    let started = std::time::Instant::now();
    let resolved: Vec<Vec<Resolved>> = {
        let m = &*m;
        // Each group multiplies on its own thread: BLAS's threads would only wait between
        // the small products and the scans.
        let _single = crate::index::SingleThreadedBlas::new();
        planned
            .par_chunks(tiles.anchors.max(1))
            .map(|group| resolve_group(m, plans, group, tiles))
            .collect()
    };
    m.search.seconds += started.elapsed().as_secs_f64();
    m.search.queries += planned.len() as u64;
    let mut out: Vec<Option<Resolved>> = (0..plans.len()).map(|_| None).collect();
    for (&i, r) in planned.iter().zip(resolved.into_iter().flatten()) {
        out[i] = Some(r);
    }
    Ok(out)
}

fn resolve_group(m: &Miner, plans: &[AnchorPlan], group: &[usize], tiles: Tiles) -> Vec<Resolved> {
    let dim = m.table.dim;
    let n = m.table.rows();
    let p = &m.params;
    let limit = p.num_negatives.limit();
    let near = if m.queries.is_some() {
        0
    } else {
        p.suspects_k.min(n.saturating_sub(1))
    };
    let queries = m.gather_anchors(group.iter().map(|&i| plans[i].anchor));
    let query_norms: Vec<f32> = group
        .iter()
        .map(|&i| match &m.queries {
            Some(q) => q.norms_sq[plans[i].anchor as usize],
            None => m.norms_sq[plans[i].anchor as usize],
        })
        .collect();
    let query_norm_of = |a: u32| match &m.queries {
        Some(q) => q.norms_sq[a as usize],
        None => m.norms_sq[a as usize],
    };
    let max_norm = m.max_norm_sq;
    let mut states: Vec<AnchorState> = group
        .iter()
        .map(|&i| {
            let plan = &plans[i];
            AnchorState {
                pairs: plan
                    .positives
                    .iter()
                    .map(|&(d_ap, _)| {
                        let band = Band::of(p.negatives, d_ap, p.margin);
                        PairState {
                            d_ap,
                            band,
                            below: 0,
                            near: Vec::new(),
                            cut: f32::INFINITY,
                            scratch: Vec::new(),
                        }
                    })
                    .collect(),
                nearest_negative: Nearest::new(1),
                nearest_rows: Nearest::new(near),
                slack: 2.0 * gemm_error_bound(dim, query_norm_of(plan.anchor), max_norm),
            }
        })
        .collect();
    let rows_per_tile = tiles.rows.max(1);
    let mut tile = vec![0f32; group.len() * rows_per_tile];
    for start in (0..n).step_by(rows_per_tile) {
        let end = (start + rows_per_tile).min(n);
        let width = end - start;
        let table = &m.vectors[start * dim..end * dim];
        let tile = &mut tile[..group.len() * width];
        inner_products(&queries, table, dim, tile);
        let norms = &m.norms_sq[start..end];
        for (((row, state), &i), &qn) in tile
            .chunks_mut(width)
            .zip(states.iter_mut())
            .zip(group)
            .zip(&query_norms)
        {
            let plan = &plans[i];
            if let Some(s) = m.anchor_self(plan.anchor)
                && (start..end).contains(&(s as usize))
            {
                // NaN fails every comparison: the anchor is never its own neighbour.
                row[s as usize - start] = f32::NAN;
            }
            match m.params.metric {
                Metric::L2sq => {
                    let to_d = |x: f32, tn: f32| qn + tn - 2.0 * x;
                    scan_dispatch(m, plan, state, row, norms, to_d, start as u32, limit);
                }
                Metric::Cosine => {
                    let to_d = |x: f32, _: f32| 1.0 - x;
                    scan_dispatch(m, plan, state, row, norms, to_d, start as u32, limit);
                }
            }
        }
    }
    states
        .into_iter()
        .zip(group)
        .map(|(state, &i)| finish(m, &plans[i], state, limit))
        .collect()
}

/// Rows scanned together: a lane-wide test says whether any of them needs a closer look.
const CHUNK: usize = 16;

/// Feeds one anchor's inner products with table rows `first..first + row.len()` (turned into
/// distances in place by `to_d` from each product and row norm) to its selectors.
///
/// After the first tile almost no row is near enough to matter, so each chunk of rows is
/// first tested as a whole (branch-free, vectorised): rows before every band are counted, and
/// only a chunk holding a row inside some cut is looked at row by row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scan(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    row: &mut [f32],
    norms: &[f32],
    to_d: impl Fn(f32, f32) -> f32,
    first: u32,
    limit: usize,
) {
    let slack = state.slack;
    // Before each pair's band (counted), and the end of what it keeps.
    let mut cuts: Vec<(f32, f32)> = state
        .pairs
        .iter()
        .map(|pair| {
            let band = pair.band;
            let before = band.lo - band.tol - slack;
            let hi = (band.hi + band.tol + slack).min(pair.cut);
            (before, hi)
        })
        .collect();
    let whole = row.len() / CHUNK * CHUNK;
    let (full, tail) = row.split_at_mut(whole);
    for (c, (chunk, norms)) in full
        .chunks_exact_mut(CHUNK)
        .zip(norms.chunks_exact(CHUNK))
        .enumerate()
    {
        // Arrays of a known length: the tests below compile to a few vector instructions.
        let chunk: &mut [f32; CHUNK] = chunk.try_into().expect("a whole chunk");
        let norms: &[f32; CHUNK] = norms.try_into().expect("a whole chunk");
        let base = first + (c * CHUNK) as u32;
        scan_chunk(m, plan, state, &mut cuts, chunk, norms, &to_d, base, limit);
    }
    let base = first + whole as u32;
    scan_chunk(
        m,
        plan,
        state,
        &mut cuts,
        tail,
        &norms[whole..],
        &to_d,
        base,
        limit,
    );
}

/// [`scan`] of one chunk of rows from `base` on.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn scan_chunk(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    cuts: &mut [(f32, f32)],
    chunk: &mut [f32],
    norms: &[f32],
    to_d: &impl Fn(f32, f32) -> f32,
    base: u32,
    limit: usize,
) {
    let slack = state.slack;
    // The nearest rows and nearest negative: their cuts tighten as rows arrive.
    let small_cut = state.nearest_negative.cut.max(state.nearest_rows.cut);
    let mut hit = 0u32;
    for (x, &tn) in chunk.iter_mut().zip(norms) {
        let d = to_d(*x, tn);
        *x = d;
        hit |= (d <= small_cut) as u32;
    }
    for (pair, &(before, hi)) in state.pairs.iter_mut().zip(cuts.iter()) {
        let (mut below, mut inside) = (0u32, 0u32);
        for &d in chunk.iter() {
            below += (d < before) as u32;
            inside |= ((d >= before) & (d <= hi)) as u32;
        }
        pair.below += below;
        hit |= inside;
    }
    if hit == 0 {
        return;
    }
    let a = plan.anchor;
    for (j, &d) in chunk.iter().enumerate() {
        let r = base + j as u32;
        if d <= small_cut {
            state.nearest_rows.offer(d, r, slack);
            if m.is_negative(a, plan.label, r) {
                state.nearest_negative.offer(d, r, slack);
            }
        }
        for (pair, &(before, hi)) in state.pairs.iter_mut().zip(cuts.iter()) {
            if d >= before && d <= hi {
                pair.near.push((d, r));
            }
        }
    }
    for (pair, cut) in state.pairs.iter_mut().zip(cuts.iter_mut()) {
        if limit != usize::MAX && pair.near.len() >= 2 * limit + 64 {
            prune(m, plan, pair, limit, slack);
            cut.1 = cut.1.min(pair.cut);
        }
    }
}

/// [`scan`] compiled for the widest vector instructions this processor has (AVX2 where
/// present), chosen at run time: the build stays portable. Results are the same either way.
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan_dispatch(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    row: &mut [f32],
    norms: &[f32],
    to_d: impl Fn(f32, f32) -> f32,
    first: u32,
    limit: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        unsafe { scan_avx2(m, plan, state, row, norms, to_d, first, limit) };
        return;
    }
    scan(m, plan, state, row, norms, to_d, first, limit);
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    row: &mut [f32],
    norms: &[f32],
    to_d: impl Fn(f32, f32) -> f32,
    first: u32,
    limit: usize,
) {
    scan(m, plan, state, row, norms, to_d, first, limit);
}

/// Keeps the band rows that can still matter: those within `slack` of the `limit`-th row
/// certainly in the band and certainly a negative.
fn prune(m: &Miner, plan: &AnchorPlan, pair: &mut PairState, limit: usize, slack: f32) {
    let band = pair.band;
    let certain = &mut pair.scratch;
    certain.clear();
    certain.extend(
        pair.near
            .iter()
            .filter(|&&(d, r)| {
                d - slack > band.lo + band.tol
                    && d + slack < band.hi - band.tol
                    && m.is_negative(plan.anchor, plan.label, r)
            })
            .map(|e| e.0),
    );
    if certain.len() < limit {
        return;
    }
    let (_, nth, _) = certain.select_nth_unstable_by(limit - 1, f32::total_cmp);
    pair.cut = pair.cut.min(*nth + slack);
    let cut = pair.cut;
    pair.near.retain(|e| e.0 <= cut);
}

/// Exact distances for the kept rows, and the anchor's outcome as the ladder gives it.
fn finish(m: &Miner, plan: &AnchorPlan, mut state: AnchorState, limit: usize) -> Resolved {
    let a = plan.anchor;
    let margin = m.params.margin;
    let exact = |entries: &[(f32, u32)]| -> Vec<(f32, u32)> {
        let mut list: Vec<(f32, u32)> = entries
            .iter()
            .map(|&(_, r)| (m.anchor_distance(a, r), r))
            .collect();
        super::sort_nearest(&mut list);
        list
    };
    let hardest = plan.hardest.expect("planned anchors have a positive");
    state.nearest_negative.prune(state.slack);
    state.nearest_rows.prune(state.slack);
    let violating_neighbour = exact(&state.nearest_negative.entries)
        .first()
        .map(|&(d, _)| TripletKind::classify(hardest, d, margin) != TripletKind::Easy);
    let neighbour_labels = if m.queries.is_some() {
        None
    } else {
        let k = state.nearest_rows.k;
        let list = exact(&state.nearest_rows.entries);
        super::negatives::neighbour_labels(m, plan.label, &list[..k.min(list.len())])
    };
    let strategy = m.params.negatives;
    let mut triplets = Vec::new();
    for (pair, &(_, p)) in state.pairs.iter_mut().zip(&plan.positives) {
        // Fewer exact distances: only what the last tiles left within reach.
        if limit != usize::MAX && pair.near.len() > limit {
            prune(m, plan, pair, limit, state.slack);
        }
        let d_ap = pair.d_ap;
        let rows = exact(&pair.near);
        // Band kinds in order; a row of a lower kind than the band's lies before it.
        let band_start = match strategy {
            NegativeStrategy::Semihard => TripletKind::Semihard,
            NegativeStrategy::Easy => TripletKind::Easy,
            _ => TripletKind::Hard,
        };
        let mut rank = pair.below;
        let mut taken = 0;
        for &(d, r) in &rows {
            if taken == limit {
                break;
            }
            let kind = TripletKind::classify(d_ap, d, margin);
            if kind < band_start {
                // Left near the lower edge, but before the band: ranks count it.
                rank += 1;
                continue;
            }
            if m.is_negative(a, plan.label, r) && qualifies(strategy, d_ap, d, margin) {
                triplets.push(Triplet {
                    anchor: a,
                    positive: p,
                    negative: r,
                    d_ap,
                    d_an: d,
                    negative_rank: rank,
                });
                taken += 1;
            }
            rank += 1;
        }
    }
    Resolved {
        triplets,
        violating_neighbour,
        neighbour_labels,
        guard_removed: [0; 4],
    }
}

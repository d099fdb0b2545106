//! One selector per anchor for anchors of many (anchor, positive) pairs (`--positives all`).
//!
//! In: an anchor's pairs (bands, not sampled) and the distances of its pass. Out: each pair's
//! `below` count and kept rows with their exact distances for [`super::finish`]: those its own
//! selector would have left, less the rows that cannot matter by their exact distances.
//!
//! Every band is `[d_ap + c1, d_ap + c2]` for constants of the strategy, so sorted by `d_ap`
//! both edges rise. A pair's answer is its `N` nearest qualifying rows at or above its lower
//! edge: they lie in its own *gap* (from its lower edge to the next pair's) or in the gaps
//! after it, and of each gap only the nearest rows can be among them. So each row goes to one
//! gap (the gaps' `N`-nearest selectors are the pairs' own, pruned by their own bands), and
//! each pair's count of rows before its band is a sum of the gaps' counts: per row one lookup
//! in a grid over the gaps' edges instead of a test per pair. At the end, with the kept rows'
//! exact distances, each gap drops the rows exactly beyond its `N`-th certain negative (the
//! GEMM's error bound had to keep them), and each pair gathers the gaps from its own on, as
//! far as its band and its `N`-th certain negative reach.

use super::{
    AnchorState, Band, CHUNK, PairState, RowSource, Tiles, ToDistance, certainly_in_band,
    certainly_qualifies, lanes_where, nth_nearest, offer_nearest, retain_within, window,
};
use crate::config::NegativeSampling;
use crate::mine::Miner;
use crate::mine::positives::AnchorPlan;

/// Anchors with at least this many pairs scan through gaps (fewer: a test per pair, in
/// registers, is cheaper).
pub(in crate::mine) const MIN_PAIRS: usize = 9;

/// Whether `plan`'s anchor scans through gaps: many pairs, bands (no rank window), nearest
/// first (a random sample keys each pair's rows apart).
pub(super) fn applies(m: &Miner, plan: &AnchorPlan) -> bool {
    (m.gap_min_pairs..=MAX_PAIRS).contains(&plan.positives.len())
        && m.params.sample != NegativeSampling::Random
        && window(m).is_none()
}

/// The tile shape for anchors that scan through gaps: a sixteenth of the anchors, sixteen
/// times the rows (the same memory). Each anchor's gaps (its grid, cuts and counts, about 7
/// KiB for a hundred pairs, read for every row) then stay in cache for thousands of rows at a
/// time. 30,000 x 128, 300 labels, overlapping, `--positives all` (AMD EPYC, 2 cores): 1,024 x
/// 512 15.2 s, 64 x 8,192 8.9 s; at 100,000 rows 64 x 8,192, 128 x 4,096 and 256 x 2,048 were
/// within the machine's noise (73.8 to 77.8 s).
pub(super) fn tiles(t: Tiles) -> Tiles {
    Tiles {
        anchors: (t.anchors / 16).max(1),
        rows: t.rows.saturating_mul(16),
    }
}

/// For at most this many negatives per pair, each gap keeps its nearest certain negatives'
/// distances in order, so that its cut tightens with every one (more: by selection, now
/// and then).
const IN_ORDER_MAX: usize = 32;

/// Grid cells per gap: the fewer cells hold several gaps' edges (looked up one by one), the
/// faster a row's gap is found.
const CELLS_PER_GAP: usize = 8;

/// At most this many cells an anchor (its grid is read for every row of the table).
const MAX_CELLS: usize = 1 << 14;

/// Gap numbers are 16 bits in the grid (two to a cell): anchors of more pairs than this
/// test each pair.
pub(super) const MAX_PAIRS: usize = u16::MAX as usize - 3;

/// What every step of one anchor's gaps reads: the miner, the anchor's plan, negatives per
/// pair, and twice its GEMM error bound.
pub(super) struct Ctx<'a> {
    pub m: &'a Miner<'a>,
    pub plan: &'a AnchorPlan,
    pub limit: usize,
    pub slack: f32,
}

impl Ctx<'_> {
    fn certainly_qualifies(&self, band: Band, d: f32, r: u32) -> bool {
        certainly_qualifies(self.m, self.plan, band, self.slack, d, r)
    }

    /// Whether row `r` may be a negative of the anchor.
    fn is_negative(&self, r: u32) -> bool {
        self.m.is_negative(self.plan.anchor, self.plan.label, r)
    }
}

/// One cell of an anchor's grid: what a row in it is looked up for, in 8 bytes read
/// together.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
struct Cell {
    /// Rows at or beyond this lie in the cell's upper gap, nearer ones in its lower gap
    /// (infinite in a cell holding no edge: both gaps are the same).
    split: f32,
    /// The two gaps, `lower | upper << 16`.
    gaps: u32,
}

impl Cell {
    /// The gap of the cell's `side` (0: below the split, 1: at or beyond it).
    #[inline(always)]
    fn gap(self, side: usize) -> usize {
        (if side == 1 {
            self.gaps >> 16
        } else {
            self.gaps & 0xffff
        }) as usize
    }
}

/// A row kept for a gap: its GEMM distance, the row, and its gap less one.
#[derive(Clone, Copy)]
struct Kept {
    d: f32,
    r: u32,
    at: u32,
}

/// An anchor's gaps during the pass. Gap `g` holds the rows with `g` lower edges at or
/// before them: gap 0 the rows before every band, gap `g >= 1` those of the `g`-th pair in
/// band order (per-gap vectors below are indexed by `g - 1`).
pub(super) struct Gaps {
    /// Pair indices in band order (by `d_ap`, then index).
    order: Vec<u32>,
    /// The lower edge of each pair in band order (where its selector starts: its band's
    /// lower edge less the tolerances), ascending.
    starts: Vec<f32>,
    /// Each gap's band (its pair's).
    bands: Vec<Band>,
    /// The grid: cell of `d` = `floor(clamp((d - origin) * scale, -1, last)) + 1`.
    origin: f32,
    scale: f32,
    last: f32,
    /// The grid's cells (the last one for NaN: the anchor's own row).
    cells: Vec<Cell>,
    /// Per cell of several different edges, the first of them and the end (else unused).
    edges_in: Vec<(u32, u32)>,
    /// Rows seen per gap (and the two sentinels).
    counts: Vec<u32>,
    /// Rows of a gap beyond this distance cannot matter: its band's upper edge, or its
    /// `limit`-th row certainly in the band and a negative (plus the slack).
    keep: Vec<f32>,
    /// The rows that may matter, in the order seen, all gaps in one buffer (a row's store
    /// lands next to the last one's, not in one of a hundred lists apart in memory, whose
    /// stores stalled on cache misses), and when to drop those beyond their gaps' cuts again.
    kept: Vec<Kept>,
    compact_at: usize,
    /// The first `compact_at`: as many rows as each gap would keep before its first prune.
    compact_base: usize,
    /// Negatives per pair, if at most [`IN_ORDER_MAX`] (else 0): the stride of `nearest`.
    in_order: usize,
    /// Per gap, the distances of its nearest rows certainly in its band and certainly
    /// negatives, ascending (`taken` of them).
    nearest: Vec<f32>,
    taken: Vec<u32>,
    /// Reused by [`Gaps::compact`].
    scratch: Vec<(u32, f32)>,
}

impl Gaps {
    /// The gaps of an anchor's `pairs` (each `band` set, none keyed), with `slack` twice the
    /// anchor's GEMM error bound, for `limit` negatives per pair; `None` if rounding left the
    /// starts out of `d_ap`'s order (edges an ulp apart: each pair then keeps its own).
    pub(super) fn new(pairs: &[PairState], slack: f32, limit: usize) -> Option<Gaps> {
        let n = pairs.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by(|&a, &b| pairs[a as usize].d_ap.total_cmp(&pairs[b as usize].d_ap));
        let bands: Vec<Band> = order.iter().map(|&i| pairs[i as usize].band).collect();
        let starts: Vec<f32> = bands.iter().map(|b| b.lo - b.tol - slack).collect();
        if n == 0 || !starts.is_sorted_by(|a, b| a <= b) {
            return None;
        }
        let span = starts[n - 1] - starts[0];
        let cells = CELLS_PER_GAP.saturating_mul(n).min(MAX_CELLS);
        let scale = cells as f32 / span;
        let (origin, scale, last) = if span > 0.0 && span.is_finite() && scale.is_finite() {
            (starts[0], scale, cells as f32)
        } else {
            // One cell for every row (edges all equal, or all `-inf`).
            (0.0, 0.0, 0.0)
        };
        let in_order = if limit <= IN_ORDER_MAX { limit } else { 0 };
        let mut keep = Vec::with_capacity(n + 3);
        keep.push(f32::NEG_INFINITY);
        keep.extend(bands.iter().map(|b| b.hi + b.tol + slack));
        keep.extend([f32::INFINITY, f32::NEG_INFINITY]);
        let compact_base = super::first_prune_at(limit, false).saturating_mul(n);
        let mut gaps = Gaps {
            order,
            starts,
            bands,
            origin,
            scale,
            last,
            cells: Vec::new(),
            edges_in: Vec::new(),
            counts: vec![0; n + 3],
            keep,
            kept: Vec::new(),
            compact_at: compact_base,
            compact_base,
            in_order,
            nearest: vec![f32::INFINITY; n * in_order],
            taken: vec![0; if in_order > 0 { n } else { 0 }],
            scratch: Vec::new(),
        };
        (gaps.cells, gaps.edges_in) = gaps.grid();
        Some(gaps)
    }

    /// The sentinel gap of rows in cells holding several edges: found by a search.
    fn multi(&self) -> u32 {
        self.order.len() as u32 + 1
    }

    /// The sentinel gap of the anchor's own row (its distance NaN): not counted.
    fn nan(&self) -> u32 {
        self.order.len() as u32 + 2
    }

    /// A row's cell (the last one for NaN). Monotone in `d`: a row whose cell comes before
    /// (after) an edge's cell lies before (after) the edge, whatever the rounding.
    #[inline(always)]
    fn cell_of(&self, d: f32) -> usize {
        if d.is_nan() {
            return self.nan_cell();
        }
        // Infinities clamped first: `inf * 0` (one cell) would be NaN.
        let d = d.clamp(f32::MIN, f32::MAX);
        let x = ((d - self.origin) * self.scale).max(-1.0).min(self.last);
        (x.floor() as i32 + 1) as usize
    }

    /// The cell after the grid's, of the anchor's own row.
    fn nan_cell(&self) -> usize {
        self.last as usize + 2
    }

    fn grid(&self) -> (Vec<Cell>, Vec<(u32, u32)>) {
        let last = self.last as usize;
        let of_starts: Vec<usize> = self.starts.iter().map(|&s| self.cell_of(s)).collect();
        let (n, multi) = (of_starts.len(), self.multi() as usize);
        let cell = |split: f32, below: usize, above: usize| Cell {
            split,
            gaps: below as u32 | (above as u32) << 16,
        };
        let (mut cells, mut edges_in) = (Vec::new(), Vec::new());
        // The edges in cells before `c` (`lo`) and up to it (`hi`), advanced cell by cell:
        // the starts' cells ascend. (Two binary searches a cell were a fifth of
        // `resolve_group`'s samples in a profile of E1.)
        let (mut lo, mut hi) = (0, 0);
        for c in 0..=last + 1 {
            while lo < n && of_starts[lo] < c {
                lo += 1;
            }
            while hi < n && of_starts[hi] <= c {
                hi += 1;
            }
            cells.push(if lo == hi {
                cell(f32::INFINITY, lo, lo)
            } else if self.starts[lo] == self.starts[hi - 1] {
                cell(self.starts[lo], lo, hi)
            } else {
                cell(f32::INFINITY, multi, multi)
            });
            edges_in.push((lo as u32, hi as u32));
        }
        let nan = self.nan() as usize;
        cells.push(cell(f32::INFINITY, nan, nan));
        edges_in.push((0, 0));
        (cells, edges_in)
    }

    /// Asks the processor for what the scan reads of these gaps for every row (the grid, the
    /// cuts and counts) and what a kept row touches: between two tiles of an anchor the
    /// other anchors of its group push them out of the caches.
    pub(super) fn prefetch(&self) {
        use crate::mine::prefetch_lines;
        prefetch_lines(&self.cells);
        prefetch_lines(&self.keep);
        prefetch_lines(&self.counts);
        prefetch_lines(&self.bands);
        prefetch_lines(&self.nearest);
        prefetch_lines(&self.taken);
    }

    /// Every row the gaps keep (for reading a spilled table's rows).
    pub(super) fn kept(&self) -> impl Iterator<Item = u32> + '_ {
        self.kept.iter().map(|k| k.r)
    }

    /// The gap of a row at distance `d` in cell `cell` ([`Gaps::multi`] if the cell holds
    /// several edges), as [`Gaps::offer`] finds it.
    #[cfg(test)]
    fn gap_in(&self, cell: usize, d: f32) -> usize {
        let cell = self.cells[cell];
        cell.gap((d >= cell.split) as usize)
    }

    /// The gap of a row at distance `d` in a cell of several edges: past those at or before
    /// it (a few).
    fn gap_among_edges(&self, d: f32) -> usize {
        let (lo, hi) = self.edges_in[self.cell_of(d)];
        let starts = &self.starts[lo as usize..hi as usize];
        lo as usize + starts.iter().filter(|&&s| s <= d).count()
    }

    /// Counts row `r` at distance `d` (its cell `cell`) in its gap and keeps it there if it
    /// may matter.
    #[inline(always)]
    fn offer(&mut self, cell: usize, d: f32, r: u32, cx: &Ctx) {
        let at = self.cells[cell];
        let g = at.gap((d >= at.split) as usize);
        self.counts[g] += 1;
        if d <= self.keep[g] {
            self.keep_row(g, d, r, cx);
        }
    }

    /// The rare rows: near enough to a gap's selector, or in a cell of several edges.
    #[inline(never)]
    fn keep_row(&mut self, mut g: usize, d: f32, r: u32, cx: &Ctx) {
        if g == self.multi() as usize {
            g = self.gap_among_edges(d);
            self.counts[g] += 1;
        }
        if d > self.keep[g] {
            return;
        }
        let at = g - 1;
        self.kept.push(Kept {
            d,
            r,
            at: at as u32,
        });
        if self.in_order > 0 && cx.certainly_qualifies(self.bands[at], d, r) {
            let k = self.in_order;
            let nearest = &mut self.nearest[at * k..(at + 1) * k];
            if d < nearest[k - 1] {
                // Insertion into the few in order, after equal ones; the farthest drops out
                // when full.
                let mut i = k - 1;
                while i > 0 && nearest[i - 1] > d {
                    nearest[i] = nearest[i - 1];
                    i -= 1;
                }
                nearest[i] = d;
                let taken = &mut self.taken[at];
                *taken = (*taken + 1).min(k as u32);
                if *taken as usize == k {
                    self.keep[g] = self.keep[g].min(nearest[k - 1] + cx.slack);
                }
            }
        }
        if self.kept.len() >= self.compact_at {
            self.compact(cx);
        }
    }

    /// Drops the kept rows beyond their gaps' cuts; for more than [`IN_ORDER_MAX`] negatives
    /// a pair, first lowers each gap's cut to its `limit`-th row certainly in its band and a
    /// negative (plus the slack), as [`super::prune`] does a pair's.
    fn compact(&mut self, cx: &Ctx) {
        let limit = cx.limit;
        if self.in_order == 0 && limit != usize::MAX {
            let certain = &mut self.scratch;
            certain.clear();
            certain.extend(
                self.kept
                    .iter()
                    .filter(|k| cx.certainly_qualifies(self.bands[k.at as usize], k.d, k.r))
                    .map(|k| (k.at, k.d)),
            );
            certain.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            for run in certain.chunk_by(|a, b| a.0 == b.0) {
                if run.len() >= limit {
                    let keep = &mut self.keep[run[0].0 as usize + 1];
                    *keep = keep.min(run[limit - 1].1 + cx.slack);
                }
            }
        }
        self.drop_beyond_cuts();
        self.compact_at = (2 * self.kept.len()).saturating_add(self.compact_base);
    }

    /// Drops the kept rows beyond their gaps' cuts.
    fn drop_beyond_cuts(&mut self) {
        let keep = &self.keep;
        self.kept.retain(|k| k.d <= keep[k.at as usize + 1]);
    }

    /// Each pair's count of rows before its band and its kept rows, gathered from the gaps
    /// from its own on while they may hold one of its `limit` nearest, with their exact
    /// distances (each row's once, from `rows`, to `anchor`: pairs share them).
    pub(super) fn finish(
        mut self,
        pairs: &mut [PairState],
        cx: &Ctx,
        rows: &RowSource,
        anchor: &[f32],
    ) {
        let (m, limit, slack) = (cx.m, cx.limit, cx.slack);
        let mut below = 0u32;
        for (s, &i) in self.order.iter().enumerate() {
            below += self.counts[s];
            pairs[i as usize].below = below;
        }
        // The rows within their gaps' cuts, gap by gap (each gap's in the order seen).
        let n = self.order.len();
        self.drop_beyond_cuts();
        let mut bounds = vec![0usize; n + 1];
        for k in &self.kept {
            bounds[k.at as usize + 1] += 1;
        }
        for g in 0..n {
            bounds[g + 1] += bounds[g];
        }
        let mut all = vec![(0f32, 0u32); self.kept.len()];
        let mut fill = bounds.clone();
        for k in &self.kept {
            all[fill[k.at as usize]] = (k.d, k.r);
            fill[k.at as usize] += 1;
        }
        // Their exact distances, all gaps' at once (one gap's rows are too few to ask for
        // ahead).
        let exact = rows.distances(m, anchor, &all);
        // Whether each is a negative, looked up once (the pairs below read a row several
        // times, and its label was a cache miss each time).
        let negative: Vec<bool> = all.iter().map(|&(_, r)| cx.is_negative(r)).collect();
        // Each gap's cut by exact distance: no row of a gap exactly beyond its `limit`-th
        // row certainly in its band and a negative can be one of a pair's nearest (the GEMM's
        // error bound kept the rows within it of the cut; now they go).
        let mut certain = Vec::new();
        let mut exact_cut = vec![f32::INFINITY; n];
        if limit != usize::MAX {
            for (g, cut) in exact_cut.iter_mut().enumerate() {
                let gap = bounds[g]..bounds[g + 1];
                if gap.len() < limit {
                    continue;
                }
                certain.clear();
                // Certainly in the band by exact distance: no GEMM error to allow for.
                certain.extend(
                    exact[gap.clone()]
                        .iter()
                        .zip(&negative[gap])
                        .filter(|&(&x, &negative)| {
                            negative && certainly_in_band(self.bands[g], 0.0, x)
                        })
                        .map(|(&x, _)| x),
                );
                if let Some(nth) = nth_nearest(&mut certain, limit) {
                    *cut = nth;
                }
            }
        }
        let (mut near, mut near_exact): (Vec<(f32, u32)>, Vec<f32>) = (Vec::new(), Vec::new());
        for (s, &i) in self.order.iter().enumerate() {
            let band = self.bands[s];
            let mut reach = self.keep[s + 1];
            near.clear();
            near_exact.clear();
            certain.clear();
            for (g, &start) in self.starts.iter().enumerate().skip(s) {
                if start > reach {
                    break;
                }
                let gap = bounds[g]..bounds[g + 1];
                let in_gap = all[gap.clone()]
                    .iter()
                    .zip(&exact[gap.clone()])
                    .zip(&negative[gap]);
                for ((&(d, r), &x), &negative) in in_gap {
                    if d <= reach && x <= exact_cut[g] {
                        near.push((d, r));
                        near_exact.push(x);
                        if limit != usize::MAX && negative && certainly_in_band(band, slack, d) {
                            certain.push(d);
                        }
                    }
                }
                if limit != usize::MAX
                    && let Some(nth) = nth_nearest(&mut certain, limit)
                {
                    reach = reach.min(nth + slack);
                    certain.retain(|&d| d <= reach);
                    retain_within(&mut near, &mut near_exact, reach);
                }
            }
            // Copies of their own size: one allocation each, not a vector grown row by row.
            let pair = &mut pairs[i as usize];
            pair.near = near.clone();
            pair.exact = near_exact.clone();
            pair.cut = reach;
        }
    }
}

/// Feeds one anchor's inner products with table rows `first..first + row.len()` (turned into
/// distances by `to_d` with each row's squared norm) to its nearest selectors and its gaps.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    gaps: &mut Gaps,
    row: &[f32],
    norms: &[f32],
    to_d: ToDistance,
    first: u32,
    limit: usize,
) {
    let whole = row.len() / CHUNK * CHUNK;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if !m.portable_scan && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        unsafe {
            scan_avx2(
                m,
                plan,
                state,
                gaps,
                (&row[..whole], &norms[..whole]),
                to_d,
                first,
                limit,
            )
        };
        done = whole;
    }
    let cx = Ctx {
        m,
        plan,
        limit,
        slack: state.slack,
    };
    for at in (done..row.len()).step_by(CHUNK) {
        let len = CHUNK.min(row.len() - at);
        let mut d = [0f32; CHUNK];
        for (d, (&x, &norm)) in d.iter_mut().zip(row[at..at + len].iter().zip(&norms[at..])) {
            *d = to_d.at(x, norm);
        }
        let base = first + at as u32;
        let small_cut = state.nearest_negative.cut.max(state.nearest_rows.cut);
        let lanes = lanes_where(|l| l < len && d[l] <= small_cut);
        if lanes != 0 {
            let (rows, negative) = (&mut state.nearest_rows, &mut state.nearest_negative);
            offer_nearest(m, plan, rows, negative, state.slack, &d, lanes, base);
        }
        for (l, &d) in d[..len].iter().enumerate() {
            gaps.offer(gaps.cell_of(d), d, base + l as u32, &cx);
        }
    }
}

/// The cells of 8 rows at distances `d`, by the same arithmetic as [`Gaps::cell_of`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn cells_of_avx2(gaps: &Gaps, d: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let (origin, scale) = (_mm256_set1_ps(gaps.origin), _mm256_set1_ps(gaps.scale));
    // Infinities clamped first, as there (a NaN row's cell is set apart below).
    let clamped = _mm256_min_ps(
        _mm256_max_ps(d, _mm256_set1_ps(f32::MIN)),
        _mm256_set1_ps(f32::MAX),
    );
    // `max` returns its second operand for a NaN, as `f32::max` does.
    let x = _mm256_max_ps(
        _mm256_mul_ps(_mm256_sub_ps(clamped, origin), scale),
        _mm256_set1_ps(-1.0),
    );
    let x = _mm256_min_ps(x, _mm256_set1_ps(gaps.last));
    let c = _mm256_add_epi32(
        _mm256_cvttps_epi32(_mm256_floor_ps(x)),
        _mm256_set1_epi32(1),
    );
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(d, d));
    _mm256_blendv_epi8(c, _mm256_set1_epi32(gaps.nan_cell() as i32), nan)
}

/// The gaps of 8 rows at distances `d` (their cells by [`cells_of_avx2`], then as
/// [`Gaps::offer`] finds them), and a bit per row that may be kept.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn gaps_of_avx2(gaps: &Gaps, d: std::arch::x86_64::__m256) -> (std::arch::x86_64::__m256i, u32) {
    use std::arch::x86_64::*;
    let c = cells_of_avx2(gaps, d);
    let cells = gaps.cells.as_ptr().cast::<f32>();
    // SAFETY: every cell index is below the grid's length (clamped; NaN: the last); a cell
    // is 8 bytes, its split first, its gaps after.
    let (split, both) = unsafe {
        (
            _mm256_i32gather_ps::<8>(cells, c),
            _mm256_i32gather_epi32::<8>(cells.add(1).cast(), c),
        )
    };
    let above = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(d, split));
    let g = _mm256_blendv_epi8(
        _mm256_and_si256(both, _mm256_set1_epi32(0xffff)),
        _mm256_srli_epi32::<16>(both),
        above,
    );
    // SAFETY: every gap number is below the cuts' length (the grid holds no other).
    let keep = unsafe { _mm256_i32gather_ps::<4>(gaps.keep.as_ptr(), g) };
    (
        g,
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(d, keep)) as u32,
    )
}

/// The whole chunks of [`scan`] in AVX2: per 8 rows their cells (the same arithmetic as
/// [`Gaps::cell_of`]), gaps and cuts gathered, compared at once; the gaps' counts one by one.
/// (Reading each row's cell with plain loads instead was slower on AMD.)
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    gaps: &mut Gaps,
    (row, norms): (&[f32], &[f32]),
    to_d: ToDistance,
    first: u32,
    limit: usize,
) {
    use std::arch::x86_64::*;
    let cx = Ctx {
        m,
        plan,
        limit,
        slack: state.slack,
    };
    // Rows before every start lie in gap 0, rows from the last start on in the last gap
    // (whose count no pair reads): a chunk of only such rows needs no lookup.
    let pairs = gaps.order.len();
    let (first_start, last_start) = (
        _mm256_set1_ps(gaps.starts[0]),
        _mm256_set1_ps(gaps.starts[pairs - 1]),
    );
    for c in 0..row.len() / CHUNK {
        let at = c * CHUNK;
        let (d0, d1) = super::chunk_distances_avx2(row, norms, at, to_d);
        let base = first + at as u32;
        let (mut d, mut stored) = ([0f32; CHUNK], false);
        super::offer_chunk_nearest_avx2(m, plan, state, (d0, d1), base, &mut d, &mut stored);
        let before = super::lanes_of_avx2(
            _mm256_cmp_ps::<_CMP_LT_OQ>(d0, first_start),
            _mm256_cmp_ps::<_CMP_LT_OQ>(d1, first_start),
        );
        let past = super::lanes_of_avx2(
            _mm256_cmp_ps::<_CMP_GE_OQ>(d0, last_start),
            _mm256_cmp_ps::<_CMP_GE_OQ>(d1, last_start),
        );
        if before | past == 0xffff {
            gaps.counts[0] += before.count_ones();
            let keep = _mm256_set1_ps(gaps.keep[pairs]);
            let mut kept = past
                & super::lanes_of_avx2(
                    _mm256_cmp_ps::<_CMP_LE_OQ>(d0, keep),
                    _mm256_cmp_ps::<_CMP_LE_OQ>(d1, keep),
                );
            if kept != 0 {
                super::store_chunk_avx2(&mut d, (d0, d1), &mut stored);
                while kept != 0 {
                    let l = kept.trailing_zeros() as usize;
                    kept &= kept - 1;
                    gaps.keep_row(pairs, d[l], base + l as u32, &cx);
                }
            }
            continue;
        }
        let (g0, kept0) = gaps_of_avx2(gaps, d0);
        let (g1, kept1) = gaps_of_avx2(gaps, d1);
        let mut g = [0u32; CHUNK];
        // SAFETY: `g` holds 16 u32s.
        unsafe {
            _mm256_storeu_si256(g.as_mut_ptr().cast(), g0);
            _mm256_storeu_si256(g.as_mut_ptr().add(8).cast(), g1);
        }
        for &g in &g {
            gaps.counts[g as usize] += 1;
        }
        let mut kept = kept0 | kept1 << 8;
        if kept != 0 {
            super::store_chunk_avx2(&mut d, (d0, d1), &mut stored);
            while kept != 0 {
                let l = kept.trailing_zeros() as usize;
                kept &= kept - 1;
                gaps.keep_row(g[l] as usize, d[l], base + l as u32, &cx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(d_aps: &[f32], strategy: crate::config::NegativeStrategy) -> Vec<PairState> {
        d_aps
            .iter()
            .map(|&d_ap| PairState {
                d_ap,
                band: Band::of(strategy, d_ap, 0.2),
                below: 0,
                near: Vec::new(),
                cut: f32::INFINITY,
                prune_at: 0,
                scratch: Vec::new(),
                exact: Vec::new(),
                keyed: None,
            })
            .collect()
    }

    /// The gap of `d` as the scan finds it: through the grid, then a cell's edges.
    fn gap_through_grid(gaps: &Gaps, d: f32) -> usize {
        let g = gaps.gap_in(gaps.cell_of(d), d);
        if g == gaps.multi() as usize {
            gaps.gap_among_edges(d)
        } else {
            g
        }
    }

    #[test]
    fn starts_out_of_the_pairs_order_leave_each_pair_its_own_selector() {
        use crate::config::NegativeStrategy::Easy;
        let mut pairs = pairs(&[0.5, 0.6, 0.7], Easy);
        assert!(Gaps::new(&pairs, 1e-5, 5).is_some());
        // As if rounding had moved the second pair's edge below the first's.
        pairs[1].band.lo = pairs[0].band.lo - 1e-3;
        assert!(Gaps::new(&pairs, 1e-5, 5).is_none());
    }

    #[test]
    fn a_rows_gap_is_the_number_of_edges_at_or_before_it_even_at_the_edges() {
        use crate::config::NegativeStrategy::*;
        // Clustered and repeated edges (several to a cell, equal ones), a lone far one, and
        // all edges equal or at -inf (one cell).
        let spread: Vec<f32> = (0..40).map(|i| 1.0 + (i * i) as f32 * 1e-4).collect();
        let cases: Vec<(Vec<f32>, _)> = vec![
            (spread.clone(), Semihard),
            ([spread.clone(), vec![1.05, 1.05, 1.05, 3.0]].concat(), Easy),
            (vec![0.5; 12], Semihard),
            (spread, Hard),
        ];
        for (d_aps, strategy) in cases {
            let pairs = pairs(&d_aps, strategy);
            let gaps = Gaps::new(&pairs, 1e-5, 5).unwrap();
            let mut probes: Vec<f32> = vec![f32::NEG_INFINITY, -1.0, 0.0, 10.0, f32::INFINITY];
            for &s in &gaps.starts {
                probes.extend([s, s.next_down(), s.next_up(), s + 1e-4]);
            }
            for &d in &probes {
                let want = gaps.starts.partition_point(|&s| s <= d);
                assert_eq!(gap_through_grid(&gaps, d), want, "{d} in {:?}", gaps.starts);
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                use std::arch::x86_64::*;
                for chunk in probes.chunks(8) {
                    let mut lanes = [f32::NAN; 8];
                    lanes[..chunk.len()].copy_from_slice(chunk);
                    let (mut cells, mut got) = ([0u32; 8], [0u32; 8]);
                    // SAFETY: AVX2 is present (checked above); the arrays hold 8 lanes.
                    unsafe {
                        let d = _mm256_loadu_ps(lanes.as_ptr());
                        _mm256_storeu_si256(cells.as_mut_ptr().cast(), cells_of_avx2(&gaps, d));
                        _mm256_storeu_si256(got.as_mut_ptr().cast(), gaps_of_avx2(&gaps, d).0);
                    }
                    for (l, &d) in lanes.iter().enumerate() {
                        assert_eq!(cells[l] as usize, gaps.cell_of(d), "{d}");
                        let want = if d.is_nan() {
                            gaps.nan() as usize
                        } else {
                            gap_through_grid(&gaps, d)
                        };
                        let got = got[l] as usize;
                        // A row in a cell of several edges is resolved past the vector step.
                        assert!(
                            got == want || got == gaps.multi() as usize,
                            "{d}: {got} {want}"
                        );
                    }
                }
            }
        }
    }
}

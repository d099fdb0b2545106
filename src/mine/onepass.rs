//! The one-pass exact engine: every negative of a block of anchors from one blocked pass of
//! matrix products over the whole table, whatever depth the answers lie at.
//!
//! In: the block's [`AnchorPlan`]s (positives chosen exactly first, so every (anchor,
//! positive) pair knows its acceptance band before the pass) and an exact index's miner. Out:
//! the same [`Resolved`] outcome the deepening ladder gives, triplet for triplet (under
//! `--sample random` without a rank window, a keyed sample of the same band instead).
//!
//! Groups of anchors run in parallel, one per core, each multiplying with BLAS on its own
//! thread: tiles of (anchors x table rows) distances come from one `sgemm` and the rows'
//! norms. Each pair keeps only what its answer needs: how many rows lie before its band (for
//! ranks), and the rows of its band nearer than its `N`-th certain negative (or, sampled, of
//! smaller key than its `N`-th certain negative's; a second sweep ranks them). In window mode
//! an anchor keeps its `range_max` nearest rows. GEMM distances are within a bound `eps` of
//! the exact ones, so every decision within `eps` of an edge is left to the exact distances
//! computed at the end: the results equal an exhaustive exact search.

use std::os::raw::{c_char, c_int};

use rand::Rng;
use rayon::prelude::*;

use super::negatives::{Resolved, qualifies};
use super::positives::AnchorPlan;
use super::{Miner, Triplet};
use crate::config::{Metric, NegativeSampling, NegativeStrategy};
use crate::error::Result;
use crate::io::sweep;
use crate::score::TripletKind;

mod gaps;
pub(super) use gaps::MIN_PAIRS as GAP_MIN_PAIRS;

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
        // 1024 x 512 floats: a 2 MiB tile per thread, near cache. Many anchors per group, as
        // each product packs its table rows (a transposing copy) for them all; a few hundred
        // rows per tile, as each packs the group's anchors again. Measured on 100,000 x 128
        // (AVX-512 Xeon): 256 x 2048 was 7% slower, 2048 x 256 17%, 512 x 512 5%, 1024 x 1024
        // and 2048 x 512 1 to 2%.
        Tiles {
            anchors: 1024,
            rows: 512,
        }
    }
}

/// Rank windows up to this many rows are served by the one-pass engine (their rows are kept
/// per anchor during the pass); wider ones by the ladder.
const MAX_WINDOW: usize = 1024;

/// Random stream of the sample keys' salts (`--sample random`).
const STREAM_KEY: u64 = 3;

/// Whether the one-pass engine serves these parameters (else the deepening ladder does):
/// an exact index (vectors in memory, or spilled: the pass reads them in order), no `--max-k`
/// (a cap on the ladder's depth, which the one pass does not have), and either bands without
/// guards (nearest-first or sampled), or a rank window of at most [`MAX_WINDOW`] rows (then
/// any sampling and guards: everything selected lies among the window's rows).
pub(super) fn applies(m: &Miner) -> bool {
    let p = &m.params;
    let bands = !p.guarded() && p.range_min == 0 && p.range_max.is_none();
    m.exact() && m.one_pass && p.max_k.is_none() && (bands || window(m).is_some())
}

/// The rows an anchor keeps in window mode: the `range_max` nearest (at least the
/// `suspects_k` nearest in labelled mode, for the neighbour labels).
fn window(m: &Miner) -> Option<usize> {
    let p = &m.params;
    let range_max = p.range_max.filter(|&r| r <= MAX_WINDOW)?;
    let near = if m.queries.is_some() { 0 } else { p.suspects_k };
    Some(range_max.max(near).min(m.table.rows().saturating_sub(1)))
}

/// The window's rows an anchor keeps for an incremental run (as its neighbour list: the
/// nearest rows, of which the neighbour labels read the first `suspects_k`), so that new rows
/// entering the window are taken in without a pass over the table: its length, where the
/// one-pass engine mines the window and it is at most [`KEPT_WINDOW`] rows.
pub(super) fn kept_window(m: &Miner) -> Option<usize> {
    let k = window(m)?;
    (m.keep_neighbours && applies(m) && k <= KEPT_WINDOW).then_some(k)
}

/// The longest window a query keeps: `8 x KEPT_WINDOW` bytes a query in the state.
const KEPT_WINDOW: usize = 256;

/// `dot(q_b, t_j)` for every anchor row `q_b` of `q` and table row `t_j` of `t` into
/// `out[b * rows + j]` (`q`: `anchors x dim`, `t`: `rows x dim`, both row-major).
pub(super) fn inner_products(q: &[f32], t: &[f32], dim: usize, out: &mut [f32]) {
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
/// rows of squared norm at most `r_sq`: the inner product's rounding (`gamma_dim |a| |r|` with
/// `gamma_n = n u / (1 - n u)` and `u = 2^-24`, f32's unit roundoff, for any order of
/// summation, with or without fused multiply-adds; twice, as the distance holds `-2 a.r`),
/// plus the rounding of the norms (summed in f64, rounded once), of the two additions and of
/// the exact distance itself: at most `u` times `|a|^2 + |r|^2` for each of the first three
/// and `u` times the distance, at most twice that, for the last two, `6 u (|a|^2 + |r|^2)`,
/// bounded here by `16 u` (f64's own rounding and second-order terms are far below the
/// difference). The bound decides which rows are checked exactly, never a result.
pub(super) fn gemm_error_bound(dim: usize, a_sq: f32, r_sq: f32) -> f32 {
    let u = f32::EPSILON as f64 / 2.0;
    let gamma = dim as f64 * u / (1.0 - dim as f64 * u);
    let (a_sq, r_sq) = (a_sq as f64, r_sq as f64);
    (2.0 * gamma * (a_sq * r_sq).sqrt() + 16.0 * u * (a_sq + r_sq)) as f32
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
    /// [`prune`] again once `near` holds this many rows: soon, so that `cut` stays tight
    /// and few rows need a closer look.
    prune_at: usize,
    /// Reused by [`prune`].
    scratch: Vec<f32>,
    /// The exact distances of `near`'s rows, in its order, when known before [`finish`]
    /// (rows an anchor's pairs share: [`gaps`]); else empty.
    exact: Vec<f32>,
    /// Under `--sample random`: the pair's sample is the qualifying rows of smallest key.
    keyed: Option<Keyed>,
}

/// A seeded sample of a band without replacement (bottom-`N` by key): each row's key is a
/// function of the seed, the anchor, the positive, the row and the table's size in bits only,
/// so the sample does not depend on tiles, threads or the order rows arrive in. Keys are a
/// bijection of the `bits`-bit numbers, so rows can also be visited in key order
/// ([`Keyed::row_of`]): a dense band's sample is found by drawing rows in that order.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keyed {
    /// Below `2^bits`.
    salt: u32,
    /// The smallest number of bits that holds every row position.
    bits: u32,
    /// Rows of a larger key cannot be sampled: `N` rows certainly qualifying have smaller.
    key_cut: u32,
}

/// Multipliers of the key's mixing (MurmurHash3's finaliser), odd, so invertible modulo any
/// power of two; and their inverses modulo `2^32`.
const MIX1: u32 = 0x85eb_ca6b;
const MIX2: u32 = 0xc2b2_ae35;
const UNMIX1: u32 = inverse_mod_2_32(MIX1);
const UNMIX2: u32 = inverse_mod_2_32(MIX2);

/// `x` with `x * c == 1` modulo `2^32` (`c` odd), by Newton's iteration.
const fn inverse_mod_2_32(c: u32) -> u32 {
    let mut x = c; // correct to 3 bits
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u32.wrapping_sub(c.wrapping_mul(x)));
        i += 1;
    }
    x
}

impl Keyed {
    /// Keys over every `u32` (row counts do not move them).
    pub(super) fn wide(seed_salt: u32) -> Keyed {
        Keyed::new(seed_salt, usize::MAX >> 1)
    }

    fn new(seed_salt: u32, rows: usize) -> Keyed {
        let bits = (usize::BITS - rows.max(2).saturating_sub(1).leading_zeros()).clamp(1, 32);
        let keyed = Keyed {
            salt: 0,
            bits,
            key_cut: u32::MAX,
        };
        Keyed {
            salt: seed_salt & keyed.mask(),
            ..keyed
        }
    }

    #[inline(always)]
    fn mask(self) -> u32 {
        u32::MAX >> (32 - self.bits)
    }

    #[inline(always)]
    fn shift(self) -> u32 {
        self.bits.div_ceil(2)
    }

    /// The key of `row`: distinct rows, distinct keys (xor-shifts and odd multiplications
    /// of `bits`-bit numbers, each invertible).
    #[inline(always)]
    pub(super) fn key(self, row: u32) -> u32 {
        let (mask, s) = (self.mask(), self.shift());
        let mut h = (row ^ self.salt) & mask;
        h ^= h >> s;
        h = h.wrapping_mul(MIX1) & mask;
        h ^= h >> s;
        h = h.wrapping_mul(MIX2) & mask;
        h ^ (h >> s)
    }

    /// The row of key `k` (possibly beyond the table: keys cover `2^bits` rows).
    pub(super) fn row_of(self, k: u32) -> u32 {
        let (mask, s) = (self.mask(), self.shift());
        let unshift = |h: u32| {
            let mut x = h;
            for _ in 0..self.bits.div_ceil(s) {
                x = h ^ (x >> s);
            }
            x
        };
        let mut h = unshift(k & mask);
        h = h.wrapping_mul(UNMIX2) & mask;
        h = unshift(h);
        h = h.wrapping_mul(UNMIX1) & mask;
        (unshift(h) ^ self.salt) & mask
    }
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
        if self.entries.len() >= 2 * self.k + 8 {
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
    /// Its pairs only rank sampled rows ([`sample_pairs`]: bands of one distance, nothing
    /// pruned), which [`scan_ranks_avx2`] serves.
    ranks_only: bool,
    /// Reused by [`scan`].
    edges: Vec<Edges>,
    /// For an anchor of many pairs: one selector for them all ([`gaps`]).
    gaps: Option<gaps::Gaps>,
}

/// Resolves every planned anchor of `plans` (those with a positive) in one pass over the
/// table per group of anchors, groups in parallel; `None` for the others.
pub(super) fn resolve_all(m: &mut Miner, plans: &[AnchorPlan]) -> Result<Vec<Option<Resolved>>> {
    let planned: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].hardest_positive_distance.is_some())
        .collect();
    let started = std::time::Instant::now();
    // Anchors of many pairs, whose state is larger, in groups of their own: fewer anchors
    // and more rows per tile (the same memory), so each anchor's state stays in cache
    // while it scans a tile.
    let (many, few): (Vec<usize>, Vec<usize>) = planned
        .iter()
        .copied()
        .partition(|&i| gaps::applies(m, &plans[i]));
    let threads = rayon::current_num_threads();
    let mut groups: Vec<(&[usize], Tiles)> = Vec::new();
    for (list, tiles) in [(&few, m.tiles), (&many, gaps::tiles(m.tiles))] {
        // Groups for every thread even when anchors are few.
        let per_group = tiles.anchors.min(list.len().div_ceil(threads)).max(1);
        for range in groups_within_memory(m, plans, list, per_group) {
            groups.push((&list[range], tiles));
        }
    }
    let resolved: Vec<Vec<Resolved>> = {
        let m = &*m;
        // Each group multiplies on its own thread: BLAS's threads would only wait between
        // the small products and the scans.
        let _single = crate::process::BlasThreads::single();
        groups
            .par_iter()
            .map(|&(group, tiles)| resolve_group(m, plans, group, tiles))
            .collect::<Result<_>>()?
    };
    m.search.seconds += started.elapsed().as_secs_f64();
    m.search.queries += planned.len() as u64;
    let mut out: Vec<Option<Resolved>> = (0..plans.len()).map(|_| None).collect();
    for ((group, _), resolved) in groups.iter().zip(resolved) {
        for (&i, r) in group.iter().zip(resolved) {
            out[i] = Some(r);
        }
    }
    Ok(out)
}

/// Groups of at most `per_group` consecutive planned anchors; under a memory limit also
/// groups whose pairs' state (each (anchor, positive) pair keeps the band rows it may still
/// need) fits one thread's share of the budget for results, so that `--positives all` over
/// large label groups does not hold every pair of a thousand anchors at once.
fn groups_within_memory(
    m: &Miner,
    plans: &[AnchorPlan],
    planned: &[usize],
    per_group: usize,
) -> Vec<std::ops::Range<usize>> {
    let Some(scratch) = m.scratch else {
        return (0..planned.len())
            .step_by(per_group)
            .map(|s| s..(s + per_group).min(planned.len()))
            .collect();
    };
    // `all` keeps every band row, however many: counted as many as the ladder's deepest
    // search would return.
    let kept = first_prune_at(
        m.negatives_per_pair_estimate(),
        m.params.sample == crate::config::NegativeSampling::Random,
    );
    // A pair's state, its kept rows (8 bytes, in a buffer that may have doubled, and more
    // than `kept` after a prune keeps the rows near the band's edges) and the prune's
    // scratch: measured at 1.2 KB a pair for 5 negatives on 1,000,000 x 128.
    let pair_bytes = 256 + 48 * kept;
    let share = scratch.results() / rayon::current_num_threads().max(1);
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (at, &i) in planned.iter().enumerate() {
        let pairs = plans[i].positives.len().max(1);
        bytes = bytes.saturating_add(pairs.saturating_mul(pair_bytes));
        let len = at + 1 - start;
        // Each group is a pass over the table: never fewer than `MIN_GROUP` anchors.
        if len == per_group || (bytes > share && len >= MIN_GROUP) {
            out.push(start..at + 1);
            (start, bytes) = (at + 1, 0);
        }
    }
    if start < planned.len() {
        out.push(start..planned.len());
    }
    out
}

/// How many band rows a pair keeps before its first prune, for `limit` negatives: twice the
/// limit and a few more, or a whole small band when a random sample is ranked from it.
fn first_prune_at(limit: usize, whole_band: bool) -> usize {
    let at = 2 * limit.min(1 << 20) + 8;
    if whole_band { WHOLE_BAND.max(at) } else { at }
}

/// The fewest anchors of a group of the one-pass engine under a memory limit.
const MIN_GROUP: usize = 32;

fn resolve_group(
    m: &Miner,
    plans: &[AnchorPlan],
    group: &[usize],
    tiles: Tiles,
) -> Result<Vec<Resolved>> {
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
    let window = window(m);
    // Under `--sample random`, dense bands' samples drawn in key order before the pass: the
    // pass then only ranks them.
    // Where most bands of the group's first anchors turn out sparse, the rest do not try.
    let draw = p.sample == NegativeSampling::Random
        && window.is_none()
        && m.sample_shortcuts
        && limit != usize::MAX
        && m.gather_budget_rows().is_none();
    let (mut tried, mut failed) = (0usize, 0usize);
    let mut drawn: Vec<Option<Vec<Triplet>>> = group
        .iter()
        .enumerate()
        .map(|(b, &i)| {
            if !draw || (tried >= DRAW_PROBE && 2 * failed > tried) {
                return None;
            }
            tried += 1;
            let anchor = &queries[b * dim..(b + 1) * dim];
            let samples = draw_samples(m, &plans[i], anchor, limit);
            failed += usize::from(samples.is_none());
            samples
        })
        .collect();
    let mut states: Vec<AnchorState> = group
        .iter()
        .zip(&drawn)
        .map(|(&i, drawn)| {
            let plan = &plans[i];
            AnchorState {
                // Drawn samples: the pass only ranks them. In window mode the window's rows
                // are all it keeps.
                pairs: match drawn {
                    Some(triplets) => sample_pairs(triplets),
                    None => plan
                        .positives
                        .iter()
                        .filter(|_| window.is_none())
                        .map(|&(d_ap, positive)| {
                            let band = Band::of(p.negatives, d_ap, p.margin);
                            let keyed = (p.sample == NegativeSampling::Random).then(|| {
                                let salt =
                                    super::rng_for(p.seed, plan.anchor, positive, STREAM_KEY)
                                        .next_u32();
                                Keyed::new(salt, n)
                            });
                            PairState {
                                d_ap,
                                band,
                                below: 0,
                                near: Vec::new(),
                                cut: f32::INFINITY,
                                // A sample keeps its whole band while it is small: the sample's
                                // ranks then come from it, without a second pass.
                                prune_at: first_prune_at(
                                    limit,
                                    keyed.is_some() && m.sample_shortcuts,
                                ),
                                scratch: Vec::new(),
                                exact: Vec::new(),
                                keyed,
                            }
                        })
                        .collect(),
                },
                nearest_negative: Nearest::new(1),
                nearest_rows: Nearest::new(window.unwrap_or(near)),
                slack: 2.0 * gemm_error_bound(dim, query_norm_of(plan.anchor), max_norm),
                ranks_only: drawn.is_some(),
                edges: Vec::new(),
                gaps: None,
            }
        })
        .collect();
    for (state, &i) in states.iter_mut().zip(group) {
        if gaps::applies(m, &plans[i]) {
            state.gaps = gaps::Gaps::new(&state.pairs, state.slack, limit);
        }
    }
    let sweep = Sweep {
        m,
        plans,
        group,
        queries: &queries,
        query_norms: &query_norms,
        tiles,
    };
    sweep.run(&mut states, limit);
    let mut resolved: Vec<Resolved> = Vec::with_capacity(group.len());
    with_rows(m, states, |b, mut state, rows| {
        let anchor = &queries[b * dim..(b + 1) * dim];
        let plan = &plans[group[b]];
        if let Some(gaps) = state.gaps.take() {
            let cx = gaps::Ctx {
                m,
                plan,
                limit,
                slack: state.slack,
            };
            gaps.finish(&mut state.pairs, &cx, rows, anchor);
        }
        match drawn[b].take() {
            Some(triplets) => {
                // The pairs of the pass were the samples' ranks; the rest as for any anchor.
                let ranks = std::mem::take(&mut state.pairs);
                let mut r = finish(m, plan, state, limit, rows, anchor);
                r.triplets = triplets;
                rank_anchor(m, &mut r, ranks, rows, (anchor, query_norms[b]));
                resolved.push(r);
            }
            None => resolved.push(finish(m, plan, state, limit, rows, anchor)),
        }
    })?;
    if p.sample == NegativeSampling::Random && window.is_none() {
        // Samples the pass found in bands too large to keep whole: a second pass ranks them.
        let unranked: Vec<usize> = (0..group.len())
            .filter(|&b| {
                resolved[b]
                    .triplets
                    .iter()
                    .any(|t| t.negative_rank == u32::MAX)
            })
            .collect();
        rank_samples(&sweep, &mut resolved, max_norm, &unranked)?;
    }
    Ok(resolved)
}

/// Rows drawn in key order per pair before giving up on drawing its sample, as a multiple
/// of the samples' size (plus a few): bands denser than about one row in eight qualify.
const DRAW_FACTOR: usize = 8;
const DRAW_SLACK: usize = 32;
/// Under `--sample random`, a pair keeps every row of its band up to this many (their ranks
/// are then known at the end of the pass); beyond, only the rows of smallest key.
const WHOLE_BAND: usize = 1024;
/// Rows drawn (and prefetched) together.
const DRAW_BATCH: usize = 16;

/// Rows drawn at random between two looks at a spilled table's resident pages.
const RELIEVE_EVERY_ROWS: usize = 1024;
/// Anchors of a group that try to draw before the group judges its bands (drawing stops when
/// most failed).
const DRAW_PROBE: usize = 32;

/// `--sample random`: each pair's sample drawn by visiting rows in key order, computing
/// exact distances, until `limit` qualify; the same rows the pass would keep (the qualifying
/// rows of smallest key), unranked. `None` when a pair's band is too sparse to find them
/// among the first rows drawn: the pass finds that anchor's samples instead.
fn draw_samples(
    m: &Miner,
    plan: &AnchorPlan,
    anchor: &[f32],
    limit: usize,
) -> Option<Vec<Triplet>> {
    let (n, p) = (m.table.rows(), &m.params);
    let budget = DRAW_FACTOR * limit + DRAW_SLACK;
    let mut triplets = Vec::new();
    let mut batch = Vec::with_capacity(DRAW_BATCH);
    let mut since_relief = 0;
    for &(d_ap, positive) in &plan.positives {
        let salt = super::rng_for(p.seed, plan.anchor, positive, STREAM_KEY).next_u32();
        let keyed = Keyed::new(salt, n);
        let keys = 1u64 << keyed.bits;
        let (mut next, mut drawn, mut taken) = (0u64, 0usize, 0usize);
        while taken < limit {
            batch.clear();
            while batch.len() < DRAW_BATCH && next < keys {
                let r = keyed.row_of(next as u32);
                next += 1;
                if (r as usize) < n && Some(r) != m.anchor_self(plan.anchor) {
                    batch.push(r);
                }
            }
            if batch.is_empty() {
                // Every row seen: the band holds fewer than `limit`.
                break;
            }
            if drawn >= budget {
                return None;
            }
            // Rows drawn at random from a spilled table fault its pages in one by one,
            // faster than the store's watch thread may get a core to drop them.
            since_relief += batch.len();
            if since_relief >= RELIEVE_EVERY_ROWS {
                m.table.vectors.drop_pages_over_budget();
                since_relief = 0;
            }
            m.prefetch_rows(batch.iter().copied());
            for &r in &batch {
                drawn += 1;
                if !m.is_negative(plan.anchor, plan.label, r) {
                    continue;
                }
                let d = p.metric.distance(anchor, m.row(r));
                if qualifies(p.negatives, d_ap, d, p.margin) {
                    triplets.push(Triplet {
                        anchor: plan.anchor,
                        positive,
                        negative: r,
                        d_ap,
                        d_an: d,
                        negative_rank: u32::MAX,
                    });
                    taken += 1;
                    if taken == limit {
                        break;
                    }
                }
            }
        }
    }
    Some(triplets)
}

/// One pair per sampled triplet, its band the sample's distance: the pass counts the rows
/// certainly nearer and keeps those within the error bound (for [`rank_anchor`]).
fn sample_pairs(triplets: &[Triplet]) -> Vec<PairState> {
    triplets
        .iter()
        .map(|t| PairState {
            d_ap: t.d_an,
            band: Band {
                lo: t.d_an,
                hi: t.d_an,
                tol: 0.0,
            },
            below: 0,
            near: Vec::new(),
            cut: f32::INFINITY,
            prune_at: usize::MAX,
            scratch: Vec::new(),
            exact: Vec::new(),
            keyed: None,
        })
        .collect()
}

/// Hands each of `states` (in order, with its index) to `visit` with the rows its exact
/// distances need: a spilled table's rows are read for a run of anchors at a time, runs whose
/// kept rows fit this thread's share of the read budget.
fn with_rows(
    m: &Miner,
    states: Vec<AnchorState>,
    mut visit: impl FnMut(usize, AnchorState, &RowSource),
) -> Result<()> {
    let runs = runs_within_budget(m, &states);
    let mut states = states.into_iter();
    for run in runs {
        let part: Vec<AnchorState> = states.by_ref().take(run.len()).collect();
        let rows = RowSource::for_states(m, &part)?;
        for (b, state) in run.zip(part) {
            visit(b, state, &rows);
        }
    }
    Ok(())
}

/// Consecutive runs of `states` whose kept rows fit this thread's share of a spilled table's
/// read budget (all of them in one run when the table is in memory).
fn runs_within_budget(m: &Miner, states: &[AnchorState]) -> Vec<std::ops::Range<usize>> {
    let kept: Vec<usize> = states
        .iter()
        .map(|s| {
            let pairs: usize = s.pairs.iter().map(|p| p.near.len()).sum();
            let gaps = s.gaps.as_ref().map_or(0, |g| g.kept().count());
            pairs + gaps + s.nearest_negative.entries.len() + s.nearest_rows.entries.len()
        })
        .collect();
    let budget = m
        .gather_budget_rows()
        .map(|b| (b / rayon::current_num_threads()).max(1));
    super::batches(&kept, budget)
}

/// One group of anchors against the whole table, tile by tile.
struct Sweep<'a> {
    m: &'a Miner<'a>,
    plans: &'a [AnchorPlan],
    group: &'a [usize],
    /// The group's anchor vectors, row-major, and their squared norms.
    queries: &'a [f32],
    query_norms: &'a [f32],
    tiles: Tiles,
}

impl Sweep<'_> {
    /// Feeds every (anchor, row) distance to the anchors' `states`.
    fn run(&self, states: &mut [AnchorState], limit: usize) {
        let (m, group, plans) = (self.m, self.group, self.plans);
        let (dim, n) = (m.table.dim, m.table.rows());
        let rows_per_tile = self.tiles.rows.max(1);
        let mut tile = vec![0f32; group.len() * rows_per_tile];
        // A spilled table is read in order through its mapping: the next tile is read ahead
        // while this one is used, and what was swept is dropped.
        let tiles = sweep(&m.vectors[..n * dim], rows_per_tile * dim, &m.table.vectors);
        for (t, table) in tiles.enumerate() {
            let start = t * rows_per_tile;
            let width = table.len() / dim;
            let end = start + width;
            let tile = &mut tile[..group.len() * width];
            inner_products(self.queries, table, dim, tile);
            let norms = &m.norms_sq[start..end];
            for b in 0..group.len() {
                let (row, plan, qn) = (
                    &mut tile[b * width..(b + 1) * width],
                    &plans[group[b]],
                    self.query_norms[b],
                );
                if let Some(gaps) = states.get(b + 1).and_then(|s| s.gaps.as_ref()) {
                    gaps.prefetch();
                }
                let state = &mut states[b];
                if let Some(s) = m.anchor_self(plan.anchor)
                    && (start..end).contains(&(s as usize))
                {
                    // NaN fails every comparison: the anchor is never its own neighbour.
                    row[s as usize - start] = f32::NAN;
                }
                let to_d = match m.params.metric {
                    Metric::L2sq => ToDistance::L2 { query_sq: qn },
                    Metric::Cosine => ToDistance::Cosine,
                };
                scan(m, plan, state, row, norms, to_d, start as u32, limit);
            }
        }
    }
}

/// Ranks the sampled negatives of the group's anchors `which` (`--sample random`, samples
/// found by the pass) by a second sweep: a sample drawn anywhere in a band has a rank (rows
/// nearer the anchor, every label) that only the whole table can tell. Each sampled row
/// becomes a band of one distance ([`sample_pairs`]).
fn rank_samples(
    sweep: &Sweep,
    resolved: &mut [Resolved],
    max_norm: f32,
    which: &[usize],
) -> Result<()> {
    if which.is_empty() {
        return Ok(());
    }
    let m = sweep.m;
    let dim = m.table.dim;
    let group: Vec<usize> = which.iter().map(|&b| sweep.group[b]).collect();
    let queries: Vec<f32> = which
        .iter()
        .flat_map(|&b| &sweep.queries[b * dim..(b + 1) * dim])
        .copied()
        .collect();
    let query_norms: Vec<f32> = which.iter().map(|&b| sweep.query_norms[b]).collect();
    let sub = Sweep {
        group: &group,
        queries: &queries,
        query_norms: &query_norms,
        ..*sweep
    };
    let mut states: Vec<AnchorState> = which
        .iter()
        .zip(&query_norms)
        .map(|(&b, &qn)| AnchorState {
            pairs: sample_pairs(&resolved[b].triplets),
            nearest_negative: Nearest::new(0),
            nearest_rows: Nearest::new(0),
            slack: 2.0 * gemm_error_bound(dim, qn, max_norm),
            ranks_only: true,
            edges: Vec::new(),
            gaps: None,
        })
        .collect();
    sub.run(&mut states, usize::MAX);
    with_rows(m, states, |j, state, rows| {
        let anchor = &queries[j * dim..(j + 1) * dim];
        rank_anchor(
            m,
            &mut resolved[which[j]],
            state.pairs,
            rows,
            (anchor, query_norms[j]),
        );
    })
}

/// The ranks of one anchor's sampled negatives from the `pairs` a pass made of them
/// ([`sample_pairs`]), and its triplets in rank order per positive. `anchor`: its vector and
/// squared norm.
fn rank_anchor(
    m: &Miner,
    r: &mut Resolved,
    pairs: Vec<PairState>,
    rows: &RowSource,
    (anchor, a_sq): (&[f32], f32),
) {
    for (t, pair) in r.triplets.iter_mut().zip(pairs) {
        let at = (t.d_an, t.negative);
        // The pass kept the rows within twice the largest error bound of the sample's
        // (exact) distance; most lie beyond their own row's bound of it, which decides them
        // without the exact distance (a hundredth more for the norms' own rounding).
        let nearer = pair
            .near
            .iter()
            .filter(|&&(d, x)| {
                if x == t.negative {
                    return false;
                }
                let bound = 1.01 * gemm_error_bound(anchor.len(), a_sq, m.norms_sq[x as usize]);
                if d + bound < at.0 {
                    true
                } else if d - bound > at.0 {
                    false
                } else {
                    let d = rows.distance(m, anchor, x);
                    d.total_cmp(&at.0).then(x.cmp(&at.1)).is_lt()
                }
            })
            .count();
        t.negative_rank = pair.below + nearer as u32;
    }
    // Per positive (in row order), in rank order: the order of (distance, row).
    r.triplets.sort_by_key(|t| (t.positive, t.negative_rank));
}

/// Rows scanned together: a lane-wide test says whether any of them needs a closer look.
const CHUNK: usize = 16;

/// One pair's edges during a scan: rows before `before` are counted, rows up to `hi` kept
/// (under a random sample, only those of key at most `key_cut`).
#[derive(Clone, Copy)]
struct Edges {
    before: f32,
    hi: f32,
    keyed: Option<Keyed>,
    /// Per lane, rows counted before the band in this tile (summed once at the end).
    below: [u32; CHUNK],
}

/// How a tile's inner products become distances (the same `f32` arithmetic in every path,
/// so that every path gives the same distances, bit for bit).
#[derive(Clone, Copy)]
enum ToDistance {
    /// `|q|^2 + |r|^2 - 2 q.r`, with the anchor's squared norm.
    L2 { query_sq: f32 },
    /// `1 - q.r` (unit vectors).
    Cosine,
}

impl ToDistance {
    #[inline(always)]
    fn at(self, x: f32, row_sq: f32) -> f32 {
        match self {
            ToDistance::L2 { query_sq } => query_sq + row_sq - 2.0 * x,
            ToDistance::Cosine => 1.0 - x,
        }
    }
}

/// Feeds one anchor's inner products with table rows `first..first + row.len()` (turned into
/// distances by `to_d` with each row's squared norm) to its selectors.
///
/// After the first tiles almost no row is near enough to matter, so each chunk of rows is
/// first tested as a whole (branch-free, vectorised, distances kept in registers): rows before
/// every band are counted per lane, and only a chunk holding a row inside some cut is looked
/// at row by row.
#[allow(clippy::too_many_arguments)]
fn scan(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    row: &[f32],
    norms: &[f32],
    to_d: ToDistance,
    first: u32,
    limit: usize,
) {
    if let Some(mut g) = state.gaps.take() {
        gaps::scan(m, plan, state, &mut g, row, norms, to_d, first, limit);
        state.gaps = Some(g);
        return;
    }
    let slack = state.slack;
    let mut edges = std::mem::take(&mut state.edges);
    edges.clear();
    edges.extend(state.pairs.iter().map(|pair| {
        let band = pair.band;
        Edges {
            before: band.lo - band.tol - slack,
            hi: (band.hi + band.tol + slack).min(pair.cut),
            keyed: pair.keyed,
            below: [0; CHUNK],
        }
    }));
    let whole = row.len() / CHUNK * CHUNK;
    let chunks = (&row[..whole], &norms[..whole]);
    #[cfg(target_arch = "x86_64")]
    if !m.portable_scan && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2 (checked just above).
        unsafe {
            if state.ranks_only {
                scan_ranks_avx2(m, plan, state, &mut edges, chunks, to_d, first);
            } else {
                scan_chunks_avx2(m, plan, state, &mut edges, chunks, to_d, first, limit);
            }
        }
    } else {
        scan_chunks(m, plan, state, &mut edges, chunks, to_d, first, limit);
    }
    #[cfg(not(target_arch = "x86_64"))]
    scan_chunks(m, plan, state, &mut edges, chunks, to_d, first, limit);
    // The last rows, fewer than a chunk: counted and looked at one by one.
    let tail = row.len() - whole;
    if tail > 0 {
        let mut d = [0f32; CHUNK];
        for l in 0..tail {
            d[l] = to_d.at(row[whole + l], norms[whole + l]);
            for e in edges.iter_mut() {
                e.below[l] += (d[l] < e.before) as u32;
            }
        }
        let (lanes, base) = ((1u32 << tail) - 1, first + whole as u32);
        let slack = state.slack;
        let (rows, negative) = (&mut state.nearest_rows, &mut state.nearest_negative);
        offer_nearest(m, plan, rows, negative, slack, &d, lanes, base);
        for (pair, e) in state.pairs.iter_mut().zip(edges.iter_mut()) {
            keep(m, plan, pair, e, &d, lanes, base, limit, slack);
        }
    }
    for (pair, e) in state.pairs.iter_mut().zip(&edges) {
        pair.below += e.below.iter().sum::<u32>();
    }
    state.edges = edges;
}

/// The whole chunks of [`scan`], portably.
#[allow(clippy::too_many_arguments)]
fn scan_chunks(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    edges: &mut [Edges],
    (row, norms): (&[f32], &[f32]),
    to_d: ToDistance,
    first: u32,
    limit: usize,
) {
    for (c, (chunk, norms)) in row
        .chunks_exact(CHUNK)
        .zip(norms.chunks_exact(CHUNK))
        .enumerate()
    {
        let mut d = [0f32; CHUNK];
        for l in 0..CHUNK {
            d[l] = to_d.at(chunk[l], norms[l]);
        }
        let base = first + (c * CHUNK) as u32;
        let slack = state.slack;
        // The nearest rows and nearest negative: their cuts tighten as rows arrive.
        let small_cut = state.nearest_negative.cut.max(state.nearest_rows.cut);
        let lanes = lanes_where(|l| d[l] <= small_cut);
        if lanes != 0 {
            let (rows, negative) = (&mut state.nearest_rows, &mut state.nearest_negative);
            offer_nearest(m, plan, rows, negative, slack, &d, lanes, base);
        }
        for (pair, e) in state.pairs.iter_mut().zip(edges.iter_mut()) {
            for (below, &d) in e.below.iter_mut().zip(&d) {
                *below += (d < e.before) as u32;
            }
            let lanes = lanes_where(|l| {
                let sampled = e.keyed.is_none_or(|k| k.key(base + l as u32) <= k.key_cut);
                (d[l] >= e.before) & (d[l] <= e.hi) & sampled
            });
            if lanes != 0 {
                keep(m, plan, pair, e, &d, lanes, base, limit, slack);
            }
        }
    }
}

/// A bit per lane of a chunk, set where `test` holds.
#[inline(always)]
fn lanes_where(test: impl Fn(usize) -> bool) -> u32 {
    (0..CHUNK).fold(0u32, |lanes, l| lanes | (test(l) as u32) << l)
}

/// (anchor, positive) pairs per anchor whose counts [`scan_chunks_avx2`] keeps on the stack
/// (more, on the heap).
const AVX2_PAIRS: usize = 8;

/// The distances of rows `at..at + 16` of a tile, as two vectors of 8: the products `row`
/// turned into distances by `to_d` with the rows' squared `norms` (as `ToDistance::at`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn chunk_distances_avx2(
    row: &[f32],
    norms: &[f32],
    at: usize,
    to_d: ToDistance,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (x, t) = (&row[at..at + CHUNK], &norms[at..at + CHUNK]);
    // SAFETY: both slices hold 16 floats; unaligned loads.
    let (x0, x1, t0, t1) = unsafe {
        (
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(t.as_ptr()),
            _mm256_loadu_ps(t.as_ptr().add(8)),
        )
    };
    let distances = |x: __m256, tn: __m256| match to_d {
        // (|q|^2 + |r|^2) - 2 x, as `ToDistance::at` computes it.
        ToDistance::L2 { query_sq } => _mm256_sub_ps(
            _mm256_add_ps(_mm256_set1_ps(query_sq), tn),
            _mm256_add_ps(x, x),
        ),
        ToDistance::Cosine => _mm256_sub_ps(_mm256_set1_ps(1.0), x),
    };
    (distances(x0, t0), distances(x1, t1))
}

/// A bit per row of a chunk: the sign bits of its two masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn lanes_of_avx2(m0: std::arch::x86_64::__m256, m1: std::arch::x86_64::__m256) -> u32 {
    use std::arch::x86_64::_mm256_movemask_ps;
    (_mm256_movemask_ps(m0) | _mm256_movemask_ps(m1) << 8) as u32
}

/// Adds the per-lane counts of rows before each pair's band (two vectors of 8 lanes a pair)
/// to its edges.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_lane_counts_avx2<'a>(
    edges: &mut [Edges],
    below: impl Iterator<Item = &'a [std::arch::x86_64::__m256i; 2]>,
) {
    use std::arch::x86_64::_mm256_storeu_si256;
    for (e, acc) in edges.iter_mut().zip(below) {
        let mut lanes = [0u32; CHUNK];
        // SAFETY: `lanes` holds 16 u32s.
        unsafe {
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc[0]);
            _mm256_storeu_si256(lanes.as_mut_ptr().add(8).cast(), acc[1]);
        }
        for (b, l) in e.below.iter_mut().zip(lanes) {
            *b += l;
        }
    }
}

/// Offers the rows of a chunk (distances `d0`, `d1`, from `base` on) within the anchor's
/// nearest cuts to its nearest rows and nearest negative, storing the distances in `d` if
/// any is (`stored` says whether they were).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn offer_chunk_nearest_avx2(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    (d0, d1): (std::arch::x86_64::__m256, std::arch::x86_64::__m256),
    base: u32,
    d: &mut [f32; CHUNK],
    stored: &mut bool,
) {
    use std::arch::x86_64::*;
    let small_cut = _mm256_set1_ps(state.nearest_negative.cut.max(state.nearest_rows.cut));
    let small = lanes_of_avx2(
        _mm256_cmp_ps::<_CMP_LE_OQ>(d0, small_cut),
        _mm256_cmp_ps::<_CMP_LE_OQ>(d1, small_cut),
    );
    if small != 0 {
        store_chunk_avx2(d, (d0, d1), stored);
        let (rows, negative) = (&mut state.nearest_rows, &mut state.nearest_negative);
        offer_nearest(m, plan, rows, negative, state.slack, d, small, base);
    }
}

/// Stores a chunk's two vectors of distances into `d`, once (`stored`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn store_chunk_avx2(
    d: &mut [f32; CHUNK],
    (d0, d1): (std::arch::x86_64::__m256, std::arch::x86_64::__m256),
    stored: &mut bool,
) {
    use std::arch::x86_64::_mm256_storeu_ps;
    if !*stored {
        // SAFETY: `d` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(d.as_mut_ptr(), d0);
            _mm256_storeu_ps(d.as_mut_ptr().add(8), d1);
        }
        *stored = true;
    }
}

/// The whole chunks of [`scan`] in AVX2: two vectors of 8 rows at a time, counts kept per
/// lane, the same comparisons as [`scan_chunks`] (ordered: a NaN is in no band).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn scan_chunks_avx2(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    edges: &mut [Edges],
    (row, norms): (&[f32], &[f32]),
    to_d: ToDistance,
    first: u32,
    limit: usize,
) {
    use std::arch::x86_64::*;
    const _: () = assert!(CHUNK == 16);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // All ones in the lanes whose row's key is at most the cut: `key` in 8 lanes.
    let sampled = |rows: __m256i, k: Keyed| {
        // [`Keyed::key`], eight lanes at a time.
        let mask = _mm256_set1_epi32(k.mask() as i32);
        let s = _mm_cvtsi32_si128(k.shift() as i32);
        let mut h = _mm256_and_si256(
            _mm256_xor_si256(rows, _mm256_set1_epi32(k.salt as i32)),
            mask,
        );
        h = _mm256_xor_si256(h, _mm256_srl_epi32(h, s));
        h = _mm256_and_si256(_mm256_mullo_epi32(h, _mm256_set1_epi32(MIX1 as i32)), mask);
        h = _mm256_xor_si256(h, _mm256_srl_epi32(h, s));
        h = _mm256_and_si256(_mm256_mullo_epi32(h, _mm256_set1_epi32(MIX2 as i32)), mask);
        h = _mm256_xor_si256(h, _mm256_srl_epi32(h, s));
        // Unsigned h <= cut: min(h, cut) == h.
        let cut = _mm256_set1_epi32(k.key_cut as i32);
        _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_min_epu32(h, cut), h))
    };
    // Counts in registers (or near); on the heap for many pairs (`--positives all`).
    let mut on_stack = [[_mm256_setzero_si256(); 2]; AVX2_PAIRS];
    let mut on_heap = Vec::new();
    let below = if edges.len() <= AVX2_PAIRS {
        &mut on_stack[..edges.len()]
    } else {
        on_heap.resize(edges.len(), [_mm256_setzero_si256(); 2]);
        &mut on_heap[..]
    };
    for c in 0..row.len() / CHUNK {
        let at = c * CHUNK;
        let (d0, d1) = chunk_distances_avx2(row, norms, at, to_d);
        let base = first + at as u32;
        let slack = state.slack;
        let (mut d, mut stored) = ([0f32; CHUNK], false);
        offer_chunk_nearest_avx2(m, plan, state, (d0, d1), base, &mut d, &mut stored);
        for ((e, acc), pair) in edges
            .iter_mut()
            .zip(below.iter_mut())
            .zip(state.pairs.iter_mut())
        {
            let before = _mm256_set1_ps(e.before);
            let hi = _mm256_set1_ps(e.hi);
            let lt0 = _mm256_cmp_ps::<_CMP_LT_OQ>(d0, before);
            let lt1 = _mm256_cmp_ps::<_CMP_LT_OQ>(d1, before);
            // A true comparison is all ones, -1 as an integer.
            acc[0] = _mm256_sub_epi32(acc[0], _mm256_castps_si256(lt0));
            acc[1] = _mm256_sub_epi32(acc[1], _mm256_castps_si256(lt1));
            // `before <= d <= hi` as `d <= hi` and not `d < before` (NaN: neither).
            let mut in0 = _mm256_andnot_ps(lt0, _mm256_cmp_ps::<_CMP_LE_OQ>(d0, hi));
            let mut in1 = _mm256_andnot_ps(lt1, _mm256_cmp_ps::<_CMP_LE_OQ>(d1, hi));
            if let Some(k) = e.keyed {
                let rows0 = _mm256_add_epi32(_mm256_set1_epi32(base as i32), lane);
                let rows1 = _mm256_add_epi32(rows0, _mm256_set1_epi32(8));
                in0 = _mm256_and_ps(in0, sampled(rows0, k));
                in1 = _mm256_and_ps(in1, sampled(rows1, k));
            }
            let lanes = lanes_of_avx2(in0, in1);
            if lanes != 0 {
                store_chunk_avx2(&mut d, (d0, d1), &mut stored);
                keep(m, plan, pair, e, &d, lanes, base, limit, slack);
            }
        }
    }
    add_lane_counts_avx2(edges, below.iter());
}

/// [`scan_chunks_avx2`] for an anchor whose pairs only rank sampled rows ([`sample_pairs`]:
/// unkeyed, never pruned, each a band of one distance): per pair and 8 rows one comparison
/// to count the rows before its band and one to find those within it, the latter merged
/// over the pairs, so a chunk is looked at row by row only where some row lies within some
/// pair's band (within the GEMM's error of a sampled row's distance: rare).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_ranks_avx2(
    m: &Miner,
    plan: &AnchorPlan,
    state: &mut AnchorState,
    edges: &mut [Edges],
    (row, norms): (&[f32], &[f32]),
    to_d: ToDistance,
    first: u32,
) {
    use std::arch::x86_64::*;
    let zeros = [_mm256_setzero_si256(); 2];
    let bound = (_mm256_setzero_ps(), _mm256_setzero_ps());
    // Counts and edges in registers (or near); on the heap for many samples.
    let (mut on_stack, mut on_heap) = ([(zeros, bound); AVX2_PAIRS], Vec::new());
    let pairs = if edges.len() <= AVX2_PAIRS {
        &mut on_stack[..edges.len()]
    } else {
        on_heap.resize(edges.len(), (zeros, bound));
        &mut on_heap[..]
    };
    for (p, e) in pairs.iter_mut().zip(edges.iter()) {
        p.1 = (_mm256_set1_ps(e.before), _mm256_set1_ps(e.hi));
    }
    for c in 0..row.len() / CHUNK {
        let at = c * CHUNK;
        let (d0, d1) = chunk_distances_avx2(row, norms, at, to_d);
        let base = first + at as u32;
        let (mut d, mut stored) = ([0f32; CHUNK], false);
        offer_chunk_nearest_avx2(m, plan, state, (d0, d1), base, &mut d, &mut stored);
        let (mut in0, mut in1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (acc, (before, hi)) in pairs.iter_mut() {
            let lt0 = _mm256_cmp_ps::<_CMP_LT_OQ>(d0, *before);
            let lt1 = _mm256_cmp_ps::<_CMP_LT_OQ>(d1, *before);
            acc[0] = _mm256_sub_epi32(acc[0], _mm256_castps_si256(lt0));
            acc[1] = _mm256_sub_epi32(acc[1], _mm256_castps_si256(lt1));
            in0 = _mm256_or_ps(
                in0,
                _mm256_andnot_ps(lt0, _mm256_cmp_ps::<_CMP_LE_OQ>(d0, *hi)),
            );
            in1 = _mm256_or_ps(
                in1,
                _mm256_andnot_ps(lt1, _mm256_cmp_ps::<_CMP_LE_OQ>(d1, *hi)),
            );
        }
        let lanes = lanes_of_avx2(in0, in1);
        if lanes != 0 {
            store_chunk_avx2(&mut d, (d0, d1), &mut stored);
            for (pair, e) in state.pairs.iter_mut().zip(edges.iter()) {
                let mut l = lanes;
                while l != 0 {
                    let j = l.trailing_zeros() as usize;
                    l &= l - 1;
                    if d[j] >= e.before && d[j] <= e.hi {
                        pair.near.push((d[j], base + j as u32));
                    }
                }
            }
        }
    }
    add_lane_counts_avx2(edges, pairs.iter().map(|p| &p.0));
}

/// The rows of a chunk from `base` on, at distances `d`, that `lanes` names (a bit per row;
/// every row that may be near enough, the others would change nothing), offered to the
/// anchor's nearest rows and nearest negative.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn offer_nearest(
    m: &Miner,
    plan: &AnchorPlan,
    nearest_rows: &mut Nearest,
    nearest_negative: &mut Nearest,
    slack: f32,
    d: &[f32; CHUNK],
    mut lanes: u32,
    base: u32,
) {
    let small_cut = nearest_negative.cut.max(nearest_rows.cut);
    while lanes != 0 {
        let j = lanes.trailing_zeros() as usize;
        lanes &= lanes - 1;
        let (d, r) = (d[j], base + j as u32);
        if d <= small_cut {
            nearest_rows.offer(d, r, slack);
            if m.is_negative(plan.anchor, plan.label, r) {
                nearest_negative.offer(d, r, slack);
            }
        }
    }
}

/// The rows of a chunk from `base` on, at distances `d`, that `lanes` names (rows that may
/// lie within `edges` and, sampled, have a small enough key), kept by `pair`; its selection
/// is pruned once it has grown, and `edges` follow.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn keep(
    m: &Miner,
    plan: &AnchorPlan,
    pair: &mut PairState,
    edges: &mut Edges,
    d: &[f32; CHUNK],
    mut lanes: u32,
    base: u32,
    limit: usize,
    slack: f32,
) {
    while lanes != 0 {
        let j = lanes.trailing_zeros() as usize;
        lanes &= lanes - 1;
        let (d, r) = (d[j], base + j as u32);
        // Edges may have moved since the lanes were tested (a prune in this chunk).
        let sampled = pair.keyed.is_none_or(|k| k.key(r) <= k.key_cut);
        if d >= edges.before && d <= edges.hi && sampled {
            pair.near.push((d, r));
        }
    }
    if limit != usize::MAX && pair.near.len() >= pair.prune_at {
        prune(m, plan, pair, limit, slack);
        // Rows near the edges stay whatever the cut: wait for `limit` more before trying.
        pair.prune_at = pair.near.len() + limit + 8;
        edges.hi = edges.hi.min(pair.cut);
        edges.keyed = pair.keyed;
    }
}

/// Keeps the band rows that can still matter: those within `slack` of the `limit`-th row
/// certainly in the band and certainly a negative.
fn prune(m: &Miner, plan: &AnchorPlan, pair: &mut PairState, limit: usize, slack: f32) {
    let band = pair.band;
    let certainly_qualifies = |d: f32, r: u32| certainly_qualifies(m, plan, band, slack, d, r);
    if let Some(keyed) = &mut pair.keyed {
        // A sample keeps the smallest keys: beyond the `limit`-th key of rows certainly
        // qualifying, no row can be drawn.
        let k = *keyed;
        let mut keys: Vec<u32> = pair
            .near
            .iter()
            .filter(|&&(d, r)| certainly_qualifies(d, r))
            .map(|&(_, r)| k.key(r))
            .collect();
        if keys.len() < limit {
            return;
        }
        let (_, nth, _) = keys.select_nth_unstable(limit - 1);
        keyed.key_cut = keyed.key_cut.min(*nth);
        let cut = keyed.key_cut;
        pair.near.retain(|&(_, r)| k.key(r) <= cut);
        return;
    }
    let certain = &mut pair.scratch;
    certain.clear();
    certain.extend(
        pair.near
            .iter()
            .filter(|&&(d, r)| certainly_qualifies(d, r))
            .map(|e| e.0),
    );
    let Some(nth) = nth_nearest(certain, limit) else {
        return;
    };
    pair.cut = pair.cut.min(nth + slack);
    let cut = pair.cut;
    retain_within(&mut pair.near, &mut pair.exact, cut);
}

/// The `limit`-th smallest of `distances` (which it reorders), if it holds that many: where
/// a selector of `limit` rows can stop when they are certain ones.
fn nth_nearest(distances: &mut [f32], limit: usize) -> Option<f32> {
    if distances.len() < limit {
        return None;
    }
    let (_, nth, _) = distances.select_nth_unstable_by(limit - 1, f32::total_cmp);
    Some(*nth)
}

/// Keeps the rows of `near` within `cut` (GEMM distance), and their exact distances in
/// `exact` beside them (when known: empty, it stays so).
fn retain_within(near: &mut Vec<(f32, u32)>, exact: &mut Vec<f32>, cut: f32) {
    if !exact.is_empty() {
        let mut kept = near.iter().map(|e| e.0 <= cut);
        exact.retain(|_| kept.next().unwrap_or(false));
    }
    near.retain(|e| e.0 <= cut);
}

/// Whether row `r` at GEMM distance `d` (within `slack` of its exact one) is certainly in
/// `band` and certainly a negative of the anchor.
#[inline]
fn certainly_qualifies(
    m: &Miner,
    plan: &AnchorPlan,
    band: Band,
    slack: f32,
    d: f32,
    r: u32,
) -> bool {
    certainly_in_band(band, slack, d) && m.is_negative(plan.anchor, plan.label, r)
}

/// Whether a row at distance `d` (within `slack` of its exact one) is certainly in `band`:
/// inside it by more than `classify`'s rounding.
#[inline]
fn certainly_in_band(band: Band, slack: f32, d: f32) -> bool {
    d - slack > band.lo + band.tol && d + slack < band.hi - band.tol
}

/// Where exact distances read the table's rows: the table in memory, or rows read from a
/// spilled table (in one `pread` per run of rows, not through its mapping, where scattered
/// rows would fault in whole folios).
struct RowSource {
    /// Rows read (ascending) and their vectors, or `None`: read them from memory.
    read: Option<(Vec<u32>, Vec<f32>)>,
}

impl RowSource {
    /// The rows that the entries of `states`' lists name, read now if the table is spilled.
    fn for_states(m: &Miner, states: &[AnchorState]) -> Result<RowSource> {
        if m.gather_budget_rows().is_none() {
            return Ok(RowSource { read: None });
        }
        let mut rows: Vec<u32> = states
            .iter()
            .flat_map(|s| {
                let lists = [&s.nearest_negative.entries, &s.nearest_rows.entries];
                lists
                    .into_iter()
                    .chain(s.pairs.iter().map(|p| &p.near))
                    .flatten()
                    .map(|e| e.1)
                    .chain(s.gaps.iter().flat_map(|g| g.kept()))
            })
            .collect();
        rows.sort_unstable();
        rows.dedup();
        let data = m.table.vectors.gather_rows(&rows, m.table.dim)?;
        Ok(RowSource {
            read: Some((rows, data)),
        })
    }

    fn row<'a>(&'a self, m: &'a Miner, r: u32) -> &'a [f32] {
        match &self.read {
            None => m.row(r),
            Some((rows, data)) => {
                let dim = m.table.dim;
                let j = rows.binary_search(&r).expect("every row needed was read");
                &data[j * dim..(j + 1) * dim]
            }
        }
    }

    /// The exact distance from `anchor` (its vector) to row `r`, as `Miner::anchor_distance`.
    fn distance(&self, m: &Miner, anchor: &[f32], r: u32) -> f32 {
        m.params.metric.distance(anchor, self.row(m, r))
    }

    /// The exact distances from `anchor` to `entries`' rows, in their order, as
    /// [`RowSource::distance`] gives each: a few rows at a time (their additions interleaved),
    /// each row's vector asked for well ahead (rows lie anywhere in the table, and one after
    /// the other each would wait on memory).
    fn distances(&self, m: &Miner, anchor: &[f32], entries: &[(f32, u32)]) -> Vec<f32> {
        use crate::score::ROWS_AT_ONCE;
        let prefetch = |entries| self.prefetch(m, entries);
        prefetch(&entries[..entries.len().min(PREFETCH_AHEAD)]);
        let mut exact = Vec::with_capacity(entries.len());
        let mut groups = entries.chunks_exact(ROWS_AT_ONCE);
        for (g, group) in groups.by_ref().enumerate() {
            let ahead = (g * ROWS_AT_ONCE + PREFETCH_AHEAD).min(entries.len());
            let next = (ahead + ROWS_AT_ONCE).min(entries.len());
            prefetch(&entries[ahead..next]);
            let rows: [&[f32]; ROWS_AT_ONCE] = std::array::from_fn(|k| self.row(m, group[k].1));
            exact.extend(m.params.metric.distances(anchor, rows));
        }
        exact.extend(
            groups
                .remainder()
                .iter()
                .map(|&(_, r)| self.distance(m, anchor, r)),
        );
        exact
    }

    /// Asks the processor for the vectors of `entries`' rows ahead of their exact distances.
    fn prefetch(&self, m: &Miner, entries: &[(f32, u32)]) {
        for &(_, r) in entries {
            super::prefetch_lines(self.row(m, r));
        }
    }
}

/// Rows whose vectors are asked for ahead of their exact distances.
const PREFETCH_AHEAD: usize = 16;

/// Exact distances for the kept rows, and the anchor's outcome as the ladder gives it.
fn finish(
    m: &Miner,
    plan: &AnchorPlan,
    mut state: AnchorState,
    limit: usize,
    rows: &RowSource,
    anchor: &[f32],
) -> Resolved {
    let a = plan.anchor;
    let margin = m.params.margin;
    let exact = |entries: &[(f32, u32)]| -> Vec<(f32, u32)> {
        let exact = rows.distances(m, anchor, entries);
        let mut list: Vec<(f32, u32)> = exact
            .into_iter()
            .zip(entries)
            .map(|(x, &(_, r))| (x, r))
            .collect();
        super::sort_nearest(&mut list);
        list
    };
    let hardest = plan
        .hardest_positive_distance
        .expect("planned anchors have a positive");
    state.nearest_negative.prune(state.slack);
    state.nearest_rows.prune(state.slack);
    let lists = [&state.nearest_negative.entries, &state.nearest_rows.entries];
    // Pairs whose exact distances are known (from gaps) read no rows.
    let near = state
        .pairs
        .iter()
        .filter(|pair| pair.exact.is_empty())
        .map(|pair| &pair.near);
    for list in lists.into_iter().chain(near) {
        rows.prefetch(m, list);
    }
    let violating_neighbour = exact(&state.nearest_negative.entries)
        .first()
        .map(|&(d, _)| TripletKind::classify(hardest, d, margin) != TripletKind::Easy);
    if window(m).is_some() {
        // The window's rows, exactly and in order, hold every row a rank window can select:
        // the ladder's own selection over them, as over a list of every row.
        let k = state.nearest_rows.k;
        let mut list = exact(&state.nearest_rows.entries);
        list.truncate(k);
        let mut resolved = super::negatives::resolve(m, plan, &list, f32::INFINITY)
            .expect("a list of every row needs no deeper search");
        // Beyond the window a negative may exist that the list does not hold.
        resolved.violating_neighbour = violating_neighbour;
        if kept_window(m).is_some() {
            resolved.neighbours = list;
        }
        return resolved;
    }
    let (neighbour_labels, neighbour_reach, neighbours) = if m.queries.is_some() {
        (None, f32::NEG_INFINITY, Vec::new())
    } else {
        let k = state.nearest_rows.k;
        let list = exact(&state.nearest_rows.entries);
        let near = &list[..k.min(list.len())];
        (
            super::negatives::neighbour_labels(m, plan.label, near),
            super::negatives::neighbour_reach(m, near),
            super::negatives::kept_neighbours(m, near),
        )
    };
    let strategy = m.params.negatives;
    let mut triplets = Vec::new();
    let mut sampled = false;
    for (pair, &(_, p)) in state.pairs.iter_mut().zip(&plan.positives) {
        // A sample that kept its whole band ranks from it (nothing was dropped by key).
        let whole_band = pair.keyed.is_some_and(|k| k.key_cut == u32::MAX);
        // Fewer exact distances: only what the last tiles left within reach.
        if limit != usize::MAX && pair.near.len() > limit && !whole_band {
            prune(m, plan, pair, limit, state.slack);
        }
        let d_ap = pair.d_ap;
        let rows = if pair.exact.is_empty() {
            exact(&pair.near)
        } else {
            let mut list: Vec<(f32, u32)> = pair
                .exact
                .iter()
                .zip(&pair.near)
                .map(|(&d, &(_, r))| (d, r))
                .collect();
            super::sort_nearest(&mut list);
            list
        };
        if let Some(keyed) = pair.keyed {
            // The sample: the qualifying rows of smallest key, in rank order once ranked
            // (here from the whole band, else by a second sweep: [`rank_samples`]).
            let mut qualifying: Vec<(f32, u32)> = rows
                .iter()
                .copied()
                .filter(|&(d, r)| {
                    m.is_negative(a, plan.label, r) && qualifies(strategy, d_ap, d, margin)
                })
                .collect();
            qualifying.sort_unstable_by_key(|&(_, r)| keyed.key(r));
            qualifying.truncate(limit);
            sampled = true;
            triplets.extend(qualifying.into_iter().map(|(d, r)| Triplet {
                anchor: a,
                positive: p,
                negative: r,
                d_ap,
                d_an: d,
                // Rows certainly before the band, and the band's rows before this one.
                negative_rank: if whole_band && m.sample_shortcuts {
                    let nearer =
                        rows.partition_point(|&(x, y)| x.total_cmp(&d).then(y.cmp(&r)).is_lt());
                    pair.below + nearer as u32
                } else {
                    u32::MAX
                },
            }));
            continue;
        }
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
    if sampled && triplets.iter().all(|t| t.negative_rank != u32::MAX) {
        // As [`rank_anchor`] orders them.
        triplets.sort_by_key(|t| (t.positive, t.negative_rank));
    }
    Resolved {
        triplets,
        violating_neighbour,
        neighbour_labels,
        guard_removed: [0; 4],
        neighbour_reach,
        neighbours,
        // Bands only: a window goes through the ladder's selection.
        window_reach: f32::NEG_INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// The largest `|GEMM distance - exact distance| / bound` over all pairs of `anchors` and
    /// `rows` (row-major, `dim` wide), the distances as the scan computes them.
    fn worst_error_over_bound(anchors: &[f32], rows: &[f32], dim: usize) -> f64 {
        let norm = |v: &[f32]| crate::score::dot(v, v) as f32;
        let r_sq: Vec<f32> = rows.chunks(dim).map(norm).collect();
        let max_sq = r_sq.iter().copied().fold(0.0, f32::max);
        let n = rows.len() / dim;
        let mut x = vec![0f32; anchors.len() / dim * n];
        inner_products(anchors, rows, dim, &mut x);
        let mut worst = 0f64;
        for (b, a) in anchors.chunks(dim).enumerate() {
            let to_d = ToDistance::L2 { query_sq: norm(a) };
            let bound = gemm_error_bound(dim, norm(a), max_sq) as f64;
            for (j, r) in rows.chunks(dim).enumerate() {
                let gemm = to_d.at(x[b * n + j], r_sq[j]) as f64;
                let exact = crate::score::l2sq(a, r) as f64;
                worst = worst.max((gemm - exact).abs() / bound);
            }
        }
        worst
    }

    /// `count` rows of `centre` plus uniform noise in `[-spread, spread)` per value.
    fn around(
        rng: &mut rand_chacha::ChaCha8Rng,
        centre: &[f32],
        spread: f32,
        count: usize,
    ) -> Vec<f32> {
        (0..count * centre.len())
            .map(|i| centre[i % centre.len()] + rng.random_range(-spread..spread))
            .collect()
    }

    #[test]
    fn gemm_distances_lie_within_the_error_bound_of_the_exact_ones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for dim in [3usize, 64, 128, 301] {
            // Noise around one far centre: distances cancel almost all of the norms (the
            // bound's worst case), and plain noise around the origin.
            let far: Vec<f32> = (0..dim).map(|_| rng.random_range(-30.0..30.0)).collect();
            let origin = vec![0f32; dim];
            for (name, centre, spread) in [("clustered", &far, 1e-2), ("noise", &origin, 1.0)] {
                let anchors = around(&mut rng, centre, spread, 40);
                let rows = around(&mut rng, centre, spread, 700);
                let worst = worst_error_over_bound(&anchors, &rows, dim);
                assert!(worst <= 1.0, "dim {dim}, {name}: {worst}");
            }
        }
    }

    #[test]
    fn keys_are_a_permutation_that_rows_can_be_visited_in() {
        for rows in [1usize, 2, 3, 5, 8, 9, 100, 1000, 4096, 4097] {
            let k = Keyed::new(0x9e37_79b9, rows);
            let all = 1u32 << k.bits;
            assert!(all as usize >= rows && (all as usize) < 2 * rows.max(2));
            let mut seen = vec![false; all as usize];
            for r in 0..all {
                let key = k.key(r);
                assert!(key < all && !seen[key as usize], "{rows}: key {key} twice");
                seen[key as usize] = true;
                assert_eq!(k.row_of(key), r, "{rows}");
            }
        }
        let wide = Keyed::new(12345, usize::MAX >> 1);
        assert_eq!(wide.bits, 32);
        for r in [0u32, 1, 77, u32::MAX / 3, u32::MAX] {
            assert_eq!(wide.row_of(wide.key(r)), r);
        }
    }
}

//! Negative selection: for every (anchor, positive), the qualifying negatives, nearest first
//! or sampled, searched as deep as exactness needs.
//!
//! A candidate is a negative of the anchor (another label; in retrieval mode, not a known
//! positive) whose neighbour rank lies in `[range_min, range_max)`, whose kind the strategy
//! takes, and which no false-negative guard rejects. Guards work in cosine similarity
//! `s = 1 - d`; a candidate a guard rejects is counted for the first guard (in [`GUARDS`]
//! order) that rejects it, if the selection examined it (nearest-first selection stops at the
//! last negative it takes).

pub use crate::config::{GUARDS, Guard};
use rayon::prelude::*;

use super::positives::AnchorPlan;
use super::{
    AnchorBounds, AnchorRecord, DistinctRows, MinedBlock, Miner, NeighbourLabels, Triplet, rng_for,
    sort_nearest,
};
use crate::config::{MiningParams, NegativeSampling, NegativeStrategy, PositiveStrategy};
use crate::error::Result;
use crate::score::TripletKind;

/// Random stream of negative sampling.
const STREAM_NEGATIVE: u64 = 2;

/// Candidate entries held at once by one search (distances and rows of all pending anchors):
/// about 20 bytes each with FAISS's own result, so 20 MiB. Larger chunks search no faster.
const SEARCH_BUDGET: usize = 1 << 20;

/// Default `max_k` of an approximate index, in multiples of `k`.
pub(super) const APPROXIMATE_MAX_K_FACTOR: usize = 16;

/// An anchor's resolved output.
pub(super) struct Resolved {
    pub triplets: Vec<Triplet>,
    pub violating_neighbour: Option<bool>,
    pub neighbour_labels: Option<NeighbourLabels>,
    pub guard_removed: [u32; 4],
    /// Distance of the last of the anchor's `suspects_k` nearest rows, which its neighbour
    /// labels read (`-inf`: none are read; `inf`: the table holds fewer).
    pub neighbour_reach: f32,
    /// Those rows, where the miner keeps them ([`Miner::keep_neighbours`]).
    pub neighbours: Vec<(f32, u32)>,
    /// Under a rank window, the distance of its last rank (`range_max - 1`): a row nearer
    /// moves every rank after it (`-inf`: no window; `inf`: the table holds fewer rows).
    pub window_reach: f32,
}

/// How a guard judges a candidate.
impl Guard {
    /// Whether the guard rejects a negative at cosine distance `d_an` from the anchor, for a
    /// positive at `d_ap`; `d_pn` gives the positive-negative distance (computed only if
    /// needed). `None` when the guard is off.
    #[inline]
    pub fn rejects(
        self,
        params: &MiningParams,
        d_ap: f32,
        d_an: f32,
        d_pn: impl FnOnce() -> f32,
    ) -> Option<bool> {
        let s = |d: f32| 1.0 - d as f64;
        let t = self.setting(params)? as f64;
        Some(match self {
            Guard::Ceiling => s(d_an) > t,
            Guard::PositiveMargin => s(d_an) > s(d_ap) - t,
            Guard::PositivePercent => s(d_an) > t / 100.0 * s(d_ap),
            Guard::NearDuplicate => s(d_pn()) >= t,
        })
    }
}

/// The first guard that rejects the candidate, as an index into [`GUARDS`].
#[inline]
fn rejected_by(m: &Miner, d_ap: f32, d_an: f32, p: u32, n: u32) -> Option<usize> {
    GUARDS
        .iter()
        .position(|g| g.rejects(&m.params, d_ap, d_an, || m.distance(p, n)) == Some(true))
}

/// Mines the negatives of every planned anchor of a block: in one pass over the table where
/// the one-pass engine serves the parameters, else by searching the index deeper and deeper.
pub(super) fn mine(m: &mut Miner, plans: Vec<AnchorPlan>) -> Result<MinedBlock> {
    if super::onepass::applies(m) {
        let done = super::onepass::resolve_all(m, &plans)?
            .into_iter()
            .map(|r| r.map(|r| (r, false)))
            .collect();
        return Ok(assemble(m, plans, done));
    }
    let n = m.table.rows();
    let mut done: Vec<Option<(Resolved, bool)>> = (0..plans.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].hardest_positive_distance.is_some())
        .collect();
    // An approximate index gives no exactness to reach by deepening: stop at 16 k rather than
    // end in a scan of every row.
    let max_k = m.params.max_k.unwrap_or(if m.exact() {
        usize::MAX
    } else {
        APPROXIMATE_MAX_K_FACTOR * m.params.k()
    });
    let mut k = m.start_k.min(max_k);
    // How many anchors each search depth resolved, to start the next block deep enough
    // (exact indexes only: an approximate index's answer depends on the depth searched, so
    // every block starts at `k`, and an anchor's triplets do not depend on which anchors
    // were mined before it).
    let mut resolved_at: Vec<(usize, usize)> = Vec::new();
    // A spilled store reads the rows each few anchors score into memory first (their
    // candidates, themselves, and the positives a near-duplicate guard compares).
    let mut budget = m.gather_budget_rows().map(|b| (b, DistinctRows::new(n)));
    while !pending.is_empty() {
        let capped = k >= max_k;
        if k.saturating_mul(2) > n && !capped {
            // Deep enough that a scan of every row is cheaper than FAISS, and exact.
            let resolved: Vec<Resolved> = pending
                .par_iter()
                .map(|&i| {
                    let a = plans[i].anchor;
                    let mut list: Vec<(f32, u32)> = (0..n as u32)
                        .filter(|&r| Some(r) != m.anchor_self(a))
                        .map(|r| (m.anchor_distance(a, r), r))
                        .collect();
                    sort_nearest(&mut list);
                    resolve(m, &plans[i], &list, f32::INFINITY).expect("a full list is complete")
                })
                .collect();
            resolved_at.push((n, pending.len()));
            for (i, r) in pending.iter().zip(resolved) {
                done[*i] = Some((r, false));
            }
            break;
        }
        let mut still = Vec::new();
        let chunk = m.search_chunk(k, SEARCH_BUDGET);
        let near_duplicate = m.params.near_duplicate.is_some();
        for part in pending.chunks(chunk) {
            let queries = m.gather_anchors(part.iter().map(|&i| plans[i].anchor));
            let started = std::time::Instant::now();
            let cands = m.search_index(&queries, k)?;
            m.search.seconds += started.elapsed().as_secs_f64();
            m.search.queries += part.len() as u64;
            let mut tried: Vec<Option<(Resolved, bool)>> = Vec::with_capacity(part.len());
            let mut next = 0;
            while next < part.len() {
                // A spilled store reads the rows of as many anchors as fit its budget, counted
                // once however many anchors share them (anchors taken in IVF-list order share
                // most of their candidates).
                let run = match &mut budget {
                    None => 0..part.len(),
                    Some((budget, distinct)) => {
                        let (end, wanted) = distinct.run(next, part.len(), *budget, |q, out| {
                            let plan = &plans[part[q]];
                            out.extend(m.anchor_self(plan.anchor));
                            out.extend(cands.of(q).map(|(_, r)| r));
                            if near_duplicate {
                                out.extend(plan.positives.iter().map(|x| x.1));
                            }
                        });
                        m.gather_spilled(wanted)?;
                        next..end
                    }
                };
                next = run.end;
                let first = run.start;
                let sub = &part[run];
                let m = &*m;
                tried.par_extend(sub.par_iter().enumerate().map(|(q, &i)| {
                    let q = first + q;
                    let a = plans[i].anchor;
                    let mut got = 0;
                    let mut bound = f32::NEG_INFINITY;
                    let mut list: Vec<(f32, u32)> = Vec::with_capacity(cands.k());
                    // The candidates lie anywhere in the table: ask for all of their rows
                    // first, rather than wait on memory for each in turn.
                    m.prefetch_rows(cands.of(q).map(|(_, r)| r));
                    for (approx, r) in cands.of(q) {
                        got += 1;
                        bound = bound.max(approx);
                        if Some(r) != m.anchor_self(a) {
                            list.push((m.anchor_distance(a, r), r));
                        }
                    }
                    sort_nearest(&mut list);
                    // Rows FAISS did not return are at least `bound - slack` away. A list
                    // shorter than asked holds every row the index can give.
                    let radius = if got < cands.k() || cands.k() >= n {
                        f32::INFINITY
                    } else {
                        bound - m.faiss_slack(a)
                    };
                    match resolve(m, &plans[i], &list, radius) {
                        Some(r) => Some((r, false)),
                        // At the cap, keep what was found, ranked as if the list were all.
                        None if capped => {
                            resolve(m, &plans[i], &list, f32::INFINITY).map(|r| (r, true))
                        }
                        None => None,
                    }
                }));
            }
            for (&i, r) in part.iter().zip(tried) {
                match r {
                    Some(r) => done[i] = Some(r),
                    None => still.push(i),
                }
            }
        }
        resolved_at.push((k, pending.len() - still.len()));
        if !still.is_empty() {
            tracing::debug!(anchors = still.len(), k, "searching deeper");
        }
        pending = still;
        k = k.saturating_mul(2).min(max_k);
    }

    if m.exact() {
        m.start_k = next_start(m.params.k(), &resolved_at);
    }
    m.release_gathered();
    Ok(assemble(m, plans, done))
}

/// The block's triplets and anchor records, in anchor order, from each anchor's outcome
/// (`None`: not resolved, the anchor has no positive) and whether its search was capped.
pub(super) fn assemble(
    m: &Miner,
    plans: Vec<AnchorPlan>,
    done: Vec<Option<(Resolved, bool)>>,
) -> MinedBlock {
    let mut block = MinedBlock::default();
    for (plan, mut outcome) in plans.into_iter().zip(done) {
        let bounds = bounds(m, &plan, outcome.as_ref().map(|o| &o.0));
        let neighbours = outcome
            .as_mut()
            .map(|o| std::mem::take(&mut o.0.neighbours))
            .unwrap_or_default();
        let (triplets, violating_neighbour, neighbour_labels, guard_removed, capped) = match outcome
        {
            Some((r, capped)) => (
                r.triplets,
                r.violating_neighbour,
                r.neighbour_labels,
                r.guard_removed,
                capped,
            ),
            None => (Vec::new(), None, None, [0; 4], false),
        };
        block.anchors.push(AnchorRecord {
            anchor: plan.anchor,
            label: plan.label,
            has_positive: plan.hardest_positive_distance.is_some(),
            triplets: triplets.len() as u32,
            capped,
            violating_neighbour,
            neighbour_labels,
            pairs: plan.positives.len() as u32,
            short_pairs: 0,
            dropped_pairs: 0,
            guard_removed,
            reuse_removed: 0,
            bounds,
            neighbours: neighbours.len() as u32,
        });
        block.triplets.extend(triplets);
        block.neighbours.extend(neighbours);
    }
    block
}

/// Where a row added to the table could change the outcome of `plan`'s anchor
/// (`outcome`: what it gave; see [`AnchorBounds`]).
///
/// In retrieval mode the anchor's "label" is its known positives: a new document is never one
/// (an incremental run keeps the qrels, which name only documents of the corpus then).
fn bounds(m: &Miner, plan: &AnchorPlan, outcome: Option<&Resolved>) -> AnchorBounds {
    let p = &m.params;
    let (Some(hardest), Some(resolved)) = (plan.hardest_positive_distance, outcome) else {
        // No positive: a row of its label would give it one.
        return AnchorBounds {
            same_near: f32::INFINITY,
            ..AnchorBounds::NONE
        };
    };
    // The hardest positive's distance decides the violating flag whatever the strategy, but
    // only while the flag is false: a farther positive widens the margin a negative has to
    // be within, so a true flag stays true (and without any negative there is none to flip).
    let mut bounds = AnchorBounds {
        same_far: if resolved.violating_neighbour == Some(false) {
            hardest
        } else {
            f32::INFINITY
        },
        ..AnchorBounds::NONE
    };
    let chosen = plan.positives.iter().map(|x| x.0);
    if plan.positives.len() < super::positives::wanted(m) {
        // Every member is chosen: a new one would be too.
        bounds.same_near = f32::INFINITY;
    } else {
        match p.positives {
            PositiveStrategy::Hardest => {
                bounds.same_far = chosen.fold(bounds.same_far, f32::min);
            }
            PositiveStrategy::Easiest => {
                bounds.same_near = chosen.fold(f32::NEG_INFINITY, f32::max)
            }
            PositiveStrategy::Random => {
                let keys = super::positives::positive_keys(p.seed, plan.anchor);
                bounds.key_cut = plan
                    .positives
                    .iter()
                    .map(|x| keys.key(x.1))
                    .max()
                    .unwrap_or(0);
            }
            PositiveStrategy::All => bounds.same_near = f32::INFINITY,
        }
    }
    for &(d_ap, positive) in &plan.positives {
        let start = match p.negatives {
            NegativeStrategy::Semihard | NegativeStrategy::Easy => d_ap,
            _ => f32::NEG_INFINITY,
        };
        let taken = resolved.triplets.iter().filter(|t| t.positive == positive);
        bounds.other_lo = bounds.other_lo.min(start);
        bounds.other_hi = bounds.other_hi.max(pair_reach(p, d_ap, taken));
    }
    // A kept neighbour list takes new rows in; else a row among the neighbours means mining
    // the anchor again.
    if !m.keep_neighbours {
        bounds.any_hi = resolved.neighbour_reach;
    }
    // A row nearer than a rank window's last rank moves the window; one beyond it cannot
    // be taken.
    bounds.any_hi = bounds.any_hi.max(resolved.window_reach);
    if resolved.window_reach > f32::NEG_INFINITY {
        bounds.other_hi = bounds.other_hi.min(resolved.window_reach);
    }
    bounds.other_near = match resolved.violating_neighbour {
        // A nearer negative could make it violating.
        Some(false) => band_end(NegativeStrategy::Semihard, hardest, p.margin),
        Some(true) => f32::NEG_INFINITY,
        // No negative at all yet.
        None => f32::INFINITY,
    };
    bounds
}

/// How far the selection of a pair (positive at `d_ap`, its negatives `taken`) reached: a
/// new negative nearer than the last of `N` taken displaces it; with fewer taken (or all, or
/// a sample) any in the band changes the selection ([`AnchorBounds::other_hi`]).
pub(super) fn pair_reach<'t>(
    p: &MiningParams,
    d_ap: f32,
    taken: impl Iterator<Item = &'t Triplet>,
) -> f32 {
    let limit = p.num_negatives.limit();
    let (count, last) = taken.fold((0, f32::NEG_INFINITY), |(n, d), t| (n + 1, d.max(t.d_an)));
    if p.sample == NegativeSampling::Nearest && limit != usize::MAX && count == limit {
        last
    } else {
        band_end(p.negatives, d_ap, p.margin)
    }
}

/// Where the next block's search starts: the shallowest depth of this block's ladder at which
/// most anchors were resolved (a second pass over the index costs as much as the first, a
/// deeper first pass little more), never below `--k`. Results do not depend on it.
fn next_start(k: usize, resolved_at: &[(usize, usize)]) -> usize {
    let total: usize = resolved_at.iter().map(|x| x.1).sum();
    let mut sum = 0;
    for &(depth, count) in resolved_at {
        sum += count;
        if sum * 10 >= total * 8 {
            return depth.max(k);
        }
    }
    k
}

/// Selects the negatives of every positive of `plan` from `list` (all other rows with
/// `d < radius`, plus possibly some beyond, sorted by distance then row), or `None` when
/// a selection reaches past `radius` and the anchor must be searched deeper.
pub(super) fn resolve(
    m: &Miner,
    plan: &AnchorPlan,
    list: &[(f32, u32)],
    radius: f32,
) -> Option<Resolved> {
    let margin = m.params.margin;
    let label = plan.label;
    // Entries below the radius are exactly the nearest rows; only they can be ranked.
    let trusted = list.partition_point(|x| x.0 < radius);
    let trusted = if radius == f32::INFINITY {
        list.len()
    } else {
        trusted
    };
    let hardest = plan
        .hardest_positive_distance
        .expect("planned anchors have a positive");
    let a = plan.anchor;
    let violating_neighbour = match list[..trusted]
        .iter()
        .find(|x| m.is_negative(a, label, x.1))
    {
        Some(&(d, _)) => Some(TripletKind::classify(hardest, d, margin) != TripletKind::Easy),
        None if radius == f32::INFINITY => None,
        None => return None,
    };
    let (neighbour_labels, neighbour_reach, neighbours) = if m.queries.is_some() {
        (None, f32::NEG_INFINITY, Vec::new())
    } else {
        let near = m.params.suspects_k.min(m.table.rows() - 1);
        if trusted < near && radius < f32::INFINITY {
            return None;
        }
        let near = &list[..near.min(trusted)];
        (
            neighbour_labels(m, label, near),
            neighbour_reach(m, near),
            kept_neighbours(m, near),
        )
    };

    let strategy = m.params.negatives;
    let limit = m.params.num_negatives.limit();
    let (range_min, range_max) = (m.params.range_min, m.params.range_max.unwrap_or(usize::MAX));
    // Every rank of the window is among the trusted entries.
    let window_covered = range_max <= trusted;
    let guarded = m.params.guarded();
    let mut guard_removed = [0u32; 4];
    let mut triplets = Vec::new();
    let mut qualifying: Vec<usize> = Vec::new();
    for &(d_ap, p) in &plan.positives {
        let hi = band_end(strategy, d_ap, margin);
        let want_all = m.params.sample == NegativeSampling::Random || limit == usize::MAX;
        qualifying.clear();
        let mut removed = [0u32; 4];
        for (rank, &(d, r)) in list[..trusted.min(range_max)].iter().enumerate() {
            if d > hi {
                break;
            }
            if rank < range_min
                || !m.is_negative(a, label, r)
                || !qualifies(strategy, d_ap, d, margin)
            {
                continue;
            }
            if guarded && let Some(g) = rejected_by(m, d_ap, d, p, r) {
                removed[g] += 1;
                continue;
            }
            qualifying.push(rank);
            if !want_all && qualifying.len() == limit {
                break;
            }
        }
        let enough = !want_all && qualifying.len() == limit;
        if !(enough || hi < radius || radius == f32::INFINITY || window_covered) {
            return None;
        }
        for (total, r) in guard_removed.iter_mut().zip(removed) {
            *total += r;
        }
        if m.params.sample == NegativeSampling::Random && qualifying.len() > limit {
            let mut rng = rng_for(m.params.seed, plan.anchor, p, STREAM_NEGATIVE);
            let mut picked: Vec<usize> =
                rand::seq::index::sample(&mut rng, qualifying.len(), limit)
                    .into_iter()
                    .map(|j| qualifying[j])
                    .collect();
            // Ranks follow (distance, row) order, so sorting them orders the output by d_an.
            picked.sort_unstable();
            qualifying = picked;
        }
        triplets.extend(qualifying.iter().map(|&rank| Triplet {
            anchor: plan.anchor,
            positive: p,
            negative: list[rank].1,
            d_ap,
            d_an: list[rank].0,
            negative_rank: rank as u32,
        }));
    }
    let window_reach = match m.params.range_max {
        None => f32::NEG_INFINITY,
        Some(max) if max > 0 && trusted >= max => list[max - 1].0,
        Some(_) => f32::INFINITY,
    };
    Some(Resolved {
        triplets,
        violating_neighbour,
        neighbour_labels,
        guard_removed,
        neighbour_reach,
        neighbours,
        window_reach,
    })
}

/// The neighbour list a block keeps (none unless the miner keeps them).
pub(super) fn kept_neighbours(m: &Miner, near: &[(f32, u32)]) -> Vec<(f32, u32)> {
    if m.keep_neighbours {
        near.to_vec()
    } else {
        Vec::new()
    }
}

/// [`Resolved::neighbour_reach`] of the nearest rows `near` the neighbour labels read.
pub(super) fn neighbour_reach(m: &Miner, near: &[(f32, u32)]) -> f32 {
    let k = m.params.suspects_k;
    match near.last() {
        None if k == 0 => f32::NEG_INFINITY,
        Some(&(d, _)) if near.len() == k => d,
        // Fewer rows than asked for: any new row joins them.
        _ => f32::INFINITY,
    }
}

/// Agreement with the anchor's label and majority label of `near` (nearest first).
pub(super) fn neighbour_labels(
    m: &Miner,
    label: u32,
    near: &[(f32, u32)],
) -> Option<NeighbourLabels> {
    if near.is_empty() {
        return None;
    }
    // Few neighbours: a small list beats a map.
    let mut counts: Vec<(u32, u32)> = Vec::with_capacity(near.len());
    for &(_, r) in near {
        let l = m.label(r);
        match counts.iter_mut().find(|c| c.0 == l) {
            Some(c) => c.1 += 1,
            None => counts.push((l, 1)),
        }
    }
    let same = counts.iter().find(|c| c.0 == label).map_or(0, |c| c.1);
    let majority = counts
        .iter()
        .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
        .expect("not empty")
        .0;
    Some(NeighbourLabels {
        agreement: same as f32 / near.len() as f32,
        majority,
    })
}

/// Whether a negative at distance `d_an` qualifies for the strategy.
#[inline]
pub(super) fn qualifies(strategy: NegativeStrategy, d_ap: f32, d_an: f32, margin: f32) -> bool {
    let kind = TripletKind::classify(d_ap, d_an, margin);
    match strategy {
        NegativeStrategy::Hard => kind == TripletKind::Hard,
        NegativeStrategy::Semihard => kind == TripletKind::Semihard,
        NegativeStrategy::Easy => kind == TripletKind::Easy,
        NegativeStrategy::Violating => kind != TripletKind::Easy,
        NegativeStrategy::Hardest => true,
    }
}

/// A distance beyond which no negative qualifies (slightly loose, for `f32` rounding of
/// `d_an - d_ap`).
#[inline]
fn band_end(strategy: NegativeStrategy, d_ap: f32, margin: f32) -> f32 {
    match strategy {
        NegativeStrategy::Hard => d_ap,
        NegativeStrategy::Semihard | NegativeStrategy::Violating => {
            let hi = d_ap as f64 + margin as f64;
            (hi + hi.abs() * 1e-6) as f32 + f32::MIN_POSITIVE
        }
        NegativeStrategy::Easy | NegativeStrategy::Hardest => f32::INFINITY,
    }
}

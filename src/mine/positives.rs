//! Positive selection: for each anchor, the chosen rows of its own label (in retrieval mode,
//! of its known positives) and the distance of its hardest positive (needed by the data-set
//! health figure whatever the strategy).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::onepass::Keyed;
use super::{Miner, batches, rng_for, seeded_hash, sort_farthest, sort_nearest};
use crate::config::PositiveStrategy;
use crate::error::Result;
use crate::index::{GroupIndex, Order};

/// Groups up to this size are searched by computing every distance; larger ones through an
/// exact FAISS index (a batched matrix product), with the same exactness rule as negatives.
pub(super) const SMALL_GROUP: usize = 256;

/// Random stream of positive sampling.
const STREAM_POSITIVE: u64 = 1;

/// An anchor with its chosen positives.
#[derive(Debug, Clone)]
pub(super) struct AnchorPlan {
    pub anchor: u32,
    pub label: u32,
    /// `(d(a, p), p)`, ordered by row.
    pub positives: Vec<(f32, u32)>,
    /// `d(a, hardest positive)`; `None` when the anchor has no positive.
    pub hardest_positive_distance: Option<f32>,
}

impl AnchorPlan {
    /// The plan with `chosen` put in row order.
    fn new(
        anchor: u32,
        label: u32,
        mut chosen: Vec<(f32, u32)>,
        hardest_positive_distance: Option<f32>,
    ) -> Self {
        chosen.sort_unstable_by_key(|x| x.1);
        AnchorPlan {
            anchor,
            label,
            positives: chosen,
            hardest_positive_distance,
        }
    }
}

/// `(d(a, r), r)` for every row of `rows` but `a`.
fn scored(m: &Miner, a: u32, rows: &[u32]) -> Vec<(f32, u32)> {
    rows.iter()
        .filter(|&&r| Some(r) != m.anchor_self(a))
        .map(|&r| (m.anchor_distance(a, r), r))
        .collect()
}

/// Chooses the positives of every anchor in `anchors`. A spilled store reads the rows of a
/// few labels (or queries' positives) at a time into memory first.
pub(super) fn plan(m: &mut Miner, anchors: &[u32]) -> Result<Vec<AnchorPlan>> {
    let budget = m.gather_budget_rows();
    if m.queries.is_some() {
        let mut plans = Vec::with_capacity(anchors.len());
        let sizes: Vec<usize> = anchors
            .iter()
            .map(|&a| m.query_positives(a).map_or(0, <[u32]>::len))
            .collect();
        for run in batches(&sizes, budget) {
            let part = &anchors[run];
            if budget.is_some() {
                let rows = part
                    .iter()
                    .flat_map(|&a| m.query_positives(a).unwrap_or_default().iter().copied())
                    .collect();
                m.gather_spilled(rows)?;
            }
            plans.extend(plan_queries(m, part));
        }
        m.release_gathered();
        return Ok(plans);
    }
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &a) in anchors.iter().enumerate() {
        by_label.entry(m.label(a)).or_default().push(i);
    }
    let by_label: Vec<(u32, Vec<usize>)> = by_label.into_iter().collect();
    let mut plans: Vec<Option<AnchorPlan>> = vec![None; anchors.len()];
    let sizes: Vec<usize> = by_label
        .iter()
        .map(|(label, _)| m.groups[*label as usize].len())
        .collect();
    for run in batches(&sizes, budget) {
        let labels = &by_label[run];
        // A group over the budget is read through the mapping.
        if budget.is_some_and(|b| m.groups[labels[0].0 as usize].len() <= b) {
            let rows = labels
                .iter()
                .flat_map(|(label, _)| m.groups[*label as usize].iter().copied())
                .collect();
            m.gather_spilled(rows)?;
        }
        let (small, large): (Vec<_>, Vec<_>) = labels
            .iter()
            .partition(|(label, _)| m.groups[*label as usize].len() <= SMALL_GROUP);
        let small_plans: Vec<Vec<AnchorPlan>> = {
            let m = &*m;
            // One small product per group, groups in parallel: BLAS's own threads would only
            // wait on products this small.
            let _single = crate::process::BlasThreads::single();
            small
                .par_iter()
                .map(|(label, idx)| {
                    let of_label: Vec<u32> = idx.iter().map(|&i| anchors[i]).collect();
                    plan_small_group(m, *label, &m.groups[*label as usize], &of_label)
                })
                .collect()
        };
        for ((_, idx), label_plans) in small.iter().zip(small_plans) {
            for (&i, p) in idx.iter().zip(label_plans) {
                plans[i] = Some(p);
            }
        }
        m.table.vectors.drop_pages_over_budget();
        for (label, idx) in large {
            let group = &m.groups[*label as usize];
            let of_label: Vec<u32> = idx.iter().map(|&i| anchors[i]).collect();
            let label_plans = plan_large_group(m, *label, group, &of_label)?;
            for (&i, p) in idx.iter().zip(label_plans) {
                plans[i] = Some(p);
            }
            m.table.vectors.drop_pages_over_budget();
        }
    }
    m.release_gathered();
    Ok(plans
        .into_iter()
        .map(|p| p.expect("every anchor planned"))
        .collect())
}

/// Positives each anchor asks for (`usize::MAX`: all of them).
pub(super) fn wanted(m: &Miner) -> usize {
    match m.params.positives {
        PositiveStrategy::All => usize::MAX,
        _ => m.params.num_positives.limit(),
    }
}

/// Retrieval mode: every listed positive's distance computed directly.
pub(super) fn plan_queries(m: &Miner, anchors: &[u32]) -> Vec<AnchorPlan> {
    anchors
        .par_iter()
        .map(|&a| {
            let listed = m.query_positives(a).expect("retrieval mode");
            // The anchor is not among its listed positives: any `n` of them are a fair draw.
            choose_directly(m, a, 0, listed, |n| {
                let mut rng = rng_for(m.params.seed, a, 0, STREAM_POSITIVE);
                rand::seq::index::sample(&mut rng, listed.len(), n.min(listed.len()))
                    .into_iter()
                    .map(|i| listed[i])
                    .collect()
            })
        })
        .collect()
}

/// Every distance of the group's anchors to its members from one product (on the calling
/// thread), then exact distances only where the answer needs them: the chosen positives,
/// and the members within the product's error bound of the extremes.
pub(super) fn plan_small_group(
    m: &Miner,
    label: u32,
    group: &[u32],
    anchors: &[u32],
) -> Vec<AnchorPlan> {
    let dim = m.table.dim;
    let strategy = m.params.positives;
    let n = wanted(m);
    if strategy == PositiveStrategy::All || n >= group.len() {
        // Every distance is an answer.
        return anchors
            .iter()
            .map(|&a| choose_directly(m, a, label, group, |n| random_positives(m, group, a, n)))
            .collect();
    }
    let members = m.gather(group.iter().copied());
    let queries = m.gather(anchors.iter().copied());
    let mut products = vec![0f32; anchors.len() * group.len()];
    super::onepass::inner_products(&queries, &members, dim, &mut products);
    let member_max_sq = group
        .iter()
        .map(|&r| m.norms_sq[r as usize])
        .fold(0.0, f32::max);
    anchors
        .iter()
        .zip(products.chunks_exact(group.len()))
        .map(|(&a, products)| {
            let a_sq = m.norms_sq[a as usize];
            let slack = 2.0 * super::onepass::gemm_error_bound(dim, a_sq, member_max_sq);
            let approx: Vec<(f32, u32)> = group
                .iter()
                .zip(products)
                .filter(|&(&r, _)| r != a)
                .map(|(&r, &x)| (m.product_distance(a_sq, r, x), r))
                .collect();
            let farthest = exact_extremes(m, a, &approx, Order::Farthest, n, slack);
            let hardest = farthest.first().map(|x| x.0);
            let chosen = match strategy {
                PositiveStrategy::Hardest => farthest,
                PositiveStrategy::Easiest => {
                    exact_extremes(m, a, &approx, Order::Nearest, n, slack)
                }
                PositiveStrategy::Random => scored(m, a, &random_positives(m, group, a, n)),
                PositiveStrategy::All => unreachable!("handled above"),
            };
            AnchorPlan::new(a, label, chosen, hardest)
        })
        .collect()
}

/// The `n` farthest (or nearest) of `approx` (approximate distances within `slack / 2` of
/// the exact ones), exactly: every row whose approximate distance lies within `slack` of the
/// `n`-th extreme one is measured exactly, sorted, and the first `n` kept.
fn exact_extremes(
    m: &Miner,
    a: u32,
    approx: &[(f32, u32)],
    order: Order,
    n: usize,
    slack: f32,
) -> Vec<(f32, u32)> {
    let n = n.min(approx.len());
    if n == 0 {
        return Vec::new();
    }
    let mut ds: Vec<f32> = approx.iter().map(|x| x.0).collect();
    let (_, nth, _) = match order {
        Order::Farthest => ds.select_nth_unstable_by(n - 1, |x, y| y.total_cmp(x)),
        Order::Nearest => ds.select_nth_unstable_by(n - 1, f32::total_cmp),
    };
    let nth = *nth;
    let mut list: Vec<(f32, u32)> = approx
        .iter()
        .filter(|x| match order {
            Order::Farthest => x.0 >= nth - slack,
            Order::Nearest => x.0 <= nth + slack,
        })
        .map(|&(_, r)| (m.anchor_distance(a, r), r))
        .collect();
    match order {
        Order::Farthest => sort_farthest(&mut list),
        Order::Nearest => sort_nearest(&mut list),
    }
    list.truncate(n);
    list
}

/// The plan of anchor `a` from every distance to `rows`; `random(n)` draws `n` of them.
fn choose_directly(
    m: &Miner,
    a: u32,
    label: u32,
    rows: &[u32],
    random: impl FnOnce(usize) -> Vec<u32>,
) -> AnchorPlan {
    let n = wanted(m);
    let mut all = scored(m, a, rows);
    let hardest = all.iter().map(|x| x.0).reduce(f32::max);
    let chosen = match m.params.positives {
        PositiveStrategy::Hardest => {
            sort_farthest(&mut all);
            all.truncate(n);
            all
        }
        PositiveStrategy::Easiest => {
            sort_nearest(&mut all);
            all.truncate(n);
            all
        }
        PositiveStrategy::Random => scored(m, a, &random(n)),
        PositiveStrategy::All => all,
    };
    AnchorPlan::new(a, label, chosen, hardest)
}

/// Extremes through a FAISS index over the group; random and all need no search.
fn plan_large_group(
    m: &Miner,
    label: u32,
    group: &[u32],
    anchors: &[u32],
) -> Result<Vec<AnchorPlan>> {
    let n = wanted(m);
    let strategy = m.params.positives;
    let far_need = if strategy == PositiveStrategy::Hardest {
        n
    } else {
        1
    };
    let farthest = extremes(m, group, anchors, Order::Farthest, far_need)?;
    let nearest = if strategy == PositiveStrategy::Easiest {
        Some(extremes(m, group, anchors, Order::Nearest, n)?)
    } else {
        None
    };
    Ok(anchors
        .par_iter()
        .enumerate()
        .map(|(i, &a)| {
            let hardest = farthest[i].first().map(|x| x.0);
            let chosen = match strategy {
                PositiveStrategy::Hardest => farthest[i].clone(),
                PositiveStrategy::Easiest => nearest.as_ref().expect("searched")[i].clone(),
                PositiveStrategy::Random => scored(m, a, &random_positives(m, group, a, n)),
                PositiveStrategy::All => scored(m, a, group),
            };
            AnchorPlan::new(a, label, chosen, hardest)
        })
        .collect())
}

/// A seeded choice of `n` rows of `group` other than `a` (all of them if fewer): the rows of
/// smallest [`positive_keys`] key. A row added to the group later is drawn only if its key
/// is smaller than a drawn row's, so an incremental run knows which anchors it can move.
fn random_positives(m: &Miner, group: &[u32], a: u32, n: usize) -> Vec<u32> {
    let others = group.len() - 1;
    if n >= others {
        return group.iter().copied().filter(|&r| r != a).collect();
    }
    let keys = positive_keys(m.params.seed, a);
    let g = group.len() as u128;
    // Keying every member costs g; visiting keys in order until n members turn up, about
    // n 2^32 / g.
    if g * g <= (n as u128) << 32 {
        let mut keyed: Vec<(u32, u32)> = group
            .iter()
            .filter(|&&r| r != a)
            .map(|&r| (keys.key(r), r))
            .collect();
        keyed.select_nth_unstable(n - 1);
        return keyed[..n].iter().map(|x| x.1).collect();
    }
    let (label, rows) = (m.label(a), m.table.rows() as u64);
    let mut out = Vec::with_capacity(n);
    // Every row has a key, so this ends (n < others).
    for k in 0..=u32::MAX {
        let r = keys.row_of(k);
        if (r as u64) < rows && r != a && m.label(r) == label {
            out.push(r);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// The keys that order the rows of anchor `a`'s group for its random positives: they depend
/// on the seed, the anchor and the row only.
pub(super) fn positive_keys(seed: u64, a: u32) -> Keyed {
    Keyed::wide(seeded_hash(seed, a as u64, 0, STREAM_POSITIVE) as u32)
}

/// The `need` nearest (or farthest) other members of the group for each anchor, exactly:
/// `(d, row)` in that order, ties by the smaller row.
fn extremes(
    m: &Miner,
    group: &[u32],
    anchors: &[u32],
    order: Order,
    need: usize,
) -> Result<Vec<Vec<(f32, u32)>>> {
    let g = group.len();
    let sort = |list: &mut Vec<(f32, u32)>| match order {
        Order::Nearest => sort_nearest(list),
        Order::Farthest => sort_farthest(list),
    };
    let full = |a: u32| {
        let mut list = scored(m, a, group);
        sort(&mut list);
        list.truncate(need);
        list
    };
    let mut out: Vec<Option<Vec<(f32, u32)>>> = vec![None; anchors.len()];
    let mut pending: Vec<usize> = (0..anchors.len()).collect();
    let mut index = None;
    let mut k = need.saturating_add(16).min(g);
    while !pending.is_empty() {
        if need >= g - 1 || k.saturating_mul(2) > g {
            let done: Vec<Vec<(f32, u32)>> =
                pending.par_iter().map(|&i| full(anchors[i])).collect();
            for (i, list) in pending.iter().zip(done) {
                out[*i] = Some(list);
            }
            break;
        }
        let index = match &mut index {
            Some(ix) => ix,
            None => index.insert(GroupIndex::build(
                &m.gather(group.iter().copied()),
                m.table.dim,
                m.params.metric,
                order,
            )?),
        };
        let queries = m.gather(pending.iter().map(|&i| anchors[i]));
        let cands = index.search(&queries, k)?;
        let tried: Vec<Option<Vec<(f32, u32)>>> = pending
            .par_iter()
            .enumerate()
            .map(|(q, &i)| {
                let a = anchors[i];
                let slack = m.faiss_slack(a);
                let mut bound = match order {
                    Order::Nearest => f32::NEG_INFINITY,
                    Order::Farthest => f32::INFINITY,
                };
                let mut list = Vec::with_capacity(k);
                for (approx, pos) in cands.of(q) {
                    bound = match order {
                        Order::Nearest => bound.max(approx),
                        Order::Farthest => bound.min(approx),
                    };
                    let p = group[pos as usize];
                    if p != a {
                        list.push((m.distance(a, p), p));
                    }
                }
                sort(&mut list);
                list.truncate(need);
                // Members FAISS did not return are at least `bound - slack` away (at most
                // `bound + slack` for farthest): the list is exact if its last entry beats that.
                let trusted = |d: f32| match order {
                    Order::Nearest => d < bound - slack,
                    Order::Farthest => d > bound + slack,
                };
                (list.len() == need && list.last().is_some_and(|x| trusted(x.0))).then_some(list)
            })
            .collect();
        let mut still = Vec::new();
        for (i, r) in pending.into_iter().zip(tried) {
            match r {
                Some(list) => out[i] = Some(list),
                None => still.push(i),
            }
        }
        pending = still;
        k = k.saturating_mul(4).min(g);
    }
    Ok(out.into_iter().map(|o| o.expect("resolved")).collect())
}

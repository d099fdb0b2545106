//! What rows appended to a table change in blocks mined before they came.
//!
//! In: a [`MinedBlock`] mined when the table held its first `old_rows` rows (label codes
//! already those of the grown table), and the miner on the grown table. Out: the anchors a new
//! row could change (each record's [`AnchorBounds`](super::AnchorBounds)), taken out of the
//! block to be mined again; every other anchor keeps its triplets, whose negative ranks grow
//! by the new rows nearer than the negative (appended rows come after every old row, so a
//! tie never puts one before it), and its neighbour list takes in the new rows nearer than
//! its last (its neighbour labels counted again).
//!
//! A new row of another label that enters the reached part of an anchor's band is taken into
//! its selection without a pass over the table where the selection is the nearest qualifying
//! rows (no random sample, no guard): between two qualifying rows every row of another label
//! qualifies too, so the old rows before a new negative are the old negatives before it and
//! the rows of the anchor's label between them, counted from the first old negative's rank.
//!
//! Under a rank window an anchor keeps its window's rows (as its neighbour list): the new rows
//! nearer than the last of them are merged in and the window's selection made again over the
//! merged rows, by the code a full run uses.

use rayon::prelude::*;

use super::negatives::{pair_reach, qualifies};
use super::onepass::{gemm_error_bound, inner_products};
use super::positives::positive_keys;
use super::{AnchorRecord, MinedBlock, Miner, Triplet};
use crate::config::{Metric, NegativeSampling};

/// New rows compared at once: bounds the products held (anchors of a group times these).
const NEW_ROWS_CHUNK: usize = 4096;

/// A label no query has (queries are all of label 0), for new documents: none is a positive.
const NOT_A_QUERY_LABEL: u32 = u32::MAX;
static NOT_A_QUERY_LABELS: [u32; NEW_ROWS_CHUNK] = [NOT_A_QUERY_LABEL; NEW_ROWS_CHUNK];

/// Anchors per parallel task.
const ANCHOR_GROUP: usize = 256;

/// New rows judged together before any is looked at one by one (a few vector registers).
const LOOK_RUN: usize = 32;

/// What became of one block's anchors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sifted {
    /// Anchors taken out (to be mined again).
    pub anchors: usize,
    /// Their triplets, taken out with them.
    pub triplets: u64,
    /// Anchors kept whose selection took in new rows, and the triplets that gave them and
    /// took from them.
    pub updated: usize,
    pub updated_added: u64,
    pub updated_removed: u64,
}

/// The rows appended to the table since the blocks sifted were mined: their positions and
/// largest squared norm. Their vectors are the end of the table's, read in place (under a
/// memory limit, through the spilled table's mapping, whose pages are dropped as for any
/// sweep) rather than copied.
pub struct NewRows {
    old_rows: usize,
    rows: Vec<u32>,
    max_sq: f32,
    /// With an approximate index, the new rows each old anchor looks at (else all of them).
    listed: Option<ListedRows>,
}

/// The new rows each old anchor looks at when the index is approximate: those whose own
/// search found the anchor among their nearest rows, and those of its label (which its
/// positive choice and violating flag read at any distance). Ascending, per old row.
struct ListedRows {
    starts: Vec<usize>,
    rows: Vec<u32>,
}

impl ListedRows {
    fn of(&self, anchor: u32) -> &[u32] {
        let a = anchor as usize;
        &self.rows[self.starts[a]..self.starts[a + 1]]
    }
}

/// Listing new rows per anchor pays while the pairs of one label are at most this share of
/// all (new row, old anchor) pairs; beyond, every anchor looks at every new row.
const LISTED_PAIRS_SHARE: usize = 8;

/// What sifting found for one anchor.
struct AnchorSift {
    /// A new row falls inside its bounds: mine it again.
    changed: bool,
    /// New rows nearer than each of its negatives.
    shifts: Vec<u32>,
    /// New rows that join its neighbour list, `(exact d, row)`.
    joins: Vec<(f32, u32)>,
    /// New rows of other labels in the reached part of its band, `(exact d, row)`, and how
    /// many new rows are nearer than each.
    entries: Vec<(f32, u32)>,
    entries_after: Vec<u32>,
    /// Scratch: the new rows among its negatives' distances, `(d, row, exact d or NaN)`.
    among: Vec<(f32, u32, f32)>,
    /// Scratch: the labels of listed new rows.
    labels: Vec<u32>,
    /// An anchor that keeps its window's rows: the new rows nearer than the last of them,
    /// `(exact d, row)`.
    window_joins: Vec<(f32, u32)>,
}

/// What an anchor (its index among those looking) does with new rows and their distances.
type LookAt<'f> = dyn FnMut(usize, &[u32], &[f32]) + 'f;

/// `(d, row)` order: nearer first, ties by the smaller row.
fn before(x: (f32, u32), y: (f32, u32)) -> bool {
    x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).is_lt()
}

/// Triplets of `new` not in `old` and of `old` not in `new`, by (positive, negative).
fn differences(old: &[Triplet], new: &[Triplet]) -> (u64, u64) {
    let within = |list: &[Triplet], t: &Triplet| {
        list.iter()
            .any(|o| (o.positive, o.negative) == (t.positive, t.negative))
    };
    (
        new.iter().filter(|t| !within(old, t)).count() as u64,
        old.iter().filter(|t| !within(new, t)).count() as u64,
    )
}

impl Miner<'_> {
    /// The table's rows from position `old_rows` on, for [`Miner::sift_block`].
    pub fn new_rows(&self, old_rows: usize) -> NewRows {
        let rows: Vec<u32> = (old_rows as u32..self.table.rows() as u32).collect();
        NewRows {
            old_rows,
            max_sq: rows
                .iter()
                .map(|&r| self.norms_sq[r as usize])
                .fold(0.0, f32::max),
            rows,
            listed: None,
        }
    }

    /// As [`Miner::new_rows`], for an approximate index on a labelled table: each old anchor
    /// looks only at the new rows whose search (at the run's depth `k`) found it among their
    /// nearest, and at those of its label; the approximate index already stands for an
    /// exhaustive search, and the sift's product of every new row with every old anchor
    /// would cost a fifth of a full run. Every row when labels are so large that their pairs
    /// alone come near that product.
    pub fn new_rows_searched(&mut self, old_rows: usize) -> crate::error::Result<NewRows> {
        let mut new = self.new_rows(old_rows);
        if self.exact() || self.queries.is_some() || new.rows.is_empty() {
            return Ok(new);
        }
        // The old rows of a new row's label (groups are in row order).
        let old_of_label = |r: u32| {
            let group = &self.groups[self.label(r) as usize];
            &group[..group.partition_point(|&m| (m as usize) < old_rows)]
        };
        let same_label_pairs: usize = new.rows.iter().map(|&r| old_of_label(r).len()).sum();
        if same_label_pairs > new.rows.len() * old_rows / LISTED_PAIRS_SHARE {
            return Ok(new);
        }
        let k = self.search_knobs().k;
        let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(same_label_pairs + new.rows.len() * k);
        for &r in &new.rows {
            pairs.extend(old_of_label(r).iter().map(|&a| (a, r)));
        }
        for chunk in new.rows.chunks(NEW_ROWS_CHUNK) {
            let queries = self.gather_anchors(chunk.iter().copied());
            let found = self.search_index(&queries, k + 1)?;
            for (q, &r) in chunk.iter().enumerate() {
                pairs.extend(
                    found
                        .of(q)
                        .filter(|&(_, a)| (a as usize) < old_rows)
                        .map(|(_, a)| (a, r)),
                );
            }
        }
        pairs.par_sort_unstable();
        pairs.dedup();
        let mut starts = vec![0usize; old_rows + 1];
        for &(a, _) in &pairs {
            starts[a as usize + 1] += 1;
        }
        for a in 0..old_rows {
            starts[a + 1] += starts[a];
        }
        tracing::info!(
            stage = "state",
            pairs = pairs.len(),
            k,
            "new rows listed per old anchor by the index's search and their labels"
        );
        new.listed = Some(ListedRows {
            starts,
            rows: pairs.into_iter().map(|(_, r)| r).collect(),
        });
        Ok(new)
    }

    /// Takes out of `block` the anchors that a row of `new` could
    /// change, and returns them (in order) with what they held; counts the new rows nearer
    /// than every kept negative into its rank, takes new rows into kept neighbour lists
    /// (their neighbour labels counted again) and, where it can, into kept selections.
    pub fn sift_block(&self, block: &mut MinedBlock, new: &NewRows) -> (Vec<u32>, Sifted) {
        let n = self.table.rows();
        let (old_rows, new_rows, new_max_sq) = (new.old_rows, &new.rows, new.max_sq);
        let dim = self.table.dim;
        // The new rows, chunk by chunk, and their vectors: consecutive rows of the table.
        let new_vectors = || {
            new_rows.chunks(NEW_ROWS_CHUNK).map(move |rows| {
                let (first, last) = (rows[0] as usize, rows[rows.len() - 1] as usize);
                (rows, &self.vectors[first * dim..(last + 1) * dim])
            })
        };
        if old_rows >= n || block.anchors.is_empty() {
            return (Vec::new(), Sifted::default());
        }
        // Each anchor's triplets (they come in anchor order) and neighbours.
        let mut spans = Vec::with_capacity(block.anchors.len());
        let mut near_spans = Vec::with_capacity(block.anchors.len());
        let (mut at, mut near_at) = (0, 0);
        for r in &block.anchors {
            let start = at;
            while at < block.triplets.len() && block.triplets[at].anchor == r.anchor {
                at += 1;
            }
            spans.push(start..at);
            near_spans.push(near_at..near_at + r.neighbours as usize);
            near_at += r.neighbours as usize;
        }
        // Queries keep no neighbour list.
        let near_want = if self.queries.is_some() {
            0
        } else {
            self.params.suspects_k.min(n - 1)
        };
        let products_of = |queries: &[f32], count: usize, vectors: &[f32], rows: usize| {
            let mut products = vec![0.0; count * rows];
            inner_products(queries, vectors, self.table.dim, &mut products);
            products
        };
        // Hands each of `anchors` (their vectors in `queries`) the new rows it looks at with
        // their product distances: every new row, chunk by chunk, or the anchor's own list.
        let look = |anchors: &[u32], queries: &[f32], f: &mut LookAt| {
            let mut dist = Vec::with_capacity(NEW_ROWS_CHUNK);
            match &new.listed {
                None => {
                    for (rows, vectors) in new_vectors() {
                        let products = products_of(queries, anchors.len(), vectors, rows.len());
                        for (q, &a) in anchors.iter().enumerate() {
                            let products = &products[q * rows.len()..(q + 1) * rows.len()];
                            self.new_row_distances(a, rows, products, &mut dist);
                            f(q, rows, &dist);
                        }
                    }
                }
                Some(listed) => {
                    for (q, &a) in anchors.iter().enumerate() {
                        let rows = listed.of(a);
                        if rows.is_empty() {
                            continue;
                        }
                        let query = &queries[q * dim..(q + 1) * dim];
                        self.listed_row_distances(a, query, rows, &mut dist);
                        f(q, rows, &dist);
                    }
                }
            }
        };
        let (triplets, neighbours) = (&block.triplets, &block.neighbours);
        // Anchors that keep their window's rows take new rows into it in place.
        let window = super::onepass::kept_window(self);
        let sifts: Vec<(AnchorSift, Option<Vec<Triplet>>, Option<MinedBlock>)> = {
            let _single = crate::process::BlasThreads::single();
            block
                .anchors
                .par_chunks(ANCHOR_GROUP)
                .zip(spans.par_chunks(ANCHOR_GROUP))
                .zip(near_spans.par_chunks(ANCHOR_GROUP))
                .flat_map_iter(|((records, spans), near_spans)| {
                    let mut sifts: Vec<AnchorSift> = spans
                        .iter()
                        .map(|s| AnchorSift {
                            changed: false,
                            shifts: vec![0; s.len()],
                            joins: Vec::new(),
                            entries: Vec::new(),
                            entries_after: Vec::new(),
                            among: Vec::new(),
                            labels: Vec::new(),
                            window_joins: Vec::new(),
                        })
                        .collect();
                    let anchors: Vec<u32> = records.iter().map(|r| r.anchor).collect();
                    let queries = self.gather_anchors(anchors.iter().copied());
                    look(&anchors, &queries, &mut |i, rows, dist| {
                        if sifts[i].changed {
                            return;
                        }
                        let near = &neighbours[near_spans[i].clone()];
                        let window = window.filter(|&k| near.len() == k).map(|_| near);
                        self.sift_anchor(
                            &records[i],
                            &triplets[spans[i].clone()],
                            (near, near_want),
                            window,
                            rows,
                            dist,
                            new_max_sq,
                            &mut sifts[i],
                        );
                    });
                    // The new rows nearer than each entry: a second look at the new rows, for
                    // the anchors that have entries.
                    let entering: Vec<usize> = (0..records.len())
                        .filter(|&i| !sifts[i].changed && !sifts[i].entries.is_empty())
                        .collect();
                    if !entering.is_empty() {
                        let anchors: Vec<u32> =
                            entering.iter().map(|&i| records[i].anchor).collect();
                        let queries = self.gather_anchors(anchors.iter().copied());
                        for &i in &entering {
                            sifts[i].entries_after = vec![0; sifts[i].entries.len()];
                        }
                        look(&anchors, &queries, &mut |q, rows, dist| {
                            let a = anchors[q];
                            let slack = self.sift_slack(a, new_max_sq);
                            let sift = &mut sifts[entering[q]];
                            for (&entry, after) in
                                sift.entries.iter().zip(sift.entries_after.iter_mut())
                            {
                                *after += self.count_nearer(a, rows, dist, slack, entry);
                            }
                        });
                    }
                    sifts.into_iter().enumerate().map(move |(i, mut sift)| {
                        let taken_in = (!sift.changed && !sift.entries.is_empty()).then(|| {
                            self.take_in(&records[i], &triplets[spans[i].clone()], &sift, old_rows)
                        });
                        let taken_in = match taken_in {
                            Some(None) => {
                                // A pair without a triplet: its band's start is unknown.
                                sift.changed = true;
                                None
                            }
                            Some(Some(t)) => Some(t),
                            None => None,
                        };
                        let patched = if !sift.changed && !sift.window_joins.is_empty() {
                            let kept = &neighbours[near_spans[i].clone()];
                            let patched = self.patch_window(&records[i], kept, &sift.window_joins);
                            sift.changed = patched.is_none();
                            patched
                        } else {
                            None
                        };
                        (sift, taken_in, patched)
                    })
                })
                .collect()
        };
        let mut taken = Vec::new();
        let mut sifted = Sifted::default();
        let mut kept = MinedBlock::default();
        for (((record, span), near), (sift, taken_in, patched)) in
            block.anchors.iter().zip(&spans).zip(&near_spans).zip(sifts)
        {
            if sift.changed {
                taken.push(record.anchor);
                sifted.anchors += 1;
                sifted.triplets += span.len() as u64;
                continue;
            }
            if let Some(patched) = patched {
                let old = &block.triplets[span.clone()];
                let (added, removed) = differences(old, &patched.triplets);
                sifted.updated += 1;
                sifted.updated_added += added;
                sifted.updated_removed += removed;
                kept.append(patched);
                continue;
            }
            let mut record = *record;
            match taken_in {
                Some(new) => {
                    let old = &block.triplets[span.clone()];
                    let (added, removed) = differences(old, &new);
                    sifted.updated += 1;
                    sifted.updated_added += added;
                    sifted.updated_removed += removed;
                    record.triplets = new.len() as u32;
                    record.bounds.other_hi = self.reached(&new);
                    kept.triplets.extend(new);
                }
                None => kept
                    .triplets
                    .extend(span.clone().zip(&sift.shifts).map(|(t, shift)| Triplet {
                        negative_rank: block.triplets[t].negative_rank + shift,
                        ..block.triplets[t]
                    })),
            }
            let near = &block.neighbours[near.clone()];
            if sift.joins.is_empty() {
                kept.neighbours.extend_from_slice(near);
            } else {
                let mut list: Vec<(f32, u32)> = near.iter().chain(&sift.joins).copied().collect();
                super::sort_nearest(&mut list);
                list.truncate(near_want);
                record.neighbour_labels =
                    super::negatives::neighbour_labels(self, record.label, &list);
                record.neighbours = list.len() as u32;
                kept.neighbours.extend(list);
            }
            kept.anchors.push(record);
        }
        *block = kept;
        (taken, sifted)
    }

    /// The anchor of `record` mined again from its window's rows `window` (the nearest of the
    /// table then, exactly and in order) with the new rows `joins` nearer than the last of
    /// them: they are the nearest rows of the grown table, and the window's selection over
    /// them is a full run's. Its positives are planned again as a full run plans them (the
    /// sift mines an anchor again when a new row could change them), which the miner does
    /// in place for queries and labels of small groups (`None` for a larger group: mine it
    /// again). Its violating flag stays (the sift mines it again when a new row could flip it).
    fn patch_window(
        &self,
        record: &AnchorRecord,
        window: &[(f32, u32)],
        joins: &[(f32, u32)],
    ) -> Option<MinedBlock> {
        let a = record.anchor;
        let plan = if self.queries.is_some() {
            super::positives::plan_queries(self, &[a])
        } else {
            let group = &self.groups[record.label as usize];
            if group.len() > super::positives::SMALL_GROUP {
                return None;
            }
            super::positives::plan_small_group(self, record.label, group, &[a])
        }
        .pop()
        .expect("one anchor planned");
        let mut list: Vec<(f32, u32)> = window.iter().chain(joins).copied().collect();
        super::sort_nearest(&mut list);
        list.truncate(window.len());
        let mut resolved = super::negatives::resolve(self, &plan, &list, f32::INFINITY)
            .expect("a list of every row needs no deeper search");
        resolved.violating_neighbour = record.violating_neighbour;
        resolved.neighbours = list;
        Some(super::negatives::assemble(
            self,
            vec![plan],
            vec![Some((resolved, false))],
        ))
    }

    /// Whether new rows entering a selection can be taken in without a pass over the table:
    /// the selection is the nearest qualifying rows, and no guard removes any.
    fn takes_entries_in(&self) -> bool {
        let p = &self.params;
        self.queries.is_none()
            && p.sample == NegativeSampling::Nearest
            && !p.guarded()
            && p.range_min == 0
            && p.range_max.is_none()
    }

    /// The farthest distance at which a selection of `triplets` (every pair of an anchor,
    /// each with at least one) can still take a new row in: [`AnchorBounds::other_hi`].
    fn reached(&self, triplets: &[Triplet]) -> f32 {
        triplets
            .chunk_by(|x, y| x.positive == y.positive)
            .map(|pair| pair_reach(&self.params, pair[0].d_ap, pair.iter()))
            .fold(f32::NEG_INFINITY, f32::max)
    }

    /// Distances from anchor `a` to the new rows `rows` (consecutive rows), from their inner
    /// products: [`Miner::product_distance`] of each, in one pass.
    fn new_row_distances(&self, a: u32, rows: &[u32], products: &[f32], out: &mut Vec<f32>) {
        out.clear();
        match self.params.metric {
            Metric::L2sq => {
                let a_sq = self.anchor_norm_sq(a);
                let first = rows[0] as usize;
                debug_assert_eq!(rows[rows.len() - 1] as usize, first + rows.len() - 1);
                let sq = &self.norms_sq[first..first + rows.len()];
                out.extend(products.iter().zip(sq).map(|(&x, &s)| a_sq + s - 2.0 * x));
            }
            Metric::Cosine => out.extend(products.iter().map(|&x| 1.0 - x)),
        }
    }

    /// As [`Miner::new_row_distances`], for listed rows (any positions), from their products
    /// with the anchor's vector `query`.
    fn listed_row_distances(&self, a: u32, query: &[f32], rows: &[u32], out: &mut Vec<f32>) {
        out.clear();
        let a_sq = self.anchor_norm_sq(a);
        out.extend(rows.iter().map(|&r| {
            let x = crate::score::dot(query, self.row(r)) as f32;
            self.product_distance(a_sq, r, x)
        }));
    }

    /// How far a product's distance from anchor `a` to a new row may be from the exact one.
    fn sift_slack(&self, a: u32, new_max_sq: f32) -> f32 {
        2.0 * gemm_error_bound(self.table.dim, self.anchor_norm_sq(a), new_max_sq)
    }

    /// The new rows `rows` (at product distances `dist` from anchor `a`) before `(e, row)` in
    /// `(d, row)` order: by the product's distance, and within `slack` of `e` by the exact
    /// one. Counted in a pass that compiles to vector compares: most rows are far from `e`.
    fn count_nearer(
        &self,
        a: u32,
        rows: &[u32],
        dist: &[f32],
        slack: f32,
        (e, row): (f32, u32),
    ) -> u32 {
        let (below, edge) = (e - slack, e + slack);
        let (mut sure, mut maybe) = (0u32, 0u32);
        for &d in dist {
            sure += u32::from(d < below);
            maybe += u32::from(d <= edge);
        }
        if maybe > sure {
            for (&r, &d) in rows.iter().zip(dist) {
                if d >= below && d <= edge && before((self.anchor_distance(a, r), r), (e, row)) {
                    sure += 1;
                }
            }
        }
        sure
    }

    /// The anchor's triplets with its entries taken into each pair's selection, ranks
    /// counted again; `None` when a pair has no triplet (its band's start is unknown).
    fn take_in(
        &self,
        record: &AnchorRecord,
        old: &[Triplet],
        sift: &AnchorSift,
        old_rows: usize,
    ) -> Option<Vec<Triplet>> {
        let p = &self.params;
        let a = record.anchor;
        let pairs: Vec<&[Triplet]> = old.chunk_by(|x, y| x.positive == y.positive).collect();
        if pairs.len() != record.pairs as usize {
            return None;
        }
        // The anchor's label's old rows, by exact distance: between two qualifying rows they
        // are the only rows a selection skips.
        let same: Vec<(f32, u32)> = {
            let mut same: Vec<(f32, u32)> = self.groups[record.label as usize]
                .iter()
                .filter(|&&s| (s as usize) < old_rows && s != a)
                .map(|&s| (self.anchor_distance(a, s), s))
                .collect();
            super::sort_nearest(&mut same);
            same
        };
        let same_before = |x: (f32, u32)| same.partition_point(|&s| before(s, x)) as u32;
        let limit = p.num_negatives.limit();
        let mut out = Vec::with_capacity(old.len() + sift.entries.len());
        let mut pair_start = 0;
        for pair in pairs {
            let first = &pair[0];
            let (d_ap, positive) = (first.d_ap, first.positive);
            let shifts = &sift.shifts[pair_start..pair_start + pair.len()];
            pair_start += pair.len();
            let shifted = |j: usize| pair[j].negative_rank + shifts[j];
            // (d, row, rank) of every candidate: the old negatives and the qualifying entries.
            let mut candidates: Vec<(f32, u32, u32)> = (0..pair.len())
                .map(|j| (pair[j].d_an, pair[j].negative, shifted(j)))
                .collect();
            let n1 = (first.d_an, first.negative);
            for (&(d, r), &after) in sift.entries.iter().zip(&sift.entries_after) {
                if !qualifies(p.negatives, d_ap, d, p.margin) {
                    continue;
                }
                let x = (d, r);
                // Old rows before x: counted from the first old negative's rank, by the old
                // negatives and the rows of the anchor's label between them.
                let old_before = if before(n1, x) {
                    let negatives = pair
                        .iter()
                        .filter(|t| before((t.d_an, t.negative), x))
                        .count();
                    first.negative_rank + negatives as u32 + (same_before(x) - same_before(n1))
                } else {
                    first.negative_rank - (same_before(n1) - same_before(x))
                };
                candidates.push((d, r, old_before + after));
            }
            candidates.sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            candidates.truncate(limit);
            out.extend(
                candidates
                    .into_iter()
                    .map(|(d_an, negative, negative_rank)| Triplet {
                        anchor: a,
                        positive,
                        negative,
                        d_ap,
                        d_an,
                        negative_rank,
                    }),
            );
        }
        Some(out)
    }

    /// Looks at the new rows `rows` (at product distances `dist` from the anchor) for
    /// `record`: marks it changed when one falls inside its bounds; else adds to `sift` the
    /// rows nearer than each of its `triplets`' negatives, those that join its neighbour
    /// list `near` (of `want` rows at most), and the rows of other labels that enter the
    /// reached part of its band where they can be taken in.
    #[allow(clippy::too_many_arguments)]
    fn sift_anchor(
        &self,
        record: &AnchorRecord,
        triplets: &[Triplet],
        (near, want): (&[(f32, u32)], usize),
        window: Option<&[(f32, u32)]>,
        rows: &[u32],
        dist: &[f32],
        new_max_sq: f32,
        sift: &mut AnchorSift,
    ) {
        let a = record.anchor;
        let b = record.bounds;
        // A window kept takes in the rows that would move it (`any_hi` is its last row).
        let any_hi = if window.is_some() {
            f32::NEG_INFINITY
        } else {
            b.any_hi
        };
        // The product's distance is within `slack` of the exact one.
        let slack = self.sift_slack(a, new_max_sq);
        let keys = positive_keys(self.params.seed, a);
        let takes_in = self.takes_entries_in();
        // Where a new row joins the neighbour list: nearer than its last row (a tie comes
        // after it), anywhere while the list is short. Anchors without a positive have none.
        let neighbour_cut = match near.last() {
            _ if !record.has_positive || want == 0 => f32::NEG_INFINITY,
            Some(&(d, _)) if near.len() >= want => d,
            _ => f32::INFINITY,
        };
        // Most rows can change no more than ranks (counted below): beyond every near limit,
        // nearer than the hardest positive, and outside the reached band or of the anchor's
        // label; where random positives draw by key, not of the anchor's label.
        let near_limit = [b.other_near, b.any_hi, neighbour_cut]
            .into_iter()
            .fold(b.same_near, f32::max)
            + slack;
        let far_limit = b.same_far - slack;
        let (band_lo, band_hi) = (b.other_lo - slack, b.other_hi + slack);
        let keyed = b.key_cut != 0;
        // Ranks: rows nearer than every negative by more than the slack count for each; rows
        // among the negatives (within the slack) are judged one by one.
        let (first_negative, last_negative) = triplets
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), t| {
                (lo.min(t.d_an), hi.max(t.d_an))
            });
        let (rank_lo, rank_hi) = (first_negative - slack, last_negative + slack);
        let nearer_than_all = dist.iter().map(|&d| u32::from(d < rank_lo)).sum::<u32>();
        sift.among.clear();
        let first = rows[0] as usize;
        let contiguous = rows[rows.len() - 1] as usize == first + rows.len() - 1;
        // A query's "label" is its known positives, and no new document is one: the qrels
        // stay as they were, and name only documents of the corpus then.
        let mut listed_labels = std::mem::take(&mut sift.labels);
        let labels = if self.queries.is_some() {
            debug_assert_ne!(record.label, NOT_A_QUERY_LABEL);
            &NOT_A_QUERY_LABELS[..rows.len()]
        } else if contiguous {
            &self.table.label_codes[first..first + rows.len()]
        } else {
            listed_labels.clear();
            listed_labels.extend(rows.iter().map(|&r| self.label(r)));
            &listed_labels[..]
        };
        // Without short-circuits, so that a run of rows is judged in vector registers: the
        // rows that need a look are rare.
        let looked_at = |d: f32, label: u32| {
            let same = label == record.label;
            let among = (d >= rank_lo) & (d <= rank_hi);
            let beyond = (d > near_limit)
                & (d < far_limit)
                & !(keyed & same)
                & (same | (d < band_lo) | (d > band_hi));
            among | !beyond
        };
        // One row's look: whether it changes the anchor (mine it again); else what it adds
        // to the ranks, the selection and the neighbour list.
        let mut look = |r: u32, d: f32, label: u32| -> bool {
            if (d >= rank_lo) & (d <= rank_hi) {
                sift.among.push((d, r, f32::NAN));
            }
            let same = label == record.label;
            let mut exact = None;
            let mut exact = || *exact.get_or_insert_with(|| self.anchor_distance(a, r));
            // Inside the bounds by the product's distance, then by the exact one (the
            // bounds are exact distances): where distances crowd, many rows lie within the
            // product's error of a bound.
            let moves = |d: f32, slack: f32| {
                d <= any_hi + slack
                    || if same {
                        d >= b.same_far - slack || d <= b.same_near + slack
                    } else {
                        d <= b.other_near + slack
                    }
            };
            let enters =
                |d: f32, slack: f32| !same && d >= b.other_lo - slack && d <= b.other_hi + slack;
            if (same && keys.key(r) < b.key_cut) || (moves(d, slack) && moves(exact(), 0.0)) {
                return true;
            }
            if let Some(&(last, _)) = window.and_then(|w| w.last()) {
                // Rows entering the window (ties come after its last row) are taken in; the
                // band lies within it.
                if d <= last + slack && exact() < last {
                    sift.window_joins.push((exact(), r));
                }
                return false;
            }
            if enters(d, slack) && enters(exact(), 0.0) {
                if !takes_in {
                    return true;
                }
                sift.entries.push((exact(), r));
            }
            if d <= neighbour_cut + slack {
                let e = exact();
                if neighbour_cut == f32::INFINITY || e < neighbour_cut {
                    sift.joins.push((e, r));
                }
            }
            false
        };
        for start in (0..rows.len()).step_by(LOOK_RUN) {
            let end = (start + LOOK_RUN).min(rows.len());
            let any = dist[start..end]
                .iter()
                .zip(&labels[start..end])
                .fold(false, |any, (&d, &label)| any | looked_at(d, label));
            if !any {
                continue;
            }
            for j in start..end {
                if look(rows[j], dist[j], labels[j]) {
                    sift.changed = true;
                    return;
                }
            }
        }
        sift.labels = listed_labels;
        // New rows come after every old row: a tie leaves the negative first.
        for (t, shift) in triplets.iter().zip(sift.shifts.iter_mut()) {
            *shift += nearer_than_all;
            for (d, r, exact) in sift.among.iter_mut() {
                let nearer = if *d < t.d_an - slack {
                    true
                } else if *d <= t.d_an + slack {
                    if exact.is_nan() {
                        *exact = self.anchor_distance(a, *r);
                    }
                    *exact < t.d_an
                } else {
                    false
                };
                *shift += u32::from(nearer);
            }
        }
    }
}

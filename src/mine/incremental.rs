//! What rows appended to a table change in blocks mined before they came.
//!
//! In: a [`MinedBlock`] mined when the table held its first `old_rows` rows (label codes
//! already those of the grown table), and the miner on the grown table. Out: the anchors a new
//! row could change (each record's [`AnchorBounds`](super::AnchorBounds)), taken out of the
//! block to be mined again; every other anchor keeps its triplets, whose negative ranks grow
//! by the new rows nearer than the negative (appended rows come after every old row, so a
//! tie never puts one before it), and its neighbour list takes in the new rows nearer than
//! its last (its neighbour labels counted again).

use rayon::prelude::*;

use super::onepass::{gemm_error_bound, inner_products};
use super::positives::positive_keys;
use super::{AnchorRecord, MinedBlock, Miner, Triplet};
use crate::config::Metric;

/// New rows compared at once: bounds the products held (anchors of a group times these).
const NEW_ROWS_CHUNK: usize = 4096;

/// Anchors per parallel task.
const ANCHOR_GROUP: usize = 256;

/// What became of one block's anchors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sifted {
    /// Anchors taken out (to be mined again).
    pub anchors: usize,
    /// Their triplets, taken out with them.
    pub triplets: u64,
}

/// What sifting found for one anchor.
struct AnchorSift {
    /// A new row falls inside its bounds: mine it again.
    changed: bool,
    /// New rows nearer than each of its negatives.
    shifts: Vec<u32>,
    /// New rows that join its neighbour list, `(exact d, row)`.
    joins: Vec<(f32, u32)>,
}

impl Miner<'_> {
    /// Takes out of `block` the anchors that a row at position `old_rows` or later could
    /// change, and returns them (in order) with what they held; counts the new rows nearer
    /// than every kept negative into its rank, and takes new rows into kept neighbour lists
    /// (their neighbour labels computed again).
    pub fn sift_block(&self, block: &mut MinedBlock, old_rows: usize) -> (Vec<u32>, Sifted) {
        let n = self.table.rows();
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
        let near_want = self.params.suspects_k.min(n - 1);
        let new_rows: Vec<u32> = (old_rows as u32..n as u32).collect();
        let new_max_sq = new_rows
            .iter()
            .map(|&r| self.norms_sq[r as usize])
            .fold(0.0, f32::max);
        let new_vectors: Vec<Vec<f32>> = new_rows
            .chunks(NEW_ROWS_CHUNK)
            .map(|c| self.gather(c.iter().copied()))
            .collect();
        let (triplets, neighbours) = (&block.triplets, &block.neighbours);
        let sifts: Vec<AnchorSift> = {
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
                        })
                        .collect();
                    let queries = self.gather(records.iter().map(|r| r.anchor));
                    let mut products = Vec::new();
                    for (rows, vectors) in new_rows.chunks(NEW_ROWS_CHUNK).zip(&new_vectors) {
                        products.clear();
                        products.resize(records.len() * rows.len(), 0.0);
                        inner_products(&queries, vectors, self.table.dim, &mut products);
                        for (i, record) in records.iter().enumerate() {
                            if sifts[i].changed {
                                continue;
                            }
                            let near = &neighbours[near_spans[i].clone()];
                            self.sift_anchor(
                                record,
                                &triplets[spans[i].clone()],
                                (near, near_want),
                                rows,
                                &products[i * rows.len()..(i + 1) * rows.len()],
                                new_max_sq,
                                &mut sifts[i],
                            );
                        }
                    }
                    sifts
                })
                .collect()
        };
        let mut taken = Vec::new();
        let mut sifted = Sifted::default();
        let mut kept = MinedBlock::default();
        for (((record, span), near), sift) in
            block.anchors.iter().zip(&spans).zip(&near_spans).zip(sifts)
        {
            if sift.changed {
                taken.push(record.anchor);
                sifted.anchors += 1;
                sifted.triplets += span.len() as u64;
                continue;
            }
            let mut record = *record;
            kept.triplets
                .extend(span.clone().zip(&sift.shifts).map(|(t, shift)| Triplet {
                    negative_rank: block.triplets[t].negative_rank + shift,
                    ..block.triplets[t]
                }));
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

    /// Looks at the new rows `rows` (with the anchor's inner products `products`) for
    /// `record`: marks it changed when one falls inside its bounds; else adds to `sift` the
    /// rows nearer than each of its `triplets`' negatives, and those that join its neighbour
    /// list `near` (of `want` rows at most).
    #[allow(clippy::too_many_arguments)]
    fn sift_anchor(
        &self,
        record: &AnchorRecord,
        triplets: &[Triplet],
        (near, want): (&[(f32, u32)], usize),
        rows: &[u32],
        products: &[f32],
        new_max_sq: f32,
        sift: &mut AnchorSift,
    ) {
        let a = record.anchor;
        let b = record.bounds;
        let a_sq = self.norms_sq[a as usize];
        // The product's distance is within `slack` of the exact one.
        let slack = 2.0 * gemm_error_bound(self.table.dim, a_sq, new_max_sq);
        let farthest_negative = triplets.iter().map(|t| t.d_an).fold(f32::MIN, f32::max);
        let keys = positive_keys(self.params.seed, a);
        // Where a new row joins the neighbour list: nearer than its last row (a tie comes
        // after it), anywhere while the list is short. Anchors without a positive have none.
        let neighbour_cut = match near.last() {
            _ if !record.has_positive || want == 0 => f32::NEG_INFINITY,
            Some(&(d, _)) if near.len() >= want => d,
            _ => f32::INFINITY,
        };
        for (&r, &x) in rows.iter().zip(products) {
            let d = match self.params.metric {
                Metric::L2sq => a_sq + self.norms_sq[r as usize] - 2.0 * x,
                Metric::Cosine => 1.0 - x,
            };
            let mut exact = None;
            let mut exact = || *exact.get_or_insert_with(|| self.anchor_distance(a, r));
            let same = self.label(r) == record.label;
            // Inside the bounds by the product's distance, then by the exact one (the
            // bounds are exact distances): where distances crowd, many rows lie within the
            // product's error of a bound.
            let inside = |d: f32, slack: f32| {
                d <= b.any_hi + slack
                    || if same {
                        d >= b.same_far - slack || d <= b.same_near + slack
                    } else {
                        d <= b.other_near + slack
                            || (d >= b.other_lo - slack && d <= b.other_hi + slack)
                    }
            };
            if (same && keys.key(r) < b.key_cut) || (inside(d, slack) && inside(exact(), 0.0)) {
                sift.changed = true;
                return;
            }
            if d <= neighbour_cut + slack {
                let e = exact();
                if neighbour_cut == f32::INFINITY || e < neighbour_cut {
                    sift.joins.push((e, r));
                }
            }
            if d < farthest_negative + slack {
                for (t, shift) in triplets.iter().zip(sift.shifts.iter_mut()) {
                    let nearer = if d < t.d_an - slack {
                        true
                    } else if d <= t.d_an + slack {
                        exact() < t.d_an
                    } else {
                        false
                    };
                    *shift += u32::from(nearer);
                }
            }
        }
    }
}

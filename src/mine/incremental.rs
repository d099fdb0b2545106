//! What rows appended to a table change in blocks mined before they came.
//!
//! In: a [`MinedBlock`] mined when the table held its first `old_rows` rows (label codes
//! already those of the grown table), and the miner on the grown table. Out: the anchors a new
//! row could change (each record's [`AnchorBounds`](super::AnchorBounds)), taken out of the
//! block to be mined again; every other anchor keeps its triplets, whose negative ranks grow
//! by the new rows nearer than the negative (appended rows come after every old row, so a
//! tie never puts one before it).

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

impl Miner<'_> {
    /// Takes out of `block` the anchors that a row at position `old_rows` or later could
    /// change, and returns them (in order) with what they held; counts the new rows nearer
    /// than every kept negative into its rank.
    pub fn sift_block(&self, block: &mut MinedBlock, old_rows: usize) -> (Vec<u32>, Sifted) {
        let n = self.table.rows();
        if old_rows >= n || block.anchors.is_empty() {
            return (Vec::new(), Sifted::default());
        }
        // Each anchor's triplets (they come in anchor order).
        let mut spans = Vec::with_capacity(block.anchors.len());
        let mut at = 0;
        for r in &block.anchors {
            let start = at;
            while at < block.triplets.len() && block.triplets[at].anchor == r.anchor {
                at += 1;
            }
            spans.push(start..at);
        }
        let new_rows: Vec<u32> = (old_rows as u32..n as u32).collect();
        let new_max_sq = new_rows
            .iter()
            .map(|&r| self.norms_sq[r as usize])
            .fold(0.0, f32::max);
        let new_vectors: Vec<Vec<f32>> = new_rows
            .chunks(NEW_ROWS_CHUNK)
            .map(|c| self.gather(c.iter().copied()))
            .collect();
        let triplets = &block.triplets;
        let outcome: Vec<(Vec<bool>, Vec<u32>)> = {
            let _single = crate::process::BlasThreads::single();
            block
                .anchors
                .par_chunks(ANCHOR_GROUP)
                .zip(spans.par_chunks(ANCHOR_GROUP))
                .map(|(records, spans)| {
                    let mut changed = vec![false; records.len()];
                    let mut shifts: Vec<Vec<u32>> =
                        spans.iter().map(|s| vec![0; s.len()]).collect();
                    let queries = self.gather(records.iter().map(|r| r.anchor));
                    let mut products = Vec::new();
                    for (rows, vectors) in new_rows.chunks(NEW_ROWS_CHUNK).zip(&new_vectors) {
                        products.clear();
                        products.resize(records.len() * rows.len(), 0.0);
                        inner_products(&queries, vectors, self.table.dim, &mut products);
                        for (i, record) in records.iter().enumerate() {
                            if changed[i] {
                                continue;
                            }
                            let row_products = &products[i * rows.len()..(i + 1) * rows.len()];
                            changed[i] = self.sift_anchor(
                                record,
                                &triplets[spans[i].clone()],
                                rows,
                                row_products,
                                new_max_sq,
                                &mut shifts[i],
                            );
                        }
                    }
                    let shifts = shifts.into_iter().flatten().collect::<Vec<u32>>();
                    (changed, shifts)
                })
                .collect()
        };
        let changed: Vec<bool> = outcome.iter().flat_map(|o| o.0.iter().copied()).collect();
        let shifts: Vec<u32> = outcome.into_iter().flat_map(|o| o.1).collect();
        let mut taken = Vec::new();
        let mut sifted = Sifted::default();
        let mut kept = MinedBlock::default();
        for ((record, span), &changed) in block.anchors.iter().zip(&spans).zip(&changed) {
            if changed {
                taken.push(record.anchor);
                sifted.anchors += 1;
                sifted.triplets += span.len() as u64;
                continue;
            }
            kept.anchors.push(*record);
            kept.triplets.extend(span.clone().map(|t| Triplet {
                negative_rank: block.triplets[t].negative_rank + shifts[t],
                ..block.triplets[t]
            }));
        }
        *block = kept;
        (taken, sifted)
    }

    /// Whether a row of `rows` (new rows, with the anchor's inner products `products`) falls
    /// inside `record`'s bounds; else adds to `shifts` the rows nearer than each triplet's
    /// negative.
    fn sift_anchor(
        &self,
        record: &AnchorRecord,
        triplets: &[Triplet],
        rows: &[u32],
        products: &[f32],
        new_max_sq: f32,
        shifts: &mut [u32],
    ) -> bool {
        let a = record.anchor;
        let b = record.bounds;
        let a_sq = self.norms_sq[a as usize];
        // The product's distance is within `slack` of the exact one.
        let slack = 2.0 * gemm_error_bound(self.table.dim, a_sq, new_max_sq);
        let farthest_negative = triplets.iter().map(|t| t.d_an).fold(f32::MIN, f32::max);
        let keys = positive_keys(self.params.seed, a);
        for (&r, &x) in rows.iter().zip(products) {
            let d = match self.params.metric {
                Metric::L2sq => a_sq + self.norms_sq[r as usize] - 2.0 * x,
                Metric::Cosine => 1.0 - x,
            };
            if d <= b.any_hi + slack {
                return true;
            }
            if self.label(r) == record.label {
                if d >= b.same_far - slack || d <= b.same_near + slack || keys.key(r) < b.key_cut {
                    return true;
                }
            } else if d >= b.other_lo - slack && d <= b.other_hi + slack {
                return true;
            }
            if d < farthest_negative + slack {
                let mut exact = None;
                for (t, shift) in triplets.iter().zip(shifts.iter_mut()) {
                    let nearer = if d < t.d_an - slack {
                        true
                    } else if d <= t.d_an + slack {
                        *exact.get_or_insert_with(|| self.anchor_distance(a, r)) < t.d_an
                    } else {
                        false
                    };
                    *shift += u32::from(nearer);
                }
            }
        }
        false
    }
}

//! Rules applied after every anchor has its negatives: the negative reuse cap, which looks
//! across anchors, then the shortfall policy, which sees what the cap left.

use std::collections::HashMap;

use super::MinedBlock;
use crate::config::Shortfall;

/// Keeps, for every negative, the `max` anchors nearest to it (by `d_an`, ties by the smaller
/// anchor) and removes its triplets with the others.
pub(super) fn cap_reuse(blocks: &mut [MinedBlock], max: usize) {
    // One entry per (negative, anchor): d_an depends on the anchor only, not the positive.
    let mut uses: Vec<(u32, f32, u32)> = Vec::new();
    for block in blocks.iter() {
        let mut last = None;
        for t in &block.triplets {
            if last != Some((t.anchor, t.negative)) {
                uses.push((t.negative, t.d_an, t.anchor));
                last = Some((t.anchor, t.negative));
            }
        }
    }
    uses.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(x.1.total_cmp(&y.1)).then(x.2.cmp(&y.2)));
    uses.dedup_by(|x, y| x.0 == y.0 && x.2 == y.2);
    // The last (d_an, anchor) kept of every negative used by more than `max` anchors.
    let mut last_kept: HashMap<u32, (f32, u32)> = HashMap::new();
    let mut start = 0;
    while start < uses.len() {
        let neg = uses[start].0;
        let end = start + uses[start..].partition_point(|u| u.0 == neg);
        if end - start > max {
            let (_, d, a) = uses[start + max - 1];
            last_kept.insert(neg, (d, a));
        }
        start = end;
    }
    if last_kept.is_empty() {
        return;
    }
    for block in blocks.iter_mut() {
        let mut removed: HashMap<u32, u32> = HashMap::new();
        block.triplets.retain(|t| {
            let keep = match last_kept.get(&t.negative) {
                Some(&(d, a)) => t.d_an.total_cmp(&d).then(t.anchor.cmp(&a)).is_le(),
                None => true,
            };
            if !keep {
                *removed.entry(t.anchor).or_default() += 1;
            }
            keep
        });
        for record in &mut block.anchors {
            if let Some(&n) = removed.get(&record.anchor) {
                record.reuse_removed += n;
                record.triplets -= n;
            }
        }
    }
}

/// Counts the pairs with fewer than `limit` negatives and, under [`Shortfall::Drop`], removes
/// their triplets. Triplets come grouped by anchor (in record order), then by positive.
pub(super) fn apply_shortfall(block: &mut MinedBlock, limit: usize, policy: Shortfall) {
    if limit == usize::MAX {
        return;
    }
    let triplets = std::mem::take(&mut block.triplets);
    let mut kept = Vec::with_capacity(triplets.len());
    let mut at = 0;
    for record in &mut block.anchors {
        let end = at + triplets[at..].partition_point(|t| t.anchor == record.anchor);
        let mut full_pairs = 0u32;
        let mut i = at;
        while i < end {
            let p = triplets[i].positive;
            let j = i + triplets[i..end].partition_point(|t| t.positive == p);
            let full = j - i >= limit;
            full_pairs += u32::from(full);
            if full || policy == Shortfall::Keep {
                kept.extend_from_slice(&triplets[i..j]);
            } else {
                record.triplets -= (j - i) as u32;
            }
            i = j;
        }
        record.short_pairs = record.pairs - full_pairs;
        if policy == Shortfall::Drop {
            record.dropped_pairs = record.short_pairs;
        }
        at = end;
    }
    debug_assert_eq!(at, triplets.len(), "triplets follow the anchor records");
    block.triplets = kept;
}

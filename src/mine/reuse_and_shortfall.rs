//! Rules applied after every anchor has its negatives: the negative reuse cap, which looks
//! across anchors, then the shortfall policy, which sees what the cap left.

use std::collections::{BinaryHeap, HashMap};

use super::MinedBlock;
use crate::config::Shortfall;

/// The negative reuse cap, learnt block by block: for every negative, the `max` anchors
/// nearest to it (by `d_an`, ties by the smaller anchor) keep their triplets with it, the
/// others lose them. [`ReuseCap::observe`] every block first (in any order), then
/// [`ReuseCap::apply`] to each. It holds, per negative used, a count and the `max` nearest
/// uses, not the blocks: they can wait on disk between the two passes.
#[derive(Debug)]
pub(super) struct ReuseCap {
    max: usize,
    /// Per negative: how many anchors use it, and the `max` nearest of them (a max-heap).
    nearest: HashMap<u32, (u32, BinaryHeap<Use>)>,
    /// Per negative used by more than `max` anchors, the last use kept; set by the first
    /// [`ReuseCap::apply`].
    last_kept: Option<HashMap<u32, Use>>,
    /// The distinct negatives of one anchor (scratch).
    scratch: Vec<(u32, f32)>,
}

/// One anchor's use of a negative, ordered by `d_an`, then by the anchor.
#[derive(Debug, Clone, Copy)]
struct Use {
    d_an: f32,
    anchor: u32,
}

impl PartialEq for Use {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Use {}

impl PartialOrd for Use {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Use {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.d_an
            .total_cmp(&other.d_an)
            .then(self.anchor.cmp(&other.anchor))
    }
}

impl ReuseCap {
    pub(super) fn new(max: usize) -> Self {
        ReuseCap {
            max,
            nearest: HashMap::new(),
            last_kept: None,
            scratch: Vec::new(),
        }
    }

    /// Counts the uses of every negative in `block` (each anchor's once: `d_an` depends on
    /// the anchor, not the positive).
    pub(super) fn observe(&mut self, block: &MinedBlock) {
        debug_assert!(self.last_kept.is_none(), "observed after applying");
        let mut at = 0;
        while at < block.triplets.len() {
            let anchor = block.triplets[at].anchor;
            let end = at + block.triplets[at..].partition_point(|t| t.anchor == anchor);
            self.scratch.clear();
            self.scratch
                .extend(block.triplets[at..end].iter().map(|t| (t.negative, t.d_an)));
            self.scratch.sort_unstable_by_key(|u| u.0);
            self.scratch.dedup_by_key(|u| u.0);
            for &(negative, d_an) in &self.scratch {
                let (count, heap) = self.nearest.entry(negative).or_default();
                *count += 1;
                heap.push(Use { d_an, anchor });
                if heap.len() > self.max {
                    heap.pop();
                }
            }
            at = end;
        }
    }

    /// Removes from `block` the triplets of negatives whose nearer anchors are `max` already,
    /// and counts them in its anchor records. Every block was observed before the first call.
    pub(super) fn apply(&mut self, block: &mut MinedBlock) {
        let max = self.max;
        let last_kept = self.last_kept.get_or_insert_with(|| {
            tracing::debug!(negatives = self.nearest.len(), "negative reuse counted");
            std::mem::take(&mut self.nearest)
                .into_iter()
                .filter(|(_, (count, _))| *count as usize > max)
                .filter_map(|(negative, (_, heap))| Some((negative, *heap.peek()?)))
                .collect()
        });
        if last_kept.is_empty() {
            return;
        }
        let mut removed: HashMap<u32, u32> = HashMap::new();
        block.triplets.retain(|t| {
            let keep = last_kept.get(&t.negative).is_none_or(|last| {
                Use {
                    d_an: t.d_an,
                    anchor: t.anchor,
                } <= *last
            });
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

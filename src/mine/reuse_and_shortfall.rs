//! Rules applied after every anchor has its negatives: the negative reuse cap, which looks
//! across anchors, then the shortfall policy, which sees what the cap left.

use std::collections::{BinaryHeap, HashMap};

use super::MinedBlock;
use crate::config::Shortfall;

/// The negative reuse cap, learnt block by block: for every negative, the `max` anchors
/// nearest to it (by `d_an`, ties by the smaller anchor) keep their triplets with it, the
/// others lose them. [`ReuseCap::observe`] every block (in any order), end the pass with
/// [`ReuseCap::learned`], and pass again over every block while it says so; then
/// [`ReuseCap::apply`] to each. It holds, per negative used, a count and the `max` nearest
/// uses, not the blocks: they can wait on disk between the passes.
///
/// Within a byte budget (`--memory-limit`), a pass counts the negatives of one range of rows
/// only: when the counts outgrow the budget, the range is halved (the upper half dropped, to
/// be counted by a later pass). What is kept for the end is one use per row (8 bytes a row of
/// the table, counted in the run's minimum).
#[derive(Debug)]
pub(super) struct ReuseCap {
    max: usize,
    /// Bytes the counts of one pass may hold.
    budget: usize,
    /// The negatives this pass counts: `range.0 <= negative < range.1`.
    range: (u32, u64),
    /// Per negative of the range: how many anchors use it, and the `max` nearest of them (a
    /// max-heap).
    nearest: HashMap<u32, (u32, BinaryHeap<Use>)>,
    /// Per negative row, the last use kept ([`Use::KEEP_ALL`] where every use is kept);
    /// filled as each pass ends.
    last_kept: Vec<Use>,
    /// The fewest negatives a pass counts, whatever the budget.
    min_pass: usize,
    /// Passes ended.
    passes: u32,
    learned: bool,
    /// The distinct negatives of one anchor (scratch).
    scratch: Vec<(u32, f32)>,
}

/// One anchor's use of a negative, ordered by `d_an`, then by the anchor.
#[derive(Debug, Clone, Copy)]
struct Use {
    d_an: f32,
    anchor: u32,
}

impl Use {
    /// After every use: nothing is removed.
    const KEEP_ALL: Use = Use {
        d_an: f32::INFINITY,
        anchor: u32::MAX,
    };
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

/// The fewest negatives a pass counts, whatever the budget (so that passes make progress);
/// under the tests' unchecked limits (`memory::unchecked`), a few, so small tables take
/// several passes.
const MIN_PASS_NEGATIVES: usize = 4096;
const MIN_PASS_NEGATIVES_UNCHECKED: usize = 4;

impl ReuseCap {
    /// The cap at `max` anchors per negative, its counts within `budget` bytes (`None`: one
    /// pass, however many negatives).
    pub(super) fn new(max: usize, budget: Option<usize>) -> Self {
        ReuseCap {
            max,
            budget: budget.unwrap_or(usize::MAX),
            range: (0, u64::MAX),
            nearest: HashMap::new(),
            last_kept: Vec::new(),
            min_pass: if crate::memory::unchecked() {
                MIN_PASS_NEGATIVES_UNCHECKED
            } else {
                MIN_PASS_NEGATIVES
            },
            passes: 0,
            learned: false,
            scratch: Vec::new(),
        }
    }

    /// Bytes kept for the end over a table of `rows` rows: one use per negative row.
    pub(super) fn kept_bytes(rows: usize) -> u64 {
        (rows * std::mem::size_of::<Use>()) as u64
    }

    /// Bytes one counted negative holds: the map's entry (key, count, heap header, control
    /// byte, at its load factor) and the heap's buffer (grown by doubling to `max + 1`).
    fn bytes_per_negative(&self) -> usize {
        let entry = (4 + 4 + 24 + 1) * 8 / 7;
        let heap = (self.max + 1).next_power_of_two().max(4) * std::mem::size_of::<Use>();
        entry + heap.max(32)
    }

    /// Counts the uses of every negative in `block` (each anchor's once: `d_an` depends on
    /// the anchor, not the positive).
    pub(super) fn observe(&mut self, block: &MinedBlock) {
        debug_assert!(!self.learned, "observed after learning");
        let mut at = 0;
        while at < block.triplets.len() {
            let anchor = block.triplets[at].anchor;
            let end = at + block.triplets[at..].partition_point(|t| t.anchor == anchor);
            self.scratch.clear();
            let range = self.range;
            self.scratch.extend(
                block.triplets[at..end]
                    .iter()
                    .filter(|t| t.negative >= range.0 && u64::from(t.negative) < range.1)
                    .map(|t| (t.negative, t.d_an)),
            );
            self.scratch.sort_unstable_by_key(|u| u.0);
            self.scratch.dedup_by_key(|u| u.0);
            for i in 0..self.scratch.len() {
                let (negative, d_an) = self.scratch[i];
                if u64::from(negative) >= self.range.1 {
                    // Left to a later pass by a halving during this anchor.
                    break;
                }
                let (count, heap) = self.nearest.entry(negative).or_default();
                *count += 1;
                heap.push(Use { d_an, anchor });
                if heap.len() > self.max {
                    heap.pop();
                }
                if self.nearest.len() > self.min_pass
                    && self.nearest.len() * self.bytes_per_negative() > self.budget
                {
                    self.halve_range();
                }
            }
            at = end;
        }
    }

    /// Drops the upper half of the negatives counted so far, and the range above them: a
    /// later pass counts them.
    fn halve_range(&mut self) {
        let mut keys: Vec<u32> = self.nearest.keys().copied().collect();
        let mid = keys.len() / 2;
        let (_, &mut split, _) = keys.select_nth_unstable(mid);
        self.range.1 = u64::from(split);
        self.nearest.retain(|&negative, _| negative < split);
        self.nearest.shrink_to_fit();
    }

    /// Ends a pass over every block: true when every negative has been counted, false when
    /// another pass is needed (for the negatives above the range this one counted).
    pub(super) fn learned(&mut self) -> bool {
        if self.learned {
            return true;
        }
        let max = self.max;
        for (negative, (count, heap)) in self.nearest.drain() {
            if count as usize > max
                && let Some(&last) = heap.peek()
            {
                let at = negative as usize;
                if self.last_kept.len() <= at {
                    self.last_kept.resize(at + 1, Use::KEEP_ALL);
                }
                self.last_kept[at] = last;
            }
        }
        self.nearest.shrink_to_fit();
        self.passes += 1;
        if self.range.1 == u64::MAX {
            self.learned = true;
            if self.passes == 1 {
                tracing::debug!("negative reuse counted");
            } else {
                tracing::info!(
                    passes = self.passes,
                    "the negative reuse cap counted its negatives in {} passes over the mined \
                     blocks (their counts did not fit the memory limit's share at once)",
                    self.passes
                );
            }
        } else {
            self.range = (self.range.1 as u32, u64::MAX);
        }
        self.learned
    }

    /// Removes from `block` the triplets of negatives whose nearer anchors are `max` already,
    /// and counts them in its anchor records. Every block was observed until
    /// [`ReuseCap::learned`].
    pub(super) fn apply(&mut self, block: &mut MinedBlock) {
        assert!(
            self.learned,
            "the reuse cap applied before it learned every block"
        );
        let last_kept = &self.last_kept;
        if last_kept.is_empty() {
            return;
        }
        let mut removed: HashMap<u32, u32> = HashMap::new();
        block.triplets.retain(|t| {
            let last = last_kept
                .get(t.negative as usize)
                .copied()
                .unwrap_or(Use::KEEP_ALL);
            let keep = Use {
                d_an: t.d_an,
                anchor: t.anchor,
            } <= last;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mine::Triplet;
    use rand::{RngExt, SeedableRng};

    /// Blocks of 40 anchors with 1 to 3 positives of up to 6 negatives each among 700 rows;
    /// `d_an` a function of (anchor, negative), with ties.
    fn blocks(seed: u64) -> Vec<MinedBlock> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d_an = |a: u32, n: u32| ((a * 31 + n * 17) % 23) as f32 / 4.0;
        let mut out = Vec::new();
        for first in (0..400u32).step_by(40) {
            let mut block = MinedBlock::default();
            for anchor in first..first + 40 {
                for positive in 0..rng.random_range(1..4u32) {
                    let mut negatives: Vec<u32> = (0..rng.random_range(0..7))
                        .map(|_| rng.random_range(0..700))
                        .collect();
                    negatives.sort_unstable();
                    negatives.dedup();
                    block
                        .triplets
                        .extend(negatives.into_iter().map(|negative| Triplet {
                            anchor,
                            positive: 1000 + positive,
                            negative,
                            d_ap: 0.5,
                            d_an: d_an(anchor, negative),
                            negative_rank: 0,
                        }));
                }
            }
            out.push(block);
        }
        out
    }

    /// What the cap leaves, by brute force: per negative, its uses ordered by (d_an, anchor);
    /// the first `max` anchors keep theirs.
    fn oracle(blocks: &[MinedBlock], max: usize) -> Vec<Triplet> {
        let all: Vec<Triplet> = blocks.iter().flat_map(|b| b.triplets.clone()).collect();
        let mut uses: HashMap<u32, Vec<(f32, u32)>> = HashMap::new();
        for t in &all {
            uses.entry(t.negative).or_default().push((t.d_an, t.anchor));
        }
        for list in uses.values_mut() {
            list.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            list.dedup();
            list.truncate(max);
        }
        all.into_iter()
            .filter(|t| uses[&t.negative].iter().any(|&(_, a)| a == t.anchor))
            .collect()
    }

    fn capped(blocks: &[MinedBlock], mut cap: ReuseCap) -> (Vec<Triplet>, u32) {
        loop {
            for block in blocks {
                cap.observe(block);
            }
            if cap.learned() {
                break;
            }
        }
        let mut kept = Vec::new();
        for block in blocks {
            let mut block = block.clone();
            cap.apply(&mut block);
            kept.extend(block.triplets);
        }
        (kept, cap.passes)
    }

    #[test]
    fn the_cap_keeps_the_nearest_anchors_of_every_negative() {
        for seed in 0..4 {
            let blocks = blocks(seed);
            let (kept, passes) = capped(&blocks, ReuseCap::new(2, None));
            assert_eq!(passes, 1);
            assert_eq!(kept, oracle(&blocks, 2), "seed {seed}");
            assert!(kept.len() < blocks.iter().map(|b| b.triplets.len()).sum());
        }
    }

    #[test]
    fn counts_over_the_budget_take_more_passes_and_cap_the_same() {
        for (seed, max) in [(5, 1), (6, 2), (7, 5)] {
            let blocks = blocks(seed);
            let mut cap = ReuseCap::new(max, Some(0));
            cap.min_pass = 16;
            let (kept, passes) = capped(&blocks, cap);
            assert!(passes > 4, "seed {seed}: {passes} passes");
            assert_eq!(kept, oracle(&blocks, max), "seed {seed}, max {max}");
        }
    }
}

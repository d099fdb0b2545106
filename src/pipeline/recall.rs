//! `--check-recall`: how much of an exact search an approximate index found, on a sample.

use std::collections::HashSet;

use crate::config::MiningParams;
use crate::error::Result;
use crate::mine::{Miner, Triplet};

/// A seeded sample of at most `n` of `anchors`, in row order.
pub(super) fn recall_anchors(anchors: &[u32], n: usize, seed: u64) -> Vec<u32> {
    use rand::SeedableRng;
    // Its own random stream, apart from the anchor sample's.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::mine::mix(seed, u64::MAX, 1, 0));
    let mut picked: Vec<u32> =
        rand::seq::index::sample(&mut rng, anchors.len(), n.min(anchors.len()))
            .into_iter()
            .map(|i| anchors[i])
            .collect();
    picked.sort_unstable();
    picked
}

/// Mines `sample` again with an exact index: the share of its exact triplets the approximate
/// run found (`None` without any; both before the reuse cap and shortfall policy), and the
/// share of each anchor's exact `k` nearest rows among the approximate index's `k` candidates.
pub(super) fn check_recall(
    params: &MiningParams,
    approx: &mut Miner,
    sample: &[u32],
    approx_triplets: &[Triplet],
) -> Result<(Option<f64>, f64)> {
    let k = params.k;
    let got = approx.candidates(sample, k)?;
    let mut exact = approx.exact_twin();
    let key = |t: &Triplet| (t.anchor, t.positive, t.negative);
    let found: HashSet<_> = approx_triplets.iter().map(key).collect();
    let truth = exact.mine_block(sample)?.triplets;
    let negatives = (!truth.is_empty()).then(|| {
        truth.iter().filter(|t| found.contains(&key(t))).count() as f64 / truth.len() as f64
    });
    let want = exact.candidates(sample, k)?;
    let (mut hit, mut total) = (0usize, 0usize);
    for (g, w) in got.iter().zip(&want) {
        hit += w.iter().filter(|r| g.contains(r)).count();
        total += w.len();
    }
    Ok((negatives, hit as f64 / total.max(1) as f64))
}

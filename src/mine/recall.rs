//! Recall of an approximate index, measured against exact mining on a seeded sample of
//! anchors, and the index's search tuned to a recall target on that sample.
//!
//! In: a [`Miner`] over an approximate index and the anchors of a sample. Out: the sample's
//! exact answers ([`Truth`]), [`Recall`] estimates with 95% intervals, the [`Tuning`] record
//! (every search parameter tried, and those settled on), and for `index = "auto"` the timing
//! of the exact engine the choice is weighed against ([`AutoChoice`]).
//!
//! Triplets of one anchor are not independent draws (an anchor whose band the index missed
//! misses all of them), so intervals are Wilson score intervals on an effective sample size:
//! the triplets over the design effect of sampling anchors as clusters.

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Miner, Triplet, first_k};
use crate::error::Result;
use crate::index::NeighbourIndex;

/// A share estimated on a sample, with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// 97.5% quantile of the standard normal distribution.
const Z: f64 = 1.959_963_984_540_054;

impl Estimate {
    /// The share of hits in `clusters` of `(hits, total)` (`None` without any total), with
    /// Wilson's 95% score interval on the effective sample size `total / deff`, where `deff`
    /// is the design effect of the clusters (the cluster-robust variance of the ratio over the
    /// binomial one), between 1 and the mean cluster size; the mean cluster size where the
    /// share is 0 or 1 and no variance can be seen.
    pub fn of(clusters: &[(usize, usize)]) -> Option<Estimate> {
        let used: Vec<(f64, f64)> = clusters
            .iter()
            .filter(|c| c.1 > 0)
            .map(|&(h, t)| (h as f64, t as f64))
            .collect();
        let total: f64 = used.iter().map(|c| c.1).sum();
        if total == 0.0 {
            return None;
        }
        let hits: f64 = used.iter().map(|c| c.0).sum();
        let p = hits / total;
        let m = used.len() as f64;
        let mean_size = total / m;
        let binomial = p * (1.0 - p) / total;
        let deff = if binomial > 0.0 && m > 1.0 {
            let spread: f64 = used.iter().map(|(h, t)| (h - p * t).powi(2)).sum();
            let clustered = m / (m - 1.0) * spread / (total * total);
            (clustered / binomial).clamp(1.0, mean_size.max(1.0))
        } else {
            mean_size.max(1.0)
        };
        let n = total / deff;
        let z2 = Z * Z;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        Some(Estimate {
            value: p,
            lo: if hits == 0.0 {
                0.0
            } else {
                (centre - half).max(0.0)
            },
            hi: if hits == total {
                1.0
            } else {
                (centre + half).min(1.0)
            },
        })
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}, {:.3}]", self.value, self.lo, self.hi)
    }
}

/// Recall of a run (or of one tuning step) on the sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Anchors sampled.
    pub anchors: usize,
    /// Share of the sample's exactly mined triplets found (`None` when exact mining found
    /// none); before the reuse cap and the shortfall policy.
    pub negatives: Option<Estimate>,
    /// Share of each sampled anchor's exact `k` nearest rows among the index's `k` candidates
    /// (`None` where not measured: tuning measures it only where exact mining found no
    /// triplet, as it costs an exact search of the sample at every `k`).
    pub candidates: Option<Estimate>,
    /// Share of the sample's exact negatives the index returns among its first `4 r + 64`
    /// candidates (`r` the exact rank), whatever `k`: what its probing reaches (tuning raises
    /// `nprobe` or `efSearch` while this is short). `None` where exact mining found none.
    #[serde(default)]
    pub reach: Option<Estimate>,
    /// Share of them whose exact rank lies within the deepest search `k` allows (`16 k`, or
    /// `max_k`; tuning raises `k` while this is short).
    #[serde(default)]
    pub depth: Option<Estimate>,
}

impl Recall {
    /// The lower end of the figure tuned on: the negatives' interval, or the candidates'
    /// where exact mining found no triplet.
    fn lower(&self) -> f64 {
        self.negatives.or(self.candidates).map_or(1.0, |e| e.lo)
    }
}

/// A sample's exact answers.
pub struct Truth {
    /// The sample, in row order.
    pub anchors: Vec<u32>,
    /// Exactly mined triplets (before the reuse cap and the shortfall policy), in anchor
    /// order.
    triplets: Vec<Triplet>,
    /// Each anchor's exact `k` nearest rows, for the last `k` the candidates' recall was
    /// measured at (searched when first needed: tuning changes `k`).
    nearest: Option<(usize, Vec<Vec<u32>>)>,
    /// [`Recall::reach`] by the probing it was measured with.
    reach: Vec<(Probing, Option<Estimate>)>,
}

impl Truth {
    /// Per sampled anchor, (its exact triplets that `hit`, all its exact triplets).
    fn per_anchor(&self, hit: impl Fn(&Triplet) -> bool) -> Vec<(usize, usize)> {
        let mut counts = vec![(0, 0); self.anchors.len()];
        for t in &self.triplets {
            let at = self
                .anchors
                .binary_search(&t.anchor)
                .expect("truth's triplets are of its anchors");
            counts[at].1 += 1;
            counts[at].0 += usize::from(hit(t));
        }
        counts
    }
}

/// How far an index's search probes: (`nprobe`, `efSearch`).
type Probing = (Option<usize>, Option<usize>);

/// The search parameters recall depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchKnobs {
    /// IVF lists probed (IVF indexes).
    pub nprobe: Option<usize>,
    /// HNSW's `efSearch` (HNSW indexes).
    pub ef_search: Option<usize>,
    /// Neighbours searched first per anchor.
    pub k: usize,
}

impl std::fmt::Display for SearchKnobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(n) = self.nprobe {
            write!(f, "nprobe {n}, ")?;
        }
        if let Some(e) = self.ef_search {
            write!(f, "efSearch {e}, ")?;
        }
        write!(f, "k {}", self.k)
    }
}

/// One setting tried while tuning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TuneStep {
    pub knobs: SearchKnobs,
    pub recall: Recall,
    /// Sampled anchors whose search reached the deepest search allowed.
    pub capped: usize,
    /// Seconds mining the sample took with it.
    pub seconds: f64,
}

/// What tuning for a recall target did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub target: f64,
    /// Every setting tried, in order; the first is the one the run started with.
    pub steps: Vec<TuneStep>,
    /// The setting the run mines with.
    pub settled: SearchKnobs,
    /// Whether the settled setting's lower recall bound reaches the target.
    pub met: bool,
    /// Why tuning stopped short of the target (`None` when it met it).
    pub stopped: Option<String>,
    pub seconds: f64,
    /// For an index the user named: the whole run's estimated search at the settled setting
    /// against exact mining's (from the sample's times), when it was weighed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<RunCost>,
}

/// Estimated seconds of a whole run's mining, approximate at a setting against exact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunCost {
    pub approximate_seconds: f64,
    pub exact_seconds: f64,
}

impl RunCost {
    /// Whether exact mining (recall 1) is estimated to cost less than the approximate search.
    pub fn exact_is_cheaper(&self) -> bool {
        self.exact_seconds < self.approximate_seconds
    }
}

impl Tuning {
    /// The step of the settled setting.
    pub fn settled_step(&self) -> &TuneStep {
        self.steps
            .iter()
            .rev()
            .find(|s| s.knobs == self.settled)
            .expect("the settled setting was tried")
    }
}

/// How `index = "auto"` chose between the exact engine and an approximate index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoChoice {
    /// The approximate index weighed.
    pub candidate: String,
    /// The index mined with.
    pub chosen: String,
    /// Estimated seconds of mining every anchor exactly (timed on a sample).
    pub exact_seconds: f64,
    /// Estimated seconds of mining every anchor with the candidate at the settled setting.
    pub approximate_seconds: Option<f64>,
    pub reason: String,
}

/// Candidates held at once by the reach search (distances and rows, as a search chunk).
const REACH_BUDGET: usize = 1 << 20;
/// An exact negative of rank `r` counts as reached among the index's first
/// `REACH_FACTOR r + REACH_SLACK` candidates (compressed codes blur the order)...
const REACH_FACTOR: usize = 4;
const REACH_SLACK: usize = 64;
/// ... looked for no deeper than this.
const REACH_MAX_DEPTH: usize = 1 << 16;

/// Evaluations of settings at most while tuning (each mines the sample once).
const MAX_EVALUATIONS: usize = 16;
/// Largest `k` tuning tries.
const MAX_TUNED_K: usize = 8192;
/// Largest `efSearch` tuning tries.
const MAX_TUNED_EF: usize = 4096;
/// The lowest `efSearch` tuning goes down to (FAISS's default).
const MIN_TUNED_EF: usize = 16;

impl Miner<'_> {
    /// Mines `anchors` exactly (sharing this miner's vectors): the truth recall is measured
    /// against.
    pub fn recall_truth(&self, anchors: &[u32]) -> Result<Truth> {
        Ok(Truth {
            anchors: anchors.to_vec(),
            triplets: self.exact_twin().mine_block(anchors)?.triplets,
            nearest: None,
            reach: Vec::new(),
        })
    }

    /// Seconds per anchor of exact mining, timed on `anchors` (for `auto`'s choice: a sample
    /// large enough that every thread mines a full group of anchors).
    pub fn exact_seconds_per_anchor(&self, anchors: &[u32]) -> Result<f64> {
        let mut exact = self.exact_twin();
        let started = Instant::now();
        exact.mine_block(anchors)?;
        Ok(started.elapsed().as_secs_f64() / anchors.len().max(1) as f64)
    }

    /// The recall of `mined` (this miner's triplets of the sample's anchors, possibly among
    /// others') against `truth`, and of this index's candidates at the current `k`.
    pub fn recall_of(
        &mut self,
        truth: &mut Truth,
        mined: &[Triplet],
        candidates: bool,
    ) -> Result<Recall> {
        let key = |t: &Triplet| (t.anchor, t.positive, t.negative);
        let found: HashSet<_> = mined.iter().map(key).collect();
        let negatives = Estimate::of(&truth.per_anchor(|t| found.contains(&key(t))));
        let k = self.params.k();
        let candidates = if candidates {
            // The exact nearest rows at this `k`: a search of the whole table for the sample,
            // so only where the figure is asked for.
            if truth.nearest.as_ref().is_none_or(|n| n.0 != k) {
                truth.nearest = Some((k, self.exact_twin().candidates(&truth.anchors, k)?));
            }
            let exact = &truth.nearest.as_ref().expect("just searched").1;
            let lists: Vec<(usize, usize)> = self
                .candidates(&truth.anchors, k)?
                .iter()
                .zip(exact)
                .map(|(got, want)| {
                    let got: HashSet<u32> = got.iter().copied().collect();
                    (want.iter().filter(|r| got.contains(r)).count(), want.len())
                })
                .collect();
            Some(Estimate::of(&lists).unwrap_or(Estimate {
                value: 1.0,
                lo: 1.0,
                hi: 1.0,
            }))
        } else {
            None
        };
        // Depth: the exact negatives whose exact rank lies within the deepest search.
        let deepest = self
            .params
            .max_k
            .unwrap_or(super::negatives::APPROXIMATE_MAX_K_FACTOR * k)
            .min(self.table.rows().saturating_sub(1).max(1));
        let depth = Estimate::of(&truth.per_anchor(|t| (t.negative_rank as usize) < deepest));
        // Reach: whether the index returns each exact negative among its first `4 r + 64`
        // candidates (`r` its exact rank), whatever `k`: what probing finds. It depends on
        // the probing alone, so tuning steps that change only `k` reuse it.
        let probing = (self.index.nprobe(), self.index.ef_search());
        let reach = match truth.reach.iter().find(|(p, _)| *p == probing) {
            Some((_, r)) => *r,
            None => {
                let r = self.reach(truth)?;
                truth.reach.push((probing, r));
                r
            }
        };
        Ok(Recall {
            anchors: truth.anchors.len(),
            negatives,
            candidates,
            reach,
            depth,
        })
    }

    /// Share of `truth`'s exact negatives this index returns among its first `4 r + 64`
    /// candidates (`r` the exact rank).
    fn reach(&mut self, truth: &Truth) -> Result<Option<Estimate>> {
        let slack = |rank: u32| REACH_FACTOR * rank as usize + REACH_SLACK;
        let reach_depth = truth
            .triplets
            .iter()
            .map(|t| slack(t.negative_rank))
            .max()
            .unwrap_or(1)
            .min(REACH_MAX_DEPTH)
            .min(self.table.rows().saturating_sub(1).max(1));
        // (anchor, negative) of every exact negative reached.
        let mut reached: HashSet<(u32, u32)> = HashSet::new();
        // A few anchors at a time: deep lists of many anchors would hold a lot at once.
        for part in truth.anchors.chunks((REACH_BUDGET / reach_depth).max(1)) {
            let lists = self.candidates(part, reach_depth)?;
            // The part's triplets: `truth.triplets` is in anchor order.
            let from = truth.triplets.partition_point(|t| t.anchor < part[0]);
            let last = part[part.len() - 1];
            for t in truth.triplets[from..]
                .iter()
                .take_while(|t| t.anchor <= last)
            {
                let list = &lists[part.binary_search(&t.anchor).expect("of the part")];
                let first = &list[..slack(t.negative_rank).min(list.len())];
                if first.contains(&t.negative) {
                    reached.insert((t.anchor, t.negative));
                }
            }
        }
        Ok(Estimate::of(
            &truth.per_anchor(|t| reached.contains(&(t.anchor, t.negative))),
        ))
    }

    /// The search parameters in use.
    pub fn search_knobs(&self) -> SearchKnobs {
        SearchKnobs {
            nprobe: self.index.nprobe(),
            ef_search: self.index.ef_search(),
            k: self.params.k(),
        }
    }

    /// Searches with `knobs` from now on.
    pub fn set_search_knobs(&mut self, knobs: SearchKnobs) -> Result<()> {
        self.index.set_search(knobs.nprobe, knobs.ef_search)?;
        self.params.k = Some(knobs.k);
        self.start_k = first_k(&self.params, self.table.rows(), self.queries.is_some());
        Ok(())
    }

    /// Raises the search parameters not set explicitly (`nprobe`, `efSearch`, `k`), doubling
    /// those the last setting's figures point to ([`Miner::next_setting`]), until the lower
    /// end of the recall's interval on `truth` reaches `target`, nothing can grow, or the
    /// budget of settings is spent; also when mining the sample gets slower than
    /// `give_up_seconds` (exact mining would be cheaper). A setting that meets the target
    /// after a doubling is tried once more halfway back; then `nprobe` and `efSearch` (those
    /// not set explicitly) are halved while the target holds. Leaves the miner at the cheapest
    /// setting found that meets the target (else the one of highest lower end).
    pub fn tune_recall(
        &mut self,
        truth: &mut Truth,
        target: f64,
        give_up_seconds: Option<f64>,
    ) -> Result<Tuning> {
        let started = Instant::now();
        let (lists, rows) = (self.index.lists(), self.table.rows());
        let given = self.explicit;
        let k_cap = MAX_TUNED_K
            .min(rows.saturating_sub(1).max(1))
            .min(self.params.max_k.unwrap_or(usize::MAX));
        let mut steps: Vec<TuneStep> = Vec::new();
        let mut current = self.evaluate(truth, self.search_knobs())?;
        steps.push(current);
        let mut stopped = None;
        let mut reach_saturated = false;
        let mut previous: Option<TuneStep> = None;
        let reach_of = |s: &TuneStep| {
            s.recall
                .reach
                .or(s.recall.candidates)
                .map_or(1.0, |e| e.value)
        };
        while current.recall.lower() < target {
            if let Some(e) = current.recall.negatives.filter(|e| e.value >= 1.0) {
                // Nothing missed: no setting can do better, the sample is too small to show it.
                stopped = Some(format!(
                    "none of the sample's exact triplets was missed, but they are too few to \
                     show recall {target} with 95% confidence (the lower end is {:.3}): raise \
                     --recall-sample",
                    e.lo
                ));
                break;
            }
            if let Some(limit) = give_up_seconds
                && current.seconds > limit
            {
                stopped = Some(format!(
                    "the sample took {:.2} s at {}, more than exact mining ({limit:.2} s)",
                    current.seconds, current.knobs
                ));
                break;
            }
            if let [.., before, last] = steps.as_slice()
                && (last.knobs.nprobe != before.knobs.nprobe
                    || last.knobs.ef_search != before.knobs.ef_search)
                && reach_of(last) < reach_of(before) + 0.01
            {
                // Probing further did not find more of the exact neighbours: what the
                // candidates miss, compressed codes misorder, and only depth helps.
                reach_saturated = true;
            }
            let Some(next) =
                self.next_setting(&current, target, given, lists, k_cap, reach_saturated)
            else {
                stopped = Some(format!(
                    "no search parameter left to raise at {}{}",
                    current.knobs,
                    if given.0 || given.1 || given.2 {
                        " (those set explicitly are kept)"
                    } else {
                        ""
                    }
                ));
                break;
            };
            if steps.len() >= MAX_EVALUATIONS {
                stopped = Some(format!(
                    "the tuning budget ({MAX_EVALUATIONS} settings) is spent"
                ));
                break;
            }
            previous = Some(current);
            current = self.evaluate(truth, next)?;
            steps.push(current);
        }
        let met = current.recall.lower() >= target;
        if let Some(before) = previous.filter(|_| met && steps.len() < MAX_EVALUATIONS) {
            // A doubling overshoots by up to half: halfway back may still meet the target,
            // for less work on every anchor.
            let half = |a: usize, b: usize| a + (b - a) / 2;
            let now = current.knobs;
            let between = SearchKnobs {
                nprobe: now.nprobe.zip(before.knobs.nprobe).map(|(b, a)| half(a, b)),
                ef_search: now
                    .ef_search
                    .zip(before.knobs.ef_search)
                    .map(|(b, a)| half(a, b)),
                k: half(before.knobs.k, now.k),
            };
            if between != now && between != before.knobs {
                let step = self.evaluate(truth, between)?;
                steps.push(step);
                if step.recall.lower() >= target {
                    current = step;
                }
            }
        }
        if met && target > 0.0 {
            // The reach the default `nprobe` (lists / 64) or `efSearch` gives may be more than
            // the target needs (tightly clustered data): halve them while the target holds,
            // which cuts the search, the largest cost at millions of rows.
            while steps.len() < MAX_EVALUATIONS {
                let now = current.knobs;
                let lower = SearchKnobs {
                    nprobe: now.nprobe.map(|n| if given.0 { n } else { (n / 2).max(1) }),
                    ef_search: now.ef_search.map(|ef| {
                        if given.1 {
                            ef
                        } else {
                            (ef / 2).max(MIN_TUNED_EF).min(ef)
                        }
                    }),
                    k: now.k,
                };
                if lower == now {
                    break;
                }
                let step = self.evaluate(truth, lower)?;
                steps.push(step);
                if step.recall.lower() < target {
                    break;
                }
                current = step;
            }
        }
        let settled = if met {
            current
        } else {
            *steps
                .iter()
                .max_by(|a, b| {
                    a.recall
                        .lower()
                        .total_cmp(&b.recall.lower())
                        .then(b.seconds.total_cmp(&a.seconds))
                })
                .expect("one step at least")
        };
        self.set_search_knobs(settled.knobs)?;
        Ok(Tuning {
            target,
            steps,
            settled: settled.knobs,
            met,
            stopped: if met { None } else { stopped },
            seconds: started.elapsed().as_secs_f64(),
            cost: None,
        })
    }

    /// The setting to try after `step`, raising (doubling) what the step's figures point to:
    /// the index's reach (`nprobe`, `efSearch`) while it misses exact negatives at any depth
    /// and probing further finds more of them (`reach_saturated` when it did not); the depth
    /// (`k`, and with it the deepest search, 16 k) while exact negatives lie deeper than the
    /// deepest search or sampled anchors hit it, and when neither explains the misses
    /// (compressed codes misorder candidates, and a deeper list lets the exact rescoring fix
    /// that). Whatever can grow when those cannot. `None` when nothing can grow. `given`:
    /// (nprobe, efSearch, k) set explicitly.
    fn next_setting(
        &self,
        step: &TuneStep,
        target: f64,
        given: (bool, bool, bool),
        lists: Option<usize>,
        k_cap: usize,
        reach_saturated: bool,
    ) -> Option<SearchKnobs> {
        let now = step.knobs;
        let nprobe = match (given.0, now.nprobe, lists) {
            (false, Some(n), Some(lists)) if n < lists => Some((2 * n).min(lists)),
            _ => None,
        };
        let ef = match (given.1, now.ef_search) {
            (false, Some(ef)) if ef < MAX_TUNED_EF => Some((2 * ef).min(MAX_TUNED_EF)),
            _ => None,
        };
        let k = (!given.2 && now.k < k_cap).then(|| (2 * now.k).min(k_cap));
        let reach = step.recall.reach.or(step.recall.candidates);
        let misses = reach.is_some_and(|r| r.lo < target) && !reach_saturated;
        let shallow = step.recall.depth.is_some_and(|d| d.lo < target) || step.capped > 0;
        let mut next = now;
        if misses {
            next.nprobe = nprobe.or(now.nprobe);
            next.ef_search = ef.or(now.ef_search);
        }
        if shallow || next == now {
            next.k = k.unwrap_or(now.k);
        }
        if next == now {
            next = SearchKnobs {
                nprobe: nprobe.or(now.nprobe),
                ef_search: ef.or(now.ef_search),
                k: k.unwrap_or(now.k),
            };
        }
        (next != now).then_some(next)
    }

    /// Mines the sample with `knobs` and measures its recall.
    fn evaluate(&mut self, truth: &mut Truth, knobs: SearchKnobs) -> Result<TuneStep> {
        self.set_search_knobs(knobs)?;
        let started = Instant::now();
        let mined = self.mine_block(&truth.anchors)?;
        let seconds = started.elapsed().as_secs_f64();
        let capped = mined.anchors.iter().filter(|a| a.capped).count();
        let recall = self.recall_of(truth, &mined.triplets, truth.triplets.is_empty())?;
        // Each evaluation starts from the same depth, as the run will.
        self.set_search_knobs(knobs)?;
        tracing::info!(
            stage = "tune",
            nprobe = knobs.nprobe,
            ef_search = knobs.ef_search,
            k = knobs.k,
            recall_negatives = recall.negatives.map(|e| e.value),
            recall_negatives_lo = recall.negatives.map(|e| e.lo),
            recall_candidates = recall.candidates.map(|e| e.value),
            reach = recall.reach.map(|e| e.value),
            depth = recall.depth.map(|e| e.value),
            capped,
            seconds,
            "search setting tried"
        );
        Ok(TuneStep {
            knobs,
            recall,
            capped,
            seconds,
        })
    }

    /// Mines with the exact one-pass engine from now on (`auto` found it cheaper); the
    /// approximate index is dropped.
    pub fn become_exact(&mut self) {
        let dim = self.table.dim;
        self.index = NeighbourIndex::exact_shards(dim, self.params.metric, self.table.rows());
        self.params.index = "Flat".into();
        self.params.nprobe = None;
        self.params.ef_search = None;
        self.anchor_lists = Default::default();
        self.list_copy = None;
        self.start_k = first_k(&self.params, self.table.rows(), self.queries.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_sample_has_an_interval_below_one_from_its_anchors_alone() {
        let e = Estimate::of(&vec![(5, 5); 300]).unwrap();
        assert_eq!(e.value, 1.0);
        assert_eq!(e.hi, 1.0);
        // 300 anchors, not 1,500 triplets: n / (n + z^2).
        let lo = 300.0 / (300.0 + Z * Z);
        assert!((e.lo - lo).abs() < 1e-9, "{e}");
    }

    #[test]
    fn independent_hits_get_the_binomial_interval() {
        // Clusters of one: the design effect is 1.
        let mut c = vec![(1, 1); 900];
        c.extend(vec![(0, 1); 100]);
        let e = Estimate::of(&c).unwrap();
        assert!((e.value - 0.9).abs() < 1e-12);
        // Wilson's interval for 900 of 1,000.
        assert!(
            (e.lo - 0.8798).abs() < 5e-4 && (e.hi - 0.9171).abs() < 5e-4,
            "{e}"
        );
    }

    #[test]
    fn misses_that_come_by_whole_anchors_widen_the_interval() {
        let spread: Vec<(usize, usize)> =
            (0..200).map(|i| (4 + usize::from(i % 5 != 0), 5)).collect();
        let lumped: Vec<(usize, usize)> = (0..200)
            .map(|i| if i % 25 == 0 { (0, 5) } else { (5, 5) })
            .collect();
        let (s, l) = (
            Estimate::of(&spread).unwrap(),
            Estimate::of(&lumped).unwrap(),
        );
        assert!((s.value - l.value).abs() < 0.02);
        assert!(l.hi - l.lo > s.hi - s.lo, "{s} {l}");
    }

    #[test]
    fn no_totals_no_estimate() {
        assert_eq!(Estimate::of(&[(0, 0), (0, 0)]), None);
    }
}

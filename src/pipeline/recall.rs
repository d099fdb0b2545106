//! Recall of an approximate run: a seeded sample of anchors mined exactly as well, the search
//! tuned on it to the recall target, and `index = "auto"`'s choice between the exact engine
//! and the approximate index by their estimated cost at that target.

use crate::config::MiningParams;
use crate::error::Result;
use crate::mine::{AutoChoice, Miner, Recall, RunCost, Truth, Tuning};
use crate::report::Totals;

/// Anchors `auto` times the exact engine on: a full group of the one-pass engine per thread,
/// so that the time per anchor is the full run's.
fn auto_timing_anchors() -> usize {
    crate::mine::Tiles::default().anchors * rayon::current_num_threads()
}

/// A seeded sample of at most `n` of `anchors`, in row order (`stream` apart from the others).
pub(super) fn sample_anchors(anchors: &[u32], n: usize, seed: u64, stream: u64) -> Vec<u32> {
    use rand::SeedableRng;
    // Its own random stream, apart from the anchor sample's.
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(crate::mine::seeded_hash(seed, u64::MAX, 1, stream));
    let mut picked: Vec<u32> =
        rand::seq::index::sample(&mut rng, anchors.len(), n.min(anchors.len()))
            .into_iter()
            .map(|i| anchors[i])
            .collect();
    picked.sort_unstable();
    picked
}

/// What was learnt about recall before mining.
pub(super) struct RecallPlan {
    /// The sample's exact answers, while the miner is approximate.
    pub truth: Option<Truth>,
    pub tuning: Option<Tuning>,
    pub auto: Option<AutoChoice>,
}

/// Before mining with an approximate index: mines the recall sample exactly, tunes the search
/// for the target, and under `index = "auto"` switches to the exact engine when it is the
/// cheaper way to the target (or the approximate index cannot reach it). An index an
/// incremental run's state `kept` was chosen by the run that built it, and such a run mines
/// a few anchors: exact mining is neither timed nor weighed.
pub(super) fn prepare(
    params: &MiningParams,
    miner: &mut Miner,
    anchors: &[u32],
    kept: bool,
) -> Result<RecallPlan> {
    let none = RecallPlan {
        truth: None,
        tuning: None,
        auto: None,
    };
    if miner.exact() || params.recall_sample == 0 || anchors.is_empty() {
        return Ok(none);
    }
    let sample = sample_anchors(anchors, params.recall_sample, params.seed, 0);
    let mut truth = miner.recall_truth(&sample)?;
    tracing::debug!(
        peak_mib = crate::memory::mib(crate::memory::Resident::now().peak),
        "recall sample mined exactly"
    );
    let auto = params.index.trim().eq_ignore_ascii_case("auto") && !kept;
    // Exact mining is timed for `auto` (it bounds what tuning may spend, and is weighed
    // against the tuned index) and for a named index with a target (weighed only: an index
    // the user named is kept, but at a setting that reaches, or chases, the target, an
    // approximate search can cost more than exact mining).
    let exact_per_anchor = if !kept && (auto || params.target_recall > 0.0) {
        let timing = sample_anchors(anchors, auto_timing_anchors(), params.seed, 1);
        let s = miner.exact_seconds_per_anchor(&timing)?;
        tracing::debug!(
            peak_mib = crate::memory::mib(crate::memory::Resident::now().peak),
            "exact mining timed"
        );
        Some(s * params.auto_exact_weight)
    } else {
        None
    };
    let give_up = exact_per_anchor
        .filter(|_| auto)
        .map(|s| s * truth.anchors.len() as f64);
    let mut tuning = miner.tune_recall(&mut truth, params.target_recall, give_up)?;
    let step = *tuning.settled_step();
    tracing::info!(
        stage = "tune",
        settled = %tuning.settled,
        met = tuning.met,
        target = params.target_recall,
        seconds = tuning.seconds,
        "search tuned for recall"
    );
    let n = anchors.len() as f64;
    let cost = exact_per_anchor.map(|per_anchor| RunCost {
        approximate_seconds: step.seconds / truth.anchors.len().max(1) as f64 * n,
        exact_seconds: per_anchor * n,
    });
    if !auto {
        if let Some(cost) = cost.filter(RunCost::exact_is_cheaper) {
            tracing::warn!(
                stage = "tune",
                approximate_seconds = cost.approximate_seconds,
                exact_seconds = cost.exact_seconds,
                "the approximate index costs more than exact mining at the tuned setting"
            );
        }
        tuning.cost = cost;
        return Ok(RecallPlan {
            truth: Some(truth),
            tuning: Some(tuning),
            auto: None,
        });
    }
    let RunCost {
        approximate_seconds,
        exact_seconds,
    } = cost.expect("exact mining is timed for auto");
    let candidate = miner.index_info().factory.clone();
    let target = params.target_recall;
    let recall = step
        .recall
        .negatives
        .or(step.recall.candidates)
        .map_or(1.0, |e| e.value);
    let (exact, reason) = if !tuning.met {
        let why = match give_up {
            // The settled step is one of the steps.
            Some(limit) if tuning.steps.iter().any(|s| s.seconds > limit) => {
                "before costing more than exact mining".to_string()
            }
            _ => tuning.stopped.clone().unwrap_or_default(),
        };
        (
            true,
            format!(
                "{candidate} reached recall {recall:.3} at best ({}), short of {target} ({why}); exact mining is estimated at {exact_seconds:.1} s",
                tuning.settled
            ),
        )
    } else if exact_seconds <= approximate_seconds {
        (
            true,
            format!(
                "exact mining is estimated at {exact_seconds:.1} s, {candidate} at {approximate_seconds:.1} s for recall {target} ({})",
                tuning.settled
            ),
        )
    } else {
        (
            false,
            format!(
                "{candidate} is estimated at {approximate_seconds:.1} s for recall {target} ({}), exact mining at {exact_seconds:.1} s",
                tuning.settled
            ),
        )
    };
    if exact {
        miner.become_exact();
    }
    let choice = AutoChoice {
        candidate,
        chosen: miner.index_info().factory.clone(),
        exact_seconds,
        approximate_seconds: Some(approximate_seconds),
        reason,
    };
    tracing::info!(
        stage = "tune",
        choice = %choice.chosen,
        reason = %choice.reason,
        "index auto"
    );
    Ok(RecallPlan {
        truth: (!exact).then_some(truth),
        tuning: Some(tuning),
        auto: Some(choice),
    })
}

/// The run's recall figures in the totals.
pub(super) fn record(totals: &mut Totals, recall: &Recall, target: f64) {
    totals.recall_anchors = Some(recall.anchors as u64);
    if let Some(e) = recall.negatives {
        totals.recall_negatives = Some(e.value);
        totals.recall_negatives_lo = Some(e.lo);
        totals.recall_negatives_hi = Some(e.hi);
    }
    if let Some(c) = recall.candidates {
        totals.recall_candidates = Some(c.value);
        totals.recall_candidates_lo = Some(c.lo);
        totals.recall_candidates_hi = Some(c.hi);
    }
    totals.recall_target = (target > 0.0).then_some(target);
}

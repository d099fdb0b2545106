//! The overall figures of a run (the report's last row), by name for quality gates and the
//! summary.

use serde::Serialize;

/// Overall figures of a run (the report's last row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Totals {
    pub anchors: u64,
    pub anchors_without_positive: u64,
    pub anchors_without_negative: u64,
    pub anchors_capped: u64,
    pub triplets: u64,
    pub hard: u64,
    pub semihard: u64,
    pub easy: u64,
    /// Anchors whose nearest neighbours mostly carry one other label (see `--suspects`).
    #[serde(default)]
    pub label_noise_suspects: u64,
    /// Share of triplets with a positive loss.
    pub active_fraction: Option<f64>,
    pub loss_mean: Option<f64>,
    pub loss_p50: Option<f64>,
    pub loss_p90: Option<f64>,
    pub loss_p99: Option<f64>,
    pub loss_max: Option<f64>,
    pub d_ap_mean: Option<f64>,
    pub d_an_mean: Option<f64>,
    /// Data-set health: share of anchors (with a positive) whose nearest other-label row is
    /// within `d(a, hardest positive) + margin`. Independent of the mining strategy.
    pub neighbour_violation_share: Option<f64>,
    /// Share of triplets with `|d_an - d_ap| <= margin / 100`: losses piling up at the margin,
    /// a sign of collapsed embeddings.
    pub margin_pileup_share: Option<f64>,
    /// With an approximate index (and `--recall-sample` above 0): the share of a sample's
    /// exactly mined triplets that the run found, and of its exact `k` nearest rows among the
    /// candidates, each with its 95% interval (`_lo`, `_hi`).
    #[serde(default)]
    pub recall_negatives: Option<f64>,
    #[serde(default)]
    pub recall_negatives_lo: Option<f64>,
    #[serde(default)]
    pub recall_negatives_hi: Option<f64>,
    #[serde(default)]
    pub recall_candidates: Option<f64>,
    #[serde(default)]
    pub recall_candidates_lo: Option<f64>,
    #[serde(default)]
    pub recall_candidates_hi: Option<f64>,
    /// Anchors the recall was measured on.
    #[serde(default)]
    pub recall_anchors: Option<u64>,
    /// The recall target (`--target-recall`, when above 0).
    #[serde(default)]
    pub recall_target: Option<f64>,
    /// Total variance of the (for cosine, normalised) embeddings over their mean squared norm:
    /// near 0 when every vector is nearly the same.
    #[serde(default)]
    pub embedding_spread: Option<f64>,
    /// (anchor, positive) pairs mined.
    #[serde(default)]
    pub pairs: u64,
    /// Pairs with fewer qualifying negatives than `num_negatives` (after the reuse cap).
    #[serde(default)]
    pub short_pairs: u64,
    /// Short pairs dropped (`--shortfall drop`).
    #[serde(default)]
    pub dropped_pairs: u64,
    /// Qualifying candidates taken away by each false-negative guard.
    #[serde(default)]
    pub removed_max_negative_similarity: u64,
    #[serde(default)]
    pub removed_positive_margin: u64,
    #[serde(default)]
    pub removed_positive_percent: u64,
    #[serde(default)]
    pub removed_near_duplicate: u64,
    /// Triplets removed by `--max-negative-reuse`.
    #[serde(default)]
    pub removed_negative_reuse: u64,
}

impl Totals {
    /// A figure by its report column name: `None` for an unknown name, `Some(None)` for a
    /// figure without a value (a mean over no triplets).
    pub fn figure(&self, name: &str) -> Option<Option<f64>> {
        let all = serde_json::to_value(self).expect("totals serialise");
        all.get(name).map(|v| v.as_f64())
    }

    /// The names [`Totals::figure`] knows.
    pub fn figure_names() -> Vec<String> {
        match serde_json::to_value(Totals::default()).expect("totals serialise") {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            _ => unreachable!("a struct serialises to an object"),
        }
    }
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

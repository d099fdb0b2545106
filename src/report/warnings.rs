//! Warnings about a run from its figures: recall below the target, anchors without a
//! qualifying negative, collapsed embeddings. For the summary, the report's metadata and the
//! HTML page.

use super::Totals;
use super::totals::thousands;
use crate::config::{MiningParams, NegativeStrategy, PositiveStrategy};

impl Totals {
    /// Warnings about the run, for the summary, the report's metadata and the HTML page:
    /// [`Totals::coverage_warnings`], then [`Totals::collapse_warnings`].
    pub fn warnings(&self, params: &MiningParams) -> Vec<String> {
        let mut w = self.recall_warnings();
        w.extend(self.coverage_warnings(params));
        w.extend(self.collapse_warnings(params.margin));
        w
    }

    /// A warning when the measured recall of mined negatives (else of candidates, where exact
    /// mining of the sample found no triplet) is below the target.
    pub fn recall_warnings(&self) -> Vec<String> {
        let Some(target) = self.recall_target else {
            return Vec::new();
        };
        let (what, value, lo, hi) = match self.recall_negatives {
            Some(v) => (
                "mined negatives",
                v,
                self.recall_negatives_lo,
                self.recall_negatives_hi,
            ),
            None => match self.recall_candidates {
                Some(v) => (
                    "candidates",
                    v,
                    self.recall_candidates_lo,
                    self.recall_candidates_hi,
                ),
                None => return Vec::new(),
            },
        };
        if value >= target {
            return Vec::new();
        }
        let interval = match (lo, hi) {
            (Some(lo), Some(hi)) => format!(" (95% interval {lo:.3} to {hi:.3})"),
            _ => String::new(),
        };
        vec![format!(
            "recall of {what} is {value:.3}{interval} on {} sampled anchors, below the target \
             {target}: raise --nprobe / --ef-search / --k, or mine exactly (--index Flat)",
            thousands(self.recall_anchors.unwrap_or(0))
        )]
    }

    /// A warning when most anchors that have a positive found no qualifying negative, with
    /// what to try: the strategy's band is nearly empty on this data.
    pub fn coverage_warnings(&self, params: &MiningParams) -> Vec<String> {
        let with_positive = self.anchors.saturating_sub(self.anchors_without_positive);
        let without = self.anchors_without_negative;
        if with_positive == 0 || 2 * without <= with_positive {
            return Vec::new();
        }
        let strategy = crate::config::cli_name(params.negatives);
        let mut tries = Vec::new();
        if matches!(
            params.negatives,
            NegativeStrategy::Semihard | NegativeStrategy::Easy
        ) || params.margin == 0.0
        {
            tries.push("a larger --margin".to_string());
        }
        if params.negatives != NegativeStrategy::Violating
            && params.negatives != NegativeStrategy::Hardest
        {
            tries.push("--negatives violating (hard and semi-hard)".into());
        }
        if params.positives != PositiveStrategy::Hardest {
            tries.push("--positives hardest".into());
        }
        if tries.is_empty() {
            tries.push("--negatives hardest".into());
        }
        vec![format!(
            "{} of {} anchors with a positive found no qualifying {strategy} negative; try {}",
            thousands(without),
            thousands(with_positive),
            or_list(&tries)
        )]
    }

    /// Warnings that the embeddings look collapsed.
    pub fn collapse_warnings(&self, margin: f32) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(share) = self.margin_pileup_share.filter(|&s| s > 0.5) {
            w.push(format!(
                "{:.0}% of triplets have d_an within margin/100 of d_ap: losses pile up at the margin",
                100.0 * share
            ));
        }
        if let (Some(ap), Some(an)) = (self.d_ap_mean, self.d_an_mean)
            && ap.max(an) < 0.01 * margin as f64
        {
            w.push(format!(
                "mean d_ap {ap:.2e} and d_an {an:.2e} are near zero next to the margin {margin}"
            ));
        }
        if let Some(spread) = self.embedding_spread.filter(|&s| s < 1e-4) {
            w.push(format!(
                "the embeddings barely vary: total variance is {spread:.1e} of their mean squared norm"
            ));
        }
        w
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

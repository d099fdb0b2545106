//! What a run did: [`Summary`] and [`Timings`], printed for people and serialised for machines.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::MiningParams;
use crate::mine::SearchStats;
use crate::report::Totals;

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub read: f64,
    pub index: f64,
    /// Mining, scoring and writing the triplets (they stream together).
    pub mine: f64,
    pub report: f64,
    pub total: f64,
    /// Of `mine`: the time in the neighbour index's searches, and their queries.
    #[serde(default)]
    pub search: SearchStats,
}

/// What a run did, for people (its `Display`) and machines (`--summary-json`, the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub tripmine_version: String,
    pub inputs: Vec<PathBuf>,
    /// Rows indexed (the table, or the corpus).
    pub rows: u64,
    pub dim: usize,
    pub labels: usize,
    /// Retrieval mode: the queries (the anchors), and qrels rows naming unknown queries.
    #[serde(default)]
    pub queries: Option<u64>,
    #[serde(default)]
    pub unknown_queries: u64,
    pub params: MiningParams,
    /// The index used (`auto` resolved; a loaded index as saved).
    #[serde(default)]
    pub index: String,
    pub exact: bool,
    pub out: PathBuf,
    pub report: PathBuf,
    pub totals: Totals,
    pub seconds: Timings,
    /// True when the outputs were already up to date and nothing ran.
    #[serde(default)]
    pub skipped: bool,
    /// Signs that the embeddings have collapsed (empty when none).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.totals;
        let p = &self.params;
        let fig = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        let share = |x: u64| {
            if t.triplets == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", 100.0 * x as f64 / t.triplets as f64)
            }
        };
        if self.skipped {
            writeln!(
                f,
                "tripmine: the outputs are up to date with the inputs and configuration; \
                 nothing ran (--force to redo). The previous run:"
            )?;
        }
        writeln!(
            f,
            "tripmine {}: {} triplets from {} anchors in {:.1} s",
            self.tripmine_version, t.triplets, t.anchors, self.seconds.total
        )?;
        match self.queries {
            Some(q) => writeln!(
                f,
                "  input      {q} queries against {} documents x {} dims, {} file(s)",
                self.rows,
                self.dim,
                self.inputs.len()
            )?,
            None => writeln!(
                f,
                "  input      {} rows x {} dims, {} labels, {} file(s)",
                self.rows,
                self.dim,
                self.labels,
                self.inputs.len()
            )?,
        }
        writeln!(
            f,
            "  index      {} ({}), metric {:?}, margin {}",
            self.index,
            if self.exact { "exact" } else { "approximate" },
            p.metric,
            p.margin
        )?;
        writeln!(
            f,
            "  strategy   positives {:?} x {}, negatives {:?} x {} ({:?})",
            p.positives, p.num_positives, p.negatives, p.num_negatives, p.sample
        )?;
        writeln!(
            f,
            "  anchors    {} mined: {} without positive, {} without qualifying negative, {} capped by max-k",
            t.anchors, t.anchors_without_positive, t.anchors_without_negative, t.anchors_capped
        )?;
        writeln!(
            f,
            "  kinds      hard {} ({}), semihard {} ({}), easy {} ({})",
            t.hard,
            share(t.hard),
            t.semihard,
            share(t.semihard),
            t.easy,
            share(t.easy)
        )?;
        if p.guarded() || p.max_negative_reuse.is_some() || t.short_pairs > 0 {
            writeln!(
                f,
                "  rules      {} pairs, {} short ({} dropped); removed by guards: similarity {}, positive margin {}, positive percent {}, near-duplicate {}; by reuse cap: {}",
                t.pairs,
                t.short_pairs,
                t.dropped_pairs,
                t.removed_max_negative_similarity,
                t.removed_positive_margin,
                t.removed_positive_percent,
                t.removed_near_duplicate,
                t.removed_negative_reuse
            )?;
        }
        writeln!(
            f,
            "  loss       mean {}  p50 {}  p90 {}  p99 {}  max {}  active {}",
            fig(t.loss_mean),
            fig(t.loss_p50),
            fig(t.loss_p90),
            fig(t.loss_p99),
            fig(t.loss_max),
            fig(t.active_fraction)
        )?;
        writeln!(
            f,
            "  distances  mean d_ap {}  mean d_an {}",
            fig(t.d_ap_mean),
            fig(t.d_an_mean)
        )?;
        let other = if self.queries.is_some() {
            "a non-positive"
        } else {
            "an other-label"
        };
        writeln!(
            f,
            "  health     {} of anchors have {other} nearest neighbour within d(a, hardest positive) + margin",
            fig(t.neighbour_violation_share)
        )?;
        writeln!(
            f,
            "  outputs    {} and {}",
            self.out.display(),
            self.report.display()
        )?;
        if let (Some(c), n) = (t.recall_candidates, t.recall_negatives) {
            writeln!(
                f,
                "  recall     mined negatives {}, candidates {} (against an exact search of a sample)",
                fig(n),
                fig(Some(c))
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  WARNING    {w}")?;
        }
        write!(
            f,
            "  seconds    read {:.2}, index {:.2}, mine+write {:.2}, report {:.2}",
            self.seconds.read, self.seconds.index, self.seconds.mine, self.seconds.report
        )
    }
}

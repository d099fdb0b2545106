//! What a run did: [`Summary`] and [`Timings`], printed for people and serialised for machines.

use super::state::Changes;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{MiningParams, cli_name};
use crate::mine::{AutoChoice, SearchStats, Tuning};
use crate::report::{Totals, thousands};

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub read: f64,
    pub index: f64,
    /// Mining, scoring and writing the triplets (they stream together).
    pub mine: f64,
    pub report: f64,
    /// Before mining: the recall sample mined exactly, the search tuned, `auto`'s choice.
    #[serde(default)]
    pub tune: f64,
    /// Wall time of the run; of a distributed run, the plan's, the segments' (added up, as
    /// they may have run at once: so is `mine`) and the finish's.
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
    /// The other outputs written (`--report-html`, `--suspects`, `--summary-json`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_outputs: Vec<PathBuf>,
    pub totals: Totals,
    pub seconds: Timings,
    /// True when the outputs were already up to date and nothing ran.
    #[serde(default)]
    pub skipped: bool,
    /// Signs that the embeddings have collapsed (empty when none).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// With an approximate index: the search settings tried for the recall target, and the
    /// one settled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    /// `index = "auto"` weighing the exact engine against an approximate index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoChoice>,
    /// With `--state`: what the run mined again (`incremental`) or why it mined everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// One sentence on how the search was chosen and tuned (`None` when nothing was).
pub fn search_note(
    tuning: Option<&Tuning>,
    auto: Option<&AutoChoice>,
    exact: bool,
) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(a) = auto {
        parts.push(format!("auto chose {}: {}", a.chosen, a.reason));
    }
    if let Some(t) = tuning.filter(|_| !exact) {
        let tried = t.steps.len();
        parts.push(if t.target == 0.0 {
            format!("searched with {} (no recall target)", t.settled)
        } else if t.met {
            format!(
                "tuned for recall {}: {} ({tried} settings tried, {:.1} s)",
                t.target, t.settled, t.seconds
            )
        } else {
            format!(
                "recall {} not reached; best setting {} ({tried} settings tried, {:.1} s)",
                t.target, t.settled, t.seconds
            )
        });
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Lines of the printed summary stay within this many characters (a path may not).
const WIDTH: usize = 100;
/// The label column's width: `  anchors    `.
const INDENT: usize = 13;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.totals;
        let p = &self.params;
        let n = |x: u64| thousands(x);
        let fig = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        let share = |x: u64| {
            if t.triplets == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", 100.0 * x as f64 / t.triplets as f64)
            }
        };
        let line = |f: &mut std::fmt::Formatter<'_>, name: &str, text: &str| {
            writeln!(f, "{}", wrap(&format!("  {name:<10} "), text))
        };
        if self.skipped {
            writeln!(
                f,
                "tripmine: the outputs are up to date with the inputs and configuration; \
                 nothing ran\n(--force to redo). The previous run:"
            )?;
        }
        writeln!(
            f,
            "tripmine {}: {} triplets from {} anchors in {:.1} s",
            self.tripmine_version,
            n(t.triplets),
            n(t.anchors),
            self.seconds.total
        )?;
        let files = match self.inputs.len() {
            1 => "1 file".to_string(),
            k => format!("{k} files"),
        };
        let input = match self.queries {
            Some(q) => format!(
                "{} queries against {} documents x {} dims, {files}",
                n(q),
                n(self.rows),
                self.dim
            ),
            None => format!(
                "{} rows x {} dims, {} labels, {files}",
                n(self.rows),
                self.dim,
                n(self.labels as u64)
            ),
        };
        line(f, "input", &input)?;
        line(
            f,
            "index",
            &format!(
                "{} ({}), metric {}, margin {}",
                self.index,
                if self.exact { "exact" } else { "approximate" },
                cli_name(p.metric),
                p.margin
            ),
        )?;
        line(
            f,
            "strategy",
            &format!(
                "positives {} x {}, negatives {} x {} ({})",
                cli_name(p.positives),
                p.num_positives,
                cli_name(p.negatives),
                p.num_negatives,
                cli_name(p.sample)
            ),
        )?;
        line(
            f,
            "anchors",
            &format!(
                "{} mined; no positive {}, no qualifying negative {}, capped by max-k {}",
                n(t.anchors),
                n(t.anchors_without_positive),
                n(t.anchors_without_negative),
                n(t.anchors_capped)
            ),
        )?;
        if let Some(c) = &self.changes {
            let text = match &c.reason {
                Some(reason) => format!("full run ({reason}), state written"),
                None => format!(
                    "incremental: {} new rows, {} earlier anchors mined again, {} updated{}; \
                     triplets {} added, {} removed, {} kept",
                    n(c.new_rows),
                    n(c.anchors_mined_again),
                    n(c.anchors_updated),
                    match c.anchors_dropped {
                        0 => String::new(),
                        d => format!(", {} left the sample", n(d)),
                    },
                    n(c.triplets_added),
                    n(c.triplets_removed),
                    n(c.triplets_kept)
                ),
            };
            line(f, "state", &text)?;
            if let (Some(added), Some(removed)) = (c.delta_rows_added, c.delta_rows_removed) {
                let whole = if c.reason.is_some() {
                    " (replaces the data set)"
                } else {
                    ""
                };
                line(
                    f,
                    "delta",
                    &format!("{} rows added, {} removed{whole}", n(added), n(removed)),
                )?;
            }
        }
        line(
            f,
            "kinds",
            &format!(
                "hard {} ({}), semihard {} ({}), easy {} ({})",
                n(t.hard),
                share(t.hard),
                n(t.semihard),
                share(t.semihard),
                n(t.easy),
                share(t.easy)
            ),
        )?;
        if p.guarded() || p.max_negative_reuse.is_some() || t.short_pairs > 0 {
            line(
                f,
                "pairs",
                &format!(
                    "{} (anchor, positive), {} short of negatives, {} dropped",
                    n(t.pairs),
                    n(t.short_pairs),
                    n(t.dropped_pairs)
                ),
            )?;
        }
        if p.guarded() || p.max_negative_reuse.is_some() {
            line(
                f,
                "rules",
                &format!(
                    "removed by guards: similarity {}, pos. margin {}, percent {}, \
                     near-dup. {}; reuse cap {}",
                    n(t.removed_max_negative_similarity),
                    n(t.removed_positive_margin),
                    n(t.removed_positive_percent),
                    n(t.removed_near_duplicate),
                    n(t.removed_negative_reuse)
                ),
            )?;
        }
        line(
            f,
            "loss",
            &format!(
                "mean {}  p50 {}  p90 {}  p99 {}  max {}  active {}",
                fig(t.loss_mean),
                fig(t.loss_p50),
                fig(t.loss_p90),
                fig(t.loss_p99),
                fig(t.loss_max),
                fig(t.active_fraction)
            ),
        )?;
        line(
            f,
            "distances",
            &format!(
                "mean d_ap {}  mean d_an {}",
                fig(t.d_ap_mean),
                fig(t.d_an_mean)
            ),
        )?;
        let other = if self.queries.is_some() {
            "a non-positive"
        } else {
            "an other-label"
        };
        line(
            f,
            "health",
            &format!(
                "{} of anchors have {other} neighbour within d(a, hardest positive) + margin",
                fig(t.neighbour_violation_share)
            ),
        )?;
        let mut outputs = vec![&self.out, &self.report];
        outputs.extend(&self.other_outputs);
        for (i, path) in outputs.iter().enumerate() {
            let name = if i == 0 { "outputs" } else { "" };
            writeln!(f, "  {name:<10} {}", path.display())?;
        }
        if let Some(c) = t.recall_candidates {
            let with = |v: Option<f64>, lo: Option<f64>, hi: Option<f64>| match (v, lo, hi) {
                (Some(v), Some(lo), Some(hi)) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
                (v, _, _) => fig(v),
            };
            line(
                f,
                "recall",
                &format!(
                    "mined negatives {}, candidates {} (95% intervals, {} anchors mined exactly as well{})",
                    with(
                        t.recall_negatives,
                        t.recall_negatives_lo,
                        t.recall_negatives_hi
                    ),
                    with(Some(c), t.recall_candidates_lo, t.recall_candidates_hi),
                    n(t.recall_anchors.unwrap_or(0)),
                    t.recall_target
                        .map_or(String::new(), |r| format!("; target {r}"))
                ),
            )?;
        }
        if let Some(note) = search_note(self.tuning.as_ref(), self.auto.as_ref(), self.exact) {
            line(f, "search", &note)?;
        }
        for w in &self.warnings {
            line(f, "WARNING", w)?;
        }
        write!(
            f,
            "  seconds    read {:.2}, index {:.2}, mine+write {:.2}, report {:.2}",
            self.seconds.read, self.seconds.index, self.seconds.mine, self.seconds.report
        )
    }
}

/// `text` after `head`, wrapped at word boundaries to [`WIDTH`] characters, continuation
/// lines indented under the text.
fn wrap(head: &str, text: &str) -> String {
    let mut out = head.to_string();
    let mut width = head.chars().count();
    for (i, word) in text.split(' ').enumerate() {
        let len = word.chars().count();
        if i > 0 && width + 1 + len > WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(INDENT));
            width = INDENT;
        } else if i > 0 {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_wrap_under_the_text() {
        let text = "word ".repeat(40);
        let wrapped = wrap("  WARNING    ", text.trim());
        assert!(wrapped.lines().count() > 1);
        for l in wrapped.lines() {
            assert!(l.chars().count() <= WIDTH, "{l}");
        }
        assert!(
            wrapped
                .lines()
                .nth(1)
                .unwrap()
                .starts_with(&" ".repeat(INDENT))
        );
    }
}

//! The loss report: per-label and overall figures of a mining run.
//!
//! In: the mined triplets and per-anchor records (row positions, label codes) and the table's
//! distinct labels. Out: a [`Report`]: one Arrow batch (one row per label, then an overall row
//! whose label is null) and the overall figures for the summary. The triplet figures are
//! summed label by label in one pass, their quantiles from the losses ordered by label (4 bytes
//! a triplet: a run's memory limit holds for millions of triplets); polars joins them with the
//! anchors' figures.

mod gate;
pub mod html;
mod totals;
mod warnings;

pub use gate::{CmpOp, Gate};
pub use totals::{Totals, thousands};

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema};
use polars::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mine::{AnchorRecord, Triplet};
use crate::score::{TripletKind, triplet_loss};

/// The report, ready to write.
#[derive(Debug, Clone)]
pub struct Report {
    pub batch: RecordBatch,
    pub totals: Totals,
    pub histogram: Histogram,
}

/// Distribution of `t = d_an - d_ap` over the triplets, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Histogram {
    /// Bin edges, one more than bins; bins are `[edges[i], edges[i + 1])`, the last closed.
    pub edges: Vec<f64>,
    pub hard: Vec<u64>,
    pub semihard: Vec<u64>,
    pub easy: Vec<u64>,
}

impl Histogram {
    const BINS: usize = 60;

    /// The histogram of `d_an - d_ap` by kind, from the distances (no column of either).
    fn of_distances(d_ap: &[f32], d_an: &[f32], margin: f32) -> Histogram {
        let t = || {
            d_ap.iter()
                .zip(d_an)
                .map(|(&ap, &an)| an as f64 - ap as f64)
        };
        if d_ap.is_empty() {
            return Histogram::default();
        }
        let (lo, hi) = t().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        let width = if hi > lo {
            (hi - lo) / Self::BINS as f64
        } else {
            1.0
        };
        let mut h = Histogram {
            edges: (0..=Self::BINS).map(|i| lo + width * i as f64).collect(),
            hard: vec![0; Self::BINS],
            semihard: vec![0; Self::BINS],
            easy: vec![0; Self::BINS],
        };
        for (x, (&ap, &an)) in t().zip(d_ap.iter().zip(d_an)) {
            let bin = (((x - lo) / width) as usize).min(Self::BINS - 1);
            match TripletKind::classify(ap, an, margin) {
                TripletKind::Hard => h.hard[bin] += 1,
                TripletKind::Semihard => h.semihard[bin] += 1,
                _ => h.easy[bin] += 1,
            }
        }
        h
    }
}

/// The per-triplet columns the report is computed from (12 bytes a triplet: loss and kind
/// follow from the distances), and the anchor records summed per label, gathered block by
/// block (the anchors cost memory per label, not per row). The triplet columns stay in memory,
/// or, [`ReportBuilder::spilling`], go to a scratch file until [`ReportBuilder::finish`].
#[derive(Debug)]
pub struct ReportBuilder {
    margin: f32,
    t_label: Vec<u32>,
    t_d_ap: Vec<f32>,
    t_d_an: Vec<f32>,
    /// Where the triplet columns go instead, as `(label, d_ap, d_an)` records.
    spill: Option<(std::io::BufWriter<std::fs::File>, u64)>,
    /// Indexed by label code.
    per_label: Vec<AnchorSums>,
}

/// Anchor records of one label, summed.
#[derive(Debug, Clone, Copy, Default)]
struct AnchorSums {
    anchors: u64,
    no_positive: u64,
    no_negative: u64,
    capped: u64,
    suspect: u64,
    /// Anchors whose nearest negative violates the margin, of `judged` that have one.
    violating: u64,
    judged: u64,
    /// In [`RULE_COLUMNS`] order.
    rules: [u64; 8],
}

impl AnchorSums {
    fn add(&mut self, other: &AnchorSums) {
        self.anchors += other.anchors;
        self.no_positive += other.no_positive;
        self.no_negative += other.no_negative;
        self.capped += other.capped;
        self.suspect += other.suspect;
        self.violating += other.violating;
        self.judged += other.judged;
        for (a, b) in self.rules.iter_mut().zip(other.rules) {
            *a += b;
        }
    }
}

/// Per-anchor counts of the selection rules, summed like the other counts.
const RULE_COLUMNS: [&str; 8] = [
    "pairs",
    "short_pairs",
    "dropped_pairs",
    "removed_max_negative_similarity",
    "removed_positive_margin",
    "removed_positive_percent",
    "removed_near_duplicate",
    "removed_negative_reuse",
];

/// Count columns of the report, before the [`RULE_COLUMNS`].
const COUNT_COLUMNS: [&str; 9] = [
    "anchors",
    "anchors_without_positive",
    "anchors_without_negative",
    "anchors_capped",
    "triplets",
    "hard",
    "semihard",
    "easy",
    "label_noise_suspects",
];
const FIGURE_COLUMNS: [&str; 10] = [
    "active_fraction",
    "loss_mean",
    "loss_p50",
    "loss_p90",
    "loss_p99",
    "loss_max",
    "d_ap_mean",
    "d_an_mean",
    "neighbour_violation_share",
    "margin_pileup_share",
];

impl ReportBuilder {
    /// An empty builder for a run with this margin.
    pub fn new(margin: f32) -> Self {
        ReportBuilder {
            margin,
            t_label: Vec::new(),
            t_d_ap: Vec::new(),
            t_d_an: Vec::new(),
            spill: None,
            per_label: Vec::new(),
        }
    }

    /// A builder that keeps the triplet columns in an unnamed scratch file in `dir` (gone when
    /// the run ends) and reads them back only in [`ReportBuilder::finish`], so a job whose
    /// vectors are freed by then never holds them beside the vectors.
    pub fn spilling(margin: f32, dir: &std::path::Path) -> Result<Self> {
        let file = tempfile::tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
        Ok(ReportBuilder {
            spill: Some((std::io::BufWriter::with_capacity(1 << 16, file), 0)),
            ..Self::new(margin)
        })
    }

    /// Adds one mined block.
    pub fn add(
        &mut self,
        triplets: &[Triplet],
        anchors: &[AnchorRecord],
        label_of: impl Fn(u32) -> u32,
    ) -> Result<()> {
        if let Some((out, count)) = &mut self.spill {
            use std::io::Write;
            for t in triplets {
                let mut record = [0u8; 12];
                record[..4].copy_from_slice(&label_of(t.anchor).to_le_bytes());
                record[4..8].copy_from_slice(&t.d_ap.to_le_bytes());
                record[8..].copy_from_slice(&t.d_an.to_le_bytes());
                out.write_all(&record)
                    .map_err(|e| Error::io(std::path::Path::new("<report scratch>"), e))?;
            }
            *count += triplets.len() as u64;
        } else {
            for t in triplets {
                self.t_label.push(label_of(t.anchor));
                self.t_d_ap.push(t.d_ap);
                self.t_d_an.push(t.d_an);
            }
        }
        for a in anchors {
            let code = a.label as usize;
            if self.per_label.len() <= code {
                self.per_label.resize(code + 1, AnchorSums::default());
            }
            let s = &mut self.per_label[code];
            s.anchors += 1;
            s.no_positive += u64::from(!a.has_positive);
            s.no_negative += u64::from(a.has_positive && a.triplets == 0);
            s.capped += u64::from(a.capped);
            s.suspect += u64::from(a.neighbour_labels.is_some_and(|n| n.suspect(a.label)));
            if let Some(v) = a.violating_neighbour {
                s.violating += u64::from(v);
                s.judged += 1;
            }
            let g = a.guard_removed;
            let rules = [
                a.pairs,
                a.short_pairs,
                a.dropped_pairs,
                g[0],
                g[1],
                g[2],
                g[3],
                a.reuse_removed,
            ];
            for (sum, v) in s.rules.iter_mut().zip(rules) {
                *sum += u64::from(v);
            }
        }
        Ok(())
    }

    /// Groups by label; `label_values[code]` gives the label column in its input type.
    pub fn finish(mut self, label_values: &ArrayRef) -> Result<Report> {
        if let Some((out, count)) = self.spill.take() {
            use std::io::{Read, Seek};
            let scratch = std::path::Path::new("<report scratch>");
            let mut file = out
                .into_inner()
                .map_err(|e| Error::io(scratch, e.into_error()))?;
            file.rewind().map_err(|e| Error::io(scratch, e))?;
            let n = count as usize;
            (self.t_label, self.t_d_ap, self.t_d_an) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let mut input = std::io::BufReader::with_capacity(1 << 16, file);
            let mut record = [0u8; 12];
            let word = |b: &[u8]| <[u8; 4]>::try_from(b).expect("4 bytes");
            for _ in 0..n {
                input
                    .read_exact(&mut record)
                    .map_err(|e| Error::io(scratch, e))?;
                self.t_label.push(u32::from_le_bytes(word(&record[..4])));
                self.t_d_ap.push(f32::from_le_bytes(word(&record[4..8])));
                self.t_d_an.push(f32::from_le_bytes(word(&record[8..])));
            }
        }
        self.compute(label_values)?
    }

    fn compute(self, label_values: &ArrayRef) -> PolarsResult<Result<Report>> {
        let histogram = Histogram::of_distances(&self.t_d_ap, &self.t_d_an, self.margin);
        let (triplet_frame, overall_triplets) =
            triplet_figures(&self.t_label, &self.t_d_ap, &self.t_d_an, self.margin)?;
        // The anchor side, one row per label with anchors, and the overall row.
        let labels: Vec<(u32, AnchorSums)> = self
            .per_label
            .iter()
            .enumerate()
            .filter(|(_, s)| s.anchors > 0)
            .map(|(code, s)| (code as u32, *s))
            .collect();
        let mut all = AnchorSums::default();
        for (_, s) in &labels {
            all.add(s);
        }
        let anchor_frame = |rows: &[(u32, AnchorSums)]| -> PolarsResult<DataFrame> {
            let count = |f: fn(&AnchorSums) -> u64| -> Vec<u64> {
                rows.iter().map(|(_, s)| f(s)).collect()
            };
            let mut frame = df!(
                "label" => rows.iter().map(|r| r.0).collect::<Vec<u32>>(),
                "anchors" => count(|s| s.anchors),
                "anchors_without_positive" => count(|s| s.no_positive),
                "anchors_without_negative" => count(|s| s.no_negative),
                "anchors_capped" => count(|s| s.capped),
                "label_noise_suspects" => count(|s| s.suspect),
                "neighbour_violation_share" => rows
                    .iter()
                    .map(|(_, s)| (s.judged > 0).then(|| s.violating as f64 / s.judged as f64))
                    .collect::<Vec<Option<f64>>>(),
            )?;
            for (i, name) in RULE_COLUMNS.iter().enumerate() {
                let values: Vec<u64> = rows.iter().map(|(_, s)| s.rules[i]).collect();
                frame.with_column(Column::new((*name).into(), values))?;
            }
            Ok(frame)
        };
        let anchors = anchor_frame(&labels)?.lazy();
        let overall_anchors = anchor_frame(&[(0, all)])?.drop("label")?;

        let per_label = anchors
            .join(
                triplet_frame.lazy(),
                [col("label")],
                [col("label")],
                JoinArgs::new(JoinType::Left),
            )
            .sort(["label"], Default::default())
            .collect()?;

        // Label column: the label of each group's code, then null for the overall row.
        let codes: Vec<Option<u32>> = per_label
            .column("label")?
            .u32()?
            .iter()
            .chain(std::iter::once(None))
            .collect();
        let label_column = match take(label_values.as_ref(), &UInt32Array::from(codes), None) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.into())),
        };
        let mut fields = vec![Field::new("label", label_values.data_type().clone(), true)];
        let mut columns: Vec<ArrayRef> = vec![label_column];

        let overall = |name: &str| -> PolarsResult<Column> {
            if overall_anchors.schema().contains(name) {
                Ok(overall_anchors.column(name)?.clone())
            } else {
                Ok(overall_triplets.column(name)?.clone())
            }
        };
        let mut totals = Totals::default();
        for name in COUNT_COLUMNS.into_iter().chain(RULE_COLUMNS) {
            let mut values: Vec<u64> = per_label
                .column(name)?
                .cast(&DataType::UInt64)?
                .u64()?
                .iter()
                .map(|v| v.unwrap_or(0))
                .collect();
            let total = overall(name)?
                .cast(&DataType::UInt64)?
                .u64()?
                .get(0)
                .unwrap_or(0);
            values.push(total);
            *count_field(&mut totals, name) = total;
            fields.push(Field::new(name, arrow::datatypes::DataType::UInt64, false));
            columns.push(Arc::new(UInt64Array::from(values)));
        }
        for name in FIGURE_COLUMNS {
            let mut values: Vec<Option<f64>> = per_label
                .column(name)?
                .cast(&DataType::Float64)?
                .f64()?
                .iter()
                .collect();
            let total = overall(name)?.cast(&DataType::Float64)?.f64()?.get(0);
            values.push(total);
            *figure_field(&mut totals, name) = total;
            fields.push(Field::new(name, arrow::datatypes::DataType::Float64, true));
            columns.push(Arc::new(Float64Array::from(values)));
        }
        let batch = match RecordBatch::try_new(Arc::new(Schema::new(fields)), columns) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e.into())),
        };
        Ok(Ok(Report {
            batch,
            totals,
            histogram,
        }))
    }
}

fn count_field<'a>(t: &'a mut Totals, name: &str) -> &'a mut u64 {
    match name {
        "anchors" => &mut t.anchors,
        "anchors_without_positive" => &mut t.anchors_without_positive,
        "anchors_without_negative" => &mut t.anchors_without_negative,
        "anchors_capped" => &mut t.anchors_capped,
        "triplets" => &mut t.triplets,
        "hard" => &mut t.hard,
        "semihard" => &mut t.semihard,
        "easy" => &mut t.easy,
        "label_noise_suspects" => &mut t.label_noise_suspects,
        "pairs" => &mut t.pairs,
        "short_pairs" => &mut t.short_pairs,
        "dropped_pairs" => &mut t.dropped_pairs,
        "removed_max_negative_similarity" => &mut t.removed_max_negative_similarity,
        "removed_positive_margin" => &mut t.removed_positive_margin,
        "removed_positive_percent" => &mut t.removed_positive_percent,
        "removed_near_duplicate" => &mut t.removed_near_duplicate,
        "removed_negative_reuse" => &mut t.removed_negative_reuse,
        other => unreachable!("no count {other}"),
    }
}

fn figure_field<'a>(t: &'a mut Totals, name: &str) -> &'a mut Option<f64> {
    match name {
        "active_fraction" => &mut t.active_fraction,
        "loss_mean" => &mut t.loss_mean,
        "loss_p50" => &mut t.loss_p50,
        "loss_p90" => &mut t.loss_p90,
        "loss_p99" => &mut t.loss_p99,
        "loss_max" => &mut t.loss_max,
        "d_ap_mean" => &mut t.d_ap_mean,
        "d_an_mean" => &mut t.d_an_mean,
        "neighbour_violation_share" => &mut t.neighbour_violation_share,
        "margin_pileup_share" => &mut t.margin_pileup_share,
        other => unreachable!("no figure {other}"),
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TripletSums {
    triplets: u64,
    kinds: [u64; 3],
    active: u64,
    pileup: u64,
    loss: f64,
    loss_max: f64,
    d_ap: f64,
    d_an: f64,
}

/// What one triplet adds to [`TripletSums`], worked out once for its label's sums and the
/// overall ones.
struct TripletFacts {
    ap: f32,
    an: f32,
    loss: f32,
    kind: usize,
    pileup: bool,
}

impl TripletFacts {
    fn of(ap: f32, an: f32, margin: f32, pileup: f64) -> Self {
        let t = an as f64 - ap as f64;
        TripletFacts {
            ap,
            an,
            loss: triplet_loss(ap, an, margin),
            kind: match TripletKind::classify(ap, an, margin) {
                TripletKind::Hard => 0,
                TripletKind::Semihard => 1,
                _ => 2,
            },
            pileup: t <= pileup && t >= -pileup,
        }
    }
}

impl TripletSums {
    fn add(&mut self, f: &TripletFacts) {
        self.triplets += 1;
        self.kinds[f.kind] += 1;
        self.active += u64::from(f.loss > 0.0);
        self.pileup += u64::from(f.pileup);
        self.loss += f.loss as f64;
        self.loss_max = if self.triplets == 1 {
            f.loss as f64
        } else {
            self.loss_max.max(f.loss as f64)
        };
        self.d_ap += f.ap as f64;
        self.d_an += f.an as f64;
    }
}

/// The `q` quantile of ascending `sorted`, interpolated linearly between the two values
/// around position `(n - 1) q` (polars' `QuantileMethod::Linear`); `None` when empty.
fn linear_quantile(sorted: &[f32], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let at = last as f64 * q;
    let (below, above) = (at.floor() as usize, (at.ceil() as usize).min(last));
    let (lo, hi) = (sorted[below] as f64, sorted[above] as f64);
    Some(if below == above || lo == hi {
        lo
    } else {
        lo + (hi - lo) * (at - below as f64)
    })
}

/// Column names and values of the triplet figures, per label (labels with triplets, by code)
/// and overall: counts and figures as the report's columns. Bounded memory: beside the
/// triplet columns, the losses ordered by label (4 bytes a triplet) and sums per label; the
/// quantiles sort each label's losses, then all of them.
fn triplet_figures(
    labels: &[u32],
    d_ap: &[f32],
    d_an: &[f32],
    margin: f32,
) -> PolarsResult<(DataFrame, DataFrame)> {
    let pileup = (margin as f64 / 100.0).max(f64::MIN_POSITIVE);
    let codes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut sums = vec![TripletSums::default(); codes];
    let mut all = TripletSums::default();
    for ((&l, &ap), &an) in labels.iter().zip(d_ap).zip(d_an) {
        let facts = TripletFacts::of(ap, an, margin, pileup);
        sums[l as usize].add(&facts);
        all.add(&facts);
    }
    // Losses placed label after label (a counting sort), each label's then sorted.
    let mut start = Vec::with_capacity(codes + 1);
    start.push(0usize);
    for s in &sums {
        start.push(start.last().expect("one") + s.triplets as usize);
    }
    let mut losses = vec![0f32; labels.len()];
    let mut next = start.clone();
    for ((&l, &ap), &an) in labels.iter().zip(d_ap).zip(d_an) {
        losses[next[l as usize]] = triplet_loss(ap, an, margin);
        next[l as usize] += 1;
    }
    let present: Vec<usize> = (0..codes).filter(|&c| sums[c].triplets > 0).collect();
    let mut quantiles: Vec<[Option<f64>; 3]> = Vec::with_capacity(present.len());
    for &c in &present {
        let mine = &mut losses[start[c]..start[c + 1]];
        mine.sort_unstable_by(f32::total_cmp);
        quantiles.push(QUANTILES.map(|q| linear_quantile(mine, q)));
    }
    losses.sort_unstable_by(f32::total_cmp);
    let overall_quantiles = QUANTILES.map(|q| linear_quantile(&losses, q));
    drop(losses);

    let frame = |rows: &[(TripletSums, [Option<f64>; 3])]| -> PolarsResult<DataFrame> {
        let count = |f: &dyn Fn(&TripletSums) -> u64| -> Vec<u64> {
            rows.iter().map(|(s, _)| f(s)).collect()
        };
        let figure = |f: &dyn Fn(&TripletSums) -> f64| -> Vec<Option<f64>> {
            rows.iter()
                .map(|(s, _)| (s.triplets > 0).then(|| f(s)))
                .collect()
        };
        let per = |x: f64, s: &TripletSums| x / s.triplets as f64;
        let quantile = |i: usize| -> Vec<Option<f64>> { rows.iter().map(|r| r.1[i]).collect() };
        df!(
            "triplets" => count(&|s| s.triplets),
            "hard" => count(&|s| s.kinds[0]),
            "semihard" => count(&|s| s.kinds[1]),
            "easy" => count(&|s| s.kinds[2]),
            "active_fraction" => figure(&|s| per(s.active as f64, s)),
            "loss_mean" => figure(&|s| per(s.loss, s)),
            "loss_p50" => quantile(0),
            "loss_p90" => quantile(1),
            "loss_p99" => quantile(2),
            "loss_max" => figure(&|s| s.loss_max),
            "d_ap_mean" => figure(&|s| per(s.d_ap, s)),
            "d_an_mean" => figure(&|s| per(s.d_an, s)),
            "margin_pileup_share" => figure(&|s| per(s.pileup as f64, s)),
        )
    };
    let rows: Vec<(TripletSums, [Option<f64>; 3])> = present
        .iter()
        .zip(quantiles)
        .map(|(&c, q)| (sums[c], q))
        .collect();
    let mut per_label = frame(&rows)?;
    per_label.insert_column(
        0,
        Column::new(
            "label".into(),
            present.iter().map(|&c| c as u32).collect::<Vec<u32>>(),
        ),
    )?;
    let overall = frame(&[(all, overall_quantiles)])?;
    Ok((per_label, overall))
}

/// The loss quantiles of the report: p50, p90, p99.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

#[cfg(test)]
mod triplet_figure_tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// The figures as a polars group-by computes them (how the report was computed before it
    /// had to fit a memory limit): the oracle.
    fn by_polars(
        labels: &[u32],
        d_ap: &[f32],
        d_an: &[f32],
        margin: f32,
    ) -> (DataFrame, DataFrame) {
        let pileup = (margin as f64 / 100.0).max(f64::MIN_POSITIVE);
        let pairs = || d_ap.iter().zip(d_an);
        let triplets = df!(
            "label" => labels.to_vec(),
            "loss" => pairs().map(|(&ap, &an)| triplet_loss(ap, an, margin)).collect::<Vec<f32>>(),
            "kind" => pairs().map(|(&ap, &an)| TripletKind::classify(ap, an, margin) as u32).collect::<Vec<u32>>(),
            "d_ap" => d_ap.to_vec(),
            "d_an" => d_an.to_vec(),
        )
        .unwrap()
        .lazy();
        let triplet_aggs = || {
            let kind = |k: TripletKind| col("kind").eq(lit(k as u32)).cast(DataType::UInt64).sum();
            let q = |p: f64| {
                col("loss")
                    .cast(DataType::Float64)
                    .quantile(lit(p), QuantileMethod::Linear)
            };
            vec![
                len().cast(DataType::UInt64).alias("triplets"),
                kind(TripletKind::Hard).alias("hard"),
                kind(TripletKind::Semihard).alias("semihard"),
                kind(TripletKind::Easy).alias("easy"),
                col("loss")
                    .gt(lit(0.0f32))
                    .cast(DataType::Float64)
                    .mean()
                    .alias("active_fraction"),
                col("loss")
                    .cast(DataType::Float64)
                    .mean()
                    .alias("loss_mean"),
                q(0.5).alias("loss_p50"),
                q(0.9).alias("loss_p90"),
                q(0.99).alias("loss_p99"),
                col("loss").cast(DataType::Float64).max().alias("loss_max"),
                col("d_ap")
                    .cast(DataType::Float64)
                    .mean()
                    .alias("d_ap_mean"),
                col("d_an")
                    .cast(DataType::Float64)
                    .mean()
                    .alias("d_an_mean"),
                (col("d_an").cast(DataType::Float64) - col("d_ap").cast(DataType::Float64))
                    .lt_eq(lit(pileup))
                    .and(
                        (col("d_an").cast(DataType::Float64) - col("d_ap").cast(DataType::Float64))
                            .gt_eq(lit(-pileup)),
                    )
                    .cast(DataType::Float64)
                    .mean()
                    .alias("margin_pileup_share"),
            ]
        };

        let per_label = triplets
            .clone()
            .group_by([col("label")])
            .agg(triplet_aggs())
            .sort(["label"], Default::default())
            .collect()
            .unwrap();
        let overall = triplets.select(triplet_aggs()).collect().unwrap();
        (per_label, overall)
    }

    fn assert_frames_agree(got: &DataFrame, want: &DataFrame) {
        assert_eq!(got.height(), want.height());
        for c in want.columns() {
            let name = c.name().as_str();
            let a = got.column(name).unwrap().cast(&DataType::Float64).unwrap();
            let b = c.cast(&DataType::Float64).unwrap();
            for (x, y) in a.f64().unwrap().iter().zip(b.f64().unwrap().iter()) {
                match (x, y) {
                    (Some(x), Some(y)) => assert!(
                        (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                        "{name}: {x} against {y}"
                    ),
                    (x, y) => assert_eq!(x, y, "{name}"),
                }
            }
        }
    }

    #[test]
    fn per_label_and_overall_figures_equal_a_polars_group_by() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (n, codes) in [(0usize, 3u32), (1, 1), (7, 3), (5000, 40), (20000, 7)] {
            // Labels with gaps (some codes have no triplet), distances with ties.
            let labels: Vec<u32> = (0..n).map(|_| 2 * rng.random_range(0..codes)).collect();
            let d_ap: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(0..50) as f32) / 10.0)
                .collect();
            let d_an: Vec<f32> = (0..n)
                .map(|_| (rng.random_range(0..60) as f32) / 10.0)
                .collect();
            let margin = 0.2;
            let (per_label, overall) = triplet_figures(&labels, &d_ap, &d_an, margin).unwrap();
            let (want_per_label, want_overall) = by_polars(&labels, &d_ap, &d_an, margin);
            assert_frames_agree(&per_label, &want_per_label);
            assert_frames_agree(&overall, &want_overall);
        }
    }

    #[test]
    fn the_histogram_counts_every_triplet_by_kind() {
        let d_ap = [0.1f32, 0.5, 1.0, 2.0];
        let d_an = [0.05f32, 0.6, 1.5, 2.1];
        let h = Histogram::of_distances(&d_ap, &d_an, 0.2);
        // Hard (d_an <= d_ap), semi-hard (within the margin) twice, easy.
        assert_eq!(h.hard.iter().sum::<u64>(), 1);
        assert_eq!(h.semihard.iter().sum::<u64>(), 2);
        assert_eq!(h.easy.iter().sum::<u64>(), 1);
        assert_eq!(h.edges.len(), Histogram::BINS + 1);
    }
}

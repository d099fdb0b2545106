//! `tripmine diff`: how two runs' triplets differ (last night's and tonight's, say, after a
//! model update).
//!
//! In: two runs, each a triplet output (a Parquet file or a folder of parts) or its manifest.
//! Out: a [`RunDiff`]: triplet overlap (Jaccard per anchor, and over all triplets), and per
//! label the violation rates (share of triplets with a positive loss) of both runs, labels
//! that moved most first; printable, and as an Arrow batch for Parquet.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::pipeline::manifest::{Manifest, manifest_path};

/// One label's change between the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDiff {
    pub label: String,
    pub triplets_a: u64,
    pub triplets_b: u64,
    /// Share of the label's triplets with a positive loss; `None` without triplets.
    pub violation_rate_a: Option<f64>,
    pub violation_rate_b: Option<f64>,
    /// The label's data-set health figure (`neighbour_violation_share`) in each run's report,
    /// when the run's manifest names it: independent of the mining strategy.
    pub neighbour_violation_a: Option<f64>,
    pub neighbour_violation_b: Option<f64>,
    /// Mean Jaccard overlap of the (positive, negative) sets of the label's anchors.
    pub anchor_jaccard: f64,
}

impl LabelDiff {
    /// `rate_b - rate_a` (0 where either is undefined).
    pub fn delta(&self) -> f64 {
        change(self.violation_rate_a, self.violation_rate_b)
    }

    /// Change of the neighbour violation share (0 where either is unknown).
    pub fn neighbour_delta(&self) -> f64 {
        change(self.neighbour_violation_a, self.neighbour_violation_b)
    }

    /// How far the label moved: the larger of the two changes.
    pub fn movement(&self) -> f64 {
        self.delta().abs().max(self.neighbour_delta().abs())
    }
}

fn change(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    }
}

/// How two runs differ.
#[derive(Debug, Clone, PartialEq)]
pub struct RunDiff {
    pub a: PathBuf,
    pub b: PathBuf,
    pub triplets_a: u64,
    pub triplets_b: u64,
    /// Mean over the anchors of either run of the Jaccard overlap of their triplet sets.
    pub anchor_jaccard: f64,
    /// Jaccard overlap of the two whole triplet sets.
    pub triplet_jaccard: f64,
    /// Labels that moved most first (largest |delta|, then label).
    pub labels: Vec<LabelDiff>,
}

/// Triplets of one run, keyed as text so any id and label type compares.
struct RunTriplets {
    /// Per label: the report's neighbour violation share, when the report is known.
    health: HashMap<String, Option<f64>>,
    by_anchor: HashMap<String, HashSet<(String, String)>>,
    anchor_label: HashMap<String, String>,
    /// Per label: (triplets, with positive loss).
    per_label: HashMap<String, (u64, u64)>,
    count: u64,
}

/// Compares two runs.
pub fn diff(a: &Path, b: &Path) -> Result<RunDiff> {
    let ra = load(a)?;
    let rb = load(b)?;
    let anchors: HashSet<&String> = ra.by_anchor.keys().chain(rb.by_anchor.keys()).collect();
    let empty = HashSet::new();
    let mut jaccard_by_label: HashMap<&str, (f64, u64)> = HashMap::new();
    let (mut sum, mut inter_all, mut union_all) = (0.0, 0u64, 0u64);
    for anchor in &anchors {
        let sa = ra.by_anchor.get(*anchor).unwrap_or(&empty);
        let sb = rb.by_anchor.get(*anchor).unwrap_or(&empty);
        let inter = sa.intersection(sb).count() as u64;
        let union = (sa.len() + sb.len()) as u64 - inter;
        let j = if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        };
        sum += j;
        inter_all += inter;
        union_all += union;
        let label = ra
            .anchor_label
            .get(*anchor)
            .or_else(|| rb.anchor_label.get(*anchor))
            .map_or("", |l| l.as_str());
        let e = jaccard_by_label.entry(label).or_default();
        e.0 += j;
        e.1 += 1;
    }
    let labels: HashSet<&String> = ra.per_label.keys().chain(rb.per_label.keys()).collect();
    let rate = |r: &RunTriplets, l: &str| {
        r.per_label
            .get(l)
            .filter(|c| c.0 > 0)
            .map(|c| c.1 as f64 / c.0 as f64)
    };
    let mut per_label: Vec<LabelDiff> = labels
        .into_iter()
        .map(|l| LabelDiff {
            label: l.clone(),
            triplets_a: ra.per_label.get(l).map_or(0, |c| c.0),
            triplets_b: rb.per_label.get(l).map_or(0, |c| c.0),
            violation_rate_a: rate(&ra, l),
            violation_rate_b: rate(&rb, l),
            neighbour_violation_a: ra.health.get(l).copied().flatten(),
            neighbour_violation_b: rb.health.get(l).copied().flatten(),
            anchor_jaccard: jaccard_by_label
                .get(l.as_str())
                .map_or(1.0, |(s, n)| s / *n as f64),
        })
        .collect();
    per_label.sort_by(|x, y| {
        y.movement()
            .total_cmp(&x.movement())
            .then_with(|| x.label.cmp(&y.label))
    });
    Ok(RunDiff {
        a: a.to_path_buf(),
        b: b.to_path_buf(),
        triplets_a: ra.count,
        triplets_b: rb.count,
        anchor_jaccard: if anchors.is_empty() {
            1.0
        } else {
            sum / anchors.len() as f64
        },
        triplet_jaccard: if union_all == 0 {
            1.0
        } else {
            inter_all as f64 / union_all as f64
        },
        labels: per_label,
    })
}

/// The triplet files of a run given as an output or its manifest, and its report if a
/// manifest names one.
fn run_files(run: &Path) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let read_manifest = |path: &Path| -> Result<Manifest> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::BadData(format!("{}: not a tripmine manifest ({e})", path.display()))
        })
    };
    let (out, report) = if run.extension().is_some_and(|x| x == "json") {
        let m = read_manifest(run)?;
        (m.config.output.out, Some(m.config.output.report))
    } else {
        let beside = manifest_path(run);
        let report = beside
            .exists()
            .then(|| read_manifest(&beside).ok())
            .flatten()
            .map(|m| m.config.output.report);
        (run.to_path_buf(), report)
    };
    if out.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&out)
            .map_err(|e| Error::io(&out, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        parts.sort();
        Ok((parts, report))
    } else if out.is_file() {
        Ok((vec![out], report))
    } else {
        Err(Error::NoInput(format!(
            "{}: no such triplet output",
            out.display()
        )))
    }
}

fn load(run: &Path) -> Result<RunTriplets> {
    const COLUMNS: [&str; 5] = [
        "anchor_id",
        "positive_id",
        "negative_id",
        "anchor_label",
        "loss",
    ];
    let (files, report) = run_files(run)?;
    let mut r = RunTriplets {
        health: match report.filter(|p| p.exists()) {
            Some(p) => report_health(&p)?,
            None => HashMap::new(),
        },
        by_anchor: HashMap::new(),
        anchor_label: HashMap::new(),
        per_label: HashMap::new(),
        count: 0,
    };
    for path in files {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&path, e))?;
        let schema = builder.schema().clone();
        let mut roots = Vec::new();
        for name in COLUMNS {
            roots.push(
                schema
                    .index_of(name)
                    .map_err(|_| Error::missing_column(&path, name, &schema))?,
            );
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| Error::parquet(&path, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Parquet {
                path: path.clone(),
                source: e.into(),
            })?;
            let text = |name: &str| -> Result<ArrayRef> {
                Ok(cast(
                    batch.column_by_name(name).expect("projected"),
                    &DataType::Utf8,
                )?)
            };
            let (anchor, positive, negative, label) = (
                text("anchor_id")?,
                text("positive_id")?,
                text("negative_id")?,
                text("anchor_label")?,
            );
            let (anchor, positive, negative, label) = (
                anchor.as_string::<i32>(),
                positive.as_string::<i32>(),
                negative.as_string::<i32>(),
                label.as_string::<i32>(),
            );
            let loss = batch
                .column_by_name("loss")
                .expect("projected")
                .as_primitive::<Float32Type>();
            for i in 0..batch.num_rows() {
                let a = anchor.value(i).to_string();
                r.by_anchor
                    .entry(a.clone())
                    .or_default()
                    .insert((positive.value(i).to_string(), negative.value(i).to_string()));
                let l = label.value(i).to_string();
                let c = r.per_label.entry(l.clone()).or_default();
                c.0 += 1;
                c.1 += (loss.value(i) > 0.0) as u64;
                r.anchor_label.insert(a, l);
                r.count += 1;
            }
        }
    }
    Ok(r)
}

/// `label -> neighbour_violation_share` of a report's per-label rows.
fn report_health(path: &Path) -> Result<HashMap<String, Option<f64>>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::parquet(path, e))?;
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch?;
        let (Some(labels), Some(share)) = (
            batch.column_by_name("label"),
            batch.column_by_name("neighbour_violation_share"),
        ) else {
            return Err(Error::BadData(format!(
                "{}: not a tripmine report",
                path.display()
            )));
        };
        let labels = cast(labels, &DataType::Utf8)?;
        let labels = labels.as_string::<i32>();
        let share = share.as_primitive::<arrow::datatypes::Float64Type>();
        for i in 0..batch.num_rows() {
            // The overall row has a null label.
            if labels.is_valid(i) {
                out.insert(
                    labels.value(i).to_string(),
                    share.is_valid(i).then(|| share.value(i)),
                );
            }
        }
    }
    Ok(out)
}

impl RunDiff {
    /// One row per label, labels that moved most first.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let l = &self.labels;
        let schema = Schema::new(vec![
            Field::new("label", DataType::Utf8, false),
            Field::new("triplets_a", DataType::UInt64, false),
            Field::new("triplets_b", DataType::UInt64, false),
            Field::new("violation_rate_a", DataType::Float64, true),
            Field::new("violation_rate_b", DataType::Float64, true),
            Field::new("violation_rate_delta", DataType::Float64, false),
            Field::new("neighbour_violation_share_a", DataType::Float64, true),
            Field::new("neighbour_violation_share_b", DataType::Float64, true),
            Field::new("neighbour_violation_share_delta", DataType::Float64, false),
            Field::new("anchor_jaccard", DataType::Float64, false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                l.iter().map(|x| x.label.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                l.iter().map(|x| x.triplets_a),
            )),
            Arc::new(UInt64Array::from_iter_values(
                l.iter().map(|x| x.triplets_b),
            )),
            Arc::new(Float64Array::from_iter(
                l.iter().map(|x| x.violation_rate_a),
            )),
            Arc::new(Float64Array::from_iter(
                l.iter().map(|x| x.violation_rate_b),
            )),
            Arc::new(Float64Array::from_iter_values(l.iter().map(|x| x.delta()))),
            Arc::new(Float64Array::from_iter(
                l.iter().map(|x| x.neighbour_violation_a),
            )),
            Arc::new(Float64Array::from_iter(
                l.iter().map(|x| x.neighbour_violation_b),
            )),
            Arc::new(Float64Array::from_iter_values(
                l.iter().map(|x| x.neighbour_delta()),
            )),
            Arc::new(Float64Array::from_iter_values(
                l.iter().map(|x| x.anchor_jaccard),
            )),
        ];
        Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
    }
}

impl fmt::Display for RunDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.4}"));
        writeln!(f, "a: {} ({} triplets)", self.a.display(), self.triplets_a)?;
        writeln!(f, "b: {} ({} triplets)", self.b.display(), self.triplets_b)?;
        writeln!(
            f,
            "overlap: {:.4} mean Jaccard by anchor, {:.4} over all triplets",
            self.anchor_jaccard, self.triplet_jaccard
        )?;
        writeln!(
            f,
            "labels that moved most (rate: share of triplets with loss > 0; \
             nbr: neighbour violation share of the reports):"
        )?;
        writeln!(
            f,
            "  {:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "label",
            "trip. a",
            "trip. b",
            "rate a",
            "rate b",
            "delta",
            "nbr a",
            "nbr b",
            "delta",
            "jaccard"
        )?;
        for l in self.labels.iter().take(20) {
            writeln!(
                f,
                "  {:<16} {:>9} {:>9} {:>8} {:>8} {:>+8.4} {:>8} {:>8} {:>+8.4} {:>8.4}",
                l.label,
                l.triplets_a,
                l.triplets_b,
                rate(l.violation_rate_a),
                rate(l.violation_rate_b),
                l.delta(),
                rate(l.neighbour_violation_a),
                rate(l.neighbour_violation_b),
                l.neighbour_delta(),
                l.anchor_jaccard
            )?;
        }
        if self.labels.len() > 20 {
            write!(f, "  ... and {} more labels", self.labels.len() - 20)?;
        }
        Ok(())
    }
}

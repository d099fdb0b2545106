//! `tripmine diff`: how two runs' triplets differ (last night's and tonight's, say, after a
//! model update).
//!
//! In: two runs, each a triplet output (a Parquet file or a folder of parts) or its manifest.
//! Out: a [`RunDiff`]: whether the runs' configurations differ (from their manifests), triplet
//! overlap (Jaccard per anchor, and over all triplets), and per label the triplets, anchors
//! covered, mean loss and violation rates of both runs, labels that moved most first;
//! printable, and as an Arrow batch (labels in their input type) for Parquet.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};

use crate::error::{Error, Result, contain_panics};
use crate::io::{open_parquet, read_columns};
use crate::pipeline::manifest::{Manifest, manifest_path};
use crate::report::thousands;

/// One run's figures of a label.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LabelFigures {
    pub triplets: u64,
    /// Distinct anchors of the label with at least one triplet.
    pub anchors: u64,
    /// Share of the label's triplets with a positive loss; `None` without triplets.
    pub violation_rate: Option<f64>,
    pub loss_mean: Option<f64>,
    /// The label's data-set health figure (`neighbour_violation_share`) in the run's report,
    /// when the run's manifest names it: independent of the mining strategy.
    pub neighbour_violation: Option<f64>,
}

/// One label's change between the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelDiff {
    /// The label as text (for printing); the batch keeps its input type.
    pub label: String,
    pub a: LabelFigures,
    pub b: LabelFigures,
    /// Mean Jaccard overlap of the (positive, negative) sets of the label's anchors.
    pub anchor_jaccard: f64,
}

impl LabelDiff {
    /// Violation rate of b minus a (0 where either is undefined).
    pub fn delta(&self) -> f64 {
        change(self.a.violation_rate, self.b.violation_rate)
    }

    /// Change of the neighbour violation share (0 where either is unknown).
    pub fn neighbour_delta(&self) -> f64 {
        change(self.a.neighbour_violation, self.b.neighbour_violation)
    }

    /// How far the label moved, from 0 to 1: the largest of the relative changes of its
    /// triplet count, anchors covered and mean loss, and of the changes of its violation rate
    /// and neighbour violation share. A label whose rates are saturated (every triplet
    /// violates, as in a semi-hard run) still moves when its triplets or loss do.
    pub fn movement(&self) -> f64 {
        let relative = |a: f64, b: f64| {
            let scale = a.abs().max(b.abs());
            if scale == 0.0 {
                0.0
            } else {
                (b - a).abs() / scale
            }
        };
        [
            relative(self.a.triplets as f64, self.b.triplets as f64),
            relative(self.a.anchors as f64, self.b.anchors as f64),
            relative(
                self.a.loss_mean.unwrap_or(0.0),
                self.b.loss_mean.unwrap_or(0.0),
            ),
            self.delta().abs(),
            self.neighbour_delta().abs(),
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }
}

fn change(a: Option<f64>, b: Option<f64>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    }
}

/// A setting that differs between the runs: its key (`mine.margin`) and both values.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    pub key: String,
    pub a: String,
    pub b: String,
}

/// How two runs differ.
#[derive(Debug, Clone)]
pub struct RunDiff {
    pub a: PathBuf,
    pub b: PathBuf,
    pub triplets_a: u64,
    pub triplets_b: u64,
    /// Settings that shape the triplets and differ between the runs; `None` when a run has
    /// no manifest to tell.
    pub config_changes: Option<Vec<ConfigChange>>,
    /// Mean over the anchors of either run of the Jaccard overlap of their triplet sets.
    pub anchor_jaccard: f64,
    /// Jaccard overlap of the two whole triplet sets.
    pub triplet_jaccard: f64,
    /// Labels that moved most first (largest [`LabelDiff::movement`], then label order).
    pub labels: Vec<LabelDiff>,
    /// The labels of `labels`, in order, in their input type.
    pub label_values: ArrayRef,
}

/// Per-label running sums of one run.
#[derive(Debug, Clone, Copy, Default)]
struct LabelSums {
    triplets: u64,
    violating: u64,
    loss: f64,
}

/// Texts (ids or labels) stored once each and numbered, shared by both runs: triplets
/// compare as numbers (12 bytes a triplet) whatever the id type, and the same id gets the
/// same number in both runs.
#[derive(Default)]
struct Interner {
    /// Each text allocated once, shared by the map and the list.
    codes: HashMap<Rc<str>, u32>,
    names: Vec<Rc<str>>,
}

impl Interner {
    fn code(&mut self, text: &str) -> u32 {
        if let Some(&c) = self.codes.get(text) {
            return c;
        }
        let c = self.names.len() as u32;
        let text: Rc<str> = text.into();
        self.names.push(Rc::clone(&text));
        self.codes.insert(text, c);
        c
    }

    fn name(&self, code: u32) -> &str {
        &self.names[code as usize]
    }
}

/// The ids and labels of both runs, as text (so any type compares) numbered once.
#[derive(Default)]
struct Keys {
    ids: Interner,
    labels: Interner,
}

/// Triplets of one run, their ids and labels numbered by [`Keys`].
struct RunTriplets {
    manifest: Option<Manifest>,
    /// Per label: the report's neighbour violation share, when the report is known.
    health: HashMap<String, Option<f64>>,
    /// Per anchor id: its (positive id, negative id) pairs.
    by_anchor: HashMap<u32, HashSet<(u32, u32)>>,
    /// Per anchor id: its label.
    anchor_label: HashMap<u32, u32>,
    per_label: HashMap<String, LabelSums>,
    /// The first value of each label in its input type (a one-row array).
    typed: HashMap<String, ArrayRef>,
    count: u64,
}

impl RunTriplets {
    fn figures(&self, label: &str, anchors: &HashMap<&str, u64>) -> LabelFigures {
        let sums = self.per_label.get(label).copied().unwrap_or_default();
        let per_triplet = |x: f64| (sums.triplets > 0).then(|| x / sums.triplets as f64);
        LabelFigures {
            triplets: sums.triplets,
            anchors: anchors.get(label).copied().unwrap_or(0),
            violation_rate: per_triplet(sums.violating as f64),
            loss_mean: per_triplet(sums.loss),
            neighbour_violation: self.health.get(label).copied().flatten(),
        }
    }

    /// Anchors with triplets, per label.
    fn anchors_per_label<'k>(&self, labels: &'k Interner) -> HashMap<&'k str, u64> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for &label in self.anchor_label.values() {
            *counts.entry(labels.name(label)).or_default() += 1;
        }
        counts
    }
}

/// Compares two runs.
pub fn diff(a: &Path, b: &Path) -> Result<RunDiff> {
    let mut keys = Keys::default();
    let ra = load(a, &mut keys)?;
    let rb = load(b, &mut keys)?;
    let anchors: HashSet<u32> = ra
        .by_anchor
        .keys()
        .chain(rb.by_anchor.keys())
        .copied()
        .collect();
    let empty = HashSet::new();
    let mut jaccard_by_label: HashMap<&str, (f64, u64)> = HashMap::new();
    let (mut sum, mut inter_all, mut union_all) = (0.0, 0u64, 0u64);
    for anchor in &anchors {
        let sa = ra.by_anchor.get(anchor).unwrap_or(&empty);
        let sb = rb.by_anchor.get(anchor).unwrap_or(&empty);
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
            .get(anchor)
            .or_else(|| rb.anchor_label.get(anchor))
            .map_or("", |&l| keys.labels.name(l));
        let e = jaccard_by_label.entry(label).or_default();
        e.0 += j;
        e.1 += 1;
    }
    let (anchors_a, anchors_b) = (
        ra.anchors_per_label(&keys.labels),
        rb.anchors_per_label(&keys.labels),
    );
    let names: Vec<&String> = {
        let set: HashSet<&String> = ra.per_label.keys().chain(rb.per_label.keys()).collect();
        set.into_iter().collect()
    };
    let typed = typed_labels(&names, &ra, &rb)?;
    let order = label_order(&typed)?;
    let mut per_label: Vec<(LabelDiff, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let d = LabelDiff {
                label: (*l).clone(),
                a: ra.figures(l, &anchors_a),
                b: rb.figures(l, &anchors_b),
                anchor_jaccard: jaccard_by_label
                    .get(l.as_str())
                    .map_or(1.0, |(s, n)| s / *n as f64),
            };
            (d, i)
        })
        .collect();
    // Most moved first; among equals, the larger change in triplets, then label order.
    let shift = |d: &LabelDiff| d.a.triplets.abs_diff(d.b.triplets);
    per_label.sort_by(|(x, i), (y, j)| {
        y.movement()
            .total_cmp(&x.movement())
            .then_with(|| shift(y).cmp(&shift(x)))
            .then_with(|| order[*i].cmp(&order[*j]))
    });
    let positions = UInt64Array::from_iter_values(per_label.iter().map(|(_, i)| *i as u64));
    let label_values = arrow::compute::take(typed.as_ref(), &positions, None)?;
    Ok(RunDiff {
        a: a.to_path_buf(),
        b: b.to_path_buf(),
        triplets_a: ra.count,
        triplets_b: rb.count,
        config_changes: match (&ra.manifest, &rb.manifest) {
            (Some(ma), Some(mb)) => Some(config_changes(ma, mb)),
            _ => None,
        },
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
        labels: per_label.into_iter().map(|(d, _)| d).collect(),
        label_values,
    })
}

/// The labels `names` in their input type: a's type, or text where the runs' types differ.
fn typed_labels(names: &[&String], ra: &RunTriplets, rb: &RunTriplets) -> Result<ArrayRef> {
    let parts: Vec<&ArrayRef> = names
        .iter()
        .map(|l| ra.typed.get(*l).or_else(|| rb.typed.get(*l)).expect("seen"))
        .collect();
    let same_type = parts
        .windows(2)
        .all(|w| w[0].data_type() == w[1].data_type());
    if same_type && !parts.is_empty() {
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        return Ok(arrow::compute::concat(&refs)?);
    }
    Ok(Arc::new(arrow::array::StringArray::from_iter_values(
        names.iter().map(|s| s.as_str()),
    )))
}

/// The rank of each label in its type's order (numbers by value, text by text).
fn label_order(labels: &ArrayRef) -> Result<Vec<usize>> {
    let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(
        labels.data_type().clone(),
    )])?;
    let rows = converter.convert_columns(std::slice::from_ref(labels))?;
    let mut by_value: Vec<usize> = (0..labels.len()).collect();
    by_value.sort_by(|&x, &y| rows.row(x).cmp(&rows.row(y)));
    let mut rank = vec![0; labels.len()];
    for (r, i) in by_value.into_iter().enumerate() {
        rank[i] = r;
    }
    Ok(rank)
}

/// The settings that shape triplets and differ between two manifests (input, mining, and the
/// output format; not the output paths).
fn config_changes(a: &Manifest, b: &Manifest) -> Vec<ConfigChange> {
    let flat = |m: &Manifest| {
        let mut out = std::collections::BTreeMap::new();
        let config = serde_json::to_value(&m.config).unwrap_or_default();
        for section in ["input", "mine"] {
            flatten(section, &config[section], &mut out);
        }
        flatten("output.format", &config["output"]["format"], &mut out);
        out
    };
    let (fa, fb) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (va, vb) = (fa.get(k), fb.get(k));
            (va != vb).then(|| ConfigChange {
                key: k.clone(),
                a: va.cloned().unwrap_or_else(|| "(unset)".into()),
                b: vb.cloned().unwrap_or_else(|| "(unset)".into()),
            })
        })
        .collect()
}

fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        serde_json::Value::Null => {}
        // Settings are f32: 0.2, not its f64 expansion 0.20000000298023224.
        serde_json::Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or_default();
            let shown = if (x as f32) as f64 == x {
                format!("{:?}", x as f32)
            } else {
                x.to_string()
            };
            out.insert(prefix.to_string(), shown);
        }
        v => {
            out.insert(prefix.to_string(), v.to_string());
        }
    }
}

/// The triplet files of a run given as an output or its manifest, and its manifest if there
/// is one.
fn run_files(run: &Path) -> Result<(Vec<PathBuf>, Option<Manifest>)> {
    let read_manifest = |path: &Path| -> Result<Manifest> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a tripmine manifest ({e})"),
        })
    };
    let (out, manifest) = if run.extension().is_some_and(|x| x == "json") {
        let m = read_manifest(run)?;
        (m.config.output.out.clone(), Some(m))
    } else {
        let beside = manifest_path(run);
        let manifest = beside
            .exists()
            .then(|| read_manifest(&beside).ok())
            .flatten();
        (run.to_path_buf(), manifest)
    };
    if out.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(&out)
            .map_err(|e| Error::io(&out, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        parts.sort();
        Ok((parts, manifest))
    } else if out.is_file() {
        Ok((vec![out], manifest))
    } else {
        Err(Error::NoInput(format!(
            "{}: no such triplet output",
            out.display()
        )))
    }
}

fn load(run: &Path, keys: &mut Keys) -> Result<RunTriplets> {
    let (files, manifest) = run_files(run)?;
    let report = manifest.as_ref().map(|m| m.config.output.report.clone());
    let mut r = RunTriplets {
        health: match report.filter(|p| p.exists()) {
            Some(p) => contain_panics(&p, || report_health(&p))?,
            None => HashMap::new(),
        },
        manifest,
        by_anchor: HashMap::new(),
        anchor_label: HashMap::new(),
        per_label: HashMap::new(),
        typed: HashMap::new(),
        count: 0,
    };
    for path in files {
        contain_panics(&path, || load_file(&path, &mut r, keys))?;
    }
    Ok(r)
}

fn load_file(path: &Path, r: &mut RunTriplets, keys: &mut Keys) -> Result<()> {
    const COLUMNS: [&str; 5] = [
        "anchor_id",
        "positive_id",
        "negative_id",
        "anchor_label",
        "loss",
    ];
    for batch in read_columns(path, &COLUMNS, 8192)? {
        let batch = batch?;
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
        let typed_label = batch.column_by_name("anchor_label").expect("projected");
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
            let a = keys.ids.code(anchor.value(i));
            let pair = (
                keys.ids.code(positive.value(i)),
                keys.ids.code(negative.value(i)),
            );
            r.by_anchor.entry(a).or_default().insert(pair);
            let l = label.value(i);
            if !r.typed.contains_key(l) {
                r.typed.insert(l.to_string(), typed_label.slice(i, 1));
            }
            let c = r.per_label.entry(l.to_string()).or_default();
            c.triplets += 1;
            c.violating += (loss.value(i) > 0.0) as u64;
            c.loss += loss.value(i) as f64;
            r.anchor_label.insert(a, keys.labels.code(l));
            r.count += 1;
        }
    }
    Ok(())
}

/// `label -> neighbour_violation_share` of a report's per-label rows.
fn report_health(path: &Path) -> Result<HashMap<String, Option<f64>>> {
    let reader = open_parquet(path)?
        .0
        .build()
        .map_err(|e| Error::bad_parquet(path, e))?;
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| Error::bad_parquet(path, e))?;
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
    /// One row per label, labels that moved most first; labels in their input type.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let l = &self.labels;
        let count = |f: fn(&LabelDiff) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from_iter_values(l.iter().map(f)))
        };
        let figure = |f: fn(&LabelDiff) -> Option<f64>| -> ArrayRef {
            Arc::new(Float64Array::from_iter(l.iter().map(f)))
        };
        let value = |f: fn(&LabelDiff) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(l.iter().map(f)))
        };
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("label", self.label_values.clone()),
            ("triplets_a", count(|x| x.a.triplets)),
            ("triplets_b", count(|x| x.b.triplets)),
            ("anchors_a", count(|x| x.a.anchors)),
            ("anchors_b", count(|x| x.b.anchors)),
            ("loss_mean_a", figure(|x| x.a.loss_mean)),
            ("loss_mean_b", figure(|x| x.b.loss_mean)),
            ("violation_rate_a", figure(|x| x.a.violation_rate)),
            ("violation_rate_b", figure(|x| x.b.violation_rate)),
            ("violation_rate_delta", value(|x| x.delta())),
            (
                "neighbour_violation_share_a",
                figure(|x| x.a.neighbour_violation),
            ),
            (
                "neighbour_violation_share_b",
                figure(|x| x.b.neighbour_violation),
            ),
            (
                "neighbour_violation_share_delta",
                value(|x| x.neighbour_delta()),
            ),
            ("anchor_jaccard", value(|x| x.anchor_jaccard)),
            ("movement", value(|x| x.movement())),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(name, a)| Field::new(*name, a.data_type().clone(), a.null_count() > 0))
                .collect::<Vec<_>>(),
        );
        let arrays = columns.into_iter().map(|(_, a)| a).collect();
        Ok(RecordBatch::try_new(Arc::new(schema), arrays)?)
    }
}

impl fmt::Display for RunDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fig = |r: Option<f64>| r.map_or("-".to_string(), |v| format!("{v:.3}"));
        let n = |x: u64| thousands(x);
        writeln!(
            f,
            "a: {} ({} triplets)",
            self.a.display(),
            n(self.triplets_a)
        )?;
        writeln!(
            f,
            "b: {} ({} triplets)",
            self.b.display(),
            n(self.triplets_b)
        )?;
        match &self.config_changes {
            None => writeln!(
                f,
                "configurations: unknown (a run has no manifest); differences may come from \
                 the settings"
            )?,
            Some(c) if c.is_empty() => writeln!(f, "configurations: the same")?,
            Some(c) => {
                writeln!(
                    f,
                    "configurations DIFFER, so triplets differ by design, not only by the data:"
                )?;
                for change in c {
                    writeln!(f, "  {}: {} -> {}", change.key, change.a, change.b)?;
                }
            }
        }
        writeln!(
            f,
            "overlap: {:.4} mean Jaccard by anchor, {:.4} over all triplets",
            self.anchor_jaccard, self.triplet_jaccard
        )?;
        writeln!(
            f,
            "labels that moved most (by the largest relative change of triplets, anchors \
             covered or mean loss,\nor change of violation rates; rate: share of triplets with \
             loss > 0):"
        )?;
        writeln!(
            f,
            "  {:<14} {:>17} {:>15} {:>15} {:>13} {:>7} {:>7}",
            "label",
            "triplets a -> b",
            "anchors a -> b",
            "loss a -> b",
            "rate a -> b",
            "nbr +-",
            "jacc."
        )?;
        for l in self.labels.iter().take(20) {
            writeln!(
                f,
                "  {:<14} {:>17} {:>15} {:>15} {:>13} {:>+7.3} {:>7.3}",
                l.label,
                format!("{} -> {}", n(l.a.triplets), n(l.b.triplets)),
                format!("{} -> {}", n(l.a.anchors), n(l.b.anchors)),
                format!("{} -> {}", fig(l.a.loss_mean), fig(l.b.loss_mean)),
                format!(
                    "{} -> {}",
                    fig(l.a.violation_rate).trim_start_matches('0'),
                    fig(l.b.violation_rate).trim_start_matches('0')
                ),
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

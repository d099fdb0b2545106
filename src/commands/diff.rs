//! `tripmine diff`: how two runs' triplets differ (last night's and tonight's, say, after a
//! model update).
//!
//! In: two runs, each a triplet output (a Parquet file or a folder of parts) or its manifest.
//! Out: a [`RunDiff`]: whether the runs' configurations differ (from their manifests), triplet
//! overlap (Jaccard per anchor, and over all triplets), and per label the triplets, anchors
//! covered, mean loss and violation rates of both runs, labels that moved most first;
//! printable, and as an Arrow batch (labels in their input type) for Parquet.
//!
//! Memory: the triplets are compared anchor by anchor from 48-byte records (hashes of the ids'
//! text); under a memory limit they are first split by anchor into partitions on disk that
//! each fit, so only the per-label figures grow with the data.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
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

/// Labels as text (so any type compares) stored once each and numbered, shared by both
/// runs: the same label gets the same number in both.
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

/// Options of a comparison.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// A ceiling on the resident set: the triplets are compared in partitions (by anchor)
    /// that fit, written to unnamed scratch files first.
    pub memory_limit: Option<u64>,
    /// Where the partitions are written (default: the system's temporary folder).
    pub scratch_dir: Option<PathBuf>,
}

/// One triplet as the comparison needs it: its anchor and its (positive, negative) pair as
/// 128-bit hashes of the ids' text (so any id type compares, and the same id in either run
/// is the same number without a table of every id), the anchor's label (numbered), the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    anchor: u128,
    pair: u128,
    run: u8,
    label: u32,
}

/// Bytes of a [`Rec`] in a partition file.
const REC_BYTES: usize = 16 + 16 + 1 + 4;

impl Rec {
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(&self.anchor.to_le_bytes())?;
        out.write_all(&self.pair.to_le_bytes())?;
        out.write_all(&[self.run])?;
        out.write_all(&self.label.to_le_bytes())
    }

    fn read(b: &[u8; REC_BYTES]) -> Rec {
        let word = |at: usize| u128::from_le_bytes(b[at..at + 16].try_into().expect("16"));
        Rec {
            anchor: word(0),
            pair: word(16),
            run: b[32],
            label: u32::from_le_bytes(b[33..37].try_into().expect("4")),
        }
    }
}

fn id_hash(id: &str) -> u128 {
    twox_hash::XxHash3_128::oneshot(id.as_bytes())
}

fn pair_hash(positive: &str, negative: &str) -> u128 {
    let mut h = twox_hash::XxHash3_128::new();
    h.write(positive.as_bytes());
    // Not a byte of UTF-8 text: ("ab", "c") and ("a", "bc") differ.
    h.write(&[0xff]);
    h.write(negative.as_bytes());
    h.finish_128()
}

/// The triplets of both runs, split by anchor into partitions that each fit in memory:
/// one in memory without a limit, else unnamed scratch files.
enum Partitions {
    Memory(Vec<Rec>),
    Files {
        files: Vec<BufWriter<File>>,
        dir: PathBuf,
    },
}

impl Partitions {
    /// Partitions for `triplets` records within `options`' limit.
    fn new(triplets: u64, options: &DiffOptions) -> Result<Self> {
        // In memory, sized once from the footers' row counts (no doubling as it fills).
        let in_memory = || Partitions::Memory(Vec::with_capacity(triplets as usize));
        let Some(limit) = options.memory_limit else {
            return Ok(in_memory());
        };
        crate::memory::check_minimum_of(
            "this comparison",
            limit,
            &[(
                "the process holds".to_string(),
                crate::memory::Resident::now().now,
            )],
        )?;
        // Half for a partition's records (sorted in place), the rest for the writers'
        // buffers, the labels' figures and the reader's batches.
        let room = (crate::memory::Scratch::measured(limit).bytes() / 2).max(1 << 16);
        let bytes = triplets.saturating_mul(std::mem::size_of::<Rec>() as u64);
        let count = bytes.div_ceil(room as u64).max(1);
        if count == 1 {
            return Ok(in_memory());
        }
        let dir = options
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let buffer = (room / 2 / count as usize).clamp(4 << 10, 1 << 20);
        let files = (0..count)
            .map(|_| {
                let file = tempfile::tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
                Ok(BufWriter::with_capacity(buffer, file))
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(
            partitions = count,
            triplets,
            "the triplets are compared in partitions by anchor, within the memory limit"
        );
        Ok(Partitions::Files { files, dir })
    }

    fn add(&mut self, rec: Rec) -> Result<()> {
        match self {
            Partitions::Memory(all) => all.push(rec),
            Partitions::Files { files, dir } => {
                let at = ((rec.anchor >> 64) as u64 % files.len() as u64) as usize;
                rec.write(&mut files[at]).map_err(|e| Error::io(&*dir, e))?;
            }
        }
        Ok(())
    }

    /// Hands each partition's records to `compare`, one at a time.
    fn each(self, mut compare: impl FnMut(Vec<Rec>)) -> Result<()> {
        match self {
            Partitions::Memory(all) => compare(all),
            Partitions::Files { files, dir } => {
                for file in files {
                    let mut file = file
                        .into_inner()
                        .map_err(|e| Error::io(&dir, e.into_error()))?;
                    let len = file
                        .seek(SeekFrom::End(0))
                        .map_err(|e| Error::io(&dir, e))?;
                    file.rewind().map_err(|e| Error::io(&dir, e))?;
                    let mut recs = Vec::with_capacity(len as usize / REC_BYTES);
                    let mut input = BufReader::with_capacity(1 << 20, file);
                    let mut b = [0u8; REC_BYTES];
                    for _ in 0..len as usize / REC_BYTES {
                        input.read_exact(&mut b).map_err(|e| Error::io(&dir, e))?;
                        recs.push(Rec::read(&b));
                    }
                    compare(recs);
                }
            }
        }
        Ok(())
    }
}

/// The overlap figures of the anchors of both runs, summed partition by partition.
#[derive(Default)]
struct Overlap {
    anchors: u64,
    jaccard_sum: f64,
    inter_all: u64,
    union_all: u64,
    /// Per label code (a's label of the anchor, else b's): summed Jaccard, anchors.
    by_label: HashMap<u32, (f64, u64)>,
    /// Per run, anchors with triplets per label code (the anchor's label in that run).
    anchors_per_label: [HashMap<u32, u64>; 2],
}

impl Overlap {
    /// Adds one partition: every triplet of its anchors, from both runs.
    fn add(&mut self, mut recs: Vec<Rec>) {
        recs.sort_unstable();
        recs.dedup_by(|x, y| (x.anchor, x.pair, x.run) == (y.anchor, y.pair, y.run));
        let mut at = 0;
        while at < recs.len() {
            let anchor = recs[at].anchor;
            let end = at + recs[at..].partition_point(|r| r.anchor == anchor);
            let (mut sizes, mut inter, mut labels) = ([0u64; 2], 0u64, [None; 2]);
            for (i, r) in recs[at..end].iter().enumerate() {
                sizes[r.run as usize] += 1;
                labels[r.run as usize] = Some(r.label);
                // Sorted by (pair, run): a pair in both runs is two neighbours.
                if r.run == 1 && i > 0 && recs[at + i - 1].pair == r.pair {
                    inter += 1;
                }
            }
            let union = sizes[0] + sizes[1] - inter;
            let j = if union == 0 {
                1.0
            } else {
                inter as f64 / union as f64
            };
            self.anchors += 1;
            self.jaccard_sum += j;
            self.inter_all += inter;
            self.union_all += union;
            let label = labels[0].or(labels[1]).expect("an anchor of a run");
            let e = self.by_label.entry(label).or_default();
            e.0 += j;
            e.1 += 1;
            for (counts, label) in self.anchors_per_label.iter_mut().zip(labels) {
                if let Some(l) = label {
                    *counts.entry(l).or_default() += 1;
                }
            }
            at = end;
        }
    }
}

/// One run's figures per label (its triplets are in the partitions).
struct RunFigures {
    manifest: Option<Manifest>,
    /// Per label: the report's neighbour violation share, when the report is known.
    health: HashMap<String, Option<f64>>,
    per_label: HashMap<String, LabelSums>,
    /// The first value of each label in its input type (a one-row array of its own).
    typed: HashMap<String, ArrayRef>,
    count: u64,
}

impl RunFigures {
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
}

/// Compares two runs in memory.
pub fn diff(a: &Path, b: &Path) -> Result<RunDiff> {
    diff_with(a, b, &DiffOptions::default())
}

/// Compares two runs within `options` (a memory limit: partitions on disk).
pub fn diff_with(a: &Path, b: &Path, options: &DiffOptions) -> Result<RunDiff> {
    let (files_a, manifest_a) = run_files(a)?;
    let (files_b, manifest_b) = run_files(b)?;
    let mut triplets = 0u64;
    for path in files_a.iter().chain(&files_b) {
        triplets += contain_panics(path, || {
            Ok(open_parquet(path)?
                .0
                .metadata()
                .file_metadata()
                .num_rows()
                .max(0) as u64)
        })?;
    }
    let mut parts = Partitions::new(triplets, options)?;
    let mut labels = Interner::default();
    let ra = load(files_a, manifest_a, 0, &mut labels, &mut parts)?;
    let rb = load(files_b, manifest_b, 1, &mut labels, &mut parts)?;
    let mut overlap = Overlap::default();
    parts.each(|recs| overlap.add(recs))?;
    let named = |counts: &HashMap<u32, u64>| -> HashMap<&str, u64> {
        counts.iter().map(|(&l, &n)| (labels.name(l), n)).collect()
    };
    let (anchors_a, anchors_b) = (
        named(&overlap.anchors_per_label[0]),
        named(&overlap.anchors_per_label[1]),
    );
    let jaccard_by_label: HashMap<&str, (f64, u64)> = overlap
        .by_label
        .iter()
        .map(|(&l, &v)| (labels.name(l), v))
        .collect();
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
        anchor_jaccard: if overlap.anchors == 0 {
            1.0
        } else {
            overlap.jaccard_sum / overlap.anchors as f64
        },
        triplet_jaccard: if overlap.union_all == 0 {
            1.0
        } else {
            overlap.inter_all as f64 / overlap.union_all as f64
        },
        labels: per_label.into_iter().map(|(d, _)| d).collect(),
        label_values,
    })
}

/// The labels `names` in their input type: a's type, or text where the runs' types differ.
fn typed_labels(names: &[&String], ra: &RunFigures, rb: &RunFigures) -> Result<ArrayRef> {
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

/// One run's files (`run` 0 or 1): its figures per label; its triplets into `parts`.
fn load(
    files: Vec<PathBuf>,
    manifest: Option<Manifest>,
    run: u8,
    labels: &mut Interner,
    parts: &mut Partitions,
) -> Result<RunFigures> {
    let report = manifest.as_ref().map(|m| m.config.output.report.clone());
    let mut r = RunFigures {
        health: match report.filter(|p| p.exists()) {
            Some(p) => contain_panics(&p, || report_health(&p))?,
            None => HashMap::new(),
        },
        manifest,
        per_label: HashMap::new(),
        typed: HashMap::new(),
        count: 0,
    };
    for path in files {
        contain_panics(&path, || load_file(&path, run, &mut r, labels, parts))?;
    }
    Ok(r)
}

fn load_file(
    path: &Path,
    run: u8,
    r: &mut RunFigures,
    labels: &mut Interner,
    parts: &mut Partitions,
) -> Result<()> {
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
            let l = label.value(i);
            if !r.typed.contains_key(l) {
                // A copy: a slice would keep the whole batch's column alive.
                let value = arrow::compute::concat(&[typed_label.slice(i, 1).as_ref()])?;
                r.typed.insert(l.to_string(), value);
            }
            let c = match r.per_label.get_mut(l) {
                Some(c) => c,
                None => r.per_label.entry(l.to_string()).or_default(),
            };
            c.triplets += 1;
            c.violating += (loss.value(i) > 0.0) as u64;
            c.loss += loss.value(i) as f64;
            parts.add(Rec {
                anchor: id_hash(anchor.value(i)),
                pair: pair_hash(positive.value(i), negative.value(i)),
                run,
                label: labels.code(l),
            })?;
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

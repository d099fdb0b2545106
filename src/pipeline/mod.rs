//! One mining job from end to end: read, index, mine and score, write, report.
//!
//! In: a validated [`MiningConfig`]. Out: the triplets (a Parquet file or a folder of parts)
//! and the report, renamed into place together only once both are complete; an optional JSON
//! summary; a manifest beside the outputs ([`manifest`]); and a [`Summary`]. A rerun whose
//! inputs and configuration match the manifest skips the work. Quality gates are checked last.
//! Pipeline files ([`file`]) describe jobs for schedulers.

pub mod file;
pub mod manifest;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::config::{MiningConfig, MiningParams};
use crate::error::{Error, Result};
use crate::index::set_native_threads;
use crate::io::{
    AtomicPath, Table, TripletSink, read_table, resolve_inputs, write_atomic, write_parquet,
};
use crate::mine::{ANCHOR_BLOCK, Miner, SearchStats, Triplet};
use crate::report::{Report, ReportBuilder, Totals};
use crate::score::{TripletKind, triplet_loss};
use manifest::{
    Manifest, fingerprint, manifest_path, stat_inputs, stat_outputs, up_to_date, write_manifest,
};

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
    pub rows: u64,
    pub dim: usize,
    pub labels: usize,
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

/// A seeded sample of at most `n` of `anchors`, in row order.
fn recall_anchors(anchors: &[u32], n: usize, seed: u64) -> Vec<u32> {
    use rand::SeedableRng;
    // Its own random stream, apart from the anchor sample's.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::mine::mix(seed, u64::MAX, 1, 0));
    let mut picked: Vec<u32> =
        rand::seq::index::sample(&mut rng, anchors.len(), n.min(anchors.len()))
            .into_iter()
            .map(|i| anchors[i])
            .collect();
    picked.sort_unstable();
    picked
}

/// Mines `sample` again with an exact index: the share of its exact triplets the approximate
/// run found (`None` without any), and the share of each anchor's exact `k` nearest rows among
/// the approximate index's `k` candidates.
fn check_recall(
    table: &Table,
    params: &MiningParams,
    approx: &mut Miner,
    sample: &[u32],
    approx_triplets: &[Triplet],
) -> Result<(Option<f64>, f64)> {
    let exact_params = MiningParams {
        index: "Flat".into(),
        check_recall: None,
        nprobe: None,
        ef_search: None,
        ..params.clone()
    };
    let mut exact = Miner::new(table, &exact_params)?;
    let key = |t: &Triplet| (t.anchor, t.positive, t.negative);
    let found: std::collections::HashSet<_> = approx_triplets.iter().map(key).collect();
    let truth = exact.mine_block(sample)?.triplets;
    let negatives = (!truth.is_empty()).then(|| {
        truth.iter().filter(|t| found.contains(&key(t))).count() as f64 / truth.len() as f64
    });
    let k = params.k;
    let (got, want) = (approx.candidates(sample, k)?, exact.candidates(sample, k)?);
    let (mut hit, mut total) = (0usize, 0usize);
    for (g, w) in got.iter().zip(&want) {
        hit += w.iter().filter(|r| g.contains(r)).count();
        total += w.len();
    }
    Ok((negatives, hit as f64 / total.max(1) as f64))
}

/// Label-noise suspects, least agreement first: `id, label, majority_neighbour_label,
/// agreement`.
fn suspects_batch(table: &Table, mut suspects: Vec<(f32, u32, u32)>) -> Result<RecordBatch> {
    suspects.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let rows = UInt32Array::from_iter_values(suspects.iter().map(|s| s.1));
    let majority = UInt32Array::from_iter_values(suspects.iter().map(|s| s.2));
    let schema = Schema::new(vec![
        Field::new("id", table.ids.data_type().clone(), false),
        Field::new("label", table.labels.data_type().clone(), false),
        Field::new(
            "majority_neighbour_label",
            table.label_values.data_type().clone(),
            false,
        ),
        Field::new("agreement", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        take(&table.ids, &rows, None)?,
        take(&table.labels, &rows, None)?,
        take(&table.label_values, &majority, None)?,
        Arc::new(Float32Array::from_iter_values(suspects.iter().map(|s| s.0))),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

/// Figures as JSON, for the report's key-value metadata.
fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("report figures serialise")
}

/// The batch with `entries` added to its schema's metadata (kept in the Parquet file).
fn with_metadata<const N: usize>(
    batch: RecordBatch,
    entries: [(&str, String); N],
) -> Result<RecordBatch> {
    let mut metadata = batch.schema().metadata().clone();
    for (k, v) in entries {
        metadata.insert(k.to_string(), v);
    }
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
    Ok(batch.with_schema(schema)?)
}

/// Runs a mining job as configured: skips it when its manifest says the outputs are up to
/// date (unless `run.force`), and fails after writing when a quality gate holds.
pub fn run(config: &MiningConfig) -> Result<Summary> {
    let files = resolve_inputs(&config.input.paths)?;
    if let Some(path) = config.input.load_index.as_ref().filter(|p| !p.is_file()) {
        return Err(Error::Config(format!(
            "--load-index {}: no such file",
            path.display()
        )));
    }
    // A loaded index is an input too: another file means another run.
    let stat_files: Vec<PathBuf> = files
        .iter()
        .chain(config.input.load_index.as_ref())
        .cloned()
        .collect();
    let inputs = stat_inputs(&stat_files)?;
    let fingerprint = fingerprint(config.options(), &inputs);
    let manifest_file = manifest_path(&config.output.out);
    let summary = match up_to_date(&manifest_file, &fingerprint).filter(|_| !config.run.force) {
        Some(previous) => {
            tracing::info!(
                stage = "skip",
                manifest = %manifest_file.display(),
                "outputs are up to date with the inputs and configuration; nothing to do (force to redo)"
            );
            Summary {
                skipped: true,
                ..previous.summary
            }
        }
        None => {
            let mut pool = rayon::ThreadPoolBuilder::new();
            if let Some(n) = config.run.threads {
                set_native_threads(n);
                pool = pool.num_threads(n);
            }
            let pool = pool.build().map_err(|e| {
                Error::Config(format!(
                    "cannot start {:?} threads: {e}",
                    config.run.threads
                ))
            })?;
            let summary = pool.install(|| run_job(config, &files))?;
            let out = &config.output;
            let mut written = vec![out.out.as_path(), out.report.as_path()];
            written.extend(out.summary_json.as_deref());
            written.extend(config.report.html.as_deref());
            written.extend(config.report.suspects.as_deref());
            let manifest = Manifest {
                tripmine_version: env!("CARGO_PKG_VERSION").into(),
                fingerprint,
                config: config.options().clone(),
                inputs,
                outputs: stat_outputs(&written)?,
                summary: summary.clone(),
            };
            write_manifest(&manifest_file, &manifest)?;
            summary
        }
    };
    let failed: Vec<String> = config
        .output
        .fail_if
        .iter()
        .filter_map(|g| g.check(&summary.totals).map(|v| format!("{g} (it is {v})")))
        .collect();
    if !failed.is_empty() {
        return Err(Error::QualityGate(failed));
    }
    Ok(summary)
}

fn run_job(config: &MiningConfig, files: &[PathBuf]) -> Result<Summary> {
    let started = Instant::now();
    let mut seconds = Timings::default();
    let show = config.run.progress && std::io::stderr().is_terminal();
    let out = &config.output;

    let spinner = progress(show, None, "reading");
    let table = read_table(files, &config.input.columns())?;
    spinner.finish_and_clear();
    seconds.read = started.elapsed().as_secs_f64();
    tracing::info!(
        stage = "read",
        rows = table.rows(),
        dim = table.dim,
        labels = table.num_labels(),
        files = table.sources.len(),
        seconds = seconds.read,
        "input read"
    );

    let t = Instant::now();
    let spinner = progress(show, None, "building index");
    let mut miner = match &config.input.load_index {
        Some(path) => Miner::with_saved_index(&table, &config.mine, path)?,
        None => Miner::new(&table, &config.mine)?,
    };
    if let Some(path) = &out.save_index {
        miner.save_index(path)?;
    }
    spinner.finish_and_clear();
    seconds.index = t.elapsed().as_secs_f64();
    tracing::info!(
        stage = "index",
        rows = table.rows(),
        seconds = seconds.index,
        "index built"
    );

    let t = Instant::now();
    let anchors = miner.anchors();
    let recall_sample = match config.mine.check_recall {
        Some(n) if !miner.exact() => recall_anchors(&anchors, n, config.mine.seed),
        _ => Vec::new(),
    };
    let mut sampled_triplets: Vec<Triplet> = Vec::new();
    let bar = progress(show, Some(anchors.len() as u64), "mining");
    let schema = triplet_schema(&table);
    let mut sink = TripletSink::create(&out.out, schema.clone(), out.max_rows_per_file)?;
    let mut report = ReportBuilder::new(config.mine.margin);
    // (agreement, row, majority label) of every label-noise suspect.
    let mut suspects: Vec<(f32, u32, u32)> = Vec::new();
    let margin = config.mine.margin;
    for block in anchors.chunks(ANCHOR_BLOCK) {
        let mined = miner.mine_block(block)?;
        sink.write(&triplet_batch(&table, &schema, &mined.triplets, margin)?)?;
        if !recall_sample.is_empty() {
            sampled_triplets.extend(
                mined
                    .triplets
                    .iter()
                    .filter(|t| recall_sample.binary_search(&t.anchor).is_ok()),
            );
        }
        suspects.extend(mined.anchors.iter().filter_map(|a| {
            let n = a.neighbour_labels?;
            n.suspect(a.label)
                .then_some((n.agreement, a.anchor, n.majority))
        }));
        report.add(&mined.triplets, &mined.anchors, |r| {
            table.label_codes[r as usize]
        });
        bar.inc(block.len() as u64);
    }
    bar.finish_and_clear();
    let triplets_file = sink.close()?;
    seconds.mine = t.elapsed().as_secs_f64();
    seconds.search = miner.search_stats();
    tracing::info!(
        stage = "mine",
        rows = anchors.len(),
        seconds = seconds.mine,
        "mined and scored"
    );

    let t = Instant::now();
    let Report {
        batch,
        mut totals,
        histogram,
    } = report.finish(&table.label_values)?;
    totals.embedding_spread = Some(miner.embedding_spread());
    if !recall_sample.is_empty() {
        let t = Instant::now();
        let (negatives, candidates) = check_recall(
            &table,
            &config.mine,
            &mut miner,
            &recall_sample,
            &sampled_triplets,
        )?;
        totals.recall_negatives = negatives;
        totals.recall_candidates = Some(candidates);
        tracing::info!(
            stage = "recall",
            rows = recall_sample.len(),
            negatives,
            candidates,
            seconds = t.elapsed().as_secs_f64(),
            "recall against an exact search"
        );
    }
    let warnings = totals.collapse_warnings(margin);
    for w in &warnings {
        tracing::warn!(stage = "report", "{w}");
    }
    let batch = with_metadata(
        batch,
        [
            ("tripmine.totals", json(&totals)),
            ("tripmine.histogram", json(&histogram)),
            // What shaped the outputs; `run` (threads, progress) changes none of them.
            ("tripmine.config", json(&config.shaping())),
            ("tripmine.warnings", json(&warnings)),
        ],
    )?;
    let report_file = AtomicPath::new(&out.report)?;
    write_parquet(report_file.tmp(), &batch)?;
    let suspects_file = match &config.report.suspects {
        Some(path) => {
            let target = AtomicPath::new(path)?;
            write_parquet(target.tmp(), &suspects_batch(&table, suspects)?)?;
            Some(target)
        }
        None => None,
    };
    let html_file = match &config.report.html {
        Some(path) => {
            let target = AtomicPath::new(path)?;
            let page = crate::report::html::render(&crate::report::html::Page {
                batch: &batch,
                totals: &totals,
                histogram: &histogram,
                options: config.options(),
                warnings: &warnings,
            });
            std::fs::write(target.tmp(), page).map_err(|e| Error::io(target.tmp(), e))?;
            Some(target)
        }
        None => None,
    };
    seconds.report = t.elapsed().as_secs_f64();
    tracing::info!(
        stage = "report",
        rows = batch.num_rows(),
        seconds = seconds.report,
        "report computed"
    );
    seconds.total = started.elapsed().as_secs_f64();

    let summary = Summary {
        tripmine_version: env!("CARGO_PKG_VERSION").into(),
        inputs: table.sources.iter().map(|s| s.path.clone()).collect(),
        rows: table.rows() as u64,
        dim: table.dim,
        labels: table.num_labels(),
        params: config.mine.clone(),
        index: miner.index_info().factory.clone(),
        exact: miner.exact(),
        out: out.out.clone(),
        report: out.report.clone(),
        totals,
        seconds,
        skipped: false,
        warnings,
    };
    // Every output is complete: rename them into place.
    triplets_file.commit()?;
    report_file.commit()?;
    for f in [html_file, suspects_file].into_iter().flatten() {
        f.commit()?;
    }
    if let Some(path) = &out.summary_json {
        let json = serde_json::to_vec_pretty(&summary).expect("summary serialises");
        write_atomic(path, &json)?;
    }
    tracing::info!(
        stage = "done",
        rows = summary.rows,
        triplets = summary.totals.triplets,
        seconds = summary.seconds.total,
        "finished"
    );
    Ok(summary)
}

/// A progress bar (or spinner without a length) on stderr, hidden unless `show`.
fn progress(show: bool, len: Option<u64>, message: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {human_pos}/{human_len} anchors, {elapsed} elapsed, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => {
            let s = ProgressBar::new_spinner();
            s.enable_steady_tick(std::time::Duration::from_millis(120));
            s
        }
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.with_message(message)
}

/// Schema of the triplet output; ids and labels keep their input types.
pub fn triplet_schema(table: &Table) -> SchemaRef {
    let id = table.ids.data_type().clone();
    let label = table.labels.data_type().clone();
    Arc::new(Schema::new(vec![
        Field::new("anchor_id", id.clone(), false),
        Field::new("positive_id", id.clone(), false),
        Field::new("negative_id", id, false),
        Field::new("anchor_label", label.clone(), false),
        Field::new("negative_label", label, false),
        Field::new("d_ap", DataType::Float32, false),
        Field::new("d_an", DataType::Float32, false),
        Field::new("loss", DataType::Float32, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("negative_rank", DataType::UInt32, false),
    ]))
}

/// The output rows of `triplets`.
pub fn triplet_batch(
    table: &Table,
    schema: &SchemaRef,
    triplets: &[Triplet],
    margin: f32,
) -> Result<RecordBatch> {
    let rows = |f: fn(&Triplet) -> u32| UInt32Array::from_iter_values(triplets.iter().map(f));
    let (anchors, positives, negatives) = (
        rows(|t| t.anchor),
        rows(|t| t.positive),
        rows(|t| t.negative),
    );
    let columns: Vec<ArrayRef> = vec![
        take(&table.ids, &anchors, None)?,
        take(&table.ids, &positives, None)?,
        take(&table.ids, &negatives, None)?,
        take(&table.labels, &anchors, None)?,
        take(&table.labels, &negatives, None)?,
        Arc::new(Float32Array::from_iter_values(
            triplets.iter().map(|t| t.d_ap),
        )),
        Arc::new(Float32Array::from_iter_values(
            triplets.iter().map(|t| t.d_an),
        )),
        Arc::new(Float32Array::from_iter_values(
            triplets
                .iter()
                .map(|t| triplet_loss(t.d_ap, t.d_an, margin)),
        )),
        Arc::new(StringArray::from_iter_values(
            triplets
                .iter()
                .map(|t| TripletKind::classify(t.d_ap, t.d_an, margin).as_str()),
        )),
        Arc::new(rows(|t| t.negative_rank)),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
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
        writeln!(
            f,
            "  input      {} rows x {} dims, {} labels, {} file(s)",
            self.rows,
            self.dim,
            self.labels,
            self.inputs.len()
        )?;
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
        writeln!(
            f,
            "  health     {} of anchors have an other-label nearest neighbour within d(a, hardest positive) + margin",
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

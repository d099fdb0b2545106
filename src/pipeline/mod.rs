//! One mining job from end to end: read, index, mine and score, write, report.
//!
//! In: a validated [`MiningConfig`]. Out: the triplets (a Parquet file or a folder of parts)
//! and the report, renamed into place together only once both are complete; an optional JSON
//! summary; a manifest beside the outputs ([`manifest`]); and a [`Summary`]. A rerun whose
//! inputs and configuration match the manifest skips the work. Quality gates are checked last.
//! Pipeline files ([`file`]) describe jobs for schedulers.

pub mod file;
mod guard;
pub mod manifest;
mod outputs;
mod recall;
mod summary;

pub use outputs::OutputLayout;
pub use summary::{Summary, Timings, search_note};

use outputs::{Batcher, json, suspects_batch, with_metadata};
use recall::RecallPlan;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Metric;
use crate::config::MiningConfig;
use crate::error::{Error, Result};
use crate::io::{
    AtomicPath, Queries, ReadOptions, Table, TripletSink, Vectors, read_retrieval, read_table_with,
    resolve_inputs, write_atomic, write_parquet_into,
};
use crate::mine::{MinedBlock, Miner, Triplet};
use crate::process::{BlasThreads, OpenMpThreads, release_free_heap, set_openmp_threads};
use crate::report::{Report, ReportBuilder};
use manifest::{
    Manifest, fingerprint, manifest_path, stat_inputs, stat_outputs, up_to_date, write_manifest,
};

/// Runs a mining job as configured: skips it when its manifest says the outputs are up to
/// date (unless `run.force`), and fails after writing when a quality gate holds.
pub fn run(config: &MiningConfig) -> Result<Summary> {
    let files = resolve_inputs(&config.input.all_paths())?;
    guard::refuse_outputs_over_inputs(config.options(), &files)?;
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
            tracing::debug!(threads = live_threads(), "starting the job");
            let mut pool = rayon::ThreadPoolBuilder::new();
            // Native thread caps for this job only: restored when it ends.
            let _caps = config
                .run
                .threads
                .map(|n| (OpenMpThreads::cap(n), BlasThreads::cap(n)));
            if let Some(n) = config.run.threads {
                // FAISS runs on the pool's workers, whose OpenMP setting is their own.
                pool = pool
                    .num_threads(n)
                    .start_handler(move |_| set_openmp_threads(n));
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
    let started_at = std::time::SystemTime::now();
    let mut seconds = Timings::default();
    let show = config.run.progress && std::io::stderr().is_terminal();
    let out = &config.output;
    // Under a memory limit freed heap counts against it: trimmed between stages.
    let bounded = config.mine.memory_limit.is_some();

    let spinner = progress(show, None, "reading");
    // Spilled vectors and the report's triplet columns go here.
    let scratch = config
        .run
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let read_options = ReadOptions {
        memory_limit: config.mine.memory_limit.map(|b| b.0),
        scratch_dir: Some(scratch.clone()),
        normalize_if_spilled: config.mine.metric == Metric::Cosine,
    };
    let (mut table, mut queries): (Table, Option<Queries>) = if config.input.retrieval() {
        let (corpus, queries) = read_retrieval(&config.input, &read_options)?;
        (corpus, Some(queries))
    } else {
        let table = read_table_with(files, &config.input.columns(), &read_options)?;
        (table, None)
    };
    if queries.is_none() && !config.input.allow_duplicate_ids {
        let id_column = config.input.id_col.as_deref().unwrap_or("id");
        table.check_unique_ids(id_column, " (--allow-duplicate-ids to mine them anyway)")?;
    }
    // Anchor ids, labels and columns come from here; candidates' from `table`.
    let anchor_table = queries.as_ref().map_or(&table, |q| &q.table);
    spinner.finish_and_clear();
    seconds.read = started.elapsed().as_secs_f64();
    tracing::info!(
        stage = "read",
        rows = table.rows(),
        queries = queries.as_ref().map(|q| q.table.rows()),
        dim = table.dim,
        labels = table.num_labels(),
        files = files.len(),
        spilled = table.vectors.is_spilled(),
        seconds = seconds.read,
        rss_mib = rss_mib(),
        peak_rss_mib = peak_rss_mib(),
        "input read"
    );
    release_free_heap(bounded);

    let t = Instant::now();
    let spinner = progress(show, None, "building index");
    let saved = config.input.load_index.as_deref();
    let mut miner = match (&queries, saved) {
        (Some(q), saved) => Miner::retrieval(&table, q, &config.mine, saved)?,
        (None, Some(path)) => Miner::with_saved_index(&table, &config.mine, path)?,
        (None, None) => Miner::new(&table, &config.mine)?,
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
        rss_mib = rss_mib(),
        peak_rss_mib = peak_rss_mib(),
        "index built"
    );
    release_free_heap(bounded);

    let t = Instant::now();
    let anchors = miner.anchors();
    let spinner = progress(show, None, "measuring recall");
    let RecallPlan {
        truth: mut recall_truth,
        tuning,
        auto,
    } = recall::prepare(&config.mine, &mut miner, &anchors)?;
    spinner.finish_and_clear();
    let recall_sample: &[u32] = recall_truth.as_ref().map_or(&[], |t| &t.anchors);
    seconds.tune = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let search_before = miner.search_stats();
    let mut sampled_triplets: Vec<Triplet> = Vec::new();
    let bar = progress(show, Some(anchors.len() as u64), "mining");
    let layout = OutputLayout::new(
        anchor_table,
        &table,
        &config.mine,
        out.format,
        &config.input.with,
    )?;
    let mut sink = TripletSink::create(&out.out, layout.schema(), out.max_rows_per_file)?;
    let mut report = ReportBuilder::spilling(config.mine.margin, &scratch)?;
    // (agreement, row, majority label) of every label-noise suspect.
    let mut suspects: Vec<(f32, u32, u32)> = Vec::new();
    let mut batcher = Batcher::default();
    let mut emit = |mined: &MinedBlock| -> Result<()> {
        batcher.add(&mined.triplets, |t| sink.write(&layout.batch(t)?))?;
        suspects.extend(mined.anchors.iter().filter_map(|a| {
            let n = a.neighbour_labels?;
            n.suspect(a.label)
                .then_some((n.agreement, a.anchor, n.majority))
        }));
        report.add(&mined.triplets, &mined.anchors, |r| {
            anchor_table.label_codes[r as usize]
        })
    };
    // The reuse cap compares anchors across blocks: hold every block until all are mined.
    let hold = config.mine.max_negative_reuse.is_some();
    let mut held: Vec<MinedBlock> = Vec::new();
    let mut start = 0;
    while start < anchors.len() {
        // Asked again for every window: under a memory limit it follows the results so far.
        let window = &anchors[start..(start + miner.window_len()).min(anchors.len())];
        start += window.len();
        let mut mined = miner.mine_window(window, |n| bar.inc(n as u64))?;
        if !recall_sample.is_empty() {
            sampled_triplets.extend(
                mined
                    .triplets
                    .iter()
                    .filter(|t| recall_sample.binary_search(&t.anchor).is_ok()),
            );
        }
        if hold {
            held.push(mined);
        } else {
            miner.finish(std::slice::from_mut(&mut mined));
            emit(&mined)?;
        }
        release_free_heap(bounded);
        tracing::debug!(
            stage = "mine",
            anchors = window.len(),
            threads = live_threads(),
            rss_mib = rss_mib(),
            peak_rss_mib = peak_rss_mib(),
            "anchors mined"
        );
    }
    if hold {
        miner.finish(&mut held);
        for mined in &held {
            emit(mined)?;
        }
    }
    batcher.finish(|t| sink.write(&layout.batch(t)?))?;
    bar.finish_and_clear();
    let triplets_file = sink.close()?;
    seconds.mine = t.elapsed().as_secs_f64();
    seconds.search = miner.search_stats().since(search_before);
    tracing::info!(
        stage = "mine",
        rows = anchors.len(),
        seconds = seconds.mine,
        rss_mib = rss_mib(),
        peak_rss_mib = peak_rss_mib(),
        "mined and scored"
    );

    let t = Instant::now();
    let embedding_spread = miner.embedding_spread();
    let recall = match &mut recall_truth {
        None => None,
        Some(truth) => {
            let t = Instant::now();
            let recall = miner.recall_of(truth, &sampled_triplets, true)?;
            tracing::info!(
                stage = "recall",
                rows = recall.anchors,
                negatives = recall.negatives.map(|e| e.value),
                candidates = recall.candidates.map(|e| e.value),
                seconds = t.elapsed().as_secs_f64(),
                "recall against an exact search"
            );
            Some(recall)
        }
    };
    // The vectors and the index are done with: free them before the report's group-by.
    let (index_factory, exact) = (miner.index_info().factory.clone(), miner.exact());
    drop(miner);
    let label_values = anchor_table.label_values.clone();
    table.vectors = Vectors::default();
    if let Some(q) = &mut queries {
        q.table.vectors = Vectors::default();
    }
    let Report {
        batch,
        mut totals,
        histogram,
    } = report.finish(&label_values)?;
    totals.embedding_spread = Some(embedding_spread);
    if let Some(recall) = &recall {
        recall::record(&mut totals, recall, config.mine.target_recall);
    }
    let mut warnings = totals.warnings(&config.mine);
    if let Some(t) = tuning.as_ref().filter(|t| !t.met && !exact)
        && let Some(why) = &t.stopped
    {
        warnings.insert(
            0,
            format!(
                "tuning did not reach recall {} ({why}); mined with {}",
                t.target, t.settled
            ),
        );
    }
    let search_note = summary::search_note(tuning.as_ref(), auto.as_ref(), exact);
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
            (
                "tripmine.search",
                json(&serde_json::json!({ "tuning": &tuning, "auto": &auto })),
            ),
        ],
    )?;
    let report_file = AtomicPath::new(&out.report)?;
    write_parquet_into(&report_file, &batch)?;
    let suspects_file = match &config.report.suspects {
        Some(path) => {
            let target = AtomicPath::new(path)?;
            write_parquet_into(&target, &suspects_batch(&table, suspects)?)?;
            Some(target)
        }
        None => None,
    };
    let labels = if queries.is_some() {
        0
    } else {
        table.num_labels()
    };
    let query_rows = queries.as_ref().map(|q| q.table.rows() as u64);
    let html_file = match &config.report.html {
        Some(path) => {
            let target = AtomicPath::new(path)?;
            let page = crate::report::html::render(&crate::report::html::Page {
                batch: &batch,
                totals: &totals,
                histogram: &histogram,
                options: config.options(),
                warnings: &warnings,
                facts: crate::report::html::RunFacts {
                    rows: table.rows() as u64,
                    dim: table.dim,
                    labels,
                    queries: query_rows,
                    index: &index_factory,
                    exact,
                    search: search_note.clone(),
                    started: started_at,
                },
            });
            target.write(page.as_bytes())?;
            Some(target)
        }
        None => None,
    };
    seconds.report = t.elapsed().as_secs_f64();
    tracing::info!(
        stage = "report",
        rows = batch.num_rows(),
        seconds = seconds.report,
        rss_mib = rss_mib(),
        peak_rss_mib = peak_rss_mib(),
        "report computed"
    );
    seconds.total = started.elapsed().as_secs_f64();

    let summary = Summary {
        tripmine_version: env!("CARGO_PKG_VERSION").into(),
        inputs: files.to_vec(),
        rows: table.rows() as u64,
        dim: table.dim,
        labels,
        queries: query_rows,
        unknown_queries: queries.as_ref().map_or(0, |q| q.unknown_queries),
        params: config.mine.clone(),
        index: index_factory,
        exact,
        out: out.out.clone(),
        report: out.report.clone(),
        other_outputs: config
            .options()
            .outputs()
            .into_iter()
            .skip(2)
            .map(|(_, p)| p.to_path_buf())
            .collect(),
        totals,
        seconds,
        skipped: false,
        warnings,
        tuning,
        auto,
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
        rss_mib = rss_mib(),
        peak_rss_mib = peak_rss_mib(),
        "finished"
    );
    Ok(summary)
}

/// The bar on screen, if any: log lines are written above it ([`log_writer`]).
static ON_SCREEN: std::sync::Mutex<Option<ProgressBar>> = std::sync::Mutex::new(None);

/// Stderr for log lines that share the terminal with the progress bars: each line is written
/// with the bar lifted, so it neither breaks the bar nor is left tangled with it.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// See [`log_writer`].
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|_| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let bar = ON_SCREEN.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) if !bar.is_finished() => {
                bar.suspend(|| std::io::Write::write_all(&mut std::io::stderr(), buf))
            }
            _ => std::io::Write::write_all(&mut std::io::stderr(), buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut std::io::stderr())
    }
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
        None => ProgressBar::new_spinner(),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let bar = bar.with_message(message);
    // Drawn now, and kept fresh while a block takes long: the bar replaces the previous
    // stage's line at once, not at the end of the first block.
    bar.enable_steady_tick(std::time::Duration::from_millis(if len.is_some() {
        500
    } else {
        120
    }));
    if let Ok(mut on_screen) = ON_SCREEN.lock() {
        *on_screen = Some(bar.clone());
    }
    bar
}

/// Threads of this process now (Linux), for the debug log: how many `--threads` allowed.
fn live_threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// The resident set now, in MiB (for stage logs).
fn rss_mib() -> u64 {
    crate::memory::mib(crate::memory::Resident::now().now)
}

/// The highest resident set so far, in MiB (for stage logs).
fn peak_rss_mib() -> u64 {
    crate::memory::mib(crate::memory::Resident::now().peak)
}

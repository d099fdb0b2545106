//! One mining job from end to end: read, index, mine and score, write, report.
//!
//! In: a validated [`MiningConfig`]. Out: the triplets (a Parquet file or a folder of parts)
//! and the report, renamed into place together only once both are complete; an optional JSON
//! summary; a manifest beside the outputs ([`manifest`]); and a [`Summary`]. A rerun whose
//! inputs and configuration match the manifest skips the work. Quality gates are checked last.
//! Pipeline files ([`pipeline_file`]) describe jobs for schedulers.

mod blocks;
mod delta;
pub mod distributed;
mod guard;
mod job;
pub mod manifest;
mod outputs;
pub mod pipeline_file;
mod recall;
mod state;
mod summary;

pub use outputs::OutputLayout;
pub use state::Changes;
pub use summary::{Summary, Timings, search_note};

use job::run_job;
pub use job::{ABORT_POINTS, SEGMENT_ABORT_POINT};

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::MiningConfig;
use crate::error::{Error, Result};
use crate::io::{BatchSource, resolve_inputs};
use crate::process::{BlasThreads, OpenMpThreads, RunningJob, set_openmp_threads};
use manifest::{
    Manifest, fingerprint, manifest_path, stat_inputs, stat_outputs, up_to_date, write_manifest,
};

/// Runs a mining job as configured: skips it when its manifest says the outputs are up to
/// date (unless `run.force`), and fails after writing when a quality gate holds.
pub fn run(config: &MiningConfig) -> Result<Summary> {
    run_from(config, None)
}

/// Runs a mining job on rows the host hands over as Arrow batches instead of `input.paths`
/// (labelled mode; see [`MiningConfig::for_batches`]). Everything else is as [`run`]: the
/// same outputs, report, manifest and gates. The rows have no fingerprint, so the manifest
/// never lets such a job be skipped.
pub fn run_batches(config: &MiningConfig, batches: BatchSource) -> Result<Summary> {
    if !config.input.paths.is_empty() || config.input.retrieval() {
        return Err(Error::Config(
            "rows handed over in memory replace the input files: give no --in, --queries or --corpus".into(),
        ));
    }
    run_from(config, Some(batches))
}

fn run_from(config: &MiningConfig, batches: Option<BatchSource>) -> Result<Summary> {
    let _running = RunningJob::start();
    let in_memory = batches.is_some();
    let run = RunIdentity::of(config, in_memory)?;
    let manifest_file = manifest_path(&config.output.out);
    // Rows handed over in memory have no fingerprint: their manifest is never read back.
    let previous = (!config.run.force && !in_memory)
        .then(|| up_to_date(&manifest_file, &run.fingerprint))
        .flatten();
    let summary = match previous {
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
            let summary = in_job_pool(config.run.threads, || run_job(config, &run.files, batches))?;
            run.record(config, &summary)?;
            summary
        }
    };
    gate(config, summary)
}

/// What a run's outputs are checked against: its input files, their stats, and the
/// fingerprint of those and of the options.
struct RunIdentity {
    files: Vec<PathBuf>,
    inputs: Vec<manifest::InputStat>,
    fingerprint: String,
}

impl RunIdentity {
    /// Resolves the inputs (none for rows handed over in memory) and refuses outputs that
    /// would overwrite them, or a saved index that is not there.
    fn of(config: &MiningConfig, in_memory: bool) -> Result<Self> {
        let files = if in_memory {
            Vec::new()
        } else {
            resolve_inputs(&config.input.all_paths())?
        };
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
        Ok(RunIdentity {
            files,
            inputs,
            fingerprint,
        })
    }

    /// Writes the manifest of a finished run beside its outputs.
    fn record(&self, config: &MiningConfig, summary: &Summary) -> Result<()> {
        let out = &config.output;
        let mut written = vec![out.out.as_path(), out.report.as_path()];
        written.extend(out.summary_json.as_deref());
        written.extend(config.report.html.as_deref());
        written.extend(config.report.suspects.as_deref());
        let manifest = Manifest {
            tripmine_version: env!("CARGO_PKG_VERSION").into(),
            fingerprint: self.fingerprint.clone(),
            config: config.options().clone(),
            inputs: self.inputs.clone(),
            outputs: stat_outputs(&written)?,
            summary: summary.clone(),
        };
        job::abort_point("committed");
        write_manifest(&manifest_path(&out.out), &manifest)
    }
}

/// Runs `work` on a thread pool of `threads` (all cores when `None`), with the native
/// libraries' thread caps (OpenMP, BLAS) set for this job only and restored when it ends.
fn in_job_pool<T: Send>(
    threads: Option<usize>,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let mut pool = rayon::ThreadPoolBuilder::new();
    let _caps = threads.map(|n| (OpenMpThreads::cap(n), BlasThreads::cap(n)));
    if let Some(n) = threads {
        // FAISS runs on the pool's workers, whose OpenMP setting is their own.
        pool = pool
            .num_threads(n)
            .start_handler(move |_| set_openmp_threads(n));
    }
    let pool = pool
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads:?} threads: {e}")))?;
    pool.install(work)
}

/// The summary, or [`Error::QualityGate`] when a `fail_if` gate holds on it.
fn gate(config: &MiningConfig, summary: Summary) -> Result<Summary> {
    let failed: Vec<String> = config
        .output
        .fail_if
        .iter()
        .filter_map(|g| g.check(&summary.totals).map(|v| format!("{g} (it is {v})")))
        .collect();
    if !failed.is_empty() {
        return Err(Error::QualityGate {
            failed,
            summary: Box::new(summary),
        });
    }
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

/// The resident set now and its highest so far, in MiB (for stage logs), from one read of
/// `/proc/self/status`.
fn resident_mib() -> (u64, u64) {
    let r = crate::memory::Resident::now();
    (crate::memory::mib(r.now), crate::memory::mib(r.peak))
}

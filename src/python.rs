//! The Python bindings (`tripmine._native`, feature `python`): the job behind `tripmine.mine`
//! and `tripmine.run` of the Python package in `python/tripmine/`.
//!
//! In: options as JSON (Python keyword arguments, named as the CLI's flags with underscores),
//! and optionally an Arrow stream (anything with `__arrow_c_stream__`, crossing without a
//! copy). Out: the job's summary as JSON; the outputs are the files the CLI writes.
//! Options are checked by the same code as the CLI's and pipeline files' ([`MiningConfig`]).
//!
//! The job runs on its own thread with the GIL released; the calling thread waits for it,
//! forwarding its log events to Python's `logging` (logger `tripmine`) and turning Ctrl-C into
//! [`crate::process::interrupt`]. Nothing process-wide is set behind the caller's back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use arrow::ffi_stream::RecordBatchStreamReader;
use arrow::pyarrow::PyArrowType;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::config::{
    InputOptions, MiningConfig, MiningOptions, MiningParams, OutputOptions, ReportOptions,
    RunOptions,
};
use crate::error::{Error, ErrorClass};
use crate::io::BatchSource;
use crate::pipeline::{distributed, pipeline_file};

create_exception!(
    tripmine,
    TripmineError,
    PyException,
    "Base of tripmine's errors; `exit_code` is the CLI's exit code for it."
);
create_exception!(
    tripmine,
    ConfigError,
    TripmineError,
    "Bad options or pipeline file (the CLI exits 2)."
);
create_exception!(
    tripmine,
    DataError,
    TripmineError,
    "Bad input data; the message names the input, column and row (the CLI exits 3)."
);
create_exception!(
    tripmine,
    RunError,
    TripmineError,
    "The job failed while running: I/O, FAISS, or a bug (the CLI exits 1)."
);
create_exception!(
    tripmine,
    QualityGateError,
    TripmineError,
    "The outputs were written, but a `fail_if` gate held (the CLI exits 4)."
);

/// One option as Python spells it, and where it lives in [`MiningOptions`].
struct PyOption {
    /// The keyword argument: the CLI flag with underscores (`num_negatives`).
    name: String,
    /// The flag's aliases, spelled the same way (`check_recall`).
    aliases: Vec<String>,
    section: &'static str,
    field: String,
    help: String,
}

/// Every option, read from the clap definitions (the one list of options there is).
fn py_options() -> &'static [PyOption] {
    static OPTIONS: std::sync::OnceLock<Vec<PyOption>> = std::sync::OnceLock::new();
    OPTIONS.get_or_init(|| {
        use clap::Args;
        let sections: [(&'static str, clap::Command); 5] = [
            ("input", InputOptions::augment_args(clap::Command::new("x"))),
            ("mine", MiningParams::augment_args(clap::Command::new("x"))),
            (
                "output",
                OutputOptions::augment_args(clap::Command::new("x")),
            ),
            (
                "report",
                ReportOptions::augment_args(clap::Command::new("x")),
            ),
            ("run", RunOptions::augment_args(clap::Command::new("x"))),
        ];
        let mut all = Vec::new();
        for (section, command) in sections {
            for arg in command.get_arguments() {
                let field = arg.get_id().as_str().to_string();
                let Some(long) = arg.get_long() else { continue };
                // `--in` is `paths` (what `source` sets); `--no-progress` is `progress=False`.
                let name = match long {
                    "in" => "paths".to_string(),
                    "no-progress" => "progress".to_string(),
                    long => long.replace('-', "_"),
                };
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let aliases = arg
                    .get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| a.replace('-', "_"))
                    .collect();
                all.push(PyOption {
                    name,
                    aliases,
                    section,
                    field,
                    help,
                });
            }
        }
        all
    })
}

fn find_option(name: &str) -> Option<&'static PyOption> {
    py_options()
        .iter()
        .find(|o| o.name == name || o.aliases.iter().any(|a| a == name))
}

/// The Python name of a pipeline-file key (`mine.num_negatives` is `num_negatives`).
fn py_name_of_key(key: &str) -> String {
    let (section, field) = key.split_once('.').unwrap_or(("", key));
    py_options()
        .iter()
        .find(|o| o.section == section && o.field == field)
        .map_or_else(|| field.to_string(), |o| o.name.clone())
}

/// Options from Python keyword arguments (a JSON object; `null` means unset): unknown names
/// and values of the wrong type are refused naming the argument.
fn options_from_json(json: &str) -> Result<MiningOptions, Error> {
    let given: BTreeMap<String, serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| Error::Config(format!("options are not a JSON object: {e}")))?;
    let mut sections: BTreeMap<&'static str, serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    for (name, value) in given {
        if value.is_null() {
            continue;
        }
        let Some(option) = find_option(&name) else {
            return Err(Error::Config(unknown_option(&name)));
        };
        // Checked one at a time, so that a type error names its argument.
        let one = serde_json::json!({ option.section: { option.field.clone(): value.clone() } });
        serde_json::from_value::<MiningOptions>(one)
            .map_err(|e| Error::Config(format!("{name}={value}: {}", strip_serde_position(&e))))?;
        sections
            .entry(option.section)
            .or_default()
            .insert(option.field.clone(), value);
    }
    let all = serde_json::to_value(sections).expect("maps of JSON values serialise");
    serde_json::from_value(all).map_err(|e| Error::Config(e.to_string()))
}

fn strip_serde_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn unknown_option(name: &str) -> String {
    let near: Vec<&str> = py_options()
        .iter()
        .map(|o| o.name.as_str())
        .filter(|o| edit_distance(o, name) <= 2 || o.contains(name) || name.contains(o))
        .collect();
    let hint = match near.as_slice() {
        [] => String::new(),
        some => format!("; did you mean {}?", some.join(", ")),
    };
    format!("unknown option `{name}`{hint}")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The Python exception of a library error, its message naming options as Python does.
fn to_py_err(e: Error) -> PyErr {
    if let Error::Interrupted = e {
        return pyo3::exceptions::PyKeyboardInterrupt::new_err(e.to_string());
    }
    if let Error::QualityGate { summary, .. } = &e {
        let summary = serde_json::to_string(summary).expect("summaries serialise");
        let err = QualityGateError::new_err(e.to_string());
        Python::attach(|py| {
            // `tripmine.mine` reads it back into `QualityGateError.summary` and `.result`.
            let _ = err.value(py).setattr("summary_json", summary);
        });
        return err;
    }
    let message = match &e {
        Error::Invalid { key, message } => {
            format!("invalid configuration: {} {message}", py_name_of_key(key))
        }
        e => e.to_string(),
    };
    match e.class() {
        ErrorClass::Config => ConfigError::new_err(message),
        ErrorClass::Data => DataError::new_err(message),
        ErrorClass::Runtime => RunError::new_err(message),
        ErrorClass::QualityGate => QualityGateError::new_err(message),
    }
}

/// Threads of a job that sets none (`set_threads`); 0: all cores.
static DEFAULT_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Log events waiting to be handed to Python's `logging` by the thread that waits for the job.
static LOG_QUEUE: Mutex<Vec<(u8, String)>> = Mutex::new(Vec::new());
/// The most detailed level forwarded: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(2);

fn level_number(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

/// Queues the library's events at the level Python's `tripmine` logger wants.
struct PythonLogging;

impl<S: Subscriber> Layer<S> for PythonLogging {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        // The level follows Python's logger, so it is asked at every event.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        level_number(metadata.level()) <= LOG_LEVEL.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut text = EventText::default();
        event.record(&mut text);
        let line = if text.fields.is_empty() {
            text.message
        } else {
            format!("{} ({})", text.message, text.fields.join(", "))
        };
        if let Ok(mut queue) = LOG_QUEUE.lock() {
            queue.push((level_number(event.metadata().level()), line));
        }
    }
}

#[derive(Default)]
struct EventText {
    message: String,
    fields: Vec<String>,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push(format!("{}={value:?}", field.name()));
        }
    }
}

/// `logging.getLogger("tripmine")`.
fn tripmine_logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    py.import("logging")?
        .call_method1("getLogger", ("tripmine",))
}

/// Hands the queued events to Python's `tripmine` logger.
fn forward_logs(py: Python<'_>) -> PyResult<()> {
    let events = std::mem::take(&mut *LOG_QUEUE.lock().expect("log queue"));
    if events.is_empty() {
        return Ok(());
    }
    let logger = tripmine_logger(py)?;
    for (level, line) in events {
        let py_level = [40, 40, 30, 20, 10, 5][level as usize];
        logger.call_method1("log", (py_level, "%s", line))?;
    }
    Ok(())
}

/// Sets the forwarded level from Python's `tripmine` logger, as it is now.
fn follow_python_log_level(py: Python<'_>) -> PyResult<()> {
    let level: i64 = tripmine_logger(py)?
        .call_method0("getEffectiveLevel")?
        .extract()?;
    let number = match level {
        l if l >= 40 => 1,
        l if l >= 30 => 2,
        l if l >= 20 => 3,
        l if l >= 10 => 4,
        _ => 5,
    };
    LOG_LEVEL.store(number, Ordering::Relaxed);
    Ok(())
}

/// Runs `job` on its own thread with the GIL released; meanwhile forwards logs and, when
/// Python has a pending signal (Ctrl-C), interrupts the job, waits for it to stop and raises.
fn run_detached<T: Send + 'static>(
    py: Python<'_>,
    job: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> PyResult<T> {
    follow_python_log_level(py)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("tripmine-job".into())
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(|e| RunError::new_err(format!("cannot start the job's thread: {e}")))?;
    // Borrowed by the closures that run without the GIL, which must be shareable.
    let rx = Mutex::new(rx);
    let wait = |timeout: Option<Duration>| {
        py.detach(|| {
            let rx = rx.lock().expect("one waiter");
            match timeout {
                Some(t) => rx.recv_timeout(t),
                None => rx
                    .recv()
                    .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
            }
        })
    };
    loop {
        let received = wait(Some(Duration::from_millis(50)));
        forward_logs(py)?;
        match received {
            Ok(result) => {
                let _ = handle.join();
                return result.map_err(to_py_err);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(signal) = py.check_signals() {
                    crate::process::interrupt();
                    // The job stops at its next block; its temporary files are removed.
                    let _ = wait(None);
                    let _ = handle.join();
                    forward_logs(py)?;
                    return Err(signal);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let panic = handle.join().err().map_or_else(
                    || "no message".to_string(),
                    |p| crate::error::panic_message(p.as_ref()),
                );
                return Err(RunError::new_err(format!(
                    "the job failed unexpectedly (a bug in tripmine; please report it): {panic}"
                )));
            }
        }
    }
}

/// The threads `set_threads` chose for jobs that set none (`None`: all cores).
fn default_threads() -> Option<usize> {
    match DEFAULT_THREADS.load(Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

fn with_default_threads(mut options: MiningOptions) -> MiningOptions {
    options.run.threads = options.run.threads.or_else(default_threads);
    options
}

/// Runs a mining job; gives its summary as JSON.
///
/// `options_json`: keyword arguments as a JSON object. `source`: rows as an Arrow stream
/// (instead of the `paths` option), named `source_name` in messages, with `rows` if known.
#[pyfunction]
#[pyo3(signature = (options_json, source=None, source_name=String::from("<arrow stream>"), rows=None))]
fn mine(
    py: Python<'_>,
    options_json: &str,
    source: Option<PyArrowType<RecordBatchStreamReader>>,
    source_name: String,
    rows: Option<u64>,
) -> PyResult<String> {
    let (config, batches) = job_input(options_json, source, source_name, rows)?;
    let summary = run_detached(py, move || match batches {
        Some(batches) => crate::pipeline::run_batches(&config, batches),
        None => crate::pipeline::run(&config),
    })?;
    Ok(serde_json::to_string(&summary).expect("summaries serialise"))
}

/// Checks options as a job would (`in_memory`: rows handed over instead of paths), without
/// running anything: raises the same `ConfigError`.
#[pyfunction]
#[pyo3(signature = (options_json, in_memory=false))]
fn check_options(options_json: &str, in_memory: bool) -> PyResult<()> {
    let options = options_from_json(options_json).map_err(to_py_err)?;
    MiningConfig::validated(options, in_memory)
        .map(|_| ())
        .map_err(to_py_err)
}

/// A job's validated options (threads defaulted) and its rows: `source` as Arrow batches
/// named `source_name`, or the files the options name.
fn job_input(
    options_json: &str,
    source: Option<PyArrowType<RecordBatchStreamReader>>,
    source_name: String,
    rows: Option<u64>,
) -> PyResult<(MiningConfig, Option<BatchSource>)> {
    let options = with_default_threads(options_from_json(options_json).map_err(to_py_err)?);
    let config = MiningConfig::validated(options, source.is_some()).map_err(to_py_err)?;
    let batches = source.map(|PyArrowType(reader)| BatchSource {
        name: PathBuf::from(source_name),
        reader: Box::new(reader),
        rows,
    });
    Ok((config, batches))
}

/// Cluster runs, step 1: reads the inputs (or `source`), builds and tunes the index, and
/// writes the plan into `work`; gives the plan's figures as JSON.
#[pyfunction]
#[pyo3(signature = (options_json, work, segment_anchors, source=None, source_name=String::from("<arrow stream>"), rows=None))]
fn plan(
    py: Python<'_>,
    options_json: &str,
    work: PathBuf,
    segment_anchors: usize,
    source: Option<PyArrowType<RecordBatchStreamReader>>,
    source_name: String,
    rows: Option<u64>,
) -> PyResult<String> {
    let (config, batches) = job_input(options_json, source, source_name, rows)?;
    let plan = run_detached(py, move || match batches {
        Some(batches) => distributed::plan_batches(&config, &work, segment_anchors, batches),
        None => distributed::plan(&config, &work, segment_anchors),
    })?;
    Ok(serde_json::json!({
        "anchors": plan.anchors,
        "segments": plan.segments,
        "segment_anchors": plan.segment_anchors,
        "index": plan.index(),
    })
    .to_string())
}

/// Cluster runs, step 2: mines segment `segment` of the plan in `work`; gives its figures
/// as JSON.
#[pyfunction]
#[pyo3(signature = (work, segment, threads=None))]
fn mine_segment(
    py: Python<'_>,
    work: PathBuf,
    segment: usize,
    threads: Option<usize>,
) -> PyResult<String> {
    let threads = threads.or_else(default_threads);
    let done = run_detached(py, move || {
        distributed::mine_segment(&work, segment, threads)
    })?;
    Ok(serde_json::to_string(&done).expect("figures serialise"))
}

/// Cluster runs, step 3: merges the segments and writes the outputs; gives the summary as
/// JSON.
#[pyfunction]
fn finish(py: Python<'_>, work: PathBuf) -> PyResult<String> {
    let summary = run_detached(py, move || distributed::finish(&work))?;
    Ok(serde_json::to_string(&summary).expect("summaries serialise"))
}

/// Runs the job a pipeline file describes; gives its summary as JSON.
#[pyfunction]
#[pyo3(signature = (path, overrides=Vec::new(), force=false))]
fn run_pipeline(
    py: Python<'_>,
    path: PathBuf,
    overrides: Vec<String>,
    force: bool,
) -> PyResult<String> {
    let mut overrides = overrides;
    if force {
        overrides.push("run.force=true".into());
    }
    let config = pipeline_file::load(&path, &overrides).map_err(to_py_err)?;
    let config =
        MiningConfig::new(with_default_threads(config.options().clone())).map_err(to_py_err)?;
    let summary = run_detached(py, move || crate::pipeline::run(&config))?;
    Ok(serde_json::to_string(&summary).expect("summaries serialise"))
}

/// Threads of later jobs that set no `threads` (None: all cores).
#[pyfunction]
#[pyo3(signature = (n=None))]
fn set_threads(n: Option<usize>) -> PyResult<()> {
    if n == Some(0) {
        return Err(ConfigError::new_err(
            "set_threads: n must be at least 1 (or None)",
        ));
    }
    DEFAULT_THREADS.store(n.unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

/// Every option: (name, pipeline-file key, help).
#[pyfunction]
fn options() -> Vec<(String, String, String)> {
    py_options()
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                format!("{}.{}", o.section, o.field),
                o.help.clone(),
            )
        })
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // This module's copy of `tracing` reports to Python's logging; nothing else is touched.
    let _ =
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PythonLogging));
    m.add("TripmineError", py.get_type::<TripmineError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("RunError", py.get_type::<RunError>())?;
    m.add("QualityGateError", py.get_type::<QualityGateError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(mine, m)?)?;
    m.add_function(wrap_pyfunction!(run_pipeline, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(options, m)?)?;
    m.add_function(wrap_pyfunction!(check_options, m)?)?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(mine_segment, m)?)?;
    m.add_function(wrap_pyfunction!(finish, m)?)?;
    Ok(())
}

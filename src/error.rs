//! The one error type of the library.
//!
//! In: failures from every stage. Out: an [`Error`] whose [`Error::class`] tells the binary which
//! exit code to use, so a scheduler can tell bad configuration from bad data from a crash.

use std::path::PathBuf;

/// What went wrong, with enough context (file, column, row) to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A configuration key has a bad value; `key` is its pipeline-file name (`mine.margin`).
    #[error("invalid configuration: {} {message}", flag_of(key))]
    Invalid { key: &'static str, message: String },

    /// An input path, glob or folder matched no Parquet file.
    #[error("no input: {0}")]
    NoInput(String),

    /// A required column is absent.
    #[error("{}: column `{column}` not found; columns present: {available}", file.display())]
    MissingColumn {
        file: PathBuf,
        column: String,
        available: String,
    },

    /// A column has a type tripmine cannot use.
    #[error("{}: column `{column}` has unsupported type {found}; expected {expected}", file.display())]
    UnsupportedType {
        file: PathBuf,
        column: String,
        found: String,
        expected: String,
    },

    /// A value is unusable (null, NaN, wrong dimension, ...).
    #[error("{}: column `{column}`, row {row}: {reason}", file.display())]
    BadValue {
        file: PathBuf,
        column: String,
        /// Row position within `file`, 0-based.
        row: u64,
        reason: String,
    },

    /// The data as a whole cannot be mined (empty, a single label, ...).
    #[error("bad input data: {0}")]
    BadData(String),

    /// An input file is not a Parquet file tripmine can read: corrupt, truncated, not Parquet
    /// at all, or not a regular file. `reason` says what is wrong; the reader's own words, if
    /// any, follow it.
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Writing an output failed; `path` is the output as the user named it (not the
    /// temporary file it is written under).
    #[error("cannot write {}: {}", path.display(), detail(&source.to_string()))]
    Output {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An Arrow kernel failed.
    #[error("Arrow failed: {}", detail(&.0.to_string()))]
    Arrow(#[from] arrow::error::ArrowError),

    /// FAISS failed at run time (training, adding, searching, saving). A factory string it
    /// cannot build is a configuration error instead.
    #[error("FAISS failed: {}", faiss_message(&.0.to_string()))]
    Faiss(#[from] faiss::error::Error),

    /// A quality gate held: the outputs were written, but the run is not good enough. The
    /// run's summary comes with it.
    #[error("quality gate failed: {}", .failed.join("; "))]
    QualityGate {
        failed: Vec<String>,
        summary: Box<crate::pipeline::Summary>,
    },

    /// The host interrupted the job ([`crate::process::interrupt`], Ctrl-C in Python).
    #[error("interrupted: the job stopped before finishing; no output was replaced")]
    Interrupted,

    /// A pipeline file cannot be used; the message names the file, key and line.
    #[error("{}: {message}", file.display())]
    Pipeline { file: PathBuf, message: String },

    /// The report's data frame computation failed.
    #[error("report: {}", detail(&.0.to_string()))]
    Report(#[from] polars::error::PolarsError),
}

/// Broad class of an [`Error`], one per exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The configuration or flags are wrong: fix the command.
    Config,
    /// The input data is wrong: fix the data.
    Data,
    /// Anything else: I/O, FAISS, a bug.
    Runtime,
    /// The run completed, but a quality gate held.
    QualityGate,
}

impl Error {
    /// Column `column` is not in `schema` of `file`; the message lists the columns present.
    pub fn missing_column(
        file: impl Into<PathBuf>,
        column: impl Into<String>,
        schema: &arrow::datatypes::Schema,
    ) -> Error {
        Error::MissingColumn {
            file: file.into(),
            column: column.into(),
            available: schema
                .fields()
                .iter()
                .map(|f| format!("{} ({})", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Which class the error belongs to.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config(_) | Error::Invalid { .. } | Error::Pipeline { .. } => ErrorClass::Config,
            Error::QualityGate { .. } => ErrorClass::QualityGate,
            Error::NoInput(_)
            | Error::MissingColumn { .. }
            | Error::UnsupportedType { .. }
            | Error::BadValue { .. }
            | Error::BadData(_)
            | Error::BadFile { .. } => ErrorClass::Data,
            Error::Io { .. }
            | Error::Output { .. }
            | Error::Arrow(_)
            | Error::Faiss(_)
            | Error::Interrupted
            | Error::Report(_) => ErrorClass::Runtime,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An input that the Parquet reader refused: bad data (exit 3), naming the file.
    pub(crate) fn bad_parquet(path: impl Into<PathBuf>, source: impl std::fmt::Display) -> Self {
        Error::corrupt(path, detail(&source.to_string()))
    }

    /// A Parquet input that is corrupt or truncated: bad data (exit 3), naming the file, with
    /// `what` is wrong after it.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, what: impl std::fmt::Display) -> Self {
        Error::BadFile {
            path: path.into(),
            reason: format!("not a readable Parquet file (corrupt or truncated?): {what}"),
        }
    }

    /// Writing the output `dest` failed (whatever temporary name it was written under).
    pub(crate) fn output(
        dest: impl Into<PathBuf>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Output {
            path: dest.into(),
            source: source.into(),
        }
    }
}

/// A library's message without the prefixes each layer adds ("External: Parquet argument
/// error: Parquet error: ..."): the words that say what is wrong.
pub fn detail(message: &str) -> String {
    const PREFIXES: [&str; 11] = [
        "External: ",
        "External error: ",
        "Parquet argument error: ",
        "Parquet error: ",
        "Arrow: ",
        "Arrow error: ",
        "Invalid argument error: ",
        "Compute error: ",
        "EOF: ",
        "NYI: ",
        "General error: ",
    ];
    let mut m = message.trim();
    while let Some(rest) = PREFIXES.iter().find_map(|p| m.strip_prefix(p)) {
        m = rest.trim_start();
    }
    m.to_string()
}

/// FAISS's own message, without the C++ signature and source path its exceptions carry
/// ("Error in void faiss::f(...) at /build/.../File.cpp:12: Error: 'x' failed: message").
pub fn faiss_message(raw: &str) -> String {
    let mut m = raw.trim();
    // The crate's own prefixes, then the exception's location.
    for p in [
        "Native faiss error: ",
        "native faiss error: ",
        "faiss error: ",
    ] {
        m = m.strip_prefix(p).unwrap_or(m);
    }
    if m.starts_with("Error in ") {
        // The location ends at the first `:LINE: ` after the source file name.
        let bytes = m.as_bytes();
        let mut i = 0;
        while let Some(colon) = m[i..].find(':').map(|c| c + i) {
            let digits = bytes[colon + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let end = colon + 1 + digits;
            if digits > 0 && m[end..].starts_with(": ") {
                m = &m[end + 2..];
                break;
            }
            i = colon + 1;
        }
    }
    if let Some(rest) = m.strip_prefix("Error: ") {
        m = rest;
    }
    // `'cond' failed: message`: the message is what a person can act on.
    if m.starts_with('\'')
        && let Some(at) = m.find("' failed: ")
    {
        m = &m[at + "' failed: ".len()..];
    }
    m.trim().to_string()
}

thread_local! {
    /// How deep this thread is in [`contain_panics`].
    static CONTAINING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether the current thread is reading a file inside [`contain_panics`]: a panic there
/// becomes an error naming the file, so a panic hook may stay quiet about it.
pub fn panic_is_contained() -> bool {
    CONTAINING.with(|c| c.get() > 0)
}

/// Runs `f`, the reading of `path`, turning a panic inside a file reader into the usual
/// bad-data error naming the file: no input may crash the process.
pub(crate) fn contain_panics<T>(
    path: &std::path::Path,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    CONTAINING.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(c.get() - 1));
    result.unwrap_or_else(|payload| {
        Err(Error::corrupt(
            path,
            format!(
                "the reader failed on it ({})",
                detail(&panic_message(payload.as_ref()))
            ),
        ))
    })
}

/// The message a panic carried (its payload is a `&str` or a `String` when it has one).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The command-line flag of a pipeline-file key: `mine.max_k` is `--max-k`.
pub fn flag_of(key: &str) -> String {
    match key {
        "input.paths" => "--in".into(),
        "run.progress" => "--no-progress".into(),
        "report.html" => "--report-html".into(),
        _ => format!(
            "--{}",
            key.rsplit('.').next().unwrap_or(key).replace('_', "-")
        ),
    }
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_library_prefixes_are_dropped() {
        assert_eq!(
            detail("External: Parquet argument error: Parquet error: bad footer"),
            "bad footer"
        );
        assert_eq!(detail("no prefix: here"), "no prefix: here");
    }

    #[test]
    fn faiss_messages_lose_their_signature_and_source_path() {
        let raw = "Error in virtual void faiss::IndexIVF::train(idx_t, const float*) at \
                   /root/.cargo/registry/src/faiss-sys/faiss/faiss/IndexIVF.cpp:1234: \
                   Error: 'n >= nlist' failed: training needs at least as many points as lists";
        assert_eq!(
            faiss_message(raw),
            "training needs at least as many points as lists"
        );
        assert_eq!(faiss_message("plain words"), "plain words");
    }

    #[test]
    fn a_panic_in_a_reader_becomes_a_bad_file_error() {
        let e = contain_panics::<()>(std::path::Path::new("x.parquet"), || {
            panic!("column start and length should not be negative")
        })
        .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Data);
        let m = e.to_string();
        assert!(
            m.starts_with("x.parquet: not a readable Parquet file"),
            "{m}"
        );
        assert!(m.contains("should not be negative"), "{m}");
        assert!(!panic_is_contained());
    }
}

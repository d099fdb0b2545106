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
    #[error("{file}: column `{column}` not found; columns present: {available}")]
    MissingColumn {
        file: PathBuf,
        column: String,
        available: String,
    },

    /// A column has a type tripmine cannot use.
    #[error("{file}: column `{column}` has unsupported type {found}; expected {expected}")]
    UnsupportedType {
        file: PathBuf,
        column: String,
        found: String,
        expected: String,
    },

    /// A value is unusable (null, NaN, wrong dimension, ...).
    #[error("{file}: column `{column}`, row {row}: {reason}")]
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

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The Parquet reader or writer failed.
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow kernel failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// FAISS refused an operation (bad factory string, training failure, ...).
    #[error("faiss: {0}")]
    Faiss(String),

    /// A quality gate held: the outputs were written, but the run is not good enough.
    #[error("quality gate failed: {}", .0.join("; "))]
    QualityGate(Vec<String>),

    /// A pipeline file cannot be used; the message names the file, key and line.
    #[error("{file}: {message}")]
    Pipeline { file: PathBuf, message: String },

    /// The report's data frame computation failed.
    #[error("report: {0}")]
    Report(String),
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
            Error::Config(_) | Error::Invalid { .. } | Error::Pipeline { .. } | Error::Faiss(_) => {
                ErrorClass::Config
            }
            Error::QualityGate(_) => ErrorClass::QualityGate,
            Error::NoInput(_)
            | Error::MissingColumn { .. }
            | Error::UnsupportedType { .. }
            | Error::BadValue { .. }
            | Error::BadData(_) => ErrorClass::Data,
            Error::Io { .. } | Error::Parquet { .. } | Error::Arrow(_) | Error::Report(_) => {
                ErrorClass::Runtime
            }
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.into(),
            source,
        }
    }
}

impl From<faiss::error::Error> for Error {
    fn from(e: faiss::error::Error) -> Self {
        Error::Faiss(e.to_string())
    }
}

/// The command-line flag of a pipeline-file key: `mine.max_k` is `--max-k`.
pub fn flag_of(key: &str) -> String {
    match key {
        "input.paths" => "--in".into(),
        "run.progress" => "--no-progress".into(),
        _ => format!(
            "--{}",
            key.rsplit('.').next().unwrap_or(key).replace('_', "-")
        ),
    }
}

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

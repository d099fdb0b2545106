//! What to mine and where: the validated configuration every stage reads.
//!
//! In: [`MiningOptions`], plain data filled by the CLI, a pipeline file or a trainer's code.
//! Out: a [`MiningConfig`], which can only exist once the options passed [`MiningConfig::new`],
//! so later stages never re-check ranges.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Distance between embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance, as in the triplet loss.
    L2sq,
    /// 1 - cosine similarity; vectors are L2-normalised first.
    Cosine,
}

/// Which positives of an anchor are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PositiveStrategy {
    /// Largest d(a, p) first.
    Hardest,
    /// Smallest d(a, p) first.
    Easiest,
    /// A seeded random choice.
    Random,
    /// Every positive (`--num-positives` is then ignored).
    All,
}

/// Which negatives qualify, with `t = d(a, n) - d(a, p)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NegativeStrategy {
    /// `t <= 0`.
    Hard,
    /// `0 < t <= margin`.
    Semihard,
    /// `t > margin`.
    Easy,
    /// `t <= margin` (hard or semi-hard).
    Violating,
    /// No condition: the nearest negatives.
    Hardest,
}

/// How qualifying negatives are chosen when there are more than asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NegativeSampling {
    /// Nearest to the anchor first.
    Nearest,
    /// A seeded random choice among all qualifying negatives.
    Random,
}

/// A count that may be "all".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Count {
    /// Every qualifying item.
    All,
    /// At most this many (at least 1).
    AtMost(usize),
}

impl Count {
    /// The limit as a number, `usize::MAX` for all.
    pub fn limit(self) -> usize {
        match self {
            Count::All => usize::MAX,
            Count::AtMost(n) => n,
        }
    }
}

impl FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Count::All);
        }
        match s.parse::<usize>() {
            Ok(0) => Err("must be at least 1 (or `all`)".into()),
            Ok(n) => Ok(Count::AtMost(n)),
            Err(_) => Err(format!(
                "`{s}` is neither a positive whole number nor `all`"
            )),
        }
    }
}

impl TryFrom<String> for Count {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Count> for String {
    fn from(c: Count) -> String {
        c.to_string()
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::All => f.write_str("all"),
            Count::AtMost(n) => write!(f, "{n}"),
        }
    }
}

/// Names of the input columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnNames {
    /// Id column. `None`: use `id` if present, else the row position across all inputs.
    pub id: Option<String>,
    /// Label column (any integer or string type).
    pub label: String,
    /// Embedding column (`FixedSizeList` or `List` of float16/32/64).
    pub embedding: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        ColumnNames {
            id: None,
            label: "label".into(),
            embedding: "embedding".into(),
        }
    }
}

/// How triplets are mined from a table already in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningParams {
    pub metric: Metric,
    pub margin: f32,
    pub positives: PositiveStrategy,
    pub num_positives: Count,
    pub negatives: NegativeStrategy,
    pub num_negatives: Count,
    pub sample: NegativeSampling,
    /// Mine only a seeded random subset of this many anchors.
    pub anchors_sample: Option<usize>,
    pub seed: u64,
    /// Neighbours searched first for every anchor.
    pub k: usize,
    /// Deepest search for one anchor; `None` searches as deep as exactness needs.
    pub max_k: Option<usize>,
    /// FAISS factory string; `Flat` is exact.
    pub index: String,
}

impl Default for MiningParams {
    fn default() -> Self {
        MiningParams {
            metric: Metric::L2sq,
            margin: 0.2,
            positives: PositiveStrategy::Random,
            num_positives: Count::AtMost(1),
            negatives: NegativeStrategy::Semihard,
            num_negatives: Count::AtMost(5),
            sample: NegativeSampling::Nearest,
            anchors_sample: None,
            seed: 0,
            k: 64,
            max_k: None,
            index: "Flat".into(),
        }
    }
}

impl MiningParams {
    /// Checks ranges; every entry point calls it before mining.
    pub fn validate(&self) -> Result<()> {
        if !self.margin.is_finite() || self.margin < 0.0 {
            return Err(Error::Config(format!(
                "margin must be a finite number >= 0, got {}",
                self.margin
            )));
        }
        if self.k < 1 {
            return Err(Error::Config("k must be at least 1".into()));
        }
        if let Some(max_k) = self.max_k
            && max_k < self.k
        {
            return Err(Error::Config(format!(
                "max-k ({max_k}) must be at least k ({})",
                self.k
            )));
        }
        if self.anchors_sample == Some(0) {
            return Err(Error::Config("anchors-sample must be at least 1".into()));
        }
        if self.index.trim().is_empty() {
            return Err(Error::Config("index factory string is empty".into()));
        }
        Ok(())
    }

    /// Whether the index gives exact neighbours, so the mined sets equal brute force.
    pub fn exact_index(&self) -> bool {
        matches!(self.index.trim(), "Flat" | "IDMap,Flat")
    }
}

/// Everything a mining job needs: inputs, columns, parameters and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningOptions {
    /// Files, folders of `.parquet` files, or globs; rows are taken in this order.
    pub inputs: Vec<PathBuf>,
    pub columns: ColumnNames,
    pub params: MiningParams,
    /// Triplet output (Parquet).
    pub out: PathBuf,
    /// Loss report output (Parquet).
    pub report: PathBuf,
    /// Optional machine-readable summary.
    pub summary_json: Option<PathBuf>,
    /// Threads for FAISS, BLAS and rayon; `None` uses every core.
    pub threads: Option<usize>,
    /// Draw a progress bar (only where stderr is a terminal).
    pub progress: bool,
}

impl Default for MiningOptions {
    fn default() -> Self {
        MiningOptions {
            inputs: Vec::new(),
            columns: ColumnNames::default(),
            params: MiningParams::default(),
            out: "triplets.parquet".into(),
            report: "report.parquet".into(),
            summary_json: None,
            threads: None,
            progress: false,
        }
    }
}

/// Validated [`MiningOptions`]: the only way to start a job.
#[derive(Debug, Clone)]
pub struct MiningConfig(MiningOptions);

impl MiningConfig {
    /// Validates the options once.
    pub fn new(options: MiningOptions) -> Result<Self> {
        if options.inputs.is_empty() {
            return Err(Error::Config("no input given (--in)".into()));
        }
        options.params.validate()?;
        if options.threads == Some(0) {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        if options.out == options.report {
            return Err(Error::Config(format!(
                "--out and --report name the same file {}",
                options.out.display()
            )));
        }
        Ok(MiningConfig(options))
    }

    /// The validated options.
    pub fn options(&self) -> &MiningOptions {
        &self.0
    }
}

impl std::ops::Deref for MiningConfig {
    type Target = MiningOptions;
    fn deref(&self) -> &MiningOptions {
        &self.0
    }
}

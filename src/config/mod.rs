//! What to mine and where: the validated configuration every stage reads.
//!
//! In: [`MiningOptions`], plain data filled by the CLI, a pipeline file or a trainer's code.
//! Out: a [`MiningConfig`], which can only exist once the options passed [`MiningConfig::new`],
//! so later stages never re-check ranges.

mod units;
mod validate;

pub use units::{ByteSize, Count};

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::report::Gate;

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

/// What happens to an (anchor, positive) pair with fewer qualifying negatives than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shortfall {
    /// Keep the pair with the negatives it has.
    #[default]
    Keep,
    /// Drop the pair's triplets.
    Drop,
}

/// Row layout of the triplet output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// One row per (anchor, positive, negative).
    #[default]
    Triplet,
    /// One row per (anchor, positive) with `negative_1_id .. negative_N_id`.
    NTuple,
    /// One row per (anchor, candidate) with `label` 1 (positive) or 0 (negative).
    Pairs,
}

/// A false-negative guard (cosine): which option sets it, and the values it takes. How it
/// judges a candidate is the miner's (`Guard::rejects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// `s(a, n) > max_negative_similarity`.
    Ceiling,
    /// `s(a, n) > s(a, p) - positive_margin`.
    PositiveMargin,
    /// `s(a, n) > positive_percent / 100 * s(a, p)`.
    PositivePercent,
    /// `s(p, n) >= near_duplicate`.
    NearDuplicate,
}

/// Guards in the order they are tried (and counted).
pub const GUARDS: [Guard; 4] = [
    Guard::Ceiling,
    Guard::PositiveMargin,
    Guard::PositivePercent,
    Guard::NearDuplicate,
];

impl Guard {
    /// The pipeline-file key of the option that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Guard::Ceiling => "mine.max_negative_similarity",
            Guard::PositiveMargin => "mine.positive_margin",
            Guard::PositivePercent => "mine.positive_percent",
            Guard::NearDuplicate => "mine.near_duplicate",
        }
    }

    /// Its setting in `params`; `None` when it is off.
    pub fn setting(self, params: &MiningParams) -> Option<f32> {
        match self {
            Guard::Ceiling => params.max_negative_similarity,
            Guard::PositiveMargin => params.positive_margin,
            Guard::PositivePercent => params.positive_percent,
            Guard::NearDuplicate => params.near_duplicate,
        }
    }

    /// Whether `v` is a setting it takes, and if not, what it takes.
    pub fn admits(self, v: f32) -> Result<(), &'static str> {
        let (ok, range) = match self {
            Guard::PositiveMargin => (v >= 0.0, "a similarity margin >= 0"),
            Guard::PositivePercent => (v > 0.0 && v <= 100.0, "a percentage in (0, 100]"),
            Guard::Ceiling | Guard::NearDuplicate => {
                ((-1.0..=1.0).contains(&v), "a cosine similarity in [-1, 1]")
            }
        };
        if ok && v.is_finite() {
            Ok(())
        } else {
            Err(range)
        }
    }
}

/// Names of the input columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames {
    /// Id column. `None`: use `id` if present, else the row position across all inputs.
    pub id: Option<String>,
    /// Label column (any integer or string type); `None` for a retrieval table.
    pub label: Option<String>,
    /// Embedding column (`FixedSizeList` or `List` of float16/32/64).
    pub embedding: String,
    /// Columns read as they are, to pass through to the output.
    pub extra: Vec<String>,
}

impl Default for ColumnNames {
    fn default() -> Self {
        InputOptions::default().columns()
    }
}

/// A flag value as the command line spells it (`l2sq`, `semihard`, ...).
pub fn cli_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// Where the rows come from (`[input]` in a pipeline file).
///
/// Each field is a pipeline-file key and a `tripmine mine` flag at once (the flag is the key
/// with dashes unless its attribute names another); its doc comment is the flag's help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct InputOptions {
    /// Input Parquet file, folder of .parquet files, or glob; repeatable. Rows are taken in
    /// this order.
    #[arg(
        long = "in",
        value_name = "PATH",
        required_unless_present_any = ["queries", "corpus"]
    )]
    pub paths: Vec<PathBuf>,
    /// Id column (default: `id` if present, else the row position across all inputs).
    #[arg(long)]
    pub id_col: Option<String>,
    /// Use an index saved by `--save-index` instead of building one (checked against the input).
    #[arg(long, value_name = "PATH")]
    pub load_index: Option<PathBuf>,
    /// Label column (any integer or string type).
    #[arg(long, default_value_t = InputOptions::default().label_col)]
    pub label_col: String,
    /// Embedding column (FixedSizeList or List of float16/32/64).
    #[arg(long, default_value_t = InputOptions::default().embedding_col)]
    pub embedding_col: String,
    /// Retrieval mode: the queries (anchors), with id and embedding columns; repeatable.
    #[arg(long, value_name = "PATH", help_heading = "Retrieval mode")]
    pub queries: Vec<PathBuf>,
    /// Retrieval mode: the documents to index, with id and embedding columns; repeatable.
    #[arg(long, value_name = "PATH", help_heading = "Retrieval mode")]
    pub corpus: Vec<PathBuf>,
    /// Retrieval mode: known positives, one (query id, document id) per row.
    #[arg(long, value_name = "PATH", help_heading = "Retrieval mode")]
    pub qrels: Option<PathBuf>,
    /// Retrieval mode: a list column of positive document ids in the queries, instead of
    /// `--qrels`.
    #[arg(long, value_name = "COL", help_heading = "Retrieval mode")]
    pub positives_col: Option<String>,
    /// Query id column of `--qrels`.
    #[arg(long, default_value_t = InputOptions::default().qrels_query_col, help_heading = "Retrieval mode")]
    pub qrels_query_col: String,
    /// Document id column of `--qrels`.
    #[arg(long, default_value_t = InputOptions::default().qrels_doc_col, help_heading = "Retrieval mode")]
    pub qrels_doc_col: String,
    /// Pass an input column (e.g. text) through to the output as `anchor_COL`,
    /// `positive_COL`, `negative_COL`; repeatable.
    #[arg(long = "with", value_name = "COL")]
    pub with: Vec<String>,
    /// Mine even though the id column repeats ids (refused by default: a repeated id gives
    /// triplets whose positive and negative carry the same id).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_duplicate_ids: bool,
}

impl Default for InputOptions {
    fn default() -> Self {
        InputOptions {
            paths: Vec::new(),
            id_col: None,
            load_index: None,
            label_col: "label".into(),
            embedding_col: "embedding".into(),
            queries: Vec::new(),
            corpus: Vec::new(),
            qrels: None,
            positives_col: None,
            qrels_query_col: "query_id".into(),
            qrels_doc_col: "doc_id".into(),
            with: Vec::new(),
            allow_duplicate_ids: false,
        }
    }
}

impl InputOptions {
    /// The column names to read.
    pub fn columns(&self) -> ColumnNames {
        ColumnNames {
            id: self.id_col.clone(),
            label: Some(self.label_col.clone()),
            embedding: self.embedding_col.clone(),
            extra: self.with.clone(),
        }
    }

    /// Whether anchors are queries against a corpus rather than rows of a labelled table.
    pub fn retrieval(&self) -> bool {
        !self.queries.is_empty() || !self.corpus.is_empty()
    }

    /// The files the job reads, for fingerprints: inputs, queries, corpus, qrels.
    pub fn all_paths(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self.paths.clone();
        all.extend(self.queries.iter().cloned());
        all.extend(self.corpus.iter().cloned());
        all.extend(self.qrels.iter().cloned());
        all
    }
}

/// How triplets are mined from a table already in memory (`[mine]` in a pipeline file).
///
/// Each field is a pipeline-file key and a `tripmine mine` flag at once; its doc comment is the
/// flag's help.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct MiningParams {
    /// Distance: squared Euclidean, or 1 - cosine similarity.
    #[arg(long, value_enum, default_value_t = MiningParams::default().metric)]
    pub metric: Metric,
    /// Triplet-loss margin (>= 0).
    #[arg(long, default_value_t = MiningParams::default().margin, allow_negative_numbers = true)]
    pub margin: f32,
    /// Which positives of an anchor to use.
    #[arg(long, value_enum, default_value_t = MiningParams::default().positives)]
    pub positives: PositiveStrategy,
    /// Positives per anchor: a number or `all`.
    #[arg(long, default_value_t = MiningParams::default().num_positives)]
    pub num_positives: Count,
    /// Which negatives qualify.
    #[arg(long, value_enum, default_value_t = MiningParams::default().negatives)]
    pub negatives: NegativeStrategy,
    /// Negatives per (anchor, positive): a number or `all`.
    #[arg(long, default_value_t = MiningParams::default().num_negatives)]
    pub num_negatives: Count,
    /// Take qualifying negatives nearest first, or at random (seeded).
    #[arg(long, value_enum, default_value_t = MiningParams::default().sample)]
    pub sample: NegativeSampling,
    /// Mine a seeded random subset of this many anchors.
    #[arg(long)]
    pub anchors_sample: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = MiningParams::default().seed)]
    pub seed: u64,
    /// Neighbours searched first per anchor (searches go deeper where needed) [default: 64;
    /// unset, an approximate index's recall tuning may start deeper].
    #[arg(long)]
    pub k: Option<usize>,
    /// Deepest search per anchor (default: as deep as exactness needs).
    #[arg(long)]
    pub max_k: Option<usize>,
    /// FAISS index factory string: `Flat` (exact), `IVF1024,Flat`, `HNSW32`, ..., or `auto`
    /// (Flat for small tables, an IVF layout sized to the data above 200,000 rows).
    #[arg(long, default_value_t = MiningParams::default().index)]
    pub index: String,
    /// Rows (a seeded sample) an index that needs training is trained on.
    #[arg(long, default_value_t = MiningParams::default().train_sample)]
    pub train_sample: usize,
    /// IVF lists probed per search (default: lists / 64, at least 8).
    #[arg(long)]
    pub nprobe: Option<usize>,
    /// HNSW search depth (FAISS's `efSearch`).
    #[arg(long)]
    pub ef_search: Option<usize>,
    /// With an approximate index, mine N seeded anchors exactly as well: the recall of the
    /// mined negatives and of the candidate lists is measured (with a 95% interval) and the
    /// search tuned on them; 0 skips both.
    #[arg(long, value_name = "N", alias = "check-recall", default_value_t = MiningParams::default().recall_sample)]
    #[serde(alias = "check_recall")]
    pub recall_sample: usize,
    /// With an approximate index, tune nprobe / efSearch / k (those not set) on the recall
    /// sample until the lower end of the recall's interval reaches R; 0 only measures.
    #[arg(long, value_name = "R", default_value_t = MiningParams::default().target_recall)]
    pub target_recall: f64,
    /// `--index auto` below this many rows is exact without weighing an approximate index
    /// (a parameter so that tests can weigh at small scale).
    #[arg(long, value_name = "ROWS", hide = true, default_value_t = MiningParams::default().auto_exact_below)]
    pub auto_exact_below: usize,
    /// `--index auto`, and the cost warning of a named approximate index, weigh exact
    /// mining's estimated time times W (1: as measured; tests emulate a large table at small
    /// scale with more).
    #[arg(long, value_name = "W", hide = true, default_value_t = MiningParams::default().auto_exact_weight)]
    pub auto_exact_weight: f64,
    /// Neighbours compared for label-noise suspects.
    #[arg(long, default_value_t = MiningParams::default().suspects_k)]
    pub suspects_k: usize,
    /// False-negative guard: drop negatives whose cosine similarity to the anchor exceeds S.
    #[arg(
        long,
        value_name = "S",
        allow_negative_numbers = true,
        help_heading = "False-negative guards (cosine)"
    )]
    pub max_negative_similarity: Option<f32>,
    /// False-negative guard: drop negatives with similarity above the positive's minus M.
    #[arg(
        long,
        value_name = "M",
        allow_negative_numbers = true,
        help_heading = "False-negative guards (cosine)"
    )]
    pub positive_margin: Option<f32>,
    /// False-negative guard (TopK-PercPos): drop negatives with similarity above P% of the
    /// positive's (P defaults to 95).
    #[arg(
        long,
        value_name = "P",
        num_args = 0..=1,
        default_missing_value = "95",
        help_heading = "False-negative guards (cosine)"
    )]
    pub positive_percent: Option<f32>,
    /// False-negative guard: drop negatives whose similarity to the positive is at least S
    /// (near-duplicates of it; S defaults to 0.98).
    #[arg(
        long,
        value_name = "S",
        num_args = 0..=1,
        default_missing_value = "0.98",
        allow_negative_numbers = true,
        help_heading = "False-negative guards (cosine)"
    )]
    pub near_duplicate: Option<f32>,
    /// Skip the anchor's nearest N neighbours (rank window start; ranks count every other
    /// indexed row, positives included).
    #[arg(long, value_name = "N", default_value_t = MiningParams::default().range_min)]
    pub range_min: usize,
    /// Take negatives only among the anchor's nearest N neighbours (rank window end).
    #[arg(long, value_name = "N")]
    pub range_max: Option<usize>,
    /// A pair with fewer qualifying negatives than asked: keep it with fewer, or drop it.
    #[arg(long, value_enum, default_value_t = MiningParams::default().shortfall)]
    pub shortfall: Shortfall,
    /// At most N anchors share one negative (the nearest ones keep it).
    #[arg(long, value_name = "N")]
    pub max_negative_reuse: Option<usize>,
    /// Bound memory, e.g. `1GiB`: vectors above half of it spill to a memory-mapped scratch
    /// file, and `--index auto` picks a compressed IVF-PQ index.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
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
            k: None,
            max_k: None,
            index: "Flat".into(),
            train_sample: 100_000,
            nprobe: None,
            ef_search: None,
            recall_sample: DEFAULT_RECALL_SAMPLE,
            target_recall: DEFAULT_TARGET_RECALL,
            auto_exact_below: AUTO_FLAT_ROWS,
            auto_exact_weight: 1.0,
            suspects_k: 10,
            max_negative_similarity: None,
            positive_margin: None,
            positive_percent: None,
            near_duplicate: None,
            range_min: 0,
            range_max: None,
            shortfall: Shortfall::Keep,
            max_negative_reuse: None,
            memory_limit: None,
        }
    }
}

/// Below this many rows `--index auto` is exact (`Flat`).
pub const AUTO_FLAT_ROWS: usize = 200_000;

/// Whether `--out` names a folder of part files.
pub fn is_folder_output(dest: &Path) -> bool {
    dest.as_os_str().to_string_lossy().ends_with('/') || dest.is_dir()
}

/// Neighbours searched first for every anchor when `k` is not set.
pub const DEFAULT_K: usize = 64;

/// Anchors of the recall sample when `recall_sample` is not set.
pub const DEFAULT_RECALL_SAMPLE: usize = 300;

/// The recall target when `target_recall` is not set.
pub const DEFAULT_TARGET_RECALL: f64 = 0.95;

impl MiningParams {
    /// Neighbours searched first for every anchor.
    pub fn k(&self) -> usize {
        self.k.unwrap_or(DEFAULT_K)
    }

    /// Whether any false-negative guard is on.
    pub fn guarded(&self) -> bool {
        self.max_negative_similarity.is_some()
            || self.positive_margin.is_some()
            || self.positive_percent.is_some()
            || self.near_duplicate.is_some()
    }

    /// The name of the rule that admits negatives, recorded with every triplet:
    /// the strategy, the rank window if any, and the sampling.
    pub fn negative_rule(&self) -> String {
        let strategy = self
            .negatives
            .to_possible_value()
            .expect("no skipped variant");
        let mut rule = strategy.get_name().to_string();
        if self.range_min > 0 || self.range_max.is_some() {
            let max = self.range_max.map_or("".to_string(), |m| m.to_string());
            rule.push_str(&format!(" rank[{},{max})", self.range_min));
        }
        if self.sample == NegativeSampling::Random {
            rule.push_str(" random");
        }
        rule
    }
}

/// Where the results go (`[output]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct OutputOptions {
    /// Triplet output: a Parquet file, or a folder (ending in `/` or existing) of part files.
    #[arg(long, default_value_os_t = OutputOptions::default().out)]
    pub out: PathBuf,
    /// Loss report output (Parquet).
    #[arg(long, default_value_os_t = OutputOptions::default().report)]
    pub report: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Save the index built (FAISS's format, plus `PATH.json` describing it) for later runs.
    #[arg(long, value_name = "PATH")]
    pub save_index: Option<PathBuf>,
    /// With a folder `--out` (ending in `/` or existing): rows per part file.
    #[arg(long, default_value_t = OutputOptions::default().max_rows_per_file)]
    pub max_rows_per_file: usize,
    /// Row layout: one triplet a row, (anchor, positive, negative_1..N) rows, or labelled
    /// (anchor, candidate) pairs.
    #[arg(long, value_enum, default_value_t = OutputOptions::default().format)]
    pub format: OutputFormat,
    /// Quality gate on a report figure, e.g. `triplets == 0`: exit 4 after writing if it holds;
    /// repeatable.
    #[arg(long, value_name = "EXPR")]
    pub fail_if: Vec<Gate>,
    /// With `--state`: also write the triplet output's rows that changed since the state's run
    /// here (Parquet, the output's columns and `op`: `add` or `remove`).
    #[arg(long, value_name = "PATH")]
    pub delta: Option<PathBuf>,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            out: "triplets.parquet".into(),
            report: "report.parquet".into(),
            summary_json: None,
            save_index: None,
            max_rows_per_file: 1_000_000,
            format: OutputFormat::Triplet,
            fail_if: Vec::new(),
            delta: None,
        }
    }
}

/// How the job runs; changes no output (`[run]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RunOptions {
    /// Threads for FAISS, BLAS and rayon (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Draw a progress bar where stderr is a terminal (`--no-progress` turns it off).
    #[arg(long = "no-progress", action = clap::ArgAction::SetFalse, help = "Never draw a progress bar")]
    pub progress: bool,
    /// Redo the work even when the manifest says the outputs are up to date.
    #[arg(long)]
    pub force: bool,
    /// Folder of the scratch file vectors spill to under a memory limit (default: the system's
    /// temporary folder). The file has no name and disappears when the run ends.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Keep what a later run on grown inputs needs in this folder, and mine only what new
    /// input files change (labelled, exact). Outputs equal a full run's.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            threads: None,
            progress: true,
            force: false,
            scratch_dir: None,
            state: None,
        }
    }
}

/// Reports for people beyond the Parquet report (`[report]` in a pipeline file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ReportOptions {
    /// Also write a self-contained HTML report here (charts as inline SVG).
    #[arg(long = "report-html", value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Also write label-noise suspects here (Parquet): anchors whose nearest neighbours mostly
    /// carry one other label.
    #[arg(long)]
    pub suspects: Option<PathBuf>,
}

/// Everything a mining job needs: the shape of a pipeline file, and the flags of
/// `tripmine mine` (one definition for both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct MiningOptions {
    #[command(flatten)]
    pub input: InputOptions,
    #[command(flatten)]
    pub mine: MiningParams,
    #[command(flatten)]
    pub output: OutputOptions,
    #[command(flatten)]
    pub report: ReportOptions,
    #[command(flatten)]
    pub run: RunOptions,
}

impl MiningOptions {
    /// Every output the job writes, with its key (`output.out`, ...), in the order they are
    /// named in messages.
    pub fn outputs(&self) -> Vec<(&'static str, &Path)> {
        let out = &self.output;
        let mut named: Vec<(&'static str, &Path)> =
            vec![("output.out", &out.out), ("output.report", &out.report)];
        let optional = [
            ("output.summary_json", out.summary_json.as_deref()),
            ("report.html", self.report.html.as_deref()),
            ("report.suspects", self.report.suspects.as_deref()),
            ("output.save_index", out.save_index.as_deref()),
            ("output.delta", out.delta.as_deref()),
        ];
        named.extend(optional.into_iter().filter_map(|(k, p)| Some((k, p?))));
        named
    }

    /// The options that shape the outputs: all but `[run]` (threads, progress, force).
    pub fn result_options(&self) -> ResultOptions<'_> {
        ResultOptions {
            input: &self.input,
            mine: &self.mine,
            output: &self.output,
            report: &self.report,
        }
    }
}

/// The sections of [`MiningOptions`] that shape the outputs, for reports and manifests.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResultOptions<'a> {
    pub input: &'a InputOptions,
    pub mine: &'a MiningParams,
    pub output: &'a OutputOptions,
    pub report: &'a ReportOptions,
}

/// Validated [`MiningOptions`]: the only way to start a job.
#[derive(Debug, Clone)]
pub struct MiningConfig(MiningOptions);

impl MiningConfig {
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

//! The command line: flags in, a library call out.
//!
//! In: `std::env::args`. Out: the library's config types, a logging set-up, and the text
//! each command prints. `main.rs` maps the result to an exit code ([`exit_code`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::inspect::inspect;
use crate::commands::synthetic::{GenSpec, generate_to_file};
use crate::config::{
    ByteSize, ColumnNames, Count, InputOptions, Metric, MiningConfig, MiningOptions, MiningParams,
    NegativeSampling, NegativeStrategy, OutputFormat, OutputOptions, PositiveStrategy,
    ReportOptions, RunOptions, Shortfall,
};
use crate::error::{Error, ErrorClass, Result};
use crate::pipeline::{file, run};
use crate::report::Gate;

/// Mine hard, semi-hard and easy triplets from labelled embeddings in Parquet.
#[derive(Debug, Parser)]
#[command(name = "tripmine", version, about)]
pub struct Cli {
    /// More log detail on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for schedulers.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mine triplets and write them with a loss report.
    Mine(Box<MineArgs>),
    /// Run the job a pipeline file describes (for schedulers).
    Run(PipelineArgs),
    /// Check a pipeline file without running it; print the resolved configuration.
    Validate(PipelineArgs),
    /// Write a labelled Gaussian-mixture table with overlapping classes (or, with
    /// `--retrieval`, queries, a corpus and qrels).
    Gen(GenArgs),
    /// Show the schema, size, dimension and label counts of inputs.
    Inspect(InspectArgs),
    /// Compare two runs: triplet overlap and the labels whose violation rate moved most.
    Diff(DiffArgs),
}

#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// Id column (default: `id` if present, else the row position across all inputs).
    #[arg(long)]
    pub id_col: Option<String>,
    /// Label column (any integer or string type).
    #[arg(long, default_value = "label")]
    pub label_col: String,
    /// Embedding column (FixedSizeList or List of float16/32/64).
    #[arg(long, default_value = "embedding")]
    pub embedding_col: String,
}

impl ColumnArgs {
    fn names(&self) -> ColumnNames {
        ColumnNames {
            id: self.id_col.clone(),
            label: Some(self.label_col.clone()),
            embedding: self.embedding_col.clone(),
            extra: Vec::new(),
        }
    }
}

#[derive(Debug, Args)]
pub struct MineArgs {
    /// Input Parquet file, folder of .parquet files, or glob; repeatable.
    #[arg(
        long = "in",
        value_name = "PATH",
        required_unless_present_any = ["queries", "corpus"]
    )]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnArgs,
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
    #[arg(long, default_value = "query_id", help_heading = "Retrieval mode")]
    pub qrels_query_col: String,
    /// Document id column of `--qrels`.
    #[arg(long, default_value = "doc_id", help_heading = "Retrieval mode")]
    pub qrels_doc_col: String,
    /// Pass an input column (e.g. text) through to the output as `anchor_COL`,
    /// `positive_COL`, `negative_COL`; repeatable.
    #[arg(long = "with", value_name = "COL")]
    pub with: Vec<String>,
    /// Mine even though the id column repeats ids (refused by default: a repeated id gives
    /// triplets whose positive and negative carry the same id).
    #[arg(long)]
    pub allow_duplicate_ids: bool,
    /// Distance: squared Euclidean, or 1 - cosine similarity.
    #[arg(long, value_enum, default_value_t = Metric::L2sq)]
    pub metric: Metric,
    /// Triplet-loss margin (>= 0).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub margin: f32,
    /// Which positives of an anchor to use.
    #[arg(long, value_enum, default_value_t = PositiveStrategy::Random)]
    pub positives: PositiveStrategy,
    /// Positives per anchor: a number or `all`.
    #[arg(long, default_value = "1")]
    pub num_positives: Count,
    /// Which negatives qualify.
    #[arg(long, value_enum, default_value_t = NegativeStrategy::Semihard)]
    pub negatives: NegativeStrategy,
    /// Negatives per (anchor, positive): a number or `all`.
    #[arg(long, default_value = "5")]
    pub num_negatives: Count,
    /// Take qualifying negatives nearest first, or at random (seeded).
    #[arg(long, value_enum, default_value_t = NegativeSampling::Nearest)]
    pub sample: NegativeSampling,
    /// Skip the anchor's nearest N neighbours (rank window start; ranks count every other
    /// indexed row, positives included).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub range_min: usize,
    /// Take negatives only among the anchor's nearest N neighbours (rank window end).
    #[arg(long, value_name = "N")]
    pub range_max: Option<usize>,
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
    #[arg(long, value_name = "P", num_args = 0..=1, default_missing_value = "95", help_heading = "False-negative guards (cosine)")]
    pub positive_percent: Option<f32>,
    /// False-negative guard: drop negatives whose similarity to the positive is at least S
    /// (near-duplicates of it; S defaults to 0.98).
    #[arg(long, value_name = "S", num_args = 0..=1, default_missing_value = "0.98", allow_negative_numbers = true, help_heading = "False-negative guards (cosine)")]
    pub near_duplicate: Option<f32>,
    /// A pair with fewer qualifying negatives than asked: keep it with fewer, or drop it.
    #[arg(long, value_enum, default_value_t = Shortfall::Keep)]
    pub shortfall: Shortfall,
    /// At most N anchors share one negative (the nearest ones keep it).
    #[arg(long, value_name = "N")]
    pub max_negative_reuse: Option<usize>,
    /// Mine a seeded random subset of this many anchors.
    #[arg(long)]
    pub anchors_sample: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Neighbours searched first per anchor (searches go deeper where needed) [default: 64;
    /// unset, an approximate index's recall tuning may start deeper].
    #[arg(long, allow_negative_numbers = true)]
    pub k: Option<i64>,
    /// Deepest search per anchor (default: as deep as exactness needs).
    #[arg(long, allow_negative_numbers = true)]
    pub max_k: Option<i64>,
    /// FAISS index factory string: `Flat` (exact), `IVF1024,Flat`, `HNSW32`, ..., or `auto`
    /// (Flat for small tables, an IVF layout sized to the data above 200,000 rows).
    #[arg(long, default_value = "Flat")]
    pub index: String,
    /// Rows (a seeded sample) an index that needs training is trained on.
    #[arg(long, default_value_t = 100_000)]
    pub train_sample: usize,
    /// IVF lists probed per search (default: lists / 64, at least 8).
    #[arg(long)]
    pub nprobe: Option<usize>,
    /// HNSW search depth.
    #[arg(long)]
    pub ef_search: Option<usize>,
    /// With an approximate index, mine N seeded anchors exactly as well: the recall of the
    /// mined negatives and of the candidate lists is measured (with a 95% interval) and the
    /// search tuned on them; 0 skips both.
    #[arg(long, value_name = "N", alias = "check-recall", default_value_t = crate::config::DEFAULT_RECALL_SAMPLE)]
    pub recall_sample: usize,
    /// With an approximate index, tune nprobe / efSearch / k (those not set) on the recall
    /// sample until the lower end of the recall's interval reaches R; 0 only measures.
    #[arg(long, value_name = "R", default_value_t = crate::config::DEFAULT_TARGET_RECALL)]
    pub target_recall: f64,
    /// `--index auto` below this many rows is exact without weighing an approximate index.
    #[arg(long, value_name = "ROWS", hide = true, default_value_t = crate::index::AUTO_FLAT_ROWS)]
    pub auto_exact_below: usize,
    /// `--index auto` weighs exact mining's estimated time times W (tests emulate scale).
    #[arg(long, value_name = "W", hide = true, default_value_t = 1.0)]
    pub auto_exact_weight: f64,
    /// Save the index built (FAISS's format) for later runs.
    #[arg(long, value_name = "PATH")]
    pub save_index: Option<PathBuf>,
    /// Use an index saved by `--save-index` instead of building one (checked against the input).
    #[arg(long, value_name = "PATH")]
    pub load_index: Option<PathBuf>,
    /// Threads for FAISS and rayon (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Bound memory, e.g. `1GiB`: vectors above half of it spill to a memory-mapped scratch
    /// file, and `--index auto` picks a compressed IVF-PQ index.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<ByteSize>,
    /// Folder of the spill scratch file (default: the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Triplet output.
    #[arg(long, default_value = "triplets.parquet")]
    pub out: PathBuf,
    /// Row layout: one triplet a row, (anchor, positive, negative_1..N) rows, or labelled
    /// (anchor, candidate) pairs.
    #[arg(long, value_enum, default_value_t = OutputFormat::Triplet)]
    pub format: OutputFormat,
    /// Loss report output.
    #[arg(long, default_value = "report.parquet")]
    pub report: PathBuf,
    /// Also write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Also write a self-contained HTML report here.
    #[arg(long)]
    pub report_html: Option<PathBuf>,
    /// Also write label-noise suspects here (Parquet): anchors whose nearest neighbours mostly
    /// carry one other label.
    #[arg(long)]
    pub suspects: Option<PathBuf>,
    /// Neighbours compared for label-noise suspects.
    #[arg(long, default_value_t = 10)]
    pub suspects_k: usize,
    /// With a folder `--out` (ending in `/` or existing): rows per part file.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_rows_per_file: usize,
    /// Quality gate on a report figure, e.g. `triplets == 0`: exit 4 after writing if it holds.
    #[arg(long, value_name = "EXPR")]
    pub fail_if: Vec<Gate>,
    /// Redo the work even when the manifest says the outputs are up to date.
    #[arg(long)]
    pub force: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline file (TOML).
    pub file: PathBuf,
    /// Override a key of the file, e.g. `--set mine.margin=0.3`; repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Redo the work even when the manifest says the outputs are up to date.
    #[arg(long)]
    pub force: bool,
}

impl PipelineArgs {
    fn config(&self) -> Result<MiningConfig> {
        let mut overrides = self.overrides.clone();
        if self.force {
            overrides.push("run.force=true".into());
        }
        file::load(&self.file, &overrides)
    }
}

impl MineArgs {
    /// The validated configuration these flags describe.
    pub fn config(&self) -> Result<MiningConfig> {
        let count = |name: &str, v: i64| -> Result<usize> {
            usize::try_from(v)
                .ok()
                .filter(|&v| v >= 1)
                .ok_or_else(|| Error::Config(format!("--{name} must be at least 1, got {v}")))
        };
        let mine = MiningParams {
            metric: self.metric,
            margin: self.margin,
            positives: self.positives,
            num_positives: self.num_positives,
            negatives: self.negatives,
            num_negatives: self.num_negatives,
            sample: self.sample,
            anchors_sample: self.anchors_sample,
            seed: self.seed,
            k: self.k.map(|k| count("k", k)).transpose()?,
            max_k: self.max_k.map(|m| count("max-k", m)).transpose()?,
            index: self.index.clone(),
            suspects_k: self.suspects_k,
            train_sample: self.train_sample,
            nprobe: self.nprobe,
            ef_search: self.ef_search,
            recall_sample: self.recall_sample,
            target_recall: self.target_recall,
            auto_exact_below: self.auto_exact_below,
            auto_exact_weight: self.auto_exact_weight,
            max_negative_similarity: self.max_negative_similarity,
            positive_margin: self.positive_margin,
            positive_percent: self.positive_percent,
            near_duplicate: self.near_duplicate,
            range_min: self.range_min,
            range_max: self.range_max,
            shortfall: self.shortfall,
            max_negative_reuse: self.max_negative_reuse,
            memory_limit: self.memory_limit,
        };
        MiningConfig::new(MiningOptions {
            input: InputOptions {
                paths: self.inputs.clone(),
                load_index: self.load_index.clone(),
                id_col: self.columns.id_col.clone(),
                label_col: self.columns.label_col.clone(),
                embedding_col: self.columns.embedding_col.clone(),
                queries: self.queries.clone(),
                corpus: self.corpus.clone(),
                qrels: self.qrels.clone(),
                positives_col: self.positives_col.clone(),
                qrels_query_col: self.qrels_query_col.clone(),
                qrels_doc_col: self.qrels_doc_col.clone(),
                with: self.with.clone(),
                allow_duplicate_ids: self.allow_duplicate_ids,
            },
            mine,
            output: OutputOptions {
                out: self.out.clone(),
                report: self.report.clone(),
                summary_json: self.summary_json.clone(),
                max_rows_per_file: self.max_rows_per_file,
                format: self.format,
                save_index: self.save_index.clone(),
                fail_if: self.fail_if.clone(),
            },
            report: ReportOptions {
                html: self.report_html.clone(),
                suspects: self.suspects.clone(),
            },
            run: RunOptions {
                threads: self.threads,
                progress: !self.no_progress,
                force: self.force,
                scratch_dir: self.scratch_dir.clone(),
            },
        })
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    #[arg(long, default_value_t = 32)]
    pub dim: usize,
    #[arg(long, default_value_t = 50)]
    pub labels: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Spread of class centres relative to the within-class spread (smaller: more overlap).
    #[arg(long, default_value_t = 1.5)]
    pub separation: f32,
    /// Draw centres and spread in this many dimensions, mapped into `--dim` by a random
    /// projection (real embeddings concentrate near a few dozen directions).
    #[arg(long)]
    pub intrinsic_dim: Option<usize>,
    /// Write a retrieval example instead: `--out` is a folder that gets `corpus.parquet`
    /// (`--rows` documents on `--labels` topics), `queries.parquet` and `qrels.parquet`.
    #[arg(long)]
    pub retrieval: bool,
    /// Queries of the retrieval example.
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier run: a triplet output (file or folder) or its manifest.
    pub run_a: PathBuf,
    /// The later run.
    pub run_b: PathBuf,
    /// Write the per-label comparison here (Parquet).
    #[arg(long, default_value = "diff.parquet")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Parquet files, folders or globs.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub columns: ColumnArgs,
}

/// Runs a parsed command, printing its result on stdout.
pub fn execute(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Mine(args) => println!("{}", run(&args.config()?)?),
        Command::Run(args) => println!("{}", run(&args.config()?)?),
        Command::Validate(args) => {
            let config = args.config()?;
            let resolved = toml::to_string_pretty(config.options()).expect("options serialise");
            println!(
                "{}: valid

{resolved}",
                args.file.display()
            );
        }
        Command::Gen(args) => {
            let spec = GenSpec {
                rows: args.rows,
                dim: args.dim,
                labels: args.labels,
                seed: args.seed,
                separation: args.separation,
                intrinsic_dim: args.intrinsic_dim,
            };
            if args.retrieval {
                crate::commands::synthetic::generate_retrieval(&spec, args.queries, &args.out)?;
                println!(
                    "wrote {} queries, {} documents x {} dims on {} topics, and qrels to {}",
                    args.queries,
                    args.rows,
                    args.dim,
                    args.labels,
                    args.out.display()
                );
            } else {
                generate_to_file(&spec, &args.out)?;
                println!(
                    "wrote {} rows x {} dims, {} labels to {}",
                    args.rows,
                    args.dim,
                    args.labels,
                    args.out.display()
                );
            }
        }
        Command::Diff(args) => {
            let d = crate::commands::diff::diff(&args.run_a, &args.run_b)?;
            crate::io::write_parquet(&args.out, &d.to_batch()?)?;
            println!("{d}\nwrote {}", args.out.display());
        }
        Command::Inspect(args) => {
            print!("{}", inspect(&args.inputs, &args.columns.names())?);
        }
    }
    Ok(())
}

/// Logs go to stderr, as text or one JSON object a line; `RUST_LOG` overrides `-v`.
///
/// On a terminal a person reads the progress bars and the summary, so text logs start at
/// warnings (`-v` adds info, `-vv` debug); elsewhere (a scheduler, a file) they start at info.
/// Colours only on a terminal, and never with `NO_COLOR` set.
pub fn init_logging(verbose: u8, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let terminal = std::io::stderr().is_terminal();
    let quiet_levels = terminal && format == LogFormat::Text;
    let level = verbose as usize + usize::from(!quiet_levels);
    let default = ["warn", "info", "debug", "trace"][level.min(3)];
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal && !no_color)
        .with_writer(crate::pipeline::log_writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Exit codes a scheduler can act on.
pub mod exit_code {
    /// A runtime failure (I/O, FAISS, internal).
    pub const RUNTIME: u8 = 1;
    /// Bad flags or configuration (also clap's usage errors).
    pub const CONFIG: u8 = 2;
    /// Bad input data.
    pub const DATA: u8 = 3;
    /// The outputs were written, but a quality gate (`--fail-if`) held.
    pub const QUALITY_GATE: u8 = 4;
}

/// The exit code of an error.
pub fn exit_code(e: &Error) -> u8 {
    match e.class() {
        ErrorClass::Config => exit_code::CONFIG,
        ErrorClass::Data => exit_code::DATA,
        ErrorClass::Runtime => exit_code::RUNTIME,
        ErrorClass::QualityGate => exit_code::QUALITY_GATE,
    }
}

//! The command line: flags in, a library call out.
//!
//! In: `std::env::args`. Out: the library's config types, a logging set-up, and the text
//! each command prints. `main.rs` maps the result to an exit code ([`exit_code`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::inspect::inspect;
use crate::commands::synthetic::{GenSpec, generate_to_file};
use crate::config::{ColumnNames, MiningConfig, MiningOptions};
use crate::error::{Error, ErrorClass, Result};
use crate::pipeline::{distributed, pipeline_file, run};

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
    /// Cluster runs, step 1 of 3: read the inputs, build and tune the index, and write the
    /// prepared table, the index and the plan into a shared work folder.
    Plan(Box<PlanArgs>),
    /// Cluster runs, step 2 of 3: mine one segment of the plan's anchors (any node, any order;
    /// a retry rewrites the same file).
    MineSegment(SegmentArgs),
    /// Cluster runs, step 3 of 3: merge the segments in order and write the outputs, exactly
    /// as `tripmine mine` would have.
    Finish(WorkArgs),
}

/// `tripmine plan`: the work folder, and the options of `tripmine mine`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The work folder (on storage every worker reads).
    #[arg(long)]
    pub work: PathBuf,
    /// Anchors per segment (the outputs do not depend on it).
    #[arg(long, default_value_t = crate::pipeline::distributed::DEFAULT_SEGMENT_ANCHORS)]
    pub segment_anchors: usize,
    #[command(flatten)]
    pub mine: MineArgs,
}

#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// The work folder `tripmine plan` wrote.
    #[arg(long)]
    pub work: PathBuf,
    /// Which segment (0 to the plan's segments - 1).
    #[arg(long)]
    pub segment: usize,
    /// Threads for this segment (default: the plan's `--threads`, else all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// The work folder `tripmine plan` wrote.
    #[arg(long)]
    pub work: PathBuf,
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

/// `tripmine mine`'s flags: the options of a pipeline file, defined once in [`MiningOptions`].
#[derive(Debug, Args)]
pub struct MineArgs {
    #[command(flatten)]
    pub options: MiningOptions,
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
        pipeline_file::load(&self.file, &overrides)
    }
}

impl MineArgs {
    /// The validated configuration these flags describe.
    pub fn config(&self) -> Result<MiningConfig> {
        MiningConfig::new(self.options.clone())
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
    /// A ceiling on the resident set (e.g. 512MiB): the triplets are compared in partitions
    /// by anchor that fit, written to unnamed files in --scratch-dir first.
    #[arg(long)]
    pub memory_limit: Option<crate::config::ByteSize>,
    /// Where the partitions go under --memory-limit (default: the system's temporary folder).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
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
        Command::Mine(args) => println!("{}", summary_even_if_gated(run(&args.config()?))?),
        Command::Run(args) => println!("{}", summary_even_if_gated(run(&args.config()?))?),
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
            let options = crate::commands::diff::DiffOptions {
                memory_limit: args.memory_limit.map(|b| b.0),
                scratch_dir: args.scratch_dir.clone(),
            };
            let d = crate::commands::diff::diff_with(&args.run_a, &args.run_b, &options)?;
            crate::io::write_parquet(&args.out, &d.to_batch()?)?;
            println!("{d}\nwrote {}", args.out.display());
        }
        Command::Inspect(args) => {
            print!("{}", inspect(&args.inputs, &args.columns.names())?);
        }
        Command::Plan(args) => {
            let plan = distributed::plan(&args.mine.config()?, &args.work, args.segment_anchors)?;
            println!(
                "planned {} anchors in {} segments of {} in {}; index {}",
                plan.anchors,
                plan.segments,
                plan.segment_anchors,
                args.work.display(),
                plan.index()
            );
        }
        Command::MineSegment(args) => {
            let done = distributed::mine_segment(&args.work, args.segment, args.threads)?;
            println!(
                "segment {}: {} anchors, {} triplets in {:.1} s",
                done.segment, done.anchors, done.triplets, done.seconds
            );
        }
        Command::Finish(args) => {
            println!(
                "{}",
                summary_even_if_gated(distributed::finish(&args.work))?
            )
        }
    }
    Ok(())
}

/// A run whose quality gate held still wrote its outputs: its summary is printed before the
/// error is returned (and mapped to exit code 4).
fn summary_even_if_gated(result: Result<crate::Summary>) -> Result<crate::Summary> {
    if let Err(Error::QualityGate { summary, .. }) = &result {
        println!("{summary}");
    }
    result
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

//! The stages of one job, a function each: read, index, tune, mine and write, report, commit.
//!
//! In: a validated [`MiningConfig`] and its resolved input files. Out: the outputs renamed into
//! place (only once every one is complete) and the run's [`Summary`]. Each stage is timed and
//! logged (stage, rows, seconds, resident set) by a [`Stage`] guard.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::config::{Metric, MiningConfig, MiningParams};
use crate::error::Result;
use crate::io::{
    AtomicPath, BatchSource, KeptRows, Queries, ReadOptions, Table, TripletSink, read_retrieval,
    read_table_from_batches, read_table_with, write_atomic, write_parquet_into,
};
use crate::mine::{
    AutoChoice, CrossAnchorRules, MinedBlock, Miner, Recall, SearchStats, Triplet, Truth, Tuning,
};
use crate::process::{check_interrupted, release_free_heap};
use crate::report::{Report, ReportBuilder, Totals};

use super::blocks::{BlockReader, HeldBlocks, observe_every_block, observe_in_passes};
use super::delta::{DeltaCounts, DeltaWriter, PreviousOutput};
use super::outputs::{Batcher, OutputLayout, json, suspects_batch, with_metadata};
use super::recall::{self, RecallPlan};
use super::state::{Changes, PendingState, StateRun};
use super::summary::{self, Summary, Timings};
use super::{live_threads, progress, resident_mib};

/// A stage being timed: [`Stage::done`] logs its rows, seconds and the resident set, and
/// returns the seconds. A stage left by an error logs that at debug level.
pub(super) struct Stage {
    name: &'static str,
    started: Instant,
    finished: bool,
}

impl Stage {
    pub(super) fn start(name: &'static str) -> Self {
        Stage {
            name,
            started: Instant::now(),
            finished: false,
        }
    }

    pub(super) fn done(mut self, rows: usize, message: &str) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64();
        let (rss_mib, peak_rss_mib) = resident_mib();
        tracing::info!(
            stage = self.name,
            rows,
            seconds,
            rss_mib,
            peak_rss_mib,
            "{message}"
        );
        self.finished = true;
        seconds
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.finished {
            tracing::debug!(
                stage = self.name,
                seconds = self.started.elapsed().as_secs_f64(),
                "stage ended by an error"
            );
        }
    }
}

/// Where a test may kill a job: `TRIPMINE_TEST_ABORT_AT=POINT` kills the process there
/// (SIGKILL: no destructor, no exit handler runs). Named points make the kill tests
/// deterministic. A distributed run's segment also has [`SEGMENT_ABORT_POINT`].
pub const ABORT_POINTS: [&str; 6] = ["read", "index", "mine", "report", "commit", "committed"];

/// Where a test may kill a segment of a distributed run: its blocks written, before its file
/// is renamed into place.
pub const SEGMENT_ABORT_POINT: &str = "segment";

/// Kills the process at `point` when a test asked for it; with
/// `TRIPMINE_TEST_ABORT_ONCE=FILE`, only the process that creates FILE (a retry lives).
pub(super) fn abort_point(point: &'static str) {
    debug_assert!(ABORT_POINTS.contains(&point) || point == SEGMENT_ABORT_POINT);
    if std::env::var_os("TRIPMINE_TEST_ABORT_AT").is_none_or(|p| p != point) {
        return;
    }
    if let Some(marker) = std::env::var_os("TRIPMINE_TEST_ABORT_ONCE") {
        let first = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok();
        if !first {
            return;
        }
    }
    // SAFETY: sends a signal to this process; it does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

/// What every stage of a job shares.
pub(super) struct Job<'c> {
    pub(super) config: &'c MiningConfig,
    files: &'c [PathBuf],
    /// Progress bars on (a terminal, and not turned off).
    pub(super) show: bool,
    /// Under a memory limit freed heap counts against it: trimmed between stages.
    bounded: bool,
    /// Spilled vectors and the report's triplet columns go here.
    pub(super) scratch: PathBuf,
    /// The options as the user gave them, which the report records: `config` itself, except
    /// in a distributed run's finish, whose paths were made absolute for the cluster.
    given: &'c MiningConfig,
    /// An incremental run's approximate index, kept by its state over the first rows.
    kept_index: Option<(PathBuf, usize)>,
}

impl<'c> Job<'c> {
    pub(super) fn new(config: &'c MiningConfig, files: &'c [PathBuf]) -> Self {
        Job {
            config,
            files,
            show: config.run.progress && std::io::stderr().is_terminal(),
            bounded: config.mine.memory_limit.is_some(),
            scratch: config
                .run
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            given: config,
            kept_index: None,
        }
    }

    /// The same job, recording `given` as its options in the report.
    pub(super) fn recording(self, given: &'c MiningConfig) -> Self {
        Job { given, ..self }
    }
}

/// The rows read: the table searched, and in retrieval mode the queries (the anchors).
pub(super) struct Input {
    pub(super) table: Table,
    pub(super) queries: Option<Queries>,
}

impl Input {
    /// The miner on these rows, with the index saved at `saved`, else a new one.
    pub(super) fn miner(
        &self,
        params: &MiningParams,
        saved: Option<&Path>,
        kept: Option<&(PathBuf, usize)>,
    ) -> Result<Miner<'_>> {
        match (&self.queries, saved, kept) {
            (queries, None, Some((path, rows))) => {
                Miner::with_kept_index(&self.table, queries.as_ref(), params, path, *rows)
            }
            (Some(q), saved, _) => Miner::retrieval(&self.table, q, params, saved),
            (None, Some(path), _) => Miner::with_saved_index(&self.table, params, path),
            (None, None, None) => Miner::new(&self.table, params),
        }
    }

    /// Anchor ids, labels and columns come from here; candidates' from `table`.
    pub(super) fn anchor_table(&self) -> &Table {
        self.queries.as_ref().map_or(&self.table, |q| &q.table)
    }

    /// Labels of the table (none in retrieval mode, which has no labels).
    fn labels(&self) -> usize {
        if self.queries.is_some() {
            0
        } else {
            self.table.num_labels()
        }
    }

    /// Drops the vectors (the report needs labels and ids only).
    fn drop_vectors(&mut self) {
        self.table.drop_vectors();
        if let Some(q) = &mut self.queries {
            q.table.drop_vectors();
        }
    }
}

/// What mining wrote and gathered for the report.
struct Mined {
    emitted: Emitted,
    /// The triplets of the recall sample's anchors.
    sampled: Vec<Triplet>,
    search: SearchStats,
}

/// What the emitter wrote and gathered for the report.
pub(super) struct Emitted {
    triplets_file: AtomicPath,
    report: ReportBuilder,
    /// (agreement, row, majority label) of every label-noise suspect.
    suspects: Vec<(f32, u32, u32)>,
    /// What a run with a state mined again (`--state`).
    pub(super) changes: Option<Changes>,
    /// The delta (`--delta`), under its temporary name, and what it holds.
    pub(super) delta: Option<(AtomicPath, DeltaCounts)>,
}

/// What the report stage needs to know of the search, once the miner is gone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct SearchFacts {
    pub(super) index: String,
    pub(super) exact: bool,
    pub(super) embedding_spread: f64,
    pub(super) recall: Option<Recall>,
    pub(super) tuning: Option<Tuning>,
    pub(super) auto: Option<AutoChoice>,
}

impl SearchFacts {
    /// What the search was, once mining is done: the index, the recall of the sample's
    /// `sampled` triplets against its exact answers, and what tuning and `auto` decided.
    pub(super) fn gather(
        miner: &mut Miner,
        recall: RecallPlan,
        sampled: &[Triplet],
    ) -> Result<SearchFacts> {
        let RecallPlan {
            truth,
            tuning,
            auto,
        } = recall;
        Ok(SearchFacts {
            recall: measure_recall(miner, truth, sampled)?,
            index: miner.index_info().factory.clone(),
            exact: miner.exact(),
            embedding_spread: miner.embedding_spread(),
            tuning,
            auto,
        })
    }
}

/// Where mined blocks go, in anchor order: the cross-anchor rules, then the triplet output
/// (in batches that do not depend on how anchors were grouped), the report's records, and the
/// label-noise suspects. A single-machine run feeds it as it mines; a distributed run's
/// finish replays the segments.
pub(super) struct Emitter<'a> {
    rules: CrossAnchorRules,
    layout: OutputLayout<'a>,
    sink: TripletSink,
    report: ReportBuilder,
    suspects: Vec<(f32, u32, u32)>,
    batcher: Batcher,
    anchor_table: &'a Table,
    /// With `--delta`: what changed since the state's run.
    delta: Option<DeltaWriter>,
}

impl<'a> Emitter<'a> {
    /// `rules_budget`: the bytes the cross-anchor rules may count in per pass over the blocks.
    pub(super) fn new(job: &Job, input: &'a Input, rules_budget: Option<usize>) -> Result<Self> {
        let config = job.config;
        let out = &config.output;
        let anchor_table = input.anchor_table();
        let layout = OutputLayout::new(
            anchor_table,
            &input.table,
            &config.mine,
            out.format,
            &config.input.with,
        )?;
        let sink = TripletSink::create(&out.out, layout.schema(), out.max_rows_per_file)?;
        Ok(Emitter {
            rules: CrossAnchorRules::within(&config.mine, rules_budget),
            layout,
            sink,
            report: ReportBuilder::spilling(config.mine.margin, &job.scratch)?,
            suspects: Vec::new(),
            batcher: Batcher::default(),
            anchor_table,
            delta: None,
        })
    }

    /// Also writes `output.delta`: the emitted rows that differ from `previous` (none: every
    /// row is new), between the states `base` and `state`.
    pub(super) fn track_changes(
        &mut self,
        job: &Job,
        previous: Option<PreviousOutput>,
        state: u64,
        base: Option<u64>,
    ) -> Result<()> {
        if let Some(dest) = &job.config.output.delta {
            let format = job.config.output.format;
            self.delta = Some(DeltaWriter::create(
                dest,
                &self.layout,
                format,
                previous,
                state,
                base,
            )?);
        }
        Ok(())
    }

    /// Whether the cross-anchor rules must see every block ([`Emitter::observe`]) before the
    /// first is emitted (`max_negative_reuse`).
    pub(super) fn needs_every_block(&self) -> bool {
        self.rules.need_every_block()
    }

    /// Shows `block` to the rules that look at every block.
    pub(super) fn observe(&mut self, block: &MinedBlock) {
        self.rules.observe(block);
    }

    /// Passes of the rules over every block until they have learnt enough: `pass` shows
    /// them every block once ([`super::blocks::observe_blocks`] per file).
    pub(super) fn observe_in_passes(
        &mut self,
        pass: impl FnMut(&mut CrossAnchorRules) -> Result<()>,
    ) -> Result<()> {
        observe_in_passes(&mut self.rules, pass)
    }

    /// Ends a pass of [`Emitter::observe`]: whether the rules need no other.
    pub(super) fn learned(&mut self) -> bool {
        self.rules.learned()
    }

    /// Applies the cross-anchor rules to a mined block, then writes and records it.
    pub(super) fn emit(&mut self, mut mined: MinedBlock) -> Result<()> {
        self.rules.apply(&mut mined);
        if let Some(delta) = &mut self.delta {
            delta.compare(&mined, &self.layout)?;
        }
        let (sink, layout) = (&mut self.sink, &self.layout);
        self.batcher
            .add(&mined.triplets, |t| sink.write(&layout.batch(t)?))?;
        self.suspects.extend(mined.anchors.iter().filter_map(|a| {
            let n = a.neighbour_labels?;
            n.suspect(a.label)
                .then_some((n.agreement, a.anchor, n.majority))
        }));
        let codes = &self.anchor_table.label_codes;
        self.report
            .add(&mined.triplets, &mined.anchors, |r| codes[r as usize])
    }

    /// Shows every block `blocks` has left to the rules that look at every block.
    /// `open` gives a reader of every block from the first (for each pass the rules need).
    pub(super) fn observe_all(&mut self, open: impl FnMut() -> Result<BlockReader>) -> Result<()> {
        observe_every_block(&mut self.rules, open)
    }

    /// Emits every block `blocks` has left.
    pub(super) fn emit_all(&mut self, blocks: &mut BlockReader) -> Result<()> {
        while let Some(block) = blocks.next_block()? {
            self.emit(block)?;
        }
        Ok(())
    }

    /// Writes what is pending; the triplet output stays under its temporary name.
    pub(super) fn close(mut self) -> Result<Emitted> {
        let (sink, layout) = (&mut self.sink, &self.layout);
        self.batcher.finish(|t| sink.write(&layout.batch(t)?))?;
        let delta = match self.delta {
            Some(d) => Some(d.close(&self.layout)?),
            None => None,
        };
        Ok(Emitted {
            triplets_file: self.sink.close()?,
            report: self.report,
            suspects: self.suspects,
            changes: None,
            delta,
        })
    }
}

/// The report and its companions, written under temporary names.
struct Reported {
    rows: usize,
    totals: Totals,
    warnings: Vec<String>,
    files: Vec<AtomicPath>,
}

pub(super) fn run_job(
    config: &MiningConfig,
    files: &[PathBuf],
    batches: Option<BatchSource>,
) -> Result<Summary> {
    let mut clock = Clock::start();
    let mut job = Job::new(config, files);
    // A state that cannot serve is refused before anything is read.
    let state = match &config.run.state {
        Some(dir) => Some(StateRun::examine(config, dir, files)?),
        None => None,
    };
    job.kept_index = state.as_ref().and_then(StateRun::kept_index);

    let inputs = input_names(files, batches.as_ref());
    let kept = state.as_ref().and_then(|s| s.kept_rows(config));
    let input = read_stage(&job, batches, &mut clock, inputs.len(), kept)?;
    let (mut miner, anchors, recall) = index_and_tune(&job, &input, &mut clock)?;
    let recall_sample: &[u32] = recall.truth.as_ref().map_or(&[], |t| &t.anchors);

    let stage = Stage::start("mine");
    let (mined, state) = match state {
        Some(run) => {
            let (mined, state) =
                mine_with_state(&job, &mut miner, &input, &anchors, recall_sample, run)?;
            (mined, Some(state))
        }
        None => (
            mine_and_write(&job, &mut miner, &input, &anchors, recall_sample)?,
            None,
        ),
    };
    clock.seconds.mine = stage.done(anchors.len(), "mined and scored");
    clock.seconds.search = mined.search;

    let stage = Stage::start("report");
    let facts = SearchFacts::gather(&mut miner, recall, &mined.sampled)?;
    // The vectors and the index are done with: freed before the report.
    drop(miner);
    let summary = conclude(&job, input, mined.emitted, &facts, stage, clock, inputs)?;
    // After the outputs: a kill between leaves the old state, from which the next run
    // gives the same outputs again.
    if let Some(state) = state {
        state.commit()?;
    }
    Ok(summary)
}

/// As [`mine_and_write`], through the state folder of an incremental run.
fn mine_with_state(
    job: &Job,
    miner: &mut Miner,
    input: &Input,
    anchors: &[u32],
    recall_sample: &[u32],
    run: StateRun,
) -> Result<(Mined, PendingState)> {
    let search_before = miner.search_stats();
    miner.keep_neighbours();
    let mut emitter = Emitter::new(job, input, miner.cross_anchor_budget())?;
    let (state, mut changes, sampled) =
        run.mine(job, miner, input, anchors, &mut emitter, recall_sample)?;
    abort_point("mine");
    let mut emitted = emitter.close()?;
    if let Some((_, counts)) = &emitted.delta {
        changes.delta_rows_added = Some(counts.added);
        changes.delta_rows_removed = Some(counts.removed);
    }
    emitted.changes = Some(changes);
    let mined = Mined {
        emitted,
        sampled,
        search: miner.search_stats().since(search_before),
    };
    Ok((mined, state))
}

/// The read stage: the rows read (from `batches`, else the job's files).
pub(super) fn read_stage(
    job: &Job,
    batches: Option<BatchSource>,
    clock: &mut Clock,
    inputs: usize,
    kept: Option<KeptRows>,
) -> Result<Input> {
    let stage = Stage::start("read");
    let kept_files = kept.as_ref().map_or(0, |k| k.facts().table.sources.len());
    let input = read(job, batches, kept)?;
    let mut what = describe(&input, inputs);
    if kept_files > 0 {
        what.push_str(&format!(
            "; the rows of the first {kept_files} kept in the state, their files not read"
        ));
    }
    clock.seconds.read = stage.done(input.table.rows(), &what);
    abort_point("read");
    check_interrupted()?;
    release_free_heap(job.bounded);
    Ok(input)
}

/// The index and tune stages: the miner on `input`, the anchors to mine, and what was learnt
/// about recall before mining.
pub(super) fn index_and_tune<'t>(
    job: &Job,
    input: &'t Input,
    clock: &mut Clock,
) -> Result<(Miner<'t>, Vec<u32>, RecallPlan)> {
    let stage = Stage::start("index");
    let mut miner = build_index(job, input)?;
    clock.seconds.index = stage.done(input.table.rows(), "index built");
    abort_point("index");
    check_interrupted()?;
    release_free_heap(job.bounded);

    let stage = Stage::start("tune");
    let anchors = miner.anchors();
    let recall = prepare_search(job, &mut miner, &anchors)?;
    let sample = recall.truth.as_ref().map_or(0, |t| t.anchors.len());
    clock.seconds.tune = stage.done(sample, "search prepared");
    check_interrupted()?;
    Ok((miner, anchors, recall))
}

/// When a job started, and its stages' seconds so far.
pub(super) struct Clock {
    started: Instant,
    started_at: SystemTime,
    pub(super) seconds: Timings,
    /// Seconds the job spent before this process (a distributed run's plan and segments).
    pub(super) earlier: f64,
}

impl Clock {
    pub(super) fn start() -> Self {
        Clock {
            started: Instant::now(),
            started_at: SystemTime::now(),
            seconds: Timings::default(),
            earlier: 0.0,
        }
    }

    /// The job's seconds so far: since the start, and before it.
    pub(super) fn elapsed(&self) -> f64 {
        self.earlier + self.started.elapsed().as_secs_f64()
    }
}

/// The inputs a summary names: the files, or the name of the rows handed over.
pub(super) fn input_names(files: &[PathBuf], batches: Option<&BatchSource>) -> Vec<PathBuf> {
    match batches {
        Some(b) => vec![b.name.clone()],
        None => files.to_vec(),
    }
}

/// The report `stage` (started) and the rest, once every block was emitted: computes the
/// report, renames every output into place and gives the summary.
pub(super) fn conclude(
    job: &Job,
    mut input: Input,
    emitted: Emitted,
    facts: &SearchFacts,
    stage: Stage,
    mut clock: Clock,
    inputs: Vec<PathBuf>,
) -> Result<Summary> {
    let config = job.config;
    input.drop_vectors();
    let Emitted {
        triplets_file,
        report,
        suspects,
        changes,
        delta,
    } = emitted;
    let mut reported = report_stage(job, &input, report, suspects, facts, clock.started_at)?;
    reported.files.extend(delta.map(|(file, _)| file));
    clock.seconds.report = stage.done(reported.rows, "report computed");
    abort_point("report");
    check_interrupted()?;
    clock.seconds.total = clock.elapsed();

    let summary = Summary {
        tripmine_version: env!("CARGO_PKG_VERSION").into(),
        inputs,
        rows: input.table.rows() as u64,
        dim: input.table.dim,
        labels: input.labels(),
        queries: input.queries.as_ref().map(|q| q.table.rows() as u64),
        unknown_queries: input.queries.as_ref().map_or(0, |q| q.unknown_queries),
        params: config.mine.clone(),
        index: facts.index.clone(),
        exact: facts.exact,
        out: config.output.out.clone(),
        report: config.output.report.clone(),
        other_outputs: config
            .options()
            .outputs()
            .into_iter()
            .skip(2)
            .map(|(_, p)| p.to_path_buf())
            .collect(),
        totals: reported.totals,
        seconds: clock.seconds,
        skipped: false,
        warnings: reported.warnings,
        tuning: facts.tuning.clone(),
        auto: facts.auto.clone(),
        changes,
    };
    commit(job, triplets_file, reported.files, &summary)?;
    let (rss_mib, peak_rss_mib) = resident_mib();
    tracing::info!(
        stage = "done",
        rows = summary.rows,
        triplets = summary.totals.triplets,
        seconds = summary.seconds.total,
        rss_mib,
        peak_rss_mib,
        "finished"
    );
    Ok(summary)
}

/// Before mining: the recall sample mined exactly, the search tuned, `auto`'s choice.
fn prepare_search(job: &Job, miner: &mut Miner, anchors: &[u32]) -> Result<RecallPlan> {
    let spinner = progress(job.show, None, "measuring recall");
    let kept = job.kept_index.is_some();
    let plan = recall::prepare(&job.config.mine, miner, anchors, kept)?;
    spinner.finish_and_clear();
    Ok(plan)
}

/// The read stage's log line: what was read.
fn describe(input: &Input, files: usize) -> String {
    let t = &input.table;
    // A corpus has no labels: its queries are what the line counts instead.
    let what = match &input.queries {
        Some(q) => format!("{} queries", q.table.rows()),
        None => format!("{} labels", t.num_labels()),
    };
    let spilled = if t.vectors.is_spilled() {
        ", vectors spilled to disk"
    } else {
        ""
    };
    format!(
        "input read: {} rows x {} ({what}) from {files} input(s){spilled}",
        t.rows(),
        t.dim,
    )
}

/// Reads the table (or corpus and queries), spilling the vectors under a memory limit, and
/// checks ids are unique.
fn read(job: &Job, batches: Option<BatchSource>, kept: Option<KeptRows>) -> Result<Input> {
    let config = job.config;
    let spinner = progress(job.show, None, "reading");
    let read_options = ReadOptions {
        memory_limit: config.mine.memory_limit.map(|b| b.0),
        scratch_dir: Some(job.scratch.clone()),
        normalize_if_spilled: config.mine.metric == Metric::Cosine,
        discard_vectors: false,
        kept,
    };
    let input = if config.input.retrieval() {
        let (table, queries) = read_retrieval(&config.input, &read_options)?;
        Input {
            table,
            queries: Some(queries),
        }
    } else {
        let columns = config.input.columns();
        let table = match batches {
            Some(source) => read_table_from_batches(source, &columns, &read_options)?,
            None => read_table_with(job.files, &columns, &read_options)?,
        };
        if !config.input.allow_duplicate_ids {
            let id_column = config.input.id_col.as_deref().unwrap_or("id");
            table.check_unique_ids(id_column, " (--allow-duplicate-ids to mine them anyway)")?;
        }
        Input {
            table,
            queries: None,
        }
    };
    spinner.finish_and_clear();
    Ok(input)
}

/// Builds (or loads) the neighbour index and the miner on it; saves the index if asked.
fn build_index<'t>(job: &Job, input: &'t Input) -> Result<Miner<'t>> {
    let config = job.config;
    let spinner = progress(job.show, None, "building index");
    let miner = input.miner(
        &config.mine,
        config.input.load_index.as_deref(),
        job.kept_index.as_ref(),
    )?;
    if let Some(path) = &config.output.save_index {
        miner.save_index(path)?;
    }
    spinner.finish_and_clear();
    Ok(miner)
}

/// Mines `anchors` window by window, writing the triplets as they come (to a temporary name)
/// and adding them to the report; keeps the recall sample's triplets.
fn mine_and_write(
    job: &Job,
    miner: &mut Miner,
    input: &Input,
    anchors: &[u32],
    recall_sample: &[u32],
) -> Result<Mined> {
    let search_before = miner.search_stats();
    let bar = progress(job.show, Some(anchors.len() as u64), "mining");
    let mut emitter = Emitter::new(job, input, miner.cross_anchor_budget())?;
    let mut sampled: Vec<Triplet> = Vec::new();
    // The reuse cap learns from every block before it removes anything: the blocks wait on
    // disk meanwhile (their memory would grow with the triplets).
    let mut held = match emitter.needs_every_block() {
        true => Some(HeldBlocks::new(&job.scratch)?),
        false => None,
    };
    mine_windows(
        job,
        miner,
        anchors,
        |n| bar.inc(n as u64),
        |mined| {
            if !recall_sample.is_empty() {
                sampled.extend(
                    mined
                        .triplets
                        .iter()
                        .filter(|t| recall_sample.binary_search(&t.anchor).is_ok()),
                );
            }
            match &mut held {
                Some(held) => {
                    emitter.observe(&mined);
                    held.hold(&mined)
                }
                None => {
                    emitter.emit(mined)?;
                    abort_point("mine");
                    Ok(())
                }
            }
        },
    )?;
    if let Some(held) = held {
        let held = held.held()?;
        // The first pass was made as blocks were mined; more where the counts outgrew their
        // budget.
        if !emitter.learned() {
            emitter.observe_all(|| held.read())?;
        }
        emitter.emit_all(&mut held.read()?)?;
    }
    let emitted = emitter.close()?;
    bar.finish_and_clear();
    Ok(Mined {
        emitted,
        sampled,
        search: miner.search_stats().since(search_before),
    })
}

/// Mines `anchors` window by window ([`Miner::mine_window`]), handing each window's block to
/// `take` (cross-anchor rules not applied) and its progress to `advanced`.
pub(super) fn mine_windows(
    job: &Job,
    miner: &mut Miner,
    anchors: &[u32],
    mut advanced: impl FnMut(usize),
    mut take: impl FnMut(MinedBlock) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < anchors.len() {
        // Asked again for every window: under a memory limit it follows the results so far.
        let window = &anchors[start..(start + miner.window_len()).min(anchors.len())];
        start += window.len();
        let mined = miner.mine_window(window, &mut advanced)?;
        take(mined)?;
        release_free_heap(job.bounded);
        // Read only when the line is written (once per window).
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (rss_mib, peak_rss_mib) = resident_mib();
            tracing::debug!(
                stage = "mine",
                anchors = window.len(),
                threads = live_threads(),
                rss_mib,
                peak_rss_mib,
                "anchors mined"
            );
        }
    }
    Ok(())
}

/// The recall of the sample's mined triplets against its exact answers, if there is a sample.
fn measure_recall(
    miner: &mut Miner,
    truth: Option<Truth>,
    sampled: &[Triplet],
) -> Result<Option<Recall>> {
    let Some(mut truth) = truth else {
        return Ok(None);
    };
    let t = Instant::now();
    let recall = miner.recall_of(&mut truth, sampled, true)?;
    tracing::info!(
        stage = "recall",
        rows = recall.anchors,
        negatives = recall.negatives.map(|e| e.value),
        candidates = recall.candidates.map(|e| e.value),
        seconds = t.elapsed().as_secs_f64(),
        "recall against an exact search"
    );
    Ok(Some(recall))
}

/// Computes the report and its warnings, and writes it, the suspects and the HTML page under
/// temporary names.
fn report_stage(
    job: &Job,
    input: &Input,
    report: ReportBuilder,
    suspects: Vec<(f32, u32, u32)>,
    facts: &SearchFacts,
    started_at: SystemTime,
) -> Result<Reported> {
    let config = job.config;
    let Report {
        batch,
        mut totals,
        histogram,
    } = report.finish(&input.anchor_table().label_names())?;
    totals.embedding_spread = Some(facts.embedding_spread);
    if let Some(recall) = &facts.recall {
        recall::record(&mut totals, recall, config.mine.target_recall);
    }
    let mut warnings = totals.warnings(&config.mine);
    if let Some(t) = facts.tuning.as_ref().filter(|t| !t.met && !facts.exact)
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
    if let Some(t) = facts.tuning.as_ref().filter(|_| !facts.exact)
        && let Some(cost) = t.cost.filter(|c| c.exact_is_cheaper())
    {
        warnings.insert(
            0,
            format!(
                "{} at the tuned setting ({}) is estimated at {:.1} s of mining, exact mining \
                 (recall 1) at {:.1} s: use --index Flat, or --index auto to choose by cost",
                facts.index, t.settled, cost.approximate_seconds, cost.exact_seconds
            ),
        );
    }
    for w in &warnings {
        tracing::warn!(stage = "report", "{w}");
    }
    let batch = with_metadata(
        batch,
        [
            ("tripmine.totals", json(&totals)),
            ("tripmine.histogram", json(&histogram)),
            // What shaped the outputs; `run` (threads, progress) changes none of them.
            ("tripmine.config", json(&job.given.result_options())),
            ("tripmine.warnings", json(&warnings)),
            (
                "tripmine.search",
                json(&serde_json::json!({ "tuning": &facts.tuning, "auto": &facts.auto })),
            ),
        ],
    )?;
    let mut files = Vec::new();
    let report_file = AtomicPath::new(&config.output.report)?;
    write_parquet_into(&report_file, &batch)?;
    files.push(report_file);
    if let Some(path) = &config.report.suspects {
        let target = AtomicPath::new(path)?;
        write_parquet_into(&target, &suspects_batch(&input.table, suspects)?)?;
        files.push(target);
    }
    if let Some(path) = &config.report.html {
        let target = AtomicPath::new(path)?;
        let page = crate::report::html::render(&crate::report::html::Page {
            batch: &batch,
            totals: &totals,
            histogram: &histogram,
            options: job.given.options(),
            warnings: &warnings,
            facts: crate::report::html::RunFacts {
                rows: input.table.rows() as u64,
                dim: input.table.dim,
                labels: input.labels(),
                queries: input.queries.as_ref().map(|q| q.table.rows() as u64),
                index: &facts.index,
                exact: facts.exact,
                search: summary::search_note(
                    facts.tuning.as_ref(),
                    facts.auto.as_ref(),
                    facts.exact,
                ),
                started: started_at,
            },
        });
        target.write(page.as_bytes())?;
        files.push(target);
    }
    Ok(Reported {
        rows: batch.num_rows(),
        totals,
        warnings,
        files,
    })
}

/// Every output is complete: renames them into place, the triplets first, then writes the
/// summary JSON.
fn commit(
    job: &Job,
    triplets_file: AtomicPath,
    report_files: Vec<AtomicPath>,
    summary: &Summary,
) -> Result<()> {
    triplets_file.commit()?;
    abort_point("commit");
    for f in report_files {
        f.commit()?;
    }
    if let Some(path) = &job.config.output.summary_json {
        let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
        write_atomic(path, &json)?;
    }
    Ok(())
}

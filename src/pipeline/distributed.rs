//! One job cut into segments of anchors, for a cluster: [`plan`] once, [`mine_segment`] for
//! every segment anywhere (in any order, retried at will), [`finish`] once. The outputs equal
//! a single-machine [`super::run`] with the same options: the same triplet rows in the same
//! order, written in the same batches, and the same report.
//!
//! In: a validated [`MiningConfig`] and a work folder that every worker reads (a shared file
//! system). Out, in the work folder: from [`plan`], `plan.json`, the prepared table (`table/`,
//! and `queries/` in retrieval mode; see [`crate::io::save_table`]) and an approximate index
//! (`index.faiss`); from [`mine_segment`], `segments/NNNNNN.seg` (the blocks its anchors
//! gave, before the cross-anchor rules); from [`finish`], the job's outputs, summary and
//! manifest where the options name them, as [`super::run`] writes them.
//!
//! Why the outputs are the same: an anchor's triplets depend on that anchor alone (an
//! approximate search starts every block at the same depth; exact sets are exact), so the
//! segments' blocks in segment order are the single run's blocks, and [`finish`] replays them
//! through the same emitter, cross-anchor rules and report code. What a run decides from
//! the whole table before mining (the recall sample, tuning, `auto`'s choice) the plan
//! decides once, and the segments search with its settings.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::blocks::{BlockReader, BlockWriter, observe_blocks};
use super::job::{
    Clock, Emitter, Input, Job, SEGMENT_ABORT_POINT, SearchFacts, Stage, abort_point, conclude,
    index_and_tune, input_names, mine_windows, read_stage,
};
use super::manifest::InputStat;
use super::summary::{Summary, Timings};
use super::{RunIdentity, gate, in_job_pool};
use crate::config::{Metric, MiningConfig, MiningOptions};
use crate::error::{Error, Result};
use crate::io::{AtomicPath, BatchSource, PreparedTable, Queries, open_table, save_table};
use crate::mine::SearchKnobs;
use crate::process::{RunningJob, check_interrupted};

/// Anchors per segment unless asked otherwise: eight blocks of the miner.
pub const DEFAULT_SEGMENT_ANCHORS: usize = 8 * crate::mine::ANCHOR_BLOCK;

const PLAN: &str = "plan.json";
const SEGMENTS: &str = "segments";
const INDEX: &str = "index.faiss";

/// What the plan decided and every later step reads (`plan.json` in the work folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub tripmine_version: String,
    /// Changes with every plan: segments of another plan are refused.
    pub id: String,
    /// The job's options (outputs included: finish writes them), relative paths made
    /// absolute against the folder the plan ran in.
    pub options: MiningOptions,
    /// The options as given, which the report records (as a single run's does).
    given: MiningOptions,
    /// The rows were handed over in memory (no input files).
    pub in_memory: bool,
    /// The inputs' stats and the run's fingerprint, for the manifest finish writes.
    inputs: Vec<InputStat>,
    fingerprint: String,
    /// The inputs the summary names.
    input_names: Vec<PathBuf>,
    /// Anchors in all, and per segment (the last one may hold fewer).
    pub anchors: usize,
    pub segment_anchors: usize,
    pub segments: usize,
    /// The search every segment runs: the index (`Flat` when exact, else loaded from
    /// `index.faiss`) and its settings.
    search: SearchFacts,
    knobs: SearchKnobs,
    table: PreparedTable,
    queries: Option<(PreparedTable, u64)>,
    /// Seconds of the plan's stages (read, index, tune).
    seconds: Timings,
}

impl Plan {
    /// The plan in `work`, checked to be of this version of tripmine.
    pub fn read(work: &Path) -> Result<Plan> {
        let path = work.join(PLAN);
        let text = std::fs::read(&path).map_err(|e| {
            Error::Config(format!(
                "{}: {e}; run the plan step first (tripmine plan --work {})",
                path.display(),
                work.display()
            ))
        })?;
        let plan: Plan = serde_json::from_slice(&text).map_err(|e| {
            Error::BadData(format!(
                "{}: not a plan of this version ({e})",
                path.display()
            ))
        })?;
        if plan.tripmine_version != env!("CARGO_PKG_VERSION") {
            return Err(Error::Config(format!(
                "{}: made by tripmine {}, this is {}; plan again with this version",
                path.display(),
                plan.tripmine_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(plan)
    }

    /// The index every segment searches (its factory string).
    pub fn index(&self) -> &str {
        &self.search.index
    }

    /// The job's validated options. A scratch folder is a folder of the machine that planned:
    /// where it is missing, the system's temporary folder is used instead.
    pub fn config(&self) -> Result<MiningConfig> {
        let mut options = self.options.clone();
        if let Some(dir) = options.run.scratch_dir.as_ref().filter(|d| !d.is_dir()) {
            tracing::info!(
                scratch = %dir.display(),
                "the plan's scratch folder is not on this machine; using the temporary folder"
            );
            options.run.scratch_dir = None;
        }
        self.validated(&options)
    }

    fn validated(&self, options: &MiningOptions) -> Result<MiningConfig> {
        MiningConfig::validated(options.clone(), self.in_memory)
    }

    /// The anchor positions of `segment` (in the list [`Miner::anchors`] gives).
    fn range(&self, segment: usize) -> std::ops::Range<usize> {
        let start = (segment * self.segment_anchors).min(self.anchors);
        start..(start + self.segment_anchors).min(self.anchors)
    }
}

/// Reads the inputs, builds and tunes the search, and writes what the segments need into
/// `work`: the prepared table, the index, and `plan.json` (last). A plan already there, and
/// its segments, are replaced. Segments hold `segment_anchors` anchors each (any number: the
/// outputs do not depend on it).
pub fn plan(config: &MiningConfig, work: &Path, segment_anchors: usize) -> Result<Plan> {
    plan_from(config, work, segment_anchors, None)
}

/// As [`plan`], for rows the host hands over as Arrow batches (see
/// [`super::run_batches`]).
pub fn plan_batches(
    config: &MiningConfig,
    work: &Path,
    segment_anchors: usize,
    batches: BatchSource,
) -> Result<Plan> {
    plan_from(config, work, segment_anchors, Some(batches))
}

fn plan_from(
    config: &MiningConfig,
    work: &Path,
    segment_anchors: usize,
    batches: Option<BatchSource>,
) -> Result<Plan> {
    let _running = RunningJob::start();
    if segment_anchors == 0 {
        return Err(Error::Config("segment_anchors must be at least 1".into()));
    }
    if config.run.state.is_some() {
        return Err(Error::Config(
            "--state belongs to a single run (tripmine mine): a distributed run mines every anchor"
                .into(),
        ));
    }
    let in_memory = batches.is_some();
    let run = RunIdentity::of(config, in_memory)?;
    in_job_pool(config.run.threads, || {
        let mut clock = Clock::start();
        let job = Job::new(config, &run.files);
        let input_names = input_names(&run.files, batches.as_ref());

        let input = read_stage(&job, batches, &mut clock, input_names.len(), None)?;
        let (mut miner, anchors, recall) = index_and_tune(&job, &input, &mut clock)?;
        let stage = Stage::start("recall");
        // The sample's triplets are what the single run's blocks hold for those anchors.
        let mut sampled = Vec::new();
        if let Some(t) = &recall.truth {
            mine_windows(
                &job,
                &mut miner,
                &t.anchors,
                |_| (),
                |b| {
                    sampled.extend(b.triplets);
                    Ok(())
                },
            )?;
        }
        let search = SearchFacts::gather(&mut miner, recall, &sampled)?;
        clock.seconds.tune += stage.done(sampled.len(), "recall sample mined");
        check_interrupted()?;

        let stage = Stage::start("plan");
        // A new plan replaces the old one and every segment mined for it.
        for stale in [work.join(PLAN), work.join(INDEX)] {
            remove_if_present(&stale)?;
        }
        let segments_dir = work.join(SEGMENTS);
        if segments_dir.exists() {
            std::fs::remove_dir_all(&segments_dir).map_err(|e| Error::output(&segments_dir, e))?;
        }
        std::fs::create_dir_all(&segments_dir).map_err(|e| Error::output(&segments_dir, e))?;
        let cosine = config.mine.metric == Metric::Cosine;
        let table = save_table(&input.table, None, cosine, &work.join("table"))?;
        let queries = match &input.queries {
            Some(q) => Some((
                save_table(&q.table, Some(&q.positives), cosine, &work.join("queries"))?,
                q.unknown_queries,
            )),
            None => None,
        };
        if !search.exact {
            miner.save_index(&work.join(INDEX))?;
        }
        let plan = Plan {
            tripmine_version: env!("CARGO_PKG_VERSION").into(),
            id: format!("{:016x}", rand::random::<u64>()),
            options: with_absolute_paths(config.options().clone())?,
            given: config.options().clone(),
            in_memory,
            inputs: run.inputs.clone(),
            fingerprint: run.fingerprint.clone(),
            input_names,
            anchors: anchors.len(),
            segment_anchors,
            segments: anchors.len().div_ceil(segment_anchors).max(1),
            knobs: miner.search_knobs(),
            search,
            table,
            queries,
            seconds: Timings {
                total: clock.elapsed(),
                ..clock.seconds
            },
        };
        let json = serde_json::to_vec_pretty(&plan).expect("plans serialise");
        crate::io::write_atomic(&work.join(PLAN), &json)?;
        stage.done(plan.anchors, &format!("planned {} segments", plan.segments));
        Ok(plan)
    })
}

/// `options` with every relative path made absolute against this process's folder: the
/// segments and finish run elsewhere. (`cwd.join` keeps a folder output's trailing `/`.)
fn with_absolute_paths(mut options: MiningOptions) -> Result<MiningOptions> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = cwd.join(&*p);
        }
    };
    let input = &mut options.input;
    input
        .paths
        .iter_mut()
        .chain(&mut input.queries)
        .chain(&mut input.corpus)
        .chain(&mut input.qrels)
        .chain(&mut input.load_index)
        .for_each(fix);
    let output = &mut options.output;
    fix(&mut output.out);
    fix(&mut output.report);
    output
        .summary_json
        .iter_mut()
        .chain(&mut output.save_index)
        .chain(&mut options.report.html)
        .chain(&mut options.report.suspects)
        .chain(&mut options.run.scratch_dir)
        .for_each(fix);
    Ok(options)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::output(path, e)),
        _ => Ok(()),
    }
}

/// What one segment did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SegmentDone {
    pub segment: usize,
    pub anchors: usize,
    pub triplets: u64,
    pub seconds: f64,
}

/// Mines segment `segment` of the plan in `work` on `threads` threads (default: the plan's
/// option, else all cores), and writes its blocks to `segments/NNNNNN.seg` (renamed into
/// place complete, so a retry after a kill starts again and gives the same file).
pub fn mine_segment(work: &Path, segment: usize, threads: Option<usize>) -> Result<SegmentDone> {
    let _running = RunningJob::start();
    let plan = Plan::read(work)?;
    if segment >= plan.segments {
        return Err(Error::Config(format!(
            "segment {segment}: the plan has segments 0 to {}",
            plan.segments - 1
        )));
    }
    let config = plan.config()?;
    in_job_pool(threads.or(config.run.threads), || {
        let started = Instant::now();
        let input = open_input(work, &plan)?;
        let mut params = config.mine.clone();
        params.index = plan.search.index.clone();
        params.k = Some(plan.knobs.k);
        let saved = (!plan.search.exact).then(|| work.join(INDEX));
        let mut miner = input.miner(&params, saved.as_deref(), None)?;
        if !plan.search.exact {
            miner.set_search_knobs(plan.knobs)?;
        }
        let anchors = miner.anchors();
        if anchors.len() != plan.anchors {
            return Err(Error::BadData(format!(
                "{}: {} anchors, the plan says {}; the work folder is damaged",
                work.display(),
                anchors.len(),
                plan.anchors
            )));
        }
        let mine = &anchors[plan.range(segment)];
        let job = Job::new(&config, &[]);
        let target = AtomicPath::new(&segment_path(work, segment))?;
        let file = File::create(target.tmp()).map_err(|e| Error::output(target.dest(), e))?;
        let mut out =
            BlockWriter::new(file, target.dest(), plan_id_bits(&plan.id), segment as u32)?;
        let mut triplets = 0u64;
        let search_before = miner.search_stats();
        mine_windows(
            &job,
            &mut miner,
            mine,
            |_| (),
            |block| {
                triplets += block.triplets.len() as u64;
                out.block(&block)
            },
        )?;
        let done = SegmentDone {
            segment,
            anchors: mine.len(),
            triplets,
            seconds: started.elapsed().as_secs_f64(),
        };
        let search = miner.search_stats().since(search_before);
        out.end([
            done.seconds.to_bits(),
            search.seconds.to_bits(),
            search.queries,
        ])?;
        abort_point(SEGMENT_ABORT_POINT);
        target.commit()?;
        tracing::info!(
            stage = "segment",
            segment,
            anchors = done.anchors,
            triplets,
            seconds = done.seconds,
            "segment mined"
        );
        Ok(done)
    })
}

/// Merges the segments in order through the same code as a single run (cross-anchor rules,
/// triplet output, report), then renames the outputs into place and writes the summary and
/// the manifest; fails after writing when a quality gate holds, as [`super::run`] does.
pub fn finish(work: &Path) -> Result<Summary> {
    let _running = RunningJob::start();
    let plan = Plan::read(work)?;
    let config = plan.config()?;
    let given = plan.validated(&plan.given)?;
    let missing: Vec<usize> = (0..plan.segments)
        .filter(|&s| !segment_path(work, s).is_file())
        .collect();
    if let Some(first) = missing.first() {
        return Err(Error::Config(format!(
            "{} of {} segments are not mined yet (the first: segment {first}, {}); mine them first",
            missing.len(),
            plan.segments,
            segment_path(work, *first).display()
        )));
    }
    let run = RunIdentity {
        files: Vec::new(),
        inputs: plan.inputs.clone(),
        fingerprint: plan.fingerprint.clone(),
    };
    let summary = in_job_pool(config.run.threads, || {
        let mut clock = Clock::start();
        clock.seconds = plan.seconds.clone();
        let job = Job::new(&config, &[]).recording(&given);
        let input = open_input(work, &plan)?;
        let stage = Stage::start("merge");
        // As in a single run: less what the rules keep for the end.
        let kept = crate::mine::CrossAnchorRules::kept_bytes(&config.mine, input.table.rows());
        let budget = (config.mine.memory_limit).map(|limit| {
            crate::memory::Scratch::measured(limit.0.saturating_sub(kept)).cross_anchor()
        });
        let mut emitter = Emitter::new(&job, &input, budget)?;
        if emitter.needs_every_block() {
            // The reuse cap learns from every block first (passes over the segments: one,
            // unless its counts outgrow their budget).
            emitter.observe_in_passes(|rules| {
                for segment in 0..plan.segments {
                    observe_blocks(rules, &mut open_segment(work, segment, &plan)?)?;
                }
                Ok(())
            })?;
        }
        for segment in 0..plan.segments {
            check_interrupted()?;
            let mut blocks = open_segment(work, segment, &plan)?;
            emitter.emit_all(&mut blocks)?;
            let [seconds, search_seconds, queries] = blocks.figures()?;
            clock.seconds.mine += f64::from_bits(seconds);
            clock.seconds.search.seconds += f64::from_bits(search_seconds);
            clock.seconds.search.queries += queries;
        }
        let emitted = emitter.close()?;
        stage.done(plan.anchors, "segments merged");
        // The run's total counts the plan's and the segments' seconds too (machine time: the
        // segments may have run at once).
        clock.earlier = plan.seconds.total + clock.seconds.mine;
        let stage = Stage::start("report");
        conclude(
            &job,
            input,
            emitted,
            &plan.search,
            stage,
            clock,
            plan.input_names.clone(),
        )
    })?;
    run.record(&config, &summary)?;
    gate(&config, summary)
}

/// The prepared table (and queries) of a plan.
fn open_input(work: &Path, plan: &Plan) -> Result<Input> {
    let limit = plan.options.mine.memory_limit.map(|b| b.0);
    let (table, _) = open_table(&work.join("table"), &plan.table, limit)?;
    let queries = match &plan.queries {
        Some((facts, unknown_queries)) => {
            let (table, positives) = open_table(&work.join("queries"), facts, limit)?;
            Some(Queries {
                table,
                positives: positives.unwrap_or_default(),
                unknown_queries: *unknown_queries,
            })
        }
        None => None,
    };
    Ok(Input { table, queries })
}

fn segment_path(work: &Path, segment: usize) -> PathBuf {
    work.join(SEGMENTS).join(format!("{segment:06}.seg"))
}

/// A plan id as the 64 bits a segment file keeps.
fn plan_id_bits(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or(0)
}

/// Opens segment `segment`'s file, checked to be of this plan.
fn open_segment(work: &Path, segment: usize, plan: &Plan) -> Result<BlockReader> {
    let reader = BlockReader::open(&segment_path(work, segment))?;
    if reader.id != plan_id_bits(&plan.id) || reader.number as usize != segment {
        return Err(reader.bad("mined for another plan; mine this segment again"));
    }
    Ok(reader)
}

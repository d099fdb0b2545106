//! Incremental mining (`--state DIR`): a run on inputs that grew by new files mines only what
//! the new rows change, and its outputs equal a full run's on all the inputs.
//!
//! In: the state folder a previous run left (`state.json`: the tripmine version, the options
//! that shape mined blocks, the input files' stats, rows and labels; `blocks.seg`: every
//! anchor's mined block before the cross-anchor rules, with the bounds of what a new row can
//! change), the job's table and miner. Out: every anchor's block, replayed in anchor order into
//! the run's emitter (so the outputs and report are made by the same code as a full run's),
//! and the new state under a temporary name, renamed into place after the outputs.
//!
//! Inputs that only gained files at the end (same paths, sizes and modification times for the
//! old ones, in the same order) are mined incrementally: old anchors keep their blocks unless
//! a new row falls within their bounds, with negative ranks counted again; those anchors and
//! every new row are mined (under `--anchors-sample`, old anchors that left the sample are
//! dropped, and only new rows in it are mined). A changed, removed or reordered file means a
//! full run (the log says why). A state of another tripmine version or of other options is
//! refused unless the run is forced, which rebuilds it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::blocks::{BlockReader, BlockWriter, FIGURES, HeldBlocks};
use super::delta::PreviousOutput;
use super::job::{Emitter, Input, Job, mine_windows};
use super::manifest::{InputStat, sha256_hex, stat_inputs};
use super::progress;
use crate::config::{InputOptions, MiningConfig, MiningParams, NegativeSampling};
use crate::error::{Error, Result};
use crate::io::{AtomicPath, KeptFacts, KeptRows, Table, resolve_inputs, save_kept};
use crate::mine::{ANCHOR_BLOCK, MinedBlock, Miner, Triplet};

const FACTS: &str = "state.json";
const BLOCKS: &str = "blocks.seg";
const ROWS: &str = "rows";
const INDEX: &str = "index.faiss";

/// What a state folder says of the run that left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFacts {
    tripmine_version: String,
    /// SHA-256 of the options that shape mined blocks (not outputs, formats or threads).
    shaping: String,
    inputs: Vec<InputStat>,
    /// Retrieval mode: the queries' and qrels files, which must not change (the corpus files
    /// are `inputs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fixed: Vec<InputStat>,
    rows: u64,
    /// The label of each code then, as text (codes follow sorted labels, so new labels can
    /// renumber old ones).
    labels: Vec<String>,
    /// Id of `blocks.seg`.
    blocks_id: u64,
    /// The rows kept in `rows/` (the corpus' in retrieval mode), so that the files they came
    /// from are not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept: Option<KeptFacts>,
    /// The approximate index searched (its factory string), kept in `index.faiss` so that
    /// later runs add their new rows to it instead of training another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index: Option<String>,
}

/// What an incremental run changed, for the summary and the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// `incremental`, or `full` with the reason.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Rows the state did not hold (every row in a full run).
    pub new_rows: u64,
    /// Anchors of the state mined again because a new row could change them.
    pub anchors_mined_again: u64,
    /// Anchors of the state that took new rows into their selection without being mined
    /// again.
    #[serde(default)]
    pub anchors_updated: u64,
    /// Anchors of the state that left `--anchors-sample` (new rows of smaller key took their
    /// place): their triplets are gone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub anchors_dropped: u64,
    /// Triplets (before the cross-anchor rules) that are new, that are gone, and that were
    /// kept from the state (their ranks counted again).
    pub triplets_added: u64,
    pub triplets_removed: u64,
    pub triplets_kept: u64,
    /// Rows of the delta (`--delta`) marked `add` and `remove`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_rows_added: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta_rows_removed: Option<u64>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

/// A run with a state folder, as decided before reading: incremental from `previous`, or full.
pub(super) struct StateRun {
    dir: PathBuf,
    /// The inputs' stats as this run found them, before reading (in retrieval mode the
    /// corpus files; the queries and qrels in `fixed`).
    inputs: Vec<InputStat>,
    fixed: Vec<InputStat>,
    previous: Result<StateFacts, String>,
}

/// The new state, written under a temporary name: [`PendingState::commit`] renames it into
/// place once the outputs are.
pub(super) struct PendingState {
    target: AtomicPath,
}

impl PendingState {
    pub(super) fn commit(self) -> Result<()> {
        self.target.commit()
    }
}

impl StateRun {
    /// Reads the state in `dir` and compares it with the job's inputs and options.
    pub(super) fn examine(config: &MiningConfig, dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let input = &config.input;
        let (inputs, fixed) = if input.retrieval() {
            // The corpus may grow by files at its end; the queries and qrels stay as they were.
            let mut fixed = resolve_inputs(&input.queries)?;
            fixed.extend(input.qrels.iter().cloned());
            (
                stat_inputs(&resolve_inputs(&input.corpus)?)?,
                stat_inputs(&fixed)?,
            )
        } else {
            (stat_inputs(files)?, Vec::new())
        };
        let previous = Self::compare(config, dir, &inputs, &fixed)?;
        Ok(StateRun {
            dir: dir.to_path_buf(),
            inputs,
            fixed,
            previous,
        })
    }

    /// The rows the state kept, when this run can take them instead of reading their files:
    /// the files are unchanged and the `--with` columns the same.
    pub(super) fn kept_rows(&self, config: &MiningConfig) -> Option<KeptRows> {
        let facts = self.previous.as_ref().ok()?;
        let kept = facts.kept.as_ref()?;
        if kept.table.rows as u64 != facts.rows || kept.table.sources.len() != facts.inputs.len() {
            return None;
        }
        if kept.with != config.input.with {
            tracing::info!(
                stage = "state",
                "the --with columns changed: every input file is read again"
            );
            return None;
        }
        let dir = self.dir.join(ROWS);
        if !dir.is_dir() {
            tracing::info!(
                stage = "state",
                "the state keeps no rows: every input file is read"
            );
            return None;
        }
        Some(KeptRows::new(&dir, kept.clone()))
    }

    /// The approximate index the state kept and the rows it holds, when this run is
    /// incremental: its new rows are added to it.
    pub(super) fn kept_index(&self) -> Option<(PathBuf, usize)> {
        let facts = self.previous.as_ref().ok()?;
        facts.index.as_ref()?;
        let path = self.dir.join(INDEX);
        if !path.is_file() {
            tracing::info!(
                stage = "state",
                "the state's index is missing: a new one is built"
            );
            return None;
        }
        Some((path, facts.rows as usize))
    }

    fn compare(
        config: &MiningConfig,
        dir: &Path,
        now: &[InputStat],
        fixed: &[InputStat],
    ) -> Result<Result<StateFacts, String>> {
        let path = dir.join(FACTS);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err("no state yet".into()));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let force = config.run.force;
        let refuse = |why: String| -> Result<Result<StateFacts, String>> {
            if force {
                Ok(Err(format!("{why}; rebuilt (--force)")))
            } else {
                Err(Error::Config(format!(
                    "--state {}: {why}; --force rebuilds it (every anchor mined again)",
                    dir.display()
                )))
            }
        };
        let facts: StateFacts = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(e) => {
                return refuse(format!(
                    "{} is not a state of this version ({e})",
                    path.display()
                ));
            }
        };
        if facts.tripmine_version != env!("CARGO_PKG_VERSION") {
            return refuse(format!(
                "made by tripmine {}, this is {}",
                facts.tripmine_version,
                env!("CARGO_PKG_VERSION")
            ));
        }
        if facts.shaping != shaping(config) {
            return refuse("made with other mining options".into());
        }
        if force {
            return Ok(Err("--force".into()));
        }
        if facts.fixed != fixed {
            let changed = facts
                .fixed
                .iter()
                .zip(fixed)
                .find(|(old, now)| old != now)
                .map_or("the queries or qrels files".into(), |(old, _)| {
                    old.path.display().to_string()
                });
            return Ok(Err(format!("{changed} changed (only the corpus may grow)")));
        }
        for (i, old) in facts.inputs.iter().enumerate() {
            let why = match now.iter().position(|s| s.path == old.path) {
                None => format!("{} is no longer an input", old.path.display()),
                Some(j) if now[j] != *old => format!("{} changed", old.path.display()),
                Some(j) if j != i => format!("{} moved in the order of inputs", old.path.display()),
                Some(_) => continue,
            };
            return Ok(Err(why));
        }
        Ok(Ok(facts))
    }

    /// Mines what the state does not answer (every anchor in a full run), writes the new state
    /// under a temporary name and replays every anchor's block into `emitter`; the triplets
    /// of `recall_sample`'s anchors are kept for the recall measured.
    pub(super) fn mine(
        self,
        job: &Job,
        miner: &mut Miner,
        input: &Input,
        anchors: &[u32],
        emitter: &mut Emitter,
        recall_sample: &[u32],
    ) -> Result<(PendingState, Changes, Vec<Triplet>)> {
        let table = &input.table;
        // Rows the previous state kept (whatever this run read): their inputs are unchanged,
        // so this table starts with them, and the new state's vectors file extends theirs.
        let previous_kept = self
            .previous
            .as_ref()
            .ok()
            .and_then(|facts| Some(KeptRows::new(&self.dir.join(ROWS), facts.kept.clone()?)));
        let previous = self
            .previous
            .and_then(|facts| usable(job.config, &facts, table).map(|()| facts));
        if let Err(reason) = &previous {
            tracing::info!(stage = "state", state = %self.dir.display(), "mining every anchor: {reason}");
        }
        let named = self.dir.join(BLOCKS);
        let blocks_id = rand::random::<u64>();
        // The previous output, for the delta, is read before the new state replaces it.
        let before = match &previous {
            Ok(facts) if job.config.output.delta.is_some() => Some((
                PreviousOutput::open(&named, &job.config.mine, miner.cross_anchor_budget())?,
                facts.blocks_id,
            )),
            _ => None,
        };
        let base = before.as_ref().map(|(_, id)| *id);
        emitter.track_changes(job, before.map(|(p, _)| p), blocks_id, base)?;
        let target = AtomicPath::new_dir(&self.dir)?;
        let blocks_path = target.tmp().join(BLOCKS);
        let file = File::create(&blocks_path).map_err(|e| Error::output(&named, e))?;
        let mut writer = BlockWriter::new(file, &named, blocks_id, 0)?;
        let changes = match previous {
            Err(reason) => Changes {
                mode: "full".into(),
                reason: Some(reason),
                new_rows: table.rows() as u64,
                triplets_added: mine_into(job, miner, anchors, |b| writer.block(b))?,
                ..Changes::default()
            },
            Ok(facts) => mine_new(job, miner, table, anchors, &self.dir, &facts, &mut writer)?,
        };
        let file = writer.end([0; FIGURES])?;
        file.sync_all().map_err(|e| Error::output(&named, e))?;
        let kept = save_kept(
            table,
            &job.config.input.with,
            previous_kept.as_ref(),
            &target.tmp().join(ROWS),
        )?;
        // An approximate index is kept with the rows it holds; an exact one needs no file.
        let index = match miner.exact() {
            true => None,
            false => {
                miner.save_index(&target.tmp().join(INDEX))?;
                Some(miner.index_info().factory.clone())
            }
        };
        let facts = StateFacts {
            index,
            tripmine_version: env!("CARGO_PKG_VERSION").into(),
            shaping: shaping(job.config),
            inputs: self.inputs.clone(),
            fixed: self.fixed.clone(),
            rows: table.rows() as u64,
            labels: label_texts(table)?,
            blocks_id,
            kept: Some(kept),
        };
        let json = serde_json::to_vec_pretty(&facts).expect("state facts serialise");
        std::fs::write(target.tmp().join(FACTS), json)
            .map_err(|e| Error::output(self.dir.join(FACTS), e))?;
        tracing::info!(
            stage = "state",
            mode = changes.mode,
            new_rows = changes.new_rows,
            anchors_mined_again = changes.anchors_mined_again,
            "state written"
        );

        // The blocks as a full run would hand them over, in anchor order.
        let replay = || BlockReader::open(&blocks_path);
        if emitter.needs_every_block() {
            emitter.observe_all(replay)?;
        }
        // The recall sample's triplets are taken as the blocks go by.
        let mut sampled = Vec::new();
        let mut blocks = replay()?;
        while let Some(block) = blocks.next_block()? {
            if !recall_sample.is_empty() {
                sampled.extend(
                    block
                        .triplets
                        .iter()
                        .filter(|t| recall_sample.binary_search(&t.anchor).is_ok()),
                );
            }
            emitter.emit(block)?;
        }
        Ok((PendingState { target }, changes, sampled))
    }
}

/// Whether the state's rows are the table's first rows (else why not).
fn usable(config: &MiningConfig, facts: &StateFacts, table: &Table) -> Result<(), String> {
    let sources = table.sources();
    let old_rows: u64 = sources
        .iter()
        .take(facts.inputs.len())
        .map(|s| s.rows)
        .sum();
    if sources.len() < facts.inputs.len() || old_rows != facts.rows {
        return Err("the state's files read differently now".into());
    }
    // Random negative samples key rows by the table's size in bits.
    let bits = |rows: u64| u64::BITS - rows.max(2).saturating_sub(1).leading_zeros();
    if config.mine.sample == NegativeSampling::Random
        && bits(facts.rows) != bits(table.rows() as u64)
    {
        return Err(format!(
            "the table passed {} rows, which moves every random negative sample",
            1u64 << bits(facts.rows)
        ));
    }
    Ok(())
}

/// The incremental part: sifts the state's blocks (anchors a new row could change are taken
/// out, the rest kept with their ranks counted again), mines those anchors and the new rows,
/// and writes all blocks merged in anchor order.
#[allow(clippy::too_many_arguments)]
fn mine_new(
    job: &Job,
    miner: &mut Miner,
    table: &Table,
    anchors: &[u32],
    dir: &Path,
    facts: &StateFacts,
    writer: &mut BlockWriter,
) -> Result<Changes> {
    let old_rows = facts.rows as usize;
    let n = table.rows();
    let mut changes = Changes {
        mode: "incremental".into(),
        new_rows: (n - old_rows) as u64,
        ..Changes::default()
    };
    // An unlabelled corpus has the one label `all`.
    let codes = code_map(&facts.labels, table)?;
    let path = dir.join(BLOCKS);
    let mut old = BlockReader::open(&path)?;
    if old.id != facts.blocks_id {
        return Err(old.bad("does not belong to this state's state.json; run with --force"));
    }
    let mut kept = HeldBlocks::new(&job.scratch)?;
    let mut again: Vec<u32> = Vec::new();
    let mut seen = 0usize;
    let new = miner.new_rows_searched(old_rows)?;
    // Under `--anchors-sample` the old anchors were the old rows' sample; those that left it
    // (keys only enter below the sample's largest) are dropped.
    // In retrieval mode the anchors are the queries, which do not change.
    let anchor_rows = miner.anchor_rows();
    let old_anchor_rows = if job.config.input.retrieval() {
        anchor_rows
    } else {
        old_rows
    };
    let old_anchors = match job.config.mine.anchors_sample {
        Some(m) => m.min(old_anchor_rows),
        None => old_anchor_rows,
    };
    let sampled = |a: u32| anchors.binary_search(&a).is_ok();
    let bar = progress(job.show, Some(old_anchors as u64), "sifting");
    while let Some(mut block) = old.next_block()? {
        crate::process::check_interrupted()?;
        seen += block.anchors.len();
        if anchors.len() < anchor_rows {
            let (dropped, triplets) = block.retain_anchors(sampled);
            changes.anchors_dropped += dropped as u64;
            changes.triplets_removed += triplets as u64;
        }
        for r in &mut block.anchors {
            r.label = codes[r.label as usize];
            if let Some(near) = &mut r.neighbour_labels {
                near.majority = codes[near.majority as usize];
            }
        }
        let (taken, sifted) = miner.sift_block(&mut block, &new);
        again.extend(taken);
        changes.anchors_mined_again += sifted.anchors as u64;
        changes.anchors_updated += sifted.updated as u64;
        changes.triplets_removed += sifted.triplets + sifted.updated_removed;
        changes.triplets_added += sifted.updated_added;
        changes.triplets_kept += block.triplets.len() as u64 - sifted.updated_added;
        kept.hold(&block)?;
        bar.inc((sifted.anchors + block.anchors.len()) as u64);
    }
    bar.finish_and_clear();
    if seen != old_anchors {
        return Err(old.bad(&format!(
            "holds {seen} anchors, its state.json {old_anchors} (of {old_rows} rows); run with \
             --force"
        )));
    }
    tracing::info!(
        stage = "state",
        new_rows = changes.new_rows,
        anchors_mined_again = changes.anchors_mined_again,
        anchors_updated = changes.anchors_updated,
        "state sifted"
    );
    // New rows are anchors too (new documents are not: the queries stay).
    let first_new = anchors.partition_point(|&a| (a as usize) < old_anchor_rows);
    let mine: Vec<u32> = again
        .into_iter()
        .chain(anchors[first_new..].iter().copied())
        .collect();
    let mut fresh = HeldBlocks::new(&job.scratch)?;
    changes.triplets_added += mine_into(job, miner, &mine, |b| fresh.hold(b))?;
    merge(
        Cursor::new(kept.held()?.read()?),
        Cursor::new(fresh.held()?.read()?),
        writer,
    )?;
    Ok(changes)
}

/// Mines `anchors` with a progress bar, handing each block to `put`; the triplets mined.
fn mine_into(
    job: &Job,
    miner: &mut Miner,
    anchors: &[u32],
    mut put: impl FnMut(&MinedBlock) -> Result<()>,
) -> Result<u64> {
    let bar = progress(job.show, Some(anchors.len() as u64), "mining");
    let mut triplets = 0;
    mine_windows(
        job,
        miner,
        anchors,
        |n| bar.inc(n as u64),
        |block| {
            triplets += block.triplets.len() as u64;
            put(&block)
        },
    )?;
    bar.finish_and_clear();
    Ok(triplets)
}

/// The options that shape mined blocks, hashed: the mining parameters (not the memory limit)
/// and the columns read (not the files).
fn shaping(config: &MiningConfig) -> String {
    // The files are compared apart (`inputs`, `fixed`).
    let input = InputOptions {
        paths: Vec::new(),
        queries: Vec::new(),
        corpus: Vec::new(),
        qrels: None,
        with: Vec::new(),
        ..config.input.clone()
    };
    let mine = MiningParams {
        memory_limit: None,
        ..config.mine.clone()
    };
    sha256_hex(
        &serde_json::to_vec(&serde_json::json!({ "input": input, "mine": mine }))
            .expect("options serialise"),
    )
}

/// Each label code's label, as text.
fn label_texts(table: &Table) -> Result<Vec<String>> {
    let names = arrow::compute::cast(&table.label_names(), &DataType::Utf8)?;
    let names = names
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8");
    Ok((0..names.len())
        .map(|i| names.value(i).to_string())
        .collect())
}

/// The code in `table` of each code of the state (whose labels were `old`).
fn code_map(old: &[String], table: &Table) -> Result<Vec<u32>> {
    let now: HashMap<String, u32> = label_texts(table)?
        .into_iter()
        .enumerate()
        .map(|(c, l)| (l, c as u32))
        .collect();
    old.iter()
        .map(|label| {
            now.get(label).copied().ok_or_else(|| {
                Error::BadData(format!(
                    "label {label} of the state is not in the inputs any more; run with --force"
                ))
            })
        })
        .collect()
}

/// A reader of blocks taken one anchor at a time.
struct Cursor {
    reader: BlockReader,
    block: MinedBlock,
    record: usize,
    triplet: usize,
    neighbour: usize,
}

impl Cursor {
    fn new(reader: BlockReader) -> Self {
        Cursor {
            reader,
            block: MinedBlock::default(),
            record: 0,
            triplet: 0,
            neighbour: 0,
        }
    }

    /// The next anchor, if any.
    fn peek(&mut self) -> Result<Option<u32>> {
        while self.record == self.block.anchors.len() {
            match self.reader.next_block()? {
                Some(block) => {
                    self.block = block;
                    self.record = 0;
                    self.triplet = 0;
                    self.neighbour = 0;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(self.block.anchors[self.record].anchor))
    }

    /// Moves the next anchor's record and triplets to `out`.
    fn take_into(&mut self, out: &mut MinedBlock) {
        let record = self.block.anchors[self.record];
        self.record += 1;
        out.anchors.push(record);
        let triplets = &self.block.triplets;
        let start = self.triplet;
        while self.triplet < triplets.len() && triplets[self.triplet].anchor == record.anchor {
            self.triplet += 1;
        }
        out.triplets
            .extend_from_slice(&triplets[start..self.triplet]);
        let start = self.neighbour;
        self.neighbour += record.neighbours as usize;
        out.neighbours
            .extend_from_slice(&self.block.neighbours[start..self.neighbour]);
    }
}

/// Writes the anchors of `a` and `b` (each in anchor order, none in both) in anchor order, in
/// blocks of [`ANCHOR_BLOCK`] anchors.
fn merge(mut a: Cursor, mut b: Cursor, writer: &mut BlockWriter) -> Result<()> {
    let mut out = MinedBlock::default();
    loop {
        let from_a = match (a.peek()?, b.peek()?) {
            (None, None) => break,
            (Some(x), Some(y)) => x < y,
            (first, _) => first.is_some(),
        };
        if from_a {
            a.take_into(&mut out);
        } else {
            b.take_into(&mut out);
        }
        if out.anchors.len() == ANCHOR_BLOCK {
            writer.block(&out)?;
            out = MinedBlock::default();
        }
    }
    if !out.anchors.is_empty() {
        writer.block(&out)?;
    }
    Ok(())
}

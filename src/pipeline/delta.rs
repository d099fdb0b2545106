//! The delta of a run with a state (`--delta PATH`): the rows of the triplet output that changed
//! since the run that left the state, for trainers that update a data set in place.
//!
//! In: every block as the run emits it (after the cross-anchor rules), in anchor order, and the
//! previous state's blocks, which give the previous output once replayed through the same rules.
//! Out: Parquet in the triplet output's layout plus `op` (`add` or `remove`): per anchor, the
//! rows of the previous output that are gone, then the rows that are new, so applying the delta
//! to the previous output gives this run's output as a set of rows, but for negative ranks: a
//! kept triplet whose negative's rank grew (new rows came nearer) is not a change, or every
//! row would be one once the table grew by a few percent. In the triplet format a row is one
//! triplet; in the n-tuple and pairs formats an anchor whose triplets changed has all its rows
//! removed and added again. A full run (no usable state) writes every row as `add`, and says
//! so in the file's metadata (`tripmine.delta.base` = `none`): it replaces the data set.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Int8Array, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::blocks::{BlockReader, observe_every_block};
use super::outputs::{OutputLayout, WRITE_BATCH_ROWS};
use crate::config::{MiningParams, OutputFormat};
use crate::error::Result;
use crate::io::{AtomicPath, TripletSink};
use crate::mine::{CrossAnchorRules, MinedBlock, Triplet};

/// Metadata key of the state the delta starts from (`none`: it replaces everything).
pub const BASE_KEY: &str = "tripmine.delta.base";
/// Metadata key of the state the delta leads to (the state this run leaves).
pub const STATE_KEY: &str = "tripmine.delta.state";

/// What a delta held.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DeltaCounts {
    pub(super) added: u64,
    pub(super) removed: u64,
}

impl DeltaCounts {
    /// Counts rows by their `op` (true: `add`).
    fn tally(&mut self, ops: impl Iterator<Item = bool>) {
        for add in ops {
            if add {
                self.added += 1;
            } else {
                self.removed += 1;
            }
        }
    }
}

/// The previous run's output, replayed from its state's blocks one anchor at a time.
pub(super) struct PreviousOutput {
    reader: BlockReader,
    rules: CrossAnchorRules,
    block: MinedBlock,
    record: usize,
    triplet: usize,
}

impl PreviousOutput {
    /// The output the blocks in `path` gave under `params`' cross-anchor rules.
    /// `budget`: the bytes its cross-anchor rules may count in per pass.
    pub(super) fn open(path: &Path, params: &MiningParams, budget: Option<usize>) -> Result<Self> {
        let mut rules = CrossAnchorRules::within(params, budget);
        if rules.need_every_block() {
            observe_every_block(&mut rules, || BlockReader::open(path))?;
        }
        Ok(PreviousOutput {
            reader: BlockReader::open(path)?,
            rules,
            block: MinedBlock::default(),
            record: 0,
            triplet: 0,
        })
    }

    /// The triplets `anchor` had, if the previous run mined it; the triplets of the anchors
    /// before it that this run does not have (they left `--anchors-sample`) go to `gone`.
    /// Anchors are asked for in ascending order (`u32::MAX`: every anchor left).
    fn triplets_of(&mut self, anchor: u32, gone: &mut Vec<Triplet>) -> Result<&[Triplet]> {
        loop {
            while self.record < self.block.anchors.len() {
                let here = self.block.anchors[self.record].anchor;
                if here > anchor {
                    return Ok(&[]);
                }
                let start = self.triplet;
                let ts = &self.block.triplets;
                while self.triplet < ts.len() && ts[self.triplet].anchor == here {
                    self.triplet += 1;
                }
                self.record += 1;
                if here == anchor {
                    return Ok(&self.block.triplets[start..self.triplet]);
                }
                gone.extend_from_slice(&self.block.triplets[start..self.triplet]);
            }
            match self.reader.next_block()? {
                Some(mut block) => {
                    self.rules.apply(&mut block);
                    self.block = block;
                    self.record = 0;
                    self.triplet = 0;
                }
                None => return Ok(&[]),
            }
        }
    }
}

/// Writes the delta as blocks are emitted.
pub(super) struct DeltaWriter {
    sink: TripletSink,
    schema: SchemaRef,
    previous: Option<PreviousOutput>,
    /// Rows are triplets (else an anchor's rows are replaced whole when any triplet changed).
    by_triplet: bool,
    pending: Vec<Triplet>,
    /// `op` of each pending row: true for `add`.
    adds: Vec<bool>,
    counts: DeltaCounts,
}

impl DeltaWriter {
    /// A delta at `dest` against `previous` (none: every row is added), between the states
    /// named `base` (`none` without a previous output) and `state`.
    pub(super) fn create(
        dest: &Path,
        layout: &OutputLayout,
        format: OutputFormat,
        previous: Option<PreviousOutput>,
        state: u64,
        base: Option<u64>,
    ) -> Result<Self> {
        let mut fields: Vec<Field> = layout
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            "op",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ));
        let metadata = HashMap::from([
            (
                BASE_KEY.to_string(),
                base.map_or("none".to_string(), |b| format!("{b:016x}")),
            ),
            (STATE_KEY.to_string(), format!("{state:016x}")),
        ]);
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        Ok(DeltaWriter {
            sink: TripletSink::create(dest, schema.clone(), usize::MAX)?,
            schema,
            previous,
            by_triplet: format == OutputFormat::Triplet,
            pending: Vec::new(),
            adds: Vec::new(),
            counts: DeltaCounts::default(),
        })
    }

    /// Compares the anchors of `block` (as emitted) with the previous output's.
    pub(super) fn compare(&mut self, block: &MinedBlock, layout: &OutputLayout) -> Result<()> {
        let mut start = 0;
        for record in &block.anchors {
            let ts = &block.triplets;
            let mut end = start;
            while end < ts.len() && ts[end].anchor == record.anchor {
                end += 1;
            }
            let now = &ts[start..end];
            start = end;
            let mut gone = Vec::new();
            let before = match &mut self.previous {
                Some(p) => p.triplets_of(record.anchor, &mut gone)?,
                None => &[],
            };
            queue(&mut self.pending, &mut self.adds, gone.iter(), false);
            if before.len() == now.len() && before.iter().zip(now).all(|(b, n)| key(b) == key(n)) {
                continue;
            }
            if self.by_triplet {
                let gone = not_in(before, now);
                let new = not_in(now, before);
                queue(&mut self.pending, &mut self.adds, gone, false);
                queue(&mut self.pending, &mut self.adds, new, true);
            } else {
                queue(&mut self.pending, &mut self.adds, before.iter(), false);
                queue(&mut self.pending, &mut self.adds, now.iter(), true);
            }
            if self.pending.len() >= WRITE_BATCH_ROWS {
                self.flush(layout)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, layout: &OutputLayout) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let columns = if self.by_triplet {
            let mut columns: Vec<ArrayRef> = layout.batch(&self.pending)?.columns().to_vec();
            columns.push(op_column(self.adds.iter().copied()));
            self.counts.tally(self.adds.iter().copied());
            columns
        } else {
            // Rows of other layouts gather an anchor's triplets: the removed and the added
            // are laid out apart, the removed rows first.
            let (removed, added) = self.split_pending();
            let old = layout.batch(&removed)?;
            let new = layout.batch(&added)?;
            let ops = std::iter::repeat_n(false, old.num_rows())
                .chain(std::iter::repeat_n(true, new.num_rows()));
            self.counts.tally(ops.clone());
            let both = arrow::compute::concat_batches(&old.schema(), [&old, &new])?;
            let mut columns = both.columns().to_vec();
            columns.push(op_column(ops));
            columns
        };
        self.sink
            .write(&RecordBatch::try_new(self.schema.clone(), columns)?)?;
        self.pending.clear();
        self.adds.clear();
        Ok(())
    }

    /// The pending triplets removed and added (other layouts: each in anchor order, all
    /// removals of a batch before its additions).
    fn split_pending(&self) -> (Vec<Triplet>, Vec<Triplet>) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for (t, &add) in self.pending.iter().zip(&self.adds) {
            if add {
                added.push(*t);
            } else {
                removed.push(*t);
            }
        }
        (removed, added)
    }

    /// Writes what is pending; the delta stays under its temporary name.
    pub(super) fn close(mut self, layout: &OutputLayout) -> Result<(AtomicPath, DeltaCounts)> {
        if let Some(p) = &mut self.previous {
            // Anchors after the last one emitted that left the sample.
            let mut gone = Vec::new();
            p.triplets_of(u32::MAX, &mut gone)?;
            queue(&mut self.pending, &mut self.adds, gone.iter(), false);
        }
        self.flush(layout)?;
        Ok((self.sink.close()?, self.counts))
    }
}

/// What makes a triplet a row of the delta: all but the negative's rank.
fn key(t: &Triplet) -> (u32, u32, u32, u32) {
    (t.positive, t.negative, t.d_ap.to_bits(), t.d_an.to_bits())
}

/// The triplets of `a` that `b` does not have (as a multiset, ranks aside), in `a`'s order.
fn not_in<'t>(a: &'t [Triplet], b: &[Triplet]) -> impl Iterator<Item = &'t Triplet> {
    let mut left: HashMap<_, u32> = HashMap::with_capacity(b.len());
    for t in b {
        *left.entry(key(t)).or_default() += 1;
    }
    a.iter().filter(move |t| match left.get_mut(&key(t)) {
        Some(n) if *n > 0 => {
            *n -= 1;
            false
        }
        _ => true,
    })
}

fn queue<'t>(
    pending: &mut Vec<Triplet>,
    adds: &mut Vec<bool>,
    triplets: impl Iterator<Item = &'t Triplet>,
    add: bool,
) {
    for t in triplets {
        pending.push(*t);
        adds.push(add);
    }
}

/// The `op` column: `remove` or `add` per row.
fn op_column(adds: impl Iterator<Item = bool>) -> ArrayRef {
    let keys = Int8Array::from_iter_values(adds.map(i8::from));
    let values = Arc::new(StringArray::from(vec!["remove", "add"]));
    Arc::new(DictionaryArray::<Int8Type>::try_new(keys, values).expect("keys 0 and 1"))
}

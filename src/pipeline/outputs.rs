//! The rows written: triplets in the configured layout, label-noise suspects, and report
//! metadata.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt8Array, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::config::{Count, MiningParams, OutputFormat};
use crate::error::{Error, Result};
use crate::io::{Labels, Table};
use crate::mine::Triplet;
use crate::score::{TripletKind, triplet_loss};

/// Label-noise suspects, least agreement first: `id, label, majority_neighbour_label,
/// agreement`.
pub(super) fn suspects_batch(
    table: &Table,
    mut suspects: Vec<(f32, u32, u32)>,
) -> Result<RecordBatch> {
    suspects.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let Labels::Given { column, distinct } = &table.labels else {
        unreachable!("suspects are refused without labels (validated)");
    };
    let rows = UInt32Array::from_iter_values(suspects.iter().map(|s| s.1));
    let majority = UInt32Array::from_iter_values(suspects.iter().map(|s| s.2));
    let schema = Schema::new(vec![
        Field::new("id", table.ids.data_type().clone(), false),
        Field::new("label", column.data_type().clone(), false),
        Field::new(
            "majority_neighbour_label",
            distinct.data_type().clone(),
            false,
        ),
        Field::new("agreement", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        take(&table.ids, &rows, None)?,
        take(column, &rows, None)?,
        take(distinct, &majority, None)?,
        Arc::new(Float32Array::from_iter_values(suspects.iter().map(|s| s.0))),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

/// Figures as JSON, for the report's key-value metadata.
pub(super) fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("report figures serialise")
}

/// The batch with `entries` added to its schema's metadata (kept in the Parquet file).
pub(super) fn with_metadata<const N: usize>(
    batch: RecordBatch,
    entries: [(&str, String); N],
) -> Result<RecordBatch> {
    let mut metadata = batch.schema().metadata().clone();
    for (k, v) in entries {
        metadata.insert(k.to_string(), v);
    }
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
    Ok(batch.with_schema(schema)?)
}

/// The triplet output's rows in the configured [`OutputFormat`]: ids (and, in labelled mode,
/// labels) in their input types, distances, loss, kind, the rule that admitted each negative
/// and its rank, and the `--with` columns of anchors, positives and negatives.
pub struct OutputLayout<'a> {
    /// Where anchor ids and columns come from (the table, or the queries).
    anchors: &'a Table,
    /// Where positive and negative ids and columns come from (the table, or the corpus).
    docs: &'a Table,
    format: OutputFormat,
    with: Vec<String>,
    margin: f32,
    rule: String,
    /// Negative columns of an n-tuple row.
    slots: usize,
    schema: SchemaRef,
}

impl<'a> OutputLayout<'a> {
    /// The layout for a run; `anchors` and `docs` are the same table in labelled mode.
    pub fn new(
        anchors: &'a Table,
        docs: &'a Table,
        params: &MiningParams,
        format: OutputFormat,
        with: &[String],
    ) -> Result<Self> {
        for name in with {
            for t in [anchors, docs] {
                if t.extra(name).is_none() {
                    return Err(Error::Config(format!(
                        "--with {name}: the column was not read"
                    )));
                }
            }
        }
        let slots = match (format, params.num_negatives) {
            (OutputFormat::NTuple, Count::AtMost(n)) => n,
            _ => 0,
        };
        let mut layout = OutputLayout {
            anchors,
            docs,
            format,
            with: with.to_vec(),
            margin: params.margin,
            rule: params.negative_rule(),
            slots,
            schema: Arc::new(Schema::empty()),
        };
        layout.schema = layout.make_schema();
        Ok(layout)
    }

    /// The schema every batch has.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn labelled(&self) -> bool {
        self.anchors.labelled()
    }

    /// The field of passed-through column `name` of `table` for `role` (`anchor_text`).
    fn extra_field(&self, role: &str, table: &Table, name: &str) -> Field {
        let data_type = table.extra(name).expect("checked").data_type().clone();
        Field::new(format!("{role}_{name}"), data_type, true)
    }

    fn make_schema(&self) -> SchemaRef {
        let a_id = self.anchors.ids.data_type().clone();
        let d_id = self.docs.ids.data_type().clone();
        let label = self
            .anchors
            .label_column()
            .map_or(DataType::Null, |c| c.data_type().clone());
        let f32f = |name: String, nullable| Field::new(name, DataType::Float32, nullable);
        let mut fields = vec![Field::new("anchor_id", a_id, false)];
        match self.format {
            OutputFormat::Triplet => {
                fields.push(Field::new("positive_id", d_id.clone(), false));
                fields.push(Field::new("negative_id", d_id, false));
                if self.labelled() {
                    fields.push(Field::new("anchor_label", label.clone(), false));
                    fields.push(Field::new("negative_label", label, false));
                }
                fields.extend([
                    f32f("d_ap".into(), false),
                    f32f("d_an".into(), false),
                    f32f("loss".into(), false),
                    Field::new("kind", DataType::Utf8, false),
                    Field::new("rule", DataType::Utf8, false),
                    Field::new("negative_rank", DataType::UInt32, false),
                ]);
                for name in &self.with {
                    fields.push(self.extra_field("anchor", self.anchors, name));
                    fields.push(self.extra_field("positive", self.docs, name));
                    fields.push(self.extra_field("negative", self.docs, name));
                }
            }
            OutputFormat::NTuple => {
                fields.push(Field::new("positive_id", d_id.clone(), false));
                for i in 1..=self.slots {
                    fields.push(Field::new(format!("negative_{i}_id"), d_id.clone(), true));
                }
                if self.labelled() {
                    fields.push(Field::new("anchor_label", label, false));
                }
                fields.push(f32f("d_ap".into(), false));
                for i in 1..=self.slots {
                    fields.push(f32f(format!("d_an_{i}"), true));
                }
                for i in 1..=self.slots {
                    fields.push(Field::new(
                        format!("negative_{i}_rank"),
                        DataType::UInt32,
                        true,
                    ));
                }
                fields.push(Field::new("rule", DataType::Utf8, false));
                for name in &self.with {
                    fields.push(self.extra_field("anchor", self.anchors, name));
                    fields.push(self.extra_field("positive", self.docs, name));
                    for i in 1..=self.slots {
                        fields.push(self.extra_field(&format!("negative_{i}"), self.docs, name));
                    }
                }
            }
            OutputFormat::Pairs => {
                fields.push(Field::new("candidate_id", d_id, false));
                fields.push(Field::new("label", DataType::UInt8, false));
                if self.labelled() {
                    fields.push(Field::new("anchor_label", label.clone(), false));
                    fields.push(Field::new("candidate_label", label, false));
                }
                fields.extend([
                    f32f("distance".into(), false),
                    Field::new("rule", DataType::Utf8, false),
                    Field::new("negative_rank", DataType::UInt32, true),
                ]);
                for name in &self.with {
                    fields.push(self.extra_field("anchor", self.anchors, name));
                    fields.push(self.extra_field("candidate", self.docs, name));
                }
            }
        }
        Arc::new(Schema::new(fields))
    }

    /// The output rows of `triplets` (ordered by anchor, positive, `d_an`, as mined).
    pub fn batch(&self, triplets: &[Triplet]) -> Result<RecordBatch> {
        let columns = match self.format {
            OutputFormat::Triplet => self.triplet_columns(triplets)?,
            OutputFormat::NTuple => self.tuple_columns(triplets)?,
            OutputFormat::Pairs => self.pair_columns(triplets)?,
        };
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The `--with` columns, in schema order: per name, the anchors' value, then the value of
    /// each list of document rows.
    fn passthrough(&self, anchors: &UInt32Array, docs: &[&UInt32Array]) -> Result<Vec<ArrayRef>> {
        let mut columns = Vec::new();
        for name in &self.with {
            let a = self.anchors.extra(name).expect("checked");
            let d = self.docs.extra(name).expect("checked");
            columns.push(take(a, anchors, None)?);
            for rows in docs {
                columns.push(take(d, *rows, None)?);
            }
        }
        Ok(columns)
    }

    fn rules(&self, n: usize) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            self.rule.as_str(),
            n,
        )))
    }

    fn triplet_columns(&self, triplets: &[Triplet]) -> Result<Vec<ArrayRef>> {
        let rows = |f: fn(&Triplet) -> u32| UInt32Array::from_iter_values(triplets.iter().map(f));
        let (anchors, positives, negatives) = (
            rows(|t| t.anchor),
            rows(|t| t.positive),
            rows(|t| t.negative),
        );
        let margin = self.margin;
        let mut columns: Vec<ArrayRef> = vec![
            take(&self.anchors.ids, &anchors, None)?,
            take(&self.docs.ids, &positives, None)?,
            take(&self.docs.ids, &negatives, None)?,
        ];
        if self.labelled() {
            columns.push(take(label_column(self.anchors), &anchors, None)?);
            columns.push(take(label_column(self.docs), &negatives, None)?);
        }
        columns.extend([
            f32_column(triplets.iter().map(|t| t.d_ap)),
            f32_column(triplets.iter().map(|t| t.d_an)),
            f32_column(
                triplets
                    .iter()
                    .map(|t| triplet_loss(t.d_ap, t.d_an, margin)),
            ),
            Arc::new(StringArray::from_iter_values(
                triplets
                    .iter()
                    .map(|t| TripletKind::classify(t.d_ap, t.d_an, margin).as_str()),
            )) as ArrayRef,
            self.rules(triplets.len()),
            Arc::new(rows(|t| t.negative_rank)),
        ]);
        columns.extend(self.passthrough(&anchors, &[&positives, &negatives])?);
        Ok(columns)
    }

    fn tuple_columns(&self, triplets: &[Triplet]) -> Result<Vec<ArrayRef>> {
        // One row per run of (anchor, positive).
        let mut starts = Vec::new();
        for (i, t) in triplets.iter().enumerate() {
            if i == 0
                || (triplets[i - 1].anchor, triplets[i - 1].positive) != (t.anchor, t.positive)
            {
                starts.push(i);
            }
        }
        starts.push(triplets.len());
        let groups: Vec<&[Triplet]> = starts.windows(2).map(|w| &triplets[w[0]..w[1]]).collect();
        let anchors = UInt32Array::from_iter_values(groups.iter().map(|g| g[0].anchor));
        let positives = UInt32Array::from_iter_values(groups.iter().map(|g| g[0].positive));
        let slot =
            |i: usize| UInt32Array::from_iter(groups.iter().map(|g| g.get(i).map(|t| t.negative)));
        let negatives: Vec<UInt32Array> = (0..self.slots).map(slot).collect();
        let mut columns: Vec<ArrayRef> = vec![
            take(&self.anchors.ids, &anchors, None)?,
            take(&self.docs.ids, &positives, None)?,
        ];
        for n in &negatives {
            columns.push(take(&self.docs.ids, n, None)?);
        }
        if self.labelled() {
            columns.push(take(label_column(self.anchors), &anchors, None)?);
        }
        columns.push(f32_column(groups.iter().map(|g| g[0].d_ap)));
        for i in 0..self.slots {
            columns.push(Arc::new(Float32Array::from_iter(
                groups.iter().map(|g| g.get(i).map(|t| t.d_an)),
            )));
        }
        for i in 0..self.slots {
            columns.push(Arc::new(UInt32Array::from_iter(
                groups.iter().map(|g| g.get(i).map(|t| t.negative_rank)),
            )));
        }
        columns.push(self.rules(groups.len()));
        let mut docs = vec![&positives];
        docs.extend(&negatives);
        columns.extend(self.passthrough(&anchors, &docs)?);
        Ok(columns)
    }

    fn pair_columns(&self, triplets: &[Triplet]) -> Result<Vec<ArrayRef>> {
        // (anchor, candidate, is positive, distance, rank) per anchor: its positives in row
        // order, then its negatives nearest first, each once.
        let mut pairs: Vec<(u32, u32, bool, f32, Option<u32>)> = Vec::new();
        let mut start = 0;
        while start < triplets.len() {
            let a = triplets[start].anchor;
            let end = start + triplets[start..].partition_point(|t| t.anchor == a);
            let group = &triplets[start..end];
            let mut positives: Vec<(u32, f32)> =
                group.iter().map(|t| (t.positive, t.d_ap)).collect();
            positives.sort_unstable_by_key(|p| p.0);
            positives.dedup_by_key(|p| p.0);
            pairs.extend(positives.into_iter().map(|(p, d)| (a, p, true, d, None)));
            let mut negatives: Vec<(f32, u32, u32)> = group
                .iter()
                .map(|t| (t.d_an, t.negative, t.negative_rank))
                .collect();
            negatives.sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            negatives.dedup_by_key(|n| n.1);
            pairs.extend(
                negatives
                    .into_iter()
                    .map(|(d, n, r)| (a, n, false, d, Some(r))),
            );
            start = end;
        }
        let anchors = UInt32Array::from_iter_values(pairs.iter().map(|p| p.0));
        let candidates = UInt32Array::from_iter_values(pairs.iter().map(|p| p.1));
        let mut columns: Vec<ArrayRef> = vec![
            take(&self.anchors.ids, &anchors, None)?,
            take(&self.docs.ids, &candidates, None)?,
            Arc::new(UInt8Array::from_iter_values(
                pairs.iter().map(|p| u8::from(p.2)),
            )),
        ];
        if self.labelled() {
            columns.push(take(label_column(self.anchors), &anchors, None)?);
            columns.push(take(label_column(self.docs), &candidates, None)?);
        }
        columns.push(f32_column(pairs.iter().map(|p| p.3)));
        columns.push(Arc::new(StringArray::from_iter_values(pairs.iter().map(
            |p| {
                if p.2 { "positive" } else { self.rule.as_str() }
            },
        ))));
        columns.push(Arc::new(UInt32Array::from_iter(pairs.iter().map(|p| p.4))));
        columns.extend(self.passthrough(&anchors, &[&candidates])?);
        Ok(columns)
    }
}

fn f32_column(values: impl Iterator<Item = f32>) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(values))
}

/// Triplet rows per batch handed to the writer.
pub(super) const WRITE_BATCH_ROWS: usize = 65_536;

/// Gathers triplets into batches of exactly [`WRITE_BATCH_ROWS`] rows (the last one shorter),
/// whatever blocks they were mined in: the writer's pages follow the batches it is given, so
/// the file must not depend on how anchors were grouped for mining (windows of IVF lists,
/// blocks shrunk to a memory limit).
#[derive(Default)]
pub(super) struct Batcher {
    pending: Vec<Triplet>,
}

impl Batcher {
    /// Adds `triplets`, handing every full batch to `write`.
    pub(super) fn add(
        &mut self,
        mut triplets: &[Triplet],
        mut write: impl FnMut(&[Triplet]) -> Result<()>,
    ) -> Result<()> {
        while !triplets.is_empty() {
            if self.pending.is_empty() && triplets.len() >= WRITE_BATCH_ROWS {
                let (batch, rest) = triplets.split_at(WRITE_BATCH_ROWS);
                write(batch)?;
                triplets = rest;
                continue;
            }
            let take = (WRITE_BATCH_ROWS - self.pending.len()).min(triplets.len());
            let (some, rest) = triplets.split_at(take);
            self.pending.extend_from_slice(some);
            triplets = rest;
            if self.pending.len() == WRITE_BATCH_ROWS {
                write(&self.pending)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Hands what is left to `write`.
    pub(super) fn finish(&mut self, mut write: impl FnMut(&[Triplet]) -> Result<()>) -> Result<()> {
        if !self.pending.is_empty() {
            write(&self.pending)?;
            self.pending = Vec::new();
        }
        Ok(())
    }
}

/// The label column of a table of a labelled layout.
fn label_column(table: &Table) -> &ArrayRef {
    table
        .label_column()
        .expect("label columns are written for labelled tables only")
}

#[cfg(test)]
mod batcher_tests {
    use super::*;

    fn triplets(n: usize) -> Vec<Triplet> {
        (0..n as u32)
            .map(|i| Triplet {
                anchor: i,
                positive: i,
                negative: i,
                d_ap: 0.0,
                d_an: 0.0,
                negative_rank: 0,
            })
            .collect()
    }

    /// The batch lengths written for `pieces` added in turn.
    fn batches_of(pieces: &[usize]) -> Vec<(usize, u32)> {
        let all = triplets(pieces.iter().sum());
        let mut b = Batcher::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &n in pieces {
            b.add(&all[at..at + n], |t| {
                out.push((t.len(), t[0].anchor));
                Ok(())
            })
            .unwrap();
            at += n;
        }
        b.finish(|t| {
            out.push((t.len(), t[0].anchor));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_do_not_depend_on_how_the_triplets_arrive() {
        let total = 2 * WRITE_BATCH_ROWS + 100;
        let whole = batches_of(&[total]);
        assert_eq!(
            whole,
            vec![
                (WRITE_BATCH_ROWS, 0),
                (WRITE_BATCH_ROWS, WRITE_BATCH_ROWS as u32),
                (100, 2 * WRITE_BATCH_ROWS as u32)
            ]
        );
        assert_eq!(batches_of(&[1, total - 1]), whole);
        assert_eq!(
            batches_of(
                &[7000; 18]
                    .iter()
                    .copied()
                    .chain([total - 7000 * 18])
                    .collect::<Vec<_>>()
            ),
            whole
        );
        assert_eq!(
            batches_of(&[WRITE_BATCH_ROWS - 1, 2, total - WRITE_BATCH_ROWS - 1]),
            whole
        );
    }
}

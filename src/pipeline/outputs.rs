//! The rows written: triplet batches, label-noise suspects, and report metadata.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;

use crate::error::Result;
use crate::io::Table;
use crate::mine::Triplet;
use crate::score::{TripletKind, triplet_loss};

/// Label-noise suspects, least agreement first: `id, label, majority_neighbour_label,
/// agreement`.
pub(super) fn suspects_batch(
    table: &Table,
    mut suspects: Vec<(f32, u32, u32)>,
) -> Result<RecordBatch> {
    suspects.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let rows = UInt32Array::from_iter_values(suspects.iter().map(|s| s.1));
    let majority = UInt32Array::from_iter_values(suspects.iter().map(|s| s.2));
    let schema = Schema::new(vec![
        Field::new("id", table.ids.data_type().clone(), false),
        Field::new("label", table.labels.data_type().clone(), false),
        Field::new(
            "majority_neighbour_label",
            table.label_values.data_type().clone(),
            false,
        ),
        Field::new("agreement", DataType::Float32, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        take(&table.ids, &rows, None)?,
        take(&table.labels, &rows, None)?,
        take(&table.label_values, &majority, None)?,
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

/// Schema of the triplet output; ids and labels keep their input types.
pub fn triplet_schema(table: &Table) -> SchemaRef {
    let id = table.ids.data_type().clone();
    let label = table.labels.data_type().clone();
    Arc::new(Schema::new(vec![
        Field::new("anchor_id", id.clone(), false),
        Field::new("positive_id", id.clone(), false),
        Field::new("negative_id", id, false),
        Field::new("anchor_label", label.clone(), false),
        Field::new("negative_label", label, false),
        Field::new("d_ap", DataType::Float32, false),
        Field::new("d_an", DataType::Float32, false),
        Field::new("loss", DataType::Float32, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("negative_rank", DataType::UInt32, false),
    ]))
}

/// The output rows of `triplets`.
pub fn triplet_batch(
    table: &Table,
    schema: &SchemaRef,
    triplets: &[Triplet],
    margin: f32,
) -> Result<RecordBatch> {
    let rows = |f: fn(&Triplet) -> u32| UInt32Array::from_iter_values(triplets.iter().map(f));
    let (anchors, positives, negatives) = (
        rows(|t| t.anchor),
        rows(|t| t.positive),
        rows(|t| t.negative),
    );
    let columns: Vec<ArrayRef> = vec![
        take(&table.ids, &anchors, None)?,
        take(&table.ids, &positives, None)?,
        take(&table.ids, &negatives, None)?,
        take(&table.labels, &anchors, None)?,
        take(&table.labels, &negatives, None)?,
        Arc::new(Float32Array::from_iter_values(
            triplets.iter().map(|t| t.d_ap),
        )),
        Arc::new(Float32Array::from_iter_values(
            triplets.iter().map(|t| t.d_an),
        )),
        Arc::new(Float32Array::from_iter_values(
            triplets
                .iter()
                .map(|t| triplet_loss(t.d_ap, t.d_an, margin)),
        )),
        Arc::new(StringArray::from_iter_values(
            triplets
                .iter()
                .map(|t| TripletKind::classify(t.d_ap, t.d_an, margin).as_str()),
        )),
        Arc::new(rows(|t| t.negative_rank)),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

//! Rows handed over in memory (`run_batches`, what the Python package calls) mine exactly what
//! the same rows in a file mine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, RecordBatchIterator,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tempfile::TempDir;
use tripmine::{BatchSource, Error, MiningConfig, MiningOptions, run_batches};

use crate::common::bin::{generated, mine_with_summary, read};

fn options(dir: &Path, name: &str, extra: impl FnOnce(&mut MiningOptions)) -> MiningOptions {
    let mut options = MiningOptions::default();
    options.output.out = dir.join(format!("{name}.parquet"));
    options.output.report = dir.join(format!("{name}-report.parquet"));
    options.run.progress = false;
    extra(&mut options);
    options
}

fn batches_of(path: &Path, batch_size: usize) -> BatchSource {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .with_batch_size(batch_size)
        .build()
        .unwrap();
    BatchSource {
        name: PathBuf::from("<test batches>"),
        reader: Box::new(reader),
        rows: None,
    }
}

fn same_rows(a: &Path, b: &Path) {
    let (a, b) = (read(a), read(b));
    assert_eq!(a.num_rows(), b.num_rows());
    assert_eq!(a.columns(), b.columns());
}

#[test]
fn rows_handed_over_as_batches_mine_what_the_same_file_mines() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 1_500, 12, 3);
    mine_with_summary(
        dir.path(),
        &input,
        &["--out", "cli.parquet", "--report", "cli-report.parquet"],
    )
    .success();
    // Small batches: the rows cross many batch boundaries.
    let config = MiningConfig::for_batches(options(dir.path(), "mem", |_| {})).unwrap();
    let summary = run_batches(&config, batches_of(&input, 97)).unwrap();
    assert_eq!(summary.rows, 1_500);
    assert_eq!(summary.inputs, vec![PathBuf::from("<test batches>")]);
    same_rows(
        &dir.path().join("cli.parquet"),
        &dir.path().join("mem.parquet"),
    );
    same_rows(
        &dir.path().join("cli-report.parquet"),
        &dir.path().join("mem-report.parquet"),
    );
}

#[test]
fn batches_under_a_memory_limit_spill_and_mine_the_same() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 1_200, 10, 4);
    let plain = MiningConfig::for_batches(options(dir.path(), "plain", |_| {})).unwrap();
    run_batches(&plain, batches_of(&input, 500)).unwrap();
    let limited = MiningConfig::for_batches(options(dir.path(), "limited", |o| {
        o.mine.memory_limit = Some("1GiB".parse().unwrap());
    }))
    .unwrap();
    // Rows not known in advance: the vectors spill.
    run_batches(&limited, batches_of(&input, 500)).unwrap();
    same_rows(
        &dir.path().join("plain.parquet"),
        &dir.path().join("limited.parquet"),
    );
}

#[test]
fn a_bad_embedding_in_batches_names_the_source_column_and_row() {
    let dir = TempDir::new().unwrap();
    let mut values: Vec<f32> = (0..40).map(|i| i as f32).collect();
    values[2 * 17 + 1] = f32::NAN;
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let embedding = FixedSizeListArray::new(item, 2, Arc::new(Float32Array::from(values)), None);
    let labels = Int64Array::from_iter_values((0..20).map(|i| i % 3));
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Int64, false),
        Field::new("embedding", embedding.data_type().clone(), false),
    ]));
    let columns: Vec<ArrayRef> = vec![Arc::new(labels), Arc::new(embedding)];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let source = BatchSource {
        name: PathBuf::from("<pyarrow.Table>"),
        reader: Box::new(RecordBatchIterator::new(vec![Ok(batch)], schema)),
        rows: Some(20),
    };
    let config = MiningConfig::for_batches(options(dir.path(), "bad", |_| {})).unwrap();
    let err = run_batches(&config, source).unwrap_err();
    assert!(matches!(err, Error::BadValue { row: 17, .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("<pyarrow.Table>") && message.contains("`embedding`"),
        "{message}"
    );
    assert!(!dir.path().join("bad.parquet").exists());
}

#[test]
fn batches_exclude_input_files() {
    let dir = TempDir::new().unwrap();
    let with_files = options(dir.path(), "x", |o| {
        o.input.paths = vec!["t.parquet".into()]
    });
    let err = MiningConfig::for_batches(with_files).unwrap_err();
    assert!(err.to_string().contains("--in"), "{err}");
}

//! The real binary on tables made in the test: outputs, determinism, and every bad input.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, Int64Array,
    ListArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

use crate::common::bin::{f32_column, generated, read, tripmine};

/// A table with `id`, `label` and a FixedSizeList embedding column of the given values.
fn write_table(path: &Path, labels: ArrayRef, embedding: ArrayRef) {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..labels.len() as i64));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", labels.data_type().clone(), true),
        Field::new("embedding", embedding.data_type().clone(), true),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, labels, embedding]).unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

fn fixed(values: Vec<Option<f32>>, dim: i32, nulls: Option<Vec<bool>>) -> ArrayRef {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let nulls = nulls.map(arrow::buffer::NullBuffer::from);
    Arc::new(
        FixedSizeListArray::try_new(item, dim, Arc::new(Float32Array::from(values)), nulls)
            .unwrap(),
    )
}

fn ints(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

fn mine_in(dir: &Path, input: &Path) -> Command {
    let mut cmd = tripmine();
    cmd.current_dir(dir)
        .arg("mine")
        .arg("--in")
        .arg(input)
        .arg("--no-progress");
    cmd
}

fn no_outputs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .all(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            !(name.contains("triplets") || name.contains("report"))
        })
}

#[test]
fn mine_writes_triplets_report_and_summary() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 600, 6, 1);
    mine_in(dir.path(), &input)
        .args(["--summary-json", "summary.json", "--threads", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("triplets from 600 anchors"))
        .stdout(predicate::str::contains("health"));
    let triplets = read(&dir.path().join("triplets.parquet"));
    let names: Vec<String> = triplets
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "anchor_id",
            "positive_id",
            "negative_id",
            "anchor_label",
            "negative_label",
            "d_ap",
            "d_an",
            "loss",
            "kind",
            "rule",
            "negative_rank"
        ]
    );
    assert!(triplets.num_rows() > 0);
    assert_eq!(
        triplets.schema().field(0).data_type(),
        &DataType::Int64,
        "ids keep their type"
    );
    let kinds = triplets.column_by_name("kind").unwrap().as_string::<i32>();
    assert!(
        kinds.iter().all(|k| k == Some("semihard")),
        "default strategy mines semi-hard"
    );
    let loss = f32_column(&triplets, "loss");
    let d_ap = f32_column(&triplets, "d_ap");
    let d_an = f32_column(&triplets, "d_an");
    for i in 0..triplets.num_rows() {
        assert_eq!(
            loss.value(i),
            (d_ap.value(i) - d_an.value(i) + 0.2).max(0.0)
        );
    }
    let ranks = triplets
        .column_by_name("negative_rank")
        .unwrap()
        .as_primitive::<UInt32Type>();
    assert!(ranks.values().iter().all(|&r| r < 600));

    let report = read(&dir.path().join("report.parquet"));
    assert_eq!(report.num_rows(), 7, "six labels and the overall row");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["totals"]["triplets"], triplets.num_rows() as u64);
    assert_eq!(summary["rows"], 600);
}

#[test]
fn outputs_are_byte_identical_whatever_the_thread_count() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 800, 5, 2);
    for threads in ["1", "2"] {
        let run_dir = dir.path().join(threads);
        std::fs::create_dir(&run_dir).unwrap();
        mine_in(&run_dir, &input)
            .args([
                "--threads",
                threads,
                "--positives",
                "random",
                "--sample",
                "random",
            ])
            .args([
                "--report-html",
                "report.html",
                "--suspects",
                "suspects.parquet",
            ])
            .assert()
            .success();
    }
    for file in [
        "triplets.parquet",
        "report.parquet",
        "report.html",
        "suspects.parquet",
    ] {
        let bytes = |t: &str| {
            let bytes = std::fs::read(dir.path().join(t).join(file)).unwrap();
            if file != "report.html" {
                return bytes;
            }
            // The page says when its run started (to the second): the runs may differ there.
            let page = String::from_utf8(bytes).unwrap();
            let lines: Vec<&str> = page
                .lines()
                .filter(|l| !l.contains("id=\"run-date\""))
                .collect();
            assert_eq!(lines.len() + 1, page.lines().count(), "one date line");
            lines.join("\n").into_bytes()
        };
        assert!(
            bytes("1") == bytes("2"),
            "{file} differs between 1 and 2 threads"
        );
    }
}

#[test]
fn inputs_may_be_several_files_a_folder_or_a_glob() {
    let dir = TempDir::new().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    generated(&parts, "a.parquet", 200, 4, 3);
    generated(&parts, "b.parquet", 300, 4, 4);
    let summary = |arg: &[&str]| {
        let out = mine_in(dir.path(), Path::new(arg[0]))
            .args(&arg[1..])
            // Both generated tables number their ids from 0.
            .arg("--allow-duplicate-ids")
            .args(["--summary-json", "s.json"])
            .assert()
            .success();
        drop(out);
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("s.json")).unwrap()).unwrap();
        v["rows"].as_u64().unwrap()
    };
    assert_eq!(summary(&["parts"]), 500);
    assert_eq!(summary(&["parts/*.parquet"]), 500);
    assert_eq!(
        summary(&["parts/a.parquet", "--in", "parts/b.parquet"]),
        500
    );
}

#[test]
fn string_labels_and_list_embeddings_of_float64_are_read() {
    let dir = TempDir::new().unwrap();
    let rows = 40;
    let labels: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..rows).map(|i| ["cat", "dog", "owl"][i % 3]),
    ));
    let values =
        Float64Array::from_iter_values((0..rows * 3).map(|i| ((i * 7919) % 13) as f64 / 13.0));
    let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(3, rows));
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    let emb: ArrayRef = Arc::new(ListArray::new(item, offsets, Arc::new(values), None));
    let input = dir.path().join("s.parquet");
    write_table(&input, labels, emb);
    mine_in(dir.path(), &input)
        .args(["--negatives", "hardest"])
        .assert()
        .success();
    let triplets = read(&dir.path().join("triplets.parquet"));
    assert_eq!(
        triplets.column_by_name("anchor_label").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(triplets.num_rows(), rows * 5);
}

#[test]
fn inspect_shows_schema_rows_dimension_and_labels() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 100, 3, 5);
    tripmine()
        .arg("inspect")
        .arg(&input)
        .assert()
        .success()
        .stdout(predicate::str::contains("rows:      100"))
        .stdout(predicate::str::contains("dimension: 8"))
        .stdout(predicate::str::contains("labels:    3"))
        .stdout(predicate::str::contains("embedding: FixedSizeList"));
}

/// Runs `mine` on a bad input and checks the exit code, the message and that nothing is written.
fn assert_rejected(dir: &TempDir, input: &Path, extra: &[&str], code: i32, message: &[&str]) {
    let mut assert = mine_in(dir.path(), input)
        .args(extra)
        .assert()
        .failure()
        .code(code);
    for m in message {
        assert = assert.stderr(predicate::str::contains(*m));
    }
    drop(assert);
    assert!(no_outputs(dir.path()), "no output left behind");
}

#[test]
fn a_missing_file_is_a_data_error() {
    let dir = TempDir::new().unwrap();
    assert_rejected(
        &dir,
        &dir.path().join("nope.parquet"),
        &[],
        3,
        &["nope.parquet", "no such file"],
    );
}

#[test]
fn a_missing_column_lists_the_columns_present() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 50, 3, 6);
    assert_rejected(
        &dir,
        &input,
        &["--label-col", "class"],
        3,
        &[
            "data.parquet",
            "column `class` not found",
            "id (Int64), label (Int64), embedding",
        ],
    );
}

#[test]
fn an_unsupported_embedding_type_is_named() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    write_table(
        &input,
        ints(&[0, 1, 0]),
        Arc::new(StringArray::from(vec!["a", "b", "c"])),
    );
    assert_rejected(
        &dir,
        &input,
        &[],
        3,
        &["bad.parquet", "`embedding`", "unsupported type Utf8"],
    );
}

#[test]
fn an_unsupported_label_type_is_named() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    let labels: ArrayRef = Arc::new(Float32Array::from(vec![0.5, 1.5]));
    write_table(&input, labels, fixed(vec![Some(0.0), Some(1.0)], 1, None));
    assert_rejected(
        &dir,
        &input,
        &[],
        3,
        &["`label`", "unsupported type Float32"],
    );
}

#[test]
fn rows_of_another_dimension_are_named_by_row() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    let values = Float32Array::from(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let offsets = arrow::buffer::OffsetBuffer::from_lengths([2, 2, 3]);
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let emb: ArrayRef = Arc::new(ListArray::new(item, offsets, Arc::new(values), None));
    write_table(&input, ints(&[0, 1, 0]), emb);
    assert_rejected(
        &dir,
        &input,
        &[],
        3,
        &["bad.parquet", "row 2", "dimension 3", "dimension 2"],
    );
}

#[test]
fn nan_and_infinite_values_are_named_by_row() {
    let dir = TempDir::new().unwrap();
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let input = dir.path().join("bad.parquet");
        write_table(
            &input,
            ints(&[0, 1, 0, 1]),
            fixed(vec![Some(0.0), Some(1.0), Some(bad), Some(3.0)], 1, None),
        );
        assert_rejected(&dir, &input, &[], 3, &["`embedding`, row 2", shown]);
    }
}

#[test]
fn inspect_checks_the_vectors_it_does_not_keep() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    write_table(
        &input,
        ints(&[0, 1, 0, 1]),
        fixed(
            vec![Some(0.0), Some(1.0), Some(f32::NAN), Some(3.0)],
            1,
            None,
        ),
    );
    tripmine()
        .arg("inspect")
        .arg(&input)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("`embedding`, row 2"));
}

#[test]
fn a_null_embedding_is_named_by_row() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    let emb = fixed(
        vec![Some(0.0), Some(1.0), Some(2.0)],
        1,
        Some(vec![true, false, true]),
    );
    write_table(&input, ints(&[0, 1, 0]), emb);
    assert_rejected(&dir, &input, &[], 3, &["`embedding`, row 1", "null"]);
}

#[test]
fn a_null_label_is_named_by_row() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("bad.parquet");
    let labels: ArrayRef = Arc::new(Int64Array::from(vec![Some(0), Some(1), None]));
    write_table(
        &input,
        labels,
        fixed(vec![Some(0.0), Some(1.0), Some(2.0)], 1, None),
    );
    assert_rejected(&dir, &input, &[], 3, &["`label`, row 2", "null"]);
}

#[test]
fn an_empty_input_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("empty.parquet");
    write_table(&input, ints(&[]), fixed(vec![], 4, None));
    assert_rejected(&dir, &input, &[], 3, &["no rows"]);
}

#[test]
fn a_single_label_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("one.parquet");
    write_table(
        &input,
        ints(&[7, 7, 7]),
        fixed(vec![Some(0.0), Some(1.0), Some(2.0)], 1, None),
    );
    assert_rejected(&dir, &input, &[], 3, &["1 distinct label", "at least two"]);
}

#[test]
fn bad_flag_values_are_configuration_errors() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 50, 3, 7);
    assert_rejected(&dir, &input, &["--k", "0"], 2, &["--k must be at least 1"]);
    assert_rejected(
        &dir,
        &input,
        &["--margin", "-0.5"],
        2,
        &["--margin must be a finite number >= 0"],
    );
    assert_rejected(&dir, &input, &["--num-negatives", "0"], 2, &["at least 1"]);
    assert_rejected(
        &dir,
        &input,
        &["--max-k", "4", "--k", "8"],
        2,
        &["--max-k (4) must be at least k (8)"],
    );
    assert_rejected(
        &dir,
        &input,
        &["--index", "NotAnIndex"],
        2,
        &["index `NotAnIndex` cannot be built"],
    );
}

#[test]
fn an_approximate_index_still_scores_exactly() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 2000, 10, 8);
    mine_in(dir.path(), &input)
        .args(["--index", "IVF16,Flat", "--summary-json", "s.json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("approximate"));
    let triplets = read(&dir.path().join("triplets.parquet"));
    assert!(triplets.num_rows() > 0);
    let kinds = triplets.column_by_name("kind").unwrap().as_string::<i32>();
    let d_ap = f32_column(&triplets, "d_ap");
    let d_an = f32_column(&triplets, "d_an");
    for i in 0..triplets.num_rows() {
        let t = d_an.value(i) - d_ap.value(i);
        assert!(t > 0.0 && t <= 0.2, "semi-hard by exact distances");
        assert_eq!(kinds.value(i), "semihard");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 100, 3, 9);
    let out = mine_in(dir.path(), &input)
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("level").is_some());
    }
    assert!(stderr.contains("\"stage\":\"mine\""));
}

#[test]
fn a_failed_run_leaves_the_previous_outputs_untouched() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 100, 3, 10);
    mine_in(dir.path(), &input).assert().success();
    let before = std::fs::read(dir.path().join("triplets.parquet")).unwrap();
    let bad = dir.path().join("bad.parquet");
    write_table(
        &bad,
        ints(&[0, 1, 0]),
        fixed(vec![Some(0.0), Some(f32::NAN), Some(2.0)], 1, None),
    );
    mine_in(dir.path(), &bad).assert().failure().code(3);
    assert_eq!(
        std::fs::read(dir.path().join("triplets.parquet")).unwrap(),
        before
    );
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn relabelled_rows_are_listed_as_label_noise_suspects() {
    use tripmine::commands::synthetic::{GenSpec, generate};
    let dir = TempDir::new().unwrap();
    let spec = GenSpec {
        rows: 400,
        dim: 8,
        labels: 4,
        seed: 12,
        separation: 6.0,
        intrinsic_dim: None,
    };
    let batch = generate(&spec, 400).unwrap().remove(0);
    // Move rows 5, 50 and 150 to another class's label: their neighbours disagree.
    let labels = batch
        .column(1)
        .as_primitive::<arrow::datatypes::Int64Type>();
    let flipped = [5usize, 50, 150];
    let true_labels: Vec<i64> = flipped.iter().map(|&r| labels.value(r)).collect();
    let relabelled: Vec<i64> = (0..400)
        .map(|r| {
            if flipped.contains(&r) {
                (labels.value(r) + 1) % 4
            } else {
                labels.value(r)
            }
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[1] = Arc::new(Int64Array::from(relabelled));
    let input = dir.path().join("noisy.parquet");
    tripmine::io::write_parquet(
        &input,
        &RecordBatch::try_new(batch.schema(), columns).unwrap(),
    )
    .unwrap();

    mine_in(dir.path(), &input)
        .args(["--suspects", "suspects.parquet"])
        .assert()
        .success();
    let suspects = read(&dir.path().join("suspects.parquet"));
    let ids: Vec<i64> = suspects
        .column_by_name("id")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, flipped.map(|r| r as i64));
    let majority = suspects
        .column_by_name("majority_neighbour_label")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    for (i, id) in ids.iter().enumerate() {
        let k = flipped.iter().position(|&r| r as i64 == *id).unwrap();
        assert_eq!(
            majority.value(i),
            true_labels[k],
            "the majority is the row's true class"
        );
    }
    let agreement = f32_column(&suspects, "agreement");
    assert!(agreement.values().iter().all(|&a| a < 0.5));
    let report = read(&dir.path().join("report.parquet"));
    let counts = report
        .column_by_name("label_noise_suspects")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>();
    assert_eq!(
        counts.value(report.num_rows() - 1),
        3,
        "the overall row counts them"
    );
}

//! Running the real binary and reading what it wrote.

use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float32Type;
use assert_cmd::Command;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub fn tripmine() -> Command {
    Command::cargo_bin("tripmine").unwrap()
}

/// `tripmine mine --in INPUT EXTRA` run in `dir` (forced, no progress bar), writing its
/// summary to `dir/s.json` (read back by [`summary`]).
///
/// A `--memory-limit` among `extra` is not checked against what the run needs (tests spill
/// tables of a few thousand rows under limits of a few KiB).
pub fn mine_with_summary(dir: &Path, input: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    tripmine()
        .env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .current_dir(dir)
        .args(["mine", "--no-progress", "--force", "--in"])
        .arg(input)
        .args(["--summary-json", "s.json"])
        .args(extra)
        .assert()
}

/// The summary [`mine_with_summary`] wrote.
pub fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("s.json")).unwrap()).unwrap()
}

/// Writes a table made by `tripmine gen ARGS` to `path` (e.g. `["--rows", "500"]`).
pub fn gen_table(path: &Path, args: &[&str]) {
    tripmine()
        .arg("gen")
        .args(args)
        .arg("--out")
        .arg(path)
        .assert()
        .success();
}

/// A generated table of dimension 8 at `dir/name`.
pub fn generated(dir: &Path, name: &str, rows: usize, labels: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let (rows, labels, seed) = (rows.to_string(), labels.to_string(), seed.to_string());
    gen_table(
        &path,
        &[
            "--rows", &rows, "--dim", "8", "--labels", &labels, "--seed", &seed,
        ],
    );
    path
}

pub fn f32_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a arrow::array::Float32Array {
    batch
        .column_by_name(name)
        .unwrap()
        .as_primitive::<Float32Type>()
}

/// Every row of a Parquet file, or of the part files of a folder.
pub fn read(path: &Path) -> RecordBatch {
    if path.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        parts.sort();
        let batches: Vec<RecordBatch> = parts.iter().map(|p| read(p)).collect();
        return arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    }
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// The reports of two approximate runs hold the same rows and figures: only what their
/// timings gave differ (the seconds in `tripmine.search`, and the warning that compares the
/// approximate search's estimated time with exact mining's).
pub fn same_report_but_timings(a: &Path, b: &Path) -> std::result::Result<(), String> {
    let (a, b) = (a.join("r.parquet"), b.join("r.parquet"));
    if read(&a).columns() != read(&b).columns() {
        return Err("the report's rows differ".into());
    }
    let figures = |path: &Path| {
        let file = std::fs::File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let mut m: std::collections::BTreeMap<_, _> =
            builder.schema().metadata().clone().into_iter().collect();
        m.remove("tripmine.search");
        let warnings: Vec<String> = serde_json::from_str(&m["tripmine.warnings"]).unwrap();
        let timed = |w: &String| w.contains("is estimated at");
        let warnings: Vec<String> = warnings.into_iter().filter(|w| !timed(w)).collect();
        m.insert(
            "tripmine.warnings".into(),
            serde_json::to_string(&warnings).unwrap(),
        );
        m
    };
    assert!(figures(&a).contains_key("tripmine.totals"));
    if figures(&a) != figures(&b) {
        return Err("the report's figures differ".into());
    }
    Ok(())
}

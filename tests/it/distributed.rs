//! A job cut into segments (`tripmine plan`, `mine-segment`, `finish`) gives what
//! `tripmine mine` gives with the same options: the same triplet file byte for byte, the same
//! report rows and figures, the same suspects. Segments are mined out of order, in sizes that
//! do not divide the anchors.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use predicates::prelude::*;
use tempfile::TempDir;

use crate::common::bin::{generated, read, tripmine};

/// What one run wrote, in its own folder: `o.parquet` (or the folder `o/`), `r.parquet`,
/// `s.parquet` (suspects, where asked).
struct Outputs {
    dir: PathBuf,
    out: &'static str,
}

/// `tripmine mine ARGS` in `dir/single`.
fn single(dir: &Path, args: &[&str], out: &'static str) -> Outputs {
    let at = dir.join("single");
    std::fs::create_dir_all(&at).unwrap();
    tripmine()
        .env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .current_dir(&at)
        .args([
            "mine",
            "--no-progress",
            "--out",
            out,
            "--report",
            "r.parquet",
        ])
        .args(args)
        .assert()
        .success();
    Outputs { dir: at, out }
}

/// `tripmine plan ARGS` in `dir/cluster` with segments of `segment_anchors`, every segment
/// mined (last first), and `finish` run from another folder.
fn distributed(dir: &Path, args: &[&str], out: &'static str, segment_anchors: usize) -> Outputs {
    let at = dir.join("cluster");
    std::fs::create_dir_all(&at).unwrap();
    let work = dir.join("work");
    plan(
        &at,
        &work,
        segment_anchors,
        &["--out", out, "--report", "r.parquet"],
    )
    .args(args)
    .assert()
    .success();
    let segments = plan_segments(&work);
    for s in (0..segments).rev() {
        mine_segment(&work, s).assert().success();
    }
    finish(&work).current_dir(dir).assert().success();
    Outputs { dir: at, out }
}

/// `tripmine plan` run in `at` into `work`, with segments of `segment_anchors` and `args`.
fn plan(at: &Path, work: &Path, segment_anchors: usize, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = tripmine();
    cmd.env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .current_dir(at)
        .args(["plan", "--no-progress", "--segment-anchors"])
        .arg(segment_anchors.to_string())
        .arg("--work")
        .arg(work)
        .args(args);
    cmd
}

fn finish(work: &Path) -> assert_cmd::Command {
    let mut cmd = tripmine();
    cmd.env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .arg("finish")
        .arg("--work")
        .arg(work);
    cmd
}

fn plan_segments(work: &Path) -> usize {
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("plan.json")).unwrap()).unwrap();
    plan["segments"].as_u64().unwrap() as usize
}

fn mine_segment(work: &Path, segment: usize) -> assert_cmd::Command {
    let mut cmd = tripmine();
    cmd.env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .args([
            "mine-segment",
            "--threads",
            "1",
            "--segment",
            &segment.to_string(),
        ])
        .arg("--work")
        .arg(work);
    cmd
}

/// The files of an output: itself, or the parts of a folder (sorted).
fn files_of(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    parts
}

/// The rows of a batch without its schema's metadata (which holds timings).
fn rows(batch: RecordBatch) -> RecordBatch {
    let schema = batch
        .schema()
        .as_ref()
        .clone()
        .with_metadata(std::collections::HashMap::new());
    batch.with_schema(std::sync::Arc::new(schema)).unwrap()
}

/// The report's totals, histogram and options.
fn report_figures(path: &Path) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let file = std::fs::File::open(path).unwrap();
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let meta = reader.schema().metadata().clone();
    let json = |k: &str| serde_json::from_str(&meta[k]).unwrap();
    (
        json("tripmine.totals"),
        json("tripmine.histogram"),
        json("tripmine.config"),
    )
}

/// The triplet output is the same bytes (part for part); the report the same rows, totals and
/// histogram and options (its other metadata holds timings); `extra` files (suspects) the same bytes.
fn assert_same(a: &Outputs, b: &Outputs, extra: &[&str]) {
    let (fa, fb) = (files_of(&a.dir.join(a.out)), files_of(&b.dir.join(b.out)));
    assert_eq!(
        fa.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        fb.iter().map(|p| p.file_name()).collect::<Vec<_>>()
    );
    for (x, y) in fa.iter().zip(&fb) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} and {} differ",
            x.display(),
            y.display()
        );
    }
    let (ra, rb) = (a.dir.join("r.parquet"), b.dir.join("r.parquet"));
    assert_eq!(rows(read(&ra)), rows(read(&rb)));
    assert_eq!(report_figures(&ra), report_figures(&rb));
    for f in extra {
        assert!(
            std::fs::read(a.dir.join(f)).unwrap() == std::fs::read(b.dir.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

fn triplets(o: &Outputs) -> usize {
    read(&o.dir.join(o.out)).num_rows()
}

#[test]
fn segments_mined_out_of_order_give_the_single_runs_outputs() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 1500, 12, 1);
    let input = input.to_str().unwrap();
    let args = ["--in", input, "--suspects", "s.parquet"];
    let a = single(dir.path(), &args, "o.parquet");
    let b = distributed(dir.path(), &args, "o.parquet", 400);
    assert!(triplets(&a) > 1000);
    assert_same(&a, &b, &["s.parquet"]);
}

#[test]
fn seeded_random_sampling_and_the_reuse_cap_are_the_single_runs() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 1200, 10, 2);
    let input = input.to_str().unwrap();
    let args = [
        "--in",
        input,
        "--sample",
        "random",
        "--seed",
        "11",
        "--num-negatives",
        "4",
        "--max-negative-reuse",
        "2",
        "--shortfall",
        "drop",
    ];
    let a = single(dir.path(), &args, "o/");
    let b = distributed(dir.path(), &args, "o/", 350);
    assert!(triplets(&a) > 100);
    assert_same(&a, &b, &[]);
}

#[test]
fn retrieval_with_guards_and_passthrough_columns_is_the_single_runs() {
    let dir = TempDir::new().unwrap();
    let ex = dir.path().join("ex");
    tripmine()
        .args(["gen", "--retrieval", "--rows", "600", "--labels", "8"])
        .args(["--queries", "90", "--dim", "8", "--seed", "4", "--out"])
        .arg(&ex)
        .assert()
        .success();
    let path = |f: &str| ex.join(f).to_str().unwrap().to_string();
    let (q, c, r) = (
        path("queries.parquet"),
        path("corpus.parquet"),
        path("qrels.parquet"),
    );
    let args = [
        "--queries",
        &q,
        "--corpus",
        &c,
        "--qrels",
        &r,
        "--metric",
        "cosine",
        "--positive-margin",
        "0.05",
        "--range-max",
        "40",
        "--num-negatives",
        "3",
        "--with",
        "text",
        "--format",
        "n-tuple",
    ];
    let a = single(dir.path(), &args, "o.parquet");
    let b = distributed(dir.path(), &args, "o.parquet", 25);
    assert!(triplets(&a) > 50);
    assert_same(&a, &b, &[]);
}

#[test]
fn an_approximate_index_is_tuned_once_and_its_recall_is_the_single_runs() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 3000, 20, 3);
    let input = input.to_str().unwrap();
    let args = [
        "--in",
        input,
        "--index",
        "IVF16,Flat",
        "--recall-sample",
        "150",
        "--train-sample",
        "3000",
    ];
    let a = single(dir.path(), &args, "o.parquet");
    let b = distributed(dir.path(), &args, "o.parquet", 700);
    assert_same(&a, &b, &[]);
    let (totals, ..) = report_figures(&b.dir.join("r.parquet"));
    assert!(totals["recall_negatives"].as_f64().is_some(), "{totals}");
}

#[test]
fn a_spilled_run_under_a_memory_limit_with_the_reuse_cap_is_the_single_runs() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 2000, 16, 5);
    let input = input.to_str().unwrap();
    let args = [
        "--in",
        input,
        "--memory-limit",
        "64KiB",
        "--negatives",
        "hard",
        "--num-negatives",
        "2",
        // Its counts take passes over the blocks (single) and the segments (finish).
        "--max-negative-reuse",
        "1",
    ];
    let a = single(dir.path(), &args, "o.parquet");
    let b = distributed(dir.path(), &args, "o.parquet", 600);
    assert_same(&a, &b, &[]);
}

#[test]
fn finish_names_the_segments_not_mined() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 500, 5, 6);
    let work = dir.path().join("work");
    plan(dir.path(), &work, 100, &["--in", input.to_str().unwrap()])
        .assert()
        .success();
    mine_segment(&work, 0).assert().success();
    mine_segment(&work, 2).assert().success();
    finish(&work)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "3 of 5 segments are not mined yet (the first: segment 1",
        ));
    assert!(!dir.path().join("triplets.parquet").exists());
    mine_segment(&work, 5)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the plan has segments 0 to 4"));
}

#[test]
fn a_segment_mined_for_an_earlier_plan_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 400, 5, 7);
    let work = dir.path().join("work");
    let plan_again = || {
        plan(dir.path(), &work, 200, &["--in", input.to_str().unwrap()])
            .assert()
            .success();
    };
    plan_again();
    mine_segment(&work, 0).assert().success();
    let old = std::fs::read(work.join("segments/000000.seg")).unwrap();
    plan_again();
    assert!(
        !work.join("segments/000000.seg").exists(),
        "a new plan drops the old segments"
    );
    mine_segment(&work, 1).assert().success();
    std::fs::write(work.join("segments/000000.seg"), old).unwrap();
    finish(&work)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("mined for another plan"));
}

#[test]
fn a_segment_killed_before_its_rename_leaves_nothing_and_its_retry_completes_the_run() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 900, 9, 8);
    let input = input.to_str().unwrap();
    let a = single(dir.path(), &["--in", input], "o.parquet");
    let at = dir.path().join("cluster");
    std::fs::create_dir_all(&at).unwrap();
    let work = dir.path().join("work");
    let outputs = ["--out", "o.parquet", "--report", "r.parquet", "--in", input];
    plan(&at, &work, 300, &outputs).assert().success();
    mine_segment(&work, 1)
        .env(
            "TRIPMINE_TEST_ABORT_AT",
            tripmine::pipeline::SEGMENT_ABORT_POINT,
        )
        .assert()
        .failure();
    let left: Vec<_> = std::fs::read_dir(work.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with('.')),
        "only a temporary file may remain: {left:?}"
    );
    for s in 0..3 {
        mine_segment(&work, s).assert().success();
    }
    let names: Vec<_> = std::fs::read_dir(work.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "the retry removed the killed segment's temporary file: {names:?}"
    );
    finish(&work).assert().success();
    let b = Outputs {
        dir: at,
        out: "o.parquet",
    };
    assert_same(&a, &b, &[]);
}

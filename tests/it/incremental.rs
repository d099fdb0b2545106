//! Incremental mining (`--state DIR`): a run on inputs that grew by new files gives what a
//! full run on all of them gives (the triplet file, the report and the suspects, byte for
//! byte), mining again only what the new rows change; a changed, removed or reordered file
//! means a full run (the summary says why); a state of other options or another version is
//! refused unless forced; a kill at any point leaves a state the next run completes from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

use crate::common::bin::{same_report_but_timings, tripmine};

/// Rows of a partition file: global ids, labels and embeddings of dimension `dim`.
struct Rows {
    ids: Vec<i64>,
    labels: Vec<i64>,
    values: Vec<f32>,
}

fn write_rows(path: &Path, rows: &Rows, dim: i32) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(rows.values.clone()));
    let n = rows.ids.len();
    let emb: ArrayRef =
        Arc::new(FixedSizeListArray::try_new_with_length(item, dim, values, None, n).unwrap());
    let ids: ArrayRef = Arc::new(Int64Array::from(rows.ids.clone()));
    let labels: ArrayRef = Arc::new(Int64Array::from(rows.labels.clone()));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Int64, false),
        Field::new("embedding", emb.data_type().clone(), false),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, labels, emb]).unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

/// The kinds of table: integer grid coordinates (ties, duplicate vectors across labels) and
/// Gaussian clusters.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Grid,
    Blobs,
}

/// Writes `sizes.len()` partition files `dir/d0.parquet`, ... of one table; later partitions
/// also bring labels the earlier ones lack (one sorting before every other, so label codes of
/// old rows change).
fn partitions(dir: &Path, shape: Shape, sizes: &[usize], labels: i64, seed: u64) -> Vec<PathBuf> {
    let dim = 6;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..(labels + 2) as usize * dim)
        .map(|_| rng.random_range(-1.5..1.5))
        .collect();
    let mut next_id = 0i64;
    let mut files = Vec::new();
    for (p, &size) in sizes.iter().enumerate() {
        let mut rows = Rows {
            ids: Vec::new(),
            labels: Vec::new(),
            values: Vec::new(),
        };
        for _ in 0..size {
            let label = if p > 0 && rng.random_range(0..10) == 0 {
                // A label of the later partitions only.
                [-1, labels][rng.random_range(0..2)]
            } else {
                rng.random_range(0..labels)
            };
            let centre = (label + 1) as usize * dim;
            for j in 0..dim {
                rows.values.push(match shape {
                    Shape::Grid => rng.random_range(0..3) as f32,
                    Shape::Blobs => centres[centre + j] + rng.random_range(-1.0f32..1.0),
                });
            }
            rows.ids.push(next_id);
            rows.labels.push(label);
            next_id += 1;
        }
        let path = dir.join(format!("d{p}.parquet"));
        write_rows(&path, &rows, dim as i32);
        files.push(path);
    }
    files
}

/// `tripmine mine` in `at` on `inputs`, writing `o.parquet`, `r.parquet`, `s.parquet`
/// (suspects) and `summary.json`, with `args`.
fn mine(at: &Path, inputs: &[PathBuf], args: &[&str]) -> assert_cmd::Command {
    std::fs::create_dir_all(at).unwrap();
    let mut cmd = tripmine();
    cmd.current_dir(at).args(["mine", "--no-progress"]);
    for input in inputs {
        cmd.arg("--in").arg(input);
    }
    cmd.args([
        "--out",
        "o.parquet",
        "--report",
        "r.parquet",
        "--suspects",
        "s.parquet",
        "--summary-json",
        "summary.json",
    ])
    .args(args);
    cmd
}

fn changes(at: &Path) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(at.join("summary.json")).unwrap()).unwrap();
    s["changes"].clone()
}

/// The outputs of two runs are the same files, byte for byte.
fn same_outputs(a: &Path, b: &Path) -> std::result::Result<(), String> {
    same_files(a, b, &["o.parquet", "r.parquet", "s.parquet"])
}

/// The files `names` of two runs are the same, byte for byte.
fn same_files(a: &Path, b: &Path, names: &[&str]) -> std::result::Result<(), String> {
    for name in names {
        if std::fs::read(a.join(name)).unwrap() != std::fs::read(b.join(name)).unwrap() {
            return Err(format!("{name} differs"));
        }
    }
    Ok(())
}

/// A table of blobs in partitions of `sizes` (seed `seed`), its first partition mined with a
/// state: the temporary folder, the partitions, the run's folder and the state flag.
fn first_state(sizes: &[usize], seed: u64) -> (TempDir, Vec<PathBuf>, PathBuf, [String; 2]) {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, sizes, 6, seed);
    let at = dir.path().join("run");
    let state = [
        "--state".to_string(),
        dir.path().join("state").display().to_string(),
    ];
    mine(&at, &files[..1], &[]).args(&state).assert().success();
    (dir, files, at, state)
}

/// Mines `files` with a state one more file at a time, then all at once without: the last
/// incremental run equals the full run. Returns the last incremental run's changes.
fn grow_and_compare(dir: &Path, files: &[PathBuf], args: &[&str]) -> serde_json::Value {
    let (grown, full) = grow_and_mine_all(dir, files, args);
    if let Err(e) = same_outputs(&grown, &full) {
        panic!("{e} after an incremental run with {args:?}");
    }
    changes(&grown)
}

/// Mines `files` with a state one more file at a time (in `dir/grown`), then all at once
/// without (in `dir/full`).
fn grow_and_mine_all(dir: &Path, files: &[PathBuf], args: &[&str]) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let state_arg = ["--state", state.to_str().unwrap()];
    let grown = dir.join("grown");
    for end in 1..=files.len() {
        mine(&grown, &files[..end], args)
            .args(state_arg)
            .assert()
            .success();
    }
    let full = dir.join("full");
    mine(&full, files, args).assert().success();
    (grown, full)
}

/// A sample of anchors: new rows of smaller key take earlier picks' places.
const SAMPLE_SET: &[&str] = &[
    "--anchors-sample",
    "150",
    "--seed",
    "5",
    "--num-negatives",
    "2",
];

/// Rank windows: a new row nearer than the window's last rank moves it.
const WINDOW_SETS: [&[&str]; 2] = [
    &[
        "--range-min",
        "2",
        "--range-max",
        "30",
        "--num-negatives",
        "3",
    ],
    &[
        "--range-max",
        "40",
        "--negatives",
        "hardest",
        "--sample",
        "random",
        "--seed",
        "4",
        "--metric",
        "cosine",
        "--near-duplicate",
        "0.99",
    ],
];

/// Option sets covering every positive and negative strategy, sampling, both metrics, the
/// cross-anchor rules, the guards and rank windows.
const OPTION_SETS: [&[&str]; 13] = [
    &[],
    &["--negatives", "hard"],
    &[
        "--positives",
        "hardest",
        "--negatives",
        "hardest",
        "--num-negatives",
        "3",
    ],
    &[
        "--positives",
        "easiest",
        "--num-positives",
        "2",
        "--negatives",
        "easy",
        "--num-negatives",
        "2",
    ],
    &[
        "--positives",
        "all",
        "--negatives",
        "violating",
        "--num-negatives",
        "2",
    ],
    &[
        "--sample",
        "random",
        "--seed",
        "9",
        "--num-negatives",
        "2",
        "--num-positives",
        "2",
    ],
    &[
        "--metric",
        "cosine",
        "--num-negatives",
        "all",
        "--suspects-k",
        "4",
    ],
    &[
        "--num-positives",
        "3",
        "--max-negative-reuse",
        "2",
        "--shortfall",
        "drop",
    ],
    &[
        "--metric",
        "cosine",
        "--margin",
        "0.5",
        "--positive-margin",
        "0.05",
        "--seed",
        "3",
    ],
    &[
        "--positives",
        "all",
        "--negatives",
        "hard",
        "--num-negatives",
        "all",
        "--sample",
        "random",
    ],
    WINDOW_SETS[0],
    WINDOW_SETS[1],
    SAMPLE_SET,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn incremental_runs_equal_a_full_run(
        options in 0..OPTION_SETS.len(),
        grid in any::<bool>(),
        first in 100usize..400,
        later in proptest::collection::vec(1usize..120, 1..4),
        labels in 2i64..12,
        seed in any::<u64>(),
    ) {
        let dir = TempDir::new().unwrap();
        let shape = if grid { Shape::Grid } else { Shape::Blobs };
        let sizes: Vec<usize> = std::iter::once(first).chain(later).collect();
        let files = partitions(dir.path(), shape, &sizes, labels, seed);
        let changes = grow_and_compare(dir.path(), &files, OPTION_SETS[options]);
        let rows: usize = sizes.iter().sum();
        let old_rows = rows - sizes.last().unwrap();
        let bits = |n: usize| usize::BITS - (n.max(2) - 1).leading_zeros();
        if OPTION_SETS[options].contains(&"random") && bits(rows) != bits(old_rows) {
            // Random negative samples key rows by the table's size in bits.
            prop_assert_eq!(&changes["mode"], "full");
            prop_assert!(changes["reason"].as_str().unwrap().contains("passed"));
        } else {
            prop_assert_eq!(&changes["mode"], "incremental");
            prop_assert_eq!(changes["new_rows"].as_u64(), Some(*sizes.last().unwrap() as u64));
        }
    }
}

#[test]
fn an_incremental_run_mines_again_only_anchors_new_rows_can_change() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[3000, 30], 40, 11);
    let changes = grow_and_compare(dir.path(), &files, &[]);
    assert_eq!(changes["mode"], "incremental");
    assert_eq!(changes["new_rows"], 30);
    let again = changes["anchors_mined_again"].as_u64().unwrap();
    // Each new row can move the few anchors it lands near: far fewer than all 3,000.
    assert!(again > 0 && again < 600, "{again} anchors mined again");
    // A new row entering a selection is taken in without mining the anchor again.
    assert!(
        changes["anchors_updated"].as_u64().unwrap() > 0,
        "{changes}"
    );
    let kept = changes["triplets_kept"].as_u64().unwrap();
    let removed = changes["triplets_removed"].as_u64().unwrap();
    assert!(kept > 4 * removed, "kept {kept}, removed {removed}");
}

#[test]
fn a_sample_of_anchors_mined_incrementally_equals_a_full_run() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[600, 200, 150], 5, 23);
    let changes = grow_and_compare(dir.path(), &files, SAMPLE_SET);
    assert_eq!(changes["mode"], "incremental");
    // A sample of 150 among 800 rows, then 950: new rows of smaller key push some out.
    let dropped = changes["anchors_dropped"].as_u64().unwrap();
    assert!(dropped > 0 && dropped < 150, "{changes}");
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("grown").join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["totals"]["anchors"], 150, "{summary}");
}

#[test]
fn rank_windows_mined_incrementally_equal_a_full_run() {
    // Labels of about 130 rows, and of about 300 (over the groups whose positives are
    // planned again in place: their anchors are mined again).
    for (shape, options, labels) in [
        (Shape::Blobs, WINDOW_SETS[0], 5),
        (Shape::Grid, WINDOW_SETS[0], 5),
        (Shape::Blobs, WINDOW_SETS[1], 5),
        (Shape::Blobs, WINDOW_SETS[0], 2),
    ] {
        let dir = TempDir::new().unwrap();
        let files = partitions(dir.path(), shape, &[600, 40, 25], labels, 17);
        let changes = grow_and_compare(dir.path(), &files, options);
        assert_eq!(changes["mode"], "incremental", "{options:?}");
        let again = changes["anchors_mined_again"].as_u64().unwrap();
        let updated = changes["anchors_updated"].as_u64().unwrap();
        // A new row moves the windows it lands inside, not the others; those anchors keep
        // their window's rows and take it in, unless it could change their positives or
        // violating flag.
        assert!(again + updated < 640, "{options:?}: {again} + {updated}");
        if labels == 5 {
            assert!(
                updated > 0 && again < updated,
                "{options:?}: {again} anchors mined again, {updated} updated"
            );
        } else {
            assert!(
                again > updated,
                "{again} anchors mined again, {updated} updated"
            );
        }
    }
}

#[test]
fn a_run_whose_inputs_did_not_grow_replays_the_state() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[300, 50], 5, 2);
    let at = dir.path().join("run");
    let state = dir.path().join("state");
    let state_arg = ["--state", state.to_str().unwrap()];
    mine(&at, &files, &state_arg).assert().success();
    // The triplets lost: the manifest no longer lets the run be skipped.
    std::fs::remove_file(at.join("o.parquet")).unwrap();
    mine(&at, &files, &state_arg).assert().success();
    let c = changes(&at);
    assert_eq!(c["mode"], "incremental", "{c}");
    assert_eq!(c["new_rows"], 0);
    assert_eq!(c["anchors_mined_again"], 0);
    assert_eq!(c["triplets_added"], 0);
    mine(&dir.path().join("full"), &files, &[])
        .assert()
        .success();
    same_outputs(&at, &dir.path().join("full")).unwrap();
}

/// A state on `files[..2]`, then `change` applied to the files, then a run on what
/// `inputs` gives: a full run whose reason contains `why`, equal to a run without a state.
fn full_run_after(
    change: impl FnOnce(&[PathBuf]),
    inputs: impl FnOnce(&[PathBuf]) -> Vec<PathBuf>,
    why: &str,
) {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[200, 40, 40], 5, 4);
    let state = dir.path().join("state");
    let at = dir.path().join("run");
    let state_arg = ["--state", state.to_str().unwrap()];
    mine(&at, &files[..2], &state_arg).assert().success();
    change(&files);
    let inputs = inputs(&files);
    mine(&at, &inputs, &state_arg).assert().success();
    let c = changes(&at);
    assert_eq!(c["mode"], "full", "{c}");
    let reason = c["reason"].as_str().unwrap();
    assert!(reason.contains(why), "{reason}");
    mine(&dir.path().join("full"), &inputs, &[])
        .assert()
        .success();
    same_outputs(&at, &dir.path().join("full")).unwrap();
    // The state written by the full run serves the next run incrementally.
    let mut more = inputs.clone();
    more.push(files[2].clone());
    if !inputs.contains(&files[2]) {
        mine(&at, &more, &state_arg).assert().success();
        assert_eq!(changes(&at)["mode"], "incremental");
    }
}

#[test]
fn a_changed_input_file_means_a_full_run_saying_which() {
    full_run_after(
        |files| {
            // Same bytes, another modification time.
            let f = std::fs::File::options()
                .write(true)
                .open(&files[0])
                .unwrap();
            f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
                .unwrap();
        },
        |files| files[..2].to_vec(),
        "d0.parquet changed",
    );
}

#[test]
fn a_removed_input_file_means_a_full_run_saying_which() {
    full_run_after(
        |_| (),
        |files| vec![files[1].clone()],
        "d0.parquet is no longer an input",
    );
}

#[test]
fn reordered_input_files_mean_a_full_run() {
    full_run_after(
        |_| (),
        |files| vec![files[1].clone(), files[0].clone()],
        "moved in the order of inputs",
    );
}

#[test]
fn a_state_of_other_options_is_refused_and_rebuilt_when_forced() {
    let (_dir, files, at, state) = first_state(&[200, 40], 5);
    let out = mine(&at, &files, &["--negatives", "hard"])
        .args(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("made with other mining options") && stderr.contains("--force"),
        "{stderr}"
    );
    mine(&at, &files, &["--negatives", "hard", "--force"])
        .args(&state)
        .assert()
        .success();
    let c = changes(&at);
    assert_eq!(c["mode"], "full");
    assert!(c["reason"].as_str().unwrap().contains("--force"), "{c}");
}

#[test]
fn a_state_of_another_version_is_refused() {
    let (_dir, files, at, state) = first_state(&[200, 40], 6);
    let facts = Path::new(&state[1]).join("state.json");
    let text = std::fs::read_to_string(&facts).unwrap();
    let text = text.replace(env!("CARGO_PKG_VERSION"), "0.0.1");
    std::fs::write(&facts, text).unwrap();
    let out = mine(&at, &files, &[]).args(&state).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("made by tripmine 0.0.1"), "{stderr}");
}

#[test]
fn options_incremental_mining_does_not_cover_are_refused_at_start() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[100], 3, 7);
    let out = mine(dir.path(), &files, &["--max-k", "128"])
        .args(["--state", "st"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("incremental mining"), "{stderr}");
}

/// The summary of the run in `at`.
fn summary(at: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(at.join("summary.json")).unwrap()).unwrap()
}

/// An IVF index that probes every list and stores the vectors whole: its search is
/// exhaustive whatever the lists' centroids (the kept index was trained on the first file
/// only, a full run's on all).
const EXHAUSTIVE_IVF: [&str; 4] = ["--index", "IVF4,Flat", "--nprobe", "4"];

/// Grows `files` with `args` and the exhaustive IVF index, incrementally and at once: the
/// outputs must be the same (but the report's timings); the last run's changes and log.
fn grow_exhaustive_ivf(dir: &Path, files: &[PathBuf], args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = EXHAUSTIVE_IVF.iter().chain(args).copied().collect();
    let (grown, full) = grow_and_mine_all(dir, files, &args);
    same_files(&grown, &full, &["o.parquet", "s.parquet"])
        .unwrap_or_else(|e| panic!("{e} with {args:?}"));
    same_report_but_timings(&grown, &full).unwrap_or_else(|e| panic!("{e} with {args:?}"));
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/state.json")).unwrap()).unwrap();
    assert_eq!(facts["index"], "IVF4,Flat", "{args:?}");
    assert_eq!(summary(&grown)["exact"], false);
    changes(&grown)
}

#[test]
fn an_ivf_index_searching_every_row_grows_in_the_state_to_a_full_runs_outputs() {
    // 40 labels: few rows of a label, so each old anchor looks only at the new rows whose
    // search found it and those of its label; `--k` past the table's rows lists every pair.
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[800, 60, 50], 40, 21);
    for args in [
        &["--k", "1000"][..],
        &[
            "--k",
            "1000",
            "--negatives",
            "hardest",
            "--num-negatives",
            "3",
            "--positives",
            "hardest",
        ],
        &["--k", "1000", "--metric", "cosine", "--suspects-k", "4"],
        // Few labels: every old anchor looks at every new row.
        &["--seed", "4"],
    ] {
        let run = TempDir::new_in(dir.path()).unwrap();
        let files = if args.contains(&"--seed") {
            partitions(run.path(), Shape::Blobs, &[400, 60, 50], 6, 21)
        } else {
            files.clone()
        };
        let changes = grow_exhaustive_ivf(run.path(), &files, args);
        assert_eq!(changes["mode"], "incremental", "{args:?}");
        assert_eq!(changes["new_rows"], 50, "{args:?}");
    }
}

#[test]
fn new_rows_far_from_every_anchor_still_reach_the_anchors_of_their_label() {
    // New rows of old labels, far from every old row and more of them than the search's
    // depth: their own searches find one another, not the old anchors. A full run takes them
    // as the hardest positives of their labels' anchors; an incremental run must mine those
    // anchors again (listed by label), not keep their old positives.
    let dir = TempDir::new().unwrap();
    let mut files = partitions(dir.path(), Shape::Blobs, &[800], 40, 23);
    let (dim, count) = (6usize, 90usize);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let far = Rows {
        ids: (0..count as i64).map(|i| 100_000 + i).collect(),
        labels: (0..count as i64).map(|i| i % 8).collect(),
        values: (0..count * dim)
            .map(|j| if j % dim == 0 { 40.0 } else { 0.0 } + rng.random_range(-1.0f32..1.0))
            .collect(),
    };
    let path = dir.path().join("far.parquet");
    write_rows(&path, &far, dim as i32);
    files.push(path);
    for args in [&["--positives", "hardest"][..], &[]] {
        let run = TempDir::new_in(dir.path()).unwrap();
        let changes = grow_exhaustive_ivf(run.path(), &files, args);
        assert_eq!(changes["mode"], "incremental", "{args:?}");
        assert!(
            changes["anchors_mined_again"].as_u64().unwrap() > 0,
            "{args:?}: {changes}"
        );
    }
}

#[test]
fn an_approximate_index_is_kept_in_the_state_and_takes_each_runs_new_rows() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[600, 80, 70], 40, 22);
    let state = dir.path().join("state");
    let args = [
        "--index",
        "IVF8,SQ8",
        "--nprobe",
        "2",
        "--state",
        state.to_str().unwrap(),
        "-v",
    ];
    let at = dir.path().join("run");
    mine(&at, &files[..1], &args).assert().success();
    let kept_index = || std::fs::read(state.join("index.faiss")).unwrap();
    let mut indexes = vec![kept_index()];
    for end in 2..=3 {
        if end == 3 {
            // The index and the state's rows must agree: a state whose index lost rows is
            // refused rather than searched.
            std::fs::write(state.join("index.faiss"), &indexes[0]).unwrap();
            let out = mine(&at, &files[..end], &args).output().unwrap();
            assert_eq!(out.status.code(), Some(2));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("holds 600 rows, the state 680"), "{stderr}");
            std::fs::write(state.join("index.faiss"), &indexes[1]).unwrap();
        }
        let out = mine(&at, &files[..end], &args).output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        // The state's lists take the new rows; no index is trained again. Each old anchor
        // looks at the new rows whose search found it and those of its label.
        assert!(log.contains("index taken from the state"), "{log}");
        assert!(log.contains("new rows listed per old anchor"), "{log}");
        assert!(!log.contains("training index"), "{log}");
        let c = changes(&at);
        assert_eq!(c["mode"], "incremental");
        assert!(c["anchors_mined_again"].as_u64().unwrap() < 600, "{c}");
        let s = summary(&at);
        assert!(s["totals"]["recall_negatives"].as_f64().is_some(), "{s}");
        indexes.push(kept_index());
        assert!(indexes[end - 1].len() > indexes[end - 2].len());
    }
}

#[test]
fn a_run_killed_at_any_point_leaves_a_state_the_next_run_completes() {
    for point in tripmine::pipeline::ABORT_POINTS {
        let (dir, files, at, state) = first_state(&[300, 30], 8);
        let killed = mine(&at, &files, &[])
            .args(&state)
            .env("TRIPMINE_TEST_ABORT_AT", point)
            .output()
            .unwrap();
        assert!(!killed.status.success(), "{point}: not killed");
        mine(&at, &files, &[]).args(&state).assert().success();
        mine(&dir.path().join("full"), &files, &[])
            .assert()
            .success();
        same_outputs(&at, &dir.path().join("full")).unwrap_or_else(|e| panic!("{point}: {e}"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(&at).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
    }
}

#[test]
fn a_distributed_plan_refuses_a_state() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[100], 3, 9);
    let out = tripmine()
        .current_dir(dir.path())
        .args(["plan", "--work", "w", "--state", "st", "--in"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--state belongs to a single run"),
        "{stderr}"
    );
}

/// Every row of a Parquet file as text (columns joined, negative ranks left out), and the `op`
/// of each when the file has that column (`None` for rows of the triplet output itself).
fn rows_as_text(path: &Path) -> Vec<(String, Option<String>)> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let batch = crate::common::bin::read(path);
    let schema = batch.schema();
    let options = FormatOptions::default();
    let format = |name: &str| {
        ArrayFormatter::try_new(batch.column_by_name(name).unwrap(), &options).unwrap()
    };
    let op = schema.column_with_name("op").map(|_| format("op"));
    let columns: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != "op" && !f.name().ends_with("rank"))
        .map(|f| format(f.name()))
        .collect();
    (0..batch.num_rows())
        .map(|r| {
            let row: Vec<String> = columns.iter().map(|c| c.value(r).to_string()).collect();
            (row.join("|"), op.as_ref().map(|o| o.value(r).to_string()))
        })
        .collect()
}

/// The entry `key` of a Parquet file's Arrow schema metadata.
fn file_metadata(path: &Path, key: &str) -> Option<String> {
    let file = std::fs::File::open(path).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    builder.schema().metadata().get(key).cloned()
}

/// Applies the delta at `delta` to the rows of `before`: every removed row must be there.
pub(super) fn apply_delta(before: Vec<String>, delta: &Path) -> Vec<String> {
    let mut rows: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for r in before {
        *rows.entry(r).or_default() += 1;
    }
    for (row, op) in rows_as_text(delta) {
        let count = rows.entry(row.clone()).or_default();
        match op.as_deref() {
            Some("remove") => {
                assert!(
                    *count > 0,
                    "the delta removes a row the output did not have: {row}"
                );
                *count -= 1;
            }
            Some("add") => *count += 1,
            other => panic!("op {other:?}"),
        }
    }
    let mut out: Vec<String> = rows
        .into_iter()
        .flat_map(|(r, n)| std::iter::repeat_n(r, n as usize))
        .collect();
    out.sort();
    out
}

pub(super) fn output_rows(at: &Path) -> Vec<String> {
    let mut rows: Vec<String> = rows_as_text(&at.join("o.parquet"))
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_delta_applied_to_the_previous_output_gives_the_new_output() {
    for args in [
        &[][..],
        &["--sample", "random", "--seed", "4", "--num-negatives", "2"],
        &[
            "--num-positives",
            "2",
            "--max-negative-reuse",
            "2",
            "--shortfall",
            "drop",
        ],
        &["--format", "n-tuple", "--num-negatives", "3"],
        &["--format", "pairs", "--negatives", "hard"],
        // Anchors that leave the sample are removed whole.
        &["--anchors-sample", "300", "--seed", "8"],
        &["--anchors-sample", "300", "--format", "n-tuple"],
    ] {
        let dir = TempDir::new().unwrap();
        let files = partitions(dir.path(), Shape::Blobs, &[400, 40, 3], 6, 12);
        let at = dir.path().join("run");
        let state = dir.path().join("state");
        let flags = ["--state", state.to_str().unwrap(), "--delta", "d.parquet"];
        let mut before: Vec<String> = Vec::new();
        let mut base = "none".to_string();
        for end in 1..=files.len() {
            mine(&at, &files[..end], args)
                .args(flags)
                .assert()
                .success();
            let delta = at.join("d.parquet");
            let after = output_rows(&at);
            assert_eq!(
                apply_delta(before, &delta),
                after,
                "{args:?}: the delta of run {end} does not lead to its output"
            );
            // Deltas chain: each starts from the state the one before led to.
            assert_eq!(file_metadata(&delta, "tripmine.delta.base").unwrap(), base);
            base = file_metadata(&delta, "tripmine.delta.state").unwrap();
            let c = changes(&at);
            let (added, removed) = (
                c["delta_rows_added"].as_u64().unwrap(),
                c["delta_rows_removed"].as_u64().unwrap(),
            );
            assert_eq!(rows_as_text(&delta).len() as u64, added + removed);
            if end == 1 {
                assert_eq!(removed, 0, "{args:?}: a first run's delta only adds");
                assert_eq!(added as usize, after.len());
            } else if args.is_empty() {
                // Most rows stay: the delta holds what changed, not the output again; new
                // rows nearer than a selection's negatives push some out.
                assert!(added + removed < after.len() as u64 / 2, "{c}");
                assert!(removed > 0 || end == 3, "{c}");
            }
            before = after;
        }
    }
}

#[test]
fn a_delta_needs_a_state() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[100], 3, 13);
    let out = mine(dir.path(), &files, &["--delta", "d.parquet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--delta") && stderr.contains("state"),
        "{stderr}"
    );
}

#[test]
fn a_file_rewritten_with_its_size_and_time_means_a_full_run() {
    full_run_after(
        |files| {
            // Another writer's name in the footer: same size, same modification time.
            let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
            let mut bytes = std::fs::read(&files[0]).unwrap();
            let at = bytes
                .windows(10)
                .rposition(|w| w == b"parquet-rs")
                .expect("arrow-rs names itself in the footer");
            bytes[at] = b'P';
            std::fs::write(&files[0], &bytes).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(&files[0])
                .unwrap();
            f.set_modified(modified).unwrap();
        },
        |files| files[..2].to_vec(),
        "d0.parquet changed",
    );
}

#[test]
fn a_run_killed_at_any_point_leaves_no_partial_delta_and_the_rerun_delta_applies() {
    for point in tripmine::pipeline::ABORT_POINTS {
        let dir = TempDir::new().unwrap();
        let files = partitions(dir.path(), Shape::Blobs, &[300, 30], 5, 14);
        let at = dir.path().join("run");
        let state = dir.path().join("state");
        let flags = ["--state", state.to_str().unwrap(), "--delta", "d.parquet"];
        mine(&at, &files[..1], &[]).args(flags).assert().success();
        let before = output_rows(&at);
        let first = file_metadata(&at.join("d.parquet"), "tripmine.delta.state").unwrap();
        let killed = mine(&at, &files, &[])
            .args(flags)
            .env("TRIPMINE_TEST_ABORT_AT", point)
            .output()
            .unwrap();
        assert!(!killed.status.success(), "{point}: not killed");
        let leftovers: Vec<_> = std::fs::read_dir(&at)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("d.parquet") && n != "d.parquet")
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
        mine(&at, &files, &[]).args(flags).assert().success();
        let delta = at.join("d.parquet");
        if file_metadata(&delta, "tripmine.delta.base").unwrap() == first {
            // The killed run's state never replaced the first: the rerun starts from it.
            assert_eq!(apply_delta(before, &delta), output_rows(&at), "{point}");
        } else {
            // Killed after its state was in place (only the manifest was left): the rerun
            // changed nothing since.
            assert_eq!(point, "committed");
            assert!(rows_as_text(&delta).is_empty());
        }
    }
}

/// `cmd` under a memory limit of `limit` (unchecked: the tests' limits of a few KiB), its
/// vectors spilled to `scratch`.
fn under_limit<'c>(
    cmd: &'c mut assert_cmd::Command,
    limit: &str,
    scratch: &Path,
) -> &'c mut assert_cmd::Command {
    cmd.env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .args(["--memory-limit", limit, "--scratch-dir"])
        .arg(scratch)
}

#[test]
fn incremental_runs_under_a_memory_limit_equal_a_full_run_in_memory() {
    // Spilled vectors (a limit of a few KiB, the tests' unchecked limits): the sift reads the
    // new rows through the scratch file's mapping; the reuse cap counts in passes.
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[700, 250, 150], 6, 31);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let args = ["--num-negatives", "3", "--max-negative-reuse", "2"];
    let grown = dir.path().join("grown");
    for end in 1..=files.len() {
        let run = under_limit(&mut mine(&grown, &files[..end], &args), "32KiB", &scratch)
            .arg("--state")
            .arg(dir.path().join("state"))
            .assert()
            .success();
        let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
        assert!(log.contains("vectors spill to a scratch file"), "{log}");
    }
    assert_eq!(changes(&grown)["mode"], "incremental");
    let full = dir.path().join("full");
    mine(&full, &files, &args).assert().success();
    same_files(&grown, &full, &["o.parquet", "s.parquet"]).unwrap();
    // The report's rows (its metadata records the options as given, the limit included).
    let report = |at: &Path| crate::common::bin::read(&at.join("r.parquet"));
    assert_eq!(report(&grown).columns(), report(&full).columns());
}

/// Overwrites the bytes of `path` between its leading magic and its footer (its data pages)
/// with zeros, keeping its size, modification time and footer: only a run that reads the
/// data notices.
fn wipe_data_pages(path: &Path) {
    let modified = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    bytes[4..n - 8 - footer].fill(0);
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(modified).unwrap();
}

#[test]
fn an_incremental_run_reads_only_the_files_that_are_new() {
    let (dir, files, at, state) = first_state(&[300, 40, 30], 21);
    let full = dir.path().join("full");
    mine(&full, &files, &[]).assert().success();
    // The old partitions can no longer be decoded, yet look unchanged.
    wipe_data_pages(&files[0]);
    let broken = mine(&dir.path().join("broken"), &files[..1], &[])
        .output()
        .unwrap();
    assert!(!broken.status.success(), "the wiped file still decodes");
    let run = mine(&at, &files[..2], &[]).args(&state).assert().success();
    let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(
        log.contains("the rows of the first 1 kept in the state"),
        "{log}"
    );
    wipe_data_pages(&files[1]);
    mine(&at, &files, &[]).args(&state).assert().success();
    assert_eq!(changes(&at)["mode"], "incremental");
    same_outputs(&at, &full).unwrap();
}

#[test]
fn a_run_killed_after_it_appended_to_the_kept_rows_leaves_the_previous_state_whole() {
    // The kept vectors file is shared with the previous state and grows in place; a killed
    // run's rows (here another partition's) must not stay in it once a later run appends its
    // own.
    for point in ["mine", "report", "commit"] {
        let (dir, files, at, state) = first_state(&[300, 30, 20], 22);
        let killed = mine(&at, &[files[0].clone(), files[2].clone()], &[])
            .args(&state)
            .env("TRIPMINE_TEST_ABORT_AT", point)
            .output()
            .unwrap();
        assert!(!killed.status.success(), "{point}: not killed");
        mine(&at, &files[..2], &[]).args(&state).assert().success();
        mine(&at, &files, &[]).args(&state).assert().success();
        assert_eq!(changes(&at)["mode"], "incremental", "{point}");
        let full = dir.path().join("full");
        mine(&full, &files, &[]).assert().success();
        same_outputs(&at, &full).unwrap_or_else(|e| panic!("{point}: {e}"));
    }
}

#[test]
fn a_state_without_its_rows_reads_every_file_again() {
    let (dir, files, at, state) = first_state(&[300, 40], 23);
    std::fs::remove_dir_all(dir.path().join("state").join("rows")).unwrap();
    let run = mine(&at, &files, &[]).args(&state).assert().success();
    let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(log.contains("the state keeps no rows"), "{log}");
    assert_eq!(changes(&at)["mode"], "incremental");
    let full = dir.path().join("full");
    mine(&full, &files, &[]).assert().success();
    same_outputs(&at, &full).unwrap();
}

/// Copies the partition `path` with one more column, `day`, naming its partition.
fn with_day_column(path: &Path, day: &str) {
    let batch = crate::common::bin::read(path);
    let days: ArrayRef = Arc::new(arrow::array::StringArray::from(vec![day; batch.num_rows()]));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("day", DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(days);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    std::fs::remove_file(path).unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

#[test]
fn kept_rows_carry_with_columns_and_other_with_columns_read_the_files_again() {
    let dir = TempDir::new().unwrap();
    let files = partitions(dir.path(), Shape::Blobs, &[300, 40, 30], 6, 24);
    for (i, f) in files.iter().enumerate() {
        with_day_column(f, &format!("day-{i}"));
    }
    let state = ["--state", dir.path().join("state").to_str().unwrap()].map(String::from);
    let at = dir.path().join("run");
    let with = ["--with", "day"];
    mine(&at, &files[..1], &with)
        .args(&state)
        .assert()
        .success();
    let run = mine(&at, &files[..2], &with)
        .args(&state)
        .assert()
        .success();
    let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(log.contains("kept in the state"), "{log}");
    let full = dir.path().join("full");
    mine(&full, &files[..2], &with).assert().success();
    same_outputs(&at, &full).unwrap();
    // Without the column, the kept rows hold one the run does not want: the files are read.
    let run = mine(&at, &files, &[]).args(&state).assert().success();
    let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    assert!(log.contains("every input file is read again"), "{log}");
    assert_eq!(changes(&at)["mode"], "incremental");
    mine(&full, &files, &[]).assert().success();
    same_outputs(&at, &full).unwrap();
}

#[test]
fn cosine_rows_kept_normalised_under_a_limit_serve_runs_without_one_and_back() {
    // Under a memory limit cosine rows are normalised as they are read (and kept so); a run
    // without a limit takes them as they are and normalises its new rows the same way, and a
    // run under a limit again normalises raw kept rows as it takes them.
    for limited in [[true, false, true], [false, true, false]] {
        let dir = TempDir::new().unwrap();
        let files = partitions(dir.path(), Shape::Blobs, &[500, 60, 40], 6, 25);
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let args = ["--metric", "cosine", "--num-negatives", "3"];
        let grown = dir.path().join("grown");
        for (end, limit) in (1..=files.len()).zip(limited) {
            let mut run = mine(&grown, &files[..end], &args);
            run.arg("--state").arg(dir.path().join("state"));
            if limit {
                under_limit(&mut run, "4KiB", &scratch);
            }
            let log = run.assert().success().get_output().stderr.clone();
            let log = String::from_utf8_lossy(&log);
            assert_eq!(log.contains("vectors spilled"), limit, "{log}");
        }
        assert_eq!(changes(&grown)["mode"], "incremental");
        let full = dir.path().join("full");
        mine(&full, &files, &args).assert().success();
        same_files(&grown, &full, &["o.parquet", "s.parquet"])
            .unwrap_or_else(|e| panic!("{limited:?}: {e}"));
    }
}

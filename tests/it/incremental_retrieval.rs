//! Incremental mining in retrieval mode (`--state DIR` with `--queries`, `--corpus`,
//! `--qrels`): a corpus that grew by new files under the same queries and qrels gives what a
//! full run on the whole corpus gives (the triplet file and the report, byte for byte),
//! mining again only the queries a new document can change; a changed queries or qrels file
//! means a full run saying which.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, BooleanArray};
use tempfile::TempDir;

use crate::common::bin::{read, same_report_but_timings, tripmine};

/// A retrieval example (`tripmine gen --retrieval`) whose corpus is cut into files of
/// `sizes` documents, and qrels naming only documents of the first: the queries, the corpus
/// files and the qrels.
fn grown_corpus(dir: &Path, sizes: &[usize], seed: u64) -> (PathBuf, Vec<PathBuf>, PathBuf) {
    let ex = dir.join("example");
    let rows: usize = sizes.iter().sum();
    tripmine()
        .args([
            "gen",
            "--retrieval",
            "--rows",
            &rows.to_string(),
            "--labels",
            "6",
        ])
        .args(["--queries", "40", "--dim", "6", "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&ex)
        .assert()
        .success();
    let corpus = read(&ex.join("corpus.parquet"));
    let mut files = Vec::new();
    let mut at = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let path = dir.join(format!("corpus{i}.parquet"));
        tripmine::io::write_parquet(&path, &corpus.slice(at, size)).unwrap();
        files.push(path);
        at += size;
    }
    let first: HashSet<&str> = corpus
        .column_by_name("id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .take(sizes[0])
        .map(Option::unwrap)
        .collect();
    let qrels = read(&ex.join("qrels.parquet"));
    let docs = qrels.column_by_name("doc_id").unwrap().as_string::<i32>();
    let keep: BooleanArray = docs
        .iter()
        .map(|d| Some(first.contains(d.unwrap())))
        .collect();
    let qrels_path = dir.join("qrels.parquet");
    let kept = arrow::compute::filter_record_batch(&qrels, &keep).unwrap();
    assert!(kept.num_rows() > 10, "{} qrels kept", kept.num_rows());
    tripmine::io::write_parquet(&qrels_path, &kept).unwrap();
    (ex.join("queries.parquet"), files, qrels_path)
}

/// `tripmine mine` in `at` on the queries, `corpus` and qrels, writing `o.parquet`,
/// `r.parquet` and `summary.json`, with `args`.
fn mine(at: &Path, queries: &Path, corpus: &[PathBuf], qrels: &Path, args: &[&str]) {
    std::fs::create_dir_all(at).unwrap();
    let mut cmd = tripmine();
    cmd.current_dir(at)
        .args(["mine", "--no-progress", "--queries"])
        .arg(queries)
        .arg("--qrels")
        .arg(qrels);
    for file in corpus {
        cmd.arg("--corpus").arg(file);
    }
    cmd.args(["--out", "o.parquet", "--report", "r.parquet"])
        .args(["--summary-json", "summary.json"])
        .args(args)
        .assert()
        .success();
}

fn changes(at: &Path) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(at.join("summary.json")).unwrap()).unwrap();
    s["changes"].clone()
}

/// Mines the corpus with a state one more file at a time, then whole without: the last
/// incremental run's outputs equal the full run's. Returns its changes.
fn grow_and_compare(
    dir: &Path,
    (queries, corpus, qrels): &(PathBuf, Vec<PathBuf>, PathBuf),
    args: &[&str],
) -> serde_json::Value {
    let state = dir.join("state");
    let with_state: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--state", state.to_str().unwrap()])
        .collect();
    let grown = dir.join("grown");
    for end in 1..=corpus.len() {
        mine(&grown, queries, &corpus[..end], qrels, &with_state);
    }
    let full = dir.join("full");
    mine(&full, queries, corpus, qrels, args);
    for name in ["o.parquet", "r.parquet"] {
        let (a, b) = (grown.join(name), full.join(name));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{args:?}: {name} differs from a full run's"
        );
    }
    changes(&grown)
}

/// Option sets of retrieval mining: bands of every kind, several positives, guards (with and
/// without a rank window), random samples, cosine, a sample of the queries.
const OPTION_SETS: &[&[&str]] = &[
    &[],
    &["--negatives", "hard", "--num-negatives", "3"],
    &[
        "--positives",
        "all",
        "--negatives",
        "easy",
        "--num-negatives",
        "2",
    ],
    &[
        "--metric",
        "cosine",
        "--negatives",
        "hardest",
        "--num-negatives",
        "4",
        "--positive-percent",
        "--near-duplicate",
        "0.9",
    ],
    &[
        "--metric",
        "cosine",
        "--range-min",
        "2",
        "--range-max",
        "12",
        "--positive-margin",
        "0.05",
    ],
    &["--sample", "random", "--seed", "5", "--num-negatives", "3"],
    &[
        "--metric",
        "cosine",
        "--positives",
        "hardest",
        "--num-positives",
        "2",
    ],
    &[
        "--anchors-sample",
        "25",
        "--seed",
        "3",
        "--negatives",
        "easy",
    ],
];

#[test]
fn a_grown_corpus_mined_incrementally_equals_a_full_run_for_every_option_set() {
    for (i, args) in OPTION_SETS.iter().enumerate() {
        let dir = TempDir::new().unwrap();
        // 600 documents, then 12 (2%) and 9: the table's size in bits stays (random samples).
        let inputs = grown_corpus(dir.path(), &[600, 12, 9], 20 + i as u64);
        let changes = grow_and_compare(dir.path(), &inputs, args);
        assert_eq!(changes["mode"], "incremental", "{args:?}: {changes}");
        assert_eq!(changes["new_rows"], 9, "{args:?}");
    }
}

#[test]
fn an_ivf_index_probing_every_list_grows_with_the_corpus_to_a_full_runs_outputs() {
    // Every list probed, vectors stored whole: the kept index (trained on the first file)
    // searches as exhaustively as a full run's.
    let dir = TempDir::new().unwrap();
    let (queries, corpus, qrels) = grown_corpus(dir.path(), &[600, 12, 9], 41);
    let args = [
        "--index",
        "IVF4,Flat",
        "--nprobe",
        "4",
        "--num-negatives",
        "3",
    ];
    let state = dir.path().join("state");
    let with_state: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--state", state.to_str().unwrap()])
        .collect();
    let (grown, full) = (dir.path().join("grown"), dir.path().join("full"));
    for end in 1..=corpus.len() {
        mine(&grown, &queries, &corpus[..end], &qrels, &with_state);
    }
    mine(&full, &queries, &corpus, &qrels, &args);
    let triplets = |at: &Path| std::fs::read(at.join("o.parquet")).unwrap();
    assert!(triplets(&grown) == triplets(&full), "o.parquet differs");
    same_report_but_timings(&grown, &full).unwrap();
    let changes = changes(&grown);
    assert_eq!(changes["mode"], "incremental", "{changes}");
    assert_eq!(changes["new_rows"], 9);
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    assert_eq!(facts["index"], "IVF4,Flat");
}

#[test]
fn new_documents_mine_again_only_the_queries_they_can_change() {
    let dir = TempDir::new().unwrap();
    let inputs = grown_corpus(dir.path(), &[2000, 10], 3);
    let changes = grow_and_compare(dir.path(), &inputs, &[]);
    assert_eq!(changes["mode"], "incremental");
    let again = changes["anchors_mined_again"].as_u64().unwrap();
    // Ten documents land in the bands of a few of the 40 queries, not of all.
    assert!(again < 20, "{again} queries mined again: {changes}");
    let kept = changes["triplets_kept"].as_u64().unwrap();
    assert!(kept > 0, "{changes}");
}

#[test]
fn changed_queries_or_qrels_mean_a_full_run_saying_which() {
    let dir = TempDir::new().unwrap();
    let (queries, corpus, qrels) = grown_corpus(dir.path(), &[300, 10, 5], 9);
    let state = dir.path().join("state");
    let args = ["--state", state.to_str().unwrap()];
    let at = dir.path().join("run");
    mine(&at, &queries, &corpus[..1], &qrels, &args);
    // The qrels rewritten without their last row.
    let before = read(&qrels);
    tripmine::io::write_parquet(&qrels, &before.slice(0, before.num_rows() - 1)).unwrap();
    mine(&at, &queries, &corpus[..2], &qrels, &args);
    let c = changes(&at);
    assert_eq!(c["mode"], "full", "{c}");
    let reason = c["reason"].as_str().unwrap();
    assert!(reason.contains("qrels.parquet changed"), "{reason}");
    // The next run, on one more corpus file, is incremental again.
    mine(&at, &queries, &corpus, &qrels, &args);
    let c = changes(&at);
    assert_eq!(c["mode"], "incremental", "{c}");
    assert_eq!(c["new_rows"], 5);
}

#[test]
fn a_delta_of_a_grown_corpus_applied_to_the_previous_output_gives_the_new_output() {
    use crate::incremental::{apply_delta, output_rows};
    for args in [&[][..], &["--format", "n-tuple", "--num-negatives", "3"]] {
        let dir = TempDir::new().unwrap();
        let (queries, corpus, qrels) = grown_corpus(dir.path(), &[500, 20, 6], 31);
        let at = dir.path().join("run");
        let state = dir.path().join("state");
        let flags: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--state", state.to_str().unwrap(), "--delta", "d.parquet"])
            .collect();
        let mut before: Vec<String> = Vec::new();
        for end in 1..=corpus.len() {
            mine(&at, &queries, &corpus[..end], &qrels, &flags);
            let after = output_rows(&at);
            assert_eq!(
                apply_delta(before, &at.join("d.parquet")),
                after,
                "{args:?}: the delta of run {end} does not lead to its output"
            );
            before = after;
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    #[test]
    fn incremental_retrieval_runs_equal_a_full_run(
        options in 0..OPTION_SETS.len(),
        first in 300usize..500,
        later in proptest::collection::vec(1usize..40, 1..3),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let dir = TempDir::new().unwrap();
        let sizes: Vec<usize> = std::iter::once(first).chain(later.iter().copied()).collect();
        let inputs = grown_corpus(dir.path(), &sizes, seed);
        let changes = grow_and_compare(dir.path(), &inputs, OPTION_SETS[options]);
        let rows: usize = sizes.iter().sum();
        let old_rows = rows - sizes.last().unwrap();
        let bits = |n: usize| usize::BITS - (n.max(2) - 1).leading_zeros();
        if OPTION_SETS[options].contains(&"random") && bits(rows) != bits(old_rows) {
            proptest::prop_assert_eq!(&changes["mode"], "full");
        } else {
            proptest::prop_assert_eq!(&changes["mode"], "incremental");
            proptest::prop_assert_eq!(changes["new_rows"].as_u64(), Some(*sizes.last().unwrap() as u64));
        }
    }
}

#[test]
fn new_documents_entering_a_kept_window_are_taken_in_without_mining_the_query_again() {
    // Queries keep their window's rows: a new document nearer than the last of them is
    // merged in and the window's selection made again over the merged rows. The last file
    // copies old documents under new ids, so new rows tie with rows of the windows (a tie
    // puts the old row first).
    let dir = TempDir::new().unwrap();
    let (queries, mut corpus, qrels) = grown_corpus(dir.path(), &[600, 15], 41);
    let first = read(&corpus[0]);
    let copies = first.slice(0, 60);
    let ids: arrow::array::StringArray = copies
        .column_by_name("id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|id| Some(format!("copy-{}", id.unwrap())))
        .collect();
    let mut columns = copies.columns().to_vec();
    columns[copies.schema().index_of("id").unwrap()] = std::sync::Arc::new(ids);
    let copies = arrow::array::RecordBatch::try_new(copies.schema(), columns).unwrap();
    let path = dir.path().join("copies.parquet");
    tripmine::io::write_parquet(&path, &copies).unwrap();
    corpus.push(path);
    let option_sets = [
        &[
            "--range-min",
            "1",
            "--range-max",
            "8",
            "--num-negatives",
            "3",
        ][..],
        &[
            "--range-min",
            "2",
            "--range-max",
            "10",
            "--sample",
            "random",
            "--num-negatives",
            "2",
            "--negatives",
            "hardest",
        ],
        &[
            "--metric",
            "cosine",
            "--range-max",
            "12",
            "--positive-margin",
            "0.05",
        ],
    ];
    for (i, args) in option_sets.into_iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        let changes = grow_and_compare(
            &sub,
            &(queries.clone(), corpus.clone(), qrels.clone()),
            args,
        );
        assert_eq!(changes["mode"], "incremental", "{args:?}: {changes}");
        let updated = changes["anchors_updated"].as_u64().unwrap();
        let again = changes["anchors_mined_again"].as_u64().unwrap();
        assert!(updated > 0, "{args:?}: {changes}");
        assert!(again < updated, "{args:?}: {changes}");
    }
}

//! Retrieval mode through the real binary: queries, corpus and qrels in Parquet; output
//! formats, passthrough columns, the report's rule counts and bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::Oracle;
use crate::common::bin::{f32_column, read, tripmine};
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, ListArray, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt8Type, UInt32Type, UInt64Type};
use predicates::prelude::*;
use tempfile::TempDir;
use tripmine::config::{
    Count, InputOptions, Metric, MiningParams, NegativeStrategy, PositiveStrategy,
};
use tripmine::io::read_retrieval;

/// `tripmine gen --retrieval` into `dir`: 400 documents on 8 topics, 60 queries, dim 8.
fn example(dir: &Path) -> PathBuf {
    let out = dir.join("example");
    tripmine()
        .args(["gen", "--retrieval", "--rows", "400", "--labels", "8"])
        .args(["--queries", "60", "--dim", "8", "--seed", "3", "--out"])
        .arg(&out)
        .assert()
        .success();
    out
}

fn mine(ex: &Path, dir: &Path) -> assert_cmd::Command {
    let mut cmd = tripmine();
    // Spilled under limits of a few KiB: not checked against what the run needs.
    cmd.env("TRIPMINE_UNCHECKED_MEMORY_LIMIT", "1")
        .current_dir(dir)
        .arg("mine")
        .arg("--queries")
        .arg(ex.join("queries.parquet"))
        .arg("--corpus")
        .arg(ex.join("corpus.parquet"))
        .args(["--no-progress", "--threads", "1"]);
    cmd
}

fn with_qrels(cmd: &mut assert_cmd::Command, ex: &Path) {
    cmd.arg("--qrels").arg(ex.join("qrels.parquet"));
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("{name}"));
    c.as_string::<i32>()
        .iter()
        .map(|s| s.map(str::to_string))
        .collect()
}

fn ids(batch: &RecordBatch, name: &str) -> Vec<String> {
    strings(batch, name)
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

/// A count of the report's overall (last) row.
fn overall(report: &RecordBatch, name: &str) -> u64 {
    let c = report
        .column_by_name(name)
        .unwrap_or_else(|| panic!("{name}"));
    c.as_primitive::<UInt64Type>().value(report.num_rows() - 1)
}

fn u32s(batch: &RecordBatch, name: &str) -> Vec<Option<u32>> {
    let c = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("{name}"));
    c.as_primitive::<UInt32Type>().iter().collect()
}

#[test]
fn binary_output_equals_brute_force_over_queries_and_corpus() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args([
        "--metric",
        "cosine",
        "--positives",
        "hardest",
        "--num-positives",
        "2",
    ])
    .args(["--negatives", "hardest", "--num-negatives", "3", "--k", "4"])
    .args(["--positive-percent", "--near-duplicate", "0.9"])
    .assert()
    .success()
    .stdout(predicate::str::contains("60 queries against 400 documents"))
    .stdout(predicate::str::contains("removed by guards"));
    let got = read(&dir.path().join("triplets.parquet"));

    let input = InputOptions {
        queries: vec![ex.join("queries.parquet")],
        corpus: vec![ex.join("corpus.parquet")],
        qrels: Some(ex.join("qrels.parquet")),
        ..Default::default()
    };
    let (corpus, queries) = read_retrieval(&input, &Default::default()).unwrap();
    let params = MiningParams {
        metric: Metric::Cosine,
        positives: PositiveStrategy::Hardest,
        num_positives: Count::AtMost(2),
        negatives: NegativeStrategy::Hardest,
        num_negatives: Count::AtMost(3),
        positive_percent: Some(95.0),
        near_duplicate: Some(0.9),
        ..Default::default()
    };
    let (want, records) = Oracle::retrieval(&corpus, &queries, Metric::Cosine).mine(&params);
    assert!(!want.is_empty());
    let q_id = |r: u32| format!("q{r}");
    let d_id = |r: u32| {
        corpus
            .ids()
            .as_string::<i32>()
            .value(r as usize)
            .to_string()
    };
    assert_eq!(
        ids(&got, "anchor_id"),
        want.iter().map(|t| q_id(t.anchor)).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&got, "positive_id"),
        want.iter().map(|t| d_id(t.positive)).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&got, "negative_id"),
        want.iter().map(|t| d_id(t.negative)).collect::<Vec<_>>()
    );
    assert_eq!(
        f32_column(&got, "d_an").values().to_vec(),
        want.iter().map(|t| t.d_an).collect::<Vec<_>>()
    );
    assert_eq!(
        u32s(&got, "negative_rank"),
        want.iter()
            .map(|t| Some(t.negative_rank))
            .collect::<Vec<_>>()
    );
    assert!(
        strings(&got, "rule")
            .iter()
            .all(|r| r.as_deref() == Some("hardest"))
    );
    assert!(
        got.column_by_name("anchor_label").is_none(),
        "no labels in retrieval mode"
    );

    // The report counts what each guard removed, as the oracle does.
    let report = read(&dir.path().join("report.parquet"));
    let count = |name: &str| overall(&report, name);
    let removed = |g: usize| {
        records
            .iter()
            .map(|r| r.guard_removed[g] as u64)
            .sum::<u64>()
    };
    assert_eq!(count("removed_positive_percent"), removed(2));
    assert_eq!(count("removed_near_duplicate"), removed(3));
    assert!(removed(2) > 0, "the guard removed candidates here");
    assert_eq!(count("removed_max_negative_similarity"), 0);
    assert_eq!(count("anchors"), 60);
}

/// The qrels as a list column `positives` of the queries table, written to `path`.
#[test]
fn a_spilled_corpus_gives_the_same_triplets_as_one_in_memory() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let run = |extra: &[&str]| {
        let mut cmd = mine(&ex, dir.path());
        with_qrels(&mut cmd, &ex);
        cmd.args(["--metric", "cosine", "--positives", "all", "--k", "4"])
            .args(["--negatives", "hardest", "--num-negatives", "3"])
            .args(["--near-duplicate", "0.9"])
            .args(extra)
            .assert()
            .success();
        std::fs::read(dir.path().join("triplets.parquet")).unwrap()
    };
    let in_memory = run(&[]);
    // 400 x 8 f32 are 12.5 KiB, over half of 16 KiB; 51 rows are read in at a time.
    let spilled = run(&["--memory-limit", "16KiB", "--force"]);
    assert!(in_memory == spilled, "same triplets");
    // An IVF index: queries are taken in the order of their nearest lists.
    let ivf = ["--index", "IVF8,Flat", "--nprobe", "2", "--force"];
    let in_memory = run(&ivf);
    let spilled = run(&[&ivf[..], &["--memory-limit", "16KiB"]].concat());
    assert!(in_memory == spilled, "same triplets with an IVF index");
}

fn queries_with_positive_lists(ex: &Path, path: &Path) {
    let queries = read(&ex.join("queries.parquet"));
    let qrels = read(&ex.join("qrels.parquet"));
    let mut by_query: HashMap<String, Vec<String>> = HashMap::new();
    for (q, d) in ids(&qrels, "query_id")
        .into_iter()
        .zip(ids(&qrels, "doc_id"))
    {
        by_query.entry(q).or_default().push(d);
    }
    let lists: Vec<Option<Vec<Option<String>>>> = ids(&queries, "id")
        .iter()
        .map(|q| {
            by_query
                .get(q)
                .map(|ds| ds.iter().cloned().map(Some).collect())
        })
        .collect();
    let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
    for l in lists {
        match l {
            Some(ds) => {
                for d in ds {
                    builder.values().append_option(d);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    let list: ListArray = builder.finish();
    let mut fields: Vec<Field> = queries
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("positives", list.data_type().clone(), true));
    let mut columns: Vec<ArrayRef> = queries.columns().to_vec();
    columns.push(Arc::new(list));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

#[test]
fn a_positives_list_column_mines_the_same_triplets_as_qrels() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(["--out", "a.parquet", "--report", "ra.parquet"])
        .assert()
        .success();
    let listed = dir.path().join("listed.parquet");
    queries_with_positive_lists(&ex, &listed);
    tripmine()
        .current_dir(dir.path())
        .arg("mine")
        .arg("--queries")
        .arg(&listed)
        .arg("--corpus")
        .arg(ex.join("corpus.parquet"))
        .args(["--positives-col", "positives", "--no-progress"])
        .args(["--out", "b.parquet", "--report", "rb.parquet"])
        .assert()
        .success();
    let (a, b) = (
        read(&dir.path().join("a.parquet")),
        read(&dir.path().join("b.parquet")),
    );
    assert!(a.num_rows() > 0);
    assert_eq!(a, b);
}

#[test]
fn n_tuple_rows_hold_each_pairs_negatives_in_order_with_nulls_when_short() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let common = [
        "--negatives",
        "semihard",
        "--num-negatives",
        "4",
        "--margin",
        "0.3",
    ];
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(common)
        .args(["--out", "t.parquet"])
        .assert()
        .success();
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(common)
        .args([
            "--format",
            "n-tuple",
            "--out",
            "n.parquet",
            "--report",
            "rn.parquet",
        ])
        .assert()
        .success();
    let t = read(&dir.path().join("t.parquet"));
    let n = read(&dir.path().join("n.parquet"));
    // Group the triplet rows by (anchor, positive), in order.
    type Pair = (String, String);
    let mut groups: Vec<(Pair, Vec<(String, f32)>)> = Vec::new();
    let (ta, tp, tn) = (
        ids(&t, "anchor_id"),
        ids(&t, "positive_id"),
        ids(&t, "negative_id"),
    );
    let td = f32_column(&t, "d_an");
    for i in 0..t.num_rows() {
        let key = (ta[i].clone(), tp[i].clone());
        if groups.last().is_none_or(|g| g.0 != key) {
            groups.push((key, Vec::new()));
        }
        groups
            .last_mut()
            .unwrap()
            .1
            .push((tn[i].clone(), td.value(i)));
    }
    assert_eq!(n.num_rows(), groups.len());
    let (na, np) = (ids(&n, "anchor_id"), ids(&n, "positive_id"));
    let mut short = 0;
    for (row, (key, negs)) in groups.iter().enumerate() {
        assert_eq!((&na[row], &np[row]), (&key.0, &key.1));
        for slot in 1..=4 {
            let id = strings(&n, &format!("negative_{slot}_id"))[row].clone();
            let d = n
                .column_by_name(&format!("d_an_{slot}"))
                .unwrap()
                .as_primitive::<Float32Type>();
            match negs.get(slot - 1) {
                Some((want, want_d)) => {
                    assert_eq!(id.as_deref(), Some(want.as_str()));
                    assert_eq!(d.value(row), *want_d);
                }
                None => {
                    assert_eq!(id, None, "a short pair leaves its last slots null");
                    assert!(d.is_null(row));
                    short += 1;
                }
            }
        }
    }
    assert!(short > 0, "some pairs are short here");
}

#[test]
fn pairs_rows_label_positives_one_and_each_negative_zero_once() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args([
        "--positives",
        "all",
        "--negatives",
        "hardest",
        "--num-negatives",
        "2",
    ])
    .args(["--format", "pairs", "--out", "p.parquet"])
    .assert()
    .success();
    let p = read(&dir.path().join("p.parquet"));
    let qrels = read(&ex.join("qrels.parquet"));
    let known: std::collections::HashSet<(String, String)> = ids(&qrels, "query_id")
        .into_iter()
        .zip(ids(&qrels, "doc_id"))
        .collect();
    let (a, c) = (ids(&p, "anchor_id"), ids(&p, "candidate_id"));
    let label = p
        .column_by_name("label")
        .unwrap()
        .as_primitive::<UInt8Type>();
    let mut seen = std::collections::HashSet::new();
    let (mut ones, mut zeros) = (0, 0);
    for i in 0..p.num_rows() {
        let pair = (a[i].clone(), c[i].clone());
        assert!(seen.insert(pair.clone()), "{pair:?} appears twice");
        assert_eq!(label.value(i) == 1, known.contains(&pair), "{pair:?}");
        if label.value(i) == 1 {
            ones += 1;
        } else {
            zeros += 1;
        }
    }
    assert!(ones > 0 && zeros > 0);
}

#[test]
fn with_passes_text_through_for_anchor_positive_and_negative() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(["--with", "text"]).assert().success();
    let t = read(&dir.path().join("triplets.parquet"));
    let text_of = |file: &str| -> HashMap<String, String> {
        let b = read(&ex.join(file));
        ids(&b, "id").into_iter().zip(ids(&b, "text")).collect()
    };
    let (queries, corpus) = (text_of("queries.parquet"), text_of("corpus.parquet"));
    assert!(t.num_rows() > 0);
    for (role, ids_col, texts) in [
        ("anchor", "anchor_id", &queries),
        ("positive", "positive_id", &corpus),
        ("negative", "negative_id", &corpus),
    ] {
        let got = ids(&t, &format!("{role}_text"));
        for (id, text) in ids(&t, ids_col).iter().zip(got) {
            assert_eq!(texts[id], text, "{role} {id}");
        }
    }
}

#[test]
fn negative_reuse_cap_holds_in_the_output_and_is_counted() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(["--negatives", "hardest", "--num-negatives", "5"])
        .args(["--max-negative-reuse", "1", "--shortfall", "drop"])
        .assert()
        .success();
    let t = read(&dir.path().join("triplets.parquet"));
    let mut users: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    for (n, a) in ids(&t, "negative_id").into_iter().zip(ids(&t, "anchor_id")) {
        users.entry(n).or_default().insert(a);
    }
    assert!(users.values().all(|a| a.len() == 1));
    let report = read(&dir.path().join("report.parquet"));
    let count = |name: &str| overall(&report, name);
    assert!(count("removed_negative_reuse") > 0);
    assert_eq!(count("dropped_pairs"), count("short_pairs"));
    assert!(count("short_pairs") > 0);
}

/// A corpus Parquet with string ids and 2-dim embeddings.
fn write_corpus(path: &Path, ids: &[&str]) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values: Vec<f32> = (0..ids.len() * 2).map(|i| i as f32).collect();
    let emb =
        FixedSizeListArray::try_new(item.clone(), 2, Arc::new(Float32Array::from(values)), None)
            .unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item, 2), false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(emb)],
    )
    .unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

fn write_qrels(path: &Path, pairs: &[(&str, &str)]) {
    let schema = Schema::new(vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new("doc_id", DataType::Utf8, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.0))),
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.1))),
        ],
    )
    .unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

fn bad_run(dir: &Path, qrels: &[(&str, &str)], corpus_ids: &[&str]) -> assert_cmd::assert::Assert {
    write_corpus(&dir.join("c.parquet"), corpus_ids);
    write_corpus(&dir.join("q.parquet"), &["q0", "q1"]);
    write_qrels(&dir.join("r.parquet"), qrels);
    tripmine()
        .current_dir(dir)
        .args(["mine", "--queries", "q.parquet", "--corpus", "c.parquet"])
        .args(["--qrels", "r.parquet", "--no-progress"])
        .assert()
}

#[test]
fn a_qrels_document_missing_from_the_corpus_is_refused_with_file_column_and_row() {
    let dir = TempDir::new().unwrap();
    bad_run(
        dir.path(),
        &[("q0", "d0"), ("q1", "d9")],
        &["d0", "d1", "d2"],
    )
    .code(3)
    .stderr(predicate::str::contains(
        "r.parquet: column `doc_id`, row 1",
    ))
    .stderr(predicate::str::contains("not found in the corpus"));
    assert!(!dir.path().join("triplets.parquet").exists());
}

#[test]
fn a_repeated_corpus_id_is_refused_with_its_row() {
    let dir = TempDir::new().unwrap();
    bad_run(dir.path(), &[("q0", "d0")], &["d0", "d1", "d1"])
        .code(3)
        .stderr(predicate::str::contains("c.parquet: column `id`, row 2"))
        .stderr(predicate::str::contains("unique"));
}

#[test]
fn qrels_naming_unknown_queries_are_skipped_and_counted() {
    let dir = TempDir::new().unwrap();
    bad_run(
        dir.path(),
        &[("q0", "d0"), ("q7", "d1")],
        &["d0", "d1", "d2"],
    )
    .success()
    .stderr(predicate::str::contains("not among the queries"));
}

#[test]
fn inconsistent_retrieval_flags_are_configuration_errors() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--positive-margin", "0.1"], "--metric cosine"),
        (
            vec!["--format", "n-tuple", "--num-negatives", "all"],
            "num_negatives",
        ),
        (
            vec!["--metric", "cosine", "--positive-percent", "120"],
            "(0, 100]",
        ),
        (vec!["--range-min", "10", "--range-max", "5"], "--range-max"),
        (vec!["--max-negative-reuse", "0"], "at least 1"),
        (vec!["--in", "x.parquet"], "exclude each other"),
    ];
    for (args, message) in cases {
        let mut cmd = mine(&ex, dir.path());
        with_qrels(&mut cmd, &ex);
        cmd.args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
    // Neither qrels nor a positives column.
    mine(&ex, dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--qrels"));
    // A passthrough column the corpus lacks.
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    cmd.args(["--with", "title"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("column `title` not found"));
}

#[test]
fn the_readme_python_snippet_loads_the_output_with_hugging_face_datasets() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-debian.sh --tests",
        python.display()
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("README has a python block")
        + 10;
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    // The README's command, on the generated example.
    tripmine()
        .current_dir(&ex)
        .args([
            "mine",
            "--queries",
            "queries.parquet",
            "--corpus",
            "corpus.parquet",
        ])
        .args([
            "--qrels",
            "qrels.parquet",
            "--metric",
            "cosine",
            "--negatives",
            "hardest",
        ])
        .args([
            "--num-negatives",
            "3",
            "--positive-percent",
            "--format",
            "n-tuple",
        ])
        .args(["--with", "text", "--out", "train.parquet", "--no-progress"])
        .assert()
        .success();
    let out = std::process::Command::new(&python)
        .current_dir(&ex)
        .arg("-c")
        .arg(snippet)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "snippet failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("num_rows: 60"), "{stdout}");
    assert!(
        stdout.contains("'anchor', 'positive', 'negative_1', 'negative_2', 'negative_3'"),
        "{stdout}"
    );
}

#[test]
fn with_passes_columns_through_in_labelled_mode_too() {
    let dir = TempDir::new().unwrap();
    let input = crate::common::bin::generated(dir.path(), "data.parquet", 200, 4, 1);
    tripmine()
        .current_dir(dir.path())
        .arg("mine")
        .arg("--in")
        .arg(&input)
        .args(["--with", "embedding", "--format", "pairs", "--no-progress"])
        .assert()
        .success();
    let p = read(&dir.path().join("triplets.parquet"));
    let table = read(&input);
    let ids_of = |b: &RecordBatch, c: &str| -> Vec<i64> {
        b.column_by_name(c)
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    };
    let row_of: HashMap<i64, usize> = ids_of(&table, "id")
        .into_iter()
        .enumerate()
        .map(|(r, id)| (id, r))
        .collect();
    let embedding = table
        .column_by_name("embedding")
        .unwrap()
        .as_fixed_size_list();
    assert!(p.num_rows() > 0);
    for (role, id_col) in [("anchor", "anchor_id"), ("candidate", "candidate_id")] {
        let got = p
            .column_by_name(&format!("{role}_embedding"))
            .unwrap()
            .as_fixed_size_list();
        for (i, id) in ids_of(&p, id_col).into_iter().enumerate() {
            let (g, want) = (got.value(i), embedding.value(row_of[&id]));
            assert_eq!(g.as_ref(), want.as_ref(), "{role} {id}");
        }
    }
    // The id is already there.
    tripmine()
        .current_dir(dir.path())
        .arg("mine")
        .arg("--in")
        .arg(&input)
        .args(["--with", "id"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already in the output"));
}

#[test]
fn the_report_of_a_corpus_groups_every_anchor_under_all_and_the_log_counts_queries() {
    let dir = TempDir::new().unwrap();
    let ex = example(dir.path());
    let mut cmd = mine(&ex, dir.path());
    with_qrels(&mut cmd, &ex);
    let out = cmd.args(["--log-format", "json"]).output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    let read_line = logs
        .lines()
        .find(|l| l.contains("\"stage\":\"read\""))
        .expect("a read-stage line");
    assert!(
        read_line.contains("(60 queries)") && !read_line.contains("labels"),
        "{read_line}"
    );
    let report = read(&dir.path().join("report.parquet"));
    let labels = report.column_by_name("label").unwrap();
    let labels = labels.as_string::<i32>();
    assert!(labels.iter().any(|l| l == Some("all")));
    assert!(labels.iter().flatten().all(|l| l == "all"), "{labels:?}");
}

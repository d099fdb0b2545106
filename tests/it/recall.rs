//! Approximate indexes: recall measured on a sample with an interval that holds the true
//! recall, the search tuned to a target, explicit settings kept, the recall gate, and `auto`
//! weighing the exact engine against an IVF index.

use std::collections::HashSet;
use std::path::Path;

use crate::common::bin::{gen_table, mine_with_summary as mine, summary};
use crate::common::{Oracle, blob_table};
use predicates::prelude::*;
use rand::SeedableRng;
use tempfile::TempDir;
use tripmine::config::{Metric, MiningParams, NegativeStrategy, PositiveStrategy};
use tripmine::mine::Miner;

/// `tripmine gen` of `rows` x `dim` in `labels` classes at `separation`, spread in
/// `intrinsic` directions (else all) to `path`.
fn gen_shaped(
    path: &Path,
    rows: usize,
    dim: usize,
    labels: usize,
    separation: f32,
    intrinsic: Option<usize>,
) {
    let (rows, dim, labels, separation) = (
        rows.to_string(),
        dim.to_string(),
        labels.to_string(),
        separation.to_string(),
    );
    let mut args = vec![
        "--rows",
        &rows,
        "--dim",
        &dim,
        "--labels",
        &labels,
        "--separation",
        &separation,
    ];
    let intrinsic = intrinsic.map(|i| i.to_string());
    if let Some(i) = &intrinsic {
        args.extend(["--intrinsic-dim", i]);
    }
    gen_table(path, &args);
}

fn figure(s: &serde_json::Value, name: &str) -> f64 {
    s["totals"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} in {}", s["totals"]))
}

#[test]
fn the_recall_interval_holds_the_true_recall_of_the_whole_run() {
    let table = blob_table(2000, 16, 20, 7);
    let params = MiningParams {
        positives: PositiveStrategy::Hardest,
        negatives: NegativeStrategy::Hardest,
        index: "IVF32,Flat".into(),
        nprobe: Some(2),
        k: Some(16),
        max_k: Some(64),
        ..MiningParams::default()
    };
    let mut miner = Miner::new(&table, &params).unwrap();
    let approx = miner.mine_all().unwrap().triplets;
    let key = |t: &tripmine::mine::Triplet| (t.anchor, t.positive, t.negative);
    let found: HashSet<_> = approx.iter().map(key).collect();
    // The truth of the whole table, by exhaustive search.
    let exact_params = MiningParams {
        index: "Flat".into(),
        nprobe: None,
        max_k: None,
        ..params.clone()
    };
    let (exact, _) = Oracle::new(&table, Metric::L2sq).mine(&exact_params);
    let truth =
        exact.iter().filter(|t| found.contains(&key(t))).count() as f64 / exact.len() as f64;
    assert!(
        (0.2..0.95).contains(&truth),
        "a recall worth estimating: {truth}"
    );
    // Ten samples of 200 anchors: a 95% interval misses now and then, rarely three times.
    let mut covered = 0;
    for seed in 0..10u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut sample: Vec<u32> = rand::seq::index::sample(&mut rng, 2000, 200)
            .into_iter()
            .map(|r| r as u32)
            .collect();
        sample.sort_unstable();
        let mut exact_sample = miner.recall_truth(&sample).unwrap();
        let recall = miner.recall_of(&mut exact_sample, &approx, false).unwrap();
        let e = recall.negatives.expect("exact mining finds triplets");
        assert!(e.lo <= e.value && e.value <= e.hi, "{e}");
        assert!(e.hi - e.lo < 0.25, "an informative interval: {e}");
        covered += usize::from(e.lo <= truth && truth <= e.hi);
    }
    assert!(covered >= 8, "{covered} of 10 intervals hold {truth}");
}

/// `tripmine mine --index IVF64,Flat EXTRA` on a table of overlapping classes in `dir`
/// (made on first use).
fn mine_ivf(dir: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    let input = dir.join("data.parquet");
    if !input.exists() {
        gen_shaped(&input, 4000, 16, 40, 1.0, None);
    }
    let mut args = vec!["--index", "IVF64,Flat"];
    args.extend(extra);
    mine(dir, &input, &args)
}

#[test]
fn tuning_reaches_the_target_where_the_default_search_does_not() {
    let dir = TempDir::new().unwrap();
    mine_ivf(dir.path(), &["--target-recall", "0"]).success();
    let s = summary(dir.path());
    let before = figure(&s, "recall_negatives");
    assert!(before < 0.9, "the default search misses: {before}");
    assert!(s["tuning"]["steps"].as_array().unwrap().len() == 1);

    // Exact mining weighed as on a large table, where it costs more than the IVF search (at
    // 4,000 rows it costs less, which the run would rightly warn about).
    mine_ivf(
        dir.path(),
        &["--report-html", "r.html", "--auto-exact-weight", "1000"],
    )
    .success()
    .stdout(predicate::str::contains("tuned for recall 0.95"));
    let s = summary(dir.path());
    assert_eq!(s["tuning"]["met"], true);
    let settled = &s["tuning"]["settled"];
    assert!(
        settled["nprobe"].as_u64().unwrap() > 8 || settled["k"].as_u64().unwrap() > 64,
        "{settled}"
    );
    assert!(figure(&s, "recall_negatives_lo") >= 0.95, "{}", s["totals"]);
    assert_eq!(figure(&s, "recall_target"), 0.95);
    assert!(
        s["warnings"].as_array().unwrap().is_empty(),
        "{}",
        s["warnings"]
    );
    let html = std::fs::read_to_string(dir.path().join("r.html")).unwrap();
    assert!(html.contains("data-figure=\"recall_negatives_lo\""));
    assert!(html.contains("tuned for recall 0.95"));
}

#[test]
fn tuning_probes_fewer_lists_where_the_default_reaches_more_than_the_target_needs() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("clustered.parquet");
    // Many small classes in a plane: the nearest other-label rows sit in the next few lists.
    gen_shaped(&input, 4000, 16, 400, 3.0, Some(2));
    let args = ["--index", "IVF128,Flat", "--negatives", "hardest"];
    mine(dir.path(), &input, &args).success();
    let s = summary(dir.path());
    let steps = s["tuning"]["steps"].as_array().unwrap();
    assert_eq!(
        steps[0]["knobs"]["nprobe"], 8,
        "the default: lists / 64, at least 8"
    );
    let settled = s["tuning"]["settled"]["nprobe"].as_u64().unwrap();
    assert!(settled < 8, "{}", s["tuning"]);
    assert!(figure(&s, "recall_negatives_lo") >= 0.95, "{}", s["totals"]);
    // The step below the one settled on missed the target (or nprobe reached 1).
    let last = steps.last().unwrap();
    assert!(
        settled == 1 || last["recall"]["negatives"]["lo"].as_f64().unwrap() < 0.95,
        "{last}"
    );
    // An explicit nprobe is kept.
    mine(
        dir.path(),
        &input,
        &[&args[..], &["--nprobe", "8"]].concat(),
    )
    .success();
    assert_eq!(summary(dir.path())["tuning"]["settled"]["nprobe"], 8);
}

#[test]
fn explicit_search_settings_are_kept_and_a_missed_target_is_a_warning() {
    let dir = TempDir::new().unwrap();
    mine_ivf(dir.path(), &["--nprobe", "1", "--k", "16"])
        .success()
        .stdout(predicate::str::contains(
            "WARNING    recall of mined negatives",
        ));
    let s = summary(dir.path());
    assert_eq!(s["tuning"]["met"], false);
    assert_eq!(s["tuning"]["steps"].as_array().unwrap().len(), 1);
    assert_eq!(s["tuning"]["settled"]["nprobe"], 1);
    assert_eq!(s["tuning"]["settled"]["k"], 16);
    let warnings = s["warnings"].to_string();
    assert!(
        warnings.contains("those set explicitly are kept"),
        "{warnings}"
    );
    assert!(warnings.contains("below the target 0.95"), "{warnings}");
}

#[test]
fn a_recall_gate_fails_the_run_after_writing_its_outputs() {
    let dir = TempDir::new().unwrap();
    mine_ivf(
        dir.path(),
        &[
            "--nprobe",
            "1",
            "--target-recall",
            "0",
            "--fail-if",
            "recall_negatives < 0.9",
        ],
    )
    .failure()
    .code(4)
    .stderr(predicate::str::contains("recall_negatives < 0.9"));
    assert!(dir.path().join("triplets.parquet").is_file());
}

#[test]
fn no_recall_sample_no_recall_and_no_tuning() {
    let dir = TempDir::new().unwrap();
    mine_ivf(dir.path(), &["--recall-sample", "0"]).success();
    let s = summary(dir.path());
    assert!(s["totals"]["recall_negatives"].is_null());
    assert!(s["tuning"].is_null());
}

/// `auto` as on a large table: the IVF layout is weighed from 1,000 rows, and exact mining's
/// measured time counts 20 times (at millions of rows it costs that much more per anchor).
const AS_AT_SCALE: [&str; 6] = [
    "--index",
    "auto",
    "--auto-exact-below",
    "1000",
    "--auto-exact-weight",
    "20",
];

#[test]
fn auto_mines_exactly_where_no_ivf_setting_reaches_the_target_cheaper() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("iso.parquet");
    gen_shaped(&input, 20000, 32, 200, 0.3, None);
    mine(dir.path(), &input, &AS_AT_SCALE)
        .success()
        .stdout(predicate::str::contains("auto chose Flat"));
    let s = summary(dir.path());
    assert_eq!(s["index"], "Flat");
    assert_eq!(s["exact"], true);
    assert!(s["auto"]["candidate"].as_str().unwrap().starts_with("IVF"));
    assert!(
        s["totals"]["recall_negatives"].is_null(),
        "exact: nothing to measure"
    );
}

#[test]
fn auto_keeps_ivf_where_it_reaches_the_target_cheaper() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("low.parquet");
    gen_shaped(&input, 20000, 64, 200, 3.0, Some(8));
    mine(dir.path(), &input, &AS_AT_SCALE).success();
    let s = summary(dir.path());
    assert_eq!(s["exact"], false, "{}", s["auto"]);
    assert_eq!(s["index"], s["auto"]["candidate"]);
    assert!(
        s["auto"]["approximate_seconds"].as_f64().unwrap()
            < s["auto"]["exact_seconds"].as_f64().unwrap()
    );
    assert_eq!(s["tuning"]["met"], true);
}

#[test]
fn a_sample_too_small_to_show_the_target_stops_tuning_and_says_so() {
    let dir = TempDir::new().unwrap();
    // Every list probed: nothing is missed, but five anchors cannot show 0.95.
    mine_ivf(dir.path(), &["--nprobe", "64", "--recall-sample", "5"]).success();
    let s = summary(dir.path());
    assert_eq!(figure(&s, "recall_negatives"), 1.0);
    assert!(figure(&s, "recall_negatives_lo") < 0.95);
    assert_eq!(
        s["tuning"]["steps"].as_array().unwrap().len(),
        1,
        "nothing to raise"
    );
    let stopped = s["tuning"]["stopped"].as_str().unwrap();
    assert!(stopped.contains("raise --recall-sample"), "{stopped}");
}

#[test]
fn spilled_runs_mined_in_ivf_list_order_equal_in_memory_runs() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    // 10 MB of vectors: under a 19 MiB limit they spill, and a window of anchors taken
    // list by list spans several blocks.
    gen_shaped(&input, 40000, 64, 400, 3.0, Some(8));
    for strategy in [
        &["--negatives", "hardest", "--num-negatives", "1"][..],
        &["--positives", "hardest", "--num-negatives", "3"][..],
    ] {
        let mut common = vec![
            "--index",
            "IVF128,PQ16x4fs",
            "--nprobe",
            "4",
            "--k",
            "16",
            "-v",
        ];
        common.extend(strategy);
        mine(dir.path(), &input, &common)
            .success()
            .stderr(predicate::str::contains("IVF-list order").not());
        let in_memory = std::fs::read(dir.path().join("triplets.parquet")).unwrap();
        let in_memory_summary = summary(dir.path());
        let mut spilled = common.clone();
        spilled.extend(["--memory-limit", "19MiB", "--scratch-dir", "."]);
        mine(dir.path(), &input, &spilled)
            .success()
            .stderr(predicate::str::contains("vectors spill to a scratch file"))
            .stderr(predicate::str::contains("IVF-list order"))
            .stderr(predicate::str::contains(
                "spilled rows copied in IVF-list order",
            ));
        let from_scratch = std::fs::read(dir.path().join("triplets.parquet")).unwrap();
        assert!(in_memory == from_scratch, "{strategy:?}: the same triplets");
        let s = summary(dir.path());
        for figure in ["triplets", "anchors_capped", "recall_negatives"] {
            assert_eq!(
                s["totals"][figure], in_memory_summary["totals"][figure],
                "{strategy:?}: {figure}"
            );
        }
    }
}

#[test]
fn a_named_index_that_costs_more_than_exact_mining_is_kept_with_a_warning() {
    let dir = TempDir::new().unwrap();
    // Exact mining's estimate weighed down (as on a table where it is cheap) and up.
    mine_ivf(dir.path(), &["--auto-exact-weight", "0.0001"]).success();
    let s = summary(dir.path());
    assert_eq!(s["exact"], false, "the named index is kept");
    let cost = &s["tuning"]["cost"];
    assert!(
        cost["exact_seconds"].as_f64().unwrap() < cost["approximate_seconds"].as_f64().unwrap()
    );
    let warnings = s["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("use --index Flat")),
        "{warnings:?}"
    );

    mine_ivf(dir.path(), &["--auto-exact-weight", "10000"]).success();
    let s = summary(dir.path());
    let cost = &s["tuning"]["cost"];
    assert!(
        cost["exact_seconds"].as_f64().unwrap() > cost["approximate_seconds"].as_f64().unwrap()
    );
    let warnings = s["warnings"].as_array().unwrap();
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("use --index Flat")),
        "{warnings:?}"
    );
}

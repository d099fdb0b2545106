//! Scheduled use: pipeline files, overrides, manifests and skipping, partitioned outputs,
//! quality gates, and outputs that survive a kill at any point.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::bin::{gen_table, generated, read, tripmine};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Field, Schema};
use predicates::prelude::*;
use tempfile::TempDir;
use tripmine::commands::synthetic::{GenSpec, generate};
use tripmine::io::{SUCCESS_MARKER, write_parquet};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name)
}

fn run_pipeline(dir: &Path, file: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    tripmine()
        .current_dir(dir)
        .arg("run")
        .arg(file)
        .args(extra)
        .assert()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A generated table written with other column names.
fn write_renamed(path: &Path, spec: &GenSpec, names: [&str; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    for batch in generate(spec, spec.rows).unwrap() {
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(names)
            .map(|(f, n)| f.as_ref().clone().with_name(n))
            .collect();
        let renamed =
            RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec()).unwrap();
        write_parquet(path, &renamed).unwrap();
    }
}

fn spec(rows: usize, labels: usize, seed: u64) -> GenSpec {
    GenSpec {
        rows,
        dim: 8,
        labels,
        seed,
        separation: 1.0,
        intrinsic_dim: None,
    }
}

#[test]
fn shipped_pipelines_are_valid() {
    for name in [
        "face-embeddings.toml",
        "nightly-partitioned.toml",
        "retrieval-hard-negatives.toml",
    ] {
        tripmine()
            .arg("validate")
            .arg(shipped(name))
            .assert()
            .success()
            .stdout(predicate::str::contains(": valid"))
            .stdout(predicate::str::contains("[mine]"));
    }
}

#[test]
fn the_face_embedding_pipeline_runs_as_shipped() {
    let dir = TempDir::new().unwrap();
    write_renamed(
        &dir.path().join("data/faces.parquet"),
        &spec(600, 20, 1),
        ["face_id", "person", "embedding"],
    );
    run_pipeline(dir.path(), &shipped("face-embeddings.toml"), &[]).success();
    let summary = json(&dir.path().join("out/faces/summary.json"));
    assert_eq!(summary["params"]["metric"], "cosine");
    assert_eq!(summary["rows"], 600);
    let triplets = read(&dir.path().join("out/faces/triplets.parquet"));
    assert!(triplets.num_rows() > 0);
    assert!(triplets.schema().field_with_name("anchor_id").is_ok());
    let kinds = triplets.column_by_name("kind").unwrap().as_string::<i32>();
    assert!(kinds.iter().all(|k| k == Some("semihard")));
    assert!(
        dir.path()
            .join("out/faces/triplets.parquet.manifest.json")
            .exists()
    );
}

#[test]
fn the_retrieval_pipeline_runs_as_shipped() {
    let dir = TempDir::new().unwrap();
    tripmine()
        .current_dir(dir.path())
        .args(["gen", "--retrieval", "--rows", "600", "--labels", "10"])
        .args(["--queries", "80", "--dim", "8", "--out", "data"])
        .assert()
        .success();
    run_pipeline(dir.path(), &shipped("retrieval-hard-negatives.toml"), &[]).success();
    let summary = json(&dir.path().join("out/retrieval/summary.json"));
    assert_eq!(summary["queries"], 80);
    assert_eq!(summary["rows"], 600);
    let rows = read(&dir.path().join("out/retrieval/train.parquet"));
    assert!(rows.num_rows() > 0);
    // Only full rows (shortfall = drop), with the texts.
    for name in [
        "negative_4_id",
        "negative_4_text",
        "anchor_text",
        "positive_text",
    ] {
        let c = rows.column_by_name(name).unwrap();
        assert_eq!(c.null_count(), 0, "{name}");
    }
    let totals = &summary["totals"];
    assert_eq!(totals["short_pairs"], totals["dropped_pairs"]);
    assert!(totals["removed_positive_percent"].as_u64().unwrap() > 0);
}

#[test]
fn the_nightly_pipeline_writes_bounded_parts_and_a_success_marker() {
    let dir = TempDir::new().unwrap();
    // Well-separated classes, so the health gate of the shipped file does not fire.
    let shards = dir.path().join("data/embeddings");
    std::fs::create_dir_all(&shards).unwrap();
    let table = GenSpec {
        separation: 3.0,
        intrinsic_dim: None,
        ..spec(1200, 8, 11)
    };
    for (i, batch) in generate(&table, 400).unwrap().iter().enumerate() {
        write_parquet(&shards.join(format!("shard-{i}.parquet")), batch).unwrap();
    }
    run_pipeline(
        dir.path(),
        &shipped("nightly-partitioned.toml"),
        &["--set", "output.max_rows_per_file=700"],
    )
    .success();
    let out = dir.path().join("out/nightly/triplets");
    assert!(out.join(SUCCESS_MARKER).exists());
    let mut parts: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    parts.sort();
    assert!(parts.len() > 1, "several parts");
    let sizes: Vec<usize> = parts.iter().map(|p| read(p).num_rows()).collect();
    assert!(sizes.iter().all(|&n| n <= 700), "{sizes:?}");
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n == 700),
        "parts filled in order: {sizes:?}"
    );
    let summary = json(&dir.path().join("out/nightly/summary.json"));
    assert_eq!(summary["rows"], 1200);
    assert_eq!(
        summary["totals"]["triplets"],
        sizes.iter().sum::<usize>() as u64
    );
    assert!(
        dir.path()
            .join("out/nightly/triplets.manifest.json")
            .exists()
    );
    let html = std::fs::read_to_string(dir.path().join("out/nightly/report.html")).unwrap();
    assert!(html.contains("<svg"));
    let suspects = read(&dir.path().join("out/nightly/suspects.parquet"));
    let report = read(&dir.path().join("out/nightly/report.parquet"));
    let counted = report
        .column_by_name("label_noise_suspects")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt64Type>()
        .value(report.num_rows() - 1);
    assert_eq!(suspects.num_rows() as u64, counted);
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `tripmine validate` refuses the file `text` with exit 2 and every one of `messages`.
fn assert_file_rejected(text: &str, messages: &[&str]) {
    let dir = TempDir::new().unwrap();
    let file = write_file(dir.path(), "p.toml", text);
    let mut assert = tripmine()
        .arg("validate")
        .arg(&file)
        .assert()
        .failure()
        .code(2);
    for m in ["p.toml"].iter().chain(messages) {
        assert = assert.stderr(predicate::str::contains(*m));
    }
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    assert_file_rejected(
        "[input]\npaths = [\"x.parquet\"]\n\n[mine]\nmargn = 0.3\n",
        &["line 5", "unknown field `margn`"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named_with_its_line() {
    assert_file_rejected(
        "[input]\npaths = [\"x.parquet\"]\n[mine]\nk = \"deep\"\n",
        &["line 4", "expected usize"],
    );
}

#[test]
fn a_value_out_of_range_is_named_with_its_key_and_line() {
    assert_file_rejected(
        "[input]\npaths = [\"x.parquet\"]\n[mine]\nk = 8\nmargin = -0.5\n",
        &["line 5: mine.margin (--margin) must be a finite number >= 0"],
    );
}

#[test]
fn set_overrides_the_file_and_bad_overrides_are_named() {
    let dir = TempDir::new().unwrap();
    write_renamed(
        &dir.path().join("data/faces.parquet"),
        &spec(300, 10, 2),
        ["face_id", "person", "embedding"],
    );
    run_pipeline(
        dir.path(),
        &shipped("face-embeddings.toml"),
        &["--set", "mine.margin=0.3", "--set", "mine.negatives=hard"],
    )
    .success();
    let summary = json(&dir.path().join("out/faces/summary.json"));
    assert!((summary["params"]["margin"].as_f64().unwrap() - 0.3).abs() < 1e-6);
    assert_eq!(summary["params"]["negatives"], "hard");
    tripmine()
        .arg("validate")
        .arg(shipped("face-embeddings.toml"))
        .args(["--set", "mine.bogus=1"])
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains("--set mine.bogus=1"))
        .stderr(predicate::str::contains("unknown field `bogus`"));
}

fn mine_args(input: &Path) -> Vec<String> {
    vec![
        "mine".into(),
        "--in".into(),
        input.display().to_string(),
        "--no-progress".into(),
    ]
}

#[test]
fn a_rerun_with_the_same_inputs_and_configuration_is_skipped() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 300, 5, 3);
    let out = dir.path().join("triplets.parquet");
    let mtime = || std::fs::metadata(&out).unwrap().modified().unwrap();
    let run = |extra: &[&str]| {
        tripmine()
            .current_dir(dir.path())
            .args(mine_args(&input))
            .args(extra)
            .assert()
            .success()
    };

    run(&[]).stdout(predicate::str::contains("up to date").not());
    let first = mtime();
    let manifest = json(&dir.path().join("triplets.parquet.manifest.json"));
    assert_eq!(
        manifest["inputs"][0]["bytes"],
        std::fs::metadata(&input).unwrap().len()
    );
    // Defaults are recorded as such: `k` unset (64, which recall tuning may raise).
    assert!(manifest["config"]["mine"]["k"].is_null());
    assert_eq!(manifest["config"]["mine"]["recall_sample"], 300);
    assert!(manifest["fingerprint"].as_str().unwrap().len() == 64);

    run(&[]).stdout(predicate::str::contains("up to date"));
    assert_eq!(mtime(), first, "skipped: the output was not rewritten");
    run(&["--threads", "1"]).stdout(predicate::str::contains("up to date"));

    std::thread::sleep(Duration::from_millis(20));
    run(&["--force"]).stdout(predicate::str::contains("up to date").not());
    assert_ne!(mtime(), first);

    let second = mtime();
    run(&["--margin", "0.3"]).stdout(predicate::str::contains("up to date").not());
    assert_ne!(mtime(), second, "a changed configuration runs again");

    let third = mtime();
    std::thread::sleep(Duration::from_millis(20));
    generated(dir.path(), "data.parquet", 300, 5, 4);
    run(&["--margin", "0.3"]).stdout(predicate::str::contains("up to date").not());
    assert_ne!(mtime(), third, "changed inputs run again");

    // Asking for one more output is a change too.
    run(&["--margin", "0.3", "--report-html", "report.html"])
        .stdout(predicate::str::contains("up to date").not());
    assert!(dir.path().join("report.html").exists());
}

#[test]
fn a_deleted_output_is_made_again() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 5);
    let run = || {
        tripmine()
            .current_dir(dir.path())
            .args(mine_args(&input))
            .assert()
            .success()
    };
    run();
    std::fs::remove_file(dir.path().join("report.parquet")).unwrap();
    run().stdout(predicate::str::contains("up to date").not());
    assert!(dir.path().join("report.parquet").exists());
}

#[test]
fn a_quality_gate_fails_the_run_after_writing() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 6);
    let gated = || {
        let mut cmd = tripmine();
        cmd.current_dir(dir.path()).args(mine_args(&input)).args([
            "--fail-if",
            "triplets > 0",
            "--fail-if",
            "loss_max < 0",
        ]);
        cmd
    };
    gated()
        .assert()
        .failure()
        .code(4)
        .stderr(predicate::str::contains(
            "quality gate failed: triplets > 0 (it is",
        ))
        .stderr(predicate::str::contains("loss_max < 0").not())
        // The outputs were written: the summary is printed as for a passing run.
        .stdout(predicate::str::contains("triplets"));
    assert!(dir.path().join("triplets.parquet").exists());
    assert!(dir.path().join("report.parquet").exists());
    // A skipped rerun checks its gates again, against the manifest's figures.
    gated()
        .assert()
        .code(4)
        .stderr(predicate::str::contains("nothing to do"))
        .stderr(predicate::str::contains(
            "quality gate failed: triplets > 0",
        ));
    tripmine()
        .current_dir(dir.path())
        .args(mine_args(&input))
        .args(["--fail-if", "no_such_figure > 0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown figure `no_such_figure`"));
}

/// Kills runs at every named point of a job (`TRIPMINE_TEST_ABORT_AT` aborts there, as a
/// kill would); every time, the output is the previous complete one (killed before the
/// outputs were put in place) or the complete new one (after), and a later run cleans up what
/// the killed ones left.
fn kill_at_any_point(out: &str) {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    gen_table(
        &input,
        &["--rows", "20000", "--dim", "32", "--labels", "200"],
    );
    let out_path = dir.path().join(out.trim_end_matches('/'));
    let args = |seed: u64| {
        let mut a = mine_args(&input);
        a.extend(
            [
                "--out",
                out,
                "--positives",
                "random",
                "--force",
                "--max-rows-per-file",
                "5000",
            ]
            .map(String::from),
        );
        a.extend(["--seed".to_string(), seed.to_string()]);
        a
    };
    tripmine()
        .current_dir(dir.path())
        .args(args(0))
        .assert()
        .success();
    // The triplets a complete run of `seed` writes (into another output).
    let triplets_of = |seed: u64| {
        let other = if out.ends_with('/') {
            "other/"
        } else {
            "other.parquet"
        };
        let mut a = args(seed);
        let at = a.iter().position(|x| x == "--out").unwrap();
        a[at + 1] = other.to_string();
        tripmine()
            .current_dir(dir.path())
            .args(a)
            .assert()
            .success();
        read(&dir.path().join(other.trim_end_matches('/')))
    };
    let mut previous = read(&out_path);
    for (i, point) in tripmine::pipeline::ABORT_POINTS.into_iter().enumerate() {
        let seed = i as u64 + 1;
        let status = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"))
            .current_dir(dir.path())
            .args(args(seed))
            .env("TRIPMINE_TEST_ABORT_AT", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the run reached {point} and was killed");
        let now = read(&out_path);
        // The triplets are put in place at `commit`, before the report.
        let in_place = matches!(point, "commit" | "committed");
        if in_place {
            assert!(
                now == triplets_of(seed),
                "killed at {point}: the new output"
            );
        } else {
            assert!(now == previous, "killed at {point}: the previous output");
        }
        previous = now;
        if out.ends_with('/') {
            assert!(out_path.join(SUCCESS_MARKER).exists());
        }
        assert!(read(&dir.path().join("report.parquet")).num_rows() > 0);
    }
    tripmine()
        .current_dir(dir.path())
        .args(args(99))
        .assert()
        .success();
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_killed_run_leaves_the_previous_or_the_new_file() {
    kill_at_any_point("triplets.parquet");
}

#[test]
fn a_killed_run_leaves_the_previous_or_the_new_folder() {
    kill_at_any_point("parts/");
}

#[test]
fn an_output_folder_may_not_hold_the_other_outputs() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 100, 3, 7);
    tripmine()
        .current_dir(dir.path())
        .args(mine_args(&input))
        .args(["--out", "out/", "--report", "out/report.parquet"])
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "--out is a folder that holds another output",
        ));
}

//! `--memory-limit` is a ceiling on the resident set: jobs on a table of 512 MB of vectors,
//! 2.7 times a 192 MiB limit, run as child processes whose peak RSS (the kernel's high-water
//! mark, from `wait4`) and file-backed plus anonymous pages (sampled from `/proc/PID/status`
//! while they run) stay under the limit, mode by mode. A limit below what the run cannot do
//! without is refused before any row is mined.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::bin::tripmine;

const LIMIT_MIB: u64 = 192;

/// 1,000,000 x 128 (512 MB of vectors), 5,000 labels, generated once for every test here.
fn table() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        tripmine()
            .args([
                "gen", "--rows", "1000000", "--dim", "128", "--labels", "5000",
            ])
            .args(["--seed", "5", "--out"])
            .arg(dir.path().join("t.parquet"))
            .assert()
            .success();
        dir
    });
    // Leaked on purpose: a static's destructor never runs, the folder goes with the
    // test process's temporary folder.
    Box::leak(Box::new(dir.path().join("t.parquet")))
}

/// What a child's memory did.
#[derive(Debug)]
struct Peak {
    /// High-water mark of the resident set (`ru_maxrss`), MiB.
    rss_mib: u64,
    /// Highest `RssAnon + RssFile` seen while sampling, MiB.
    sampled_mib: u64,
    exit_code: i32,
    stderr: String,
}

/// Runs `tripmine mine --in TABLE --memory-limit 192MiB ARGS` in a fresh folder and measures it.
fn run_limited(args: &[&str]) -> Peak {
    let input = ["--in".to_string(), table().display().to_string()];
    run_limited_on(&input, args)
}

/// Runs `tripmine COMMAND --in TABLE --memory-limit 192MiB ARGS` in a fresh folder.
fn run_limited_command(command: &str, args: &[&str]) -> Peak {
    let input = ["--in".to_string(), table().display().to_string()];
    run_command_on(command, &input, args)
}

/// Runs `tripmine mine INPUT --memory-limit 192MiB ARGS` in a fresh folder and measures it.
fn run_limited_on(input: &[String], args: &[&str]) -> Peak {
    run_command_on("mine", input, args)
}

fn run_command_on(command: &str, input: &[String], args: &[&str]) -> Peak {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"));
    cmd.current_dir(dir.path())
        .args([command, "--no-progress"])
        .args(input)
        .args(["--memory-limit", &format!("{LIMIT_MIB}MiB")])
        .args(["--scratch-dir"])
        .arg(dir.path())
        .args(args);
    measure(cmd, dir.path())
}

/// Runs `cmd` (its stderr kept in `dir`) and measures its memory while it runs.
fn measure(mut cmd: std::process::Command, dir: &Path) -> Peak {
    let stderr_path = dir.join("stderr.log");
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let mut sampled = 0u64;
    let (exit_code, rss_kb) = loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            let kb = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            sampled = sampled.max(kb("RssAnon") + kb("RssFile"));
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it in for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if done == pid {
            break (libc::WEXITSTATUS(status), usage.ru_maxrss as u64);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Reaped by wait4 already; keep `Child` from trying again.
    std::mem::forget(child);
    Peak {
        rss_mib: rss_kb / 1024,
        sampled_mib: sampled / 1024,
        exit_code,
        stderr: std::fs::read_to_string(&stderr_path).unwrap(),
    }
}

/// Runs a mode and asserts it succeeded within the limit.
fn assert_within_limit(args: &[&str]) {
    assert_peak_within_limit(run_limited(args), args);
}

fn assert_peak_within_limit(peak: Peak, args: &[&str]) {
    eprintln!(
        "{args:?}: peak {} MiB, sampled {} MiB",
        peak.rss_mib, peak.sampled_mib
    );
    assert_eq!(peak.exit_code, 0, "{args:?} failed:\n{}", peak.stderr);
    assert!(
        peak.rss_mib <= LIMIT_MIB && peak.sampled_mib <= LIMIT_MIB,
        "{args:?} peaked at {} MiB (sampled {} MiB) under --memory-limit {LIMIT_MIB}MiB",
        peak.rss_mib,
        peak.sampled_mib
    );
}

#[test]
fn exact_mining_of_a_sample_of_anchors_stays_under_the_limit() {
    assert_within_limit(&["--anchors-sample", "3000"]);
}

#[test]
fn hardest_positives_and_all_violating_negatives_stay_under_the_limit() {
    assert_within_limit(&[
        "--anchors-sample",
        "2000",
        "--positives",
        "hardest",
        "--negatives",
        "violating",
        "--num-negatives",
        "all",
    ]);
}

#[test]
fn random_sampled_negatives_with_reports_stay_under_the_limit() {
    assert_within_limit(&[
        "--anchors-sample",
        "3000",
        "--sample",
        "random",
        "--report-html",
        "r.html",
        "--suspects",
        "s.parquet",
    ]);
}

#[test]
fn cosine_guards_on_the_deepening_ladder_stay_under_the_limit() {
    // The guards keep the search on the ladder (not the one-pass engine); cosine normalises
    // the rows as they spill.
    assert_within_limit(&[
        "--anchors-sample",
        "1000",
        "--metric",
        "cosine",
        "--negatives",
        "hardest",
        "--positive-percent",
        "99",
        "--near-duplicate",
        "0.9",
    ]);
}

#[test]
fn all_positives_of_large_label_groups_stay_under_the_limit() {
    // 200 rows a label: 199 pairs an anchor, each keeping the band rows it may still need.
    assert_within_limit(&[
        "--anchors-sample",
        "1000",
        "--positives",
        "all",
        "--negatives",
        "violating",
    ]);
}

/// `tripmine gen --retrieval` with `documents` of 128 dimensions and 2,000 queries in `dir`:
/// the `--queries`, `--corpus`, `--qrels` arguments.
fn retrieval_example(dir: &Path, documents: &str) -> [String; 6] {
    let ex = dir.join("ex");
    tripmine()
        .args([
            "gen",
            "--retrieval",
            "--rows",
            documents,
            "--queries",
            "2000",
        ])
        .args(["--dim", "128", "--labels", "5000", "--seed", "5", "--out"])
        .arg(&ex)
        .assert()
        .success();
    let file = |name: &str| ex.join(name).display().to_string();
    [
        "--queries".to_string(),
        file("queries.parquet"),
        "--corpus".to_string(),
        file("corpus.parquet"),
        "--qrels".to_string(),
        file("qrels.parquet"),
    ]
}

#[test]
fn retrieval_over_a_corpus_with_string_ids_stays_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let input = retrieval_example(dir.path(), "1000000");
    let args = ["--negatives", "hardest"];
    assert_peak_within_limit(run_limited_on(&input, &args), &args);
}

#[test]
fn passthrough_columns_and_an_html_report_stay_under_the_limit() {
    // 600,000 documents (307 MB of vectors, 1.6 times the limit) with their text carried
    // into the triplets: the text stays in memory, counted before it is read.
    let dir = tempfile::tempdir().unwrap();
    let input = retrieval_example(dir.path(), "600000");
    let args = ["--with", "text", "--report-html", "page.html"];
    assert_peak_within_limit(run_limited_on(&input, &args), &args);
}

#[test]
fn passthrough_columns_that_cannot_fit_are_refused_before_reading_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = retrieval_example(dir.path(), "600000");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"));
    let out = cmd
        .current_dir(dir.path())
        .args(["mine", "--no-progress"])
        .args(&input)
        .args(["--with", "text", "--memory-limit", "150MiB"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the --with columns need"), "{stderr}");
    assert!(!dir.path().join("triplets.parquet").exists());
}

#[test]
fn an_ivf_index_with_recall_measured_and_tuned_stays_under_the_limit() {
    assert_within_limit(&[
        "--anchors-sample",
        "3000",
        "--index",
        "IVF256,PQ32x4fs",
        "--negatives",
        "hardest",
        "--recall-sample",
        "200",
    ]);
}

#[test]
fn a_limit_below_what_the_table_needs_is_refused_before_mining_naming_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let out = tripmine()
        .current_dir(dir.path())
        .args(["mine", "--no-progress", "--in"])
        .arg(table())
        .args(["--memory-limit", "48MiB", "--out", "t.parquet"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        stderr.contains("--memory-limit 48 MiB is below what this run cannot do without")
            && stderr.contains("the smallest limit for this table and index is"),
        "{stderr}"
    );
    assert!(!dir.path().join("t.parquet").exists());
}

#[test]
fn the_negative_reuse_cap_over_millions_of_triplets_stays_under_the_limit() {
    // Every positive of 4,000 anchors with 5 easy negatives each: 3.9 million triplets
    // (94 MB), which the cap sees whole before it removes any. Before, the blocks were held
    // in memory and sized for one positive an anchor: 405 MiB.
    assert_within_limit(&[
        "--anchors-sample",
        "4000",
        "--positives",
        "all",
        "--negatives",
        "easy",
        "--max-negative-reuse",
        "3",
    ]);
}

#[test]
fn a_job_cut_into_segments_stays_under_the_limit_in_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let plan = run_limited_command(
        "plan",
        &[
            "--anchors-sample",
            "3000",
            "--segment-anchors",
            "1500",
            "--work",
            work.to_str().unwrap(),
        ],
    );
    assert_peak_within_limit(plan, &["plan"]);
    for segment in ["0", "1"] {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"));
        cmd.current_dir(dir.path())
            .args(["mine-segment", "--segment", segment, "--work"])
            .arg(&work);
        assert_peak_within_limit(measure(cmd, dir.path()), &["mine-segment", segment]);
    }
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"));
    cmd.current_dir(dir.path())
        .args(["finish", "--work"])
        .arg(&work);
    assert_peak_within_limit(measure(cmd, dir.path()), &["finish"]);
}

#[test]
fn diff_of_runs_with_millions_of_triplets_stays_under_the_limit() {
    // Two runs of 2,000,000 triplets each (mined without a limit), compared under it: held
    // whole, their records alone would take 192 MB.
    let dir = tempfile::tempdir().unwrap();
    for (out, negatives) in [("a.parquet", "hardest"), ("b.parquet", "easy")] {
        tripmine()
            .current_dir(dir.path())
            .args(["mine", "--no-progress", "--in"])
            .arg(table())
            .args(["--anchors-sample", "10000", "--num-positives", "4"])
            .args([
                "--num-negatives",
                "50",
                "--negatives",
                negatives,
                "--out",
                out,
            ])
            .assert()
            .success();
    }
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("tripmine"));
    cmd.current_dir(dir.path())
        .args(["diff", "a.parquet", "b.parquet", "--out", "d.parquet"])
        .args([
            "--memory-limit",
            &format!("{LIMIT_MIB}MiB"),
            "--scratch-dir",
        ])
        .arg(dir.path());
    let peak = measure(cmd, dir.path());
    assert!(
        peak.stderr.contains("compared in partitions"),
        "{}",
        peak.stderr
    );
    assert_peak_within_limit(peak, &["diff"]);
    assert!(dir.path().join("d.parquet").exists());
}

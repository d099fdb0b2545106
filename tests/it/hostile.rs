//! Hostile inputs and data safety, on the real binary: outputs that would destroy inputs,
//! corrupt and lying Parquet files (a seeded corpus of mutations), repeated ids, thread caps,
//! and messages a person and a scheduler can act on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use assert_cmd::Command;
use parquet::file::metadata::{
    ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter, RowGroupMetaData,
};
use predicates::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tempfile::TempDir;

use crate::common::bin::{generated, tripmine};

fn mine_in(dir: &Path, input: &Path) -> Command {
    let mut cmd = tripmine();
    cmd.current_dir(dir)
        .args(["mine", "--no-progress", "--in"])
        .arg(input)
        .timeout(Duration::from_secs(60));
    cmd
}

/// Names in `dir` that look like outputs or their temporary files.
fn outputs_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("triplets") || n.contains("report") || n.contains(".tmp"))
        .collect()
}

/// A table with an id column (`ids`), labels and dimension-`dim` embeddings.
fn write_table(path: &Path, ids: ArrayRef, labels: ArrayRef, values: Vec<f32>, dim: i32) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let values = Arc::new(Float32Array::from(values));
    let emb: ArrayRef = Arc::new(
        FixedSizeListArray::try_new_with_length(item, dim, values, None, ids.len()).unwrap(),
    );
    let schema = Schema::new(vec![
        Field::new("id", ids.data_type().clone(), false),
        Field::new("cls", labels.data_type().clone(), false),
        Field::new("embedding", emb.data_type().clone(), false),
    ]);
    let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, labels, emb]).unwrap();
    tripmine::io::write_parquet(path, &batch).unwrap();
}

fn stderr_of(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// ---- Outputs that are inputs ------------------------------------------------------------

#[test]
fn an_output_named_as_the_input_is_refused_and_the_input_kept() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 200, 4, 1);
    let before = std::fs::read(&input).unwrap();
    for flag in ["--out", "--report", "--report-html", "--summary-json"] {
        let (code, stderr) = stderr_of(mine_in(dir.path(), &input).arg(flag).arg("t.parquet"));
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag} named: {stderr}");
        assert!(
            stderr.matches("t.parquet").count() >= 2,
            "both paths named: {stderr}"
        );
        assert_eq!(
            std::fs::read(&input).unwrap(),
            before,
            "{flag}: input intact"
        );
    }
}

#[test]
fn an_output_linked_to_the_input_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 200, 4, 1);
    let before = std::fs::read(&input).unwrap();
    std::os::unix::fs::symlink(&input, dir.path().join("soft.parquet")).unwrap();
    std::fs::hard_link(&input, dir.path().join("hard.parquet")).unwrap();
    for out in ["soft.parquet", "hard.parquet", "./sub/../t.parquet"] {
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        let (code, stderr) = stderr_of(mine_in(dir.path(), &input).args(["--out", out]));
        assert_eq!(code, Some(2), "{out}: {stderr}");
        assert!(stderr.contains("destroy the data"), "{stderr}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn a_folder_output_holding_the_input_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 200, 4, 1);
    let (code, stderr) = stderr_of(mine_in(dir.path(), &input).args(["--out", "./"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("holds the input"), "{stderr}");
    assert!(input.exists());
}

#[test]
fn a_retrieval_input_named_as_an_output_is_refused() {
    let dir = TempDir::new().unwrap();
    tripmine()
        .args([
            "gen",
            "--retrieval",
            "--rows",
            "200",
            "--queries",
            "20",
            "--dim",
            "8",
        ])
        .arg("--out")
        .arg(dir.path().join("r"))
        .assert()
        .success();
    let r = dir.path().join("r");
    for (flag, victim) in [("--out", "qrels.parquet"), ("--report", "corpus.parquet")] {
        let before = std::fs::read(r.join(victim)).unwrap();
        let (code, stderr) = stderr_of(
            tripmine()
                .current_dir(&r)
                .args(["mine", "--no-progress", "--queries", "queries.parquet"])
                .args(["--corpus", "corpus.parquet", "--qrels", "qrels.parquet"])
                .args([flag, victim]),
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(victim), "{stderr}");
        assert_eq!(std::fs::read(r.join(victim)).unwrap(), before);
    }
}

#[test]
fn a_pipeline_file_whose_output_is_its_input_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 200, 4, 1);
    let before = std::fs::read(&input).unwrap();
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        "[input]\npaths = [\"t.parquet\"]\n[output]\nout = \"out.parquet\"\nreport = \"t.parquet\"\n",
    )
    .unwrap();
    let (code, stderr) = stderr_of(tripmine().current_dir(dir.path()).args(["run", "job.toml"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--report t.parquet"), "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn two_outputs_on_one_path_are_refused_in_a_sentence() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 200, 4, 1);
    mine_in(dir.path(), &input)
        .args(["--out", "x.parquet", "--report", "x.parquet"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--report names x.parquet, which --out names too: each output needs its own path",
        ));
}

// ---- Corrupt and lying files ------------------------------------------------------------

/// A small valid table (ids, labels in `cls`, dimension 4) as bytes.
fn valid_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("valid.parquet");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let rows = 120;
    let values: Vec<f32> = (0..rows * 4).map(|_| rng.random::<f32>()).collect();
    write_table(
        &path,
        Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        Arc::new(Int64Array::from_iter_values(
            (0..rows as i64).map(|i| i % 3),
        )),
        values,
        4,
    );
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// The metadata of the file at `path` (whose content is `bytes`), and where its footer starts.
fn footer(path: &Path, bytes: &[u8]) -> (ParquetMetaData, usize) {
    let len = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let start = bytes.len() - 8 - len as usize;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&std::fs::File::open(path).unwrap())
        .unwrap();
    (meta, start)
}

/// `bytes` with its footer replaced by `meta`.
fn with_footer(bytes: &[u8], start: usize, meta: &ParquetMetaData) -> Vec<u8> {
    let mut out = bytes[..start].to_vec();
    ParquetMetaDataWriter::new(&mut out, meta).finish().unwrap();
    out
}

/// A copy of the valid file at `dir/name` whose footer's row groups are edited by `edit`.
fn with_edited_row_groups(
    dir: &Path,
    name: &str,
    edit: impl Fn(RowGroupMetaData) -> RowGroupMetaData,
) -> PathBuf {
    let (valid, bytes) = valid_file(dir);
    let (meta, start) = footer(&valid, &bytes);
    let mut builder = meta.into_builder();
    let groups: Vec<_> = builder.take_row_groups().into_iter().map(edit).collect();
    let edited = builder.set_row_groups(groups).build();
    let path = dir.join(name);
    std::fs::write(&path, with_footer(&bytes, start, &edited)).unwrap();
    path
}

/// Mines `path`, which must be refused as bad data naming it: no panic, no output.
fn assert_refused_as_bad_file(dir: &Path, path: &Path) {
    let (code, stderr) = stderr_of(mine_in(dir, path).args(["--label-col", "cls"]));
    assert_eq!(code, Some(3), "{stderr}");
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(&format!("{name}: not a readable Parquet file")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(outputs_left(dir).is_empty());
}

#[test]
fn a_footer_declaring_two_to_the_forty_rows_is_bad_data_not_an_abort() {
    let dir = TempDir::new().unwrap();
    let path = with_edited_row_groups(dir.path(), "lying.parquet", |g| {
        g.into_builder().set_num_rows(1 << 40).build().unwrap()
    });
    assert_refused_as_bad_file(dir.path(), &path);
}

#[test]
fn a_negative_column_size_is_bad_data_not_a_panic() {
    let dir = TempDir::new().unwrap();
    let path = with_edited_row_groups(dir.path(), "negative.parquet", |g| {
        let columns = g
            .columns()
            .iter()
            .map(|c| {
                let c = c.clone().into_builder().set_total_compressed_size(-5);
                c.build().unwrap()
            })
            .collect();
        g.into_builder()
            .set_column_metadata(columns)
            .build()
            .unwrap()
    });
    assert_refused_as_bad_file(dir.path(), &path);
}

#[test]
fn a_truncated_file_is_exit_3_in_one_sentence_naming_it() {
    let dir = TempDir::new().unwrap();
    let (_, bytes) = valid_file(dir.path());
    let path = dir.path().join("cut.parquet");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (code, stderr) = stderr_of(mine_in(dir.path(), &path).args(["--label-col", "cls"]));
    assert_eq!(code, Some(3), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        line.contains("cut.parquet: not a readable Parquet file"),
        "{line}"
    );
    for nested in ["External:", "Parquet argument error", "Parquet error:"] {
        assert!(
            !line.contains(nested),
            "no nested prefix `{nested}`: {line}"
        );
    }
}

#[test]
fn a_device_is_not_a_parquet_file() {
    let dir = TempDir::new().unwrap();
    mine_in(dir.path(), Path::new("/dev/zero"))
        .assert()
        .code(3)
        .stderr(predicate::str::contains("/dev/zero: not a Parquet file"));
}

#[test]
fn an_embedding_list_of_size_zero_is_named_as_dimension_zero() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("zero.parquet");
    write_table(
        &path,
        Arc::new(Int64Array::from_iter_values(0..4)),
        Arc::new(Int64Array::from(vec![0, 1, 0, 1])),
        Vec::new(),
        0,
    );
    mine_in(dir.path(), &path)
        .args(["--label-col", "cls"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("dimension 0"))
        .stderr(predicate::str::contains("misaligned").not());
}

#[test]
fn label_errors_name_the_label_column_given() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("huge-labels.parquet");
    let labels: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX, 1, u64::MAX, 1]));
    write_table(
        &path,
        Arc::new(Int64Array::from_iter_values(0..4)),
        labels,
        vec![0.0, 1.0, 2.0, 3.0],
        1,
    );
    mine_in(dir.path(), &path)
        .args(["--label-col", "cls"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("column `cls`"));
}

/// Mutations of a valid file: truncations, byte flips in the footer, the page headers and the
/// data, and edited lengths.
fn mutations(path: &Path, bytes: &[u8], seed: u64, count: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (_, footer_start) = footer(path, bytes);
    let n = bytes.len();
    let mut out = Vec::new();
    for i in 0..count {
        let mut b = bytes.to_vec();
        let what = match i % 6 {
            0 => {
                let at = rng.random_range(0..n);
                b.truncate(at);
                format!("truncated at {at}")
            }
            1 | 2 => {
                // Flips in the footer (thrift: lengths, counts, offsets, types).
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(footer_start..n - 8);
                    b[at] ^= 1 << rng.random_range(0..8);
                }
                "footer bits flipped".into()
            }
            3 => {
                // Page headers and data: the first bytes of the column chunks.
                let at = rng.random_range(4..footer_start.min(200));
                b[at] = rng.random();
                format!("page byte {at} replaced")
            }
            4 => {
                let at = rng.random_range(4..footer_start);
                b[at] ^= 0xff;
                format!("data byte {at} inverted")
            }
            _ => {
                // The footer's length field.
                let len = rng.random_range(0..n as u32 * 2);
                b[n - 8..n - 4].copy_from_slice(&len.to_le_bytes());
                format!("footer length set to {len}")
            }
        };
        out.push((what, b));
    }
    out
}

#[test]
fn a_seeded_corpus_of_mutated_files_never_crashes_hangs_or_leaves_output() {
    let dir = TempDir::new().unwrap();
    let (valid, bytes) = valid_file(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let path = work.join("mutant.parquet");
    let mut refused = 0;
    for (what, b) in mutations(&valid, &bytes, 20261129, 90) {
        std::fs::write(&path, &b).unwrap();
        let out = mine_in(&work, &path)
            .args(["--label-col", "cls"])
            .timeout(Duration::from_secs(30))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A signal leaves no exit code; a hang is killed by the timeout (no code either).
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(3)),
            "{what}: exit {code:?}, stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        if code == Some(3) {
            refused += 1;
            assert!(stderr.contains("mutant.parquet"), "{what}: {stderr}");
            assert!(outputs_left(&work).is_empty(), "{what}: output left");
        } else {
            for f in outputs_left(&work) {
                std::fs::remove_file(work.join(f)).unwrap();
            }
        }
        let _ = std::fs::remove_file(work.join("triplets.parquet.manifest.json"));
    }
    assert!(refused > 30, "most mutations are refused: {refused}");
}

// ---- Repeated ids ------------------------------------------------------------------------

fn repeated_ids_table(dir: &Path) -> PathBuf {
    let path = dir.join("dup.parquet");
    let mut ids: Vec<i64> = (0..60).collect();
    ids[41] = 17;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    write_table(
        &path,
        Arc::new(Int64Array::from(ids)),
        Arc::new(Int64Array::from_iter_values((0..60).map(|i| i % 3))),
        (0..60 * 4).map(|_| rng.random::<f32>()).collect(),
        4,
    );
    path
}

#[test]
fn repeated_ids_are_refused_naming_the_id_and_both_rows() {
    let dir = TempDir::new().unwrap();
    let path = repeated_ids_table(dir.path());
    mine_in(dir.path(), &path)
        .args(["--label-col", "cls"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "column `id`, row 41: id 17 repeats row 17",
        ))
        .stderr(predicate::str::contains("--allow-duplicate-ids"));
    assert!(outputs_left(dir.path()).is_empty());
}

#[test]
fn repeated_ids_are_mined_when_allowed() {
    let dir = TempDir::new().unwrap();
    let path = repeated_ids_table(dir.path());
    mine_in(dir.path(), &path)
        .args(["--label-col", "cls", "--allow-duplicate-ids"])
        .assert()
        .success();
}

// ---- Threads -----------------------------------------------------------------------------

/// The largest thread count the debug log reports during mining, and the count at the start.
fn threads_seen(dir: &Path, input: &Path, threads: &str, extra: &[&str]) -> (usize, usize) {
    let out = mine_in(dir, input)
        .args(["-v", "--log-format", "json", "--threads", threads])
        .args(extra)
        .args(["--out", "t.parquet", "--report", "r.parquet", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (mut start, mut most) = (None, 0);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(n) = v.get("threads").and_then(|t| t.as_u64()) {
            if v["message"] == "starting the job" {
                start = Some(n as usize);
            } else {
                most = most.max(n as usize);
            }
        }
    }
    (start.expect("the start is logged"), most)
}

#[test]
fn one_thread_caps_faiss_too() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 3000, 10, 2);
    // With --max-k the exact index is searched through FAISS (OpenMP), not by the one-pass
    // engine.
    let (start, most) = threads_seen(dir.path(), &input, "1", &["--max-k", "1000000"]);
    // The one rayon worker, and no OpenMP team beside it.
    assert!(most > start, "the worker ran: {start} -> {most}");
    assert_eq!(
        most,
        start + 1,
        "threads during a FAISS search with --threads 1"
    );
}

#[test]
fn one_thread_caps_the_one_pass_engine_too() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 3000, 10, 2);
    let (start, most) = threads_seen(dir.path(), &input, "1", &[]);
    assert_eq!(
        most,
        start + 1,
        "threads during one-pass mining with --threads 1"
    );
}

// ---- Messages and terminal ----------------------------------------------------------------

#[test]
fn an_unwritable_output_is_named_as_given_not_by_its_temporary_name() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 1);
    // Not even root may create files in /proc.
    let (code, stderr) =
        stderr_of(mine_in(dir.path(), &input).args(["--out", "/proc/triplets.parquet"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write /proc/triplets.parquet"),
        "{stderr}"
    );
    assert!(!stderr.contains(".tmp"), "{stderr}");
}

#[test]
fn faiss_errors_show_faiss_words_without_cpp_signatures() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 1);
    let (code, stderr) = stderr_of(mine_in(dir.path(), &input).args(["--index", "IVF4096,Flat"]));
    assert_eq!(code, Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(line.contains("--index `IVF4096,Flat`"), "{line}");
    for noise in ["Error in", ".cpp", "faiss::"] {
        assert!(!line.contains(noise), "`{noise}` in: {line}");
    }
}

#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 1);
    let (code, stderr) = stderr_of(&mut mine_in(dir.path(), &input));
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("INFO"),
        "info logs for schedulers: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no ANSI codes: {stderr}");
}

#[test]
fn summary_lines_stay_under_100_characters_and_name_every_output() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 400, 4, 1);
    let out = mine_in(dir.path(), &input)
        .args(["--max-negative-reuse", "2", "--report-html", "page.html"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in stdout.lines() {
        assert!(line.chars().count() <= 100, "{} chars: {line}", line.len());
    }
    assert!(stdout.contains("page.html"), "{stdout}");
    assert!(stdout.contains("removed by guards"), "{stdout}");
}

#[test]
fn most_anchors_without_a_negative_is_a_warning_with_what_to_try() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("far.parquet");
    // Classes far apart: almost no negative lies within the margin of a positive.
    crate::common::bin::gen_table(
        &input,
        &[
            "--rows",
            "600",
            "--dim",
            "8",
            "--labels",
            "6",
            "--separation",
            "8",
        ],
    );
    let out = mine_in(dir.path(), &input)
        .args(["--report-html", "page.html"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("  WARNING    "), "a warning: {stdout}");
    // Wrapped lines read as one text.
    let text = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("anchors with a positive found no qualifying semihard negative"),
        "{text}"
    );
    assert!(text.contains("try a larger --margin"), "{text}");
    let html = std::fs::read_to_string(dir.path().join("page.html")).unwrap();
    assert!(html.contains("id=\"warnings\""));
    assert!(html.contains("found no qualifying semihard negative"));
    let report = std::fs::File::open(dir.path().join("report.parquet")).unwrap();
    let report =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(report).unwrap();
    let warnings = &report.schema().metadata()["tripmine.warnings"];
    assert!(warnings.contains("found no qualifying"), "{warnings}");
}

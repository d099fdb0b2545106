//! Indexes: `auto`, saving and loading with checks, search parameters, and the recall check.

use crate::common::bin::{gen_table, generated, mine_with_summary as mine, read, summary};
use predicates::prelude::*;
use tempfile::TempDir;

#[test]
fn a_saved_index_loads_and_gives_the_same_triplets() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 1500, 10, 1);
    for (factory, extra) in [("Flat", vec![]), ("IVF16,Flat", vec!["--nprobe", "4"])] {
        let mut built = vec![
            "--index",
            factory,
            "--save-index",
            "idx.faiss",
            "--out",
            "built.parquet",
        ];
        built.extend(&extra);
        mine(dir.path(), &input, &built).success();
        let mut loaded = vec!["--load-index", "idx.faiss", "--out", "loaded.parquet"];
        loaded.extend(&extra);
        mine(dir.path(), &input, &loaded).success();
        assert_eq!(
            summary(dir.path())["index"],
            factory,
            "the saved description"
        );
        let bytes = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        assert!(
            bytes("built.parquet") == bytes("loaded.parquet"),
            "{factory}: same triplets"
        );
    }
}

#[test]
fn a_saved_index_made_for_other_data_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 300, 4, 2);
    mine(dir.path(), &input, &["--save-index", "idx.faiss"]).success();
    let fewer = generated(dir.path(), "fewer.parquet", 200, 4, 3);
    mine(dir.path(), &fewer, &["--load-index", "idx.faiss"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "--load-index idx.faiss: holds 300 rows, the input has 200",
        ));
    mine(
        dir.path(),
        &input,
        &["--load-index", "idx.faiss", "--metric", "cosine"],
    )
    .failure()
    .code(2)
    .stderr(predicate::str::contains(
        "made for metric L2sq, this run uses Cosine",
    ));
    let wider = dir.path().join("wider.parquet");
    gen_table(&wider, &["--rows", "300", "--dim", "12", "--labels", "4"]);
    mine(dir.path(), &wider, &["--load-index", "idx.faiss"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "made for dimension 8, the input has 12",
        ));
    mine(dir.path(), &input, &["--load-index", "missing.faiss"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains("missing.faiss: no such file"));
}

#[test]
fn auto_is_exact_for_a_small_table() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 500, 5, 4);
    mine(dir.path(), &input, &["--index", "auto"]).success();
    let s = summary(dir.path());
    assert_eq!(s["index"], "Flat");
    assert_eq!(s["exact"], true);
}

#[test]
fn check_recall_is_one_when_every_list_is_probed_and_lower_with_one() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("data.parquet");
    gen_table(
        &input,
        &[
            "--rows",
            "3000",
            "--dim",
            "16",
            "--labels",
            "30",
            "--separation",
            "2",
        ],
    );
    let recall = |nprobe: &str| {
        mine(
            dir.path(),
            &input,
            &[
                "--index",
                "IVF32,Flat",
                "--nprobe",
                nprobe,
                "--check-recall",
                "300",
                // Measured only: no tuning of `k`.
                "--target-recall",
                "0",
            ],
        )
        .success()
        .stdout(predicate::str::contains("recall     mined negatives"));
        let s = summary(dir.path());
        (
            s["totals"]["recall_negatives"].as_f64().unwrap(),
            s["totals"]["recall_candidates"].as_f64().unwrap(),
        )
    };
    // Probing all 32 lists of an IVF-Flat index is an exhaustive search.
    assert_eq!(recall("32"), (1.0, 1.0));
    let (negatives, candidates) = recall("1");
    assert!(
        negatives < 1.0 && candidates < 1.0,
        "{negatives} {candidates}"
    );
    // An exact index needs no check.
    mine(dir.path(), &input, &["--check-recall", "300"]).success();
    assert!(summary(dir.path())["totals"]["recall_negatives"].is_null());
}

#[test]
fn a_search_parameter_the_index_lacks_is_refused() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 200, 4, 5);
    mine(dir.path(), &input, &["--index", "Flat", "--nprobe", "8"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "--nprobe does not apply to `Flat`",
        ));
}

#[test]
fn spilled_vectors_give_the_same_triplets_as_vectors_in_memory() {
    let dir = TempDir::new().unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // Rows of dim 8 (32 bytes); a limit's tenth is the budget of rows read in at once.
    // 1200 rows, 37.5 KiB, spill under 64 KiB: 204 rows at once, 150-row label groups read
    // in one by one. 3000 rows under 128 KiB: 409 rows at once, 300-row groups searched
    // through a group index (over 256).
    for (rows, labels, limit) in [(1200, 8, "64KiB"), (3000, 10, "128KiB")] {
        let input = generated(dir.path(), "data.parquet", rows, labels, 5);
        // The one-pass engine (l2sq; a seeded sample, ranked by a second sweep) and the
        // ladder (the guard of cosine).
        for (metric, random) in [("l2sq", false), ("l2sq", true), ("cosine", false)] {
            let mut common = vec!["--metric", metric, "--positives", "hardest", "--k", "8"];
            if metric == "cosine" {
                // Compares positives with negatives: their rows are read in with the candidates.
                common.extend(["--near-duplicate", "0.9"]);
            }
            if random {
                common.extend(["--sample", "random", "--negatives", "hardest"]);
            }
            mine(dir.path(), &input, &common)
                .success()
                .stderr(predicate::str::contains("scratch file").not());
            let in_memory = std::fs::read(dir.path().join("triplets.parquet")).unwrap();
            let mut spilled = common.to_vec();
            spilled.extend(["--memory-limit", limit, "--scratch-dir", "scratch"]);
            mine(dir.path(), &input, &spilled)
                .success()
                .stderr(predicate::str::contains("vectors spill to a scratch file"));
            let from_scratch = std::fs::read(dir.path().join("triplets.parquet")).unwrap();
            assert!(
                in_memory == from_scratch,
                "{rows} rows, {metric}, random {random}: same triplets"
            );
            assert_eq!(
                summary(dir.path())["index"],
                "Flat",
                "an explicit index is kept"
            );
            assert_eq!(
                std::fs::read_dir(&scratch).unwrap().count(),
                0,
                "the scratch file has no name and leaves nothing behind"
            );
        }
    }
}

#[test]
fn the_reuse_cap_counts_in_passes_under_a_memory_limit_and_caps_the_same() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 2000, 10, 8);
    let common = [
        "--num-negatives",
        "4",
        "--max-negative-reuse",
        "2",
        "--shortfall",
        "drop",
        "--report",
        "r.parquet",
    ];
    mine(dir.path(), &input, &common).success();
    let bytes = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    let (triplets, report) = (
        bytes("triplets.parquet"),
        read(&dir.path().join("r.parquet")),
    );
    let removed = summary(dir.path())["totals"]["removed_negative_reuse"].clone();
    assert!(removed.as_u64().unwrap() > 100, "the cap removes triplets");
    // A few KiB for the counts (the tests' unchecked limits): passes over the held blocks.
    let mut limited = common.to_vec();
    limited.extend(["--memory-limit", "256KiB", "--scratch-dir", "."]);
    let passes = mine(dir.path(), &input, &limited)
        .success()
        .stderr(predicate::str::contains(
            "negative reuse cap counted its negatives in",
        ));
    let log = String::from_utf8_lossy(&passes.get_output().stderr).to_string();
    assert!(triplets == bytes("triplets.parquet"), "the same triplets");
    // The report's rows (its metadata records the options as given).
    assert_eq!(
        report.columns(),
        read(&dir.path().join("r.parquet")).columns()
    );
    assert_eq!(
        summary(dir.path())["totals"]["removed_negative_reuse"],
        removed,
        "{log}"
    );
}

#[test]
fn auto_weighs_a_compressed_index_when_the_vectors_exceed_the_memory_limit() {
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 3000, 10, 6);
    mine(dir.path(), &input, &["--index", "auto"]).success();
    assert_eq!(summary(dir.path())["index"], "Flat");
    mine(
        dir.path(),
        &input,
        &[
            "--index",
            "auto",
            "--memory-limit",
            "100KiB",
            "--check-recall",
            "200",
        ],
    )
    .success();
    let s = summary(dir.path());
    assert_eq!(
        s["auto"]["candidate"], "IVF256,PQ4x4fs",
        "dim 8: 4-bit PQ, 2 bytes a row"
    );
    // Weighed against exact mining (which also holds within the limit: it reads the spilled
    // vectors in order), whichever it chose.
    assert_eq!(s["index"], s["auto"]["chosen"]);
    assert_eq!(s["exact"], s["index"] == "Flat");
}

#[test]
fn memory_limits_are_read_with_units() {
    use tripmine::config::ByteSize;
    assert_eq!("1GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
    assert_eq!("512 MiB".parse::<ByteSize>().unwrap().0, 512 << 20);
    assert_eq!("2G".parse::<ByteSize>().unwrap().0, 2_000_000_000);
    assert_eq!("1.5KiB".parse::<ByteSize>().unwrap().0, 1536);
    assert!("12 parsecs".parse::<ByteSize>().is_err());
    assert!("0".parse::<ByteSize>().is_err());
    let dir = TempDir::new().unwrap();
    let input = generated(dir.path(), "data.parquet", 100, 3, 7);
    mine(dir.path(), &input, &["--memory-limit", "lots"])
        .code(2)
        .stderr(predicate::str::contains("--memory-limit"));
}
